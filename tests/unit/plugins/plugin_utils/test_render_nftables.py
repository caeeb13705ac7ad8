# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""render(policy): the rule order the threat model depends on, and nft's own verdict on the text.

Every ruleset rendered here goes through ``nft -c -f`` inside a throwaway network namespace
(the ``rendered`` fixture); those tests skip, with the reason, when that is impossible (not
root, no ``unshare`` or ``nft``).
"""

from __future__ import annotations

import ipaddress
import re
import time

import pytest

from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_nftables import HEADER, render
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import PolicyError, parse_policy

BASE = {
    "killswitch_tunnel_interfaces": ["wg0"],
    "killswitch_endpoints": [{"address": "198.51.100.7", "port": 51820}],
}
REJECTS = ["meta l4proto tcp counter reject with tcp reset", "counter reject with icmpx admin-prohibited"]
DNS_JUMP = "meta l4proto { tcp, udp } th dport { 53, 853 } jump dns"

# Every option set, IPv6 through the tunnel: the widest ruleset the renderer makes.
EVERYTHING = {
    "killswitch_state": "present",
    "killswitch_tunnel_interfaces": ["wg0", "tun*", "wg-backup"],
    "killswitch_endpoints": [
        {"address": "198.51.100.7", "port": 51820},
        {"address": "198.51.100.0/28", "port": 51820, "protocol": "udp"},
        {"address": "2001:db8:1::7", "port": 51820},
        {"address": "vpn.example.com", "port": 443, "protocol": "tcp"},
    ],
    "killswitch_endpoint_mark": 51820,
    "killswitch_endpoint_user": "nobody",
    "killswitch_allow_lan": True,
    "killswitch_lan_cidrs": ["10.0.0.0/8", "192.168.0.0/16", "fe80::/10", "fd00::/8"],
    "killswitch_management_cidrs": ["192.0.2.10", "192.0.2.128/25", "2001:db8:ffff::/48"],
    "killswitch_management_ports": [22, 2222],
    "killswitch_dns_servers": ["10.64.0.1", "2001:db8:53::1"],
    "killswitch_allow_dhcp": True,
    "killswitch_ipv6": "tunnel",
    "killswitch_forward": "tunnel",
    "killswitch_extra_outbound": [
        {"cidr": "203.0.113.0/24", "protocol": "tcp", "port": 443},
        {"cidr": "203.0.113.53", "protocol": "udp", "port": 123},
        {"cidr": "192.0.2.99", "protocol": "icmp"},
        {"cidr": "2001:db8:99::/64", "protocol": "icmp"},
        {"cidr": "192.0.2.200", "protocol": "tcp"},
        {"cidr": "192.0.2.201"},
        {"cidr": "2001:db8:98::1", "protocol": "any"},
    ],
    "killswitch_log_drops": True,
    "killswitch_table": "netlock_ks",
    "killswitch_safe_apply_timeout": 60,
    "killswitch_guard_enabled": True,
    "killswitch_guard_interval": 30,
}


def fake_resolver(name):
    return {"vpn.example.com": ["203.0.113.7", "2001:db8:7::7"]}[name]


def policy_of(resolve=fake_resolver, **overrides):
    variables = dict(BASE)
    variables.update({"killswitch_" + k: v for k, v in overrides.items()})
    return parse_policy(variables, resolve=resolve)


@pytest.fixture
def rendered(nft_accepts_or_none):
    """render(policy), after nft -c (in a netns) accepted it.

    Without root or nft the rule-order checks still run; the nft verdict is then left to the
    tests that ask for ``nft_accepts`` directly, which skip with the reason.
    """
    def _render(policy):
        text = render(policy)
        if nft_accepts_or_none:
            nft_accepts_or_none(text)
        return text
    return _render


# --------------------------------------------------------------------------- parsing the output


def parse_ruleset(text):
    """The rendered text as {"sets": {name: [elements]}, "chains": {name: {"hook", "policy", "rules"}}}."""
    sets, chains = {}, {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\tset (\S+) \{$", line)
        if m:
            body = []
            i += 1
            while lines[i] != "\t}":
                body.append(lines[i].strip())
                i += 1
            joined = " ".join(body)
            elements = re.search(r"elements = \{ (.*) \}", joined).group(1)
            sets[m.group(1)] = [e.strip() for e in elements.split(",")]
        m = re.match(r"^\tchain (\S+) \{$", line)
        if m:
            chain = {"hook": None, "policy": None, "rules": []}
            i += 1
            while lines[i] != "\t}":
                rule = lines[i].strip()
                hook = re.match(r"^type filter hook (\w+) priority filter; policy (\w+);$", rule)
                if hook:
                    chain["hook"], chain["policy"] = hook.groups()
                elif rule:
                    chain["rules"].append(rule)
                i += 1
            chains[m.group(1)] = chain
        i += 1
    return {"sets": sets, "chains": chains}


def indexes(rules, predicate):
    return [i for i, rule in enumerate(rules) if predicate(rule)]


def output_rules(text):
    return parse_ruleset(text)["chains"]["output"]["rules"]


def test_parse_ruleset_helper_reads_what_render_writes(rendered):
    text = rendered(policy_of(dns_servers=["10.64.0.1"], allow_lan=True))
    ruleset = parse_ruleset(text)
    assert set(ruleset["chains"]) == {"input", "output", "forward", "dns"}
    assert ruleset["sets"]["lan_v4"] == ["10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"]
    assert ruleset["sets"]["dns_v4"] == ["10.64.0.1/32"]
    assert ruleset["chains"]["output"]["rules"][0] == 'oifname "lo" accept'


# --------------------------------------------------------------------------- determinism and framing


def test_same_policy_same_bytes(rendered):
    one = parse_policy(dict(EVERYTHING), resolve=fake_resolver)
    two = parse_policy(dict(EVERYTHING), resolve=fake_resolver)
    assert one is not two
    first = rendered(one)
    assert render(two).encode() == first.encode()
    assert render(one) == first


def test_input_order_does_not_change_the_bytes(rendered):
    shuffled = dict(EVERYTHING)
    for key in ("killswitch_tunnel_interfaces", "killswitch_endpoints", "killswitch_lan_cidrs",
                "killswitch_management_cidrs", "killswitch_management_ports", "killswitch_dns_servers",
                "killswitch_extra_outbound"):
        shuffled[key] = list(reversed(EVERYTHING[key]))
    assert rendered(parse_policy(shuffled, resolve=fake_resolver)) == \
        render(parse_policy(EVERYTHING, resolve=fake_resolver))


@pytest.mark.parametrize("table", ["killswitch", "netlock_ks"])
def test_file_replaces_the_table_atomically(rendered, table):
    policy = policy_of(table=table)
    text = rendered(policy)
    assert text.startswith(HEADER)
    statements = [line for line in text.splitlines() if line and not line.startswith("#")]
    # declare (no-op when present), delete, define: one transaction that works whether or not
    # the table already exists, never a moment without it.
    assert statements[:3] == ["table inet %s" % table, "delete table inet %s" % table, "table inet %s {" % table]
    assert text.count("delete table") == 1
    assert "flush ruleset" not in text
    assert text.endswith("}\n")
    assert "# policy sha256 %s\n" % policy.digest() in text
    assert 'comment "netlock.killswitch %s"' % policy.digest()[:16] in text


def test_different_policies_render_differently(rendered):
    assert rendered(policy_of()) != rendered(policy_of(endpoints=[{"address": "198.51.100.8", "port": 51820}]))


def test_base_chains_drop_by_default(rendered):
    chains = parse_ruleset(rendered(policy_of()))["chains"]
    for name in ("input", "output", "forward"):
        assert chains[name]["hook"] == name
        assert chains[name]["policy"] == "drop"
    assert chains["dns"]["hook"] is None  # a regular chain, reached only by the jump


# --------------------------------------------------------------------------- output chain order


@pytest.mark.parametrize("overrides", [
    {},
    {"allow_lan": True},
    {"allow_lan": True, "ipv6": "tunnel", "dns_servers": ["10.64.0.1", "2001:db8::53"]},
    {"endpoint_mark": 51820, "endpoint_user": 0, "extra_outbound": [{"cidr": "192.0.2.1", "protocol": "udp", "port": 53}]},
    {"allow_dhcp": False, "management_cidrs": ["192.0.2.10"], "log_drops": True},
    # an endpoint on a DNS port must still be reachable: it comes before the DNS jump
    {"endpoints": [{"address": "198.51.100.7", "port": 53}, {"address": "198.51.100.9", "port": 853, "protocol": "tcp"}]},
])
def test_output_chain_order(rendered, overrides):
    policy = policy_of(**overrides)
    rules = output_rules(rendered(policy))
    assert rules[0] == 'oifname "lo" accept'

    endpoint = indexes(rules, lambda r: "@endpoint_" in r)
    jump = indexes(rules, lambda r: r.endswith("jump dns"))
    tunnel = indexes(rules, lambda r: re.match(r'^oifname "(?!lo")', r) and r.endswith("accept"))
    lan = indexes(rules, lambda r: "@lan_" in r)
    extra = indexes(rules, lambda r: "@extra_" in r)

    assert endpoint and len(jump) == 1 and tunnel
    # one rule per endpoint group and address family
    assert len(endpoint) == sum(len({n.version for n in r.networks}) for r in policy.endpoints)
    assert max(endpoint) < jump[0], "endpoint rules must precede the DNS jump"
    assert jump[0] < min(tunnel), "the DNS jump must precede the tunnel accepts"
    if lan:
        assert jump[0] < min(lan), "the DNS jump must precede the LAN accepts"
    if extra:
        assert jump[0] < min(extra), "the DNS jump must precede the explicit exceptions"
    assert rules[-2:] == REJECTS, "the output chain must end with the reject rules"
    tail = rules[-3:-2] if policy.log_drops else []
    assert all("log prefix" in r for r in tail)
    assert all("accept" not in r for r in rules[len(rules) - 2 - len(tail):])
    assert rules[jump[0]] == DNS_JUMP


def test_lan_accept_only_when_allowed(rendered):
    assert not [r for r in output_rules(rendered(policy_of(allow_lan=False))) if "@lan_" in r]
    assert "set lan_" not in rendered(policy_of(allow_lan=False))
    assert [r for r in output_rules(rendered(policy_of(allow_lan=True))) if "@lan_" in r] == ["ip daddr @lan_v4 accept"]


@pytest.mark.parametrize("mark,user,owner", [
    (51820, None, "meta mark 0x0000ca6c"),
    (None, "nobody", 'meta skuid "nobody"'),
    (None, 1000, "meta skuid 1000"),
    (0xFFFFFFFF, "0", "meta mark 0xffffffff meta skuid 0"),
])
def test_endpoint_rules_carry_mark_and_user(rendered, mark, user, owner):
    policy = policy_of(ipv6="tunnel", endpoint_mark=mark, endpoint_user=user, endpoints=[
        {"address": "198.51.100.7", "port": 51820}, {"address": "2001:db8::7", "port": 51820},
        {"address": "203.0.113.9", "port": 443, "protocol": "tcp"}])
    rules = [r for r in output_rules(rendered(policy)) if "@endpoint_" in r]
    assert len(rules) == 3
    for rule in rules:
        assert rule.startswith(owner + " "), rule
        assert rule.endswith(" accept")
    assert any(r.endswith(" ip daddr @endpoint_udp_51820_v4 udp dport 51820 accept") for r in rules)
    assert any(r.endswith("ip6 daddr @endpoint_udp_51820_v6 udp dport 51820 accept") for r in rules)
    assert any(r.endswith("ip daddr @endpoint_tcp_443_v4 tcp dport 443 accept") for r in rules)


def test_endpoint_rules_without_mark_or_user(rendered):
    rules = [r for r in output_rules(rendered(policy_of())) if "@endpoint_" in r]
    assert rules == ["ip daddr @endpoint_udp_51820_v4 udp dport 51820 accept"]


def test_endpoint_sets_hold_the_pinned_addresses(rendered):
    sets = parse_ruleset(rendered(policy_of(ipv6="tunnel", endpoints=[
        {"address": "vpn.example.com", "port": 51820}, {"address": "198.51.100.0/28", "port": 51820}])))["sets"]
    assert sets["endpoint_udp_51820_v4"] == ["198.51.100.0/28", "203.0.113.7/32"]
    assert sets["endpoint_udp_51820_v6"] == ["2001:db8:7::7/128"]


@pytest.mark.parametrize("ipv6,suffix", [("block", " meta nfproto ipv4"), ("tunnel", "")])
def test_tunnel_accepts_match_the_interface_names(rendered, ipv6, suffix):
    text = rendered(policy_of(ipv6=ipv6, tunnel_interfaces=["wg0", "tun*"]))
    rules = output_rules(text)
    accepts = [r for r in rules if r.startswith("oifname ") and r != 'oifname "lo" accept']
    assert accepts == ['oifname "tun*"%s accept' % suffix, 'oifname "wg0"%s accept' % suffix]
    # a tunnel is matched by name only: never by an address that could move to another interface
    assert not [r for r in rules if "oif " in r or "oifname !=" in r]


def test_no_established_accept_in_output_except_management_replies(rendered):
    policy = policy_of(ipv6="tunnel", management_cidrs=["192.0.2.10", "2001:db8::10"], management_ports=[22, 2222],
                       allow_lan=True, forward="tunnel")
    rules = output_rules(rendered(policy))
    stateful = [r for r in rules if "ct state" in r]
    assert stateful == [
        "ip daddr @management_v4 tcp sport { 22, 2222 } ct state established ct direction reply accept",
        "ip6 daddr @management_v6 tcp sport { 22, 2222 } ct state established ct direction reply accept",
    ]
    assert not [r for r in rules if "related" in r]


def test_no_established_accept_at_all_without_management(rendered):
    assert not [r for r in output_rules(rendered(policy_of())) if "ct state" in r]


def test_management_ports_open_inbound_from_management_sources_only(rendered):
    chains = parse_ruleset(rendered(policy_of(management_cidrs=["192.0.2.10"], management_ports=[22, 2222])))["chains"]
    inbound = [r for r in chains["input"]["rules"] if "dport" in r and "tcp" in r]
    assert inbound == ["ip saddr @management_v4 tcp dport { 22, 2222 } accept"]


def test_no_management_rules_without_ports(rendered):
    text = rendered(policy_of(management_cidrs=["192.0.2.10"], management_ports=[]))
    assert "@management" not in text


def test_ipv6_block_leaves_no_ipv6_lan_set(rendered):
    text = rendered(policy_of(allow_lan=True, ipv6="block"))
    assert "lan_v6" not in text
    assert "ip6 daddr @lan" not in text and "ip6 saddr @lan" not in text
    assert parse_ruleset(text)["sets"]["lan_v4"]


def test_ipv6_tunnel_keeps_the_ipv6_lan_set(rendered):
    sets = parse_ruleset(rendered(policy_of(allow_lan=True, ipv6="tunnel")))["sets"]
    assert sets["lan_v6"] == ["fc00::/7", "fe80::/10"]


IPV4_ONLY = re.compile(r"(^| )(ip (daddr|saddr) |meta nfproto ipv4)")
LINK_LOCAL_V6 = re.compile(r"^icmpv6 type .* ip6 hoplimit 255 accept$|ip6 daddr ff02::")


@pytest.mark.parametrize("overrides", [
    {"allow_dhcp": False},
    {},  # the DHCPv4 client rule is IPv4-only: IPv6 UDP 68->67 does not get out
    {"dns_servers": ["10.64.0.1", "2001:db8::53"]},  # an IPv6 resolver renders no rule
])
def test_ipv6_block_accepts_no_ipv6_outside_the_tunnel(rendered, overrides):
    """killswitch_ipv6=block: nothing IPv6 leaves except link-local neighbour discovery (and loopback)."""
    overrides = dict({"dns_servers": ["10.64.0.1"]}, **overrides)
    policy = policy_of(ipv6="block", allow_lan=True, management_cidrs=["192.0.2.10"],
                       endpoint_mark=1, extra_outbound=[{"cidr": "192.0.2.1"}], forward="tunnel", **overrides)
    chains = parse_ruleset(rendered(policy))["chains"]
    for name in ("output", "forward", "dns"):
        for rule in chains[name]["rules"]:
            if "accept" not in rule or rule == 'oifname "lo" accept':
                continue
            assert IPV4_ONLY.search(rule) or LINK_LOCAL_V6.search(rule), "%s: %s accepts IPv6" % (name, rule)


DHCP4_OUT = "meta nfproto ipv4 udp sport 68 udp dport 67 accept"
DHCP4_IN = "meta nfproto ipv4 udp sport 67 udp dport 68 accept"


@pytest.mark.parametrize("ipv6", ["block", "tunnel"])
def test_dhcpv4_rules_are_ipv4_only(rendered, ipv6):
    chains = parse_ruleset(rendered(policy_of(allow_dhcp=True, ipv6=ipv6)))["chains"]
    assert [r for r in chains["output"]["rules"] if "dport 67" in r] == [DHCP4_OUT]
    assert [r for r in chains["input"]["rules"] if "dport 68" in r] == [DHCP4_IN]


def test_dhcp_and_neighbour_discovery(rendered):
    on = rendered(policy_of(allow_dhcp=True, ipv6="tunnel"))
    off = rendered(policy_of(allow_dhcp=False, ipv6="tunnel"))
    assert DHCP4_OUT in output_rules(on)
    assert DHCP4_IN in parse_ruleset(on)["chains"]["input"]["rules"]
    assert "ip6 daddr ff02::1:2 udp sport 546 udp dport 547 accept" in output_rules(on)
    assert any(r.startswith("icmpv6 type") and "hoplimit 255" in r for r in output_rules(on))
    assert "dport 67" not in off and "dport 547" not in off and "icmpv6" not in off
    # DHCPv6 only when IPv6 may be used at all
    assert "dport 547" not in rendered(policy_of(allow_dhcp=True, ipv6="block"))


def test_dns_chain_only_lets_dns_through_the_tunnel(rendered):
    chains = parse_ruleset(rendered(policy_of(tunnel_interfaces=["wg0", "tun*"])))["chains"]
    dns = chains["dns"]["rules"]
    accepts = [r for r in dns if "accept" in r]
    assert accepts == ['oifname "tun*" meta nfproto ipv4 accept', 'oifname "wg0" meta nfproto ipv4 accept']
    assert dns[-2:] == REJECTS


def test_dns_chain_with_resolvers_accepts_only_them(rendered):
    text = rendered(policy_of(ipv6="tunnel", dns_servers=["10.64.0.1", "2001:db8:53::1"]))
    ruleset = parse_ruleset(text)
    accepts = [r for r in ruleset["chains"]["dns"]["rules"] if "accept" in r]
    assert accepts == ['oifname "wg0" ip daddr @dns_v4 accept', 'oifname "wg0" ip6 daddr @dns_v6 accept']
    assert ruleset["sets"]["dns_v4"] == ["10.64.0.1/32"]
    assert ruleset["sets"]["dns_v6"] == ["2001:db8:53::1/128"]


@pytest.mark.parametrize("dns_servers,accepts", [
    (["10.64.0.1", "2001:db8:53::1"], ['oifname "wg0" meta nfproto ipv4 ip daddr @dns_v4 accept']),
    (["2001:db8:53::1"], []),  # no usable resolver: DNS is refused, never opened to any address
])
def test_dns_chain_ignores_ipv6_resolvers_with_ipv6_block(rendered, dns_servers, accepts):
    policy = policy_of(ipv6="block", dns_servers=dns_servers)
    assert any("killswitch_dns_servers" in w and "IPv6" in w for w in policy.warnings)
    text = rendered(policy)
    ruleset = parse_ruleset(text)
    assert [r for r in ruleset["chains"]["dns"]["rules"] if "accept" in r] == accepts
    assert ruleset["chains"]["dns"]["rules"][-2:] == REJECTS
    assert "dns_v6" not in text and "ip6 daddr" not in "\n".join(ruleset["chains"]["dns"]["rules"])


def test_dns_jump_is_the_only_way_into_the_dns_chain(rendered):
    text = rendered(policy_of(forward="tunnel"))
    chains = parse_ruleset(text)["chains"]
    assert [r for r in chains["output"]["rules"] if "jump" in r or "goto" in r] == [DNS_JUMP]
    assert [r for r in chains["forward"]["rules"] if "jump" in r or "goto" in r] == [DNS_JUMP]
    assert not [r for r in chains["input"]["rules"] if "jump" in r or "goto" in r]


def test_forward_chain_absent_when_off(rendered):
    text = rendered(policy_of(forward="off"))
    chains = parse_ruleset(text)["chains"]
    assert "forward" not in chains
    assert "hook forward" not in text
    assert set(chains) == {"input", "output", "dns"}


@pytest.mark.parametrize("log_drops", [False, True])
def test_forward_chain_drop_only_when_block(rendered, log_drops):
    chain = parse_ruleset(rendered(policy_of(forward="block", allow_lan=True, log_drops=log_drops)))["chains"]["forward"]
    assert chain["hook"] == "forward" and chain["policy"] == "drop"
    expected = ["counter drop"]
    if log_drops:
        expected.insert(0, 'limit rate 5/second burst 10 packets log prefix "killswitch forward drop: " level info')
    assert chain["rules"] == expected


def test_forward_chain_tunnel(rendered):
    rules = parse_ruleset(rendered(policy_of(forward="tunnel", allow_lan=True)))["chains"]["forward"]["rules"]
    assert rules[0] == DNS_JUMP
    assert rules[-1] == "counter drop"
    assert 'oifname "wg0" meta nfproto ipv4 accept' in rules
    assert 'iifname "wg0" meta nfproto ipv4 ct state established,related accept' in rules
    # replies are accepted per interface, never globally
    assert not [r for r in rules if r.startswith("ct state")]


def test_input_chain(rendered):
    rules = parse_ruleset(rendered(policy_of()))["chains"]["input"]["rules"]
    assert rules[:3] == ['iifname "lo" accept', "ct state established,related accept", "ct state invalid drop"]
    assert rules[-1] == "counter drop"


def test_log_drops(rendered):
    with_log = parse_ruleset(rendered(policy_of(log_drops=True)))["chains"]
    for name in ("input", "output", "forward", "dns"):
        logs = [r for r in with_log[name]["rules"] if " log " in r]
        assert logs == ['limit rate 5/second burst 10 packets log prefix "killswitch %s drop: " level info' % name]
    assert " log " not in rendered(policy_of(log_drops=False))


def test_extra_outbound_rules(rendered):
    policy = policy_of(ipv6="tunnel", extra_outbound=[
        {"cidr": "203.0.113.0/24", "protocol": "tcp", "port": 443},
        {"cidr": "192.0.2.99", "protocol": "icmp"},
        {"cidr": "2001:db8:99::/64", "protocol": "icmp"},
        {"cidr": "192.0.2.200", "protocol": "tcp"},
        {"cidr": "192.0.2.201"},
    ])
    rules = [r for r in output_rules(rendered(policy)) if "@extra_" in r]
    assert rules == [
        "ip daddr @extra_any_all_v4 accept",
        "ip daddr @extra_icmp_all_v4 meta l4proto icmp accept",
        "ip6 daddr @extra_icmp_all_v6 meta l4proto ipv6-icmp accept",
        "ip daddr @extra_tcp_all_v4 meta l4proto tcp accept",
        "ip daddr @extra_tcp_443_v4 tcp dport 443 accept",
    ]


# --------------------------------------------------------------------------- whole rulesets through nft


def test_every_option(rendered, nft_accepts):
    policy = parse_policy(EVERYTHING, resolve=fake_resolver)
    text = rendered(policy)
    ruleset = parse_ruleset(text)
    assert set(ruleset["chains"]) == {"input", "output", "forward", "dns"}
    assert {"endpoint_udp_51820_v4", "endpoint_udp_51820_v6", "endpoint_tcp_443_v4", "endpoint_tcp_443_v6",
            "lan_v4", "lan_v6", "management_v4", "management_v6", "dns_v4", "dns_v6", "extra_tcp_443_v4",
            "extra_udp_123_v4", "extra_icmp_all_v4", "extra_icmp_all_v6", "extra_tcp_all_v4", "extra_any_all_v4",
            "extra_any_all_v6"} == set(ruleset["sets"])
    assert "table inet netlock_ks {" in text
    # and with each mode switched the other way
    for overrides in ({"killswitch_ipv6": "block", "killswitch_endpoints": [{"address": "198.51.100.7", "port": 1}],
                       "killswitch_extra_outbound": [], "killswitch_dns_servers": ["10.64.0.1"]},
                      {"killswitch_forward": "block"}, {"killswitch_forward": "off"},
                      {"killswitch_allow_dhcp": False, "killswitch_log_drops": False, "killswitch_allow_lan": False,
                       "killswitch_endpoint_mark": None, "killswitch_endpoint_user": 65534}):
        nft_accepts(render(parse_policy(dict(EVERYTHING, **overrides), resolve=fake_resolver)))


def spread(start, count, step=2):
    """count single addresses from start, step apart (step 2: none adjacent, so none collapse)."""
    first = int(ipaddress.ip_address(start))
    return [str(ipaddress.ip_address(first + step * i)) for i in range(count)]


def test_large_policy_100k_cidrs(nft_accepts, capsys):
    lan = spread("10.0.0.0", 50000)
    extra = [{"cidr": address, "protocol": "tcp", "port": 443} for address in spread("198.18.0.0", 50000)]
    started = time.monotonic()
    policy = policy_of(allow_lan=True, lan_cidrs=lan, extra_outbound=extra)
    parsed = time.monotonic()
    assert len(policy.lan_networks) == 50000
    assert len(policy.extra_outbound) == 1 and len(policy.extra_outbound[0].networks) == 50000
    assert policy.warnings == ()  # 198.18.0.0/15 and 10/8 are not public
    text = render(policy)
    rendered_at = time.monotonic()
    sets = parse_ruleset(text)["sets"]
    assert len(sets["lan_v4"]) == 50000 and len(sets["extra_tcp_443_v4"]) == 50000
    assert sets["lan_v4"][0] == "10.0.0.0/32" and sets["extra_tcp_443_v4"][-1] == "198.19.134.158/32"
    nft_seconds = nft_accepts(text)
    with capsys.disabled():
        print("\n[100k CIDRs] parse %.1f s, render %.1f s, nft -c %.1f s, %d bytes"
              % (parsed - started, rendered_at - parsed, nft_seconds, len(text)))


@pytest.mark.parametrize("overrides", [
    {"tunnel_interfaces": ["abcdefghijklmno"]},
    {"tunnel_interfaces": ["abcdefghijklmn*"]},
    {"tunnel_interfaces": ["@", "-", "+", "_", "a.b", "x@y*", "tun.1-2_3+4@5"]},
    {"endpoint_user": "4294967294"},
    {"endpoint_user": 0},
    {"endpoint_mark": 1},
    {"table": "a" * 32},
    {"ipv6": "tunnel", "management_cidrs": ["0.0.0.0/0", "::/0"], "management_ports": [1, 65535]},
    {"ipv6": "tunnel", "endpoints": [{"address": "::/1", "port": 1}, {"address": "0.0.0.0/1", "port": 65535}]},
    {"ipv6": "tunnel", "endpoints": [{"address": "::/0", "port": 1}, {"address": "0.0.0.0/0", "port": 65535}]},
    {"ipv6": "tunnel", "dns_servers": ["::1", "127.0.0.53"]},
    {"allow_lan": True, "lan_cidrs": ["0.0.0.0/0"]},
    # nft limits the whole quoted name, '*' included, to IFNAMSIZ-1 = 15 characters
    {"tunnel_interfaces": ["abcdefghijklmno*"]},
    # ipv6=block: an IPv6 resolver renders no rule (never 'meta nfproto ipv4 ip6 daddr ...')
    {"dns_servers": ["10.64.0.1", "2001:db8::53"]},
    {"dns_servers": ["2001:db8::53"]},
    # scoped IPv6 is refused, never rendered as 'fe80::1%eth0/128'
    {"ipv6": "tunnel", "dns_servers": ["fe80::1%eth0"]},
    {"ipv6": "tunnel", "lan_cidrs": ["fe80::%eth0/64"], "allow_lan": True},
    # uids: ASCII digits below 2**32-1 only
    {"endpoint_user": "99999999999"},
    {"endpoint_user": "4294967295"},
    {"endpoint_user": "\u00b2"},
    {"endpoint_user": "\u0663"},
    {"table": "killswitch\n"},
    {"tunnel_interfaces": ["wg0\n"]},
])
def test_whatever_the_parser_accepts_nft_accepts(nft_accepts, overrides):
    """Edge values: either the parser refuses them (naming the variable) or nft takes the result."""
    try:
        policy = policy_of(**overrides)
    except PolicyError as error:
        assert all(p.variable.startswith("killswitch_") for p in error.problems)
        return
    nft_accepts(render(policy))


def test_loaded_for_real_in_a_netns(nft_load):
    policy = parse_policy(EVERYTHING, resolve=fake_resolver)
    document = nft_load(render(policy), policy.table)
    items = document["nftables"]
    tables = [i["table"] for i in items if "table" in i]
    assert tables and tables[0]["name"] == "netlock_ks" and tables[0]["family"] == "inet"
    chains = {i["chain"]["name"]: i["chain"] for i in items if "chain" in i}
    assert set(chains) == {"input", "output", "forward", "dns"}
    for name in ("input", "output", "forward"):
        assert chains[name]["hook"] == name
        assert chains[name]["policy"] == "drop"
        assert chains[name]["type"] == "filter"
        assert chains[name]["prio"] == 0
    assert "hook" not in chains["dns"]
    sets = {i["set"]["name"]: i["set"] for i in items if "set" in i}
    assert sets["endpoint_udp_51820_v4"]["flags"] == ["interval"]
    rules = [i["rule"] for i in items if "rule" in i]
    output = [r for r in rules if r["chain"] == "output"]
    # the kernel kept every output rule, in order, last one a reject
    assert len(output) == len(output_rules(render(policy)))
    assert any("reject" in e for e in output[-1]["expr"])


def test_reload_replaces_the_table_in_one_transaction(nft_binary, unshare_binary, tmp_path):
    """Loading the file twice, and over a different older table, leaves exactly the new table."""
    import subprocess

    old = tmp_path / "old.nft"
    new = tmp_path / "new.nft"
    old.write_text(render(policy_of(endpoints=[{"address": "198.51.100.1", "port": 1}])))
    new.write_text(render(policy_of(endpoints=[{"address": "198.51.100.2", "port": 2}])))
    script = '"$1" -f "$2" && "$1" -f "$3" && "$1" -f "$3" && "$1" list table inet killswitch'
    proc = subprocess.run([unshare_binary, "--net", "--", "sh", "-c", script, "sh", nft_binary, str(old), str(new)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "198.51.100.2" in proc.stdout and "198.51.100.1" not in proc.stdout
    assert proc.stdout.count("chain output {") == 1


# --------------------------------------------------------------------------- packets, in a netns

PROBE = r'''
import json, socket, sys
results = {}
for name, family, sport, host, port in json.loads(sys.argv[1]):
    s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sport:
        s.bind(("::" if family == 6 else "0.0.0.0", sport))
    try:
        s.sendto(b"probe", (host, port))
        results[name] = "sent"
    except OSError as exc:
        results[name] = "refused" if exc.errno == 1 else "error %s" % exc
    s.close()
print(json.dumps(results))
'''
# uplink "up0" (default routes) and a stand-in tunnel "wg0" (10.99.0.0/16), both veth pairs
NETNS_SETUP = r'''
set -e
ip link set lo up
ip link add up0 type veth peer name up0p
ip link add wg0 type veth peer name wg0p
for dev in up0 up0p wg0 wg0p; do ip link set "$dev" up; done
ip addr add 192.0.2.2/24 dev up0
ip -6 addr add 2001:db8:1::2/64 dev up0 nodad
ip route add default via 192.0.2.1 dev up0
ip -6 route add default via 2001:db8:1::1 dev up0
ip addr add 10.99.0.2/16 dev wg0
"$NFT" -f "$RULESET"
"$PY" -c "$PROBE" "$PROBES"
ip link del wg0
"$PY" -c "$PROBE" "$PROBES"
'''


def probe_in_netns(unshare_binary, nft_binary, tmp_path, policy, probes):
    """Send one UDP datagram per probe with the ruleset loaded: {name: "sent"|"refused"}, before and
    after the tunnel interface is deleted."""
    import json
    import os
    import subprocess
    import sys

    ruleset = tmp_path / "ruleset.nft"
    ruleset.write_text(render(policy))
    env = dict(os.environ, NFT=nft_binary, RULESET=str(ruleset), PY=sys.executable, PROBE=PROBE,
               PROBES=json.dumps(probes))
    proc = subprocess.run([unshare_binary, "--net", "--", "sh", "-c", NETNS_SETUP], capture_output=True, text=True, check=False,
                          env=env, timeout=60)
    if proc.returncode != 0 and "veth" in proc.stderr:
        pytest.skip("cannot create veth interfaces here: %s" % proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr
    up, down = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return up, down


PROBES = [
    # name, family, source port (0: any), destination, port
    ("through the tunnel", 4, 0, "10.99.0.5", 443),
    ("dns through the tunnel", 4, 0, "10.99.0.53", 53),
    ("endpoint", 4, 0, "198.51.100.7", 51820),
    ("endpoint, other port", 4, 0, "198.51.100.7", 51821),
    ("other address on the uplink", 4, 0, "203.0.113.5", 443),
    ("dns on the uplink", 4, 0, "203.0.113.53", 53),
    ("dns-over-tls on the uplink", 4, 0, "203.0.113.53", 853),
    ("ipv6 on the uplink", 6, 0, "2001:db8:2::99", 443),
    ("loopback", 4, 0, "127.0.0.1", 9),
]


def test_packets_leave_only_through_the_tunnel(unshare_binary, nft_binary, tmp_path):
    up, down = probe_in_netns(unshare_binary, nft_binary, tmp_path, policy_of(), PROBES)
    assert up == {
        "through the tunnel": "sent",
        "dns through the tunnel": "sent",
        "endpoint": "sent",
        "endpoint, other port": "refused",
        "other address on the uplink": "refused",
        "dns on the uplink": "refused",
        "dns-over-tls on the uplink": "refused",
        "ipv6 on the uplink": "refused",
        "loopback": "sent",
    }
    # tunnel gone: its routes fall back to the uplink, and nothing but the endpoint gets out
    assert down == dict(up, **{"through the tunnel": "refused", "dns through the tunnel": "refused"})


def test_packets_with_lan_allowed_dns_still_refused(unshare_binary, nft_binary, tmp_path):
    probes = PROBES + [("lan", 4, 0, "192.0.2.77", 443), ("dns on the lan", 4, 0, "192.0.2.53", 53)]
    up, _down = probe_in_netns(unshare_binary, nft_binary, tmp_path,
                               policy_of(allow_lan=True, lan_cidrs=["192.0.2.0/24"]), probes)
    assert up["lan"] == "sent"
    assert up["dns on the lan"] == "refused"
    assert up["other address on the uplink"] == "refused"


def test_no_ipv6_leak_through_the_dhcp_rule(unshare_binary, nft_binary, tmp_path):
    """The DHCPv4 client rule matches IPv4 only: IPv6 from port 68 to port 67 is refused on the uplink."""
    up, down = probe_in_netns(unshare_binary, nft_binary, tmp_path, policy_of(ipv6="block"), [
        ("ipv4 from the dhcp client port", 4, 68, "203.0.113.67", 67),  # positive control
        ("ipv6 from the dhcp client port", 6, 68, "2001:db8:2::99", 67),
    ])
    assert up == down == {"ipv4 from the dhcp client port": "sent", "ipv6 from the dhcp client port": "refused"}


# The controller reaches the host through the tunnel: the host listens on 22 behind the kill switch, and
# the controller, in a namespace of its own on the far side of "wg0", connects from its tunnel address.
MANAGEMENT_SETUP = r'''
set -e
ip link set lo up
ip link add wg0 type veth peer name wg0p
ip addr add 198.18.130.11/24 dev wg0
ip link set wg0 up
"$NFT" -f "$RULESET"
"$PY" -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 22)); s.listen(4)
s.settimeout(4)
try:
    c, _ = s.accept(); c.sendall(b"SSH-2.0-stand-in\r\n"); time.sleep(0.5)
except OSError:
    pass' &
unshare --net sh -c 'echo $$ > "$PIDFILE"; exec sleep 20' &
while [ ! -s "$PIDFILE" ]; do sleep 0.05; done
ctl=$(cat "$PIDFILE")
ip link set wg0p netns "$ctl"
nsenter --net=/proc/$ctl/ns/net sh -c '
ip link set lo up; ip addr add 198.18.130.5/24 dev wg0p; ip link set wg0p up
"$PY" -c "import socket
s = socket.create_connection((\"198.18.130.11\", 22), timeout=3)
print(\"banner\", s.recv(64).decode().strip())"' || echo "no connection"
kill "$ctl" 2>/dev/null || true
'''


@pytest.mark.parametrize("management,admitted", [(["198.18.130.5"], True), ([], False)],
                         ids=["controller-admitted", "control-not-admitted"])
def test_management_through_the_tunnel(unshare_binary, nft_binary, tmp_path, management, admitted):
    """Real packets: the controller's tunnel address as management source opens port 22 over the tunnel;
    without it (the control) the same connection is refused, so the test can fail."""
    import os
    import subprocess
    import sys

    ruleset = tmp_path / "ruleset.nft"
    ruleset.write_text(render(policy_of(management_cidrs=management)))
    env = dict(os.environ, NFT=nft_binary, RULESET=str(ruleset), PY=sys.executable, PIDFILE=str(tmp_path / "ctl.pid"))
    proc = subprocess.run([unshare_binary, "--net", "--", "sh", "-c", MANAGEMENT_SETUP], capture_output=True, text=True,
                          check=False, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert ("banner SSH-2.0-stand-in" in proc.stdout) is admitted, proc.stdout + proc.stderr
    assert ("no connection" in proc.stdout) is not admitted
