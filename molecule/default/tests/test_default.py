"""The kill switch proven by traffic on each Linux backend: a peer container captures what each client sends.

ks-default-client runs the nftables backend, ks-default-iptables the iptables one (iptables-nft, the Debian
default alternative); the leak lab adds iptables-legacy.  Every test runs against both, each with its own
positive control.
"""

import contextlib
import os
import time
from dataclasses import dataclass

import pytest

from lab.probe import Capture, canary, icmp_probe, leak_filter, restart, run_playbook, sh, tcp_probe, udp_probe, wait_for

PEER = "ks-default-peer"
PEER_V4, PEER_V6, PEER_TUNNEL = "198.18.20.20", "2001:db8:20::20", "198.18.200.1"
SCENARIO = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", "")
CONVERGE, PREPARE, REHEARSE = (os.path.join(SCENARIO, name)
                               for name in ("converge.yml", "prepare.yml", "rehearse-rollback.yml"))
GUARD_LISTING = "/etc/netlock-killswitch/expected-table.txt"


@dataclass(frozen=True)
class Client:
    name: str
    v4: str
    v6: str
    backend: str

    @property
    def ruleset(self):
        return "/etc/netlock-killswitch/ruleset." + ("nft" if self.backend == "nftables" else "sh")

    @property
    def leak_filter(self):
        # Everything the client sends on the lab link except its (marked) WireGuard traffic to the endpoint.
        return leak_filter([self.v4, self.v6], allowed=["udp and dst port 51820"])

    def listing(self):
        """The live rules as the guard compares them (counter values removed)."""
        if self.backend == "nftables":
            command = "nft list table inet killswitch | sed -E 's/counter packets [0-9]+ bytes [0-9]+/counter/'"
        else:
            command = "sh %s list" % self.ruleset
        return sh(self.name, command).stdout

    def loaded(self):
        if self.backend == "nftables":
            return sh(self.name, "nft list table inet killswitch").returncode == 0
        return ":killswitch-out" in sh(self.name, "iptables-save -t filter").stdout

    def remove_rules(self):
        command = "nft delete table inet killswitch" if self.backend == "nftables" else "sh %s delete" % self.ruleset
        assert sh(self.name, command).returncode == 0
        assert not self.loaded(), "the kill switch is still loaded"


CLIENTS = [Client("ks-default-client", "198.18.20.10", "2001:db8:20::10", "nftables"),
           Client("ks-default-iptables", "198.18.20.11", "2001:db8:20::11", "iptables")]
testinfra_hosts = ["docker://" + c.name for c in CLIENTS]
# How another tool (or a person) breaks the rules, per backend: each must be repaired by the guard.
TAMPERS = {
    "nftables": ["nft delete table inet killswitch", "nft insert rule inet killswitch output accept",
                 "nft flush ruleset"],
    "iptables": ["iptables -D OUTPUT -j killswitch-out", "iptables -I OUTPUT 1 -j ACCEPT",
                 "iptables -I killswitch-out 1 -j ACCEPT", "iptables -F", "ip6tables -F killswitch-out"],
}
# Stopping the service as well waits for (or ends) a guard run already under way, which would undo the tamper.
PAUSE_GUARD = "systemctl stop netlock-killswitch-guard.timer netlock-killswitch-guard.service"
DRIFT = {"nftables": "nft insert rule inet killswitch output accept",
         "iptables": "iptables -I killswitch-out 1 -j ACCEPT"}


@pytest.fixture(params=CLIENTS, ids=lambda c: c.backend)
def client(request):
    return request.param


@contextlib.contextmanager
def killswitch_off(client):
    """Positive controls: the rules removed for the block, then loaded again by the boot unit."""
    sh(client.name, PAUSE_GUARD + " 2>/dev/null")
    client.remove_rules()
    try:
        yield
    finally:
        result = sh(client.name, "systemctl restart netlock-killswitch.service && "
                                 "systemctl start netlock-killswitch-guard.timer")
        assert result.returncode == 0 and client.loaded(), result.stderr


def tunnel(client, state):
    if state == "up" and sh(client.name, "ip link show wg0").returncode != 0:
        # A restart (this run's or an earlier one's) took wireguard-go with it: set the tunnel up again.
        result = run_playbook(PREPARE)
        assert result.returncode == 0, result.stdout[-3000:]
    sh(client.name, "ip link set wg0 %s" % state)


def probe_everything(client, marker):
    """TCP, UDP, ICMP and DNS over IPv4 and IPv6 to the peer's LAN address; True if any TCP got through."""
    reached = [tcp_probe(client.name, address, 8080, marker) for address in (PEER_V4, PEER_V6)]
    for address in (PEER_V4, PEER_V6):
        udp_probe(client.name, address, 9999, marker)
        udp_probe(client.name, address, 53, marker, count=1)
        icmp_probe(client.name, address, marker)
    return any(reached)


def leaks(client, marker):
    with Capture(PEER, client.leak_filter, interface="eth0") as capture:
        reached = probe_everything(client, marker)
    return reached, capture


def locked(client):
    """No probe gets through, and the peer sees nothing from the client."""
    reached, capture = leaks(client, canary())
    return not reached and capture.packets == []


def test_rules_are_loaded_with_default_drop(client):
    assert client.loaded(), "the kill switch is not loaded"
    if client.backend == "nftables":
        listing = client.listing()
        for hook in ("input", "output", "forward"):
            assert "type filter hook %s priority filter; policy drop;" % hook in listing
    else:
        listing = client.listing()
        for family in ("iptables", "ip6tables"):
            section = listing.split("# " + family + "\n", 1)[1].split("# ip6tables", 1)[0]
            for hook, chain in (("INPUT", "killswitch-in"), ("OUTPUT", "killswitch-out"), ("FORWARD", "killswitch-fwd")):
                assert "jump %s 1 %s" % (hook, chain) in section, "%s: our chain is not first in %s" % (family, hook)
            ends = [line for line in section.splitlines() if line.startswith("-A killswitch-out")][-1]
            assert "-j REJECT" in ends
    assert sh(client.name, "systemctl is-enabled netlock-killswitch.service").stdout.strip() == "enabled"


def test_nothing_leaves_without_the_tunnel(client):
    tunnel(client, "down")
    marker = canary()
    reached, capture = leaks(client, marker)
    assert not reached
    assert capture.packets == [], "leaked:\n" + "\n".join(capture.packets)

    # Positive control: the same probes without the kill switch are seen by the peer.
    with killswitch_off(client):
        control = canary()
        reached, capture = leaks(client, control)
    assert reached and capture.saw(control), "the probe itself is broken: nothing seen without the kill switch"


def test_traffic_passes_through_the_tunnel(client):
    tunnel(client, "up")
    assert wait_for(lambda: tcp_probe(client.name, PEER_TUNNEL, 8080, canary()), timeout=30)
    # The tunnel does not open the LAN path: the peer's LAN address stays unreachable.
    assert locked(client)


def test_unmarked_traffic_to_the_endpoint_is_blocked(client):
    """ServerIP: only the VPN client's marked packets may reach the endpoint address and port."""
    def probe_endpoint():
        marker = canary()
        with Capture(PEER, "src host %s and udp and dst port 51820" % client.v4, interface="eth0") as capture:
            udp_probe(client.name, PEER_V4, 51820, marker, count=5)
        return capture.saw(marker)

    assert not probe_endpoint()
    with killswitch_off(client):
        assert probe_endpoint(), "the probe itself is broken: nothing seen without the kill switch"


def guard_reloads(client):
    return sh(client.name, "journalctl -q -u netlock-killswitch-guard.service | grep -c reloading").stdout.strip()


@pytest.mark.parametrize("client,tamper", [(c, t) for c in CLIENTS for t in TAMPERS[c.backend]],
                         ids=lambda v: v.backend if isinstance(v, Client) else v)
def test_guard_puts_the_rules_back(client, tamper):
    before = guard_reloads(client)
    assert client.listing().strip() == sh(client.name, "cat " + GUARD_LISTING).stdout.strip()
    assert sh(client.name, tamper).returncode == 0
    assert client.listing().strip() != sh(client.name, "cat " + GUARD_LISTING).stdout.strip(), "no tamper"
    assert wait_for(lambda: guard_reloads(client) != before, timeout=20), "the guard did not react"
    assert client.listing().strip() == sh(client.name, "cat " + GUARD_LISTING).stdout.strip()
    assert locked(client)
    steady = guard_reloads(client)
    time.sleep(12)  # two more guard runs on intact rules must not reload them
    assert guard_reloads(client) == steady


def test_unconfirmed_apply_rolls_back():
    """killswitch_safe_apply_timeout: an apply the controller cannot confirm is undone by the host."""
    persisted = {c: sh(c.name, "cat " + c.ruleset).stdout for c in CLIENTS}
    for c in CLIENTS:  # the guard would also undo the change
        sh(c.name, PAUSE_GUARD)
    try:
        result = run_playbook(REHEARSE)
        assert result.returncode == 0, result.stdout[-3000:]
        # Each host loads the new rules a second after the module replied (module_utils/rollback.py), and
        # rolls back 6 s later: first see every host apply, then every host roll back.
        for c in CLIENTS:
            assert wait_for(lambda: "198.18.99.0/24" in c.listing(), 5), "%s: the rehearsal did not apply" % c.name
        for c in CLIENTS:
            assert sh(c.name, "cat /run/netlock-killswitch/rollback/status").stdout.strip() in ("applied", "rolled back")
            assert wait_for(lambda: "198.18.99.0/24" not in c.listing(), 20), \
                "%s: the host kept an unconfirmed ruleset" % c.name
            assert sh(c.name, "cat " + c.ruleset).stdout == persisted[c]
            assert c.listing().strip() == sh(c.name, "cat " + GUARD_LISTING).stdout.strip()
    finally:
        for c in CLIENTS:
            sh(c.name, "systemctl start netlock-killswitch-guard.timer")
    for c in CLIENTS:
        assert locked(c)


def test_still_locked_after_a_restart(client):
    restart(client.name)
    assert client.loaded(), "the boot unit did not load the rules"
    assert sh(client.name, "systemctl is-active netlock-killswitch.service").stdout.strip() == "active"
    assert client.listing().strip() == sh(client.name, "cat " + GUARD_LISTING).stdout.strip()
    assert locked(client)


def test_absent_restores_open_traffic():
    result = run_playbook(CONVERGE, "-e", "killswitch_state=absent")
    assert result.returncode == 0, result.stdout[-3000:]
    try:
        for c in CLIENTS:
            assert not c.loaded()
            assert "killswitch" not in sh(c.name, "iptables-save; ip6tables-save; nft list ruleset").stdout
            leftovers = sh(c.name, "ls -d /etc/netlock-killswitch /run/netlock-killswitch "
                                   "/etc/systemd/system/netlock-killswitch* 2>/dev/null").stdout
            assert leftovers == "", "%s: state absent left files behind: %s" % (c.name, leftovers)
            marker = canary()
            reached, capture = leaks(c, marker)
            assert reached and capture.saw(marker)
    finally:
        result = run_playbook(CONVERGE)
        assert result.returncode == 0, result.stdout[-3000:]


def test_reconverge_changes_nothing():
    result = run_playbook(CONVERGE)
    assert result.returncode == 0 and "changed=0" in result.stdout, result.stdout[-3000:]


def test_drift_is_reported_and_enforced():
    """A hand edit to the live table is drift: reported (and failing) by default, undone when enforced."""
    drift = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "drift.yml")
    # The on-host guard would repair the table within seconds; the fleet report must catch it without.
    for c in CLIENTS:
        assert sh(c.name, "%s && %s" % (PAUSE_GUARD, DRIFT[c.backend])).returncode == 0
    try:
        reported = run_playbook(drift, "-e", "killswitch_rollout_hosts=killswitch")
        assert reported.returncode != 0 and "kill switch drift found" in reported.stderr, reported.stdout[-3000:]
        assert "2 of 2 hosts drifted" in reported.stdout
    finally:
        enforced = run_playbook(drift, "-e", "killswitch_rollout_hosts=killswitch", "-e", "killswitch_drift_enforce=true")
    assert enforced.returncode == 0, enforced.stdout[-3000:]
    clean = run_playbook(drift, "-e", "killswitch_rollout_hosts=killswitch")
    assert clean.returncode == 0 and "0 of 2 hosts drifted" in clean.stdout, clean.stdout[-3000:]
    for c in CLIENTS:
        assert locked(c)
