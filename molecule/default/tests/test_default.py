"""The kill switch proven by traffic: a peer container captures what the client sends."""

import os
import time

import pytest

from lab.probe import Capture, canary, icmp_probe, killswitch_off, leak_filter, nft_table, restart, run_playbook, sh, tcp_probe, udp_probe, wait_for

CLIENT, PEER = "ks-default-client", "ks-default-peer"
CLIENT_V4, CLIENT_V6 = "198.18.20.10", "2001:db8:20::10"
PEER_V4, PEER_V6, PEER_TUNNEL = "198.18.20.20", "2001:db8:20::20", "198.18.200.1"
# Everything the client sends on the lab link except its (marked) WireGuard traffic to the endpoint.
LEAK_FILTER = leak_filter([CLIENT_V4, CLIENT_V6], allowed=["udp and dst port 51820"])
SCENARIO = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", "")
CONVERGE, PREPARE, REHEARSE = (os.path.join(SCENARIO, name)
                               for name in ("converge.yml", "prepare.yml", "rehearse-rollback.yml"))

testinfra_hosts = ["docker://" + CLIENT]


def tunnel(state):
    if state == "up" and sh(CLIENT, "ip link show wg0").returncode != 0:
        # A restart (this run's or an earlier one's) took wireguard-go with it: set the tunnel up again.
        result = run_playbook(PREPARE)
        assert result.returncode == 0, result.stdout[-3000:]
    sh(CLIENT, "ip link set wg0 %s" % state)


def probe_everything(marker):
    """TCP, UDP, ICMP and DNS over IPv4 and IPv6 to the peer's LAN address; True if any TCP got through."""
    reached = [tcp_probe(CLIENT, address, 8080, marker) for address in (PEER_V4, PEER_V6)]
    for address in (PEER_V4, PEER_V6):
        udp_probe(CLIENT, address, 9999, marker)
        udp_probe(CLIENT, address, 53, marker, count=1)
        icmp_probe(CLIENT, address, marker)
    return any(reached)


def leaks(marker):
    with Capture(PEER, LEAK_FILTER, interface="eth0") as capture:
        reached = probe_everything(marker)
    return reached, capture


def test_rules_are_loaded_with_default_drop(host):
    table = nft_table(CLIENT)
    assert table is not None, "table inet killswitch is not loaded"
    hooks = {c["chain"]["hook"]: c["chain"]["policy"] for c in table["nftables"] if "chain" in c and "hook" in c["chain"]}
    assert hooks == {"input": "drop", "output": "drop", "forward": "drop"}
    assert host.service("netlock-killswitch.service").is_enabled


def test_nothing_leaves_without_the_tunnel():
    tunnel("down")
    marker = canary()
    reached, capture = leaks(marker)
    assert not reached
    assert capture.packets == [], "leaked:\n" + "\n".join(capture.packets)

    # Positive control: the same probes without the kill switch are seen by the peer.
    with killswitch_off(CLIENT):
        control = canary()
        reached, capture = leaks(control)
    assert reached and capture.saw(control), "the probe itself is broken: nothing seen without the kill switch"


def test_traffic_passes_through_the_tunnel():
    tunnel("up")
    assert wait_for(lambda: tcp_probe(CLIENT, PEER_TUNNEL, 8080, canary()), timeout=30)
    # The tunnel does not open the LAN path: the peer's LAN address stays unreachable.
    reached, capture = leaks(canary())
    assert not reached and capture.packets == []


def test_unmarked_traffic_to_the_endpoint_is_blocked():
    """ServerIP: only the VPN client's marked packets may reach the endpoint address and port."""
    def probe_endpoint():
        marker = canary()
        with Capture(PEER, "src host %s and udp and dst port 51820" % CLIENT_V4, interface="eth0") as capture:
            udp_probe(CLIENT, PEER_V4, 51820, marker, count=5)
        return capture.saw(marker)

    assert not probe_endpoint()
    with killswitch_off(CLIENT):
        assert probe_endpoint(), "the probe itself is broken: nothing seen without the kill switch"


def guard_reloads():
    return sh(CLIENT, "journalctl -q -u netlock-killswitch-guard.service | grep -c reloading").stdout.strip()


@pytest.mark.parametrize("tamper", ["nft delete table inet killswitch", "nft insert rule inet killswitch output accept",
                                    "nft flush ruleset"])
def test_guard_puts_the_table_back(tamper):
    before = guard_reloads()
    assert sh(CLIENT, tamper).returncode == 0
    assert wait_for(lambda: guard_reloads() != before, timeout=20), "the guard did not react"
    live = sh(CLIENT, "nft list table inet killswitch | sed -E 's/counter packets [0-9]+ bytes [0-9]+/counter/'")
    assert live.stdout.strip() == sh(CLIENT, "cat /etc/netlock-killswitch/expected-table.txt").stdout.strip()
    reached, capture = leaks(canary())
    assert not reached and capture.packets == []
    steady = guard_reloads()
    time.sleep(12)  # two more guard runs on an intact table must not reload it
    assert guard_reloads() == steady


def test_unconfirmed_apply_rolls_back():
    """killswitch_safe_apply_timeout: an apply the controller cannot confirm is undone by the host."""
    persisted = sh(CLIENT, "cat /etc/netlock-killswitch/ruleset.nft").stdout
    sh(CLIENT, "systemctl stop netlock-killswitch-guard.timer")  # the guard would also undo the change
    try:
        result = run_playbook(REHEARSE)
        assert result.returncode == 0, result.stdout[-3000:]
        # The host loads the new rules a second after the module replied (module_utils/rollback.py).
        assert wait_for(lambda: "198.18.99.0/24" in sh(CLIENT, "nft list table inet killswitch").stdout, 10), \
            "the rehearsal did not apply"
        assert wait_for(lambda: "198.18.99.0/24" not in sh(CLIENT, "nft list table inet killswitch").stdout, 20), \
            "the host kept an unconfirmed ruleset"
        assert sh(CLIENT, "cat /etc/netlock-killswitch/ruleset.nft").stdout == persisted
    finally:
        sh(CLIENT, "systemctl start netlock-killswitch-guard.timer")
    reached, capture = leaks(canary())
    assert not reached and capture.packets == []


def test_still_locked_after_a_restart():
    restart(CLIENT)
    assert nft_table(CLIENT) is not None, "the boot unit did not load the table"
    assert sh(CLIENT, "systemctl is-active netlock-killswitch.service").stdout.strip() == "active"
    reached, capture = leaks(canary())
    assert not reached and capture.packets == []


def test_absent_restores_open_traffic():
    result = run_playbook(CONVERGE, "-e", "killswitch_state=absent")
    assert result.returncode == 0, result.stdout[-3000:]
    try:
        assert nft_table(CLIENT) is None
        leftovers = sh(CLIENT, "ls -d /etc/netlock-killswitch /run/netlock-killswitch /etc/systemd/system/netlock-killswitch*"
                               " 2>/dev/null").stdout
        assert leftovers == "", "state absent left files behind: %s" % leftovers
        marker = canary()
        reached, capture = leaks(marker)
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
    assert sh(CLIENT, "systemctl stop netlock-killswitch-guard.timer && "
                      "nft insert rule inet killswitch output accept").returncode == 0
    try:
        reported = run_playbook(drift, "-e", "killswitch_rollout_hosts=killswitch")
        assert reported.returncode != 0 and "kill switch drift found" in reported.stderr, reported.stdout[-3000:]
        assert "1 of 1 hosts drifted" in reported.stdout
    finally:
        enforced = run_playbook(drift, "-e", "killswitch_rollout_hosts=killswitch", "-e", "killswitch_drift_enforce=true")
    assert enforced.returncode == 0, enforced.stdout[-3000:]
    clean = run_playbook(drift, "-e", "killswitch_rollout_hosts=killswitch")
    assert clean.returncode == 0 and "0 of 1 hosts drifted" in clean.stdout, clean.stdout[-3000:]
    reached, capture = leaks(canary())
    assert not reached and capture.packets == []
