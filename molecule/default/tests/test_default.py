"""The kill switch proven by traffic on each Linux backend: a peer container captures what each client sends.

ks-default-client runs the nftables backend, ks-default-iptables the iptables one (iptables-nft, the Debian
default alternative); the leak lab adds iptables-legacy.  Every test runs against both, each with its own
positive control, which must see each probe (protocol, destination, port) it vouches for.

The probes go to a target on the peer (TARGET_V4, TARGET_V6) whose IPv4 address the client routes into the
tunnel (prepare.yml): with the tunnel up they travel inside it; with it down its route is gone and the target
is reached on the LAN link, so "tunnel down" is a real failover that only the kill switch stops.
"""

import contextlib
import fcntl
import json
import os
import re
import time
from dataclasses import dataclass

import pytest

from lab.cases import wireguard_message_bpf
from lab.probe import (PAUSE_GUARD, Capture, canary, icmp_probe, leak_filter, nft_table, restart, run_playbook, sh, tcp_probe,
                       tcp_probe_command, udp_probe, udp_probe_command, unseen, wait_for)

PEER = "ks-default-peer"
PEER_V4, PEER_V6, PEER_TUNNEL = "198.18.20.20", "2001:db8:20::20", "198.18.200.1"
TARGET_V4, TARGET_V6 = "198.18.20.21", "2001:db8:20::21"  # on the peer; IPv4 routed into the tunnel
SCENARIO = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", "")
CONVERGE, PREPARE, REHEARSE, VERIFY = (os.path.join(SCENARIO, name) for name in (
    "converge.yml", "prepare.yml", "rehearse-rollback.yml", "verify-killswitch.yml"))
GUARD_LISTING = "/etc/netlock-killswitch/expected-table.txt"


@dataclass(frozen=True)
class Client:
    name: str
    v4: str
    v6: str
    backend: str
    tunnel_address: str

    @property
    def ruleset(self):
        return "/etc/netlock-killswitch/ruleset." + ("nft" if self.backend == "nftables" else "sh")

    @property
    def leak_filter(self):
        # Everything the client sends on the lab link except WireGuard messages to the endpoint.
        return leak_filter([self.v4, self.v6], allowed=["dst host %s and %s" % (PEER_V4, wireguard_message_bpf(51820))])

    def listing(self):
        """The live rules as the guard compares them (counter values removed)."""
        if self.backend == "nftables":
            # both our tables (inet, then bridge: bridged guests), as the guard records them
            command = ("{ nft list table inet killswitch; nft list table bridge killswitch 2>/dev/null; } "
                       "| sed -E 's/counter packets [0-9]+ bytes [0-9]+/counter/'")
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


CLIENTS = [Client("ks-default-client", "198.18.20.10", "2001:db8:20::10", "nftables", "198.18.200.2"),
           Client("ks-default-iptables", "198.18.20.11", "2001:db8:20::11", "iptables", "198.18.200.3")]
testinfra_hosts = ["docker://" + c.name for c in CLIENTS]
# How another tool (or a person) breaks the rules, per backend: each must be repaired by the guard.
TAMPERS = {
    "nftables": ["nft delete table inet killswitch", "nft insert rule inet killswitch output accept",
                 "nft flush ruleset"],
    "iptables": ["iptables -D OUTPUT -j killswitch-out", "iptables -I OUTPUT 1 -j ACCEPT",
                 "iptables -I killswitch-out 1 -j ACCEPT", "iptables -F", "ip6tables -F killswitch-out"],
}
# PAUSE_GUARD (lab/probe.py) stops the timer, a guard run under way (it would undo the tamper) and the watcher
# (its reaction to ruleset changes, and the fence) until they all stay stopped.
RESUME_GUARD = "systemctl start netlock-killswitch-guard.timer netlock-killswitch-watch.service"
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
        result = sh(client.name, "systemctl restart netlock-killswitch.service && " + RESUME_GUARD)
        assert result.returncode == 0 and client.loaded(), result.stderr


def tunnel(client, state):
    if state == "up" and sh(client.name, "ip link show wg0").returncode != 0:
        # A restart (this run's or an earlier one's) took wireguard-go with it: set the tunnel up again.
        result = run_playbook(PREPARE)
        assert result.returncode == 0, result.stdout[-3000:]
    sh(client.name, "ip link set wg0 %s" % state)
    if state == "up":  # a link set down loses its routes
        assert sh(client.name, "ip route replace %s/32 dev wg0" % TARGET_V4).returncode == 0


# Every probe as lab.probe.unseen names it: (protocol, destination, port; 0 for ICMP).
PROBES = [[protocol, address, port] for address in (TARGET_V4, TARGET_V6)
          for protocol, port in (("tcp", 8080), ("udp", 9999), ("udp", 53), ("icmp", 0))]


def probe_everything(client, marker):
    """TCP, UDP, ICMP and DNS over IPv4 and IPv6 to the target (PROBES); True if any TCP got through."""
    reached = [tcp_probe(client.name, address, 8080, marker) for address in (TARGET_V4, TARGET_V6)]
    for address in (TARGET_V4, TARGET_V6):
        udp_probe(client.name, address, 9999, marker)
        udp_probe(client.name, address, 53, marker, count=1)
        icmp_probe(client.name, address, marker)
    return any(reached)


def leaks(client, marker):
    with Capture(PEER, client.leak_filter, interface="eth0") as capture:
        reached = probe_everything(client, marker)
    return reached, capture


def locked(client):
    """The peer sees nothing from the client outside the tunnel (what goes inside it is the tunnel's)."""
    _reached, capture = leaks(client, canary())
    return capture.packets == []


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
    assert TARGET_V4 not in sh(client.name, "ip route show dev wg0 2>/dev/null").stdout, "the tunnel route stayed"
    marker = canary()
    reached, capture = leaks(client, marker)
    assert not reached
    assert capture.packets == [], "leaked:\n" + "\n".join(capture.packets)

    # Positive control: the same probes without the kill switch are seen by the peer, each of them.
    with killswitch_off(client):
        reached, capture = leaks(client, canary())
    missing = unseen(PROBES, capture.packets)
    assert reached and not missing, "the control did not see: %s" % missing


def test_traffic_passes_through_the_tunnel(client):
    tunnel(client, "up")
    assert wait_for(lambda: tcp_probe(client.name, PEER_TUNNEL, 8080, canary()), timeout=30)
    # The target's IPv4 probes travel inside the tunnel (the peer sees them arrive on its wg0 from the client's
    # tunnel address) and nothing leaves outside it: IPv6 (blocked by the policy) neither.
    marker = canary()
    with Capture(PEER, "src host %s" % client.tunnel_address, interface="wg0") as inside:
        reached, outside = leaks(client, marker)
    assert reached, "TCP to %s did not get through the tunnel" % TARGET_V4
    missing = unseen([p for p in PROBES if p[1] == TARGET_V4], inside.packets)
    assert not missing, "not seen inside the tunnel: %s" % missing
    assert outside.packets == [], "left outside the tunnel:\n" + "\n".join(outside.packets)


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


# killswitch_app_exceptions (molecule.yml, nftables client): the lab service (prepare.yml) may reach the target's
# TCP and UDP port 8080 outside the tunnel; the guard fills its cgroup set (its drop-in before each start).
APP_SERVICE = "netlock-lab-backup.service"
APP_DIR = "/run/netlock-lab-backup"
APP_DROPIN = "/etc/systemd/system/%s.d/netlock-killswitch-app.conf" % APP_SERVICE
APP_COUNT = 3  # TCP connections and UDP datagrams per run, each with its own marker


def app_markers(marker):
    return ["%s-%s%d" % (marker, protocol, i) for protocol in ("tcp", "udp") for i in range(1, APP_COUNT + 1)]


def app_send(client, marker, how):
    """The probes to the exception's destination, sent by the lab service ("service": systemctl restart, a new cgroup
    each time) or by another process ("shell": docker exec; "scope": a transient scope of systemd's); the peer's
    capture of everything the client sends to that address (any port) on the LAN link."""
    probes = [tcp_probe_command(TARGET_V4, 8080, m) if "-tcp" in m else udp_probe_command(TARGET_V4, 8080, m, count=1)
              for m in app_markers(marker)]
    # The sender notes its cgroup's id (the inode of its cgroup v2 directory) before it sends.
    script = ["mkdir -p %s" % APP_DIR,
              "stat -c %%i /sys/fs/cgroup/unified$(sed -n 's/^0:://p' /proc/self/cgroup) >> %s/ids" % APP_DIR] + probes
    assert sh(client.name, "mkdir -p %s && cat > %s/send" % (APP_DIR, APP_DIR) + " <<'EOF'\n%s\nEOF" % "\n".join(script)).returncode == 0
    command = {"service": "systemctl restart " + APP_SERVICE, "shell": "sh %s/send" % APP_DIR,
               "scope": "systemd-run --quiet --scope --unit=netlock-lab-other-%s sh %s/send" % (marker.lower(), APP_DIR)}[how]
    with Capture(PEER, "src host %s and dst host %s" % (client.v4, TARGET_V4), interface="eth0") as capture:
        result = sh(client.name, command, timeout=90)
    assert how != "service" or result.returncode == 0, result.stderr
    return capture


def app_cgroup_members(client):
    """The members of the cgroup sets in the main table and the fence, by table."""
    members = {}
    for table in ("killswitch", "killswitch_fence"):
        document = nft_table(client.name, table) or {"nftables": []}
        members[table] = [str(element) for item in document["nftables"] if item.get("set", {}).get("type") == "cgroupsv2"
                          for element in item["set"].get("elem", [])]
    return members


def test_app_exception_admits_only_its_service():
    """A per-app exception under real systemd: with the tunnel down, the lab service reaches the exception's
    destination (each probe seen), also after a restart (a new cgroup); the same probes from any other process
    are blocked, and are seen without the kill switch (control); once the service stopped, no set holds an id."""
    client = CLIENTS[0]
    assert sh(client.name, "test -f " + APP_DROPIN).returncode == 0, "no drop-in for " + APP_SERVICE
    tunnel(client, "down")
    sh(client.name, "rm -f %s/ids" % APP_DIR)
    for run in (1, 2):  # the second start makes a new cgroup, which the drop-in puts in the set before it sends
        marker = canary()
        capture = app_send(client, marker, "service")
        missing = [m for m in app_markers(marker) if not capture.saw(m)]
        assert not missing, "run %d: the service's probes were not seen: %s" % (run, missing)
    ids = sh(client.name, "cat %s/ids" % APP_DIR).stdout.split()
    assert len(ids) == 2 and ids[0] != ids[1], "the restart did not make a new cgroup: %s" % ids

    # The service stopped: its cgroup is gone, and the guard leaves its sets empty (within the watcher's 5 s).
    assert wait_for(lambda: app_cgroup_members(client) == {"killswitch": [], "killswitch_fence": []}, timeout=15), \
        "a stale cgroup id stayed: %s" % app_cgroup_members(client)
    for how in ("shell", "scope"):
        capture = app_send(client, canary(), how)
        assert capture.packets == [], "%s leaked:\n%s" % (how, "\n".join(capture.packets))

    # Positive control: those very probes from another process, seen without the kill switch, each of them.
    with killswitch_off(client):
        marker = canary()
        capture = app_send(client, marker, "shell")
    missing = [m for m in app_markers(marker) if not capture.saw(m)]
    assert not missing, "the control did not see: %s" % missing


# What killswitch_verify probes on the uplink: each family with each protocol.
UPLINK = {(family, protocol) for family in (4, 6) for protocol in ("tcp", "udp", "icmp", "dns")}


def verify_results(tmp_path):
    """killswitch_verify on every client, as the role runs it and with on-link lab addresses (verify-killswitch.yml)."""
    result = run_playbook(VERIFY, "-e", "verify_report_dir=%s" % tmp_path)
    return result, {c.name: json.loads((tmp_path / ("%s.json" % c.name)).read_text()) for c in CLIENTS}


def test_verify_proves_the_kill_switch_by_traffic(tmp_path):
    for c in CLIENTS:
        tunnel(c, "up")
    result, found = verify_results(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    for c in CLIENTS:
        role, lab = found[c.name]["role"], found[c.name]["lab"]
        for verified in (role, lab):
            assert verified["ok"] and verified["open_paths"] == [], "%s: %s" % (c.name, verified["msg"])
        refused = {(p["family"], p["protocol"]) for p in lab["probes"]
                   if p["interface"] == "eth0" and p["outcome"] == "refused"}
        assert refused == UPLINK, (c.name, lab["checks"])
        # Positive control: the same probes through the tunnel are not refused.
        through = [p for p in role["probes"] if p["interface"] == "wg0" and p["family"] == 4]
        assert through and {p["outcome"] for p in through} == {"sent"}, "%s: %s" % (c.name, through)


def test_verify_fails_naming_the_open_paths_after_absent(tmp_path):
    result = run_playbook(CONVERGE, "-e", "killswitch_state=absent")
    assert result.returncode == 0, result.stdout[-3000:]
    try:
        result, found = verify_results(tmp_path)
        assert result.returncode != 0, "the verify passed on hosts without the kill switch"
        for c in CLIENTS:
            role, lab = found[c.name]["role"], found[c.name]["lab"]
            assert not role["ok"] and not lab["ok"]
            assert "eth0 IPv4 UDP to 198.51.100.1:443 was sent: the kill switch does not block it" in role["msg"], role["msg"]
            assert {(p["family"], p["protocol"]) for p in lab["open_paths"] if p["interface"] == "eth0"} == UPLINK
            assert "eth0 IPv6 UDP to [2001:db8:20::99]:443" in {p["path"] for p in lab["open_paths"]}
            assert "netlock-killswitch.service is not enabled" in lab["msg"], lab["msg"]
    finally:
        result = run_playbook(CONVERGE)
        assert result.returncode == 0, result.stdout[-3000:]


def guard_reloads(client):
    return sh(client.name, "journalctl -q -u netlock-killswitch-guard.service -u netlock-killswitch-watch.service "
                           "| grep -c 'drift kind='").stdout.strip()


@pytest.mark.parametrize("client,tamper", [(c, t) for c in CLIENTS for t in TAMPERS[c.backend]],
                         ids=lambda v: v.backend if isinstance(v, Client) else v)
def test_guard_puts_the_rules_back(client, tamper):
    before = guard_reloads(client)
    assert client.listing().strip() == sh(client.name, "cat " + GUARD_LISTING).stdout.strip()
    assert sh(client.name, tamper).returncode == 0
    # The watcher repairs within milliseconds, so the tamper is proven by the drift event it logs.
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
            sh(c.name, RESUME_GUARD)
    for c in CLIENTS:
        assert locked(c)


def test_still_locked_after_a_restart(client):
    restart(client.name)
    assert client.loaded(), "the boot unit did not load the rules"
    assert sh(client.name, "systemctl is-active netlock-killswitch.service").stdout.strip() == "active"
    assert client.listing().strip() == sh(client.name, "cat " + GUARD_LISTING).stdout.strip()
    # The watcher starts at boot and loads the fence of the policy in force.
    assert wait_for(lambda: sh(client.name, "nft list table inet killswitch_fence").returncode == 0, 15), \
        "no fence after the restart"
    assert sh(client.name, "systemctl is-active netlock-killswitch-watch.service").stdout.strip() == "active"
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


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def task_lines(output, title):
    """The lines Ansible printed under the task whose header names ``title`` (up to the next header), uncoloured."""
    lines, inside = [], False
    for line in ANSI.sub("", output).splitlines():
        if line.startswith("TASK ["):
            inside = title in line
        elif inside:
            lines.append(line)
    return lines


CONVERGE_PARTS = "killswitch : Converge the parts of the kill switch"


def test_reconverge_changes_nothing():
    """A second run is proven in force by one module run per host: the converge tasks are skipped."""
    result = run_playbook(CONVERGE)
    assert result.returncode == 0 and "changed=0" in result.stdout, result.stdout[-3000:]
    lines = task_lines(result.stdout, CONVERGE_PARTS)
    for c in CLIENTS:
        assert "skipping: [%s]" % c.name in lines, (c.name, lines, result.stdout[-3000:])
    assert not any(line.startswith("included:") for line in lines), lines


def test_reconverge_without_the_in_force_check_changes_nothing_either():
    """The control: with killswitch_in_force_check off every converge task runs, and still finds nothing to change."""
    result = run_playbook(CONVERGE, "-e", "killswitch_in_force_check=false")
    assert result.returncode == 0 and "changed=0" in result.stdout, result.stdout[-3000:]
    lines = task_lines(result.stdout, CONVERGE_PARTS)
    for c in CLIENTS:
        assert any(line.startswith("included:") and c.name in line for line in lines), (c.name, lines)


def test_a_changed_part_is_not_in_force_and_is_converged():
    """One file changed by hand (the guard's timer unit) takes the host out of the fast path; the converge puts it
    back, and the next run is in force again."""
    timer = "/etc/systemd/system/netlock-killswitch-guard.timer"
    client = CLIENTS[0]
    assert sh(client.name, "echo '# hand edit' >> %s" % timer).returncode == 0
    result = run_playbook(CONVERGE, "--limit", client.name)
    assert result.returncode == 0, result.stdout[-3000:]
    assert any(line.startswith("included:") for line in task_lines(result.stdout, CONVERGE_PARTS)), result.stdout[-3000:]
    assert "hand edit" not in sh(client.name, "cat %s" % timer).stdout
    again = run_playbook(CONVERGE, "--limit", client.name)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]
    assert "skipping: [%s]" % client.name in task_lines(again.stdout, CONVERGE_PARTS), again.stdout[-3000:]


def test_drift_is_reported_and_enforced(tmp_path):
    """A hand edit to the live rules is drift: reported by host and part (and failing) by default, in the printed
    table and reports/drift.json; -l reports only the limited host; enforcing undoes it; then all is clean."""
    import json  # pylint: disable=import-outside-toplevel

    drift = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "drift.yml")
    names = [c.name for c in CLIENTS]

    def report_run(name, *extra):
        path = tmp_path / ("%s.json" % name)
        result = run_playbook(drift, "-e", "killswitch_rollout_hosts=killswitch", "-e",
                              "killswitch_drift_report=%s" % path, *extra)
        output = result.stdout[-4000:] + result.stderr[-4000:]
        assert path.is_file(), "no report written (rc=%d):\n%s" % (result.returncode, output)
        return result, json.loads(path.read_text()), output

    def removed_line(diff, word):
        """A line the policy removes again (the live rules have it, the desired ones do not)."""
        return any(line.startswith("-") and not line.startswith("---") and word in line.lower()
                   for line in diff.splitlines())

    # The on-host guard and watcher would repair the rules within seconds; the fleet report must catch it without.
    for c in CLIENTS:
        pause = "%s && %s" % (PAUSE_GUARD, DRIFT[c.backend])
        assert sh(c.name, pause).returncode == 0
    try:
        reported, report, output = report_run("reported")
        assert reported.returncode == 2, output
        assert "kill switch drift found on 2 of 2 hosts" in reported.stderr, output
        assert "2 of 2 hosts drifted: %s" % ", ".join(names) in reported.stderr, output
        assert report["targets"] == names and report["drifted"] == names and report["unreachable"] == []
        assert report["ok"] is False and report["enforced"] is False
        for c, entry in zip(CLIENTS, report["hosts"]):
            assert entry["host"] == c.name and entry["result"] == "drifted" and entry["backend"] == c.backend
            assert "table" in entry["drifted_parts"] and entry["parts"]["table"]["in_sync"] is False
            assert entry["parts"]["file"]["in_sync"] is True, "only the live rules were changed: %s" % entry
            assert entry["parts"]["boot_unit"]["in_sync"] is True, entry
            assert removed_line(entry["parts"]["table"]["diff"], "accept"), entry["parts"]["table"]["diff"]
            assert len(entry["digest"]) == 16
            assert "%s table: " % c.name in reported.stderr, "the table names the host and part"

        limited, report, output = report_run("limited", "-l", CLIENTS[0].name)
        assert limited.returncode == 2, output
        assert report["targets"] == [CLIENTS[0].name] and [h["host"] for h in report["hosts"]] == [CLIENTS[0].name]
        assert report["drifted"] == [CLIENTS[0].name] and report["unreachable"] == []
        assert CLIENTS[1].name not in limited.stderr, output
    finally:
        enforced, report, output = report_run("enforced", "-e", "killswitch_drift_enforce=true")
    assert enforced.returncode == 0, output
    assert report["enforced"] is True and report["ok"] is True and report["drifted"] == names
    assert [h["result"] for h in report["hosts"]] == ["repaired", "repaired"]

    clean, report, output = report_run("clean")
    assert clean.returncode == 0 and "0 of 2 hosts drifted; 0 unreachable" in clean.stdout, output
    assert report["ok"] is True and report["drifted"] == [] and report["unreachable"] == []
    for entry in report["hosts"]:
        assert entry["result"] == "in sync" and all(part["in_sync"] and part["diff"] == ""
                                                    for part in entry["parts"].values()), entry
    for c in CLIENTS:
        assert locked(c)


def test_drift_recipe_command(tmp_path):
    """docs/drift/: the systemd service's ExecStart and the cron line are one command, run here as shipped with
    only the inventory path replaced (and the working directory, a temporary one): exit 0 on a clean fleet, 2 with
    the table on stderr (cron mails it) and the drifted host in reports/drift.json, 75 at once while the lock is held."""
    # pylint: disable=import-outside-toplevel
    import configparser
    import json
    import re
    import shlex
    import subprocess

    import yaml

    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    docs = os.path.join(project, "docs", "drift")
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str
    with open(os.path.join(docs, "netlock-killswitch-drift.service")) as handle:
        unit.read_string(handle.read())
    workdir, command = unit["Service"]["WorkingDirectory"], unit["Service"]["ExecStart"]
    cron_env, jobs = {}, []
    with open(os.path.join(docs, "cron")) as handle:
        for line in handle.read().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            assignment = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
            if assignment:
                cron_env[assignment.group(1)] = assignment.group(2)
            else:
                jobs.append(line.split(None, 6))
    assert len(jobs) == 1 and len(jobs[0]) == 7, "the cron file must hold exactly one job: %s" % jobs
    cron_command = jobs[0][6]
    assert cron_command == "cd %s && %s >/dev/null" % (workdir, command), \
        "the cron line must run the service's ExecStart unchanged, in its WorkingDirectory, stdout discarded"
    assert "%" not in cron_command, "cron turns % into a newline"
    assert "$" not in command and "%" not in command, "systemd would expand it"
    assert "MAILTO" in cron_env
    argv = shlex.split(command)
    assert argv[:5] == ["/usr/bin/flock", "-n", "-E", "75", "/run/lock/netlock-killswitch-drift.lock"], argv
    assert argv[5] == "ansible-playbook" and argv[-1] == "netlock.killswitch.drift", argv
    shipped_inventory = argv[argv.index("-i") + 1]
    lock = argv[4]
    refused = int(argv[3])

    # A real inventory of the two clients: their variables as the scenario's inventory gives them.
    hosts = {}
    for c in CLIENTS:
        shown = subprocess.run(["ansible-inventory", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--host", c.name],
                               capture_output=True, text=True, timeout=120, check=True)
        hosts[c.name] = json.loads(shown.stdout)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"killswitch": {"hosts": hosts}}}}))
    work = tmp_path / "project"
    work.mkdir()
    report = work / "reports" / "drift.json"

    def service_run(timeout=900):
        """ExecStart as systemd runs it: no shell, in WorkingDirectory."""
        return subprocess.run(shlex.split(command.replace(shipped_inventory, str(inventory))), cwd=work,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def cron_run():
        """The cron line's command as cron runs it: /bin/sh -c, with the cron file's variables (PATH kept)."""
        line = cron_command.replace(shipped_inventory, str(inventory)).replace("cd %s " % workdir, "cd %s " % work, 1)
        env = dict(os.environ, **{k: v for k, v in cron_env.items() if k not in ("PATH", "SHELL", "MAILTO")})
        return subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, timeout=900, check=False, env=env)

    clean = service_run()
    assert clean.returncode == 0, clean.stdout[-4000:] + clean.stderr[-4000:]
    written = json.loads(report.read_text())
    assert written["targets"] == [c.name for c in CLIENTS] and written["ok"] is True and written["drifted"] == []
    assert "0 of 2 hosts drifted; 0 unreachable" in clean.stdout
    assert "kill switch drift (" not in clean.stderr, "a clean run must not mail the table"

    # Held by this process (flock(2), as flock(1) takes it) and released on close: no child keeps it.
    with open(lock, "a", encoding="utf-8") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert subprocess.run(["/usr/bin/flock", "-n", lock, "true"], check=False).returncode != 0
        started = time.monotonic()
        busy = service_run(timeout=60)
        assert busy.returncode == refused and time.monotonic() - started < 5, (busy.returncode, busy.stderr)
        assert busy.stdout == "" and busy.stderr == "", "a refused run touches no host and says nothing"

    drifted = CLIENTS[1]
    pause = "%s && %s" % (PAUSE_GUARD, DRIFT[drifted.backend])
    assert sh(drifted.name, pause).returncode == 0
    try:
        mailed = cron_run()
        assert mailed.returncode == 2, mailed.stdout[-4000:] + mailed.stderr[-4000:]
        assert mailed.stdout == "", "cron's stdout is discarded"
        assert "1 of 2 hosts drifted: %s; 0 unreachable" % drifted.name in mailed.stderr.splitlines(), mailed.stderr
        assert "%s table: " % drifted.name in mailed.stderr and "kill switch drift found on 1 of 2 hosts" in mailed.stderr
        written = json.loads(report.read_text())
        assert written["drifted"] == [drifted.name] and written["unreachable"] == []
    finally:
        drift = os.path.join(project, "playbooks", "drift.yml")
        enforced = run_playbook(drift, "-e", "killswitch_rollout_hosts=killswitch", "-e", "killswitch_drift_enforce=true",
                                "-e", "killswitch_drift_report=%s" % (tmp_path / "enforced.json"))
    assert enforced.returncode == 0, enforced.stdout[-4000:] + enforced.stderr[-4000:]
    assert locked(drifted)
