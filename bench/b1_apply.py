# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""B1: the role's apply against a per-rule baseline (bench/playbooks/per_rule.yml: one ``nft add rule`` module
run per rule, as most firewall roles do), with 10, 100 and 1000 allowed exceptions, on the SSH fleet lab.

Ours is the apply of a policy change (the hosts carry the previous size's policy, the first the lab's default policy,
applied before and not timed); the baseline starts from an empty table each time (its table deleted, not timed).
At 1000 exceptions both run on one host, and the baseline adds only its first BASELINE_CAP rules: its time at 1000
is that run plus the measured seconds per rule times the rules it left out (said in the figure's note).
"""

from __future__ import annotations

import os
import tempfile

from bench import fleet_lab, workload
from bench.report import Outcome, Target

SIZES = (10, 100, 1000)
TARGET_AT = 100
SPEEDUP = Target(">=", 10.0)
HOSTS = 3
BASELINE_CAP = int(os.environ.get("BENCH_B1_BASELINE_CAP", "50"))
PER_RULE_PLAY = os.path.join(fleet_lab.PLAYBOOKS, "per_rule.yml")
DELETE_BASELINE = "nft delete table inet bench_per_rule 2>/dev/null; true"
LOOP_TASK = "Add one rule per allowed exception"
APPLY_TASK = "netlock.killswitch.killswitch : Load and persist the kill switch rules (nftables)"


def extrapolated(run_seconds: float, loop_seconds: float, done: int, wanted: int) -> float:
    """The baseline's time for ``wanted`` rules from a run that added ``done`` of them in ``loop_seconds``."""
    if done <= 0:
        raise ValueError("no exception rule was added: nothing to extrapolate from")
    return run_seconds + loop_seconds / done * (wanted - done)


def delete_baseline(inventory: str, limit=()) -> None:
    checked(fleet_lab.adhoc(inventory, "ansible.builtin.shell", DELETE_BASELINE, limit=limit))


def checked(run: fleet_lab.Run) -> fleet_lab.Run:
    if not run.ok:
        raise RuntimeError(run.failure())
    return run


def baseline(inventory: str, hosts, entries: int):
    """The per-rule play from an empty table: (seconds, the run, its note)."""
    limit = [hosts[0].name] if entries > TARGET_AT else []
    delete_baseline(inventory, limit)
    exceptions = workload.allowlist(entries)
    added = exceptions[:BASELINE_CAP] if entries > TARGET_AT else exceptions
    base = checked(fleet_lab.playbook(inventory, PER_RULE_PLAY, {"bench_exceptions": added}, limit=limit))
    delete_baseline(inventory, limit)
    if len(added) == entries:
        return base.seconds, base, ""
    loop_seconds = dict(fleet_lab.summarize(base.events).task_seconds)[LOOP_TASK]
    return (extrapolated(base.seconds, loop_seconds, len(added), entries), base,
            "extrapolated: %d of %d rules added in %.1f s (%.3f s per rule in the loop), run %.1f s"
            % (len(added), entries, loop_seconds, loop_seconds / len(added), base.seconds))


def run(outcome: Outcome) -> None:
    outcome.notes.append(
        "Ours: bench/playbooks/role.yml (the role, as rollout.yml's converge stage applies it) with N "
        "`killswitch_extra_outbound` exceptions. Baseline: bench/playbooks/per_rule.yml, the same exceptions as one "
        "`ansible.builtin.command: nft add rule ...` loop item each, plus 8 base rules. Both over real SSH as `operator` "
        "with sudo, ControlPersist and pipelining on; wall time of the whole ansible-playbook run, %d hosts at forks 5 "
        "(at 1000, one host). The baseline runs first, on hosts without the kill switch (the role's state=absent, not "
        "timed: its guard would check the ruleset after every `nft add rule`), from an empty table each time. Ours is "
        "then the apply of a policy change: the default policy of inventories/fleet applied first (not timed), then 10, "
        "100 and 1000 exceptions in turn: the ruleset and the stored policy for the guard change, the rest is found "
        "unchanged." % HOSTS)
    reason = fleet_lab.unavailable()
    if reason:
        for entries in SIZES:
            outcome.figure("ours / baseline speed-up, %d exceptions" % entries, None, "x",
                           SPEEDUP if entries == TARGET_AT else None, note=reason)
        return
    load_before = os.getloadavg()
    hosts = fleet_lab.ensure(HOSTS)
    inventory = fleet_lab.inventory(hosts, tempfile.mkdtemp(prefix="netlock-bench-b1-"))
    checked(fleet_lab.playbook(inventory, fleet_lab.ROLE_PLAY, {"killswitch_state": "absent"}))
    baselines = {entries: baseline(inventory, hosts, entries) for entries in SIZES}
    checked(fleet_lab.playbook(inventory, fleet_lab.ROLE_PLAY))
    for entries in SIZES:
        one_host = entries > TARGET_AT
        where = "1 host" if one_host else "%d hosts" % HOSTS
        ours = checked(fleet_lab.playbook(inventory, fleet_lab.ROLE_PLAY,
                                          {"killswitch_extra_outbound": workload.allowlist(entries)},
                                          limit=[hosts[0].name] if one_host else []))
        baseline_seconds, base, note = baselines[entries]
        outcome.figure("ours, %d exceptions, %s" % (entries, where), round(ours.seconds, 2), "s")
        outcome.figure("per-rule baseline, %d exceptions, %s" % (entries, where), round(baseline_seconds, 2), "s", note=note)
        speedup = outcome.figure("ours / baseline speed-up, %d exceptions" % entries, round(baseline_seconds / ours.seconds, 2),
                                 "x", SPEEDUP if entries == TARGET_AT else None)
        if entries == TARGET_AT:
            # The same size, another policy (so that it is applied), without the lockout protection: its cost shown.
            unsafe = checked(fleet_lab.playbook(inventory, fleet_lab.ROLE_PLAY,
                                                {"killswitch_extra_outbound": workload.allowlist(entries + 1)[1:],
                                                 "killswitch_safe_apply_timeout": 0}))
            outcome.figure("ours without the safe apply (killswitch_safe_apply_timeout: 0), %d exceptions, %s"
                           % (entries, where), round(unsafe.seconds, 2), "s")
            outcome.figure("speed-up without the safe apply, %d exceptions" % entries,
                           round(baseline_seconds / unsafe.seconds, 2), "x")
            ours_summary = fleet_lab.summarize(ours.events)
            base_summary = fleet_lab.summarize(base.events)
            outcome.notes.append(
                "At %d exceptions: ours ran %d tasks and %s modules per host (slowest tasks: %s); the baseline ran %s "
                "modules per host (%s)." % (
                    entries, ours_summary.tasks, fleet_lab.spread(ours_summary.executions), fleet_lab.slowest(ours_summary, 6),
                    fleet_lab.spread(base_summary.executions), fleet_lab.slowest(base_summary, 3)))
            apply_seconds = dict(ours_summary.task_seconds).get(APPLY_TASK, 0.0)
            if speedup.met is False:
                outcome.notes.append(
                    "Speed-up under target at %d: the role's cost is about fixed whatever the number of exceptions (the "
                    "ruleset is one `nft -f`), while the baseline's grows by one module run per rule. A policy change "
                    "runs only the parts that differ (the in-force check, the stored policy, the apply, the fence "
                    "seen, the old policy forgotten). Of its %.1f s, the apply took %.1f s: the safe apply arms a "
                    "rollback, changes the rules a second after the module's reply and confirms over a new SSH "
                    "connection (the lockout protection of the role interface). Without it the same change took "
                    "%.1f s (%.1fx the baseline). The rest is a module run for each part that changed (the in-force "
                    "check, the stored policy, the fence seen, the old policy found and forgotten: about 0.5 s each "
                    "for the 3 hosts) and the play's own start (B2). The ratio passes 10 once the baseline makes "
                    "enough module runs: see 1000." % (
                        entries, ours.seconds, apply_seconds, unsafe.seconds, baseline_seconds / unsafe.seconds))
    # The lab's default policy again, for B2 and B6 and whoever uses the lab next.
    checked(fleet_lab.playbook(inventory, fleet_lab.ROLE_PLAY))
    outcome.notes.append("Load average (1, 5, 15 min) of this shared machine: %s before B1, %s after." % (
        ", ".join("%.1f" % v for v in load_before), ", ".join("%.1f" % v for v in os.getloadavg())))
