# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host side of B3, run inside a throwaway network and mount namespace (``in_namespace``).

The real module file (plugins/modules/killswitch_firewall.py) runs as a host runs it, a Python process reading
its arguments: a first apply (load and list in a private namespace, which is the check; compare; load) and then
no-op converges (one listing of the live table against the recorded expected listing, nothing loaded).  Then the
parts of a converge one by one through the applier (``Nft``), and ``nft -f`` alone.
/run is a private tmpfs there, so the module's lock and rollback files never touch the machine's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

from bench.netns import BenchError, run

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(REPO_ROOT, "plugins", "modules", "killswitch_firewall.py")
TABLE = "killswitch"


def in_namespace(payload_path: str, repeats: int, timeout: float = 900) -> Dict[str, Any]:
    """Run this file's ``measure`` in a new network and mount namespace; its figures as a dict."""
    script = 'mount -t tmpfs netlock-bench /run && exec "$0" -m bench.host_apply "$1" "$2"'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO_ROOT, ".collections"), REPO_ROOT]))
    proc = run(["unshare", "--net", "--mount", "--", "sh", "-c", script, sys.executable, payload_path, str(repeats)],
               timeout=timeout, env=env, cwd=REPO_ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _module(args_path: str) -> Dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, MODULE, args_path], capture_output=True, text=True, timeout=600, check=False)
    seconds = time.perf_counter() - started
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise BenchError("the module gave no JSON: %s" % (proc.stderr or proc.stdout)[-2000:])
    if result.get("failed"):
        raise BenchError("the module failed: %s" % result.get("msg"))
    result["seconds"] = seconds
    return result


def _timed_runner(times: List[Any]):
    def runner(argv):
        started = time.perf_counter()
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=600, check=False)
        times.append((os.path.basename(argv[0]), argv[1:3], time.perf_counter() - started))
        return proc.returncode, proc.stdout, proc.stderr
    return runner


def measure(payload_path: str, repeats: int) -> Dict[str, Any]:
    from ansible_collections.netlock.killswitch.plugins.module_utils.nft_live import Nft

    with open(payload_path) as handle:
        payload = handle.read()
    work = tempfile.mkdtemp(prefix="netlock-bench-apply-")
    args_path = os.path.join(work, "args.json")
    with open(args_path, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": {
            "ruleset": payload, "path": os.path.join(work, "etc", "ruleset.nft"),
            "expected_path": os.path.join(work, "etc", "expected-table.txt"),
            "_ansible_remote_tmp": os.path.join(work, "tmp"), "_ansible_keep_remote_files": False}}, handle)
    first = _module(args_path)
    if not first["changed"] or not first["table_changed"]:
        raise BenchError("the first apply reported no change: %r" % {k: first[k] for k in ("changed", "table_changed")})
    noops = [_module(args_path) for attempt in range(repeats)]
    if any(result["changed"] for result in noops):
        raise BenchError("a no-op converge reported a change")
    # The parts of a converge, through the applier the module uses.
    times: List[Any] = []
    nft = Nft(_timed_runner(times))
    parts = {}
    for name, call in (("check (nft -c)", lambda: nft.check(payload_path)),
                       ("desired (load and list in a private netns)", lambda: nft.desired(payload_path, TABLE)),
                       ("live (nft -j list, nft list)", lambda: nft.live(TABLE)),
                       ("live listing alone (the no-op's one pass)", lambda: nft.listing(TABLE))):
        started = time.perf_counter()
        call()
        parts[name] = time.perf_counter() - started
    loads = []
    for attempt in range(repeats):
        run(["nft", "flush", "ruleset"])
        started = time.perf_counter()
        run(["nft", "-f", payload_path], timeout=600)
        loads.append(time.perf_counter() - started)
    return {"apply": first["seconds"], "noop": min(r["seconds"] for r in noops), "nft_f": min(loads),
            "parts": parts, "commands": [[name, args, seconds] for name, args, seconds in times]}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
