# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""B7: the controller's per-host work for a generated 10,000-host inventory, through the real code.

Per host, what the ``killswitch_policy`` action does after gathering the variables: ``parse_policy``,
``render_for`` the host's backend, ``fence_for`` (the fence is on by default) and ``digest``.  Timed once per
backend over the whole inventory; memory is measured in a separate pass (tracemalloc slows the code it watches),
with every payload kept, as the controller keeps each host's result until the play ends.
"""

from __future__ import annotations

import resource
import time
import tracemalloc

from ansible_collections.netlock.killswitch.plugins.plugin_utils.backends import fence_for, render_for
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy

from bench import workload
from bench.profiling import top_entries
from bench.report import Outcome, Target, python_speed_ms

HOSTS = 10_000
PROFILED_HOSTS = 500
MS_PER_HOST = Target("<=", 1.0)


def controller_work(variables, backend):
    policy = parse_policy(variables)
    return render_for(policy, backend), fence_for(policy), policy.digest()


def render_fleet(hosts, backend):
    return [controller_work(variables, backend) for variables in workload.fleet(hosts)]


def run(outcome: Outcome) -> None:
    outcome.notes.append("Inventory: %d generated hosts (bench/workload.py `fleet_host`: 2 tunnel names, IPv4 and IPv6 "
                         "endpoints, a LAN and 3 exceptions of their own, LAN allowed, IPv6 through the tunnel). Per host: "
                         "parse_policy, render_for, fence_for, digest, as the killswitch_policy action does; Ansible's "
                         "own per-host cost (templating, forks) is not in this figure. The target is held against the process's CPU "
                         "time; wall time, beside it, also counts other processes' turns on a shared machine." % HOSTS)
    missed = []
    # The machine's speed at the time, beside the figures it scales (on a shared machine it moves from minute to minute).
    outcome.figure("Python speed yardstick just before (bench/report.py python_speed_ms, lower is faster)",
                   python_speed_ms(), "ms")
    for backend in ("nftables", "iptables"):
        started, cpu_started = time.perf_counter(), time.process_time()
        render_fleet(HOSTS, backend)
        wall = (time.perf_counter() - started) * 1000 / HOSTS
        cpu = (time.process_time() - cpu_started) * 1000 / HOSTS
        # The target is held against CPU time: wall time on a shared machine also counts other processes' turns.
        figure = outcome.figure("CPU ms per host (%s)" % backend, round(cpu, 3), "ms", MS_PER_HOST)
        outcome.figure("wall ms per host (%s)" % backend, round(wall, 3), "ms")
        if figure.met is False:
            missed.append(backend)
    tracemalloc.start()
    kept = render_fleet(HOSTS, "nftables")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    outcome.figure("peak traced memory, %d hosts, every payload kept (nftables)" % HOSTS, round(peak / 2 ** 20, 1), "MiB")
    outcome.figure("payload bytes per host (nftables ruleset + fence)",
                   round(sum(len(ruleset) + len(fence) for ruleset, fence, digest in kept) / HOSTS), "bytes")
    del kept
    outcome.figure("process peak RSS after B7", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "MiB")
    outcome.notes.append("Per host the rule list, the nftables sets and chains and the digest are built once and shared "
                         "by the ruleset and the fence (cached on the frozen Policy); rule texts without sets (most of "
                         "them, the same on every host) are remembered across hosts; addresses are parsed, collapsed and "
                         "printed as integers (plugins/plugin_utils/addresses.py), Policy.data() shares the immutable "
                         "addresses instead of deep-copying them. Before these (2026-12-04, the same inventory): about "
                         "1.9 ms per host for either backend.")
    if missed:
        outcome.notes.append("Over target: CPU time per host depends on the machine (its Python speed at the time is the "
                             "yardstick figure above; compare it before comparing this figure across machines) and, on a "
                             "shared machine, on the other processes' load (caches, frequency); what remains per host is "
                             "parse_policy's validation of every variable, building the ~50 frozen Rule objects and "
                             "printing the iptables lines (profiles below).")
    for backend in missed:
        outcome.notes.append("Profile of %d hosts (%s), by own time:\n\n%s" % (
            PROFILED_HOSTS, backend, top_entries(lambda: render_fleet(PROFILED_HOSTS, backend))))
