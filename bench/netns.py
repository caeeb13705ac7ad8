# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Throwaway network namespaces for the host-side benchmarks: never the machine's own ruleset or links.

Addresses: 198.19.254.0/24 and 2001:db8:fe::/64 (benchmark and documentation ranges) on a veth pair between a
sender namespace (where the kill switch is loaded) and a receiver namespace.  Every command has a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from typing import Dict, List, Optional, Sequence

SENDER_V4, RECEIVER_V4 = "198.19.254.1", "198.19.254.2"
SENDER_V6, RECEIVER_V6 = "2001:db8:fe::1", "2001:db8:fe::2"
TIMEOUT = 120


class BenchError(RuntimeError):
    pass


def needs_root() -> Optional[str]:
    """Why the namespace benchmarks cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "nft", "unshare"):
        if not shutil.which(tool):
            return "needs %s on PATH" % tool
    return None


def run(argv: Sequence[str], timeout: float = TIMEOUT, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise BenchError("%s: rc %d: %s" % (" ".join(argv), proc.returncode, (proc.stderr or proc.stdout).strip()[-2000:]))
    return proc


def ensure_iperf3() -> str:
    """iperf3's path; installed with apt-get when missing (the datapath benchmarks need it)."""
    found = shutil.which("iperf3")
    if found:
        return found
    print("iperf3 is missing: installing it with apt-get (the datapath benchmarks B3 and B4 need it)", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "iperf3"], timeout=600, env=env)
    found = shutil.which("iperf3")
    if not found:
        raise BenchError("apt-get installed iperf3, yet it is not on PATH")
    return found


class Pair:
    """Two namespaces joined by a veth pair; ``sender_link`` names the sender's end (``wg0`` stands in for a tunnel)."""

    def __init__(self, tag: str, sender_link: str = "eth1"):
        suffix = "%s-%d" % (tag, os.getpid())
        self.sender = "nlks-s-" + suffix
        self.receiver = "nlks-r-" + suffix
        self.sender_link = sender_link
        self.receiver_link = "peer0"
        self.servers: List[subprocess.Popen] = []

    def __enter__(self) -> "Pair":
        try:
            for name in (self.sender, self.receiver):
                run(["ip", "netns", "add", name])
                self.exec(name, ["ip", "link", "set", "lo", "up"])
            run(["ip", "link", "add", "nlks%d" % os.getpid(), "netns", self.sender, "type", "veth", "peer", "name",
                 "nlkp%d" % os.getpid(), "netns", self.receiver])
            self.exec(self.sender, ["ip", "link", "set", "nlks%d" % os.getpid(), "name", self.sender_link])
            self.exec(self.receiver, ["ip", "link", "set", "nlkp%d" % os.getpid(), "name", self.receiver_link])
            for name, link, v4, v6 in ((self.sender, self.sender_link, SENDER_V4, SENDER_V6),
                                       (self.receiver, self.receiver_link, RECEIVER_V4, RECEIVER_V6)):
                self.exec(name, ["ip", "addr", "add", v4 + "/24", "dev", link])
                self.exec(name, ["ip", "-6", "addr", "add", v6 + "/64", "dev", link, "nodad"])
                self.exec(name, ["ip", "link", "set", link, "up"])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def exec(self, namespace: str, argv: Sequence[str], timeout: float = TIMEOUT, check: bool = True,
             **kwargs) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", namespace] + list(argv), timeout=timeout, check=check, **kwargs)

    def popen(self, namespace: str, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", namespace] + list(argv), **kwargs)
        self.servers.append(proc)
        return proc

    def load(self, path: str) -> float:
        """Load an nft file in the sender namespace; seconds it took."""
        started = time.perf_counter()
        self.exec(self.sender, ["nft", "-f", path], timeout=300)
        return time.perf_counter() - started

    def flush(self) -> None:
        self.exec(self.sender, ["nft", "flush", "ruleset"])

    def close(self) -> None:
        for proc in self.servers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.servers = []
        for name in (self.sender, self.receiver):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)


class Iperf:
    """iperf3 between the pair: a server in the receiver namespace, clients from the sender."""

    def __init__(self, pair: Pair, seconds: float = 3.0):
        self.pair = pair
        self.seconds = seconds
        self.binary = ensure_iperf3()
        self.server = pair.popen(pair.receiver, [self.binary, "-s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_listening()

    def _wait_listening(self) -> None:
        for attempt in range(100):
            out = self.pair.exec(self.pair.receiver, ["ss", "-ltn"], check=False).stdout
            if ":5201" in out:
                return
            time.sleep(0.05)
        raise BenchError("iperf3 server did not listen within 5 s")

    def client(self, address: str, udp_length: Optional[int] = None) -> Dict[str, float]:
        """TCP bits/s, or for ``udp_length``: UDP packets/s received (unlimited rate)."""
        argv = [self.binary, "-c", address, "-t", str(self.seconds), "-J"]
        if udp_length:
            argv += ["-u", "-b", "0", "-l", str(udp_length)]
        proc = self.pair.exec(self.pair.sender, argv, timeout=self.seconds + 30, check=False)
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            raise BenchError("iperf3 gave no JSON (rc %d): %s" % (proc.returncode, proc.stderr.strip()[-500:]))
        if "error" in data:
            raise BenchError("iperf3: %s" % data["error"])
        end = data["end"]
        if udp_length:
            total = end["sum"]
            received = total["packets"] - total["lost_packets"]
            return {"pps": received / total["seconds"], "lost_percent": total["lost_percent"]}
        return {"bps": end["sum_received"]["bits_per_second"]}


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
