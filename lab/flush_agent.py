"""Runs inside a drift lab client (stdlib only): a foreign action, repeated, and the time until the kill
switch is back each time, polled every 10 ms on the host itself (a docker exec takes longer than that).

    python3 flush_agent.py act --action 'nft flush ruleset' --repeat 10 [--until CMD] [--repair CMD]

"Back" is the guard's own definition of in sync: the output of guard.json's ``list_command`` equals the
file at its ``expected_path`` (trailing newlines aside), and ``--until`` (when given) exits 0.  Each round:
check it is in sync, note the wall clock, start the action, poll while it runs and after, until in sync
again or ``--timeout``; then ``--repair`` (the lab's own tables the action took too: guest NAT, wg-quick's
tables) and ``--settle`` seconds.  Prints JSON: {"rounds": [{"start", "end", "seconds", "changed",
"restored", "in_sync_before", "action_rc", "action_error", "polls"}...]}; ``start``/``end`` are
wall-clock times, comparable with tcpdump's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

CONFIG = "/etc/netlock-killswitch/guard.json"


def run(command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=timeout, check=False)


class InSync:
    """The guard's comparison (netlock_killswitch_guard.same_listing), and the optional extra condition."""

    def __init__(self, config: dict, until: str = ""):
        self.list_command = config["list_command"]
        self.expected_path = config.get("expected_path", "/etc/netlock-killswitch/expected-table.txt")
        self.until = until
        self.polls = 0

    def __call__(self) -> bool:
        self.polls += 1
        try:
            with open(self.expected_path, encoding="utf-8", errors="replace") as handle:
                expected = handle.read()
        except OSError:
            return False
        listed = run(self.list_command)
        if listed.returncode != 0 or listed.stdout.rstrip("\n") != expected.rstrip("\n"):
            return False
        return not self.until or run(self.until).returncode == 0


def poll_until(predicate, deadline: float, interval: float) -> bool:
    while True:
        tick = time.monotonic()
        if predicate():
            return True
        if tick >= deadline:
            return False
        time.sleep(max(0.0, tick + interval - time.monotonic()))


def timed(predicate) -> tuple:
    """(when the poll really began, its verdict): a poll that waited for a thread counts from its start."""
    return time.monotonic(), predicate()


def one_round(args, in_sync: InSync) -> dict:
    """A poll starts every ``interval`` seconds whatever the listing command takes (in a thread of its own, up
    to ``inflight`` at once), so the restore time is known to an interval or so; a poll's time is when it
    started."""
    before = poll_until(in_sync, time.monotonic() + args.timeout, 0.05)
    in_sync.polls = 0
    start_wall, start = time.time(), time.monotonic()
    action = subprocess.Popen(["/bin/sh", "-c", args.action], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    polls = []  # (submitted, the action still running then, future of timed()), in order
    changed, restored, seconds, done = False, False, None, 0
    deadline = start + args.timeout
    with ThreadPoolExecutor(max_workers=args.inflight) as pool:
        tick = start
        while not restored:
            now = time.monotonic()
            # A tick with --inflight polls still running is skipped: polls pile up no work on a busy host
            # (they would slow down the guard they time); the next free tick polls.
            if now >= tick and now < deadline:
                if len(polls) - done < args.inflight or sum(not p[2].done() for p in polls[done:]) < args.inflight:
                    polls.append((now, action.poll() is None, pool.submit(timed, in_sync)))
                tick = tick + args.interval if now - tick < args.interval else now + args.interval
            while done < len(polls) and polls[done][2].done():
                running, (started, synced) = polls[done][1], polls[done][2].result()
                done += 1
                if not synced:
                    changed = True
                elif changed or not running:
                    restored, seconds = True, (started - start if changed else 0.0)
                    break
            if not restored and now >= deadline and done == len(polls):
                break
            time.sleep(max(0.0, min(tick, deadline) - time.monotonic()) or 0.001)
        for pending in polls[done:]:
            pending[2].cancel()
    try:
        err = action.communicate(timeout=max(1.0, deadline - time.monotonic()))[1]
    except subprocess.TimeoutExpired:
        action.kill()
        err = action.communicate()[1]
    end_wall = start_wall + (time.monotonic() - start)
    if args.repair:
        run(args.repair)
    time.sleep(args.settle)
    return {"start": start_wall, "end": end_wall, "seconds": seconds, "changed": changed, "restored": restored,
            "in_sync_before": before, "action_rc": action.returncode, "action_error": (err or "").strip()[-300:],
            "polls": len(polls)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("mode", choices=["act"])
    parser.add_argument("--action", required=True, help="shell text: the foreign action")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--until", default="", help="shell text that must exit 0 too for 'in sync'")
    parser.add_argument("--repair", default="", help="shell text run after each round")
    parser.add_argument("--timeout", type=float, default=20, help="seconds per round")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between two polls")
    parser.add_argument("--inflight", type=int, default=3, help="polls running at once, at most")
    parser.add_argument("--settle", type=float, default=0.1, help="seconds after each round")
    parser.add_argument("--config", default=CONFIG)
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as handle:
        config = json.load(handle)
    in_sync = InSync(config, args.until)
    json.dump({"rounds": [one_round(args, in_sync) for _round in range(args.repeat)]}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
