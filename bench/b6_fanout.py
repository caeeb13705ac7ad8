# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""B6: the role's wall time on 1, 10 and 20 SSH lab hosts (lab/fleet.py with ``count``), at forks 5 and 20,
strategy linear and free.  The first run on 20 hosts is the first apply; the others are converges of hosts
that carry the policy already (each config timed once)."""

from __future__ import annotations

import os
import tempfile
import time
from typing import List, Tuple

from bench import fleet_lab
from bench.report import Outcome, Target

COUNTS = tuple(int(part) for part in os.environ.get("BENCH_B6_COUNTS", "1,10,20").split(","))
# (forks, strategy): every host count at the first; the others at the largest count only (1 host is the same run).
CONFIGS: Tuple[Tuple[int, str], ...] = ((20, "linear"), (5, "linear"), (20, "free"))
FAN_OUT = Target("<=", 4.0)
# B6 stops starting runs once this many seconds are spent after the first apply;
# the runs it did not start are reported as not measured.
BUDGET = float(os.environ.get("BENCH_B6_BUDGET", "300"))


def plan(counts=COUNTS, configs=CONFIGS) -> List[Tuple[int, int, str]]:
    """(hosts, forks, strategy) to time: the first config at every count, the others at the largest.  The
    smallest and the largest count first, so that a spent budget still leaves the target's ratio measured."""
    first, *others = configs
    ordered = sorted(counts)
    ordered = ordered[:1] + ordered[-1:] + ordered[1:-1] if len(ordered) > 1 else ordered
    return [(count, *first) for count in ordered] + [(max(counts), *config) for config in others]


def checked(run: fleet_lab.Run) -> fleet_lab.Run:
    if not run.ok:
        raise RuntimeError(run.failure())
    return run


def run(outcome: Outcome) -> None:
    largest = max(COUNTS)
    outcome.notes.append(
        "The role (bench/playbooks/role.yml) on ks-fleet1..N of the SSH fleet lab (lab/fleet.py `up(count=N)`: systemd "
        "containers reached over real SSH as `operator`), ControlPersist and pipelining on. Wall time of the whole "
        "ansible-playbook run. After a first apply on all %d hosts, each (hosts, forks, strategy) is timed once on "
        "hosts that already carry the policy: a converge, what a scheduled fleet run does most of the time." % largest)
    reason = fleet_lab.unavailable()
    if reason:
        outcome.figure("wall(%d) / wall(1), forks 20, linear" % largest, None, "x", FAN_OUT, note=reason)
        return
    load_before = os.getloadavg()
    raised = fleet_lab.raise_inotify_instances()
    if raised:
        outcome.notes.append("On this machine: %s, so that %d systemd containers boot." % (raised, largest + 2))
    hosts = fleet_lab.ensure(largest)
    inventory = fleet_lab.inventory(hosts, tempfile.mkdtemp(prefix="netlock-bench-b6-"))
    first = checked(fleet_lab.playbook(inventory, fleet_lab.ROLE_PLAY, forks=20))
    outcome.figure("first apply, %d hosts, forks 20, linear" % largest, round(first.seconds, 2), "s")
    started = time.monotonic()
    walls = {}
    summaries = {}
    cpu = {}  # hosts: (controller CPU s, containers' CPU s or None), at the first (forks, strategy)
    for count, forks, strategy in plan():
        name = "converge, %d hosts, forks %d, %s" % (count, forks, strategy)
        spent = time.monotonic() - started
        if spent > BUDGET:
            outcome.figure(name, None, "s", note="not run: B6's time budget (%.0f s, BENCH_B6_BUDGET) was spent" % BUDGET)
            continue
        limit = [host.name for host in hosts[:count]]
        hosts_before = fleet_lab.hosts_cpu_seconds(limit)
        timed = checked(fleet_lab.playbook(inventory, fleet_lab.ROLE_PLAY, forks=forks, strategy=strategy, limit=limit))
        hosts_after = fleet_lab.hosts_cpu_seconds(limit)
        walls[count, forks, strategy] = timed.seconds
        summaries[count, forks, strategy] = fleet_lab.summarize(timed.events)
        outcome.figure(name, round(timed.seconds, 2), "s")
        if (forks, strategy) == CONFIGS[0] and count in (min(COUNTS), largest):
            host_cpu = None if hosts_before is None or hosts_after is None else hosts_after - hosts_before
            cpu[count] = (timed.controller_cpu, host_cpu)
            outcome.figure("CPU of the converge on %d hosts, controller" % count, round(timed.controller_cpu, 2), "s")
            outcome.figure("CPU of the converge on %d hosts, the hosts' containers" % count, None if host_cpu is None else round(host_cpu, 2),
                           "s", note="" if host_cpu is not None else "the containers' cgroup CPU accounting is not readable")
    single = walls.get((min(COUNTS), CONFIGS[0][0], CONFIGS[0][1]))
    for count, forks, strategy in plan():
        if count != min(COUNTS):
            seconds = walls.get((count, forks, strategy))
            ratio = round(seconds / single, 2) if seconds and single else None
            outcome.figure("wall(%d) / wall(%d), forks %d, %s" % (count, min(COUNTS), forks, strategy), ratio, "x",
                           FAN_OUT if count == largest else None, note="" if ratio is not None else "not measured (budget)")
    outcome.notes.append("Load average (1, 5, 15 min) of this shared machine: %s before B6, %s after." % (
        ", ".join("%.1f" % v for v in load_before), ", ".join("%.1f" % v for v in os.getloadavg())))
    for key, summary in summaries.items():
        if key[0] in (min(COUNTS), largest):
            outcome.notes.append("Converge on %d hosts, forks %d, %s: %d tasks, %s modules per host; slowest tasks (from a "
                                 "task's start to the next's): %s." % (key[0], key[1], key[2], summary.tasks,
                                                                       fleet_lab.spread(summary.executions),
                                                                       fleet_lab.slowest(summary, 5)))
    cores = os.cpu_count() or 1
    if largest in cpu and cpu[largest][1] is not None:
        controller, on_hosts = cpu[largest]
        outcome.notes.append(
            "CPU of the converge on %d hosts (forks %d, %s): controller %.1f s, the hosts' containers %.1f s, together "
            "%.1f s; on %d cores that alone takes %.1f s of the %.1f s it ran (%.2f CPU seconds per host). On one "
            "host: %.1f s of CPU in %.1f s. Fan-out on this machine is bounded by that CPU, the controller's and the "
            "hosts' on the same cores, not by waiting." % (
                largest, CONFIGS[0][0], CONFIGS[0][1], controller, on_hosts, controller + on_hosts, cores,
                (controller + on_hosts) / cores, walls[(largest,) + CONFIGS[0]], (controller + on_hosts) / largest,
                sum(v for v in cpu.get(min(COUNTS), (0.0, 0.0)) if v is not None),
                walls.get((min(COUNTS),) + CONFIGS[0], 0.0)))
    outcome.notes.append(
        "Where the time goes: each host's module runs are remote Python start-ups, and the controller starts one "
        "worker process per fork plus an ssh per connection; on %d cores the controller's and the %d containers' "
        "Python processes share the same CPUs, so beyond about %d hosts in flight the hosts wait for CPU, not for the "
        "network. wall(N)/wall(1) therefore measures this machine's CPU (hosts and controller on %d cores, shared with "
        "the other benchmarks and builds running at the time: load above), not what a controller sees with real hosts, "
        "whose module runs take their own CPU. With linear, every host waits for the slowest at each task; with "
        "free, a host runs ahead, which helps only when hosts differ." % (cores, largest, cores, cores))
