# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nested tunnels (double VPN): an endpoint's ``via`` names its carrier tunnel; the policy, the rule list and the
renderers.  The traffic proof is tests/unit/plugins/module_utils/test_double_vpn.py."""

from __future__ import annotations

import json

import pytest

from ansible_collections.netlock.killswitch.plugins.module_utils import verify
from ansible_collections.netlock.killswitch.plugins.plugin_utils import backends, render_iptables, render_nftables
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import PolicyError, interfaces_overlap, parse_policy
from ansible_collections.netlock.killswitch.plugins.plugin_utils.rules import OUTPUT, in_order, rule_list

OUTER, INNER = "198.18.2.2", "198.18.4.2"


def nested(**overrides):
    variables = {
        "killswitch_tunnel_interfaces": ["wg-inner", "wg-outer"],
        "killswitch_endpoints": [{"address": OUTER, "port": 51820},
                                 {"address": INNER, "port": 51821, "via": "wg-outer"}],
        "killswitch_endpoint_mark": 0x5158,
    }
    variables.update(overrides)
    return parse_policy(variables)


def problems(**overrides):
    with pytest.raises(PolicyError) as error:
        nested(**overrides)
    return [str(p) for p in error.value.problems]


def test_flat_policy_keeps_its_fingerprint():
    """No via: the digest (and so every rendered byte) is what it was before nested tunnels existed."""
    policy = parse_policy({"killswitch_tunnel_interfaces": ["wg0"],
                           "killswitch_endpoints": [{"address": "198.51.100.7", "port": 51820}],
                           "killswitch_management_cidrs": ["192.0.2.10"],
                           "killswitch_extra_outbound": [{"cidr": "203.0.113.0/24"}]})
    assert policy.digest() == "39c0adbcf52de187de3e2e4850c8d8055a4226334572bb0c3f3d6b060157c5fe"
    assert policy.carriers == () and policy.exit_interfaces == ("wg0",)


def test_via_makes_a_carrier_and_leaves_the_other_tunnels_exits():
    policy = nested()
    assert policy.carriers == ("wg-outer",)
    assert policy.exit_interfaces == ("wg-inner",)
    assert [(str(e.networks[0]), e.port, e.via) for e in policy.endpoints] == [
        (OUTER + "/32", 51820, None), (INNER + "/32", 51821, "wg-outer")]
    assert nested().digest() != nested(killswitch_endpoints=[{"address": OUTER, "port": 51820},
                                                             {"address": INNER, "port": 51821}]).digest()


def test_three_tunnel_chain_has_one_exit():
    policy = nested(killswitch_tunnel_interfaces=["wg-a", "wg-b", "wg-c"],
                    killswitch_endpoints=[{"address": OUTER, "port": 51820},
                                          {"address": INNER, "port": 51821, "via": "wg-a"},
                                          {"address": "198.18.6.2", "port": 51822, "via": "wg-b"}])
    assert policy.carriers == ("wg-a", "wg-b") and policy.exit_interfaces == ("wg-c",)


@pytest.mark.parametrize("via,expected", [
    ("wg9", "killswitch_endpoints[1].via: 'wg9' is not one of killswitch_tunnel_interfaces (wg-inner, wg-outer)"),
    (7, "killswitch_endpoints[1].via: 7 is not one of killswitch_tunnel_interfaces"),
])
def test_via_must_name_a_tunnel_interface(via, expected):
    endpoints = [{"address": OUTER, "port": 51820}, {"address": INNER, "port": 51821, "via": via}]
    assert any(p.startswith(expected) for p in problems(killswitch_endpoints=endpoints))


def test_via_wildcard_that_also_matches_the_exit_is_refused():
    found = problems(killswitch_tunnel_interfaces=["wg*", "wg-inner"],
                     killswitch_endpoints=[{"address": OUTER, "port": 51820},
                                           {"address": INNER, "port": 51821, "via": "wg*"}])
    assert found == ["killswitch_endpoints[1].via: 'wg*' also matches the exit tunnel wg-inner: a carrier tunnel must "
                     "not match an interface general traffic leaves through"]


def test_an_exit_wildcard_that_matches_the_carrier_is_refused():
    found = problems(killswitch_tunnel_interfaces=["wg-outer", "w*"])
    assert found and "also matches the exit tunnel w*" in found[0]


def test_no_exit_left_is_refused():
    """The only way to write a cycle here: every tunnel is some endpoint's via (the exit itself named as carrier)."""
    found = problems(killswitch_endpoints=[{"address": OUTER, "port": 51820, "via": "wg-inner"},
                                           {"address": INNER, "port": 51821, "via": "wg-outer"}])
    assert found == ["killswitch_tunnel_interfaces: ['wg-inner', 'wg-outer'] has no exit tunnel left: every one is "
                     "the via of an endpoint (a carrier of nested endpoint traffic only)"]


@pytest.mark.parametrize("first,second,overlap", [
    ("wg0", "wg0", True), ("wg0", "wg1", False), ("wg*", "wg0", True), ("wg0", "wg*", True), ("wg*", "wgx*", True),
    ("tun*", "wg*", False), ("wg-o*", "wg-inner", False), ("wg0*", "wg", False),
])
def test_interfaces_overlap(first, second, overlap):
    assert interfaces_overlap(first, second) is overlap


def test_rule_list_scopes_the_nested_endpoint_to_its_carrier_and_keeps_carriers_out_of_the_exits():
    policy = nested(killswitch_ipv6="tunnel", killswitch_forward="tunnel",
                    killswitch_endpoints=[{"address": OUTER, "port": 51820},
                                          {"address": INNER, "port": 51821, "via": "wg-outer"},
                                          {"address": "2001:db8:4::2", "port": 51821, "via": "wg-outer"}])
    rules = rule_list(policy)
    assert in_order(rules, policy)
    carried = [r for r in rules if r.name == "endpoint_carried_udp_51821"]
    assert [(r.family, r.out_interface, r.owner.mark, r.destination_ports) for r in carried] == [
        (4, "wg-outer", 0x5158, (51821,)), (6, "wg-outer", 0x5158, (51821,))]
    flat = [r for r in rules if r.name == "endpoint_udp_51820"]
    assert [r.out_interface for r in flat] == [None]
    # nothing else names the carrier: not the tunnel accepts, not DNS, not forward
    assert {r.out_interface for r in rules if r.out_interface and r.out_interface.startswith("wg")} == {"wg-inner", "wg-outer"}
    assert [r for r in rules if "wg-outer" in (r.out_interface, r.in_interface) and r.group != "endpoint"] == []


def test_dns_through_a_carrier_is_refused():
    rules = rule_list(nested(killswitch_dns_servers=["198.18.11.53"]))
    dns_accepts = [r for r in rules if r.direction == OUTPUT and r.group == "dns" and r.verdict == "accept"]
    assert [r.out_interface for r in dns_accepts] == ["wg-inner"]


def test_ipv6_blocked_refuses_an_ipv6_nested_endpoint():
    found = problems(killswitch_endpoints=[{"address": OUTER, "port": 51820},
                                           {"address": "2001:db8:4::2", "port": 51821, "via": "wg-outer"}])
    assert found == ["killswitch_endpoints[1].address: '2001:db8:4::2' is IPv6, and killswitch_ipv6 is 'block' "
                     "(set it to 'tunnel')"]


def test_nftables_matches_the_carrier_by_oifname(nft_accepts_or_none):
    text = render_nftables.render(nested())
    output = text[text.index("chain output"):text.index("chain forward")]
    assert 'oifname "wg-outer" meta mark 0x00005158 ip daddr @endpoint_carried_udp_51821_v4 udp dport 51821 accept' in output
    assert 'oifname "wg-inner" meta nfproto ipv4 accept' in output
    assert 'oifname "wg-outer" meta nfproto' not in text
    if nft_accepts_or_none:
        nft_accepts_or_none(text)


def test_iptables_matches_the_carrier_by_out_interface():
    text = render_iptables.render(nested())
    assert "-o wg-outer -d 198.18.4.2/32 -p udp -m mark --mark 0x5158 --dport 51821 -j ACCEPT" in text
    assert "-o wg-inner -j ACCEPT" in text
    assert [line for line in text.splitlines() if "-o wg-outer" in line and "51821" not in line] == []


def test_windows_refuses_via_naming_variable_host_and_backend():
    with pytest.raises(PolicyError) as error:
        backends.render_for(nested(killswitch_endpoint_mark=None), "windows", host="win1")
    assert [str(p) for p in error.value.problems] == [
        "killswitch_endpoints: {'via': 'wg-outer'} names a carrier tunnel, which the windows backend does not enforce "
        "(nested tunnels need nftables or iptables), on win1"]


def test_ipv6_nested_endpoint_renders_for_nftables_and_ip6tables(nft_accepts_or_none):
    policy = nested(killswitch_ipv6="tunnel",
                    killswitch_endpoints=[{"address": OUTER, "port": 51820},
                                          {"address": "2001:db8:4::2", "port": 51821, "via": "wg-outer"}])
    text = render_nftables.render(policy)
    assert 'oifname "wg-outer" meta mark 0x00005158 ip6 daddr @endpoint_carried_udp_51821_v6 udp dport 51821 accept' in text
    assert 'oifname "wg-outer" meta l4proto' not in text and 'oifname "wg-outer" accept' not in text
    if nft_accepts_or_none:
        nft_accepts_or_none(text)
    assert "-o wg-outer -d 2001:db8:4::2/128 -p udp -m mark --mark 0x5158 --dport 51821 -j ACCEPT" in \
        render_iptables.render(policy)


def test_the_returned_policy_keeps_its_digest_for_killswitch_verify():
    """killswitch_verify recomputes the digest from killswitch_policy's ``policy`` result (Policy.data())."""
    policy = nested()
    data = json.loads(json.dumps(policy.data(), default=str))
    assert data["endpoints"][1]["via"] == "wg-outer" and "via" not in data["endpoints"][0]
    assert verify.digest_of(data) == policy.digest()
