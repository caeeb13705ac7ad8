# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SSH fleet lab (lab/fleet.py) for B1, B2 and B6: as many managed hosts as a benchmark needs, an inventory
of them, and ansible runs timed and counted (bench/callback_plugins/bench_count.py, ``-vvv`` for SSH round trips).

The lab is brought up on first use and put back as it was when the process exits: removed when there was none,
else the containers this run added are removed and the fleet rebuilt at its earlier size.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from bench.run import BENCH_DIR, COLLECTIONS, REPO_ROOT

if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from lab import build, fleet  # noqa: E402

PLAYBOOKS = os.path.join(BENCH_DIR, "playbooks")
ROLE_PLAY = os.path.join(PLAYBOOKS, "role.yml")
CALLBACKS = os.path.join(BENCH_DIR, "callback_plugins")
BIN = os.path.dirname(sys.executable)
RUN_TIMEOUT = 600  # seconds for any one ansible run
# Actions that run on the controller only: no module is sent to the host.
CONTROLLER_ONLY = frozenset(
    "ansible.builtin.%s" % name for name in ("set_fact", "include_vars", "include_tasks", "import_tasks", "include_role",
                                             "import_role", "debug", "meta", "fail", "assert", "add_host", "group_by")
) | {"set_fact", "include_vars", "include_tasks", "import_tasks", "include_role", "import_role", "debug", "meta", "fail",
     "assert", "add_host", "group_by"}
SSH_EXEC = re.compile(r"^<([^>]+)> SSH: EXEC ", re.MULTILINE)


def unavailable() -> str:
    """Why the fleet lab cannot run here, or ''."""
    if os.geteuid() != 0:
        return "needs root (the lab's bridge rules and containers)"
    if not shutil.which("docker"):
        return "needs docker for the SSH fleet lab"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60, check=False).returncode != 0:
        return "needs a running docker daemon for the SSH fleet lab"
    return ""


# --- the lab, up on demand and restored at exit ---------------------------------------------------

_before: Optional[List[str]] = None  # fleet containers running before this process touched the lab


def running() -> List[str]:
    listed = build.docker("ps", "--filter", "label=" + fleet.LABEL, "--format", "{{.Names}}", check=False).stdout
    return sorted(listed.split())


def managed_count(names: Sequence[str]) -> int:
    """How many of ks-fleet1..N run, counted from 1 without a gap."""
    count = 0
    while "ks-fleet%d" % (count + 1) in names:
        count += 1
    return count


def ensure(count: int) -> List[fleet.Host]:
    """ks-fleet1..count up and reachable over SSH (the VPN server and sink with them)."""
    global _before  # pylint: disable=global-statement
    if _before is None:
        _before = running()
        atexit.register(restore)
    if count > fleet.DEFAULT_COUNT:
        raise_inotify_instances()
    names = running()
    if managed_count(names) < count or fleet.VPN.name not in names or fleet.SINK.name not in names:
        fleet.up(count=max(count, managed_count(names)))
    return list(fleet.managed_hosts(count))


INOTIFY_INSTANCES = "/proc/sys/fs/inotify/max_user_instances"
# systemd in each container takes several of root's inotify instances; at the kernel's default, 128, the 16th
# fleet container's systemd does not boot ("Too many open files").
INOTIFY_NEEDED = 1024
_inotify_before: List[int] = []


def raise_inotify_instances() -> str:
    """fs.inotify.max_user_instances raised to INOTIFY_NEEDED when below it; says what it did, or ''."""
    with open(INOTIFY_INSTANCES, encoding="ascii") as handle:
        current = int(handle.read())
    if current >= INOTIFY_NEEDED:
        return ""
    with open(INOTIFY_INSTANCES, "w", encoding="ascii") as handle:
        handle.write(str(INOTIFY_NEEDED))
    _inotify_before.append(current)  # put back by restore()
    return "fs.inotify.max_user_instances raised from %d to %d" % (current, INOTIFY_NEEDED)


def restore() -> None:
    """The lab as it was before: none, or the earlier hosts with the VPN server's peers and known_hosts for them."""
    if _before is None:
        return
    earlier = managed_count(_before)
    if not earlier:
        fleet.down()
    else:
        added = [name for name in running() if name not in _before]
        if added:
            build.docker("rm", "-f", *added, timeout=180, check=False)
            fleet.up(count=earlier)
    if _inotify_before:
        with open(INOTIFY_INSTANCES, "w", encoding="ascii") as handle:
            handle.write(str(_inotify_before[0]))


# --- inventories and runs -------------------------------------------------------------------------

def inventory_document(hosts: Sequence[fleet.Host], cache: str = fleet.CACHE) -> Dict[str, Any]:
    """The hosts as inventories/fleet lists them; the lab's key directory given per host, since the group_vars
    default finds it from the inventory's own directory."""
    return {"all": {"children": {"fleet": {"hosts": {
        host.name: {"ansible_host": host.v4(fleet.FLEET), "fleet_lab_cache": cache} for host in hosts}}}}}


def inventory(hosts: Sequence[fleet.Host], directory: str) -> str:
    """An inventory directory: hosts.yml and inventories/fleet's group_vars (connection and policy)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "hosts.yml"), "w", encoding="utf-8") as handle:
        json.dump(inventory_document(hosts), handle, indent=1)  # JSON is YAML
    link = os.path.join(directory, "group_vars")
    if not os.path.lexists(link):
        os.symlink(os.path.join(fleet.INVENTORY, "group_vars"), link)
    return directory


def environment(count_file: str = "") -> Dict[str, str]:
    env = dict(os.environ)
    env.update({"ANSIBLE_COLLECTIONS_PATH": COLLECTIONS, "ANSIBLE_CALLBACK_PLUGINS": CALLBACKS,
                "ANSIBLE_CALLBACKS_ENABLED": "bench_count", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
                "ANSIBLE_RETRY_FILES_ENABLED": "0", "BENCH_COUNT_OUT": count_file,
                # Pipelining: one SSH round trip per module instead of mkdir, put and run (README, "Performance").
                "ANSIBLE_PIPELINING": os.environ.get("ANSIBLE_PIPELINING", "1"),
                # 22 systemd containers and the controller on 2 shared cores: sshd can take over the default 10 s
                # to answer (a first apply on 20 hosts lost one to it); a retry is counted in the wall time.
                "ANSIBLE_TIMEOUT": "30", "ANSIBLE_SSH_RETRIES": "2"})
    return env


@dataclass
class Run:
    argv: List[str]
    seconds: float
    returncode: Optional[int]   # None: stopped at its time bound
    output: str
    events: List[Dict[str, Any]] = field(default_factory=list)
    controller_cpu: float = 0.0  # user + system seconds of the command and every process it waited for

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self) -> str:
        what = "stopped after %.0f s" % self.seconds if self.returncode is None else "exit %s" % self.returncode
        failed = [line[:600] for line in self.output.splitlines() if line.startswith(("fatal:", "failed:"))][:5]
        return "%s: %s\n%s\n%s" % (" ".join(self.argv[:2] + self.argv[-6:]), what, "\n".join(failed), self.output[-1000:])


def execute(argv: List[str], env: Dict[str, str], timeout: float = RUN_TIMEOUT, count_file: str = "") -> Run:
    """Run ``argv`` timed, in its own process group, killed with its SSH children at ``timeout``."""
    started = time.monotonic()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as process:
        try:
            output = process.communicate(timeout=timeout)[0]
            returncode: Optional[int] = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output = process.communicate()[0]
            returncode = None
    seconds = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    events = read_events(count_file) if count_file else []
    return Run(argv, seconds, returncode, output, events, cpu)


# Where a container's CPU time is counted: cgroup v1 (cpuacct.usage, nanoseconds) or v2 (cpu.stat usage_usec).
CPU_ACCOUNTING = ("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage",
                  "/sys/fs/cgroup/cpu,cpuacct/docker/{id}/cpuacct.usage",
                  "/sys/fs/cgroup/cpuacct/system.slice/docker-{id}.scope/cpuacct.usage",
                  "/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat",
                  "/sys/fs/cgroup/docker/{id}/cpu.stat")


def hosts_cpu_seconds(names: Sequence[str]) -> Optional[float]:
    """The CPU seconds the named containers have used so far (every process in them), or None when not readable."""
    total = 0.0
    for name in names:
        inspected = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", name], capture_output=True, text=True,
                                   timeout=30, check=False)
        container = inspected.stdout.strip()
        path = next((candidate.format(id=container) for candidate in CPU_ACCOUNTING
                     if container and os.path.exists(candidate.format(id=container))), None)
        if path is None:
            return None
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        if path.endswith("cpuacct.usage"):
            total += int(text.strip()) / 1e9
        else:
            total += int(dict(line.split() for line in text.splitlines())["usage_usec"]) / 1e6
    return total


def read_events(path: str) -> List[Dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def playbook(inventory_dir: str, play: str, extra_vars: Optional[Dict[str, Any]] = None, forks: int = 5,
             strategy: str = "", limit: Sequence[str] = (), verbose: bool = False, timeout: float = RUN_TIMEOUT) -> Run:
    work = tempfile.mkdtemp(prefix="netlock-bench-fleet-")
    count_file = os.path.join(work, "events.jsonl")
    argv = [os.path.join(BIN, "ansible-playbook"), "-i", inventory_dir, play, "-f", str(forks)]
    if extra_vars:
        with open(os.path.join(work, "vars.json"), "w", encoding="utf-8") as handle:
            json.dump(extra_vars, handle)
        argv += ["-e", "@" + handle.name]
    if limit:
        argv += ["--limit", ",".join(limit)]
    if verbose:
        argv.append("-vvv")
    env = environment(count_file)
    if strategy:
        env["ANSIBLE_STRATEGY"] = strategy
    try:
        return execute(argv, env, timeout, count_file)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def adhoc(inventory_dir: str, module: str, args: str = "", forks: int = 5, limit: Sequence[str] = (),
          become: bool = True) -> Run:
    argv = [os.path.join(BIN, "ansible"), "-i", inventory_dir, "all", "-m", module, "-f", str(forks)]
    argv += ["-a", args] if args else []
    argv += ["--become"] if become else []
    argv += ["--limit", ",".join(limit)] if limit else []
    return execute(argv, environment(), 120)


def ping(inventory_dir: str, forks: int = 5, limit: Sequence[str] = ()) -> Run:
    """``ansible -m ping``, as an operator checks a fleet: no become."""
    return adhoc(inventory_dir, "ansible.builtin.ping", forks=forks, limit=limit, become=False)


# --- what a run did -------------------------------------------------------------------------------

@dataclass
class Summary:
    tasks: int                          # tasks started (each once, whatever the number of hosts)
    changed: Dict[str, int]             # host: results with changed
    executions: Dict[str, int]          # host: modules run on the host (loop items each; controller-only actions not)
    results: Dict[str, Counter]         # host: statuses
    task_seconds: List[tuple]           # (task, seconds from its start to the next task's), longest first
    items: Dict[str, int]               # host: loop items done


def summarize(events: Sequence[Dict[str, Any]]) -> Summary:
    changed: Dict[str, int] = defaultdict(int)
    executions: Dict[str, int] = defaultdict(int)
    results: Dict[str, Counter] = defaultdict(Counter)
    items: Dict[str, int] = defaultdict(int)
    starts = [event for event in events if event["event"] == "task"]
    for event in events:
        host = event.get("host")
        if event["event"] == "item":
            items[host] += 1
        if event["event"] != "result":
            continue
        results[host][event["status"]] += 1
        changed[host] += int(event["changed"])
        if event["status"] in ("ok", "failed", "changed") and event["action"] not in CONTROLLER_ONLY:
            executions[host] += 1 if event.get("items") is None else sum(1 for ran in event["items"] if ran)
    durations: Dict[str, float] = defaultdict(float)
    end = events[-1]["t"] if events else 0.0
    for index, start in enumerate(starts):
        following = starts[index + 1]["t"] if index + 1 < len(starts) else end
        durations[start["name"]] += following - start["t"]
    ranked = sorted(durations.items(), key=lambda pair: -pair[1])
    return Summary(len(starts), dict(changed), dict(executions), dict(results), ranked, dict(items))


def ssh_round_trips(verbose_output: str, hosts: Sequence[fleet.Host]) -> Dict[str, int]:
    """SSH commands per host in a ``-vvv`` run: each ``SSH: EXEC`` is one connection or multiplexed session."""
    by_address = Counter(SSH_EXEC.findall(verbose_output))
    return {host.name: by_address.get(host.v4(fleet.FLEET), 0) for host in hosts}


def spread(values: Dict[str, int]) -> str:
    """'31' when every host has the same figure, else '29-31'."""
    low, high = min(values.values()), max(values.values())
    return str(low) if low == high else "%d-%d" % (low, high)


def slowest(summary: Summary, count: int = 8) -> str:
    return "; ".join("%s %.2f s" % (name, seconds) for name, seconds in summary.task_seconds[:count])
