# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-app exceptions (``killswitch_app_exceptions``) proven by traffic, with real nft, as root.

Two throwaway network namespaces joined by a veth pair (198.18.0.0/24, 2001:db8::/64); two cgroups of our own
under the cgroup v2 root; a listener on the far side records every probe that arrives.  Probes (UDP and TCP,
IPv4 and IPv6) go from a process in the exception's cgroup and from one in another cgroup, to the exception's
destination and to another one.  The ruleset is rendered by the renderer and loaded by the applier (``Nft``);
the cgroup set is filled by the guard's ``cgroups`` command, as a service's ExecStartPre runs it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.netlock.killswitch.plugins.module_utils.nft_live import Nft
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy
from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_nftables import render

REPO_ROOT = Path(__file__).resolve().parents[4]
GUARD = REPO_ROOT / "roles" / "killswitch" / "files" / "netlock_killswitch_guard.py"
PORT = 9000
DESTINATIONS = {"exc": {4: "198.18.0.2", 6: "2001:db8::2"}, "other": {4: "198.18.0.3", 6: "2001:db8::3"}}
CGROUPS = ("app", "other")
PROTOCOLS = ("udp", "tcp")
TIMEOUT = 60

LISTENER = r"""
import select, signal, socket, sys
signal.alarm(int(sys.argv[1]))  # bounded, whatever happens to the test
port = int(sys.argv[2])
udp, tcp = [], []
for family, any_address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for kind, group in ((socket.SOCK_DGRAM, udp), (socket.SOCK_STREAM, tcp)):
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((any_address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
        group.append(sock)
print("ready", flush=True)
while True:
    for sock in select.select(udp + tcp, [], [])[0]:
        if sock in udp:
            print(sock.recv(200).decode(), flush=True)
        else:
            conn = sock.accept()[0]
            conn.settimeout(2)
            try:
                print(conn.recv(200).decode(), flush=True)
            except OSError:
                pass
            conn.close()
"""

# Runs in a cgroup: one probe per argument "tag,protocol,address"; prints what the local stack said.
PROBE = r"""
import socket, sys
port = int(sys.argv[1])
for probe in sys.argv[2:]:
    tag, protocol, address = probe.split(",")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    sock = socket.socket(family, kind)
    sock.settimeout(3)  # a SYN lost to neighbour discovery is sent again after 1 s
    try:
        if protocol == "udp":
            sock.sendto(tag.encode(), (address, port))
        else:
            sock.connect((address, port))
            sock.sendall(tag.encode())
        print(tag, "sent")
    except OSError as exc:
        print(tag, "refused", exc.errno)
    finally:
        sock.close()
"""


def cgroup2_root():
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _sep, rest = line.partition(" - ")
        if rest.split(" ")[:1] == ["cgroup2"]:
            return Path(fields.split(" ")[4])
    return None


def lab_unavailable_reason():
    if os.geteuid() != 0:
        return "needs root (network namespaces, nft, cgroups)"
    for tool in ("ip", "nft", "nsenter"):
        if not shutil.which(tool):
            return "%s is not installed" % tool
    if cgroup2_root() is None:
        return "no cgroup v2 hierarchy is mounted"
    return None


class Lab:
    """The two namespaces, the veth pair, our cgroups and the listener; ``close`` removes them all."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.host = "ks-app-h%d" % os.getpid()
        self.peer = "ks-app-p%d" % os.getpid()
        self.cgroup_dir = cgroup2_root() / ("netlock-ks-test-%d" % os.getpid())
        self.listener = None
        self.received_path = tmp_path / "received.txt"
        self.probe_path = tmp_path / "probe.py"
        self.probe_path.write_text(PROBE)
        self.said = {}  # tag: what the sending stack said ("sent" or "refused <errno>")

    def sh(self, command, netns=None, timeout=TIMEOUT, check=True):
        argv = ["nsenter", "--net=/run/netns/%s" % netns, "sh", "-c", command] if netns else ["sh", "-c", command]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check:
            assert proc.returncode == 0, "%s: %s%s" % (command, proc.stdout, proc.stderr)
        return proc

    def runner(self, argv):
        """The applier's runner, inside the host namespace (``nsenter`` keeps the host's /sys, hence the cgroups)."""
        proc = subprocess.run(["nsenter", "--net=/run/netns/%s" % self.host] + list(argv), capture_output=True,
                              text=True, timeout=TIMEOUT, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def open(self):
        self.sh("ip netns add %s && ip netns add %s" % (self.host, self.peer))
        self.sh("ip link add ksa0 netns %s type veth peer name ksa1 netns %s" % (self.host, self.peer))
        self.sh("ip link set lo up && ip addr add 198.18.0.1/24 dev ksa0 && ip -6 addr add 2001:db8::1/64 dev ksa0 nodad"
                " && ip link set ksa0 up", self.host)
        self.sh("ip link set lo up && ip addr add 198.18.0.2/24 dev ksa1 && ip addr add 198.18.0.3/24 dev ksa1"
                " && ip -6 addr add 2001:db8::2/64 dev ksa1 nodad && ip -6 addr add 2001:db8::3/64 dev ksa1 nodad"
                " && ip link set ksa1 up", self.peer)
        self.cgroup_dir.mkdir()
        for name in CGROUPS:
            (self.cgroup_dir / name).mkdir()
        out = self.received_path.open("w")
        self.listener = subprocess.Popen(["ip", "netns", "exec", self.peer, sys.executable, "-u", "-c", LISTENER,
                                          str(TIMEOUT * 3), str(PORT)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while "ready" not in self.received_path.read_text():
            assert time.monotonic() < deadline and self.listener.poll() is None, self.received_path.read_text()
            time.sleep(0.05)
        # The neighbours, found once before any probe (a first IPv6 SYN can be lost to neighbour discovery).
        warmup = ["warmup,udp,%s" % address for addresses in DESTINATIONS.values() for address in addresses.values()]
        self.sh('exec "%s" %s %d %s' % (sys.executable, self.probe_path, PORT, " ".join(warmup)), self.host)
        time.sleep(0.3)

    def close(self):
        if self.listener is not None:
            self.listener.kill()
            self.listener.wait(timeout=10)
        for netns in (self.host, self.peer):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        for name in CGROUPS:
            if (self.cgroup_dir / name).exists():
                (self.cgroup_dir / name).rmdir()  # empty: every probe has exited
        if self.cgroup_dir.exists():
            self.cgroup_dir.rmdir()

    def cgroup_path(self, name):
        """The cgroup as the policy names it: below the cgroup v2 root."""
        return "%s/%s" % (self.cgroup_dir.name, name)

    def restart_cgroup(self, name):
        """What a service restart does: its cgroup goes and a new one (a new id) comes."""
        (self.cgroup_dir / name).rmdir()
        (self.cgroup_dir / name).mkdir()

    def probe(self, scenario, cgroups=CGROUPS, destinations=tuple(DESTINATIONS)):
        """Every probe of a scenario, from processes in the cgroups; returns the tags sent."""
        sent = []
        for cgroup in cgroups:
            probes = []
            for destination, protocol, family in itertools.product(destinations, PROTOCOLS, (4, 6)):
                tag = "%s-%s-%s-%s-%d" % (scenario, cgroup, destination, protocol, family)
                probes.append("%s,%s,%s" % (tag, protocol, DESTINATIONS[destination][family]))
                sent.append(tag)
            # The shell moves itself into the cgroup, then becomes the probe: every socket is the cgroup's.
            command = 'echo $$ > %s && exec "%s" %s %d %s' % (
                self.cgroup_dir / cgroup / "cgroup.procs", sys.executable, self.probe_path, PORT, " ".join(probes))
            said = self.sh(command, self.host).stdout
            self.said.update(line.split(" ", 1) for line in said.splitlines())
        return sent

    def arrived(self, scenario):
        time.sleep(0.3)  # the listener prints what is on the wire already
        return {line for line in self.received_path.read_text().split() if line.startswith(scenario + "-")}


@pytest.fixture(name="lab")
def lab_fixture(tmp_path):
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)  # a failure under CI=true (strict_ci.py)
    lab = Lab(tmp_path)
    try:
        lab.open()
        yield lab
    finally:
        lab.close()


def tags(scenario, cgroup, destination):
    return {"%s-%s-%s-%s-%d" % (scenario, cgroup, destination, protocol, family)
            for protocol, family in itertools.product(PROTOCOLS, (4, 6))}


def policy_for(lab):
    exceptions = [{"cgroup": lab.cgroup_path("app"), "cidr": DESTINATIONS["exc"][family], "protocol": protocol,
                   "port": PORT} for protocol, family in itertools.product(PROTOCOLS, (4, 6))]
    return parse_policy({"killswitch_tunnel_interfaces": ["wg0"], "killswitch_ipv6": "tunnel",
                         "killswitch_endpoints": [{"address": "198.18.1.1", "port": 51820}],
                         "killswitch_management_cidrs": [], "killswitch_app_exceptions": exceptions})


def write_guard_config(lab):
    config = lab.tmp / "guard.json"
    config.write_text('{"table": "killswitch", "list_command": "true", "load_command": "true"}')
    return config


def fill_sets(lab, config):
    """The guard's ``cgroups`` command, in the host namespace (what a service's ExecStartPre runs)."""
    return lab.sh('"%s" "%s" --config "%s" cgroups' % (sys.executable, GUARD, config), lab.host, check=False)


def test_only_the_exception_cgroup_reaches_only_the_exception_destination(lab):
    config = write_guard_config(lab)

    # Positive control: with no kill switch every probe of both cgroups arrives (each one seen).
    sent = set(lab.probe("open"))
    assert len(sent) == 16 and lab.arrived("open") == sent, "control: without the kill switch every probe arrives: %s" % lab.said

    # The boot case: the ruleset loads while the exception's cgroup does not exist, and blocks everything.
    (lab.cgroup_dir / "app").rmdir()
    path = lab.tmp / "ruleset.nft"
    path.write_text(render(policy_for(lab)))
    nft = Nft(lab.runner, nft=shutil.which("nft"), unshare=shutil.which("unshare"))
    assert nft.apply(str(path)) is None
    filled = fill_sets(lab, config)
    assert filled.returncode == 0, filled.stdout + filled.stderr
    (lab.cgroup_dir / "app").mkdir()
    lab.probe("boot")
    assert lab.arrived("boot") == set(), "before the set is filled nothing leaves (fail closed)"

    # Filled by the guard: the exception's cgroup reaches the exception's destination, nothing else leaves.
    filled = fill_sets(lab, config)
    assert filled.returncode == 0, filled.stdout + filled.stderr
    probes = lab.probe("filled")
    assert lab.arrived("filled") == tags("filled", "app", "exc")
    blocked = set(probes) - tags("filled", "app", "exc")
    assert len(blocked) == 12 and all(lab.said[tag].startswith("refused") for tag in blocked), lab.said

    # The applier and the guard see no drift: the set's member is host state, not part of the compared rules.
    live, desired = nft.live("killswitch"), nft.desired(str(path), "killswitch")
    assert "elements" in lab.sh("nft list set inet killswitch cgroup_%s_app" % lab.cgroup_dir.name.replace("-", "_"),
                                lab.host).stdout
    assert live == desired
    assert lab.sh(nft.list_command("killswitch"), lab.host).stdout.rstrip("\n") == desired[1].rstrip("\n")

    # A restart makes a new cgroup (new id): blocked until the set follows it, then through again.
    lab.restart_cgroup("app")
    lab.probe("restarted", cgroups=("app",), destinations=("exc",))
    assert lab.arrived("restarted") == set(), "the old cgroup's id must not admit the new cgroup"
    assert fill_sets(lab, config).returncode == 0
    lab.probe("refilled")
    assert lab.arrived("refilled") == tags("refilled", "app", "exc")

    # The detector can see the leak the cgroup match prevents: the same rule without it lets the other cgroup out.
    broken = lab.tmp / "broken.nft"
    text = path.read_text()
    broken.write_text(re.sub(r"socket cgroupv2 level \d+ @\w+ ", "", text))
    assert broken.read_text() != text
    assert nft.apply(str(broken)) is None
    lab.probe("broken", cgroups=("other",), destinations=("exc",))
    assert lab.arrived("broken") == tags("broken", "other", "exc"), "negative control: a rule without the cgroup leaks"


FAKE_SYSTEMCTL = "#!/bin/sh\n# the guard's view of systemd in the lab: every unit enabled and active, nothing started\n" \
                 "case \"$1\" in is-enabled) echo enabled ;; is-active) echo active ;; esac\n"


def start_watcher(lab, path):
    """The guard's watcher in the host namespace, holding the fence (as netlock-killswitch-watch.service runs it)."""
    parsed = policy_for(lab)
    digest = parsed.digest()[:16]
    store = lab.tmp / "policies" / digest
    store.mkdir(parents=True)
    (store / "ruleset").write_text(path.read_text())
    (store / "fence.nft").write_text(render(parsed, fence=True))
    (lab.tmp / "bin").mkdir()
    (lab.tmp / "bin" / "systemctl").write_text(FAKE_SYSTEMCTL)
    (lab.tmp / "bin" / "systemctl").chmod(0o755)
    nft = Nft(lab.runner, nft=shutil.which("nft"), unshare=shutil.which("unshare"))
    expected = lab.tmp / "expected-table.txt"
    expected.write_text(nft.desired(str(path), "killswitch")[1])
    assert digest in expected.read_text()
    config = lab.tmp / "guard.json"
    config.write_text(json.dumps(dict(
        backend="nftables", table="killswitch", fence="required", policy_dir=str(lab.tmp / "policies"),
        ruleset_path=str(path), expected_path=str(expected), list_command=nft.list_command("killswitch"),
        load_command="nft -f %s" % path, lock_path=str(lab.tmp / "lock"), metrics_path="",
        state_path=str(lab.tmp / "state.json"), watch_interval=1)))
    env = dict(os.environ, PATH="%s:%s" % (lab.tmp / "bin", os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")))
    log = (lab.tmp / "watch.log").open("w")
    watcher = subprocess.Popen(["nsenter", "--net=/run/netns/%s" % lab.host, sys.executable, "-u", str(GUARD),
                                "--config", str(config), "watch"], stdout=log, stderr=subprocess.STDOUT, env=env)
    return watcher, lab.tmp / "watch.log"


def wait_for(condition, what, log, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "%s within %ss:\n%s" % (what, timeout, log.read_text())
        time.sleep(0.1)


def test_the_watcher_fills_the_main_and_the_fence_sets_and_follows_a_restart(lab):
    """Both tables must accept a packet: the fence's set (only its owner, the watcher, may fill it) and the main
    table's are filled by the watcher, and follow a new cgroup (a restart) within its interval."""
    path = lab.tmp / "ruleset.nft"
    path.write_text(render(policy_for(lab)))
    nft = Nft(lab.runner, nft=shutil.which("nft"), unshare=shutil.which("unshare"))
    assert nft.apply(str(path)) is None
    watcher, log = start_watcher(lab, path)
    try:
        def filled(table):
            listing = lab.sh("nft list table inet %s" % table, lab.host, check=False).stdout
            return "elements = { \"" in listing.split("set cgroup_", 1)[-1].split("}", 1)[0]
        wait_for(lambda: filled("killswitch") and filled("killswitch_fence"), "both cgroup sets filled", log)
        lab.probe("fenced")
        assert lab.arrived("fenced") == tags("fenced", "app", "exc"), log.read_text()
        # Filled sets stay as they are: no refresh loop between the watcher's checks and its own netlink events.
        quiet = lab.sh("timeout 2.5 nft monitor; true", lab.host).stdout
        assert "element" not in quiet and "flush" not in quiet, quiet

        lab.restart_cgroup("app")
        lab.probe("restarted", cgroups=("app",), destinations=("exc",))
        assert lab.arrived("restarted") == set(), "the old cgroup's id must not admit the new cgroup"
        time.sleep(2.5)  # the watcher's check every second (watch_interval) follows the new cgroup, in both tables
        lab.probe("followed")
        assert lab.arrived("followed") == tags("followed", "app", "exc"), log.read_text()
        assert "drift" not in log.read_text(), "a filled set is host state, not drift"

        # A service's ExecStartPre (the cgroups command) returns once the fence admits its new cgroup too, so the
        # service's first packet passes both tables (under real systemd it was dropped by the fence before).
        lab.restart_cgroup("app")
        assert fill_sets(lab, lab.tmp / "guard.json").returncode == 0, log.read_text()
        fence = lab.sh("nft list table inet killswitch_fence", lab.host).stdout
        assert '/%s"' % lab.cgroup_path("app") in fence, fence  # the new id (nft lists a gone cgroup's id as a number)
        lab.probe("prestart", cgroups=("app",), destinations=("exc",))
        assert lab.arrived("prestart") == tags("prestart", "app", "exc"), log.read_text()
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
    assert "fence killswitch_fence removed" in log.read_text()
