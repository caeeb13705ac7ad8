# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""B2: a no-op converge (the role's second run on the SSH fleet lab) against ``ansible -m ping`` on the same hosts,
with what the no-op run does: tasks, modules run per host, SSH round trips per host (a ``-vvv`` run), slowest tasks."""

from __future__ import annotations

import statistics
import tempfile

from bench import fleet_lab
from bench.report import Outcome, Target

HOSTS = 3
RATIO = Target("<=", 2.0)
NO_CHANGE = Target("==", 0)
PINGS = 3  # median of


def checked(run: fleet_lab.Run) -> fleet_lab.Run:
    if not run.ok:
        raise RuntimeError(run.failure())
    return run


def run(outcome: Outcome) -> None:
    outcome.notes.append(
        "The role (bench/playbooks/role.yml, inventories/fleet's policy) run twice on %d lab hosts over real SSH as "
        "`operator` with sudo, forks 5, ControlPersist and pipelining on; the second run is timed. Against it: "
        "`ansible all -m ping` on the same hosts (median of %d). Both are whole command runs (Python start-up, "
        "inventory, connection). Round trips: `SSH: EXEC` lines of a third, `-vvv`, run (not timed)." % (HOSTS, PINGS))
    reason = fleet_lab.unavailable()
    if reason:
        outcome.figure("no-op converge / ansible -m ping", None, "x", RATIO, note=reason)
        return
    hosts = fleet_lab.ensure(HOSTS)
    inventory = fleet_lab.inventory(hosts, tempfile.mkdtemp(prefix="netlock-bench-b2-"))
    checked(fleet_lab.playbook(inventory, fleet_lab.ROLE_PLAY))
    noop = checked(fleet_lab.playbook(inventory, fleet_lab.ROLE_PLAY))
    pings = [checked(fleet_lab.ping(inventory)).seconds for _round in range(PINGS)]
    verbose = checked(fleet_lab.playbook(inventory, fleet_lab.ROLE_PLAY, verbose=True))
    summary = fleet_lab.summarize(noop.events)
    ping_seconds = statistics.median(pings)
    trips = fleet_lab.ssh_round_trips(verbose.output, hosts)
    outcome.figure("no-op converge, %d hosts" % HOSTS, round(noop.seconds, 2), "s")
    outcome.figure("ansible -m ping, %d hosts" % HOSTS, round(ping_seconds, 2), "s")
    ratio = outcome.figure("no-op converge / ansible -m ping", round(noop.seconds / ping_seconds, 2), "x", RATIO)
    outcome.figure("changed results in the no-op run (all hosts)", sum(summary.changed.values()), "results", NO_CHANGE)
    outcome.figure("tasks started in the no-op run", summary.tasks, "tasks")
    outcome.figure("modules run per host in the no-op run", max(summary.executions.values()), "modules")
    outcome.figure("SSH round trips per host in the no-op run", max(trips.values()), "round trips")
    outcome.notes.append("No-op run: %d tasks started; per host %s modules run, %s SSH round trips (`ansible -m ping`: 1 "
                         "module, 1 round trip). Slowest tasks (seconds from a task's start to the next's, all hosts "
                         "together): %s." % (summary.tasks, fleet_lab.spread(summary.executions), fleet_lab.spread(trips),
                                             fleet_lab.slowest(summary, 10)))
    if ratio.met is False:
        most = max(trips.values())
        outcome.notes.append(
            "Over target: the no-op run makes %d SSH round trips per host against ping's 1 (one with pipelining). Each "
            "task that reaches the host is at least one remote Python start-up importing its module and module_utils; "
            "each template or copy item is more (its action makes and removes a remote temporary directory around a stat "
            "and a file module run), which is why the loops of "
            "templates and copies (the guard's files, the stored policy) lead the slowest tasks: %d round trips took "
            "%.1f s here, about %.2f s each with the hosts in parallel, on a machine whose load is in B1's and B6's "
            "notes. The ratio is bounded below by the round trips: reaching 2 needs the role's checks (stored policy, "
            "guard files and units, boot unit, fence) folded into one or two module runs, a change of the role's "
            "structure not made in this run; the candidates: the guard's four templates, the stored policy's two "
            "copies, the guard program and the boot unit (8 template or copy items), and the three systemd_service "
            "calls (boot unit, guard timer, watcher)." % (most, most, noop.seconds, noop.seconds / max(1, most)))
