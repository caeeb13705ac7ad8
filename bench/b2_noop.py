# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""B2: a no-op converge (the role's second run on the SSH fleet lab) against ``ansible -m ping`` on the same hosts,
with what the no-op run does: tasks, modules run per host, SSH round trips per host (a ``-vvv`` run), slowest tasks."""

from __future__ import annotations

import os
import statistics
import tempfile

from bench import fleet_lab
from bench.report import Outcome, Target

HOSTS = 3
RATIO = Target("<=", 2.0)
NO_CHANGE = Target("==", 0)
PING_PLAY = os.path.join(fleet_lab.PLAYBOOKS, "ping.yml")
ROUNDS = 3  # no-op runs and pings, each the median of


def checked(run: fleet_lab.Run) -> fleet_lab.Run:
    if not run.ok:
        raise RuntimeError(run.failure())
    return run


def run(outcome: Outcome) -> None:
    outcome.notes.append(
        "The role (bench/playbooks/role.yml, inventories/fleet's policy) applied once on %d lab hosts over real SSH as "
        "`operator` with sudo, forks 5, ControlPersist and pipelining on; then the no-op converge is timed %d times "
        "(median). Against it: `ansible all -m ping` on the same hosts (median of %d). Both are whole command runs "
        "(Python start-up, inventory, connection). Round trips: `SSH: EXEC` lines of a further, `-vvv`, run (not "
        "timed)." % (HOSTS, ROUNDS, ROUNDS))
    reason = fleet_lab.unavailable()
    if reason:
        outcome.figure("no-op converge / ansible -m ping", None, "x", RATIO, note=reason)
        return
    hosts = fleet_lab.ensure(HOSTS)
    inventory = fleet_lab.inventory(hosts, tempfile.mkdtemp(prefix="netlock-bench-b2-"))
    checked(fleet_lab.playbook(inventory, fleet_lab.ROLE_PLAY))
    noops, pings, floors = [], [], []
    for _round in range(ROUNDS):  # interleaved, so that a burst of load on the shared machine hits each
        noops.append(checked(fleet_lab.playbook(inventory, fleet_lab.ROLE_PLAY)))
        pings.append(checked(fleet_lab.ping(inventory)).seconds)
        floors.append(checked(fleet_lab.playbook(inventory, PING_PLAY)).seconds)
    verbose = checked(fleet_lab.playbook(inventory, fleet_lab.ROLE_PLAY, verbose=True))
    noop = sorted(noops, key=lambda run: run.seconds)[len(noops) // 2]
    summary = fleet_lab.summarize(noop.events)
    ping_seconds = statistics.median(pings)
    trips = fleet_lab.ssh_round_trips(verbose.output, hosts)
    outcome.figure("no-op converge, %d hosts (median of %d)" % (HOSTS, ROUNDS), round(noop.seconds, 2), "s")
    outcome.figure("ansible -m ping, %d hosts (median of %d)" % (HOSTS, ROUNDS), round(ping_seconds, 2), "s")
    ratio = outcome.figure("no-op converge / ansible -m ping", round(noop.seconds / ping_seconds, 2), "x", RATIO)
    outcome.figure("playbook of one ping task with become, %d hosts (median of %d)" % (HOSTS, ROUNDS),
                   round(statistics.median(floors), 2), "s")
    outcome.figure("changed results in the no-op runs (all hosts)",
                   sum(sum(fleet_lab.summarize(run.events).changed.values()) for run in noops), "results", NO_CHANGE)
    outcome.figure("tasks started in the no-op run", summary.tasks, "tasks")
    outcome.figure("modules run per host in the no-op run", max(summary.executions.values()), "modules")
    outcome.figure("SSH round trips per host in the no-op run", max(trips.values()), "round trips")
    outcome.notes.append(
        "No-op run: %d tasks started; per host %s modules run, %s SSH round trips (`ansible -m ping`: 1 module, 1 round "
        "trip). Per task (seconds from a task's start to the next's, all hosts together): %s. No-op runs: %s s; pings: "
        "%s s." % (summary.tasks, fleet_lab.spread(summary.executions), fleet_lab.spread(trips),
                   fleet_lab.slowest(summary, 10), ", ".join("%.2f" % run.seconds for run in noops),
                   ", ".join("%.2f" % seconds for seconds in pings)))
    outcome.notes.append(
        "What a no-op run does: the role's argument check, the controller's render (`killswitch_policy`: the "
        "management path and the backend asked over the connection, two round trips), and one module run, "
        "`killswitch_in_force`, which proves every part in force (ruleset, files by digest, units, fence, tools, "
        "leftovers); the converge tasks are then skipped. No facts are gathered. Before it (2026-12-04): 34 tasks, "
        "21 module runs and 53 round trips per host, 13.8 s, 14.7x ping.")
    if ratio.met is False:
        outcome.notes.append(
            "Over target: a playbook of one `ping` task with become on the same hosts takes %.2f s against the ad-hoc "
            "ping's %.2f s (play, task and become set-up); the role's no-op adds to that floor its argument check, "
            "the render's two round trips, the in-force module and the status fact." % (
                statistics.median(floors), ping_seconds))
