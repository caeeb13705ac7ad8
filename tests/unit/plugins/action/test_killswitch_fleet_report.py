# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The killswitch_fleet_report action plugin: the summary from hostvars, the printed table, the JSON file, the verdict."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from ansible_collections.netlock.killswitch.plugins.action import killswitch_fleet_report as action
from ansible_collections.netlock.killswitch.plugins.action.killswitch_fleet_report import ActionModule

DIGEST = "c" * 64


def make_action(args, check_mode=False):
    task = SimpleNamespace(args=args, async_val=0, check_mode=check_mode, action="netlock.killswitch.killswitch_fleet_report")
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir="/tmp/already-there"))
    action = ActionModule(task, connection, SimpleNamespace(check_mode=check_mode), None, None, None)
    action._load_name = task.action  # as the plugin loader sets it; ansible-core 2.18 reads it for unsupported parameters
    return action


def hostvars(results):
    out = {}
    for host, result in results.items():
        out[host] = {"killswitch_rollout_preflight": {"result": "ok", "digest": DIGEST}}
        if result is not None:
            out[host]["killswitch_rollout_result"] = result
    return out


STAGES = [{"name": "preflight", "hosts": ["web1", "web2", "web3"]}, {"name": "canary", "hosts": ["web1"]},
          {"name": "batch 2", "hosts": ["web2", "web3"]}]


@pytest.fixture
def shown(monkeypatch):
    lines = []
    monkeypatch.setattr(action.display, "display", lambda msg, *a, **k: lines.append(msg))
    return lines


def test_all_converged(tmp_path, shown):
    path = tmp_path / "out" / "rollout.json"
    task_vars = {"hostvars": hostvars({"web1": {"result": "ok", "changed": True, "digest": DIGEST},
                                       "web2": {"result": "ok", "changed": False, "digest": DIGEST},
                                       "web3": {"result": "ok", "changed": False, "digest": DIGEST}})}
    result = make_action({"hosts": ["web1", "web2", "web3"], "stages": STAGES, "stop": {}, "path": str(path)}).run(
        task_vars=task_vars)
    assert result["failed"] is False and result["changed"] is False
    assert result["path"] == str(path)
    written = json.loads(path.read_text())
    assert written == result["report"]
    assert [h["result"] for h in written["hosts"]] == ["changed", "ok", "ok"]
    assert [h["stage"] for h in written["hosts"]] == ["canary", "batch 2", "batch 2"]
    assert written["ok"] is True and written["complete"] is True
    assert len(shown) == 1 and shown[0].splitlines()[0] == "kill switch rollout: 3 hosts"
    assert result["table"] == shown[0].splitlines()


def test_fails_when_a_host_did_not_converge(tmp_path, shown):
    path = tmp_path / "rollout.json"
    task_vars = {"hostvars": hostvars({"web1": {"result": "failed", "msg": "no reply", "task": "Post-check"},
                                       "web2": None, "web3": None})}
    stop = {"stage": "canary", "summary": "canary: 1 of 1 hosts did not pass", "msg": "canary: ...", "stop": True}
    result = make_action({"hosts": ["web1", "web2", "web3"], "stages": STAGES[:2], "stop": stop, "path": str(path)}).run(
        task_vars=task_vars)
    assert result["failed"] is True
    assert result["msg"] == "the rollout did not converge 3 of 3 hosts: web1, web2, web3 (report: %s)" % path
    assert result["not_converged"] == ["web1", "web2", "web3"]
    assert "report" not in result and "table" not in result, "the failure stays short: the table was printed"
    written = json.loads(path.read_text())
    assert [h["result"] for h in written["hosts"]] == ["failed", "not run", "not run"]
    assert written["stopped"] == {"stage": "canary", "summary": "canary: 1 of 1 hosts did not pass", "msg": "canary: ..."}
    assert "stopped after canary: 1 of 1 hosts did not pass" in shown[0].splitlines()


def test_fail_false_only_reports(tmp_path, shown):
    task_vars = {"hostvars": hostvars({"web1": None})}
    result = make_action({"hosts": ["web1"], "stages": STAGES[:2], "path": str(tmp_path / "r.json"), "fail": False}).run(
        task_vars=task_vars)
    assert result["failed"] is False
    assert result["report"]["hosts"][0]["result"] == "unreachable"
    assert result["not_converged"] == ["web1"]


def test_interim_report_is_neither_shown_nor_failing(tmp_path, shown):
    path = tmp_path / "rollout.json"
    task_vars = {"hostvars": hostvars({"web1": None, "web2": None})}
    result = make_action({"hosts": ["web1", "web2"], "stages": STAGES[:2], "path": str(path), "final": False}).run(
        task_vars=task_vars)
    assert result["failed"] is False and shown == []
    written = json.loads(path.read_text())
    assert written["complete"] is False
    assert [h["result"] for h in written["hosts"]] == ["unreachable", "not run"]


def test_show_false_prints_nothing(tmp_path, shown):
    make_action({"hosts": [], "path": str(tmp_path / "r.json"), "show": False}).run(task_vars={"hostvars": {}})
    assert shown == []


def test_default_path_is_reports_rollout_json_in_the_current_directory(tmp_path, monkeypatch, shown):
    monkeypatch.chdir(tmp_path)
    result = make_action({"hosts": []}).run(task_vars={"hostvars": {}})
    assert result["path"] == str(tmp_path / "reports" / "rollout.json")
    assert (tmp_path / "reports" / "rollout.json").is_file()


def test_check_mode_is_recorded_and_the_report_still_written(tmp_path, shown):
    path = tmp_path / "rollout.json"
    task_vars = {"hostvars": hostvars({"web1": {"result": "ok", "changed": True, "digest": DIGEST}})}
    result = make_action({"hosts": ["web1"], "stages": STAGES[:2], "path": str(path)}, check_mode=True).run(task_vars=task_vars)
    assert result["report"]["check_mode"] is True
    assert json.loads(path.read_text())["check_mode"] is True
    assert "would change" in shown[0]


def test_unwritable_path_fails_with_the_report(tmp_path, shown):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = make_action({"hosts": [], "path": str(blocker / "rollout.json")}).run(task_vars={"hostvars": {}})
    assert result["failed"] is True and "could not write the report" in result["msg"]
    assert result["report"]["hosts"] == []
