# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The killswitch_drift_report action plugin: statuses from hostvars or args, the table, the JSON file, the verdict."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from ansible_collections.netlock.killswitch.plugins.action import killswitch_drift_report as action
from ansible_collections.netlock.killswitch.plugins.action.killswitch_drift_report import ARGUMENT_SPEC, ActionModule
from ansible_collections.netlock.killswitch.plugins.modules import killswitch_drift_report as module_doc
from ansible_collections.netlock.killswitch.plugins.plugin_utils.drift import PARTS

DIGEST = "d" * 16


def make_action(args):
    task = SimpleNamespace(args=args, async_val=0, check_mode=False, action="netlock.killswitch.killswitch_drift_report")
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir="/tmp/already-there"))
    action = ActionModule(task, connection, SimpleNamespace(check_mode=False), None, None, None)
    action._load_name = task.action  # as the plugin loader sets it; ansible-core 2.18 reads it for unsupported parameters
    return action


def status(host, **drifted):
    parts = {part: dict(in_sync=part not in drifted, diff=drifted.get(part, "")) for part in PARTS}
    return dict(host=host, backend="nftables", digest=DIGEST, drifted=bool(drifted), parts=parts)


TABLE_DIFF = "--- nftables killswitch (live)\n+++ nftables killswitch (desired)\n@@ -1,2 +1 @@\n-\taccept\n \tpolicy drop"


@pytest.fixture
def shown(monkeypatch):
    def display(msg, *args, **kwargs):
        lines.append(msg)
        streams.append("stderr" if kwargs.get("stderr") else "stdout")

    lines, streams = Shown(), []
    lines.streams = streams
    monkeypatch.setattr(action.display, "display", display)
    return lines


class Shown(list):
    """What the action displayed, with the stream of each message in ``streams``."""

    streams: list


def test_all_in_sync_from_hostvars(tmp_path, shown):
    path = tmp_path / "out" / "drift.json"
    hostvars = {"web1": {"killswitch_status": status("web1"), "killswitch_drift_error": ""},
                "web2": {"killswitch_status": status("web2")}}
    result = make_action({"targets": ["web1", "web2"], "path": str(path)}).run(task_vars={"hostvars": hostvars})
    assert result["failed"] is False and result["changed"] is False
    assert result["msg"] == "all 2 hosts in sync (report: %s)" % path
    assert result["drifted"] == [] and result["unreachable"] == []
    written = json.loads(path.read_text())
    assert written == result["report"]
    assert [h["result"] for h in written["hosts"]] == ["in sync", "in sync"]
    assert len(shown) == 1 and "0 of 2 hosts drifted; 0 unreachable" in shown[0].splitlines()
    assert shown.streams == ["stdout"]
    assert result["table"] == shown[0].splitlines()


def test_drift_and_unreachable_fail_naming_hosts_and_parts(tmp_path, shown):
    path = tmp_path / "drift.json"
    hostvars = {"web1": {"killswitch_status": status("web1", table=TABLE_DIFF, guard="guard.json: changed")},
                "web2": {"killswitch_status": {}, "killswitch_drift_error": "unreachable: ssh timed out"},
                "web3": {"killswitch_status": {}, "killswitch_drift_error": 'the role failed in "Install": no mirror'}}
    result = make_action({"targets": ["web1", "web2", "web3"], "path": str(path)}).run(task_vars={"hostvars": hostvars})
    assert result["failed"] is True
    assert result["msg"].startswith("kill switch drift found on 1 of 3 hosts: web1 (table, guard); run with "
                                    "-e killswitch_drift_enforce=true")
    assert "web2 (unreachable: ssh timed out), web3 (the role failed in \"Install\": no mirror)" in result["msg"]
    assert result["drifted"] == ["web1"] and result["unreachable"] == ["web2", "web3"]
    assert "report" not in result and "table" not in result, "the failure stays short: the table was printed"
    written = json.loads(path.read_text())
    assert [h["result"] for h in written["hosts"]] == ["drifted", "unreachable", "failed"]
    assert written["hosts"][0]["parts"]["table"]["diff"] == TABLE_DIFF
    assert written["hosts"][0]["summary"] == {"table": "+0 -1: - accept", "guard": "guard.json: changed"}
    lines = shown[0].splitlines()
    assert "web1 table: +0 -1: - accept" in lines and "web1 guard: guard.json: changed" in lines
    assert "web2: unreachable: ssh timed out" in lines
    assert lines[-1] == result["msg"], "the verdict follows the table"
    assert shown.streams == ["stderr"], "a failing report goes to stderr, which cron mails"


def test_limit_reports_only_the_targets(tmp_path, shown):
    hostvars = {"web1": {"killswitch_status": status("web1")}, "web2": {"killswitch_status": status("web2", file="x")}}
    result = make_action({"targets": ["web1"], "path": str(tmp_path / "r.json")}).run(task_vars={"hostvars": hostvars})
    assert result["failed"] is False
    assert [h["host"] for h in result["report"]["hosts"]] == ["web1"]


def test_statuses_given_as_an_argument(tmp_path, shown):
    result = make_action({"targets": ["web1", "web2"], "statuses": [status("web1", fence="fence.nft: missing")],
                          "path": str(tmp_path / "r.json"), "enforced": True}).run(task_vars={"hostvars": {}})
    assert result["failed"] is True, "web2 gave no status"
    assert result["drifted"] == ["web1"] and result["unreachable"] == ["web2"]
    assert "drift found" not in result["msg"], "enforced drift was repaired"
    assert "FIXED" in shown[0]


def test_enforced_drift_passes(tmp_path, shown):
    hostvars = {"web1": {"killswitch_status": status("web1", table=TABLE_DIFF)}}
    result = make_action({"targets": ["web1"], "path": str(tmp_path / "r.json"), "enforced": True}).run(
        task_vars={"hostvars": hostvars})
    assert result["failed"] is False
    assert result["msg"].startswith("1 of 1 hosts drifted and were repaired: web1")
    assert result["report"]["hosts"][0]["result"] == "repaired"


def test_fail_false_only_reports(tmp_path, shown):
    result = make_action({"targets": ["web1"], "path": str(tmp_path / "r.json"), "fail": False}).run(
        task_vars={"hostvars": {}})
    assert result["failed"] is False and result["unreachable"] == ["web1"]
    assert "not failing" in result["msg"]


def test_show_false_prints_nothing(tmp_path, shown):
    make_action({"targets": [], "path": str(tmp_path / "r.json"), "show": False}).run(task_vars={"hostvars": {}})
    assert shown == []


def test_default_path_is_reports_drift_json_in_the_current_directory(tmp_path, monkeypatch, shown):
    monkeypatch.chdir(tmp_path)
    result = make_action({"targets": []}).run(task_vars={"hostvars": {}})
    assert result["path"] == str(tmp_path / "reports" / "drift.json")
    assert json.loads((tmp_path / "reports" / "drift.json").read_text())["hosts"] == []


def test_unwritable_path_fails_with_the_report(tmp_path, shown):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = make_action({"targets": [], "path": str(blocker / "drift.json")}).run(task_vars={"hostvars": {}})
    assert result["failed"] is True and "could not write the drift report" in result["msg"]
    assert shown == []


def test_documentation_matches_the_argument_spec():
    doc = yaml.safe_load(module_doc.DOCUMENTATION)
    assert doc["module"] == "killswitch_drift_report"
    assert set(doc["options"]) == set(ARGUMENT_SPEC)
    for name, spec in ARGUMENT_SPEC.items():
        option = doc["options"][name]
        assert option["type"] == spec["type"], name
        assert option.get("default") == spec.get("default"), name
        assert option.get("required", False) == spec.get("required", False), name
        assert option.get("elements") == spec.get("elements"), name
    assert set(doc["attributes"]) == {"check_mode", "diff_mode", "action", "async", "platform"}
    yaml.safe_load(module_doc.EXAMPLES)
    returned = yaml.safe_load(module_doc.RETURN)
    assert set(returned) == {"path", "drifted", "unreachable", "table", "report"}
