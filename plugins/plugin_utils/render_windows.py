# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print the rule list (``rules.py``) as a Windows Firewall document: data for the PowerShell module.

Windows Firewall has no rule order: a block rule beats every allow rule.  So the kill switch is the
profiles' default inbound and outbound ``Block`` plus allow rules in one rule group, never a block rule
(a block for DNS would also beat the tunnel's allow).  What the Linux rule list refuses by order is
refused here by leaving it out of the allows:

* DNS outside the tunnel: LAN and extra allows get TCP and UDP with the port ranges around 53 and 853,
  and ICMP; other IP protocols lose those allows (a warning says so).
* Replies (established), loopback input and management replies: Windows Firewall is stateful and does not
  filter loopback input, so they need no rule.
* The forward direction: forwarded traffic (Hyper-V, WSL2, Windows Sandbox) never passes Windows Firewall.

The document (``document``) and its JSON text (``render``) are the same for the same policy, byte for byte.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import DNS_PORTS, Network, Policy
from ansible_collections.netlock.killswitch.plugins.plugin_utils.rules import (
    ACCEPT, FORWARD, INPUT, LOG, LOOPBACK, OUTPUT, Rule, rule_list)

VERSION = 1
PROFILES = ("Domain", "Private", "Public")
GROUP_PREFIX = "netlock.killswitch "
NAME_PREFIX = "netlock.killswitch."
DISPLAY_PREFIX = "netlock.killswitch: "
DESCRIPTION_PREFIX = "netlock.killswitch digest="
LOOPBACK_ALIAS = "Loopback Pseudo-Interface 1"
LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
DIRECTIONS = {INPUT: "Inbound", OUTPUT: "Outbound"}
ICMP = {4: "ICMPv4", 6: "ICMPv6"}
# The rule list names ICMPv6 types as nftables does; Windows Firewall takes their numbers.
ICMPV6_TYPES = {
    "nd-router-solicit": "133",
    "nd-router-advert": "134",
    "nd-neighbor-solicit": "135",
    "nd-neighbor-advert": "136",
    "mld2-listener-report": "143",
}
# Groups whose allows must not open DNS: on Linux the DNS refusal comes first and shadows them.
DNS_SHADOWED = ("lan", "extra")
# Rules Windows Firewall makes unnecessary: it is stateful, and leaves loopback input alone.
IMPLICIT = {(INPUT, "loopback"), (INPUT, "established"), (OUTPUT, "management")}
MAX_SHOWN = 3  # addresses shown in a display name

WARN_REJECT = ("Windows Firewall cannot reject: refused traffic is dropped silently (programs time out instead "
               "of failing at once)")
WARN_FORWARD = ("killswitch_forward: forwarded traffic (Hyper-V, WSL2, Windows Sandbox, Internet Connection "
                "Sharing) bypasses Windows Firewall, so no Windows rule covers it; the role warns when such "
                "features are present")
WARN_LOG = ("killswitch_log_drops: not rendered on Windows (Windows Firewall logs dropped packets per profile, "
            "in pfirewall.log, outside the rule group)")
WARN_HOP_LIMIT = ("killswitch_allow_dhcp: Windows Firewall cannot match the hop limit (255) of neighbour discovery; "
                  "it is allowed by ICMPv6 type and link-local or multicast destination only")
WARN_NARROWED = ("%s: Windows Firewall cannot leave ports 53 and 853 out of an allow for every protocol, so it "
                 "allows TCP and UDP (every other port) and ICMP only; other IP protocols are blocked there")
WARN_DNS_PORT = ("killswitch_extra_outbound: %s port %d to %s is DNS, which leaves only through the tunnel: "
                 "no Windows rule")

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


# --------------------------------------------------------------------------- interface aliases

def like(name: str, pattern: str) -> bool:
    """PowerShell's ``-like`` for the patterns the policy admits: case-insensitive, ``*`` matches anything."""
    expression = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(expression, name, re.IGNORECASE | re.DOTALL) is not None


def interface_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot be a Windows tunnel interface alias or pattern, or None."""
    if not name.isprintable() or not 1 <= len(name) <= 256:
        return "is not a Windows interface alias (printable, 1 to 256 characters)"
    for char in "?[]":
        if char in name:
            return "holds %r, which Windows reads as a wildcard (only '*' is one here)" % char
    if like(LOOPBACK_ALIAS, name):
        return "matches the loopback pseudo-interface (%r), not a tunnel" % LOOPBACK_ALIAS
    return None


# --------------------------------------------------------------------------- values as Windows takes them

def address(network: Network) -> str:
    """An address, a CIDR, or for the whole family a range (``New-NetFirewallRule -RemoteAddress``)."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    if network.prefixlen == 0:
        return "%s-%s" % (network.network_address, network.broadcast_address)
    return str(network)


def whole_family(family: int) -> Network:
    return ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0")


def port_ranges(ports: Sequence[int]) -> List[str]:
    """Sorted ports as single ports and ranges: (1, 2, 3, 7) -> ["1-3", "7"]."""
    out: List[str] = []
    ordered = sorted(set(ports))
    start = 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        low, high = ordered[start], ordered[end]
        out.append(str(low) if low == high else "%d-%d" % (low, high))
        start = end + 1
    return out


def ports_without_dns() -> List[str]:
    """Every port but DNS and DNS-over-TLS, as ranges: ["1-52", "54-852", "854-65535"]."""
    ranges, low = [], 1
    for port in sorted(DNS_PORTS):
        if port > low:
            ranges.append("%d-%d" % (low, port - 1) if port - 1 > low else str(low))
        low = port + 1
    return ranges + ["%d-65535" % low]


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256(value: Any) -> str:
    return hashlib.sha256(canonical(value).encode("ascii")).hexdigest()


def group_name(policy: Policy) -> str:
    return GROUP_PREFIX + policy.table


# --------------------------------------------------------------------------- one neutral rule, Windows rules

class _Plan:
    """Windows rules in rule-list order, each with the neutral rule it came from, and the warnings."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.pairs: List[Tuple[Rule, Dict[str, Any]]] = []
        self.warnings: List[str] = []

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def add(self, rule: Rule, protocol: str, remote: Sequence[Network] = (), local_ports: Sequence[str] = (),
            remote_ports: Sequence[str] = (), icmp_types: Sequence[str] = (), aliases: Sequence[str] = ()) -> None:
        self.pairs.append((rule, {
            "direction": DIRECTIONS[rule.direction],
            "action": "Allow",
            "protocol": protocol,
            "local_ports": list(local_ports),
            "remote_ports": list(remote_ports),
            "remote_addresses": [address(n) for n in remote],
            "icmp_types": list(icmp_types),
            "interface_aliases": list(aliases),
            "program": rule.owner.program,
        }))


def _remote(rule: Rule, family: Optional[int]) -> Tuple[Network, ...]:
    """The remote addresses; a rule of one family with no addresses gets that family's whole range."""
    networks = rule.sources if rule.direction == INPUT else rule.destinations
    if not networks and family is not None:
        return (whole_family(family),)
    return networks


def _families(rule: Rule, policy: Policy) -> Tuple[int, ...]:
    if rule.family is not None:
        return (rule.family,)
    return (4,) if policy.ipv6 == "block" else (4, 6)


def _narrowed(plan: _Plan, rule: Rule, aliases: Sequence[str], what: str) -> None:
    """An allow that must not open DNS: TCP and UDP around ports 53 and 853, ICMP; never "Any"."""
    policy = plan.policy
    ports = [p for p in rule.destination_ports if p not in DNS_PORTS]
    protocols = rule.protocols or ("tcp", "udp", "icmp")
    if not rule.protocols:
        plan.warn(WARN_NARROWED % what)
    for protocol in protocols:
        if protocol == "icmp":
            for family in _families(rule, policy):
                # the ICMP protocol names the family; a rule for both has no addresses
                remote = rule.destinations if rule.family is not None else ()
                plan.add(rule, ICMP[family], remote, aliases=aliases)
            continue
        if rule.destination_ports and not ports:
            for port in rule.destination_ports:
                plan.warn(WARN_DNS_PORT % (protocol, port, ", ".join(address(n) for n in rule.destinations)))
            continue
        remote_ports = port_ranges(ports) if ports else ports_without_dns()
        plan.add(rule, protocol.upper(), _remote(rule, rule.family), port_ranges(rule.source_ports), remote_ports,
                 aliases=aliases)


def _translate(plan: _Plan, rule: Rule) -> None:
    policy = plan.policy
    if rule.verdict == LOG:
        plan.warn(WARN_LOG)
        return
    if rule.verdict != ACCEPT or rule.direction == FORWARD or (rule.direction, rule.group) in IMPLICIT:
        return
    interface = rule.in_interface if rule.direction == INPUT else rule.out_interface
    if interface == LOOPBACK:
        plan.add(rule, "Any", LOOPBACK_NETWORKS)
        return
    aliases = [interface] if interface is not None else []
    if rule.direction == OUTPUT and (rule.group in DNS_SHADOWED or (rule.group == "tunnel" and policy.dns_servers)):
        what = "killswitch_dns_servers (through the tunnel)" if rule.group == "tunnel" else (
            "killswitch_allow_lan" if rule.group == "lan" else "killswitch_extra_outbound")
        _narrowed(plan, rule, aliases, what)
        return
    if rule.icmp_types:
        if rule.hop_limit is not None:
            plan.warn(WARN_HOP_LIMIT)
        plan.add(rule, ICMP[6], _remote(rule, None), icmp_types=[ICMPV6_TYPES[t] for t in rule.icmp_types],
                 aliases=aliases)
        return
    if rule.direction == INPUT:
        local, remote = rule.destination_ports, rule.source_ports
    else:
        local, remote = rule.source_ports, rule.destination_ports
    if not rule.protocols:
        plan.add(rule, "Any", _remote(rule, rule.family), aliases=aliases)
    for protocol in rule.protocols:
        if protocol == "icmp":
            for family in _families(rule, policy):
                plan.add(rule, ICMP[family], _remote(rule, None) if rule.family else (), aliases=aliases)
        else:
            plan.add(rule, protocol.upper(), _remote(rule, rule.family), port_ranges(local), port_ranges(remote),
                     aliases=aliases)


def plan(policy: Policy) -> Tuple[List[Tuple[Rule, Dict[str, Any]]], List[str]]:
    """(neutral rule, Windows rule without name and digest) pairs in rule-list order, and the warnings."""
    result = _Plan(policy)
    result.warn(WARN_REJECT)
    for rule in rule_list(policy):
        _translate(result, rule)
    if policy.forward != "off":
        result.warn(WARN_FORWARD)
    return result.pairs, result.warnings


# --------------------------------------------------------------------------- the document

def _display(rule: Rule, windows: Dict[str, Any]) -> str:
    parts = [rule.group, windows["direction"].lower(), windows["protocol"]]
    if windows["local_ports"]:
        parts.append("local port %s" % ",".join(windows["local_ports"]))
    if windows["remote_ports"]:
        parts.append("port %s" % ",".join(windows["remote_ports"]))
    if windows["icmp_types"]:
        parts.append("type %s" % ",".join(windows["icmp_types"]))
    remote = windows["remote_addresses"]
    if remote:
        shown = ", ".join(remote[:MAX_SHOWN]) + (" and %d more" % (len(remote) - MAX_SHOWN) if len(remote) > MAX_SHOWN
                                                 else "")
        parts.append("%s %s" % ("from" if windows["direction"] == "Inbound" else "to", shown))
    if windows["interface_aliases"]:
        parts.append("via %s" % ", ".join(windows["interface_aliases"]))
    if windows["program"]:
        parts.append("by %s" % windows["program"])
    return DISPLAY_PREFIX + " ".join(parts)


def _slug(rule: Rule, windows: Dict[str, Any]) -> str:
    # the rule list's name, prefixed with its group where the name alone hides it (DNS through a tunnel: "dns_tunnel")
    what = rule.name if rule.name.startswith(rule.group) else "%s_%s" % (rule.group, rule.name)
    words = ["in" if rule.direction == INPUT else "out", what]
    if rule.family:
        words.append("v%d" % rule.family)
    words.append(windows["protocol"].lower())
    return _SAFE_NAME.sub("_", "-".join(words))


def document(policy: Policy) -> Dict[str, Any]:
    """The Windows Firewall document of a policy (see the module killswitch_windows_firewall)."""
    pairs, warnings = plan(policy)
    rules = []
    for index, (rule, windows) in enumerate(pairs, 1):
        entry = dict(windows, display_name=_display(rule, windows))
        entry["digest"] = sha256(entry)
        entry["name"] = "%s%s.%02d.%s" % (NAME_PREFIX, policy.table, index, _slug(rule, windows))
        rules.append(entry)
    patterns = sorted({alias for entry in rules for alias in entry["interface_aliases"]})
    doc: Dict[str, Any] = {
        "version": VERSION,
        "group": group_name(policy),
        "profiles": {"names": list(PROFILES), "enabled": True, "default_inbound": "Block",
                     "default_outbound": "Block"},
        "rules": rules,
        "tunnel_patterns": patterns,
        "warnings": warnings,
    }
    doc["digest"] = sha256(doc)
    return doc


def render(policy: Policy) -> str:
    """The document as JSON text: sorted keys, the same bytes for the same policy."""
    return json.dumps(document(policy), sort_keys=True, indent=1, ensure_ascii=True) + "\n"


def description(rule: Dict[str, Any], resolved: Sequence[str]) -> str:
    """The Description the module gives a live rule: its digest and the aliases its patterns resolved to."""
    return "%s%s interfaces=%s" % (DESCRIPTION_PREFIX, rule["digest"], "|".join(resolved))
