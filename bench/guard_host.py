# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host side of B8, run inside a throwaway network and mount namespace (``in_namespace``).

A guarded host's files in a temporary directory (policy store, ruleset, guard.json, the expected listing, a
``systemctl`` stand-in on PATH that says every unit is enabled and active), the kill switch loaded, then the
real guard program (roles/killswitch/files/netlock_killswitch_guard.py):

* CPU time (user + system of the guard and every command it waited for, ``RUSAGE_CHILDREN``) of one check with
  everything in sync, and of one check that restores a flushed ruleset;
* with ``guard watch`` running: wall time from ``nft flush ruleset`` to the kill switch table being back, and
  whether the fence (an owned table) was still loaded right after the flush.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Sequence

from bench.netns import BenchError, run

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUARD = os.path.join(REPO_ROOT, "roles", "killswitch", "files", "netlock_killswitch_guard.py")
ROLE_VARS = os.path.join(REPO_ROOT, "roles", "killswitch", "vars", "main.yml")
TABLE = "killswitch"
FENCE_TABLE = TABLE + "_fence"
FAKE_SYSTEMCTL = """#!/bin/sh
# every unit enabled and active: the benchmark measures the guard's own work
case "$1" in is-enabled) echo enabled ;; is-active) echo active ;; esac
exit 0
"""
POLL = 0.002   # seconds between two looks for the restored table
TIMER_POLL = 0.01   # the same, while a timer check restores it (each look is an nft run beside the load it times)


def in_namespace(payload_path: str, fence_path: str, flaps: int, timeout: float = 900) -> Dict[str, Any]:
    script = 'mount -t tmpfs netlock-bench /run && exec "$0" -m bench.guard_host "$1" "$2" "$3"'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO_ROOT, ".collections"), REPO_ROOT]))
    proc = run(["unshare", "--net", "--mount", "--", "sh", "-c", script, sys.executable, payload_path, fence_path,
                str(flaps)], timeout=timeout, env=env, cwd=REPO_ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def unit_python_flags() -> List[str]:
    """The interpreter flags the guard's units run it with (the role's killswitch_guard_python_flags)."""
    import yaml

    with open(ROLE_VARS) as handle:
        return str(yaml.safe_load(handle).get("killswitch_guard_python_flags") or "").split()


def _digest(payload: str) -> str:
    for line in payload.splitlines():
        if '"netlock.killswitch ' in line:
            return line.split('"netlock.killswitch ')[1][:16]
    raise BenchError("no policy digest in the payload")


def set_up(payload_path: str, fence_path: str) -> Dict[str, Any]:
    root = tempfile.mkdtemp(prefix="netlock-bench-guard-")
    with open(payload_path) as handle:
        payload = handle.read()
    with open(fence_path) as handle:
        fence = handle.read()
    store = os.path.join(root, "policies", _digest(payload))
    os.makedirs(store)
    for path, text in ((os.path.join(store, "ruleset"), payload), (os.path.join(store, "fence.nft"), fence),
                       (os.path.join(root, "ruleset.nft"), payload)):
        with open(path, "w") as handle:
            handle.write(text)
    bin_dir = os.path.join(root, "bin")
    os.makedirs(bin_dir)
    with open(os.path.join(bin_dir, "systemctl"), "w") as handle:
        handle.write(FAKE_SYSTEMCTL)
    os.chmod(os.path.join(bin_dir, "systemctl"), 0o755)
    list_command = "nft list table inet %s 2>/dev/null | sed -E 's/counter packets [0-9]+ bytes [0-9]+/counter/'" % TABLE
    # The timer's checks run without a fence (with one, a check waits for the watcher that holds it); the watcher
    # phase turns it on (``with_fence``).
    config = {"backend": "nftables", "table": TABLE, "fence_table": FENCE_TABLE, "fence": "off",
              "policy_dir": os.path.join(root, "policies"), "ruleset_path": os.path.join(root, "ruleset.nft"),
              "expected_path": os.path.join(root, "expected-table.txt"), "list_command": list_command,
              "load_command": "nft -f %s" % shlex.quote(os.path.join(root, "ruleset.nft")),
              "lock_path": os.path.join(root, "run", "lock"), "metrics_path": os.path.join(root, "metrics", "ks.prom"),
              "state_path": os.path.join(root, "state", "guard-state.json"), "watch_interval": 5}
    config_path = os.path.join(root, "guard.json")
    with open(config_path, "w") as handle:
        json.dump(config, handle)
    env = dict(os.environ, PATH="%s:%s" % (bin_dir, os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")))
    run(["sh", "-c", config["load_command"]], timeout=600)
    listing = run(["sh", "-c", list_command], timeout=600).stdout
    with open(config["expected_path"], "w") as handle:
        handle.write(listing)
    return {"root": root, "config_path": config_path, "env": env, "config": config}


def with_fence(host: Dict[str, Any]) -> None:
    with open(host["config_path"], "w") as handle:
        json.dump(dict(host["config"], fence="auto"), handle)


def check_cpu(host: Dict[str, Any], command: Sequence[str] = ("check", "--from", "timer"),
              prefix: Sequence[str] = (), config_path: str = "", returncode: int = 0) -> Dict[str, Any]:
    """One ``guard check --from timer``, run as its unit runs it: CPU seconds of it and its commands, and wall
    seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable] + unit_python_flags() + list(prefix) +
                          [GUARD, "--config", config_path or host["config_path"]] + list(command),
                          capture_output=True, text=True, timeout=600, check=False, env=host["env"])
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != returncode:
        raise BenchError("guard check failed (rc %d): %s" % (proc.returncode, (proc.stderr or proc.stdout)[-2000:]))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    drift = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if "drift kind=" in line]
    return {"cpu": cpu, "wall": wall, "drift_lines": len(drift), "stdout": proc.stdout}


def profile(host: Dict[str, Any], lines: int = 22) -> str:
    """cProfile of one in-sync check, by cumulative time (the guard's Python side; its commands show as waits)."""
    out = check_cpu(host, prefix=("-m", "cProfile", "-s", "cumulative"))["stdout"].splitlines()
    start = next((i for i, line in enumerate(out) if "function calls" in line), 0)
    return "\n".join(line.rstrip() for line in out[start:start + lines + 4] if line.strip())


def table_present(name: str) -> bool:
    return name in run(["nft", "list", "tables"], timeout=30).stdout.split()


def restoring_check(host: Dict[str, Any]) -> Dict[str, Any]:
    """One check after ``nft flush ruleset``: its CPU and wall time, and the seconds from its start until the kill
    switch table is listed again (polled from a thread every TIMER_POLL: the rules are back in force then, whatever
    the check does after, such as listing the table again to confirm the load)."""
    back: List[float] = []
    done = threading.Event()
    started = time.perf_counter()

    def watch() -> None:
        while not done.is_set():
            if table_present(TABLE):
                back.append(time.perf_counter() - started)
                return
            time.sleep(TIMER_POLL)

    poller = threading.Thread(target=watch, daemon=True)
    poller.start()
    try:
        result = check_cpu(host)
    finally:
        done.set()
        poller.join(timeout=30)
    if not back:
        raise BenchError("the check after a flush did not bring the table back")
    return dict(result, back=back[0])


def watch_restores(host: Dict[str, Any], flaps: int) -> Dict[str, Any]:
    log = open(os.path.join(host["root"], "watch.log"), "w")
    watcher = subprocess.Popen([sys.executable] + unit_python_flags() + [GUARD, "--config", host["config_path"], "watch"], stdout=log,
                               stderr=subprocess.STDOUT, env=host["env"])
    try:
        deadline = time.monotonic() + 60
        while not table_present(FENCE_TABLE):
            if time.monotonic() > deadline or watcher.poll() is not None:
                raise BenchError("the watcher loaded no fence within 60 s")
            time.sleep(0.05)
        time.sleep(1.0)  # nft monitor started
        restores: List[float] = []
        fence_held: List[bool] = []
        for flap in range(flaps):
            started = time.perf_counter()
            run(["nft", "flush", "ruleset"], timeout=60)
            flushed = time.perf_counter()
            fence_held.append(table_present(FENCE_TABLE))
            while not table_present(TABLE):
                if time.perf_counter() - started > 60:
                    raise BenchError("the watcher did not restore the table within 60 s")
                time.sleep(POLL)
            restores.append(time.perf_counter() - flushed)
            time.sleep(0.5)   # let the check that restored finish before the next tamper
    finally:
        watcher.terminate()
        try:
            watcher.wait(timeout=20)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.wait(timeout=10)
        log.close()
    return {"restores": restores, "fence_held": fence_held}


def measure(payload_path: str, fence_path: str, flaps: int) -> Dict[str, Any]:
    host = set_up(payload_path, fence_path)
    in_sync = [check_cpu(host) for attempt in range(3)]
    if any(result["drift_lines"] for result in in_sync):
        raise BenchError("a check of a host in sync reported drift")
    # Start-up: the same command line with a configuration that is not there (exit 2 before any work).
    missing = os.path.join(host["root"], "missing.json")
    startup = min(check_cpu(host, config_path=missing, returncode=2)["cpu"] for attempt in range(3))
    check_profile = profile(host)
    run(["nft", "flush", "ruleset"])
    unpolled = check_cpu(host)   # CPU without the poller's nft runs, which RUSAGE_CHILDREN would count
    if not unpolled["drift_lines"] or not table_present(TABLE):
        raise BenchError("the check after a flush did not restore the table")
    run(["nft", "flush", "ruleset"])
    restoring = restoring_check(host)
    if not restoring["drift_lines"]:
        raise BenchError("the check after a flush did not restore the table")
    with_fence(host)
    watched = watch_restores(host, flaps)
    return {"check_cpu": min(r["cpu"] for r in in_sync), "check_wall": min(r["wall"] for r in in_sync),
            "restore_check_cpu": unpolled["cpu"], "restore_check_wall": unpolled["wall"],
            "restore_back": restoring["back"], "startup_cpu": startup,
            "profile": check_profile, **watched}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
