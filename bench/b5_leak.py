# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""B5: packets that leave on the physical interface while the tunnel flaps: our ruleset against a reactive baseline.

Three namespaces: the client, a "physical" far end and a "tunnel" far end, each joined to the client by a veth
pair.  The client's veth ``wg0`` stands in for the tunnel (a veth has the link state a WireGuard or tun device
has; no encryption is involved, and none is needed to see the leak).  Route to the probe destination: through
``wg0``, and a default route on the physical side, as a VPN client leaves them.  A UDP stream at
``RATE`` packets/s goes to the destination while the tunnel goes down and up ``FLAPS`` times (the route through
it re-added after each up, as a VPN client does); tcpdump on the physical far end counts what leaked.

Modes: none (no firewall: the control that shows the set-up leaks), reactive (a watcher written for the
benchmark: ``ip monitor link``, and on the tunnel's link going down it loads a table that drops everything but
the tunnel, removed when the link comes back, as application-level kill switches do) and ours (the rendered
nftables ruleset, loaded once and left alone).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict

from ansible_collections.netlock.killswitch.plugins.plugin_utils.backends import render_for
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy

from bench import netns, workload
from bench.report import Outcome, Target

RATE = 2000          # probe packets per second
FLAPS = 50
DOWN_SECONDS = 0.1   # tunnel down, then up, each this long
PROBE_DESTINATION = "198.19.200.1"
PROBE_PORT = 9
CLIENT_PHYS, FAR_PHYS = "198.19.254.1", "198.19.254.2"
CLIENT_TUN, FAR_TUN = "198.19.253.1", "198.19.253.2"
OURS = Target("==", 0)

SENDER = r"""
import socket, sys, time
rate, seconds, address, port = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = errors = 0
start = time.perf_counter()
while True:
    elapsed = time.perf_counter() - start
    if elapsed >= seconds:
        break
    due = int(elapsed * rate)
    while sent + errors < due:
        try:
            sock.sendto(b"netlock-bench-probe", (address, port))
            sent += 1
        except OSError:
            errors += 1
    time.sleep(0.0005)
print(sent, errors)
"""

REACTIVE = r"""
import subprocess, sys
BLOCK = '''table inet reactive_ks {
    chain output {
        type filter hook output priority filter; policy accept;
        oifname != { "lo", "wg0" } drop
    }
}
'''
monitor = subprocess.Popen(["ip", "-o", "monitor", "link"], stdout=subprocess.PIPE, text=True)
blocked = False
print("ready", flush=True)
for line in monitor.stdout:
    if " wg0:" not in line and " wg0@" not in line:
        continue
    up = ",UP" in line.split(">")[0] or "<UP" in line.split(">")[0]
    if not up and not blocked:
        subprocess.run(["nft", "-f", "-"], input=BLOCK, text=True, check=True)
        blocked = True
        print("blocked", flush=True)
    elif up and blocked:
        subprocess.run(["nft", "delete", "table", "inet", "reactive_ks"], check=True)
        blocked = False
        print("unblocked", flush=True)
"""


class Topology:
    def __init__(self, mode: str):
        tag = "%s-%d" % (mode[:4], os.getpid())
        self.client, self.phys, self.tun = "nlks-c-" + tag, "nlks-p-" + tag, "nlks-t-" + tag
        self.procs = []

    def ns(self, namespace, *argv, check=True, timeout=30):
        return netns.run(["ip", "netns", "exec", namespace] + list(argv), check=check, timeout=timeout)

    def __enter__(self) -> "Topology":
        try:
            for name in (self.client, self.phys, self.tun):
                netns.run(["ip", "netns", "add", name])
                self.ns(name, "ip", "link", "set", "lo", "up")
            pid = os.getpid()
            for far, link, mine, theirs in ((self.phys, "eth0", CLIENT_PHYS, FAR_PHYS), (self.tun, "wg0", CLIENT_TUN, FAR_TUN)):
                netns.run(["ip", "link", "add", "nlb%s%d" % (link, pid), "netns", self.client, "type", "veth", "peer", "name",
                           "nlf%s%d" % (link, pid), "netns", far])
                self.ns(self.client, "ip", "link", "set", "nlb%s%d" % (link, pid), "name", link)
                self.ns(far, "ip", "link", "set", "nlf%s%d" % (link, pid), "name", "peer0")
                self.ns(self.client, "ip", "addr", "add", mine + "/24", "dev", link)
                self.ns(far, "ip", "addr", "add", theirs + "/24", "dev", "peer0")
                self.ns(self.client, "ip", "link", "set", link, "up")
                self.ns(far, "ip", "link", "set", "peer0", "up")
            self.ns(self.client, "ip", "route", "add", "default", "via", FAR_PHYS, "dev", "eth0", "metric", "100")
            self.tunnel_route()
        except BaseException:
            self.close()
            raise
        return self

    def tunnel_route(self):
        self.ns(self.client, "ip", "route", "replace", PROBE_DESTINATION + "/32", "via", FAR_TUN, "dev", "wg0", "metric", "10")

    def popen(self, namespace, argv, **kwargs):
        proc = subprocess.Popen(["ip", "netns", "exec", namespace] + list(argv), **kwargs)
        self.procs.append(proc)
        return proc

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        for name in (self.client, self.phys, self.tun):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)


def capture(top: Topology, namespace: str, path: str) -> subprocess.Popen:
    proc = top.popen(namespace, ["tcpdump", "-i", "peer0", "-nn", "-U", "-w", path, "udp and dst host %s" % PROBE_DESTINATION],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # tcpdump attached
    return proc


def counted(path: str) -> int:
    proc = netns.run(["tcpdump", "-nn", "-r", path], timeout=60)
    return len([line for line in proc.stdout.splitlines() if line.strip()])


def stop_capture(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        err = proc.communicate(timeout=20)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        err = proc.communicate(timeout=5)[1]
    return err


def one_mode(mode: str, ruleset_path: str) -> Dict[str, float]:
    work = tempfile.mkdtemp(prefix="netlock-bench-b5-")
    with Topology(mode) as top:
        if mode == "ours":
            top.ns(top.client, "nft", "-f", ruleset_path, timeout=120)
        if mode == "reactive":
            watcher_log = os.path.join(work, "reactive.log")
            with open(watcher_log, "w") as log:
                watcher = top.popen(top.client, [sys.executable, "-c", REACTIVE], stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 10
            while "ready" not in open(watcher_log).read():
                if time.monotonic() > deadline or watcher.poll() is not None:
                    raise netns.BenchError("the reactive watcher did not start")
                time.sleep(0.05)
            time.sleep(0.3)  # ip monitor subscribed
        leaks = capture(top, top.phys, os.path.join(work, "phys.pcap"))
        tunnel = capture(top, top.tun, os.path.join(work, "tun.pcap"))
        seconds = FLAPS * 2 * DOWN_SECONDS + 15  # the flaps and their commands' own time
        sender = top.popen(top.client, [sys.executable, "-c", SENDER, str(RATE), str(seconds), PROBE_DESTINATION,
                                        str(PROBE_PORT)], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        down_time = 0.0
        for flap in range(FLAPS):
            went_down = time.perf_counter()
            top.ns(top.client, "ip", "link", "set", "wg0", "down")
            time.sleep(DOWN_SECONDS)
            top.ns(top.client, "ip", "link", "set", "wg0", "up")
            top.tunnel_route()
            down_time += time.perf_counter() - went_down
            time.sleep(DOWN_SECONDS)
        out = sender.communicate(timeout=seconds + 60)[0].split()
        leak_err, tunnel_err = stop_capture(leaks), stop_capture(tunnel)
        for err in (leak_err, tunnel_err):
            if not re.search(r"^0 packets dropped by kernel", err, re.M):
                raise netns.BenchError("tcpdump dropped packets or did not report: %s" % err.strip()[-300:])
        reactions = 0
        if mode == "reactive":
            lines = open(watcher_log).read().split()
            if watcher.poll() is not None or any(word not in ("ready", "blocked", "unblocked") for word in lines):
                raise netns.BenchError("the reactive watcher failed: %s" % " ".join(lines)[-500:])
            reactions = lines.count("blocked")
        return {"leaked": counted(os.path.join(work, "phys.pcap")), "reactions": reactions, "through_tunnel": counted(os.path.join(work, "tun.pcap")),
                "sent": int(out[0]), "send_errors": int(out[1]), "down_seconds": down_time}


def run(outcome: Outcome) -> None:
    outcome.notes.append(__doc__.split("\n\n", 1)[1].replace("\n", " ").replace("``RATE``", str(RATE))
                         .replace("``FLAPS``", str(FLAPS)).replace("``", "`"))
    reason = netns.needs_root()
    if reason:
        outcome.figure("leaked packets, ours", None, "packets", OURS, note=reason)
        return
    policy = parse_policy(workload.big_policy(10))
    ruleset_path = os.path.join(tempfile.mkdtemp(prefix="netlock-bench-b5-"), "ruleset.nft")
    with open(ruleset_path, "w") as handle:
        handle.write(render_for(policy, "nftables"))
    results = {}
    for mode in ("none", "reactive", "ours"):
        results[mode] = one_mode(mode, ruleset_path)
    for mode, label in (("none", "no kill switch (control)"), ("reactive", "reactive baseline"), ("ours", "ours")):
        result = results[mode]
        outcome.figure("leaked packets over %d flaps, %s" % (FLAPS, label), result["leaked"], "packets",
                       OURS if mode == "ours" else None,
                       note="sent %d (%d refused), %d through the tunnel, tunnel down %.1f s in all%s" % (
                           result["sent"], result["send_errors"], result["through_tunnel"], result["down_seconds"],
                           ", the watcher blocked %d times" % result["reactions"] if mode == "reactive" else ""))
    if results["reactive"]["leaked"] == 0:
        outcome.notes.append("The reactive baseline leaked nothing in this run, so this comparison shows no difference "
                             "between the two approaches here.")
    if results["none"]["leaked"] == 0:
        outcome.notes.append("The control leaked nothing: the set-up did not send traffic off the tunnel when it went "
                             "down, and the figures above prove nothing.")
