# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bridged frames (issue 10): ``rules.bridge_rules``, the ``bridge`` table render_nftables prints from them,
nft's verdict on it (``nft -c`` in a throwaway netns), real frames through a bridge in a netns, and what the
other backends make of the same policy.  The traffic case with a guest on a lab bridge is in
tests/unit/lab/test_policy_traffic.py.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from ansible_collections.netlock.killswitch.plugins.plugin_utils import backends
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy
from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_nftables import bridge_table, render
from ansible_collections.netlock.killswitch.plugins.plugin_utils.rules import (
    ACCEPT, BRIDGED, DROP, GROUPS, REJECT, bridge_rules, rule_list)

BASE = {"killswitch_tunnel_interfaces": ["wg0", "tap*"],
        "killswitch_endpoints": [{"address": "198.51.100.7", "port": 51820}],
        "killswitch_management_cidrs": ["198.18.5.0/24"]}


def policy_of(**overrides):
    variables = dict(BASE)
    variables.update({"killswitch_" + k: v for k, v in overrides.items()})
    return parse_policy(variables, resolve=lambda name: [])


def chain_rules(text):
    """The bridge table's forward chain as printed: its hook line, then its rules."""
    lines = text.splitlines()
    start = lines.index("table bridge killswitch {")
    chain = lines.index("\tchain forward {", start)
    end = lines.index("\t}", chain)
    return [line.strip() for line in lines[chain + 1:end]]


# --------------------------------------------------------------------------- the neutral rules


def test_forward_off_adds_no_bridge_rules_and_the_file_only_removes_a_stale_table():
    policy = policy_of(forward="off")
    assert bridge_rules(policy) == []
    assert bridge_table(policy) == "table bridge killswitch\ndelete table bridge killswitch\n"
    assert "table bridge killswitch {" not in render(policy)


def test_forward_block_drops_every_bridged_frame():
    rules = bridge_rules(policy_of(forward="block", allow_lan=True))
    assert [(r.verdict, r.family) for r in rules] == [(DROP, 4), (DROP, 6)]
    assert chain_rules(render(policy_of(forward="block", allow_lan=True)))[1:] == [
        "ether type ip counter drop", "ether type ip6 counter drop"]


def test_forward_tunnel_in_threat_model_order_and_never_rejects():
    rules = bridge_rules(policy_of(allow_lan=True, ipv6="tunnel", log_drops=True))
    assert {r.direction for r in rules} == {BRIDGED}
    ranks = [GROUPS.index(r.group) for r in rules]
    assert ranks == sorted(ranks)
    assert REJECT not in {r.verdict for r in rules}  # reject is refused in a bridge's forward hook
    assert [r.family for r in rules if r.verdict == DROP][-2:] == [4, 6]


def test_bridge_rules_stay_out_of_the_rule_list_the_other_backends_print():
    policy = policy_of(allow_lan=True)
    assert not [r for r in rule_list(policy) if r.direction == BRIDGED]


def test_without_lan_a_bridged_guest_gets_only_dhcp_neighbours_arp_and_tunnel_ports():
    accepted = [r for r in bridge_rules(policy_of(ipv6="tunnel")) if r.verdict == ACCEPT]
    assert {r.group for r in accepted} == {"dhcp", "neighbour", "dns", "tunnel"}
    # every accept is scoped: to on-link/broadcast destinations, to ARP, or to a tunnel port
    for rule in accepted:
        assert rule.destinations or rule.ether_type == "arp" or rule.out_interface or rule.in_interface, rule


def test_lan_is_accepted_by_destination_so_replies_and_guest_to_guest_cross():
    rules = bridge_rules(policy_of(allow_lan=True, lan_cidrs=["10.0.0.0/8", "fd00::/8"], ipv6="tunnel"))
    lan = [r for r in rules if r.group == "lan"]
    assert [(r.family, [str(n) for n in r.destinations], r.sources) for r in lan] == [
        (4, ["10.0.0.0/8"], ()), (6, ["fd00::/8"], ())]


def test_ipv6_block_accepts_no_bridged_ipv6_but_neighbour_discovery():
    rules = bridge_rules(policy_of(allow_lan=True, lan_cidrs=["10.0.0.0/8", "fd00::/8"], ipv6="block"))
    v6_accepts = [r for r in rules if r.verdict == ACCEPT and r.family == 6]
    assert v6_accepts and all(r.icmp_types and r.hop_limit == 255 or r.name == "mld" for r in v6_accepts)
    tunnel = [r for r in rules if r.group == "tunnel"]
    assert tunnel and all(r.family == 4 for r in tunnel)


def test_no_dhcp_no_neighbour_rules():
    rules = bridge_rules(policy_of(allow_dhcp=False))
    assert not [r for r in rules if r.group == "dhcp" or r.icmp_types]


# --------------------------------------------------------------------------- the printed table


def test_bridge_table_text():
    text = render(policy_of(allow_lan=True, lan_cidrs=["10.0.0.0/8"], ipv6="block", dns_servers=["10.64.0.1"]))
    assert text.index("table inet killswitch {") < text.index("table bridge killswitch {")
    digest = policy_of(allow_lan=True, lan_cidrs=["10.0.0.0/8"], ipv6="block", dns_servers=["10.64.0.1"]).digest()
    assert text.count('comment "netlock.killswitch %s"' % digest[:16]) == 2
    assert chain_rules(text) == [
        "type filter hook forward priority filter; policy drop;",
        "ip daddr @dhcp_v4 udp sport 68 udp dport 67 accept",
        "ip daddr @dhcp_v4 udp sport 67 udp dport 68 accept",
        "ip6 daddr @onlink_v6 icmpv6 type { nd-neighbor-advert, nd-neighbor-solicit, nd-router-advert, "
        "nd-router-solicit } ip6 hoplimit 255 accept",
        "ip6 daddr @mld_v6 icmpv6 type mld2-listener-report accept",
        "ether type arp accept",
        'oifname "tap*" ip daddr @dns_v4 meta l4proto { tcp, udp } th dport { 53, 853 } accept',
        'oifname "wg0" ip daddr @dns_v4 meta l4proto { tcp, udp } th dport { 53, 853 } accept',
        "tcp dport { 53, 853 } counter drop",
        "udp dport { 53, 853 } counter drop",
        'oifname "tap*" ether type ip accept',
        'oifname "wg0" ether type ip accept',
        'iifname "tap*" ether type ip accept',
        'iifname "wg0" ether type ip accept',
        "ip daddr @lan_v4 accept",
        "ether type ip counter drop",
        "ether type ip6 counter drop",
    ]
    assert "meta nfproto" not in text.split("table bridge killswitch {")[1]


def test_the_fence_stays_one_inet_table():
    fence = render(policy_of(allow_lan=True), fence=True)
    assert "table bridge" not in fence and "table inet killswitch_fence {" in fence


@pytest.mark.parametrize("overrides", [
    {}, {"forward": "off"}, {"forward": "block"}, {"allow_lan": True, "ipv6": "tunnel", "log_drops": True},
    {"allow_lan": True, "ipv6": "block", "dns_servers": ["10.64.0.1", "2001:db8:53::1"], "allow_dhcp": False},
])
def test_nft_accepts_every_bridge_table(nft_accepts, overrides):
    nft_accepts(render(policy_of(**overrides)))


# --------------------------------------------------------------------------- real frames through a bridge


def netns_sh(script):
    return subprocess.run(["unshare", "--net", "--", "sh", "-ec", script], capture_output=True, text=True,
                          timeout=60, check=False)


def test_frames_through_a_bridge_in_a_netns(nft_accepts, tmp_path):
    """A veth pair per port on one bridge, in a throwaway netns: the bridge table's counters say which frames it
    dropped.  Control first: without our table the same pings are answered."""
    path = tmp_path / "ruleset.nft"
    path.write_text(render(policy_of(allow_lan=True, lan_cidrs=["198.18.40.0/24"])))
    pings = ("ip netns exec a ping -c1 -W1 198.18.40.2 >/dev/null && echo lan=ok || echo lan=dropped; "
             "ip netns exec a ping -c1 -W1 198.18.41.2 >/dev/null && echo other=ok || echo other=dropped")
    proc = netns_sh("""
        for n in a b; do ip netns add nlbt$$$n 2>/dev/null || true; done
        trap 'ip netns del nlbt$$a; ip netns del nlbt$$b' EXIT
        alias_a=nlbt$$a; alias_b=nlbt$$b
        ip link add br0 type bridge && ip link set br0 up
        ip link add pa type veth peer name ga netns $alias_a
        ip link add pb type veth peer name gb netns $alias_b
        for p in pa pb; do ip link set $p master br0 up; done
        ip -n $alias_a link set ga up; ip -n $alias_b link set gb up
        ip -n $alias_a addr add 198.18.40.1/24 dev ga; ip -n $alias_a addr add 198.18.41.1/24 dev ga
        ip -n $alias_b addr add 198.18.40.2/24 dev gb; ip -n $alias_b addr add 198.18.41.2/24 dev gb
        sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
        echo control; %(pings)s
        nft -f %(path)s
        echo killswitch; %(pings)s
        nft list chain bridge killswitch forward | grep "ether type ip counter"
    """ % dict(pings=pings.replace("ip netns exec a", "ip netns exec $alias_a"), path=path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:6] == ["control", "lan=ok", "other=ok", "killswitch", "lan=ok", "other=dropped"], proc.stdout
    dropped = re.search(r"ether type ip counter packets (\d+) ", lines[6])
    assert dropped and int(dropped.group(1)) >= 1, lines[6]


# --------------------------------------------------------------------------- the other backends


def test_iptables_warns_that_bridged_frames_need_br_netfilter():
    warnings = backends.warnings_for(policy_of(), "iptables", "ks1")
    assert len(warnings) == 1
    assert warnings[0].startswith("ks1: killswitch_forward: 'tunnel' ") and "bridge-nf-call-iptables" in warnings[0]
    assert backends.warnings_for(policy_of(forward="off"), "iptables") == []


@pytest.mark.parametrize("name", ["nftables", "windows"])
def test_nftables_and_windows_have_no_bridge_warning(name):
    assert backends.warnings_for(policy_of(), name) == []


def test_windows_payload_ignores_bridged_rules():
    document = json.loads(backends.render_for(policy_of(allow_lan=True), "windows"))
    assert "bridge" not in json.dumps(document).lower()
