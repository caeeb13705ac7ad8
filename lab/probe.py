"""Traffic probes for the molecule scenarios: prove lockdown by packets, not by files.

Captures run on peer containers with tcpdump (started from the controller with ``docker exec``);
probes run on the client.  Every probe is bounded in count and time and carries a canary, so a
capture can tell our probe from background noise and a positive control can show it got through.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import os
import shlex
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import List, Optional, Set, Tuple

PROBE_TIMEOUT = 3  # seconds for any single probe


# Neighbour discovery: ICMPv6 types 133-137 (RFC 4861; no extension header, so the type is at offset 40).
ND_TYPES_BPF = "icmp6 and ip6[40] >= 133 and ip6[40] <= 137"
ON_LINK_V6_BPF = "ip6 dst net fe80::/10 or ip6 dst net ff00::/8"
# What the contract allows of it: neighbour discovery to link-local or multicast destinations with hop
# limit 255 (it never crossed a router), and MLDv2 reports to ff02::16.
ND_BPF = "(%s and ip6[7] == 255 and (%s)) or (ip6 dst host ff02::16)" % (ND_TYPES_BPF, ON_LINK_V6_BPF)
# Neighbour discovery to any other destination could carry data off the link: a leak, unless an exception
# of the case allows that destination anyway (the LAN with allow_lan on: any traffic may go there).
OFF_LINK_ND_BPF = "%s and not (%s)" % (ND_TYPES_BPF, ON_LINK_V6_BPF)


def leak_expression(allowed=()) -> str:
    """BPF for the packets that leak: off-link neighbour discovery no allowed expression covers, and
    anything that neither on-link neighbour discovery nor one of the allowed expressions covers."""
    exceptions = " or ".join("(%s)" % a for a in (ND_BPF,) + tuple(allowed))
    if not allowed:
        return "(%s) or not (%s)" % (OFF_LINK_ND_BPF, exceptions)
    covered = " or ".join("(%s)" % a for a in allowed)
    return "((%s) and not (%s)) or not (%s)" % (OFF_LINK_ND_BPF, covered, exceptions)


def leak_filter(sources, allowed=()):
    """BPF for every leaking packet (leak_expression) from these addresses."""
    # IP only: ARP is link layer, outside the inet family and the contract.
    return "(ip or ip6) and (%s) and (%s)" % (" or ".join("src host %s" % s for s in sources),
                                              leak_expression(allowed))


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def sh(container: str, script: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a shell script in a container; never raises on a non-zero exit."""
    return docker("exec", container, "sh", "-c", script, timeout=timeout, check=False)


def canary() -> str:
    return "NETLOCK-" + uuid.uuid4().hex[:16]


@dataclass
class Capture:
    """tcpdump for the duration of a ``with`` block, in a container or (container None) on the host, or in a
    network namespace of the host (``netns``, container None).

    ``lines`` holds tcpdump's output: one header line per packet and, with ``-A``, its payload.
    """

    container: Optional[str]
    bpf: str
    interface: str = "any"
    limit: int = 200000
    max_seconds: int = 300
    netns: str = ""
    lines: List[str] = field(default_factory=list)
    _proc: Optional[subprocess.Popen] = None
    _reader: Optional[threading.Thread] = None
    _pid_file: str = ""

    def __enter__(self) -> "Capture":
        cmd = "exec timeout %d tcpdump -i %s -n -l -tt -A -c %d %s" % (
            self.max_seconds, self.interface, self.limit, shlex.quote(self.bpf))
        if self.container:
            # The pid file names this capture's own tcpdump (timeout passes SIGINT on to it): other
            # captures in the same container, another client's among them, keep running.
            self._pid_file = "/tmp/netlock-capture-%s.pid" % uuid.uuid4().hex[:16]
            cmd = "echo $$ > %s && %s" % (self._pid_file, cmd)
        elif self.netns:
            cmd = "exec ip netns exec %s sh -c %s" % (shlex.quote(self.netns), shlex.quote(cmd))
        argv = ["docker", "exec", self.container, "sh", "-c", cmd] if self.container else ["sh", "-c", cmd]
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      errors="replace")
        # tcpdump says "listening on" once its socket is open; a capture that never started would
        # make every case look clean, so it is an error.
        said = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = self._proc.stderr.readline()
            said.append(line)
            if "listening on" in line:
                # Drain stdout as it comes: a full pipe would stall tcpdump and the kernel would
                # drop packets, leaks among them.
                self._reader = threading.Thread(target=self._drain, daemon=True)
                self._reader.start()
                time.sleep(0.3)
                return self
            if not line:
                break
        self._proc.kill()
        raise RuntimeError("tcpdump did not start on %s: %s" % (self.container or "the host", "".join(said)[-800:]))

    def __exit__(self, *exc) -> None:
        time.sleep(1.0)  # let in-flight packets arrive
        if self.container:
            sh(self.container, "kill -INT $(cat %s); rm -f %s" % (self._pid_file, self._pid_file))
        else:
            self._proc.send_signal(signal.SIGINT)
        self._proc.wait(timeout=30)
        self._reader.join(timeout=30)
        summary = self._proc.stderr.read()
        dropped = re.search(r"(\d+) packets? dropped by kernel", summary)
        if dropped and int(dropped.group(1)):
            raise RuntimeError("the capture on %s lost %s packets: its verdict would not hold"
                               % (self.container or self.interface, dropped.group(1)))

    def _drain(self) -> None:
        for line in self._proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def packets(self) -> List[str]:
        """Header lines only (with -A tcpdump prints the payload below each header)."""
        return [line for line in self.lines if _HEADER.match(line)]

    def times(self, marker: str = "") -> List[float]:
        """Capture timestamps of the packets (whose payload holds the marker, when given)."""
        stamps, current = [], None
        for line in self.lines:
            if _HEADER.match(line):
                current = float(line.split(" ", 1)[0])
                if not marker:
                    stamps.append(current)
            elif marker and current is not None and marker in line:
                stamps.append(current)
                current = None
        return stamps

    def saw(self, marker: str) -> bool:
        return any(marker in line for line in self.lines)

    def sources(self, marker: str) -> Set[str]:
        """Source addresses (without the port) of the packets whose payload holds the marker."""
        found, source = set(), None
        for line in self.lines:
            header = _HEADER.match(line)
            if header:
                fields = line[header.end():].split()
                source = fields[0].rsplit(".", 1)[0] if len(fields) > 1 and fields[1] == ">" else None
            elif source and marker in line:
                found.add(source)
                source = None
        return found


_HEADER = re.compile(r"^\d+\.\d+ (\S+ )?(In |Out |P |B |M )?(IP6? |ARP)")
# tcpdump -n headers: "IP 198.18.1.11.4321 > 198.18.2.20.8080: Flags [S], ...", "IP6 a > b: ICMP6, echo request".
_FLOW = re.compile(r"\bIP6? (?P<source>\S+) > (?P<destination>\S+): (?P<rest>.*)$")


def packet_kind(header: str) -> Optional[Tuple[str, str, int]]:
    """(protocol, destination, port) of one tcpdump header line, as the agent names its probes; None for
    packets that are no probe (ARP, neighbour discovery, ICMP errors)."""
    flow = _FLOW.search(header)
    if not flow:
        return None
    destination, rest = flow.group("destination"), flow.group("rest")
    if rest.startswith("ICMP echo request") or rest.startswith("ICMP6, echo request"):
        address, port = destination, "0"
    elif rest.startswith("ICMP"):
        return None
    else:
        address, _dot, port = destination.rpartition(".")
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        return None
    if not port.isdigit():
        return None
    protocol = "icmp" if port == "0" else "tcp" if rest.startswith("Flags [") else "udp"
    return protocol, address, int(port)


def unseen(probes, headers) -> List[str]:
    """The probes (the agent's [protocol, destination, port] list) that no captured packet shows: a positive
    control vouches only for the probes it saw, so each missing one is named."""
    seen = {packet_kind(line) for line in headers}
    return ["%s %s%s" % (protocol, destination, ":%d" % port if port else "")
            for protocol, destination, port in probes
            if (protocol, str(ipaddress.ip_address(destination)), int(port)) not in seen]


def tcp_probe_command(address: str, port: int, marker: str) -> str:
    """The shell command of tcp_probe (a lab service runs the very same probe)."""
    return "echo %s | timeout %d nc -w %d %s %d" % (marker, PROBE_TIMEOUT + 1, PROBE_TIMEOUT, shlex.quote(address), port)


def udp_probe_command(address: str, port: int, marker: str, count: int = 3) -> str:
    return "for i in $(seq %d); do echo %s | timeout 2 nc -u -w 1 %s %d; done" % (count, marker, shlex.quote(address), port)


def tcp_probe(container: str, address: str, port: int, marker: str) -> bool:
    """Send the marker over TCP; True when the connection was made."""
    return sh(container, tcp_probe_command(address, port, marker)).returncode == 0


def udp_probe(container: str, address: str, port: int, marker: str, count: int = 3) -> None:
    sh(container, udp_probe_command(address, port, marker, count))


def icmp_probe(container: str, address: str, marker: str, count: int = 2) -> bool:
    pattern = marker.encode().hex()[:32]  # ping -p takes up to 16 pattern bytes in hex
    result = sh(container, "ping -c %d -W 1 -i 0.2 -p %s %s" % (count, pattern, shlex.quote(address)))
    return result.returncode == 0


def wait_for(predicate, timeout: float = 30, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def nft_table(container: str, table: str = "killswitch") -> Optional[dict]:
    result = sh(container, "nft -j list table inet %s" % table)
    return json.loads(result.stdout) if result.returncode == 0 else None


# The guard's units; the watcher holds the fence (a second, owned table): stopping it removes the fence.
GUARD_UNITS = "netlock-killswitch-guard.timer netlock-killswitch-guard.service netlock-killswitch-watch.service"
# Stop them until all stay stopped: the timer's check starts a stopped watcher and the watcher's a stopped
# timer, so one stop can race a check already under way.  Stop jobs are queued without waiting (a check under
# way, say one waiting for the apply lock, held a blocking stop past the lab's 60 s exec bound) and polled;
# a unit still running after ~10 s is killed.  A subshell, so it can be chained with &&; ~25 s at most.
PAUSE_GUARD = ("(i=0; while :; do systemctl stop --no-block %s 2>/dev/null; sleep 0.5; "
               "systemctl is-active %s | grep -qvE '^(inactive|failed)$' || break; i=$((i+1)); "
               "[ $i -ne 20 ] || systemctl kill -s SIGKILL %s 2>/dev/null; "
               "[ $i -lt 45 ] || { echo 'the guard keeps starting again' >&2; exit 1; }; done)"
               % (GUARD_UNITS, GUARD_UNITS, " ".join(u for u in GUARD_UNITS.split() if u.endswith(".service"))))
# Start again, after the boot unit reloaded the rules, what the role enabled.
RESUME_GUARD = ("for unit in netlock-killswitch-guard.timer netlock-killswitch-watch.service; do "
                "! systemctl is-enabled -q $unit 2>/dev/null || systemctl start $unit || exit 1; done")
FENCE_SUFFIX = "_fence"


@contextlib.contextmanager
def killswitch_off(container: str, table: str = "killswitch"):
    """Positive controls: the kill switch removed for the block, then loaded again by its boot unit.

    The guard and the watcher are stopped meanwhile (which removes the fence), or they would put the table
    back in the middle of the control.
    """
    # Stopping the service too waits for a guard run already under way, which could reload the table.
    assert sh(container, PAUSE_GUARD).returncode == 0, "%s: the guard did not stay stopped" % container
    sh(container, "nft delete table inet %s" % table)
    assert nft_table(container, table) is None, "the kill switch table is still loaded"
    assert nft_table(container, table + FENCE_SUFFIX) is None, "the fence is still loaded"
    try:
        yield
    finally:
        result = sh(container, "systemctl restart netlock-killswitch.service && " + RESUME_GUARD)
        assert result.returncode == 0 and nft_table(container, table) is not None, result.stderr


def wait_booted(container: str, timeout: float = 90) -> None:
    """systemd's own verdict; right after a start its bus is not up yet, hence the retries."""
    booted = wait_for(lambda: sh(container, "systemctl is-system-running").stdout.strip() in ("running", "degraded"),
                      timeout=timeout)
    if not booted:
        raise RuntimeError("%s: systemd did not finish booting in %ds" % (container, timeout))


def restart(container: str) -> None:
    docker("restart", "-t", "10", container, timeout=120)
    wait_booted(container)


def run_playbook(playbook: str, *extra: str) -> subprocess.CompletedProcess:
    """ansible-playbook against the scenario's inventory, as molecule would run it."""
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], playbook, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
