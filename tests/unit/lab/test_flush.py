"""The drift scenario's pure parts: the second lab's names and networks (lab/instance.py), what each foreign
action and tamper does on which firewall, the packet classes of the mixed stream, the summaries
(lab/flush.py), the stream's rotation (lab/agent.py --mix) and the restore clock (lab/flush_agent.py)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lab import agent, flush, flush_agent, instance, topology  # noqa: E402
from lab.firewall import Firewall  # noqa: E402

DRIFT_INVENTORY = REPO_ROOT / "molecule" / "drift" / "inventory"
LEAK_INVENTORY = REPO_ROOT / "inventories" / "lab"
NFTABLES = Firewall("nftables", "iptables-nft")
IPTABLES_NFT = Firewall("iptables", "iptables-nft")
IPTABLES_LEGACY = Firewall("iptables", "iptables-legacy")
GUARD = {"backend": "nftables", "ruleset_path": "/etc/netlock-killswitch/ruleset.nft",
         "expected_path": "/etc/netlock-killswitch/expected-table.txt", "policy_dir": "/etc/netlock-killswitch/policies"}


# --- a second lab beside the first ----------------------------------------------------------------------

def drift_topology() -> dict:
    """lab.topology as a process with NETLOCK_LAB=drift sees it (it binds its names at import)."""
    script = ("import json, lab.topology as t; print(json.dumps({'hosts': [[h.name, h.addresses] for h in t.HOSTS], "
              "'networks': [[n.name, n.v4, n.v6] for n in t.NETWORKS], 'label': t.LABEL, 'endpoint': t.ENDPOINT, "
              "'inventory': t.INVENTORY_DIR, 'clients': [c.name for c in t.CLIENTS]}))")
    env = dict(os.environ, NETLOCK_LAB="drift")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def test_the_drift_lab_clashes_with_no_other_lab() -> None:
    drift = drift_topology()
    names = [name for name, _addresses in drift["hosts"]] + [n[0] for n in drift["networks"]]
    assert all(name.startswith("ks-drift-") for name in names)
    assert not set(names) & ({h.name for h in topology.HOSTS} | {n.name for n in topology.NETWORKS})
    assert drift["label"] == "netlock.lab=drift" != topology.LABEL
    others = [topology.LAN.v4, topology.LAN.v6, topology.INET.v4, topology.INET.v6, "198.18.20.0/24",
              "2001:db8:20::/64", "198.18.30.0/24", "2001:db8:30::/64"]  # leak, default, fleet labs
    for _name, v4, v6 in drift["networks"]:
        for subnet in (v4, v6):
            net = ipaddress.ip_network(subnet)
            assert net.subnet_of(ipaddress.ip_network("198.18.0.0/15" if net.version == 4 else "2001:db8::/32"))
            assert not any(net.overlaps(ipaddress.ip_network(o)) for o in others if ipaddress.ip_network(o).version
                           == net.version), subnet


def test_every_host_keeps_its_place_in_its_network() -> None:
    drift = dict((name, addresses) for name, addresses in drift_topology()["hosts"])
    for host in (h for h in topology.HOSTS if h.vpn.kind == "wireguard"):  # the drift lab has no OpenVPN client
        moved = drift[instance.rename(host.name, instance.INSTANCES["drift"])]
        for (net, (v4, v6)), (moved_net, (mv4, mv6)) in zip(host.addresses.items(), moved.items()):
            assert moved_net == "ks-drift-" + net[len("ks-"):]
            assert v4.rsplit(".", 1)[1] == mv4.rsplit(".", 1)[1] and v6.rsplit(":", 1)[1] == mv6.rsplit(":", 1)[1]


def test_move_address() -> None:
    assert instance.move_address("198.18.1.254", "198.18.1.0/24", "198.18.40.0/24") == "198.18.40.254"
    assert instance.move_address("2001:db8:1::11", "2001:db8:1::/64", "2001:db8:40::/64") == "2001:db8:40::11"
    with pytest.raises(ValueError):
        instance.move_address("198.18.2.10", "198.18.1.0/24", "198.18.40.0/24")
    with pytest.raises(ValueError):
        instance.move_address("198.18.1.10", "198.18.1.0/24", "198.18.40.0/23")
    with pytest.raises(ValueError):
        instance.instance("nonesuch")


def test_the_drift_inventory_is_the_lab_inventory_moved() -> None:
    """Same hosts (renamed), same firewalls, same policy with the drift lab's addresses."""
    drift = drift_topology()
    hosts = yaml.safe_load((DRIFT_INVENTORY / "hosts.yml").read_text())["all"]["children"]["lab_clients"]["hosts"]
    assert list(hosts) == drift["clients"] == ["ks-drift-client%d" % i for i in (1, 2, 3)]
    assert drift["inventory"] == "molecule/drift/inventory"
    platforms = yaml.safe_load((REPO_ROOT / "molecule" / "drift" / "molecule.yml").read_text())["platforms"]
    assert [p["name"] for p in platforms] == drift["clients"]
    for leak_client in (c for c in topology.CLIENTS if c.vpn.kind == "wireguard"):
        drift_name = instance.rename(leak_client.name, instance.INSTANCES["drift"])
        assert yaml.safe_load((DRIFT_INVENTORY / "host_vars" / (drift_name + ".yml")).read_text()) == \
            yaml.safe_load((LEAK_INVENTORY / "host_vars" / (leak_client.name + ".yml")).read_text())
    leak = yaml.safe_load((LEAK_INVENTORY / "group_vars" / "all.yml").read_text())
    moved = yaml.safe_load((DRIFT_INVENTORY / "group_vars" / "all.yml").read_text())
    assert moved.pop("killswitch_guard_interval") == 5
    lan, inet = (instance.INSTANCES["drift"].networks[n] for n in ("ks-lan", "ks-inet"))
    leak["killswitch_endpoints"][0]["address"] = instance.move_address(
        leak["killswitch_endpoints"][0]["address"], topology.INET.v4, inet[0])
    assert moved["killswitch_endpoints"][0]["address"] == drift["endpoint"][0]
    leak["killswitch_lan_cidrs"] = list(lan)
    assert moved == leak


# --- actions and tampers --------------------------------------------------------------------------------

def names(actions, fw):
    return [a.name for a in actions if a.applies(fw)]


def test_foreign_actions_per_firewall() -> None:
    assert names(flush.FOREIGN_ACTIONS, NFTABLES) == ["flush-ruleset", "delete-table", "restart-nftables",
                                                      "docker-start"]
    for fw in (IPTABLES_NFT, IPTABLES_LEGACY):
        assert names(flush.FOREIGN_ACTIONS, fw) == ["flush-ruleset", "iptables-flush", "restart-nftables",
                                                    "docker-start"]


def test_which_controls_must_leak() -> None:
    assert flush.must_leak_without_fence("flush-ruleset", NFTABLES)
    assert flush.must_leak_without_fence("flush-ruleset", IPTABLES_NFT)
    assert not flush.must_leak_without_fence("flush-ruleset", IPTABLES_LEGACY)  # its rules are not in nftables
    assert flush.must_leak_without_fence("delete-table", NFTABLES)
    assert flush.must_leak_without_fence("iptables-flush", IPTABLES_LEGACY)
    assert not flush.must_leak_without_fence("docker-start", IPTABLES_NFT)


def test_docker_imitation_touches_both_families_and_is_undone() -> None:
    for tool in ("iptables", "ip6tables"):
        assert tool in flush.DOCKER_START and tool in flush.DOCKER_REPAIR
    for rule in ("-P FORWARD DROP", "-N $c", "-I FORWARD 1 -j DOCKER-USER", "-I FORWARD 1 -j ACCEPT",
                 "-I OUTPUT 1 -j ACCEPT"):
        assert rule in flush.DOCKER_START
    for undo in ("'FORWARD -j ACCEPT'", "'OUTPUT -j ACCEPT'", "-X $c", "-P FORWARD $(cat"):
        assert undo in flush.DOCKER_REPAIR


def test_tamper_matrix() -> None:
    nft = flush.tampers(GUARD)
    assert [a.name for a in nft] == ["flush-ruleset", "delete-table", "delete-rule", "intruder-accept", "boot-unit",
                                     "file-edit", "timer-stop", "watcher-stop"]
    assert all(a.kinds and a.part for a in nft if a.name != "intruder-accept")
    assert set(k for a in nft for k in a.kinds) <= set(flush.KINDS)
    assert {a.part for a in nft if a.part} <= {"table", "file", "boot_unit", "guard", "watcher", "fence"}
    legacy = flush.tampers(dict(GUARD, backend="iptables"))
    assert "flush-ruleset" not in names(legacy, IPTABLES_LEGACY)
    assert "flush-ruleset" in names(legacy, IPTABLES_NFT)
    by_name = {a.name: a for a in legacy}
    assert "iptables" in by_name["delete-table"].command and "nft" not in by_name["delete-table"].command
    assert by_name["delete-rule"].command.startswith("n=$(iptables")
    assert "/etc/netlock-killswitch/policies/$d/ruleset" in by_name["file-edit"].until
    # The report round holds every table tamper once and the file and boot unit on every client.
    held = [name for names_ in flush.REPORT_ROUND.values() for name in names_]
    assert {"delete-table", "flush-ruleset", "delete-rule"} <= set(held)
    assert all({"file-edit", "boot-unit"} <= set(n) for n in flush.REPORT_ROUND.values())


# --- what the detector saw ------------------------------------------------------------------------------

MARKERS = {"host": "NETLOCK-aaaa", "guest": "NETLOCK-bbbb"}


@pytest.mark.parametrize("line, expected", [
    ("1796331889.560459 IP 198.18.40.11.50238 > 198.18.41.20.9999: UDP, length 28", ("host", "ipv4", "udp")),
    ("1796331889.560459 IP 198.18.40.11.50238 > 198.18.41.20.9998: UDP, length 28", ("guest", "ipv4", "udp")),
    ("1796331889.563749 IP6 2001:db8:40::11.47895 > 2001:db8:40::5.53: 20044+ A? netlock-bbbb.leak.test. (52)",
     ("guest", "ipv6", "dns")),
    ("1796331889.566104 IP 198.18.40.11.49188 > 198.18.41.20.8080: Flags [S], seq 4037749884, length 0",
     ("host", "ipv4", "tcp")),
    ("1796331889.566104 IP6 2001:db8:40::11.49188 > 2001:db8:41::20.8081: Flags [S], seq 1, length 0",
     ("guest", "ipv6", "tcp")),
    ("1796331889.566104 eth0 Out IP 198.18.50.2.49188 > 198.18.41.20.8081: Flags [S], seq 1, length 0",
     ("guest", "ipv4", "tcp")),
    ("1796331889.563749 IP 198.18.40.11.47895 > 198.18.40.5.53: 20044+ A? other.example. (52)", None),
    ("1796331889.563749 IP6 fe80::1 > ff02::1: ICMP6, neighbor advertisement", None),
    ("  0x0000:  4500 0054", None),
])
def test_classify(line, expected) -> None:
    assert flush.classify(line, MARKERS) == expected


def test_count_families() -> None:
    lines = ["1.0 IP 198.18.40.11.1 > 198.18.41.20.9999: UDP, length 28"] * 3 + ["2.0 IP6 fe80::1 > ff02::1: ICMP6, x"]
    assert flush.count_families(lines, MARKERS) == {"host ipv4 udp": 3, "other": 1}
    assert len(flush.ALL_FAMILIES) == 12


# --- summaries ------------------------------------------------------------------------------------------

def measurement(times, leaked=0, sent=12000, seconds=10.0):
    m = flush.Measurement("ks-drift-client1", "nftables", "flush-ruleset", "nft flush ruleset", True, leaked=leaked,
                          sent=sent, stream_seconds=seconds)
    m.rounds = [flush.Round(0, 1, t, t is not None, t is not None, True, 0) for t in times]
    return m


def test_summaries_and_table() -> None:
    m = measurement([0.030, 0.010, 0.020, None])
    assert m.restore_times == [0.030, 0.010, 0.020]
    assert flush.restore_summary(m.restore_times) == {"median_ms": 20.0, "max_ms": 30.0}
    assert flush.restore_summary([]) == {"median_ms": None, "max_ms": None}
    assert not m.all_restored and m.rate == 1200
    row = flush.table_rows([m])[0]
    assert row[:9] == ("ks-drift-client1", "nftables", "nft flush ruleset", "on", "3/4", "3", "0", "20", "30")
    document = flush.as_document(m)
    assert document["median_ms"] == 20.0 and document["rounds_restored"] == 3 and document["rate_pps"] == 1200
    json.dumps(document)
    header, rule, row = flush.markdown_table([m]).split("\n")
    assert rule == "|" + "---|" * (len(flush.TABLE_HEADER) - 1) and header.count("|") == row.count("|") == len(flush.TABLE_HEADER)


def test_tables_from_the_written_document() -> None:
    m = measurement([0.030, 0.010, 0.020, None])
    document = json.loads(json.dumps({"foreign_actions": [flush.as_document(m)], "control_fence_off": []}))
    back = flush.from_document(document["foreign_actions"][0])
    assert back == m and flush.table_rows([back]) == flush.table_rows([m])
    text = flush.markdown_report(document)
    assert text.startswith("Fence on:") and "Control" not in text and flush.markdown_table([m]) in text


def test_metrics_journal_and_report_parsing() -> None:
    text = ('# TYPE netlock_killswitch_drift_events_total counter\n'
            'netlock_killswitch_drift_events_total{kind="table_missing"} 3\n'
            'netlock_killswitch_drift_events_total{kind="file_changed"} 0\n'
            'netlock_killswitch_restores_total 3\n')
    assert flush.parse_metrics(text) == {"table_missing": 3, "file_changed": 0}
    journal = ("netlock-killswitch drift kind=table_missing table=killswitch backend=nftables: x; restored: y\n"
               "netlock-killswitch watch: started\n")
    assert flush.logged_kinds(journal) == ["table_missing"]
    report = {"hosts": [{"host": "a", "drifted_parts": ["table", "file"]},
                        {"host": "b", "parts": {"table": {"in_sync": True}, "guard": {"in_sync": False}}}]}
    assert flush.report_parts(report, "a") == ["table", "file"]
    assert flush.report_parts(report, "b") == ["guard"]
    assert flush.report_parts(report, "c") is None


# --- the stream's rotation and the restore clock ----------------------------------------------------------

def test_mixed_stream_rotation() -> None:
    args = argparse.Namespace(target=["198.18.41.20", "2001:db8:41::20"], udp_port=[9999], tcp_port=[8080],
                              dns=["198.18.40.5", "2001:db8:40::5"])
    kinds = agent.mix_kinds(args)
    assert len(kinds) == 6
    assert {(proto, ":" in address) for proto, address, _port in kinds} == {
        (p, v6) for p in ("tcp", "udp", "dns") for v6 in (False, True)}


class Verdicts:
    """An InSync stand-in: the verdicts in order, then the last one for ever."""

    def __init__(self, verdicts, delay=0.0):
        self.verdicts, self.delay, self.polls = list(verdicts), delay, 0

    def __call__(self) -> bool:
        time.sleep(self.delay)
        self.polls += 1
        return self.verdicts.pop(0) if len(self.verdicts) > 1 else self.verdicts[0]


def clock_args(**overrides):
    values = dict(action="true", timeout=2.0, interval=0.01, repair="", settle=0.0, inflight=3)
    values.update(overrides)
    return argparse.Namespace(**values)


def test_restore_clock_waits_for_the_change_then_the_return() -> None:
    # in sync before, then out of sync for a while, then back
    verdicts = [True] + [False] * 10 + [True]
    result = flush_agent.one_round(clock_args(action="sleep 0.05"), Verdicts(verdicts))
    assert result["in_sync_before"] and result["changed"] and result["restored"]
    assert 0.05 <= result["seconds"] < 1.0
    assert result["action_rc"] == 0


def test_restore_clock_without_any_change() -> None:
    result = flush_agent.one_round(clock_args(), Verdicts([True]))
    assert result["restored"] and not result["changed"] and result["seconds"] == 0.0


def test_restore_clock_gives_up_at_the_timeout() -> None:
    result = flush_agent.one_round(clock_args(timeout=0.3, action="exit 3"), Verdicts([True, False]))
    assert result["changed"] and not result["restored"] and result["seconds"] is None
    assert result["action_rc"] == 3


def test_restore_clock_counts_from_when_a_slow_poll_began() -> None:
    """Polls that take longer than the interval overlap; the restore time is still within an interval or two."""
    verdicts = [True] + [False] * 20 + [True]
    start = time.monotonic()
    result = flush_agent.one_round(clock_args(), Verdicts(verdicts, delay=0.05))
    assert result["restored"] and result["changed"]
    assert result["seconds"] < time.monotonic() - start


def test_which_controls_open_the_host() -> None:
    assert [a.name for a in flush.FOREIGN_ACTIONS if a.applies(NFTABLES) and flush.opens_without_fence(a.name, NFTABLES)] \
        == ["flush-ruleset", "delete-table", "restart-nftables"]
    assert [a.name for a in flush.FOREIGN_ACTIONS
            if a.applies(IPTABLES_NFT) and flush.opens_without_fence(a.name, IPTABLES_NFT)] \
        == ["flush-ruleset", "iptables-flush", "restart-nftables", "docker-start"]
    assert [a.name for a in flush.FOREIGN_ACTIONS
            if a.applies(IPTABLES_LEGACY) and flush.opens_without_fence(a.name, IPTABLES_LEGACY)] \
        == ["iptables-flush", "docker-start"]
    for fw in (NFTABLES, IPTABLES_NFT, IPTABLES_LEGACY):  # every control that must see all families opens the host
        assert all(flush.opens_without_fence(a.name, fw) for a in flush.FOREIGN_ACTIONS
                   if a.applies(fw) and flush.must_leak_without_fence(a.name, fw))
