# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's reading of a Windows host: pure Python over the module's ``live`` dict and the document.

``killswitch_windows_firewall`` (PowerShell) reports what is on the host; its action plugin asks here

* ``open_paths``: which enabled third-party allow rules open an outbound path outside the tunnel,
* ``diff``: the text for ``--diff``,
* ``warnings``: what the kill switch cannot cover on this host,
* ``status``: the ``killswitch_status`` fact in the shape of ``drift.host_status``, for ``playbooks/drift.yml``.

The ``live`` shape is documented in the module; the document's in ``render_windows``.  Windows Firewall
values may come as words (``Outbound``, ``Allow``, ``True``) or as the numbers of their enums when
PowerShell serialized them unconverted (Direction 2 = Outbound, Action 2 = Allow, Enabled 1 = True):
both are read.  Whatever cannot be read is treated as the more open choice (an open path is reported).
"""

from __future__ import annotations

import difflib
import ipaddress
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.netlock.killswitch.plugins.plugin_utils.drift import DIGEST_SHOWN, PARTS
from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_windows import (
    DESCRIPTION_PREFIX, PROFILES, like)

Network = Any  # ipaddress.IPv4Network | ipaddress.IPv6Network
PortSet = List[Tuple[int, int]]
ALL_PORTS: PortSet = [(0, 65535)]
EVERYWHERE = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
ANY_WORDS = ("", "any", "*")
PROTOCOL_NUMBERS = {"1": "ICMPV4", "6": "TCP", "17": "UDP", "58": "ICMPV6", "256": "ANY"}
FORWARDING_WHY = ("forwarded traffic bypasses Windows Firewall: VMs, WSL2 and sandboxes on this host can reach the "
                  "network outside the tunnel")
DIFF_LINES = 40
DIRECTION_NUMBERS = {1: "Inbound", 2: "Outbound"}
# Task Scheduler's StateEnum, for a state serialized as its number.
TASK_STATE_NUMBERS = {0: "Unknown", 1: "Disabled", 2: "Queued", 3: "Ready", 4: "Running"}
GUARD_TASK = "netlock-killswitch-guard"


# --------------------------------------------------------------------------- reading Windows values

def _word(value: Any, numbers: Mapping[Any, str]) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        return numbers.get(int(value), str(value))
    return str(value or "").strip()


def is_enabled(value: Any) -> bool:
    """``Enabled``: True, "True", or 1 (GpoBoolean); anything else is off (2 is False)."""
    return _word(value, {1: "True", 2: "False"}).lower() == "true"


def _is_outbound_allow(rule: Mapping[str, Any]) -> bool:
    return (_word(rule.get("direction"), DIRECTION_NUMBERS).lower() == "outbound"
            and _word(rule.get("action"), {2: "Allow", 4: "Block"}).lower() == "allow")


def _items(value: Any) -> List[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(item).strip() for item in value if str(item).strip()]
    return [part.strip() for part in str(value).split(",") if part.strip()]


def _is_any(values: Sequence[str]) -> bool:
    return not values or any(v.lower() in ANY_WORDS for v in values)


def parse_addresses(values: Sequence[str]) -> Optional[List[Network]]:
    """Remote addresses as networks: "Any", an address, "10.0.0.0/8", "10.0.0.0/255.0.0.0", "a-b" ranges.

    None when one of them cannot be read (a keyword such as LocalSubnet or Internet, whose addresses only the
    host knows)."""
    if _is_any(values):
        return list(EVERYWHERE)
    networks: List[Network] = []
    for value in values:
        try:
            if "-" in value:
                low, high = (ipaddress.ip_address(part.strip()) for part in value.split("-", 1))
                networks += list(ipaddress.summarize_address_range(low, high))
            else:
                networks.append(ipaddress.ip_network(value, strict=False))
        except (TypeError, ValueError):
            return None
    return networks


def parse_ports(values: Sequence[str]) -> Optional[PortSet]:
    """Ports and ranges as (low, high) pairs; None for keywords (RPC, IPHTTPS, ...) that cannot be read."""
    if _is_any(values):
        return list(ALL_PORTS)
    pairs = []
    for value in values:
        low, _sep, high = value.partition("-")
        if not low.strip().isdigit() or (high and not high.strip().isdigit()):
            return None
        pairs.append((int(low), int(high or low)))
    return pairs


def _ports_within(inner: PortSet, outer: PortSet) -> bool:
    """Every port of ``inner`` is in ``outer`` (port 0 aside: no TCP or UDP traffic uses it)."""
    for low, high in inner:
        port = max(low, 1)
        while port <= high:
            cover = next(((lo, hi) for lo, hi in outer if lo <= port <= hi), None)
            if cover is None:
                return False
            port = cover[1] + 1
    return True


def _networks_within(inner: Sequence[Network], outer: Sequence[Network]) -> bool:
    for family in (4, 6):
        wanted = [n for n in inner if n.version == family]
        if not wanted:
            continue
        covered = list(ipaddress.collapse_addresses([n for n in outer if n.version == family]))
        for net in wanted:
            if not any(net.subnet_of(c) for c in covered):
                return False
    return True


def _protocol(value: Any) -> str:
    text = _word(value, {}).upper()
    return PROTOCOL_NUMBERS.get(text, text or "ANY")


# --------------------------------------------------------------------------- open_paths

def _within_tunnel(aliases: Sequence[str], patterns: Sequence[str]) -> bool:
    """Every alias the rule is limited to is a tunnel: an alias a pattern matches, or a pattern itself."""
    if _is_any(aliases) or not patterns:
        return False
    for alias in aliases:
        if "*" in alias or "?" in alias or "[" in alias:
            if not any(alias.lower() == p.lower() for p in patterns):
                return False
        elif not any(like(alias, p) for p in patterns):
            return False
    return True


def _document_covers(rule: Mapping[str, Any], protocol: str, ports: Optional[PortSet], remote: List[Network],
                     document: Mapping[str, Any]) -> bool:
    """The document itself allows all of it on any interface, for any program (or this rule's program)."""
    program = str(rule.get("program") or "").lower()
    allowed: List[Network] = []
    for own in document.get("rules", ()):
        if own.get("direction") != "Outbound" or own.get("interface_aliases") or own.get("local_ports"):
            continue
        if own.get("program") and str(own["program"]).lower() != program:
            continue
        own_protocol = str(own.get("protocol", "")).upper()
        if own_protocol != "ANY":
            if own_protocol != protocol:
                continue
            if protocol in ("TCP", "UDP"):
                own_ports = parse_ports(own.get("remote_ports") or [])
                if ports is None or own_ports is None or not _ports_within(ports, own_ports):
                    continue
            elif own.get("icmp_types"):
                continue  # the third-party rule may allow every ICMP type
        networks = parse_addresses(own.get("remote_addresses") or [])
        if networks:
            allowed += networks
    return bool(allowed) and _networks_within(remote, allowed)


def _describe(rule: Mapping[str, Any], protocol: str, remote: Sequence[str], aliases: Sequence[str]) -> str:
    ports = _items(rule.get("remote_ports"))
    text = "allows %s%s to %s on %s" % (
        "any protocol" if protocol == "ANY" else protocol,
        " port %s" % ",".join(ports) if ports and not _is_any(ports) else "",
        "any address" if _is_any(remote) else ", ".join(remote),
        "any interface" if _is_any(aliases) else "interfaces %s" % ", ".join(aliases))
    if rule.get("interface_type") and str(rule["interface_type"]).lower() not in ANY_WORDS:
        text += " (type %s)" % rule["interface_type"]
    if rule.get("program") and str(rule["program"]).lower() not in ANY_WORDS:
        text += " for %s" % rule["program"]
    return text + ", outside the tunnel"


def open_path(rule: Mapping[str, Any], document: Mapping[str, Any]) -> Optional[str]:
    """Why one third-party rule opens an outbound path outside the tunnel, or None when it cannot."""
    if not is_enabled(rule.get("enabled")) or not _is_outbound_allow(rule):
        return None
    if rule.get("group") and rule.get("group") == document.get("group"):
        return None
    aliases = _items(rule.get("interface_aliases"))
    if _within_tunnel(aliases, document.get("tunnel_patterns") or []):
        return None
    remote_text = _items(rule.get("remote_addresses"))
    remote = parse_addresses(remote_text)
    protocol = _protocol(rule.get("protocol"))
    if remote is not None and all(n.subnet_of(ipaddress.ip_network("127.0.0.0/8")) if n.version == 4
                                  else n == ipaddress.ip_network("::1/128") for n in remote):
        return None
    if remote is not None and _document_covers(rule, protocol, parse_ports(_items(rule.get("remote_ports"))),
                                               remote, document):
        return None
    why = _describe(rule, protocol, remote_text, aliases)
    if remote is None:
        why += " (its remote addresses %s are only known on the host)" % ", ".join(remote_text)
    return why


def open_paths(third_party: Iterable[Mapping[str, Any]], document: Mapping[str, Any]) -> List[Dict[str, str]]:
    """Each enabled third-party allow-outbound rule that opens a path outside the tunnel: {name, display_name, why}.

    Not reported: rules limited to tunnel interfaces, to loopback addresses, or to what the document itself
    allows on every interface for every protocol and port the rule allows.  When unsure, it is reported.
    """
    found = []
    for rule in third_party or ():
        why = open_path(rule, document)
        if why:
            found.append({"name": str(rule.get("name", "")), "display_name": str(rule.get("display_name", "")),
                          "why": why})
    return sorted(found, key=lambda entry: entry["name"])


# --------------------------------------------------------------------------- diff

def _lines(live: Optional[Mapping[str, Any]]) -> List[str]:
    """A live dict as sorted lines: profiles, the group's rules, third-party open rules, the guard."""
    if not live:
        return []
    lines = []
    profiles = live.get("profiles") or {}
    for name in sorted(profiles):
        profile = profiles[name] or {}
        lines.append("profile %s: enabled=%s inbound=%s outbound=%s" % (
            name, is_enabled(profile.get("enabled")), profile.get("default_inbound"), profile.get("default_outbound")))
    for rule in sorted(live.get("rules") or (), key=lambda r: str(r.get("name"))):
        direction = _word(rule.get("direction"), DIRECTION_NUMBERS)
        lines.append("rule %s: %s enabled=%s %s" % (rule.get("name"), direction, is_enabled(rule.get("enabled")),
                                                    rule.get("description") or ""))
    for rule in sorted(live.get("third_party") or (), key=lambda r: str(r.get("name"))):
        if is_enabled(rule.get("enabled")):
            lines.append("third-party %s: enabled allow outbound (%s)" % (rule.get("name"), rule.get("display_name")))
    guard = live.get("guard") or {}
    if guard:
        lines.append("guard task: %s, interval %s s" % (", ".join(["present"] + _guard_faults(guard)) if guard.get("task")
                                                        else "absent", guard.get("interval")))
    return lines


def _guard_faults(guard: Mapping[str, Any]) -> List[str]:
    """Why a guard task that exists does not guard: Disabled, or its action is not the state directory's guard.ps1."""
    faults = []
    if _word(guard.get("state"), TASK_STATE_NUMBERS).lower() == "disabled":
        faults.append("disabled")
    if guard.get("runs_guard") is not True:
        faults.append("runs %s, not guard.ps1" % (guard.get("action") or "an unknown action"))
    return faults


def _text(lines: Sequence[str]) -> str:
    return "".join(line + "\n" for line in lines)


def diff(before: Optional[Mapping[str, Any]], after: Optional[Mapping[str, Any]]) -> Dict[str, str]:
    """``{before, after}`` text for ``--diff`` from two ``live`` dicts (``after`` None: nothing changed)."""
    old = _lines(before)
    return dict(before=_text(old), after=_text(_lines(after) if after is not None else old))


# --------------------------------------------------------------------------- warnings

def unresolved_patterns(live: Mapping[str, Any], document: Mapping[str, Any]) -> List[str]:
    """The document's tunnel patterns that match no interface present on the host."""
    present = [str(alias) for alias in live.get("interfaces") or ()]
    return [p for p in document.get("tunnel_patterns") or () if not any(like(alias, p) for alias in present)]


def warnings(live: Mapping[str, Any], document: Optional[Mapping[str, Any]] = None,
             unresolved: Optional[Sequence[str]] = None) -> List[str]:
    """What the kill switch cannot cover on this host: forwarding features, tunnel patterns with no adapter.

    The unresolved patterns are ``unresolved`` (the module's return) when given, else computed from the document
    and the host's interfaces; with neither, the group's rules that are disabled (the module disables a rule
    whose patterns matched nothing) are named.
    """
    found = []
    features = [str(f) for f in live.get("forwarding_features") or ()]
    if features:
        found.append("%s present: %s; block or route them through the tunnel on the host or upstream"
                     % (", ".join(features), FORWARDING_WHY))
    if unresolved is None and document is not None:
        unresolved = unresolved_patterns(live, document)
    if unresolved:
        found.append("tunnel interface pattern(s) %s match no adapter: their rules are disabled (nothing leaves "
                     "through them) until the adapter exists and the guard or the next run resolves them"
                     % ", ".join(sorted(unresolved)))
    elif unresolved is None:
        disabled = sorted(str(r.get("name")) for r in live.get("rules") or () if not is_enabled(r.get("enabled")))
        if disabled:
            found.append("rules disabled because their tunnel interfaces are not present: %s" % ", ".join(disabled))
    return found


# --------------------------------------------------------------------------- status

# A group rule's filters as the module reports them in live.rules (Get-KillswitchRuleRecord), the kind of value,
# and the document rule's key it must equal (None: no restriction; "aliases": the resolved interface aliases).
FILTERS = (("remote_addresses", "address", "remote_addresses"), ("local_addresses", "address", None),
           ("local_ports", "port", "local_ports"), ("remote_ports", "port", "remote_ports"),
           ("protocol", "protocol", "protocol"), ("icmp_types", "icmp", "icmp_types"),
           ("program", "program", "program"), ("interface_aliases", "alias", "aliases"))
FILTER_PROTOCOLS = {"1": "icmpv4", "6": "tcp", "17": "udp", "58": "icmpv6"}


def _address_form(item: str) -> str:
    """One address the way ConvertTo-KillswitchFilterSet writes it: canonical ends, a mask as a prefix length, no
    full-length prefix."""
    network, _sep, prefix = item.partition("/")
    ends = []
    for end in network.split("-"):
        try:
            ends.append(str(ipaddress.ip_address(end)))
        except ValueError:
            ends.append(end)
    item = "-".join(ends)
    if "." in prefix:
        try:
            prefix = str(bin(int(ipaddress.ip_address(prefix))).count("1"))
        except ValueError:
            pass
    full = "128" if ":" in item else "32"
    return "%s/%s" % (item, prefix) if prefix and prefix != full else item


def filter_set(value: Any, kind: str) -> str:
    """A filter's values as one sorted, lower-case text: the Python twin of the module's ConvertTo-KillswitchFilterSet,
    so that the controller and the module (and the guard) call the same rule in sync. "Any" and [] are the same."""
    values = value if isinstance(value, (list, tuple)) else [value]
    items = set()
    for raw in values:
        if raw is None or str(raw).strip() == "" or str(raw).strip().lower() == "any":
            continue
        item = str(raw).strip().lower()
        if kind == "icmp" and item.endswith(":*"):
            item = item[:-2]
        elif kind == "protocol":
            item = FILTER_PROTOCOLS.get(item, item)
        elif kind == "address":
            item = _address_form(item)
        items.add(item)
    return "|".join(sorted(items))


def _filter_lines(live_rule: Mapping[str, Any], want: Mapping[str, Any]) -> List[str]:
    """How a group rule's filters differ from the document's rule, one line each; a rule whose filters were not
    reported cannot be judged and is drift."""
    missing = [name for name, _kind, _key in FILTERS if name not in live_rule]
    if missing:
        return ["-rule %s: filters not reported (%s): not judged in sync" % (live_rule.get("name"), ", ".join(missing))]
    lines = []
    for name, kind, key in FILTERS:
        wanted = want["aliases"] if key == "aliases" else (want["rule"].get(key) if key else None)
        have, should = filter_set(live_rule.get(name), kind), filter_set(wanted, kind)
        if have != should:
            lines.append("-rule %s: %s %s, policy %s" % (live_rule.get("name"), name, have or "any", should or "any"))
    return lines


def _resolved(live: Mapping[str, Any], rule: Mapping[str, Any]) -> List[str]:
    """The adapters present that the rule's patterns match: what the module binds the rule to."""
    present = [str(alias) for alias in live.get("interfaces") or ()]
    patterns = rule.get("interface_aliases") or []
    return sorted({alias for alias in present if any(like(alias, p) for p in patterns)}, key=str.lower)


def expected_live(live: Mapping[str, Any], document: Mapping[str, Any]) -> Dict[str, Any]:
    """The profiles and group rules the document wants, given the interfaces present on the host."""
    rules = []
    for rule in document.get("rules") or ():
        resolved = _resolved(live, rule)
        rules.append({"name": rule["name"], "display_name": rule.get("display_name"),
                      "direction": rule.get("direction"), "enabled": bool(resolved) or not rule.get("interface_aliases"),
                      "description": "%s%s interfaces=%s" % (DESCRIPTION_PREFIX, rule["digest"], "|".join(resolved))})
    wanted = document.get("profiles") or {}
    profiles = {name: {"enabled": wanted.get("enabled", True), "default_inbound": wanted.get("default_inbound", "Block"),
                       "default_outbound": wanted.get("default_outbound", "Block")}
                for name in wanted.get("names") or PROFILES}
    return {"profiles": profiles, "rules": rules}


def _same_description(live_text: Any, wanted: str) -> bool:
    """The module joins the resolved aliases with '|' in the order the host lists them: compare them as a set."""
    head, _sep, aliases = str(live_text or "").partition(" interfaces=")
    want_head, _sep, want_aliases = wanted.partition(" interfaces=")
    return head == want_head and {a.lower() for a in aliases.split("|") if a} == {
        a.lower() for a in want_aliases.split("|") if a}


def _normalized(live: Mapping[str, Any], expected: Mapping[str, Any]) -> Dict[str, Any]:
    """``live``'s profiles and group rules, with descriptions that only differ in alias order made equal."""
    wanted = {r["name"]: r["description"] for r in expected["rules"]}
    rules = []
    for rule in live.get("rules") or ():
        text = rule.get("description")
        if rule.get("name") in wanted and _same_description(text, wanted[rule["name"]]):
            text = wanted[rule["name"]]
        rules.append(dict(rule, description=text))
    profiles = {}
    for name, profile in (live.get("profiles") or {}).items():
        profile = profile or {}
        profiles[name] = {"enabled": is_enabled(profile.get("enabled")), "default_inbound": profile.get("default_inbound"),
                          "default_outbound": profile.get("default_outbound")}
    return {"profiles": profiles, "rules": rules}


def _part(in_sync: bool, lines: Sequence[str]) -> Dict[str, Any]:
    if in_sync:
        return dict(in_sync=True, diff="")
    if len(lines) > DIFF_LINES:
        lines = list(lines[:DIFF_LINES]) + ["... %d more lines" % (len(lines) - DIFF_LINES)]
    return dict(in_sync=False, diff="\n".join(lines))


def status(live: Mapping[str, Any], document: Mapping[str, Any], host: str = "", guard_enabled: bool = True,
           guard_interval: Optional[int] = None, exclusive: bool = False) -> Dict[str, Any]:
    """The ``killswitch_status`` fact of a Windows host, the shape ``drift.host_status`` gives a Linux one.

    ``table``: the profiles (enabled, default Block) and the group's rules as the document wants them (their
    description, state, direction and, as the module and the guard judge them, their filters), and no
    enabled third-party rule that opens a path outside the tunnel, whatever ``exclusive`` is (it only says whether
    the run disables them: a host where DNS or IPv6 leaks is not in sync with a kill switch); ``guard``: the
    scheduled task when the guard is on: present, not Disabled, running the state directory's guard.ps1, at the
    expected interval.  ``file``, ``boot_unit``, ``watcher`` and ``fence`` have no Windows counterpart (Windows
    Firewall persists its rules itself) and are in sync.
    """
    expected = expected_live(live, document)
    actual = _normalized(live, expected)
    want, have = _lines(expected), _lines(actual)
    table_lines = list(difflib.unified_diff(have, want, fromfile="live", tofile="policy", lineterm="", n=0))
    # What Windows enforces for each group rule, not only its text: a rule edited in place keeps its description.
    wanted_rules = {rule["name"]: rule for rule in document.get("rules") or ()}
    for rule in sorted(live.get("rules") or (), key=lambda r: str(r.get("name"))):
        if rule.get("name") in wanted_rules:
            own = wanted_rules[rule["name"]]
            table_lines += _filter_lines(rule, {"rule": own, "aliases": _resolved(live, own)})
    remedy = ("exclusive mode disables it" if exclusive
              else "disable it, or set killswitch_windows_exclusive: true")
    for path in open_paths(live.get("third_party") or (), document):
        table_lines.append("-third-party %s: %s (%s)" % (path["name"], path["why"], remedy))
    parts = {part: _part(True, []) for part in PARTS}
    parts["table"] = _part(not table_lines, table_lines)
    guard = live.get("guard") or {}
    if guard_enabled:
        problems = []
        if not guard.get("task"):
            problems.append("-guard task %s: absent" % GUARD_TASK)
        else:
            problems += ["-guard task %s: %s" % (GUARD_TASK, fault) for fault in _guard_faults(guard)]
            if guard_interval is not None and guard.get("interval") != guard_interval:
                problems.append("-guard task %s: interval %s s, expected %s s"
                                % (GUARD_TASK, guard.get("interval"), guard_interval))
        parts["guard"] = _part(not problems, problems)
    return dict(host=str(host), backend="windows", digest=str(document.get("digest") or "")[:DIGEST_SHOWN],
                drifted=any(not p["in_sync"] for p in parts.values()), parts=parts)


def postcheck(live: Mapping[str, Any], status_fact: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The rollout's post-check of a Windows host, in the shape of ``killswitch_status``'s ``ok`` and ``problems``.

    With a status (a document was given: the kill switch should be present) it is in force when nothing drifted;
    without one (``killswitch_state: absent``) when no rule of the group and no guard task is left.
    """
    if status_fact is not None:
        problems = ["%s: %s" % (part, line) for part, value in sorted((status_fact.get("parts") or {}).items())
                    if not value.get("in_sync") for line in str(value.get("diff") or "").splitlines()]
        if status_fact.get("drifted") and not problems:
            problems = ["drifted"]
        return dict(ok=not status_fact.get("drifted") and not problems, problems=problems)
    problems = ["rule %s is still there" % rule.get("name") for rule in live.get("rules") or ()]
    if (live.get("guard") or {}).get("task"):
        problems.append("the guard task %s is still there" % GUARD_TASK)
    return dict(ok=not problems, problems=problems)
