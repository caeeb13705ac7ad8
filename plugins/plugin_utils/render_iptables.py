# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print the rule list (``rules.py``) as ``iptables-restore`` and ``ip6tables-restore`` lines, wrapped in the
host-side payload script of ``module_utils/iptables.py`` (one transaction per family, our own chains)."""

from __future__ import annotations

import functools
import itertools
from typing import Dict, List, Optional, Sequence, Tuple

from ansible_collections.netlock.killswitch.plugins.module_utils.iptables import chain_names, script
from ansible_collections.netlock.killswitch.plugins.plugin_utils.addresses import network_text
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import Policy
from ansible_collections.netlock.killswitch.plugins.plugin_utils.rules import (
    ACCEPT, DIRECTIONS, DROP, LOG, OUTPUT, REJECT, Rule, policy_rules)

HEADER = "# Managed by netlock.killswitch: generated from the role variables, do not edit.\n"
LONGEST_SUFFIX = "-out"
MAX_MULTIPORT = 15  # ports per multiport match
ICMP = {4: "icmp", 6: "ipv6-icmp"}
# nftables ICMPv6 names (the rule list's vocabulary) to ip6tables' names.
ICMPV6_TYPES = {
    "nd-router-solicit": "router-solicitation",
    "nd-router-advert": "router-advertisement",
    "nd-neighbor-solicit": "neighbour-solicitation",
    "nd-neighbor-advert": "neighbour-advertisement",
    "mld2-listener-report": "143",
}
REJECT_WITH = {4: "icmp-admin-prohibited", 6: "icmp6-adm-prohibited"}


def _interface(option: str, name: Optional[str]) -> List[str]:
    if name is None:
        return []
    return [option, name[:-1] + "+" if name.endswith("*") else name]


def _ports(option: str, ports: Sequence[int]) -> List[List[str]]:
    """One match per chunk of ports: ``--dport 22``, or ``-m multiport --dports 53,853``."""
    if not ports:
        return [[]]
    if len(ports) == 1:
        return [["--%s" % option, str(ports[0])]]
    chunks = [ports[i:i + MAX_MULTIPORT] for i in range(0, len(ports), MAX_MULTIPORT)]
    return [["-m", "multiport", "--%ss" % option, ",".join(str(p) for p in chunk)] for chunk in chunks]


def _verdict(rule: Rule, family: int, protocol: Optional[str]) -> List[str]:
    if rule.verdict == ACCEPT:
        return ["-j", "ACCEPT"]
    if rule.verdict == DROP:
        return ["-j", "DROP"]
    if rule.verdict == LOG:
        return ["-m", "limit", "--limit", "5/sec", "--limit-burst", "10", "-j", "LOG", "--log-prefix",
                '"%s"' % rule.log_prefix, "--log-level", "6"]
    if rule.verdict == REJECT:
        return ["-j", "REJECT", "--reject-with", "tcp-reset" if protocol == "tcp" else REJECT_WITH[family]]
    raise ValueError("unknown verdict %r" % rule.verdict)


def rule_lines(rule: Rule, chain: str, family: int) -> List[str]:
    """The ``-A`` lines of one rule for one family (none when the rule is for the other family)."""
    if rule.family not in (None, family):
        return []
    if rule.sources or rule.destinations:
        return _rule_lines(rule, chain, family)
    return list(_lines_without_addresses(rule, chain)[family])


def _lines_by_family(rule: Rule, chain: str) -> Dict[int, Sequence[str]]:
    if rule.sources or rule.destinations:
        return {family: rule_lines(rule, chain, family) for family in (4, 6)}
    return _lines_without_addresses(rule, chain)


@functools.lru_cache(maxsize=4096)
def _lines_without_addresses(rule: Rule, chain: str) -> Dict[int, Tuple[str, ...]]:
    """Remembered: most rules have no addresses, and every host of a fleet has the same ones (rules are frozen).
    Read only: the lines of both families, from one lookup."""
    return {family: tuple(_rule_lines(rule, chain, family)) if rule.family in (None, family) else ()
            for family in (4, 6)}


def _rule_lines(rule: Rule, chain: str, family: int) -> List[str]:
    # Each line: "-A chain [-i in] [-o out] " "[-s src ]" "[-d dst ]" "[-p proto ...] [matches ]" "[ports ]" "verdict";
    # all but the addresses are the same on every line of the rule, so they are printed once (a rule may have
    # 100,000 addresses).
    before = " ".join(["-A", chain] + _interface("-i", rule.in_interface) + _interface("-o", rule.out_interface)) + " "
    icmp_types: List[Optional[str]] = [None]
    protocols: List[Optional[str]] = [None]
    if rule.icmp_types:
        protocols = [ICMP[6]]
        icmp_types = [ICMPV6_TYPES[t] for t in rule.icmp_types]
    elif rule.protocols:
        protocols = [ICMP[family] if p == "icmp" else p for p in rule.protocols]
    matches = []
    if rule.hop_limit is not None:
        matches += ["-m", "hl", "--hl-eq", str(rule.hop_limit)]
    if rule.owner.mark is not None:
        matches += ["-m", "mark", "--mark", "0x%x" % rule.owner.mark]
    if rule.owner.user is not None:
        matches += ["-m", "owner", "--uid-owner", rule.owner.user]
    if rule.states or rule.reply:
        matches += ["-m", "conntrack"]
        matches += ["--ctstate", ",".join(s.upper() for s in rule.states)] if rule.states else []
        matches += ["--ctdir", "REPLY"] if rule.reply else []
    if rule.source_ports or rule.destination_ports:
        ports = [" ".join(sports + dports) + " " for sports, dports in itertools.product(
            _ports("sport", rule.source_ports), _ports("dport", rule.destination_ports))]
    else:
        ports = [""]
    endings = []
    for protocol, icmp_type in itertools.product(protocols, icmp_types):
        match = [] if protocol is None else ["-p", protocol]
        if icmp_type is not None:
            match += ["-m", "icmp6", "--icmpv6-type", icmp_type]
        after = " ".join(match + matches) + " " if match or matches else ""
        verdict = " ".join(_verdict(rule, family, protocol))
        endings += [after + port + verdict for port in ports]
    if not (rule.sources or rule.destinations):
        return [before + ending for ending in endings]
    sources = ["-s %s " % network_text(source) for source in rule.sources] or [""]
    destinations = ["-d %s " % network_text(destination) for destination in rule.destinations] or [""]
    return [before + source + destination + ending
            for source in sources for destination in destinations for ending in endings]


def render(policy: Policy) -> str:
    """The payload script for a policy: same policy, same bytes."""
    chains = chain_names(policy.table)
    digest = policy.digest()
    rules = policy_rules(policy)
    # The digest rides on a rule with no target (it only counts), for killswitch_status and people.
    counter = '-A %s -m comment --comment "netlock.killswitch %s"' % (chains[OUTPUT], digest[:16])
    bodies: Dict[int, List[str]] = {4: [counter], 6: [counter]}
    for rule in rules:
        lines = _lines_by_family(rule, chains[rule.direction])
        bodies[4] += lines[4]
        bodies[6] += lines[6]
    directions = [d for d in DIRECTIONS if any(r.direction == d for r in rules)]
    return script(policy.table, bodies, directions, HEADER + "# policy sha256 %s\n" % digest)
