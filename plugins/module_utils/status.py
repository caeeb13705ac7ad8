# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is the kill switch in force on this host?  One read-only status, in one shape.

    table      {present, digest, matches}  the nftables table (or iptables chains) and the policy digest
    boot_unit  {enabled}                   the unit that loads the ruleset at boot
    guard      {active}                    the timer that re-asserts the table
    tunnels    [{name, up, traffic}]       each tunnel interface present, and whether traffic flows
    ok, problems                           the verdict and every reason against it

Nothing here changes the host: commands are ``nft list table``, ``systemctl is-enabled``,
``systemctl is-active`` and ``ping`` bound to a tunnel interface.  Commands are run through an
injected runner (``AnsibleModule.run_command`` on a host, a fake in the tests) and interfaces are
read from ``/sys/class/net`` (a parameter, for the tests).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# (rc, stdout, stderr) of a command, as AnsibleModule.run_command returns it.
Runner = Callable[[Sequence[str]], Tuple[int, str, str]]

# The options killswitch_status takes; killswitch_verify takes the ones it shares from here (one source, and
# tests/unit/test_contract.py holds each module's DOCUMENTATION to its spec).
ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = dict(
    state=dict(type="str", choices=["present", "absent"], default="present"),
    backend=dict(type="str", choices=["nftables", "iptables"], default="nftables"),
    table=dict(type="str", default="killswitch"),
    digest=dict(type="str"),
    boot_unit=dict(type="str", default="netlock-killswitch.service"),
    guard=dict(type="bool", default=True),
    guard_unit=dict(type="str", default="netlock-killswitch-guard.timer"),
    tunnel_interfaces=dict(type="list", elements="str", default=[]),
    traffic_target=dict(type="str"),
)

COMMENT = re.compile(r"^netlock\.killswitch ([0-9a-f]{16})$")
DIGEST_LENGTH = 16  # the table comment carries the first 16 hex digits of the policy digest
IFF_UP = 0x1
TRAFFIC_OK, TRAFFIC_FAILED, TRAFFIC_NOT_CHECKED = "ok", "failed", "not checked"


def digest_from_comment(comment: Optional[str]) -> Optional[str]:
    """The digest prefix in the table's comment (``netlock.killswitch <16 hex>``), or None."""
    match = COMMENT.match((comment or "").strip())
    return match.group(1) if match else None


def table_comment(listing: str) -> Optional[str]:
    """The table's own comment in ``nft list table`` text (not a set's or a chain's), or None.

    The text listing is read rather than ``nft -j``: nft before 1.0.7 leaves table comments out of JSON.
    """
    depth = 0
    for line in listing.splitlines():
        stripped = line.strip()
        if depth == 1 and stripped.startswith('comment "'):
            return stripped[len('comment "'):].rsplit('"', 1)[0]
        depth += stripped.count("{") - stripped.count("}")
    return None


def table_status(run: Runner, nft: str, table: str, digest: Optional[str], family: str = "inet") -> Dict[str, Any]:
    """``{present, digest, matches}``; ``matches`` is None when no digest is expected."""
    rc, out, _err = run([nft, "list", "table", family, table])
    if rc != 0:
        return dict(present=False, digest=None, matches=False if digest else None)
    if not out.lstrip().startswith("table %s %s {" % (family, table)):
        raise RuntimeError("nft list table %s %s returned an unexpected listing: %s" % (family, table, out[:200]))
    found = digest_from_comment(table_comment(out))
    matches = None
    if digest:
        matches = found is not None and found == digest.lower()[:DIGEST_LENGTH]
    return dict(present=True, digest=found, matches=matches)


IPTABLES_COMMENT = re.compile(r'^-A (\S+) -m comment --comment "?(netlock\.killswitch [0-9a-f]{16})"?$')


def iptables_status(run: Runner, save: str, table: str, digest: Optional[str]) -> Dict[str, Any]:
    """The same shape for the iptables backend: our output chain, and the digest its first rule carries."""
    rc, out, err = run([save, "-t", "filter"])
    if rc != 0:
        raise RuntimeError("%s -t filter failed: %s" % (save, (err or out).strip()))
    chain = table + "-out"
    if not any(line.startswith(":%s " % chain) for line in out.splitlines()):
        return dict(present=False, digest=None, matches=False if digest else None)
    found = None
    for line in out.splitlines():
        match = IPTABLES_COMMENT.match(line.strip())
        if match and match.group(1) == chain:
            found = digest_from_comment(match.group(2))
            break
    matches = None
    if digest:
        matches = found is not None and found == digest.lower()[:DIGEST_LENGTH]
    return dict(present=True, digest=found, matches=matches)


def unit_is(run: Runner, systemctl: str, verb: str, unit: str) -> bool:
    """``systemctl is-enabled`` / ``is-active``: True only for ``enabled`` / ``active``."""
    rc, out, _err = run([systemctl, verb, unit])
    return rc == 0 and out.strip() == ("enabled" if verb == "is-enabled" else "active")


def matches_pattern(name: str, pattern: str) -> bool:
    """nft interface matching: exact, or a trailing ``*`` wildcard (``tun*``)."""
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern


def interface_flags(sys_class_net: str, name: str) -> Optional[Tuple[int, str]]:
    """``(flags, operstate)`` of an interface from sysfs, or None when it is gone or unreadable."""
    try:
        with open(os.path.join(sys_class_net, name, "flags")) as handle:
            flags = int(handle.read().strip(), 16)
        with open(os.path.join(sys_class_net, name, "operstate")) as handle:
            operstate = handle.read().strip()
    except (OSError, ValueError):
        return None
    return flags, operstate


def interface_up(sys_class_net: str, name: str) -> bool:
    """Administratively up (IFF_UP) and not without carrier; WireGuard and tun report ``unknown``."""
    found = interface_flags(sys_class_net, name)
    return found is not None and bool(found[0] & IFF_UP) and found[1] in ("up", "unknown")


def tunnel_names(sys_class_net: str, patterns: Sequence[str]) -> List[str]:
    """Every interface on the host that one of the patterns names, plus exact names that are absent."""
    try:
        present = sorted(os.listdir(sys_class_net))
    except OSError:
        present = []
    names = [name for name in present if any(matches_pattern(name, p) for p in patterns)]
    names += [p for p in patterns if not p.endswith("*") and p not in names]
    return names


def traffic(run: Runner, ping: Optional[str], interface: str, target: Optional[str], count: int = 3,
            wait: int = 2) -> str:
    """Echo requests to target bound to interface: ``ok`` on any reply, ``failed`` on none."""
    if not target or not ping:
        return TRAFFIC_NOT_CHECKED
    rc, _out, _err = run([ping, "-n", "-q", "-c", str(count), "-i", "0.2", "-W", str(wait), "-I", interface, target])
    return TRAFFIC_OK if rc == 0 else TRAFFIC_FAILED


def rules_name(backend: str, table: str) -> str:
    """How the problems name the main rules: the nftables table, or the iptables backend's output chain."""
    return "iptables chain %s-out" % table if backend == "iptables" else "table inet %s" % table


def installed(run: Runner, nft: str, systemctl: str, table: str = "killswitch", digest: Optional[str] = None,
              boot_unit: str = "netlock-killswitch.service", guard_unit: str = "netlock-killswitch-guard.timer",
              backend: str = "nftables") -> Dict[str, Any]:
    """What is on the host: ``{table, boot_unit, guard}``, the first parts of the status (and of the verify).

    For the iptables backend ``nft`` is the path of iptables-save (IPv4: the chains of both families are
    loaded together, IPv4 first).
    """
    rules = iptables_status(run, nft, table, digest) if backend == "iptables" else table_status(run, nft, table, digest)
    return dict(
        table=rules,
        boot_unit=dict(name=boot_unit, enabled=unit_is(run, systemctl, "is-enabled", boot_unit)),
        guard=dict(name=guard_unit, active=unit_is(run, systemctl, "is-active", guard_unit)),
    )


def check(name: str, ok: bool, detail: str) -> Dict[str, Any]:
    """One named check, the shape killswitch_verify returns in its ``checks`` list."""
    return dict(name=name, ok=bool(ok), detail=detail)


def installed_checks(found: Dict[str, Any], state: str = "present", digest: Optional[str] = None, guard: bool = True,
                     backend: str = "nftables", table: str = "killswitch") -> List[Dict[str, Any]]:
    """``installed``'s parts judged: one check each for the rules, the boot unit and the guard timer.

    A failed check's detail is the problem the status reports, word for word.
    """
    what = rules_name(backend, table)
    rules, boot, timer = found["table"], found["boot_unit"], found["guard"]
    if state != "present":
        return [check("table", not rules["present"], "%s is %s" % (what, "still loaded" if rules["present"] else "not loaded")),
                check("boot_unit", not boot["enabled"],
                      "%s is %s" % (boot["name"], "still enabled" if boot["enabled"] else "not enabled")),
                check("guard", not timer["active"],
                      "%s is %s" % (timer["name"], "still active" if timer["active"] else "not active"))]
    if not rules["present"]:
        table_check = check("table", False, "%s is not loaded" % what)
    elif rules["matches"] is False:
        table_check = check("table", False, "%s carries policy digest %s, expected %s"
                            % (what, rules["digest"] or "none", digest.lower()[:DIGEST_LENGTH]))
    elif rules["matches"]:
        table_check = check("table", True, "%s is loaded with policy digest %s" % (what, rules["digest"]))
    else:
        table_check = check("table", True, "%s is loaded (no policy digest expected)" % what)
    if not guard:
        guard_check = check("guard", True, "%s is not required (guard off)" % timer["name"])
    else:
        guard_check = check("guard", timer["active"], "%s is %s" % (timer["name"], "active" if timer["active"]
                                                                    else "not active"))
    return [table_check,
            check("boot_unit", boot["enabled"], "%s is %s" % (boot["name"], "enabled" if boot["enabled"] else "not enabled")),
            guard_check]


def bridge_table_problems(found: Dict[str, Any], state: str, digest: Optional[str], table: str) -> List[str]:
    """The bridge table (bridged frames; none with forward off, so its absence is no problem while present):
    never left behind, never from another policy."""
    what = "table bridge %s" % table
    if state != "present":
        return ["%s is still loaded" % what] if found["present"] else []
    if found["present"] and found["matches"] is False:
        return ["%s carries policy digest %s, expected %s" % (what, found["digest"] or "none", digest.lower()[:DIGEST_LENGTH])]
    return []


def status(run: Runner, nft: str, systemctl: str, ping: Optional[str] = None, state: str = "present",
           table: str = "killswitch", digest: Optional[str] = None, boot_unit: str = "netlock-killswitch.service",
           guard_unit: str = "netlock-killswitch-guard.timer", guard: bool = True,
           tunnel_interfaces: Sequence[str] = (), traffic_target: Optional[str] = None,
           sys_class_net: str = "/sys/class/net", backend: str = "nftables") -> Dict[str, Any]:
    """The whole status and its verdict.

    With ``state=present`` the kill switch must be in force: the table loaded (and carrying ``digest``
    when given), the boot unit enabled, the guard active when ``guard`` is set, and traffic flowing
    through every tunnel interface that is up (when there is a ``traffic_target``).  With
    ``state=absent`` nothing may be left: no table, no enabled boot unit, no active guard.
    """
    result: Dict[str, Any] = installed(run, nft, systemctl, table, digest, boot_unit, guard_unit, backend)
    result["tunnels"] = []
    problems = [c["detail"] for c in installed_checks(result, state, digest, guard, backend, table) if not c["ok"]]
    if backend == "nftables":
        result["bridge_table"] = table_status(run, nft, table, digest, family="bridge")
        problems += bridge_table_problems(result["bridge_table"], state, digest, table)
    if state == "present":
        for name in tunnel_names(sys_class_net, tunnel_interfaces):
            up = interface_up(sys_class_net, name)
            flow = traffic(run, ping, name, traffic_target) if up else TRAFFIC_NOT_CHECKED
            result["tunnels"].append(dict(name=name, up=up, traffic=flow, target=traffic_target if up else None))
            if flow == TRAFFIC_FAILED:
                problems.append("no reply from %s through %s: the tunnel is up but traffic does not flow"
                                % (traffic_target, name))
    result.update(ok=not problems, problems=problems,
                  msg=("kill switch %s" % ("in force" if state == "present" else "removed")) if not problems
                  else "; ".join(problems))
    return result
