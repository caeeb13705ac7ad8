"""Interruption safety.

    The controller is killed at a random moment mid-run in 20 trials while each host streams probe
    packets outside the tunnel: after every kill every host has a ruleset, 0 probe packets leave,
    and a rerun converges.

Every managed host streams UDP datagrams carrying a canary to the sink (outside the tunnel, never
allowed by the policy) for the whole test; a capture on the host side of each host's veth counts the
canary packets that reach the wire.  Each trial runs the kill switch role over SSH
(molecule/fleet/apply.yml, from the installed collection) with the policy that is not in force, so
every run really applies (the two policies differ by one killswitch_extra_outbound entry), and
SIGKILLs ansible-playbook's whole process group at a random moment in [0, T], T being a measured
full run.  Then every host must have table inet killswitch loaded, no canary packet may have left,
and a rerun of the same policy must succeed and leave that policy in force.

A positive control comes first: the same stream with the table removed is seen on the wire.

NETLOCK_INTERRUPT_SEED replays a run (the seed is printed and written to
reports/molecule-fleet/interrupt.json); NETLOCK_INTERRUPT_TRIALS changes the number of trials.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
from typing import Dict, List

import pytest
from conftest import APPLY, ROOT, ansible_env, parse_recap, run_playbook

from lab import fleet
from lab.build import AGENT
from lab.cases import host_link
from lab.probe import Capture, canary, killswitch_off, nft_table, sh, wait_for

SEED = int(os.environ.get("NETLOCK_INTERRUPT_SEED") or random.SystemRandom().randrange(2 ** 32))
TRIALS = int(os.environ.get("NETLOCK_INTERRUPT_TRIALS", "20"))
RATE = 200  # datagrams per second and host
MARKER_NET = "198.18.99.0/24"
POLICIES = (
    {"killswitch_extra_outbound": []},
    {"killswitch_extra_outbound": [{"cidr": MARKER_NET, "protocol": "tcp", "port": 443}]},
)
REPORT = os.path.join(ROOT, "reports", "molecule-fleet", "interrupt.json")
SINK = fleet.SINK.v4(fleet.FLEET)


def wire_bpf(host) -> str:
    """Every IP packet the host puts on its link towards the sink: the policy allows none."""
    mac = sh(host.name, "cat /sys/class/net/eth0/address").stdout.strip()
    return "ether src %s and (ip or ip6) and dst host %s" % (mac, SINK)


class Stream:
    """agent.py stream on one host: canary datagrams to the sink at RATE until stopped (bounded)."""

    def __init__(self, host, seconds: float):
        self.host, self.marker = host, canary()
        self.stop_file = "/tmp/%s.stop" % self.marker
        self.result: Dict = {}
        self.seconds = seconds
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        command = "python3 %s stream --canary %s --target %s --udp-port %d --rate %d --seconds %d --stop-file %s" % (
            AGENT, self.marker, SINK, fleet.UDP_PORT, RATE, self.seconds, self.stop_file)
        try:
            result = sh(self.host.name, command, timeout=self.seconds + 60)
            self.result = json.loads(result.stdout) if result.returncode == 0 else {"error": result.stderr[-800:]}
        except Exception as exc:  # reported by stop(): a dead stream must not read as "nothing leaked"
            self.result = {"error": repr(exc)}

    def start(self) -> "Stream":
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> int:
        sh(self.host.name, "touch %s" % self.stop_file)
        self._thread.join(timeout=60)
        assert "error" not in self.result and "sent" in self.result, "%s: stream failed: %s" % (self.host.name, self.result)
        return self.result["sent"]


def has_marker(host) -> bool:
    return MARKER_NET in sh(host.name, "nft list table inet killswitch").stdout


def tables_loaded(hosts) -> List[str]:
    return [h.name for h in hosts if nft_table(h.name) is None]


def full_run(policy: dict) -> float:
    result = run_playbook(APPLY, "-e", json.dumps(policy))
    assert result.returncode == 0, result.tail()
    return result.seconds


def interrupted_run(policy: dict, delay: float) -> dict:
    """Start the playbook, SIGKILL its whole process group after ``delay`` seconds."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(["ansible-playbook", "-i", fleet.INVENTORY, APPLY, "-e", json.dumps(policy)],
                                stdout=log, stderr=subprocess.STDOUT, env=ansible_env(), cwd=ROOT,
                                start_new_session=True)
        started = time.monotonic()
        try:
            proc.wait(timeout=delay)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            killed = True
        elapsed = time.monotonic() - started
        log.seek(0)
        output = log.read()
    tasks = [line for line in output.splitlines() if line.startswith("TASK [")]
    return {"killed": killed, "at": round(elapsed, 2), "returncode": proc.returncode,
            "last_task": tasks[-1] if tasks else "", "recap": parse_recap(output)}


def stop_streams(streams: List[Stream], sent: Dict) -> None:
    for stream in streams:
        try:
            sent[stream.host.name] = stream.stop()
        except AssertionError as exc:
            sent[stream.host.name] = str(exc)


def write_report(report: dict, captures: List[Capture], started: float) -> None:
    report.update(seconds=round(time.monotonic() - started, 1),
                  leaked={c.interface: len(c.packets) for c in captures},
                  killed=sum(t["killed"] for t in report["trials"]))
    os.makedirs(os.path.dirname(REPORT), exist_ok=True)
    with open(REPORT, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    print("interrupt test: %s" % json.dumps({k: v for k, v in report.items() if k != "trials"}))


@pytest.fixture(scope="module", autouse=True)
def inventory_policy_afterwards():
    """The trials leave one of two policies in force: put the inventory's back for the next tests."""
    yield
    result = run_playbook(APPLY)
    assert result.returncode == 0, result.tail()


def test_positive_control_the_stream_is_seen_without_the_kill_switch(fleet_hosts):
    for host in fleet_hosts:
        with killswitch_off(host.name):
            stream = Stream(host, seconds=30)
            with Capture(None, wire_bpf(host), interface=host_link(host), max_seconds=120) as wire:
                stream.start()
                assert wait_for(lambda: wire.saw(stream.marker), timeout=10, interval=0.2)
                sent = stream.stop()
        seen = len(wire.times(stream.marker))
        assert sent and seen > 0, "%s: no canary seen without the kill switch: the detector is blind" % host.name
        assert nft_table(host.name) is not None, "%s: the kill switch did not come back" % host.name


def test_killed_controller_leaves_every_host_locked(fleet_hosts):
    rng = random.Random(SEED)
    print("interrupt test: seed %d, %d trials (replay with NETLOCK_INTERRUPT_SEED=%d)" % (SEED, TRIALS, SEED))
    # A full run that changes the policy: its duration bounds the kill moment.
    full = full_run(POLICIES[1])
    report = {"seed": SEED, "trials": [], "full_run_seconds": round(full, 2), "rate_per_host": RATE, "sent": {}}
    bound = int(TRIALS * (2.5 * full + 30) + 120)
    streams = [Stream(host, seconds=bound) for host in fleet_hosts]
    started = time.monotonic()
    captures: List[Capture] = []
    # On the way out, in this order: the streams stop, the captures stop, the report is written.
    with contextlib.ExitStack() as stack:
        stack.callback(write_report, report, captures, started)
        captures += [stack.enter_context(Capture(None, wire_bpf(host), interface=host_link(host),
                                                 max_seconds=bound + 60)) for host in fleet_hosts]
        stack.callback(stop_streams, streams, report["sent"])
        for stream in streams:
            stream.start()
        time.sleep(1)
        for trial in range(TRIALS):
            policy = POLICIES[trial % 2]
            delay = rng.uniform(0, full)
            outcome = interrupted_run(policy, delay)
            outcome.update(trial=trial, delay=round(delay, 2), policy_marker=bool(policy["killswitch_extra_outbound"]))
            outcome["unloaded_after_kill"] = tables_loaded(fleet_hosts)
            time.sleep(2)  # an apply scheduled by the killed run lands within a second
            outcome["unloaded_later"] = tables_loaded(fleet_hosts)
            rerun = run_playbook(APPLY, "-e", json.dumps(policy))
            outcome.update(rerun_returncode=rerun.returncode, rerun_seconds=round(rerun.seconds, 2),
                           rerun_recap=rerun.recap,
                           marker_in_force={h.name: has_marker(h) for h in fleet_hosts},
                           leaked={c.interface: len(c.packets) for c in captures},
                           streams_alive=all(s.alive for s in streams))
            report["trials"].append(outcome)
            print("trial %2d: %s at %5.1fs (delay %5.1fs, last %s); rerun rc %d in %.0fs; leaked %s" % (
                trial, "killed" if outcome["killed"] else "finished", outcome["at"], delay,
                outcome["last_task"][:60], rerun.returncode, rerun.seconds, outcome["leaked"]))
            where = "trial %d (seed %d): %s" % (trial, SEED, json.dumps(outcome))
            assert not outcome["unloaded_after_kill"] and not outcome["unloaded_later"], \
                "a host lost its ruleset after the kill: " + where
            assert not any(outcome["leaked"].values()), "probe packets left outside the tunnel: %s\n%s" % (
                where, [line for c in captures for line in c.packets][:20])
            assert outcome["streams_alive"], "a probe stream died: " + where
            assert rerun.returncode == 0, "the rerun failed: %s\n%s" % (where, rerun.tail())
            assert all(v == bool(policy["killswitch_extra_outbound"]) for v in outcome["marker_in_force"].values()), \
                "the rerun did not leave its policy in force: " + where
    # The captures have stopped: every packet is counted.
    assert not any(report["leaked"].values()), report["leaked"]
    duration = report["seconds"]
    for name, count in report["sent"].items():
        assert isinstance(count, int) and count >= RATE * duration * 0.5, \
            "%s: the stream sent %s datagrams in %.0fs: too few to prove anything" % (name, count, duration)
    assert report["killed"] >= TRIALS // 2, "only %d of %d runs were killed mid-run" % (report["killed"], TRIALS)
