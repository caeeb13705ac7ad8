# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drift, in plain Python: one host's ``killswitch_status`` and the fleet report built from many.

The role ends every run (check mode included) by publishing ``killswitch_status``
(``roles/killswitch/tasks/status.yml``, the ``netlock.killswitch.drift_status`` filter), whose shape is
documented in ``docs/design/drift.md``::

    {"host": "ks-client1", "backend": "nftables", "digest": "<16 hex>", "drifted": True,
     "parts": {"table": {"in_sync": False, "diff": "--- ...\\n+++ ...\\n..."}, "file": {...}, "boot_unit": {...},
               "guard": {...}, "watcher": {...}, "fence": {...}}}

A part is in sync when none of the task results the role registered for it changed (or, in check mode,
would change); results that were skipped or never registered count as in sync. Its diff is the text
of those results' ``diff`` entries as one short unified diff ('' when in sync).

``playbooks/drift.yml`` hands every targeted host's status to the ``killswitch_drift_report`` action,
which uses ``fleet_report``, ``render_table`` and ``verdict`` here: which hosts drifted, in which parts,
which hosts gave no status (unreachable, or the role failed), the text table and whether the run fails.
"""

from __future__ import annotations

import datetime
import difflib
import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

PARTS = ("table", "file", "boot_unit", "guard", "watcher", "fence")
# The killswitch_firewall module says which of its parts changed; every other result only has "changed".
PART_KEYS = {
    "table": ("table_changed", "rollback_pending"),
    "file": ("file_changed", "expected_changed"),
}
DIFF_LINES = 40        # a part's diff is cut after this many lines
SUMMARY_CHARS = 100    # a one-line diff summary is cut after this many characters
DIGEST_SHOWN = 16
IN_SYNC, DRIFTED, REPAIRED, UNREACHABLE, FAILED = "in sync", "drifted", "repaired", "unreachable", "failed"


class StatusError(ValueError):
    """The role asked for a part this collection does not know (a typo in status.yml)."""


# --------------------------------------------------------------------------- one host

def _results(value: Any) -> List[Mapping[str, Any]]:
    """Every task result in ``value``: one registered result, a loop's (its items), or a list of them."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        items = value.get("results")
        if isinstance(items, (list, tuple)):
            out = []
            for item in items:
                out += _results(item)
            return out
        return [value]
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            out += _results(item)
        return out
    return []


def _changed(result: Mapping[str, Any], part: str) -> bool:
    if result.get("skipped"):
        return False
    keys = PART_KEYS.get(part, ("changed",))
    if part in PART_KEYS and not any(key in result for key in keys):
        keys = ("changed",)  # a result that does not say which part changed counts for every part it is given to
    return any(bool(result.get(key)) for key in keys)


def _entries(result: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    diff = result.get("diff")
    if isinstance(diff, Mapping):
        return [diff]
    if isinstance(diff, (list, tuple)):
        return [entry for entry in diff if isinstance(entry, Mapping)]
    return []


def _is_file_entry(result: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    path = result.get("path")
    return bool(path) and path in (entry.get("before_header"), entry.get("after_header"))


def _part_entries(result: Mapping[str, Any], part: str) -> List[Mapping[str, Any]]:
    """The diff entries of a result that belong to ``part`` (the firewall module's table and file are separate)."""
    entries = _entries(result)
    if part == "file" and any(key in result for key in PART_KEYS["file"]):
        return [entry for entry in entries if _is_file_entry(result, entry)]
    if part == "table" and any(key in result for key in PART_KEYS["table"]):
        return [entry for entry in entries if not _is_file_entry(result, entry)]
    return entries


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return "".join("%s: %s\n" % (key, value[key]) for key in sorted(value, key=str))
    return json.dumps(value, sort_keys=True, default=str) + "\n"


def _unified(entry: Mapping[str, Any]) -> List[str]:
    if entry.get("prepared"):
        return str(entry["prepared"]).splitlines()
    before, after = _text(entry.get("before")), _text(entry.get("after"))
    if before == after:
        return []
    return list(difflib.unified_diff(before.splitlines(), after.splitlines(),
                                     fromfile=str(entry.get("before_header") or "before"),
                                     tofile=str(entry.get("after_header") or "after"), lineterm="", n=1))


def _label(result: Mapping[str, Any]) -> str:
    item = result.get("item")
    for source in (result, item if isinstance(item, Mapping) else {}):
        for key in ("name", "dest", "path"):
            if source.get(key):
                return str(source[key])
    if item is not None and not isinstance(item, Mapping):
        return str(item)
    return "a task"


def _describe(result: Mapping[str, Any]) -> str:
    """One line for a changed result that carries no diff (a systemd unit, a removed file)."""
    wanted = ["%s=%s" % (key, result[key]) for key in ("enabled", "state") if key in result and result[key] is not None]
    return "%s: not as the policy wants it%s" % (_label(result), " (%s)" % ", ".join(wanted) if wanted else "")


def _cut(lines: List[str]) -> str:
    if len(lines) > DIFF_LINES:
        lines = lines[:DIFF_LINES] + ["... %d more lines" % (len(lines) - DIFF_LINES)]
    return "\n".join(lines)


def part_status(part: str, value: Any) -> Dict[str, Any]:
    """``{in_sync, diff}`` of one part from the results the role registered for it."""
    changed = [result for result in _results(value) if _changed(result, part)]
    lines: List[str] = []
    for result in changed:
        text = []
        for entry in _part_entries(result, part):
            text += _unified(entry)
        lines += text or [_describe(result)]
    return dict(in_sync=not changed, diff=_cut(lines) if changed else "")


def host_status(parts: Mapping[str, Any], host: str, backend: str = "", digest: str = "") -> Dict[str, Any]:
    """A host's ``killswitch_status`` from ``{part: registered result(s)}``; missing parts are in sync."""
    unknown = sorted(str(name) for name in parts if name not in PARTS)
    if unknown:
        raise StatusError("unknown kill switch part(s) %s; the parts are %s" % (", ".join(unknown), ", ".join(PARTS)))
    statuses = {part: part_status(part, parts.get(part)) for part in PARTS}
    return dict(host=str(host), backend=str(backend or ""), digest=str(digest or "")[:DIGEST_SHOWN],
                drifted=any(not status["in_sync"] for status in statuses.values()), parts=statuses)


# --------------------------------------------------------------------------- the fleet

def diff_summary(diff: str) -> str:
    """One line for a part's diff: lines added and removed, and the first changed line."""
    added = removed = 0
    first = ""
    for line in (diff or "").splitlines():
        if line.startswith(("+++", "---", "@@")):
            continue
        if line.startswith("+") or line.startswith("-"):
            added += line.startswith("+")
            removed += line.startswith("-")
            first = first or line
    if added or removed:
        text = "+%d -%d: %s" % (added, removed, " ".join(first.split()))
    else:
        text = next((" ".join(line.split()) for line in (diff or "").splitlines() if line.strip()), "changed")
    return text if len(text) <= SUMMARY_CHARS else text[:SUMMARY_CHARS - 3] + "..."


def _valid(status: Any) -> bool:
    return isinstance(status, Mapping) and bool(status.get("host")) and isinstance(status.get("parts"), Mapping)


def _entry(host: str, status: Optional[Mapping[str, Any]], enforced: bool, error: str) -> Dict[str, Any]:
    if status is None:
        reason = " ".join(str(error or "").split())
        return dict(host=host, result=FAILED if reason and not reason.startswith("unreachable") else UNREACHABLE,
                    backend=None, digest=None, drifted=None, drifted_parts=[], parts={}, summary={},
                    msg=reason or "unreachable: no status from this host")
    parts = {}
    for part in PARTS:
        given = status["parts"].get(part) or {}
        parts[part] = dict(in_sync=bool(given.get("in_sync", True)), diff=str(given.get("diff") or ""))
    drifted_parts = [part for part in PARTS if not parts[part]["in_sync"]]
    summaries = {part: diff_summary(parts[part]["diff"]) for part in drifted_parts}
    result = IN_SYNC if not drifted_parts else (REPAIRED if enforced else DRIFTED)
    return dict(host=host, result=result, backend=status.get("backend") or None, digest=status.get("digest") or None,
                drifted=bool(drifted_parts), drifted_parts=drifted_parts, parts=parts, summary=summaries,
                msg="; ".join("%s: %s" % (part, summaries[part]) for part in drifted_parts))


def fleet_report(statuses: Iterable[Any], targets: Sequence[str], enforced: bool = False,
                 errors: Optional[Mapping[str, Any]] = None, check_mode: Optional[bool] = None,
                 now: Optional[datetime.datetime] = None) -> Dict[str, Any]:
    """The fleet report: one entry per targeted host, in target order.

    A target without a valid status is unreachable (or failed, with ``errors[host]`` saying why); statuses
    of hosts that are not targets are left out. With ``enforced`` a drifted host was repaired by this run.
    """
    by_host: Dict[str, Mapping[str, Any]] = {}
    for status in statuses or ():
        if _valid(status):
            by_host[str(status["host"])] = status
    errors = errors or {}
    hosts = [_entry(str(host), by_host.get(str(host)), enforced, errors.get(host) or "") for host in targets]
    drifted = [h["host"] for h in hosts if h["drifted"]]
    unreachable = [h["host"] for h in hosts if h["result"] in (UNREACHABLE, FAILED)]
    totals = {name: sum(1 for h in hosts if h["result"] == name)
              for name in (IN_SYNC, DRIFTED, REPAIRED, UNREACHABLE, FAILED)}
    return dict(
        generated=(now or datetime.datetime.now(datetime.timezone.utc)).isoformat(timespec="seconds"),
        enforced=bool(enforced),
        check_mode=(not enforced) if check_mode is None else bool(check_mode),
        targets=[str(host) for host in targets],
        hosts=hosts,
        drifted=drifted,
        unreachable=unreachable,
        totals=totals,
        ok=not unreachable and (bool(enforced) or not drifted),
    )


def render_table(report: Mapping[str, Any]) -> str:
    """The report as plain text: one row per host and part, then each drifted part's one-line diff."""
    mark = {True: "ok", False: "FIXED" if report.get("enforced") else "DRIFT"}
    header = ("host", "backend", "policy") + PARTS + ("result",)
    rows = []
    for h in report["hosts"]:
        if h["result"] in (UNREACHABLE, FAILED):
            rows.append((h["host"], "-", "-") + ("-",) * len(PARTS) + (h["result"],))
        else:
            rows.append((h["host"], h["backend"] or "-", h["digest"] or "-")
                        + tuple(mark[h["parts"][part]["in_sync"]] for part in PARTS) + (h["result"],))
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]

    def line(cells):
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip()

    mode = "enforced" if report.get("enforced") else "report only"
    out = ["kill switch drift (%s): %d hosts" % (mode, len(rows)), line(header), line("-" * w for w in widths)]
    out += [line(row) for row in rows]
    out.append("")
    drifted, unreachable = report["drifted"], report["unreachable"]
    failed = any(h["result"] == FAILED for h in report["hosts"])
    out.append("%d of %d hosts drifted%s%s; %d %s%s" % (
        len(drifted), len(rows), " (repaired)" if report.get("enforced") and drifted else "",
        ": " + ", ".join(drifted) if drifted else "", len(unreachable),
        "unreachable or failed" if failed else "unreachable", ": " + ", ".join(unreachable) if unreachable else ""))
    for h in report["hosts"]:
        for part in h["drifted_parts"]:
            out.append("%s %s: %s" % (h["host"], part, h["summary"][part]))
        if h["result"] in (UNREACHABLE, FAILED):
            out.append("%s: %s" % (h["host"], h["msg"]))
    return "\n".join(out) + "\n"


def verdict(report: Mapping[str, Any], fail: bool = True, path: str = "") -> Tuple[bool, str]:
    """(failed, message): a run fails on an unreachable host, and on drift it did not repair."""
    where = " (report: %s)" % path if path else ""
    problems = []
    if report["drifted"] and not report.get("enforced"):
        problems.append("kill switch drift found on %d of %d hosts: %s; run with -e killswitch_drift_enforce=true "
                        "to restore the policy" % (
                            len(report["drifted"]), len(report["hosts"]),
                            ", ".join("%s (%s)" % (h["host"], ", ".join(h["drifted_parts"]))
                                      for h in report["hosts"] if h["drifted"])))
    if report["unreachable"]:
        problems.append("no kill switch status from %d of %d hosts: %s" % (
            len(report["unreachable"]), len(report["hosts"]),
            ", ".join("%s (%s)" % (h["host"], h["msg"]) for h in report["hosts"]
                      if h["result"] in (UNREACHABLE, FAILED))))
    if problems and fail:
        return True, "; ".join(problems) + where
    if problems:
        return False, "; ".join(problems) + " (not failing: killswitch_drift_fail is false)" + where
    if report["drifted"]:
        return False, "%d of %d hosts drifted and were repaired: %s%s" % (
            len(report["drifted"]), len(report["hosts"]), ", ".join(report["drifted"]), where)
    return False, "all %d hosts in sync%s" % (len(report["hosts"]), where)
