# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The staged rollout's bookkeeping on the controller: the gate after each stage and the summary.

``playbooks/rollout.yml`` records one fact per host and stage (see ``PREFLIGHT_FACT`` and
``RESULT_FACT``) and, on the controller, the rollout's hosts, the stages run so far and the stop;
everything that is derived from them (who failed, whether to stop, each host's final result, the
table and the JSON report) is derived here, in plain Python, and nowhere in Jinja.

A host record is a dict with at least ``result``:

* preflight (``killswitch_rollout_preflight``): ``ok``, ``failed`` (the host's own preflight failed),
  ``aborted`` (another host failed a fatal task, so this one stopped too) or ``unreachable``;
  ``digest``, ``task`` and ``msg``;
* rollout (``killswitch_rollout_result``): ``ok``, ``failed``, ``aborted`` or ``unreachable``;
  ``changed``, ``digest``, ``task``, ``msg`` and ``status`` (the post-check's killswitch_status).

A host with no record for a stage it was part of was unreachable too (Ansible took it out of the play).
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

PREFLIGHT_FACT = "killswitch_rollout_preflight"
RESULT_FACT = "killswitch_rollout_result"
PREFLIGHT = "preflight"
CHANGED, OK, FAILED, UNREACHABLE, NOT_RUN, ABORTED = "changed", "ok", "failed", "unreachable", "not run", "aborted"
GOOD = (CHANGED, OK)
RESULTS = (CHANGED, OK, FAILED, UNREACHABLE, NOT_RUN)
DIGEST_SHOWN = 16
# The status shape of killswitch_status; a registered result also carries Ansible's own keys (failed, ...).
STATUS_KEYS = ("table", "boot_unit", "guard", "tunnels", "ok", "problems")
# What the report keeps of the gate that stopped the rollout.
STOP_KEYS = ("stage", "summary", "msg", "failed_hosts", "aborted_hosts", "unreachable_hosts", "failed_percentage",
             "max_fail_percentage")


def plain(value: Any) -> Any:
    """Templated containers (hostvars, lazy dicts) as plain dicts and lists, for JSON and comparisons."""
    if isinstance(value, Mapping) or hasattr(value, "items"):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def host_records(hostvars: Mapping[str, Any], hosts: Sequence[str], fact: str) -> Dict[str, Any]:
    """Each host's value of ``fact`` from hostvars (None when unset), as plain data."""
    records = {}
    for host in hosts:
        try:
            value = hostvars[host].get(fact)
        except KeyError:
            value = None
        records[host] = plain(value)
    return records


def _record(records: Mapping[str, Any], host: str) -> Optional[Dict[str, Any]]:
    """A host's record, or None when it has none (an empty dict is a reset, not a record)."""
    record = records.get(host)
    if not isinstance(record, Mapping) or not record.get("result"):
        return None
    return dict(record)


def _percentage(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1) if whole else 0.0


def gate(stage: str, hosts: Sequence[str], records: Mapping[str, Any], max_fail_percentage: float = 0) -> Dict[str, Any]:
    """Whether the rollout stops after ``stage``.

    Every host of the stage without a good record counts against it: failed, aborted (stopped by
    another host's fatal failure, so it did not finish either), or unreachable (no record at all).
    The rollout stops when that share of the stage's hosts is above ``max_fail_percentage`` (0: at
    the first one), as Ansible's ``max_fail_percentage`` does per batch.
    """
    failed, aborted, unreachable, reasons = [], [], [], []
    for host in hosts:
        record = _record(records, host)
        if record is None or record["result"] == UNREACHABLE:
            unreachable.append(host)
            reasons.append("%s: unreachable%s" % (host, _detail(record)))
        elif record["result"] == ABORTED:
            aborted.append(host)
        elif record["result"] not in GOOD:
            failed.append(host)
            reasons.append("%s: %s" % (host, _reason(record)))
    bad = len(failed) + len(aborted) + len(unreachable)
    share = _percentage(bad, len(hosts))
    stop = bool(bad) and share > max_fail_percentage
    if aborted:
        reasons.append("stopped with %s: %s" % ("them" if len(failed) + len(unreachable) > 1 else "it", ", ".join(aborted)))
    summary_line = "%s: %s" % (stage, _counts(len(hosts), share, max_fail_percentage, stop, failed, aborted, unreachable))
    msg = "%s: %s" % (summary_line, "; ".join(reasons)) if bad else summary_line
    return dict(stage=stage, hosts=list(hosts), failed_hosts=failed, aborted_hosts=aborted, unreachable_hosts=unreachable,
                failed_percentage=share, max_fail_percentage=max_fail_percentage, stop=stop, summary=summary_line,
                msg=msg)


def _counts(total: int, share: float, threshold: float, stop: bool, failed: List[str], aborted: List[str],
            unreachable: List[str]) -> str:
    bad = len(failed) + len(aborted) + len(unreachable)
    if not bad:
        return "all %d hosts passed" % total
    kinds = [(len(failed), "failed"), (len(aborted), "stopped with %s" % ("them" if len(failed) + len(unreachable) > 1 else "it")),
             (len(unreachable), "unreachable")]
    return "%d of %d hosts did not pass (%s; %s%%, %s the %s%% allowed)%s" % (
        bad, total, ", ".join("%d %s" % (n, what) for n, what in kinds if n), _number(share),
        "above" if stop else "within", _number(threshold), ", the rollout stops here" if stop else "")


def _number(value: float) -> str:
    return ("%d" % value) if float(value).is_integer() else ("%.1f" % value)


def _status(value: Any) -> Optional[Dict[str, Any]]:
    """The post-check's status shape, without what Ansible adds to a registered result."""
    if not isinstance(value, Mapping) or "ok" not in value:
        return None
    return {key: value[key] for key in STATUS_KEYS if key in value}


def _detail(record: Optional[Mapping[str, Any]]) -> str:
    msg = " ".join(str((record or {}).get("msg") or "").split())
    return " (%s)" % msg if msg else ""


def _reason(record: Mapping[str, Any]) -> str:
    if record.get("result") == ABORTED:
        return "stopped with its batch: another host failed a task that ends the play"
    msg = " ".join(str(record.get("msg") or "").split()) or "failed"
    task = record.get("task")
    return "%s (task: %s)" % (msg, task) if task else msg


def host_results(targets: Sequence[str], stages: Sequence[Mapping[str, Any]], stop: Optional[Mapping[str, Any]],
                 preflight: Mapping[str, Any], results: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """One entry per target host, in the rollout's order: result, stage, digest, changed, msg, status."""
    stage_of: Dict[str, str] = {}
    for stage in stages:
        if stage.get("name") == PREFLIGHT:
            continue
        for host in stage.get("hosts") or ():
            stage_of.setdefault(host, stage.get("name"))
    stopped_by = (stop or {}).get("stage")
    entries = []
    for host in targets:
        before = _record(preflight, host)
        after = _record(results, host)
        entry = dict(host=host, result=NOT_RUN, stage=None, digest=None, changed=False, msg="", status=None)
        if before is not None:
            entry["digest"] = before.get("digest") or None
        if before is None or before["result"] == UNREACHABLE:
            entry.update(result=UNREACHABLE, stage=PREFLIGHT,
                         msg="unreachable in preflight%s: nothing was changed" % _detail(before))
        elif before["result"] == FAILED:
            entry.update(result=FAILED, stage=PREFLIGHT, msg="preflight: %s" % _reason(before))
        elif before["result"] != OK:
            entry.update(stage=PREFLIGHT, msg="not run: the rollout stopped in preflight")
        elif after is not None:
            changed = bool(after.get("changed"))
            entry.update(stage=stage_of.get(host), digest=after.get("digest") or entry["digest"], changed=changed,
                         status=_status(after.get("status")))
            if after["result"] in GOOD:
                entry["result"] = CHANGED if changed else OK
            elif after["result"] == UNREACHABLE:
                entry.update(result=UNREACHABLE, msg="unreachable during the rollout%s" % _detail(after))
            else:
                entry.update(result=FAILED, msg=_reason(after))
        elif host in stage_of:
            entry.update(result=UNREACHABLE, stage=stage_of[host], msg="unreachable during the rollout")
        else:
            entry["msg"] = "not run: the rollout stopped after %s" % stopped_by if stopped_by else \
                "not run: the rollout ended before this host"
        entries.append(entry)
    return entries


def summary(targets: Sequence[str], stages: Sequence[Mapping[str, Any]], stop: Optional[Mapping[str, Any]],
            preflight: Mapping[str, Any], results: Mapping[str, Any], check_mode: bool = False,
            max_fail_percentage: Optional[float] = None, now: Optional[datetime.datetime] = None,
            complete: bool = True) -> Dict[str, Any]:
    """The whole report: every host's entry, the stages in the order they ran, the stop and the totals.

    ``complete`` is false for the interim reports written while the rollout runs: a run that dies on
    the way (Ansible ends it when every host of a batch becomes unreachable) leaves one that says so.
    """
    hosts = host_results(targets, stages, stop, preflight, results)
    totals = {name: sum(1 for h in hosts if h["result"] == name) for name in RESULTS}
    stop = dict(stop) if stop else None
    return dict(
        generated=(now or datetime.datetime.now(datetime.timezone.utc)).isoformat(timespec="seconds"),
        complete=bool(complete),
        check_mode=bool(check_mode),
        max_fail_percentage=max_fail_percentage,
        stages=[dict(name=s.get("name"), hosts=list(s.get("hosts") or ())) for s in stages],
        stopped={key: stop.get(key) for key in STOP_KEYS if key in stop} if stop else None,
        hosts=hosts,
        totals=totals,
        ok=all(h["result"] in GOOD for h in hosts),
    )


def render_table(report: Mapping[str, Any]) -> str:
    """The report as plain text: one row per host, then what went wrong and why."""
    header = ("host", "stage", "result", "ruleset digest", "changed")
    rows = [(h["host"], h["stage"] or "-", h["result"], (h["digest"] or "-")[:DIGEST_SHOWN],
             ("would change" if report.get("check_mode") else "yes") if h["changed"] else "no")
            for h in report["hosts"]]
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]

    def line(cells):
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip()

    notes = [note for note, on in (("check mode", report.get("check_mode")), ("in progress", not report.get("complete", True)))
             if on]
    out = ["kill switch rollout%s: %d hosts" % (" (%s)" % ", ".join(notes) if notes else "", len(rows)),
           line(header), line("-" * w for w in widths)]
    out += [line(row) for row in rows]
    totals = report["totals"]
    out.append("")
    out.append(", ".join("%d %s" % (totals[name], name) for name in RESULTS if totals.get(name)) or "no hosts")
    if report["stages"]:
        out.append("stages: " + " -> ".join("%s (%s)" % (s["name"], ", ".join(s["hosts"])) for s in report["stages"]))
    if report.get("stopped"):
        stopped = report["stopped"]
        out.append("stopped after %s" % (stopped.get("summary") or stopped.get("msg") or stopped.get("stage")))
    problems = [h for h in report["hosts"] if h["result"] not in GOOD]
    for entry in problems:
        out.append("%s: %s" % (entry["host"], entry["msg"] or entry["result"]))
    return "\n".join(out) + "\n"


def write_json(report: Mapping[str, Any], path: str) -> str:
    """Write the report atomically (a reader never sees half a file); returns the absolute path."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w") as handle:
        json.dump(report, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")
    os.replace(tmp, path)
    return path
