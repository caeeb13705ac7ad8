"""The staged rollout (playbooks/rollout.yml) over real SSH: preflight, canary, batches, summary.

Each test runs netlock.killswitch.rollout against the fleet with a small extra inventory that spoils one
host (a bad variable, an address nobody answers on, a tunnel probe that gets no reply) and a run-wide
change (``killswitch_log_drops``) that would alter every host's table, then compares each host's table and
persisted ruleset before and after, and reads the JSON report.  The fleet is put back at the end.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re

import pytest
from conftest import ROLLOUT

from lab import fleet
from lab.probe import sh

BAD_NAME = "this-name-is-far-too-long"  # killswitch_tunnel_interfaces: at most 15 characters
CHANGE_EVERY_TABLE = '{"killswitch_log_drops": true}'
COUNTERS = re.compile(r"counter packets \d+ bytes \d+")


def unused_address(cidr: str) -> str:
    """An address in the network that nothing holds (lab hosts use .1 to .30)."""
    return str(ipaddress.ip_network(cidr)[99])


def state(host) -> str:
    """What a rollout would change on the host: the live table (without counter values) and the persisted file."""
    table = sh(host.name, "nft list table inet killswitch").stdout
    persisted = sh(host.name, "cat /etc/netlock-killswitch/ruleset.nft").stdout
    return hashlib.sha256((COUNTERS.sub("counter", table) + "\0" + persisted).encode()).hexdigest()


def states(hosts) -> dict:
    return {host.name: state(host) for host in hosts}


def extra_inventory(tmp_path, host, variables) -> str:
    """An inventory source that sets host variables on one fleet host (same group, so the host order stays)."""
    lines = ["all:", "  children:", "    fleet:", "      hosts:", "        %s:" % host.name]
    lines += ["          %s: %s" % (name, json.dumps(value)) for name, value in variables.items()]
    path = tmp_path / "extra.yml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def rollout(playbook, tmp_path, *args):
    """The rollout with its report under tmp_path; returns the run and the report."""
    report_path = tmp_path / "rollout.json"
    run = playbook(ROLLOUT, "-e", "killswitch_rollout_report=%s" % report_path, *args)
    assert report_path.is_file(), "no report written:\n" + run.tail()
    return run, json.loads(report_path.read_text())


def by_host(report) -> dict:
    return {entry["host"]: entry for entry in report["hosts"]}


def assert_every_host_listed(report, hosts):
    assert [entry["host"] for entry in report["hosts"]] == [h.name for h in hosts], report["hosts"]
    assert report["complete"] is True


@pytest.fixture(scope="module", autouse=True)
def put_the_fleet_back(playbook, fleet_hosts, tmp_path_factory):
    """Every test here spoils something on purpose: afterwards the plain rollout must converge every host again."""
    yield
    run, report = rollout(playbook, tmp_path_factory.mktemp("restore"))
    assert run.returncode == 0, run.tail()
    assert all(entry["result"] in ("ok", "changed") for entry in report["hosts"]), report["hosts"]


def test_a_bad_host_stops_the_run_before_any_host_changes(playbook, fleet_hosts, tmp_path):
    bad = fleet_hosts[1]
    before = states(fleet_hosts)
    inventory = extra_inventory(tmp_path, bad, {"killswitch_tunnel_interfaces": [BAD_NAME]})
    run, report = rollout(playbook, tmp_path, "-i", inventory, "-e", CHANGE_EVERY_TABLE)

    assert run.returncode != 0, run.tail()
    assert states(fleet_hosts) == before, "a host changed although the preflight failed:\n" + run.tail()
    # The failure names the host, the variable and the value.
    assert re.search(r"fatal: \[%s\].*killswitch_tunnel_interfaces.*%s" % (bad.name, BAD_NAME), run.output), run.tail()
    assert "Load and persist the kill switch table" not in run.output, "the rollout went past the preflight"
    assert_every_host_listed(report, fleet_hosts)
    entries = by_host(report)
    assert entries[bad.name]["result"] == "failed" and entries[bad.name]["stage"] == "preflight"
    assert "killswitch_tunnel_interfaces" in entries[bad.name]["msg"] and BAD_NAME in entries[bad.name]["msg"]
    for host in fleet_hosts:
        if host is not bad:
            assert entries[host.name]["result"] == "not run", entries[host.name]
    assert report["stopped"]["stage"] == "preflight"
    assert [stage["name"] for stage in report["stages"]] == ["preflight"]


def test_an_unreachable_host_is_reported_before_any_change(playbook, fleet_hosts, tmp_path):
    lost = fleet_hosts[-1]
    before = states(fleet_hosts)
    inventory = extra_inventory(tmp_path, lost, {"ansible_host": unused_address(fleet.FLEET.v4), "ansible_ssh_timeout": 5})
    run, report = rollout(playbook, tmp_path, "-i", inventory, "-e", CHANGE_EVERY_TABLE)

    assert run.returncode != 0, run.tail()
    assert states(fleet_hosts) == before, "a host changed although one was unreachable:\n" + run.tail()
    assert re.search(r"preflight: 1 of %d hosts did not pass \(1 unreachable.*%s: unreachable" % (len(fleet_hosts), lost.name),
                     run.output), run.tail()
    assert "Load and persist the kill switch table" not in run.output, "the rollout went past the preflight"
    assert_every_host_listed(report, fleet_hosts)
    entries = by_host(report)
    assert entries[lost.name]["result"] == "unreachable" and entries[lost.name]["stage"] == "preflight"
    assert [entries[h.name]["result"] for h in fleet_hosts if h is not lost] == ["not run"] * (len(fleet_hosts) - 1)
    assert report["stopped"]["unreachable_hosts"] == [lost.name]


def test_canary_then_batches_in_order(playbook, fleet_hosts, tmp_path):
    run, report = rollout(playbook, tmp_path, "-e", "killswitch_rollout_serial=1")

    assert run.returncode == 0, run.tail()
    assert_every_host_listed(report, fleet_hosts)
    expected = [("preflight", [h.name for h in fleet_hosts]), ("canary", [fleet_hosts[0].name])]
    expected += [("batch %d" % (i + 1), [host.name]) for i, host in enumerate(fleet_hosts) if i > 0]
    assert [(stage["name"], stage["hosts"]) for stage in report["stages"]] == expected
    for i, host in enumerate(fleet_hosts):
        entry = by_host(report)[host.name]
        assert entry["stage"] == expected[i + 1][0]
        assert entry["result"] in ("ok", "changed"), entry
        assert entry["status"]["ok"] is True and entry["status"]["table"]["matches"] is True, entry["status"]
        assert entry["digest"].startswith(entry["status"]["table"]["digest"])
    # The batches ran in that order: one post-check per host, in inventory order.
    checked = re.findall(r"TASK \[Post-check the kill switch\] \**\n(?:ok|changed|fatal): \[([^\]]+)\]", run.output)
    assert checked == [host.name for host in fleet_hosts], run.tail()
    assert "kill switch rollout: %d hosts" % len(fleet_hosts) in run.output, "the summary table is printed"


def test_a_failing_batch_stops_the_later_ones(playbook, fleet_hosts, tmp_path):
    """The canary passes, the second batch fails its post-check (no reply through the tunnel): the rest is not run."""
    failing = fleet_hosts[1]
    untouched = fleet_hosts[2:]
    before = states(fleet_hosts)
    inventory = extra_inventory(tmp_path, failing, {"killswitch_rollout_probe": unused_address(fleet.TUNNEL_V4)})
    run, report = rollout(playbook, tmp_path, "-i", inventory, "-e", CHANGE_EVERY_TABLE, "-e", "killswitch_rollout_serial=1")

    assert run.returncode != 0, run.tail()
    after = states(fleet_hosts)
    assert after[fleet_hosts[0].name] != before[fleet_hosts[0].name], "the canary was not rolled out"
    assert after[failing.name] != before[failing.name], "the failing host was not rolled out"
    for host in untouched:
        assert after[host.name] == before[host.name], "%s changed after the rollout stopped" % host.name
    assert_every_host_listed(report, fleet_hosts)
    entries = by_host(report)
    assert (entries[fleet_hosts[0].name]["stage"], entries[fleet_hosts[0].name]["result"]) == ("canary", "changed")
    assert (entries[failing.name]["stage"], entries[failing.name]["result"]) == ("batch 2", "failed")
    assert "no reply" in entries[failing.name]["msg"] and entries[failing.name]["status"]["ok"] is False
    for host in untouched:
        assert entries[host.name]["result"] == "not run" and entries[host.name]["stage"] is None
        assert "stopped after batch 2" in entries[host.name]["msg"]
    assert report["stopped"]["stage"] == "batch 2" and report["stopped"]["failed_hosts"] == [failing.name]
