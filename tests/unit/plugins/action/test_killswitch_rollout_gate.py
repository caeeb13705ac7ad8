# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The killswitch_rollout_gate action plugin: reads hostvars on the controller and fails when the rollout must stop."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ansible.errors import AnsibleActionFail

from ansible_collections.netlock.killswitch.plugins.action.killswitch_rollout_gate import ActionModule


def make_action(args, check_mode=False):
    task = SimpleNamespace(args=args, async_val=0, check_mode=check_mode, action="netlock.killswitch.killswitch_rollout_gate")
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir="/tmp/already-there"))
    action = ActionModule(task, connection, SimpleNamespace(check_mode=check_mode), None, None, None)
    action._load_name = task.action  # as the plugin loader sets it; ansible-core 2.18 reads it for unsupported parameters
    return action


HOSTVARS = {
    "web1": {"killswitch_rollout_result": {"result": "changed", "changed": True},
             "killswitch_rollout_preflight": {"result": "ok"}},
    "web2": {"killswitch_rollout_result": {"result": "failed", "msg": "nft -f failed", "task": "Load"},
             "killswitch_rollout_preflight": {"result": "ok"}},
    "web3": {"killswitch_rollout_result": {}, "killswitch_rollout_preflight": {}},
}


def test_passes():
    result = make_action({"stage": "canary", "hosts": ["web1"]}).run(task_vars={"hostvars": HOSTVARS})
    assert result["failed"] is False and result["stop"] is False and result["changed"] is False
    assert result["msg"] == "canary: all 1 hosts passed"


def test_stops_and_fails_naming_the_host():
    result = make_action({"stage": "batch 2", "hosts": ["web1", "web2"]}).run(task_vars={"hostvars": HOSTVARS})
    assert result["failed"] is True and result["stop"] is True
    assert result["failed_hosts"] == ["web2"]
    assert "web2: nft -f failed (task: Load)" in result["msg"]


def test_threshold_from_a_templated_string_and_a_warning_within_it():
    result = make_action({"stage": "batch 2", "hosts": ["web1", "web2"], "max_fail_percentage": "50"}).run(
        task_vars={"hostvars": HOSTVARS})
    assert result["stop"] is False and result["failed"] is False
    assert result["max_fail_percentage"] == 50.0
    assert result["warnings"] == [result["msg"]] and "web2: nft -f failed" in result["msg"]


def test_no_warning_when_asked_or_when_all_passed():
    args = {"stage": "batch 2", "hosts": ["web1", "web2"], "max_fail_percentage": 50, "warn": False}
    assert "warnings" not in make_action(args).run(task_vars={"hostvars": HOSTVARS})
    assert "warnings" not in make_action({"stage": "canary", "hosts": ["web1"]}).run(task_vars={"hostvars": HOSTVARS})


def test_reads_the_named_fact_and_treats_a_reset_record_as_unreachable():
    result = make_action({"stage": "preflight", "hosts": ["web1", "web2", "web3"], "fact": "killswitch_rollout_preflight"}).run(
        task_vars={"hostvars": HOSTVARS})
    assert result["stop"] is True
    assert result["failed_hosts"] == [] and result["unreachable_hosts"] == ["web3"]


def test_host_unknown_to_hostvars_is_unreachable():
    result = make_action({"stage": "canary", "hosts": ["web9"]}).run(task_vars={"hostvars": HOSTVARS})
    assert result["unreachable_hosts"] == ["web9"]


def test_runs_in_check_mode():
    result = make_action({"stage": "canary", "hosts": ["web1"]}, check_mode=True).run(task_vars={"hostvars": HOSTVARS})
    assert result["stop"] is False and "skipped" not in result


@pytest.mark.parametrize("args", [{"hosts": ["web1"]}, {"stage": "canary"}, {"stage": "canary", "hosts": ["web1"], "bogus": 1}])
def test_bad_arguments(args):
    with pytest.raises(AnsibleActionFail):
        make_action(args).run(task_vars={"hostvars": HOSTVARS})


@pytest.mark.parametrize("value", [-1, 101])
def test_threshold_out_of_range(value):
    result = make_action({"stage": "canary", "hosts": ["web1"], "max_fail_percentage": value}).run(task_vars={"hostvars": HOSTVARS})
    assert result["failed"] is True and "max_fail_percentage" in result["msg"]
