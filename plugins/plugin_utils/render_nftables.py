# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print the rule list (``rules.py``) as one nftables ``inet`` table, and the bridged rules (``bridge_rules``) as a
``bridge`` table of the same name, both replaced atomically by one ``nft -f``.

Addresses go into named interval sets, one per rule name and family; each base chain drops by default.
A per-app exception matches the sending socket's cgroup through a set of cgroup ids that is empty in this file
(``nft`` resolves a cgroup path when it loads, and fails when the cgroup does not exist yet): the host fills it
while the cgroup exists (``CGROUP_SET_PREFIX``, the comment names the path; see docs/design/app-exceptions.md).
"""

from __future__ import annotations

import functools
import re
from typing import Dict, List, Optional, Sequence, Tuple

from ansible_collections.netlock.killswitch.plugins.plugin_utils.addresses import network_text
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import Network, Policy
from ansible_collections.netlock.killswitch.plugins.plugin_utils.rules import (
    ACCEPT, BRIDGED, DIRECTIONS, DROP, LOG, REJECT, Rule, bridge_rules, policy_rules)

HEADER = "# Managed by netlock.killswitch: generated from the role variables, do not edit.\n"
SET_TYPES = {4: ("ip", "ipv4_addr", "v4"), 6: ("ip6", "ipv6_addr", "v6")}
L4_ICMP = {4: "icmp", 6: "ipv6-icmp"}
FENCE_SUFFIX = "_fence"
CGROUP_SET_PREFIX = "cgroup_"
CGROUP_COMMENT = "cgroup "
# In a bridge table ``meta nfproto`` is always "bridge": a family is matched by the frame's ethertype.
BRIDGE_FAMILY_MATCH = {"meta nfproto ipv4": "ether type ip", "meta nfproto ipv6": "ether type ip6"}


class _Table:
    """Accumulates named sets and chains, and prints them in a stable order."""

    def __init__(self, policy: Policy, name: str, owner: bool, family: str = "inet"):
        self.policy = policy
        self.name = name
        self.owner = owner
        self.family = family
        self.sets: Dict[str, Tuple[str, Tuple[Network, ...]]] = {}
        self.chains: List[Tuple[str, List[str]]] = []
        self.cgroup_sets: Dict[str, str] = {}  # set name: cgroup path

    def cgroup_set(self, path: str) -> str:
        """Declare the (host-filled) set of one cgroup's ids; return the match."""
        base = CGROUP_SET_PREFIX + re.sub(r"[^A-Za-z0-9]+", "_", path)[:48]
        set_name, index = base, 1
        while self.cgroup_sets.get(set_name, path) != path:
            index += 1
            set_name = "%s_%d" % (base, index)
        self.cgroup_sets[set_name] = path
        return "socket cgroupv2 level %d @%s" % (path.count("/") + 1, set_name)

    def address_set(self, name: str, family: int, networks: Sequence[Network], field: str) -> str:
        """Declare a named interval set (reused when the same name holds the same members); return the match."""
        base = "%s_%s" % (name, SET_TYPES[family][2])
        set_name, index = base, 1
        while set_name in self.sets and self.sets[set_name][1] != tuple(networks):
            index += 1
            set_name = "%s_%d" % (base, index)
        self.sets[set_name] = (SET_TYPES[family][1], tuple(networks))
        return "%s %s @%s" % (SET_TYPES[family][0], field, set_name)

    def text(self) -> str:
        policy = self.policy
        digest = policy.digest()
        out = [HEADER, "# policy sha256 %s\n" % digest]
        # Create-then-delete makes the replacement one transaction that works whether or not the
        # table exists: there is never a moment with no table loaded.
        flags = " { flags owner; }" if self.owner else ""
        out.append("table %s %s%s\ndelete table %s %s\n" % (self.family, self.name, flags, self.family, self.name))
        out.append("table %s %s {\n" % (self.family, self.name))
        if self.owner:
            # Only the netlink socket that loads this table may change or delete it (Linux >= 5.12).
            out.append("\tflags owner\n")
        out.append('\tcomment "netlock.killswitch %s"\n' % digest[:16])
        # The ruleset and the fence print the same sets: their elements are printed once per policy.
        printed = policy.__dict__.setdefault("_nft_elements", {})
        for name in sorted(self.sets):
            kind, members = self.sets[name]
            out.append("\tset %s {\n\t\ttype %s\n\t\tflags interval\n" % (name, kind))
            known, elements = printed.get(name, ((), ""))
            if known is not members:
                elements = ",\n\t\t\t     ".join(map(network_text, members))
                printed[name] = (members, elements)
            out.append("\t\telements = { %s }\n\t}\n" % elements)
        for name, path in sorted(self.cgroup_sets.items()):
            out.append('\tset %s {\n\t\ttypeof socket cgroupv2 level %d\n\t\tcomment "%s%s"\n\t}\n'
                       % (name, path.count("/") + 1, CGROUP_COMMENT, path))
        for hook, rules in self.chains:
            out.append("\n\tchain %s {\n" % hook)
            out.append("\t\ttype filter hook %s priority filter; policy drop;\n" % hook)
            out.extend("\t\t%s\n" % rule for rule in rules)
            out.append("\t}\n")
        out.append("}\n")
        return "".join(out)


def _values(values: Sequence) -> str:
    return str(values[0]) if len(values) == 1 else "{ %s }" % ", ".join(str(v) for v in values)


def _protocol(rule: Rule) -> List[str]:
    """Protocol and port matches: ``udp dport 51820``, ``meta l4proto { tcp, udp }``, ``meta l4proto icmp``."""
    protocols = [L4_ICMP[rule.family or 4] if p == "icmp" else p for p in rule.protocols]
    if rule.icmp_types:
        return ["icmpv6 type %s" % _values(rule.icmp_types)]
    ports = [("sport", rule.source_ports), ("dport", rule.destination_ports)]
    if len(protocols) == 1 and protocols[0] in ("tcp", "udp") and (rule.source_ports or rule.destination_ports):
        return ["%s %s %s" % (protocols[0], key, _values(values)) for key, values in ports if values]
    parts = ["meta l4proto %s" % _values(protocols)] if protocols else []
    return parts + ["th %s %s" % (key, _values(values)) for key, values in ports if values]


def _owner(rule: Rule) -> List[str]:
    parts = []
    if rule.owner.mark is not None:
        parts.append("meta mark 0x%08x" % rule.owner.mark)
    if rule.owner.user is not None:
        user = rule.owner.user
        parts.append("meta skuid %s" % (user if user.isdigit() else '"%s"' % user))
    return parts


def _verdict(rule: Rule) -> str:
    if rule.verdict == ACCEPT:
        return "accept"
    if rule.verdict == DROP:
        return "counter drop"
    if rule.verdict == LOG:
        return 'limit rate 5/second burst 10 packets log prefix "%s" level info' % rule.log_prefix
    if rule.verdict == REJECT:
        return "counter reject with tcp reset" if rule.protocols == ("tcp",) else "counter reject with icmpx admin-prohibited"
    raise ValueError("unknown verdict %r" % rule.verdict)


def _interface(key: str, name: Optional[str]) -> List[str]:
    return ['%s "%s"' % (key, name)] if name is not None else []


def rule_text(table: _Table, rule: Rule) -> str:
    if rule.sources or rule.destinations or rule.cgroup is not None:
        return _rule_text(table, rule)
    return _rule_text_without_sets(rule)


@functools.lru_cache(maxsize=4096)
def _rule_text_without_sets(rule: Rule) -> str:
    """Remembered: most rules name no set, and every host of a fleet has the same ones (rules are frozen)."""
    return _rule_text(None, rule)


def _rule_text(table: Optional[_Table], rule: Rule) -> str:
    parts = _interface("iifname", rule.in_interface) + _interface("oifname", rule.out_interface) + _owner(rule)
    if rule.cgroup is not None:
        parts.append(table.cgroup_set(rule.cgroup))
    if rule.sources:
        parts.append(table.address_set(rule.name, rule.family, rule.sources, "saddr"))
    if rule.destinations:
        parts.append(table.address_set(rule.name, rule.family, rule.destinations, "daddr"))
    if rule.family and not (rule.sources or rule.destinations or rule.icmp_types):
        parts.append("meta nfproto ipv%d" % rule.family)
    if rule.verdict == REJECT and rule.protocols == ("tcp",) and not rule.destination_ports:
        parts.append("meta l4proto tcp")  # `reject with tcp reset` needs the protocol matched
    else:
        parts += _protocol(rule)
    if rule.hop_limit is not None:
        parts.append("ip6 hoplimit %d" % rule.hop_limit)
    if rule.states:
        parts.append("ct state %s" % ",".join(rule.states))
    if rule.reply:
        parts.append("ct direction reply")
    parts.append(_verdict(rule))
    return " ".join(parts)


def bridge_rule_text(table: _Table, rule: Rule) -> str:
    """``rule_text`` for a bridge table: families by ethertype, and non-IP link protocols (ARP)."""
    text = rule_text(table, rule)
    for inet_match, bridge_match in BRIDGE_FAMILY_MATCH.items():
        text = text.replace(inet_match, bridge_match)
    return "ether type %s %s" % (rule.ether_type, text) if rule.ether_type else text


def bridge_table(policy: Policy) -> str:
    """The ``bridge`` table's part of the file: the table emptied and removed, then (unless forward is off)
    its forward chain.  Always present, so that the same transaction also removes a stale bridge table."""
    rules = bridge_rules(policy)
    if not rules:
        return "table bridge %s\ndelete table bridge %s\n" % (policy.table, policy.table)
    table = _Table(policy, policy.table, False, family="bridge")
    table.chains.append(("forward", [bridge_rule_text(table, rule) for rule in rules if rule.direction == BRIDGED]))
    return table.text().split("\n", 2)[2]  # the header and the digest are the inet table's


def fence_table(policy: Policy) -> str:
    """The name of the second, owned table (docs/design/drift.md)."""
    return policy.table + FENCE_SUFFIX


def render(policy: Policy, fence: bool = False) -> str:
    """The complete ``nft -f`` file for a policy: same policy, same bytes.

    With ``fence`` the same rules go into the owned table ``<table>_fence`` that the host's watcher loads
    through its own netlink socket, so that no other process can flush or delete it.
    """
    table = _Table(policy, fence_table(policy) if fence else policy.table, fence)
    sets, cgroup_sets, chains = _contents(policy)
    table.sets.update(sets)
    table.cgroup_sets.update(cgroup_sets)
    table.chains.extend(chains)
    return table.text() if fence else table.text() + bridge_table(policy)


def _contents(policy: Policy) -> Tuple[Dict[str, Tuple[str, Tuple[Network, ...]]], Dict[str, str], List[Tuple[str, List[str]]]]:
    """The sets and chains of the policy's table (whatever its name), built once per policy: the ruleset and the
    fence of a host print the same ones."""
    cached = policy.__dict__.get("_nft_contents")
    if cached is None:
        table = _Table(policy, policy.table, False)
        rules = policy_rules(policy)
        for direction in DIRECTIONS:
            chain = [rule_text(table, rule) for rule in rules if rule.direction == direction]
            if chain:
                table.chains.append((direction, chain))
        cached = (table.sets, table.cgroup_sets, table.chains)
        object.__setattr__(policy, "_nft_contents", cached)
    return cached
