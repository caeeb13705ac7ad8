# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render a Policy into one nftables ``inet`` table, replaced atomically by one ``nft -f``.

Rule order follows the threat model: loopback, then the pinned endpoints (address, protocol,
port and mark/user), then DNS (only through the tunnel, before any LAN allow), then the tunnel
interfaces by name, then LAN and explicit exceptions, then a fast reject for local programs.
"""

from __future__ import annotations

import ipaddress
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ansible_collections.netlock.killswitch.plugins.module_utils.policy import DNS_PORTS, AddressRule, Network, Policy

HEADER = "# Managed by netlock.killswitch: generated from the role variables, do not edit.\n"
FAMILIES = {4: ("ip", "ipv4_addr", "v4"), 6: ("ip6", "ipv6_addr", "v6")}
# ICMPv6 a host needs on its link; hop limit 255 proves the packet never crossed a router (RFC 4861).
ND_OUT = "nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert"
ND_IN = "nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert"
DHCP6_SERVERS = "ff02::1:2"


class _Table:
    """Accumulates named sets and chains, and prints them in a stable order."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.sets: Dict[str, Tuple[str, Tuple[Network, ...]]] = {}
        self.chains: List[Tuple[str, Optional[str], List[str]]] = []

    def address_set(self, name: str, version: int, networks: Sequence[Network], field: str = "daddr") -> Optional[str]:
        """Declare a named interval set and return the match on it (None when it would be empty)."""
        members = tuple(n for n in networks if n.version == version)
        if not members:
            return None
        set_name = "%s_%s" % (name, FAMILIES[version][2])
        self.sets[set_name] = (FAMILIES[version][1], members)
        return "%s %s @%s" % (FAMILIES[version][0], field, set_name)

    def chain(self, name: str, hook: Optional[str], rules: List[str]) -> None:
        self.chains.append((name, hook, rules))

    def text(self) -> str:
        policy = self.policy
        digest = policy.digest()
        out = [HEADER, "# policy sha256 %s\n" % digest]
        # Create-then-delete makes the replacement one transaction that works whether or not the
        # table exists: there is never a moment with no table loaded.
        out.append("table inet %s\ndelete table inet %s\n" % (policy.table, policy.table))
        out.append("table inet %s {\n" % policy.table)
        out.append('\tcomment "netlock.killswitch %s"\n' % digest[:16])
        for name in sorted(self.sets):
            kind, members = self.sets[name]
            out.append("\tset %s {\n\t\ttype %s\n\t\tflags interval\n" % (name, kind))
            out.append("\t\telements = { %s }\n\t}\n" % ",\n\t\t\t     ".join(str(m) for m in members))
        for name, hook, rules in self.chains:
            out.append("\n\tchain %s {\n" % name)
            if hook:
                out.append("\t\ttype filter hook %s priority filter; policy drop;\n" % hook)
            out.extend("\t\t%s\n" % rule for rule in rules)
            out.append("\t}\n")
        out.append("}\n")
        return "".join(out)


def _quoted(names: Iterable[str]) -> List[str]:
    return ['"%s"' % n for n in names]


def _tunnel_match(policy: Policy, direction: str) -> List[str]:
    """One match per tunnel interface; with IPv6 blocked, IPv4 only."""
    family = " meta nfproto ipv4" if policy.ipv6 == "block" else ""
    return ["%s %s%s" % (direction, name, family) for name in _quoted(policy.tunnel_interfaces)]


def _protocol_match(protocol: str, port: Optional[int], version: int) -> str:
    if port is not None:
        return "%s dport %d" % (protocol, port)
    if protocol == "icmp":
        return "meta l4proto %s" % ("icmp" if version == 4 else "ipv6-icmp")
    if protocol in ("tcp", "udp"):
        return "meta l4proto %s" % protocol
    return ""


def _address_rules(table: _Table, prefix: str, rules: Sequence[AddressRule], extra: str = "") -> List[str]:
    """Group destinations by protocol and port into named interval sets, one rule per set."""
    lines = []
    for rule in rules:
        tag = "%s_%s_%s" % (prefix, rule.protocol, rule.port if rule.port is not None else "all")
        for version in (4, 6):
            daddr = table.address_set(tag, version, rule.networks)
            if daddr:
                match = " ".join(m for m in (extra, daddr, _protocol_match(rule.protocol, rule.port, version)) if m)
                lines.append(match + " accept")
    return lines


def _endpoint_owner(policy: Policy) -> str:
    parts = []
    if policy.endpoint_mark is not None:
        parts.append("meta mark 0x%08x" % policy.endpoint_mark)
    if policy.endpoint_user is not None:
        user = policy.endpoint_user
        parts.append("meta skuid %s" % (user if user.isdigit() else '"%s"' % user))
    return " ".join(parts)


def _dns_chain(table: _Table, policy: Policy) -> None:
    """DNS and DNS-over-TLS leave only through the tunnel, to the configured resolvers if any."""
    rules = []
    versions = (4,) if policy.ipv6 == "block" else (4, 6)
    resolvers = {v: table.address_set("dns", v, [ipaddress.ip_network(a) for a in policy.dns_servers]) for v in versions}
    for match in _tunnel_match(policy, "oifname"):
        if policy.dns_servers:
            rules.extend("%s %s accept" % (match, daddr) for daddr in resolvers.values() if daddr)
        else:
            rules.append(match + " accept")
    rules.extend(_refuse(policy, "dns"))
    table.chain("dns", None, rules)


def _log(policy: Policy, chain: str) -> List[str]:
    if not policy.log_drops:
        return []
    return ['limit rate 5/second burst 10 packets log prefix "killswitch %s drop: " level info' % chain]


def _refuse(policy: Policy, chain: str) -> List[str]:
    """Reject locally generated traffic so programs fail at once instead of timing out."""
    return _log(policy, chain) + [
        "meta l4proto tcp counter reject with tcp reset",
        "counter reject with icmpx admin-prohibited",
    ]


def _dhcp_ndp_out(policy: Policy) -> List[str]:
    if not policy.allow_dhcp:
        return []
    rules = [
        "meta nfproto ipv4 udp sport 68 udp dport 67 accept",
        "icmpv6 type { %s } ip6 hoplimit 255 accept" % ND_OUT,
        "icmpv6 type mld2-listener-report ip6 daddr ff02::16 accept",
    ]
    if policy.ipv6 == "tunnel":
        rules.append("ip6 daddr %s udp sport 546 udp dport 547 accept" % DHCP6_SERVERS)
    return rules


def _lan(table: _Table, policy: Policy, field: str) -> List[str]:
    if not policy.allow_lan:
        return []
    versions = (4,) if policy.ipv6 == "block" else (4, 6)
    matches = [table.address_set("lan", v, policy.lan_networks, field) for v in versions]
    return [m for m in matches if m]


def _output(table: _Table, policy: Policy) -> None:
    rules = ['oifname "lo" accept']
    rules += _address_rules(table, "endpoint", policy.endpoints, _endpoint_owner(policy))
    for version in (4, 6):
        sources = table.address_set("management", version, policy.management_networks)
        if sources and policy.management_ports:
            ports = ", ".join(str(p) for p in policy.management_ports)
            rules.append("%s tcp sport { %s } ct state established ct direction reply accept" % (sources, ports))
    rules += _dhcp_ndp_out(policy)
    rules.append("meta l4proto { tcp, udp } th dport { %s } jump dns" % ", ".join(str(p) for p in DNS_PORTS))
    rules += ["%s accept" % m for m in _tunnel_match(policy, "oifname")]
    rules += ["%s accept" % m for m in _lan(table, policy, "daddr")]
    rules += _address_rules(table, "extra", policy.extra_outbound)
    rules += _refuse(policy, "output")
    table.chain("output", "output", rules)


def _input(table: _Table, policy: Policy) -> None:
    # Inbound packets cannot leak; replies to flows the output chain allowed are fine.
    rules = ['iifname "lo" accept', "ct state established,related accept", "ct state invalid drop"]
    for version in (4, 6):
        sources = table.address_set("management", version, policy.management_networks, "saddr")
        if sources and policy.management_ports:
            ports = ", ".join(str(p) for p in policy.management_ports)
            rules.append("%s tcp dport { %s } accept" % (sources, ports))
    if policy.allow_dhcp:
        rules.append("meta nfproto ipv4 udp sport 67 udp dport 68 accept")
        rules.append("icmpv6 type { %s } ip6 hoplimit 255 accept" % ND_IN)
        if policy.ipv6 == "tunnel":
            rules.append("ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept")
    rules += _log(policy, "input")
    rules.append("counter drop")
    table.chain("input", "input", rules)


def _forward(table: _Table, policy: Policy) -> None:
    if policy.forward == "off":
        return
    rules: List[str] = []
    if policy.forward == "tunnel":
        # Conntrack state is not interface-scoped: a flow that began in the tunnel may be
        # re-routed to the LAN when the tunnel drops, so replies are accepted per interface.
        rules.append("meta l4proto { tcp, udp } th dport { %s } jump dns" % ", ".join(str(p) for p in DNS_PORTS))
        rules += ["%s accept" % m for m in _tunnel_match(policy, "oifname")]
        rules += ["%s ct state established,related accept" % m for m in _tunnel_match(policy, "iifname")]
        rules += ["%s accept" % m for m in _lan(table, policy, "daddr")]
        rules += ["%s ct state established,related accept" % m for m in _lan(table, policy, "saddr")]
    rules += _log(policy, "forward")
    rules.append("counter drop")
    table.chain("forward", "forward", rules)


def render(policy: Policy) -> str:
    """The complete ``nft -f`` file for a policy: same policy, same bytes."""
    table = _Table(policy)
    _input(table, policy)
    _output(table, policy)
    _forward(table, policy)
    _dns_chain(table, policy)
    return table.text()
