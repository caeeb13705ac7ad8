# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Double VPN by traffic: a WireGuard tunnel inside another (or inside OpenVPN), in throwaway network namespaces
(the lab: lab/doublevpn.py, shared with the leak report's double-VPN tables).

    client ──phys── isp ── outer server ── inner server      (the inner server is reached only through
                     └──── sink (the internet)                 the outer tunnel: the isp has no route to it)

The kill switch is rendered from a policy whose inner endpoint is ``via`` the outer tunnel and loaded in the client's
netns by the real applier (nftables or iptables).  Each case runs the same probes with the kill switch absent first
(positive control: each probe must be seen where it would leak), then present, then with a broken kill switch (the
inner endpoint flat, so the carrier is a general exit): that one must leak, or the case proves nothing.

    a  both up: a probe arrives at the sink from the inner server's address (IPv4 and IPv6); each wire carries only
       tunnel messages.
    b  inner deleted, outer up: nothing enters the outer tunnel but inner-endpoint WireGuard messages.
    c  outer deleted, inner up: nothing on the physical link but the outer endpoint's messages (the inner
       device keeps sending keepalives to its endpoint, now routed there: they must not leave).
    d  both deleted: nothing on the physical link at all (the broken ruleset cannot leak more here: no mutation).

Endpoint mark semantics: a process without the mark sending plain UDP to the inner endpoint through the outer tunnel
is refused (the nested endpoint is scoped like a flat one: address, protocol, port and owner, plus the carrier).
IPv6 by traffic: both tunnels carry 2001:db8::/32 (the endpoints stay IPv4; killswitch_ipv6 'tunnel'); every probe
goes over IPv4 and IPv6, the detectors capture both, and the controls vouch for each IPv6 probe where it would leak.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Tuple

import pytest

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lab.doublevpn import (INNER_SERVER, INNER_SERVER6, OTHER, PROBE_UDP, SINK_PROBES, SINK_PROBES6,  # noqa: E402
                           ChainLab, describe, is_inner_wireguard, measure, unavailable)


# One lab per test, torn down by the test itself: ansible-test runs each test in a fork of its own, where a
# module-scoped fixture would be built again and never torn down.
@pytest.fixture(name="lab", params=[("wireguard", "nftables"), ("openvpn", "nftables"), ("wireguard", "iptables")],
                ids=["wireguard-nftables", "openvpn-nftables", "wireguard-iptables"])
def lab_fixture(request, tmp_path):
    """The outer tunnel WireGuard (a two-hop WireGuard chain) or OpenVPN (WireGuard inside OpenVPN); the kill switch
    rendered for nftables or iptables and loaded by that backend's applier."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)  # under CI=true this is a failure (tests/unit/strict_ci.py)
    with ChainLab(tmp_path, *request.param) as built:
        assert built.handshaken("wo") and built.handshaken("wi"), "the tunnels did not come up"
        yield built


# The cases, run in order on one lab by the test at the end; each sets the tunnels it needs.

def case_a_both_up_traffic_exits_the_inner_server(lab):
    lab.tunnels(outer=True, inner=True)
    seen = measure(lab, "a", kill_switch=True, outer_up=True)
    udp = seen["probes"]["udp to the sink"]
    arrived = [p for p in seen["sink"] if udp(p)]
    assert arrived and {p["src"] for p in arrived} == {INNER_SERVER}, describe(seen["sink"])
    for name in SINK_PROBES6:
        arrived6 = [p for p in seen["sink"] if seen["probes"][name](p)]
        assert arrived6 and {p["src"] for p in arrived6} == {INNER_SERVER6}, "%s: %s" % (name, describe(seen["sink"]))
    assert seen["phys"] == [], "leaked on the physical link: %s" % describe(seen["phys"])
    assert seen["outer tunnel"] == [], "leaked into the outer tunnel: %s" % describe(seen["outer tunnel"])


def case_a_control_plain_udp_to_the_inner_endpoint_enters_the_outer_tunnel_without_the_kill_switch(lab):
    """The unmarked process's datagram is refused above because of the kill switch, not the lab."""
    lab.tunnels(outer=True, inner=True)
    seen = measure(lab, "A", kill_switch=None, outer_up=True)
    other = seen["probes"]["plain udp to the inner endpoint (no mark)"]
    assert [p for p in seen["outer tunnel"] if other(p)], describe(seen["outer tunnel"])


def leak_case(lab: ChainLab, case: str, wire: str, outer_up: bool, probes: Tuple[str, ...], inner_wireguard: bool = False,
              broken_leaks: bool = True) -> None:
    """Control (each probe seen on ``wire``), guarded (nothing leaks anywhere), broken (the carrier as an exit leaks)."""
    control = measure(lab, case, kill_switch=None, outer_up=outer_up)
    for name in probes:
        assert [p for p in control[wire] if control["probes"][name](p)], \
            "control: %s was not seen on the %s without the kill switch: %s" % (name, wire, describe(control[wire]))
    if inner_wireguard:
        assert [p for p in control[wire] if is_inner_wireguard(p)], \
            "control: no inner WireGuard message on the %s without the kill switch: %s" % (wire, describe(control[wire]))
    guarded = measure(lab, case, kill_switch=True, outer_up=outer_up)
    for name in ("phys", "outer tunnel"):
        assert guarded.get(name, []) == [], "leaked on the %s: %s" % (name, describe(guarded[name]))
    assert not [p for p in guarded["sink"] if p["dport"] == PROBE_UDP], describe(guarded["sink"])
    if broken_leaks:
        broken = measure(lab, case, kill_switch=False, outer_up=outer_up)
        leaked = [p for p in broken[wire] if (is_inner_wireguard(p) if inner_wireguard
                                              else broken["probes"]["udp to the sink"](p))]
        assert leaked, "the broken kill switch (the inner endpoint flat, the carrier a general exit) leaked nothing " \
                       "on the %s: this case could not fail" % wire
        if wire == "outer tunnel":
            assert [p for p in broken[wire] if broken["probes"]["udp to the sink over IPv6"](p)], \
                "the broken kill switch leaked no IPv6 into the outer tunnel: the IPv6 probes could not fail"


def case_b_inner_down_nothing_enters_the_outer_tunnel_but_inner_endpoint_wireguard(lab):
    lab.tunnels(outer=True, inner=False)
    leak_case(lab, "b", "outer tunnel", True, SINK_PROBES + SINK_PROBES6 + (OTHER,))


def case_c_outer_down_inner_up_the_inner_endpoint_is_not_reached_on_the_physical_link(lab):
    """The inner device keeps sending (keepalives, the probes it carries) to its endpoint, now routed to the
    physical link: only the outer endpoint's WireGuard may leave there."""
    lab.tunnels(outer=False, inner=True)
    leak_case(lab, "c", "phys", False, (OTHER,), inner_wireguard=True)


def case_d_both_down_nothing_on_the_physical_link(lab):
    lab.tunnels(outer=False, inner=False)
    # the broken ruleset differs only for the inner endpoint, which nothing sends to now: no mutation check here
    leak_case(lab, "d", "phys", False, SINK_PROBES + SINK_PROBES6 + (OTHER,), broken_leaks=False)


CASES = (case_a_both_up_traffic_exits_the_inner_server,
         case_a_control_plain_udp_to_the_inner_endpoint_enters_the_outer_tunnel_without_the_kill_switch,
         case_b_inner_down_nothing_enters_the_outer_tunnel_but_inner_endpoint_wireguard,
         case_c_outer_down_inner_up_the_inner_endpoint_is_not_reached_on_the_physical_link,
         case_d_both_down_nothing_on_the_physical_link)


def test_double_vpn(lab):
    """Every case (the module docstring), in order: the first one that fails names itself."""
    for case in CASES:
        try:
            case(lab)
        except AssertionError as error:
            raise AssertionError("%s: %s" % (case.__name__, error)) from error
