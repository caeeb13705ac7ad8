# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""render(policy): the rule order the threat model depends on, and nft's own verdict on the text.

Every ruleset rendered here goes through ``nft -c -f`` inside a throwaway network namespace
(the ``rendered`` fixture); those tests skip, with the reason, when that is impossible (not
root, no ``unshare`` or ``nft``).  The rules come from the neutral rule list (``rules.py``, tested in
``test_rules.py``); here is what nft makes of them, down to real packets in a network namespace.
"""

from __future__ import annotations

import ipaddress
import re
import time

import pytest

from ansible_collections.netlock.killswitch.plugins.plugin_utils.backends import render_for
from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_nftables import HEADER, render
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import PolicyError, parse_policy

BASE = {
    "killswitch_tunnel_interfaces": ["wg0"],
    "killswitch_endpoints": [{"address": "198.51.100.7", "port": 51820}],
}
# One final rule per family, so that the guard's metrics count dropped IPv4 and IPv6 apart.
REJECTS = ["meta nfproto %s meta l4proto tcp counter reject with tcp reset" % family if tcp
           else "meta nfproto %s counter reject with icmpx admin-prohibited" % family
           for family in ("ipv4", "ipv6") for tcp in (True, False)]
DROPS = ["meta nfproto ipv4 counter drop", "meta nfproto ipv6 counter drop"]
# DNS and DNS-over-TLS: accepted out of a tunnel (to the resolvers, if any), then refused, in the output and
# forward chains themselves (there is no separate chain to jump to, or to return from).
DNS_MATCH = "meta l4proto { tcp, udp } th dport { 53, 853 }"
DNS_REJECTS = ["tcp dport { 53, 853 } counter reject with tcp reset",
               "udp dport { 53, 853 } counter reject with icmpx admin-prohibited"]

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
    """The nftables payload of a policy (``render_for``, so the backend's own checks apply too), after
    nft -c (in a netns) accepted it.

    Without root or nft the rule-order checks still run; the nft verdict is then left to the
    tests that ask for ``nft_accepts`` directly, which skip with the reason.
    """
    def _render(policy):
        text = render_for(policy, "nftables")
        assert text == render(policy)
        if nft_accepts_or_none:
            nft_accepts_or_none(text)
        return text
    return _render


# --------------------------------------------------------------------------- parsing the output


def table_lines(text, family):
    """The lines of one table's definition (``table <family> <name> {`` to its closing brace) in the file."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"^table %s \S+ \{$" % family, line)), None)
    return [] if start is None else lines[start:lines.index("}", start) + 1]


def parse_ruleset(text, family="inet"):
    """One table of the rendered text (the inet table unless asked) as {"sets": {name: [elements]},
    "chains": {name: {"hook", "policy", "rules"}}}."""
    sets, chains = {}, {}
    lines = table_lines(text, family)
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


def is_dns_accept(rule):
    return rule.endswith(DNS_MATCH + " accept")


def is_tunnel_accept(rule):
    """A rule that accepts everything out of one (non-loopback) interface."""
    return bool(re.match(r'^oifname "(?!lo")[^"]*"( meta nfproto ipv4)? accept$', rule))


def test_parse_ruleset_helper_reads_what_render_writes(rendered):
    text = rendered(policy_of(dns_servers=["10.64.0.1"], allow_lan=True))
    ruleset = parse_ruleset(text)
    assert set(ruleset["chains"]) == {"input", "output", "forward"}
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
    # the bridge table of the same name, in the same transaction
    bridge = statements.index("table bridge %s" % table)
    assert statements[bridge:bridge + 3] == ["table bridge %s" % table, "delete table bridge %s" % table,
                                             "table bridge %s {" % table]
    assert text.count("delete table") == 2
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
    # only base chains: no regular chain whose end would return a packet past the DNS refusal
    assert set(chains) == {"input", "output", "forward"}
    assert "jump" not in text_of(chains) and "goto" not in text_of(chains)


def text_of(chains):
    return "\n".join(rule for chain in chains.values() for rule in chain["rules"])


# --------------------------------------------------------------------------- output chain order


@pytest.mark.parametrize("overrides", [
    {},
    {"allow_lan": True},
    {"allow_lan": True, "ipv6": "tunnel", "dns_servers": ["10.64.0.1", "2001:db8::53"]},
    {"endpoint_mark": 51820, "endpoint_user": 0, "extra_outbound": [{"cidr": "192.0.2.1", "protocol": "udp", "port": 53}]},
    {"allow_dhcp": False, "management_cidrs": ["192.0.2.10"], "log_drops": True},
    # an endpoint on a DNS port must still be reachable: it comes before the DNS refusal
    {"endpoints": [{"address": "198.51.100.7", "port": 53}, {"address": "198.51.100.9", "port": 853, "protocol": "tcp"}]},
])
def test_output_chain_order(rendered, overrides):
    policy = policy_of(**overrides)
    rules = output_rules(rendered(policy))
    assert rules[0] == 'oifname "lo" accept'

    endpoint = indexes(rules, lambda r: "@endpoint_" in r)
    dns_accept = indexes(rules, is_dns_accept)
    dns_reject = indexes(rules, lambda r: r in DNS_REJECTS)
    tunnel = indexes(rules, is_tunnel_accept)
    lan = indexes(rules, lambda r: "@lan_" in r)
    extra = indexes(rules, lambda r: "@extra_" in r)

    assert endpoint and tunnel
    assert rules[dns_reject[0]:dns_reject[0] + 2] == DNS_REJECTS and len(dns_reject) == 2
    # one rule per endpoint group and address family
    assert len(endpoint) == sum(len({n.version for n in r.networks}) for r in policy.endpoints)
    if not policy.dns_servers:
        # DNS through the tunnel goes anywhere: the tunnel accepts come right after loopback and let it through
        # (rules.TUNNEL_FIRST); the DNS group keeps only the refusal (test_hypothesis checks every verdict)
        assert tunnel == list(range(1, 1 + len(policy.tunnel_interfaces))) and not dns_accept
        dns_accept = [max(endpoint)]   # for the checks below: the refusal follows the endpoints
    assert max(endpoint) < min(dns_accept) or not policy.dns_servers, "endpoint rules must precede the DNS rules"
    assert max(dns_accept) < dns_reject[0], "DNS through the tunnel is accepted before DNS is refused"
    if policy.dns_servers:
        # between the DNS accepts and the refusal: at most the DNS log rule
        between = rules[max(dns_accept) + 1:dns_reject[0]]
        assert between == (['%s limit rate 5/second burst 10 packets log prefix "killswitch dns drop: " level info'
                            % DNS_MATCH] if policy.log_drops else [])
        assert dns_reject[-1] < min(tunnel), "with resolvers, DNS must be refused before the tunnel accepts"
    if lan:
        assert dns_reject[-1] < min(lan), "DNS must be refused before the LAN accepts"
    if extra:
        assert dns_reject[-1] < min(extra), "DNS must be refused before the explicit exceptions"
    # every DNS accept goes out of a tunnel interface
    tunnels = set(policy.tunnel_interfaces)
    assert all(re.match(r'^oifname "([^"]+)" ', rules[i]).group(1) in tunnels for i in dns_accept if policy.dns_servers)
    # before the DNS rules, only the narrow exceptions: loopback, (without resolvers) the tunnels, endpoints,
    # management replies, DHCP, ND, MLD
    narrow = re.compile(r'^(oifname "lo" accept|.*@endpoint_.*|.*@management_v[46] tcp sport .* ct direction reply '
                        r'accept|ip daddr @dhcp_v4 udp sport 68 udp dport 67 accept|ip6 daddr @dhcp6_v6 udp sport 546 '
                        r'udp dport 547 accept|ip6 daddr @onlink_v6 icmpv6 type .* ip6 hoplimit 255 accept|'
                        r'ip6 daddr @mld_v6 icmpv6 type mld2-listener-report accept)$')
    before = rules[:min(dns_accept) + (0 if policy.dns_servers else 1)]
    assert all(narrow.match(r) or (is_tunnel_accept(r) and not policy.dns_servers) for r in before), before
    assert rules[-4:] == REJECTS, "the output chain must end with the reject rules"
    tail = rules[-5:-4] if policy.log_drops else []
    assert all("log prefix" in r for r in tail)
    assert all("accept" not in r for r in rules[len(rules) - len(REJECTS) - len(tail):])


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
    accepts = [r for r in rules if r.startswith("oifname ") and r != 'oifname "lo" accept' and not is_dns_accept(r)]
    assert accepts == ['oifname "tun*"%s accept' % suffix, 'oifname "wg0"%s accept' % suffix]
    # without resolvers, right after loopback, and DNS through them needs no rule of its own
    assert rules[1:3] == accepts and not [r for r in rules if is_dns_accept(r)]
    forward = parse_ruleset(text)["chains"]["forward"]["rules"]
    assert [r for r in forward if is_dns_accept(r)] == ['oifname "tun*"%s %s accept' % (suffix, DNS_MATCH),
                                                        'oifname "wg0"%s %s accept' % (suffix, DNS_MATCH)]
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
# neighbour discovery to link-local and multicast destinations only, hop limit 255; MLD reports to ff02::16
LINK_LOCAL_V6 = re.compile(r"^ip6 daddr @onlink_v6 icmpv6 type \{ nd-router-solicit, nd-neighbor-solicit, "
                           r"nd-neighbor-advert \} ip6 hoplimit 255 accept$"
                           r"|^ip6 daddr @mld_v6 icmpv6 type mld2-listener-report accept$")


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
    ruleset = parse_ruleset(rendered(policy))
    chains = ruleset["chains"]
    for name in ("output", "forward"):
        for rule in chains[name]["rules"]:
            if "accept" not in rule or rule == 'oifname "lo" accept':
                continue
            assert IPV4_ONLY.search(rule) or LINK_LOCAL_V6.search(rule), "%s: %s accepts IPv6" % (name, rule)
    if policy.allow_dhcp:
        assert ruleset["sets"]["onlink_v6"] == ["fe80::/10", "ff00::/8"]
        assert ruleset["sets"]["mld_v6"] == ["ff02::16/128"]
    assert not [n for n in ruleset["sets"] if n.endswith("_v6") and n not in ("onlink_v6", "mld_v6")]


# DHCPv4 out: to the broadcast address and the LAN ranges (where the lease's server is) only
DHCP4_OUT = "ip daddr @dhcp_v4 udp sport 68 udp dport 67 accept"
DHCP4_IN = "meta nfproto ipv4 udp sport 67 udp dport 68 accept"
DEFAULT_DHCP_V4 = ["10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16", "255.255.255.255/32"]
ND_OUT = ("ip6 daddr @onlink_v6 icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } "
          "ip6 hoplimit 255 accept")
ND_IN = "icmpv6 type { nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept"
MLD_OUT = "ip6 daddr @mld_v6 icmpv6 type mld2-listener-report accept"


@pytest.mark.parametrize("ipv6", ["block", "tunnel"])
def test_dhcpv4_rules_are_ipv4_only(rendered, ipv6):
    ruleset = parse_ruleset(rendered(policy_of(allow_dhcp=True, ipv6=ipv6)))
    chains = ruleset["chains"]
    assert [r for r in chains["output"]["rules"] if "dport 67" in r] == [DHCP4_OUT]
    assert [r for r in chains["input"]["rules"] if "dport 68" in r] == [DHCP4_IN]
    assert ruleset["sets"]["dhcp_v4"] == DEFAULT_DHCP_V4


@pytest.mark.parametrize("lan,expected", [
    (["192.0.2.0/24"], ["192.0.2.0/24", "255.255.255.255/32"]),
    # a range that holds the broadcast address: collapsed, or nft refuses the overlapping intervals
    (["255.255.255.0/24", "10.0.0.0/8"], ["10.0.0.0/8", "255.255.255.0/24"]),
    (["0.0.0.0/0"], ["0.0.0.0/0"]),
    (["fe80::/10"], ["255.255.255.255/32"]),  # no IPv4 LAN: broadcast only
])
def test_dhcpv4_destinations_are_broadcast_and_the_lan(rendered, lan, expected):
    ruleset = parse_ruleset(rendered(policy_of(allow_dhcp=True, lan_cidrs=lan)))
    assert ruleset["sets"]["dhcp_v4"] == expected


def test_dhcp_and_neighbour_discovery(rendered):
    on = rendered(policy_of(allow_dhcp=True, ipv6="tunnel"))
    off = rendered(policy_of(allow_dhcp=False, ipv6="tunnel"))
    ruleset = parse_ruleset(on)
    assert DHCP4_OUT in output_rules(on)
    assert DHCP4_IN in ruleset["chains"]["input"]["rules"]
    assert "ip6 daddr @dhcp6_v6 udp sport 546 udp dport 547 accept" in output_rules(on)
    assert ruleset["sets"]["dhcp6_v6"] == ["ff02::1:2/128"]
    assert "ip6 saddr @dhcp6_server_v6 udp sport 547 udp dport 546 accept" in ruleset["chains"]["input"]["rules"]
    assert ruleset["sets"]["dhcp6_server_v6"] == ["fe80::/10"]
    # neighbour discovery out: link-local and multicast destinations only, never crossing a router
    assert [r for r in output_rules(on) if "icmpv6" in r] == [ND_OUT, MLD_OUT]
    assert ruleset["sets"]["onlink_v6"] == ["fe80::/10", "ff00::/8"]
    assert ruleset["sets"]["mld_v6"] == ["ff02::16/128"]
    assert [r for r in ruleset["chains"]["input"]["rules"] if "icmpv6" in r] == [ND_IN]
    assert "dport 67" not in off and "dport 547" not in off and "icmpv6" not in off and "@onlink" not in off
    # DHCPv6 only when IPv6 may be used at all
    assert "dport 547" not in rendered(policy_of(allow_dhcp=True, ipv6="block"))


def dns_rules(rules):
    """The DNS accepts and the two DNS rejects, which must follow them."""
    accepts = [r for r in rules if is_dns_accept(r)]
    start = rules.index(DNS_REJECTS[0])
    assert rules[start:start + 2] == DNS_REJECTS
    assert not accepts or rules.index(accepts[-1]) < start
    return accepts


@pytest.mark.parametrize("chain", ["output", "forward"])
def test_dns_only_through_the_tunnel(rendered, chain):
    chains = parse_ruleset(rendered(policy_of(tunnel_interfaces=["wg0", "tun*"])))["chains"]
    tunnels = ['oifname "tun*" meta nfproto ipv4', 'oifname "wg0" meta nfproto ipv4']
    if chain == "output":
        # the tunnel accepts come before the DNS refusal (rules.TUNNEL_FIRST): DNS through them is let through
        rules = chains[chain]["rules"]
        assert dns_rules(rules) == [] and rules[1:3] == ["%s accept" % tunnel for tunnel in tunnels]
        assert rules.index(DNS_REJECTS[0]) > 2
    else:
        assert dns_rules(chains[chain]["rules"]) == ["%s %s accept" % (tunnel, DNS_MATCH) for tunnel in tunnels]


@pytest.mark.parametrize("chain", ["output", "forward"])
def test_dns_with_resolvers_accepts_only_them(rendered, chain):
    text = rendered(policy_of(ipv6="tunnel", dns_servers=["10.64.0.1", "2001:db8:53::1"]))
    ruleset = parse_ruleset(text)
    assert dns_rules(ruleset["chains"][chain]["rules"]) == ['oifname "wg0" ip daddr @dns_v4 %s accept' % DNS_MATCH,
                                                            'oifname "wg0" ip6 daddr @dns_v6 %s accept' % DNS_MATCH]
    assert ruleset["sets"]["dns_v4"] == ["10.64.0.1/32"]
    assert ruleset["sets"]["dns_v6"] == ["2001:db8:53::1/128"]


@pytest.mark.parametrize("dns_servers,accepts", [
    (["10.64.0.1", "2001:db8:53::1"], ['oifname "wg0" ip daddr @dns_v4 %s accept' % DNS_MATCH]),
    (["2001:db8:53::1"], []),  # no usable resolver: DNS is refused, never opened to any address
])
def test_dns_ignores_ipv6_resolvers_with_ipv6_block(rendered, dns_servers, accepts):
    policy = policy_of(ipv6="block", dns_servers=dns_servers)
    assert any("killswitch_dns_servers" in w and "IPv6" in w for w in policy.warnings)
    text = rendered(policy)
    ruleset = parse_ruleset(text)
    for chain in ("output", "forward"):
        assert dns_rules(ruleset["chains"][chain]["rules"]) == accepts
    assert "dns_v6" not in text and "ip6 daddr @dns" not in text


def test_no_jumps_anywhere(rendered):
    """Every rule sits in a base chain: no jump or goto that could return a packet past the DNS refusal."""
    text = rendered(policy_of(forward="tunnel", log_drops=True, allow_lan=True))
    assert " jump " not in text and " goto " not in text and "return" not in text


def test_forward_chain_absent_when_off(rendered):
    text = rendered(policy_of(forward="off"))
    chains = parse_ruleset(text)["chains"]
    assert "forward" not in chains
    assert "hook forward" not in text
    assert set(chains) == {"input", "output"}


@pytest.mark.parametrize("log_drops", [False, True])
def test_forward_chain_drop_only_when_block(rendered, log_drops):
    chain = parse_ruleset(rendered(policy_of(forward="block", allow_lan=True, log_drops=log_drops)))["chains"]["forward"]
    assert chain["hook"] == "forward" and chain["policy"] == "drop"
    expected = list(DROPS)
    if log_drops:
        expected.insert(0, 'limit rate 5/second burst 10 packets log prefix "killswitch forward drop: " level info')
    assert chain["rules"] == expected


def test_forward_chain_tunnel(rendered):
    rules = parse_ruleset(rendered(policy_of(forward="tunnel", allow_lan=True)))["chains"]["forward"]["rules"]
    # DNS first: a guest's DNS goes through the tunnel or nowhere, whatever the LAN rules say
    assert rules[:3] == ['oifname "wg0" meta nfproto ipv4 %s accept' % DNS_MATCH] + DNS_REJECTS
    assert rules[-2:] == DROPS
    assert 'oifname "wg0" meta nfproto ipv4 accept' in rules
    assert 'iifname "wg0" meta nfproto ipv4 ct state established,related accept' in rules
    # replies are accepted per interface, never globally
    assert not [r for r in rules if r.startswith("ct state")]


def test_input_chain(rendered):
    rules = parse_ruleset(rendered(policy_of()))["chains"]["input"]["rules"]
    assert rules[:3] == ['iifname "lo" accept', "ct state established,related accept",
                         "ct state invalid counter drop"]
    assert rules[-2:] == DROPS


def test_log_drops(rendered):
    with_log = parse_ruleset(rendered(policy_of(log_drops=True)))["chains"]
    dns_log = '%s limit rate 5/second burst 10 packets log prefix "killswitch dns drop: " level info' % DNS_MATCH
    for name in ("input", "output", "forward"):
        logs = [r for r in with_log[name]["rules"] if " log " in r]
        expected = ['limit rate 5/second burst 10 packets log prefix "killswitch %s drop: " level info' % name]
        assert logs == ([dns_log] if name != "input" else []) + expected
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
    assert set(ruleset["chains"]) == {"input", "output", "forward"}
    assert {"endpoint_udp_51820_v4", "endpoint_udp_51820_v6", "endpoint_tcp_443_v4", "endpoint_tcp_443_v6",
            "lan_v4", "lan_v6", "management_v4", "management_v6", "dns_v4", "dns_v6", "extra_tcp_443_v4",
            "extra_udp_123_v4", "extra_icmp_all_v4", "extra_icmp_all_v6", "extra_tcp_all_v4", "extra_any_all_v4",
            "extra_any_all_v6", "dhcp_v4", "dhcp6_v6", "dhcp6_server_v6", "onlink_v6", "mld_v6"} == set(ruleset["sets"])
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
    {"tunnel_interfaces": ["abcdefghijklmn*", "abcdefghijklmno"]},
    # aliases of other systems pass the neutral parser; the Linux backend refuses them
    {"tunnel_interfaces": ["Wintun Userspace Tunnel"]},
    {"tunnel_interfaces": ["lo"]},
    {"tunnel_interfaces": ["l*"]},
    {"tunnel_interfaces": ["é0"]},
    {"endpoint_program": "/usr/bin/wireguard-go"},
    {"table": "icmp"},
    {"table": "Table"},
    {"table": "ip6"},
    # a LAN range holding the broadcast address (the DHCPv4 set must not overlap)
    {"lan_cidrs": ["255.255.255.0/24"]},
    {"lan_cidrs": ["255.255.255.255/32", "0.0.0.0/1", "128.0.0.0/1"]},
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
    """Edge values: either the parser or the backend refuses them (naming the variable) or nft takes the result."""
    try:
        text = render_for(policy_of(**overrides), "nftables", "host7")
    except PolicyError as error:
        assert error.problems
        assert all(p.variable.startswith("killswitch_") for p in error.problems)
        assert all(p.variable.split("[")[0].split(".")[0][len("killswitch_"):] in overrides for p in error.problems)
        return
    nft_accepts(text)


def test_loaded_for_real_in_a_netns(nft_load):
    policy = parse_policy(EVERYTHING, resolve=fake_resolver)
    document = nft_load(render(policy), policy.table)
    items = document["nftables"]
    tables = [i["table"] for i in items if "table" in i]
    assert tables and tables[0]["name"] == "netlock_ks" and tables[0]["family"] == "inet"
    chains = {i["chain"]["name"]: i["chain"] for i in items if "chain" in i}
    assert set(chains) == {"input", "output", "forward"}
    for name in ("input", "output", "forward"):
        assert chains[name]["hook"] == name
        assert chains[name]["policy"] == "drop"
        assert chains[name]["type"] == "filter"
        assert chains[name]["prio"] == 0
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
# (the probe and the lab are in tests/unit/conftest.py, shared with test_render_iptables.py; every test runs its
# positive control first: the same probes without the ruleset must all get out)


def probe_in_netns(packets, nft_binary, tmp_path, policy, probes):
    """Send one packet per probe with the ruleset loaded: {name: "sent"|"refused"}, before and after the
    tunnel interface is deleted."""
    ruleset = tmp_path / "ruleset.nft"
    ruleset.write_text(render_for(policy, "nftables"))
    return packets([nft_binary, "-f", str(ruleset)], probes)


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
ONLY_THE_TUNNEL = {
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
LAN_PROBES = PROBES + [("lan", 4, 0, "192.0.2.77", 443), ("dns on the lan", 4, 0, "192.0.2.53", 53),
                       ("dns-over-tls on the lan", 4, 0, "192.0.2.53", 853)]
DHCP_PROBES = [
    ("ipv4 from the dhcp client port", 4, 68, "255.255.255.255", 67),  # in-test control: the DHCP exception
    ("ipv4 from the dhcp client port to the internet", 4, 68, "203.0.113.67", 67),
    ("ipv6 from the dhcp client port", 6, 68, "2001:db8:2::99", 67),
]
ND_PROBES = [
    # neighbour solicitations, hop limit 255: only to link-local and multicast destinations
    ("nd to the solicited-node multicast", 6, 0, "ff02::1:ff00:99%up0", 0, "nd"),
    ("nd to a link-local address", 6, 0, "fe80::99%up0", 0, "nd"),
    ("nd to a global address", 6, 0, "2001:db8:2::99", 0, "nd"),
    ("nd to a global address on the link", 6, 0, "2001:db8:1::99", 0, "nd"),
    ("nd with hop limit 64", 6, 0, "fe80::99%up0", 0, "nd64"),
]
ND_EXPECTED = {
    "nd to the solicited-node multicast": "sent",
    "nd to a link-local address": "sent",
    "nd to a global address": "refused",
    "nd to a global address on the link": "refused",
    "nd with hop limit 64": "refused",
}


def test_packets_leave_only_through_the_tunnel(packets, nft_binary, tmp_path):
    up, down = probe_in_netns(packets, nft_binary, tmp_path, policy_of(), PROBES)
    assert up == ONLY_THE_TUNNEL
    # tunnel gone: its routes fall back to the uplink, and nothing but the endpoint gets out
    assert down == dict(up, **{"through the tunnel": "refused", "dns through the tunnel": "refused"})


def test_packets_with_lan_allowed_dns_still_refused(packets, nft_binary, tmp_path):
    up, _down = probe_in_netns(packets, nft_binary, tmp_path, policy_of(allow_lan=True, lan_cidrs=["192.0.2.0/24"]),
                               LAN_PROBES)
    assert up["lan"] == "sent"
    assert up["dns on the lan"] == "refused"
    assert up["dns-over-tls on the lan"] == "refused"
    assert up["other address on the uplink"] == "refused"


def test_no_ipv6_leak_through_the_dhcp_rule(packets, nft_binary, tmp_path):
    """The DHCPv4 client rule matches IPv4 to the broadcast address and the LAN only: IPv6 from port 68 to
    port 67, and IPv4 to any other address, are refused on the uplink."""
    up, down = probe_in_netns(packets, nft_binary, tmp_path, policy_of(ipv6="block"), DHCP_PROBES)
    assert up == down == {"ipv4 from the dhcp client port": "sent",
                          "ipv4 from the dhcp client port to the internet": "refused",
                          "ipv6 from the dhcp client port": "refused"}


@pytest.mark.parametrize("ipv6", ["block", "tunnel"])
def test_neighbour_discovery_only_on_link(packets, nft_binary, tmp_path, ipv6):
    """A neighbour solicitation to a global address could carry data off the link: refused, in both modes."""
    up, down = probe_in_netns(packets, nft_binary, tmp_path, policy_of(ipv6=ipv6), ND_PROBES)
    assert up == down == ND_EXPECTED


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
