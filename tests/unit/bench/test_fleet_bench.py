# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""B1, B2, B6's parts that need no docker: the fleet's host addresses for any count, the inventory written for
them, what a run's callback lines and -vvv output say (tasks, module runs, round trips), B1's extrapolation and
B6's plan.  The callback itself is run by ansible-playbook against localhost."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from bench import b1_apply, b6_fanout, fleet_lab  # noqa: E402
from lab import fleet  # noqa: E402


def test_default_fleet_is_unchanged():
    assert [(h.name, h.v4(fleet.FLEET), h.tunnel) for h in fleet.MANAGED] == [
        ("ks-fleet1", "198.18.30.11", ("198.18.130.11",)), ("ks-fleet2", "198.18.30.12", ("198.18.130.12",)),
        ("ks-fleet3", "198.18.30.13", ("198.18.130.13",))]
    assert fleet.STEPS == 14


@pytest.mark.parametrize("count", [1, 3, 20, fleet.MAX_MANAGED])
def test_any_count_of_hosts_has_distinct_lab_addresses_clear_of_the_servers(count):
    hosts = fleet.managed_hosts(count)
    addresses = [h.v4(fleet.FLEET) for h in hosts]
    assert len(set(addresses)) == count and len({h.name for h in hosts}) == count
    taken = {fleet.CONTROLLER, fleet.VPN.v4(fleet.FLEET), fleet.SINK.v4(fleet.FLEET)}
    assert not taken & set(addresses)
    for address in addresses + [h.v6(fleet.FLEET) for h in hosts] + [h.tunnel[0] for h in hosts]:
        network = "2001:db8:30::/64" if ":" in address else ("198.18.130.0/24" if ".130." in address else "198.18.30.0/24")
        assert ipaddress.ip_address(address) in ipaddress.ip_network(network)


@pytest.mark.parametrize("count", [0, fleet.MAX_MANAGED + 1])
def test_a_count_out_of_range_is_refused(count):
    with pytest.raises(ValueError, match="fleet host count"):
        fleet.managed_address(count)


def test_steps_counts_every_step_of_up(monkeypatch):
    seen = []
    for name in ("create_networks", "start_container", "run_script", "service", "wait_tunnel"):
        monkeypatch.setattr(fleet.build, name, lambda *args, **kwargs: "key")
    for name in ("setup_operator", "listeners", "setup_vpn", "setup_client", "scan_known_hosts", "check_ssh"):
        monkeypatch.setattr(fleet, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(fleet, "controller_key", lambda: "ssh-ed25519 AAAA")
    monkeypatch.setattr(fleet.build, "wg_key", lambda name: "key-" + name)
    fleet.up(seen.append, count=7)
    assert len(seen) == fleet.steps(7) and sum("container ks-fleet" in s and "vpn" not in s and "sink" not in s for s in seen) == 7


def test_managed_count_stops_at_the_first_gap():
    assert fleet_lab.managed_count(["ks-fleet-vpn", "ks-fleet1", "ks-fleet2", "ks-fleet4"]) == 2
    assert fleet_lab.managed_count(["ks-fleet-vpn", "ks-fleet-sink"]) == 0


def test_inventory_lists_the_hosts_with_the_lab_key_directory(tmp_path):
    hosts = fleet.managed_hosts(12)
    directory = fleet_lab.inventory(hosts, str(tmp_path / "inv"))
    with open(os.path.join(directory, "hosts.yml"), encoding="utf-8") as handle:
        listed = json.load(handle)["all"]["children"]["fleet"]["hosts"]
    assert list(listed) == ["ks-fleet%d" % i for i in range(1, 13)]
    assert listed["ks-fleet10"] == {"ansible_host": "198.18.30.31", "fleet_lab_cache": fleet.CACHE}
    assert os.path.realpath(os.path.join(directory, "group_vars")) == os.path.realpath(os.path.join(fleet.INVENTORY, "group_vars"))


def _events():
    return [
        {"event": "task", "name": "Gather", "action": "ansible.builtin.setup", "t": 0.0},
        {"event": "result", "host": "a", "name": "Gather", "action": "ansible.builtin.setup", "status": "ok", "changed": False,
         "items": None, "t": 1.0},
        {"event": "result", "host": "b", "name": "Gather", "action": "ansible.builtin.setup", "status": "ok", "changed": False,
         "items": None, "t": 1.5},
        {"event": "task", "name": "Facts", "action": "ansible.builtin.set_fact", "t": 2.0},
        {"event": "result", "host": "a", "name": "Facts", "action": "ansible.builtin.set_fact", "status": "ok", "changed": False,
         "items": None, "t": 2.1},
        {"event": "task", "name": "Files", "action": "ansible.builtin.template", "t": 2.5},
        {"event": "item", "host": "a", "name": "Files", "t": 3.0},
        {"event": "item", "host": "a", "name": "Files", "t": 3.5},
        {"event": "result", "host": "a", "name": "Files", "action": "ansible.builtin.template", "status": "ok", "changed": True,
         "items": [True, True, False], "t": 6.5},
        {"event": "result", "host": "b", "name": "Files", "action": "ansible.builtin.template", "status": "skipped",
         "changed": False, "items": None, "t": 6.5},
    ]


def test_summarize_counts_tasks_module_runs_and_changes():
    summary = fleet_lab.summarize(_events())
    assert summary.tasks == 3
    # a: setup, two loop items run (the third skipped); set_fact runs on the controller.  b: setup only.
    assert summary.executions == {"a": 3, "b": 1}
    assert summary.changed == {"a": 1, "b": 0}
    assert summary.items == {"a": 2}
    assert summary.task_seconds == [("Files", 4.0), ("Gather", 2.0), ("Facts", 0.5)]
    assert fleet_lab.spread(summary.executions) == "1-3" and fleet_lab.spread({"a": 4, "b": 4}) == "4"


def test_round_trips_are_counted_per_host_address():
    hosts = fleet.managed_hosts(2)
    output = "\n".join([
        "<198.18.30.11> ESTABLISH SSH CONNECTION FOR USER: operator",
        "<198.18.30.11> SSH: EXEC ssh -C -o ControlMaster=auto ... 198.18.30.11 '/bin/sh -c ...'",
        "<198.18.30.12> SSH: EXEC ssh -C ... 198.18.30.12 '/bin/sh -c ...'",
        "<198.18.30.11> SSH: EXEC ssh -C ... 198.18.30.11 '/bin/sh -c ...'",
        "ok: [ks-fleet1] <198.18.30.11> SSH: EXEC inside a line is not a command",
    ])
    assert fleet_lab.ssh_round_trips(output, hosts) == {"ks-fleet1": 2, "ks-fleet2": 1}


def test_baseline_extrapolation_adds_the_rules_left_out():
    assert b1_apply.extrapolated(run_seconds=20.0, loop_seconds=10.0, done=50, wanted=1000) == pytest.approx(20.0 + 0.2 * 950)
    assert b1_apply.extrapolated(20.0, 10.0, 100, 100) == 20.0
    with pytest.raises(ValueError, match="nothing to extrapolate"):
        b1_apply.extrapolated(20.0, 0.0, 0, 1000)


def test_fan_out_plan_times_the_ends_first_then_the_rest_and_the_other_configs_at_the_largest():
    assert b6_fanout.plan((1, 10, 20), ((20, "linear"), (5, "linear"), (20, "free"))) == [
        (1, 20, "linear"), (20, 20, "linear"), (10, 20, "linear"), (20, 5, "linear"), (20, 20, "free")]


def test_the_callback_records_tasks_results_and_items_of_a_real_run(tmp_path):
    play = tmp_path / "play.yml"
    play.write_text("""
- hosts: localhost
  gather_facts: false
  tasks:
    - name: One command
      ansible.builtin.command: "true"
    - name: A loop, one item skipped
      ansible.builtin.command: "echo {{ item }}"
      loop: [1, 2, 3]
      when: item != 2
    - name: A fact
      ansible.builtin.set_fact:
        seen: true
""")
    count_file = str(tmp_path / "events.jsonl")
    env = fleet_lab.environment(count_file)
    argv = [os.path.join(fleet_lab.BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e",
            "ansible_python_interpreter=" + sys.executable, str(play)]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-2000:]
    summary = fleet_lab.summarize(fleet_lab.read_events(count_file))
    assert summary.tasks == 3
    assert summary.executions == {"localhost": 3}   # 1 command + 2 loop items; set_fact on the controller
    assert summary.changed == {"localhost": 2}
    assert summary.items == {"localhost": 2}
