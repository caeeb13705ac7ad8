# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The leak lab's cases replayed on a simulated Windows host (windows_firewall_model.py), against the document
``render_windows`` renders for the lab's own variables.  Simulated: nothing here ran on Windows.

The host: ``Ethernet`` on the lab LAN, the tunnel adapter ``wg0`` (WireGuard for Windows names it after the
configuration) present or not, the VPN client ``wireguard.exe`` (``killswitch_endpoint_program``), the stock
rules Windows ships that open paths (Core Networking DNS, Teredo, IPv6, IP-HTTPS) with
``killswitch_windows_exclusive: true``, as recommended.  Each leak case is replayed probe by probe: the kill switch
blocks it, and the positive control (the same document with every profile's default action Allow and exclusive
mode off) allows that very probe, so the control vouches for each probe it stands for.  The third-party case's
control is stricter: the kill switch's own document with exclusive mode off, and the stock rule must be what
allows it.  Forwarded traffic is not filtered by Windows Firewall at all: the case asserts that it is warned about,
never that it is blocked.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import ipaddress
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ansible_collections.netlock.killswitch.plugins.plugin_utils import windows_plan
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy
from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_windows import WARN_FORWARD, document, like
from ansible_collections.netlock.killswitch.tests.unit.plugins.plugin_utils.test_render_windows import WINDOWS_POLICIES
from ansible_collections.netlock.killswitch.tests.unit.plugins.plugin_utils.test_windows_plan import applied_filters
from ansible_collections.netlock.killswitch.tests.unit.plugins.plugin_utils.windows_firewall_model import (
    ALLOWED, BLOCKED, INBOUND, KERNEL, NOT_FILTERED, OUTBOUND, STOCK_OPEN_RULES, SVCHOST, Adapter, Packet, apply,
    probes, reply, with_defaults)

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lab.cases import CASES  # noqa: E402  pylint: disable=wrong-import-position
from lab.topology import ENDPOINT, GUEST_V4, INET, LAN, LANPEER, ROUTER, SINK, VPN  # noqa: E402

WIREGUARD = "C:\\Program Files\\WireGuard\\wireguard.exe"
APP = "C:\\Users\\user\\AppData\\Local\\App\\app.exe"
CONTROLLER = "198.18.1.2"   # the management source (the lab manages through docker exec; a Windows host needs WinRM)
WINRM = 5986
# The lab's group_vars (inventories/lab/group_vars/all.yml) with a program instead of the fwmark, and WinRM.
LAB = {
    "killswitch_tunnel_interfaces": ["wg0"],
    "killswitch_endpoints": [{"address": ENDPOINT[0], "port": ENDPOINT[1], "protocol": "udp"}],
    "killswitch_endpoint_program": WIREGUARD,
    "killswitch_dns_servers": [VPN.tunnel[0]],
    "killswitch_ipv6": "tunnel",
    "killswitch_forward": "tunnel",
    "killswitch_lan_cidrs": [LAN.v4, LAN.v6],
    "killswitch_management_cidrs": [CONTROLLER],
    "killswitch_management_ports": [WINRM],
}
CLIENT_V4, CLIENT_V6 = "198.18.1.11", "2001:db8:1::11"
ETHERNET = Adapter("Ethernet", "Private", ("%s/24" % CLIENT_V4, "%s/64" % CLIENT_V6), "Wired", "guid-ethernet")
TUNNEL = Adapter("wg0", "Public", ("198.18.100.11/24", "2001:db8:100::11/64"), "RemoteAccess", "guid-wg0-1")
RECREATED = dataclasses.replace(TUNNEL, guid="guid-wg0-2")  # the VPN client made the adapter again
# LocalNet: the rogue LAN hands out an address in the sink's public range, so it is on-link (LocalSubnet) too.
ROGUE_ETHERNET = dataclasses.replace(ETHERNET, addresses=ETHERNET.addresses + ("198.18.2.77/24", "2001:db8:2::77/64"))
UP, DOWN = (ETHERNET, TUNNEL), (ETHERNET,)
SINK_TARGETS = (SINK.v4(INET), SINK.v6(INET))
LAN_RESOLVERS = (LANPEER.v4(LAN), LANPEER.v6(LAN))
MODEL_SECTION = "## The evaluation model (simulated)"


@functools.lru_cache(maxsize=None)
def _rendered(overrides: Tuple[Tuple[str, Any], ...]) -> Dict[str, Any]:
    return document(parse_policy(dict(LAB, **{"killswitch_" + k: v for k, v in overrides})))


def render(**overrides: Any) -> Dict[str, Any]:
    """The document of the lab's variables with ``overrides`` (a copy: the mutants below edit it)."""
    return copy.deepcopy(_rendered(tuple(sorted(overrides.items()))))


@dataclasses.dataclass(frozen=True)
class Case:
    """One leak case on the simulated host: the adapters when the rules were made (the last run or guard pass)
    and when the probes leave, the probes that must be blocked, and those that must pass (the tunnel works)."""

    name: str
    lab: Tuple[str, ...]              # the lab.cases names it replays
    leaks: Tuple[Packet, ...]
    passes: Tuple[Packet, ...] = ()
    variables: Tuple[Tuple[str, Any], ...] = ()
    made_with: Tuple[Adapter, ...] = UP
    now: Tuple[Adapter, ...] = UP
    third_party: bool = False        # the case is the stock rules themselves

    def document(self) -> Dict[str, Any]:
        return render(**dict(self.variables))

    def killswitch(self):
        # the recommended host: the stock rules present, exclusive mode on
        return apply(self.document(), self.made_with, STOCK_OPEN_RULES, exclusive=True, now=self.now)

    def control(self):
        if self.third_party:
            return apply(self.document(), self.made_with, STOCK_OPEN_RULES, exclusive=False, now=self.now)
        return apply(with_defaults(self.document()), self.made_with, STOCK_OPEN_RULES, exclusive=False, now=self.now)


def ethernet(targets=SINK_TARGETS, dns=(SINK.v4(INET), LANPEER.v4(LAN), LANPEER.v6(LAN)), label="", **kwargs):
    """The lab's ``everything`` probe out of Ethernet, by an ordinary program (DNS also by the DNS client)."""
    return tuple(probes("Ethernet", targets, dns=dns, label=label, **kwargs))


def to_endpoint(protocol: str, port: Optional[int], program: Optional[str], label: str) -> Packet:
    if protocol.startswith("ICMP"):
        return Packet(OUTBOUND, "Ethernet", protocol, ENDPOINT[0], icmp_type=8, program=program, label=label)
    return Packet(OUTBOUND, "Ethernet", protocol, ENDPOINT[0], port, 50000, program=program, label=label)


HANDSHAKE = to_endpoint("UDP", ENDPOINT[1], WIREGUARD, "the VPN client's handshake")
THROUGH_TUNNEL = tuple(probes("wg0", SINK_TARGETS, dns=(), label="through the tunnel")) + (
    Packet(OUTBOUND, "wg0", "UDP", VPN.tunnel[0], 53, 50100, program=SVCHOST, label="DNS to the tunnel's resolver"),
    Packet(OUTBOUND, "wg0", "TCP", VPN.tunnel[0], 853, 50101, program=APP, label="DoT to the tunnel's resolver"))
INBOUND_OTHERS = tuple(Packet(INBOUND, "Ethernet", "TCP", source, 40000, port, label=label) for source, port, label in (
    (LANPEER.v4(LAN), WINRM, "WinRM from another LAN host"), (ROUTER.v4(LAN), WINRM, "WinRM from the router"),
    (CONTROLLER, 3389, "RDP from the controller"), (CONTROLLER, 22, "SSH from the controller"),
    (SINK.v6(INET), WINRM, "WinRM from outside over IPv6")))
STOCK_PATHS = (
    Packet(OUTBOUND, "Ethernet", "UDP", LANPEER.v4(LAN), 53, 50200, program="C:\\Windows\\System32\\svchost.exe",
           label="Core Networking DNS: the DNS client to the LAN resolver"),
    Packet(OUTBOUND, "Ethernet", "UDP", "198.18.2.30", 3544, 50201, program="C:\\WINDOWS\\system32\\svchost.exe",
           label="Core Networking Teredo: to a Teredo server"),
    Packet(OUTBOUND, "Ethernet", "41", "198.18.2.40", program=KERNEL, label="Core Networking IPv6: 6in4 to a relay"),
    Packet(OUTBOUND, "Ethernet", "TCP", "198.18.2.50", 443, 50202, program=KERNEL,
           label="Core Networking IPHTTPS: to an IP-HTTPS server"),
)

CASES_REPLAYED = (
    Case("tunnel up", ("tunnel-up",), leaks=ethernet(label="tunnel up, out of Ethernet") + (
        Packet(OUTBOUND, "wg0", "UDP", SINK.v4(INET), 53, 50300, program=SVCHOST,
               label="DNS through the tunnel to another resolver than killswitch_dns_servers"),),
         passes=THROUGH_TUNNEL + (HANDSHAKE,)),
    Case("tunnel killed, adapter deleted", ("killed-kill9", "killed-link-deleted"), now=DOWN,
         leaks=ethernet(label="adapter deleted after the run")),
    Case("tunnel down at the run or guard pass", ("killed-link-deleted", "reboot"), made_with=DOWN, now=DOWN,
         leaks=ethernet(label="tunnel rules made disabled"), passes=(HANDSHAKE,)),
    Case("tunnel killed, adapter kept", ("killed-kill9",), leaks=ethernet(label="routes moved to Ethernet")),
    Case("endpoint unreachable", ("endpoint-unreachable",), now=DOWN, leaks=ethernet(label="endpoint unreachable"),
         passes=(HANDSHAKE,)),
    Case("tunnel restored without Ansible", ("restored",), now=(ETHERNET, RECREATED),
         # the re-created adapter is another GUID: until the guard binds it, even the tunnel is closed (fail closed)
         leaks=ethernet(label="restored, before the guard pass") + tuple(
             dataclasses.replace(p, label="restored, through the tunnel before the guard pass") for p in THROUGH_TUNNEL)),
    Case("tunnel restored, after the guard pass", ("restored",), made_with=(ETHERNET, RECREATED),
         now=(ETHERNET, RECREATED), leaks=ethernet(label="restored, after the guard pass"), passes=THROUGH_TUNNEL),
    Case("TunnelVision", ("tunnelvision",), leaks=ethernet(dns=(SINK.v4(INET),), label="option 121 route via Ethernet"),
         passes=THROUGH_TUNNEL),
    Case("DNS to a LAN resolver", ("allow-lan",), leaks=ethernet(targets=(), dns=LAN_RESOLVERS, label="LAN DNS")),
    Case("allow_lan: LAN DNS refused", ("allow-lan",), variables=(("allow_lan", True),), now=DOWN,
         leaks=ethernet(targets=(), dns=LAN_RESOLVERS, label="LAN DNS, allow_lan on") + (
             Packet(OUTBOUND, "Ethernet", "UDP", LANPEER.v4(LAN), 853, 50400, program=APP, label="UDP 853 to the LAN"),),
         passes=tuple(probes("Ethernet", LAN_RESOLVERS, label="the LAN with allow_lan on"))),
    Case("LocalNet, allow_lan off", ("allow-lan",), made_with=(ROGUE_ETHERNET, TUNNEL), now=(ROGUE_ETHERNET, TUNNEL),
         leaks=ethernet(dns=(SINK.v4(INET),), label="LocalNet") + tuple(
             probes("Ethernet", LAN_RESOLVERS, label="the LAN with allow_lan off"))),
    Case("LocalNet (allow_lan on)", ("allow-lan",), variables=(("allow_lan", True),), made_with=(ROGUE_ETHERNET, TUNNEL),
         now=(ROGUE_ETHERNET, TUNNEL), leaks=ethernet(dns=(SINK.v4(INET),), label="LocalNet, allow_lan on")),
    Case("IPv6 blocked", (), variables=(("ipv6", "block"),),
         leaks=tuple(p for p in THROUGH_TUNNEL + ethernet(label="IPv6 out of Ethernet") if p.family == 6),
         passes=tuple(p for p in THROUGH_TUNNEL if p.family == 4)),
    Case("IPv6 through the tunnel", (), leaks=tuple(p for p in ethernet(label="IPv6 out of Ethernet") if p.family == 6),
         passes=tuple(p for p in THROUGH_TUNNEL if p.family == 6)),
    Case("ServerIP", ("serverip",), leaks=tuple(
        to_endpoint(protocol, port, program, "%s to the endpoint" % (program or "no program"))
        for program in (APP, None) for protocol, port in (("UDP", ENDPOINT[1]), ("TCP", ENDPOINT[1]), ("TCP", 8080),
                                                          ("UDP", 9999), ("ICMPv4", None))) + (
        to_endpoint("TCP", ENDPOINT[1], WIREGUARD, "the VPN client over TCP"),
        to_endpoint("UDP", 9999, WIREGUARD, "the VPN client to another port")),
        passes=(HANDSHAKE, dataclasses.replace(HANDSHAKE, program=WIREGUARD.upper(), label="the VPN client, its path in other case"))),
    Case("management from the controller only", (), leaks=INBOUND_OTHERS,
         passes=(Packet(INBOUND, "Ethernet", "TCP", CONTROLLER, 40000, WINRM, label="WinRM from the controller"),)),
    Case("third-party stock rules", (), third_party=True, leaks=STOCK_PATHS, passes=THROUGH_TUNNEL),
)


def _pairs(kind: str) -> List[Tuple[Case, Packet]]:
    return [(case, packet) for case in CASES_REPLAYED for packet in getattr(case, kind)]


def _id(pair: Tuple[Case, Packet]) -> str:
    return "%s/%s" % (pair[0].name, pair[1].describe())


LEAKS = _pairs("leaks")
PASSES = _pairs("passes")


# --------------------------------------------------------------------------- each probe, kill switch and control


@pytest.mark.parametrize("pair", LEAKS, ids=[_id(p) for p in LEAKS])
def test_the_kill_switch_blocks_each_probe_and_the_control_lets_that_probe_out(pair):
    case, packet = pair
    decision = case.killswitch().send(packet)
    assert decision.verdict == BLOCKED, (packet.describe(), decision)
    control = case.control().send(packet)
    assert control.verdict == ALLOWED, ("the control does not see this probe", packet.describe(), control)
    if case.third_party:
        assert control.rule in {rule["name"] for rule in STOCK_OPEN_RULES}, control


@pytest.mark.parametrize("pair", PASSES, ids=[_id(p) for p in PASSES])
def test_what_the_kill_switch_lets_through_and_its_replies(pair):
    case, packet = pair
    host = case.killswitch()
    assert host.send(packet).verdict == ALLOWED, packet.describe()
    assert host.evaluate(reply(packet)).verdict == ALLOWED, "the reply of an allowed flow passes"


def test_replies_never_open_a_path_the_kill_switch_blocked():
    host = CASES_REPLAYED[0].killswitch()
    for packet in CASES_REPLAYED[0].leaks:
        assert host.send(packet).verdict == BLOCKED
        assert host.evaluate(reply(packet)).verdict == BLOCKED, packet.describe()  # unsolicited inbound
    assert not host.flows


def test_every_lab_case_is_replayed_or_said_why_not():
    replayed = {name for case in CASES_REPLAYED for name in case.lab}
    assert set(CASES) - replayed == {"forwarded"}  # forwarded traffic: not filtered, below
    assert replayed <= set(CASES)


# --------------------------------------------------------------------------- third-party rules and exclusive mode


def _live(third_party: Sequence[Dict[str, Any]], doc: Dict[str, Any]) -> Dict[str, Any]:
    """A host where the module applied ``doc`` (wg0 up), with these third-party rules listed."""
    live = {"interfaces": ["Ethernet", "wg0"], "third_party": list(third_party), "forwarding_features": [],
            "guard": {"task": True, "state": "Ready", "runs_guard": True, "interval": 30}}
    live.update(windows_plan.expected_live(live, doc))
    for rule, wanted in zip(live["rules"], doc["rules"]):  # and their filters, as the module reports them
        rule.update(applied_filters(wanted, [a for a in rule["description"].partition(" interfaces=")[2].split("|") if a]))
    return live


def test_the_stock_rules_are_drift_and_exclusive_mode_disables_each_of_them():
    doc = render()
    status = windows_plan.status(_live(STOCK_OPEN_RULES, doc), doc)
    assert status["drifted"] is True
    for rule in STOCK_OPEN_RULES:
        assert "-third-party %s:" % rule["name"] in status["parts"]["table"]["diff"]
    disabled = [dict(rule, enabled=False) for rule in STOCK_OPEN_RULES]  # what exclusive mode leaves
    assert windows_plan.status(_live(disabled, doc), doc)["drifted"] is False
    host = apply(doc, UP, STOCK_OPEN_RULES, exclusive=True)
    stock = {rule["name"] for rule in STOCK_OPEN_RULES}
    assert [r.enabled for r in host.rules if r.name in stock] == [False] * len(stock)


def test_a_local_subnet_rule_is_the_localnet_path_and_is_reported_and_disabled():
    """LocalNet through a third-party rule: ``LocalSubnet`` follows what the rogue LAN hands out."""
    intranet = dict(STOCK_OPEN_RULES[0], name="Vendor-Intranet", protocol="Any", remote_ports=["Any"], program="Any",
                    remote_addresses=["LocalSubnet"])
    doc = render()
    probe = Packet(OUTBOUND, "Ethernet", "TCP", SINK.v4(INET), 8080, 50500, program=APP, label="LocalNet")
    leaky = apply(doc, (ROGUE_ETHERNET, TUNNEL), [intranet], exclusive=False)
    assert (leaky.evaluate(probe).verdict, leaky.evaluate(probe).rule) == (ALLOWED, "Vendor-Intranet")
    assert [p["name"] for p in windows_plan.open_paths([intranet], doc)] == ["Vendor-Intranet"]
    assert apply(doc, (ROGUE_ETHERNET, TUNNEL), [intranet], exclusive=True).evaluate(probe).verdict == BLOCKED


# --------------------------------------------------------------------------- forwarded traffic


def test_forwarded_traffic_is_not_filtered_and_is_warned_about_never_claimed_blocked():
    guest = str(next(ipaddress.ip_network(GUEST_V4).hosts()))
    guest_probes = ethernet(targets=(SINK.v4(INET),), dns=(SINK.v4(INET), LANPEER.v4(LAN)), label="the guest")
    forwarded = [dataclasses.replace(p, forwarded=True, local=guest) for p in guest_probes if p.family == 4]
    assert forwarded
    host = CASES_REPLAYED[1].killswitch()
    for packet in forwarded:
        assert host.evaluate(packet).verdict == NOT_FILTERED, packet.describe()
    for mode in ("block", "tunnel"):
        assert WARN_FORWARD in render(forward=mode)["warnings"]
    live = _live((), render())
    live["forwarding_features"] = ["Hyper-V", "WSL"]
    assert any(windows_plan.FORWARDING_WHY in text for text in windows_plan.warnings(live, render()))
    section = (REPO_ROOT / "docs" / "windows.md").read_text(encoding="utf-8").split(MODEL_SECTION, 1)[1]
    assert "forwarded" in section.lower() and "not filtered" in section


# --------------------------------------------------------------------------- a broken kill switch is seen


def _tunnel_everywhere(doc):
    for rule in doc["rules"]:
        rule["interface_aliases"] = []
    return doc


def _lan_with_dns(doc):
    for rule in doc["rules"]:
        if ".out-lan-" in rule["name"]:
            rule["remote_ports"] = []
    return doc


def _endpoint_any_program(doc):
    for rule in doc["rules"]:
        rule["program"] = None
    return doc


def _outbound_allow(doc):
    doc["profiles"]["default_outbound"] = "Allow"
    return doc


@pytest.mark.parametrize("mutant,cases", [
    (_outbound_allow, ("tunnel killed, adapter deleted", "TunnelVision", "ServerIP", "LocalNet (allow_lan on)")),
    (_tunnel_everywhere, ("tunnel killed, adapter kept", "TunnelVision", "IPv6 through the tunnel")),
    (_lan_with_dns, ("allow_lan: LAN DNS refused",)),
    (_endpoint_any_program, ("ServerIP",)),
])
def test_the_replay_finds_the_leak_of_a_broken_document(mutant, cases):
    """The cases can fail: each broken document lets some probe of each named case out."""
    for case in CASES_REPLAYED:
        if case.name not in cases:
            continue
        broken = mutant(case.document())
        host = apply(broken, case.made_with, STOCK_OPEN_RULES, exclusive=True, now=case.now)
        leaked = [p.describe() for p in case.leaks if host.evaluate(p).verdict != BLOCKED]
        assert leaked, (mutant.__name__, case.name)


# --------------------------------------------------------------------------- generated policies

PHYSICAL = ("Ethernet", "Wi-Fi", "Ethernet 2", "vEthernet (Default Switch)")
NEVER_ALLOWED_OUT = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "fe80::/10", "ff00::/8",
                                                       "255.255.255.255/32")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(variables=WINDOWS_POLICIES, data=st.data())
def test_for_any_policy_nothing_leaves_by_another_adapter_to_another_destination(variables, data):
    """Out of a non-tunnel adapter, to an address that is no endpoint, LAN range, extra exception, DHCP or
    neighbour-discovery destination: blocked, and allowed by the control (default outbound Allow)."""
    policy = parse_policy(variables)
    doc = document(policy)
    physical = next((a for a in PHYSICAL if not any(like(a, p) for p in policy.tunnel_interfaces)), None)
    assume(physical is not None)
    remote = data.draw(st.ip_addresses().map(str), label="remote")
    address = ipaddress.ip_address(remote)
    opened = list(NEVER_ALLOWED_OUT) + list(policy.lan_networks) + [
        n for rule in policy.endpoints + policy.extra_outbound for n in rule.networks]
    assume(not any(address.version == n.version and address in n for n in opened))
    protocol = data.draw(st.sampled_from(["TCP", "UDP", "ICMP", "41"]), label="protocol")
    if protocol == "ICMP":
        protocol = "ICMPv4" if address.version == 4 else "ICMPv6"
    program = data.draw(st.sampled_from([None, APP, WIREGUARD, SVCHOST]), label="program")
    port = data.draw(st.one_of(st.sampled_from([53, 853, 51820, 443]), st.integers(1, 65535)), label="port")
    local = "198.18.1.11/24" if address.version == 4 else "2001:db8:1::11/64"
    adapters = [Adapter(physical, "Public", (local,), "Wired", "guid-physical")] + [
        Adapter(p.replace("*", "x"), "Public", ("198.18.100.11/24", "2001:db8:100::11/64"), "RemoteAccess", "guid-%d" % i)
        for i, p in enumerate(policy.tunnel_interfaces)]
    packet = Packet(OUTBOUND, physical, protocol, remote, port if protocol in ("TCP", "UDP") else None,
                    50000 if protocol in ("TCP", "UDP") else None, icmp_type=8 if protocol == "ICMPv4" else (
                        128 if protocol == "ICMPv6" else None), program=program)
    assert apply(doc, adapters).evaluate(packet).verdict == BLOCKED, (packet.describe(), doc["rules"])
    assert apply(with_defaults(doc), adapters).evaluate(packet).verdict == ALLOWED
