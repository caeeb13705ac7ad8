# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugin_utils/rollout.py: the gate after each stage, every host's final result, the table and the JSON report."""

from __future__ import annotations

import datetime
import json
import os

import pytest

from ansible_collections.netlock.killswitch.plugins.plugin_utils import rollout as ro

DIGEST_A = "a" * 64
DIGEST_B = "b" * 64
NOW = datetime.datetime(2026, 5, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
HOSTS = ["web1", "web2", "web3", "web4"]


def ok(digest=DIGEST_A, changed=True, status=None):
    return {"result": "ok", "changed": changed, "digest": digest, "status": status}


def failed(msg="boom", task="Load and persist the kill switch table", changed=False):
    return {"result": "failed", "msg": msg, "task": task, "changed": changed, "digest": DIGEST_A}


def stages(*batches):
    out = [{"name": "preflight", "hosts": list(HOSTS)}]
    out += [{"name": "canary" if i == 0 else "batch %d" % (i + 1), "hosts": list(b)} for i, b in enumerate(batches)]
    return out


PREFLIGHT_OK = {h: {"result": "ok", "digest": DIGEST_A} for h in HOSTS}


# --------------------------------------------------------------------------- helpers


def test_plain_turns_mappings_and_sequences_into_dicts_and_lists():
    class Lazy:
        def items(self):
            return [("a", (1, 2)), ("b", {"c": None})]
    assert ro.plain(Lazy()) == {"a": [1, 2], "b": {"c": None}}
    assert ro.plain("text") == "text"


def test_host_records_reads_hostvars_and_tolerates_missing_hosts():
    hostvars = {"web1": {"killswitch_rollout_result": ok()}, "web2": {}}
    records = ro.host_records(hostvars, ["web1", "web2", "web9"], ro.RESULT_FACT)
    assert records == {"web1": ok(), "web2": None, "web9": None}


# --------------------------------------------------------------------------- gate


def test_gate_passes_when_every_host_is_good():
    verdict = ro.gate("canary", ["web1"], {"web1": ok()})
    assert verdict["stop"] is False
    assert verdict["failed_hosts"] == [] and verdict["unreachable_hosts"] == []
    assert verdict["failed_percentage"] == 0
    assert verdict["msg"] == "canary: all 1 hosts passed"


def test_gate_stops_at_the_first_failure_by_default():
    verdict = ro.gate("batch 2", ["web2", "web3"], {"web2": ok(), "web3": failed("nft -f failed")})
    assert verdict["stop"] is True
    assert verdict["failed_hosts"] == ["web3"]
    assert verdict["failed_percentage"] == 50.0
    assert verdict["summary"] == "batch 2: 1 of 2 hosts did not pass (1 failed; 50%, above the 0% allowed), the rollout stops here"
    assert verdict["msg"] == verdict["summary"] + ": web3: nft -f failed (task: Load and persist the kill switch table)"


@pytest.mark.parametrize("record", [None, {}, {"result": ""}, "garbage"])
def test_gate_counts_hosts_without_a_record_as_unreachable(record):
    verdict = ro.gate("preflight", ["web1", "web2"], {"web1": ok(), "web2": record})
    assert verdict["stop"] is True
    assert verdict["unreachable_hosts"] == ["web2"] and verdict["failed_hosts"] == []
    assert "web2: unreachable" in verdict["msg"]


def test_gate_counts_a_host_missing_from_the_records_as_unreachable():
    assert ro.gate("canary", ["web1"], {})["unreachable_hosts"] == ["web1"]


def test_gate_counts_aborted_hosts_against_the_stage():
    """A host stopped by another host's fatal failure did not finish: it counts against the batch."""
    verdict = ro.gate("batch 2", HOSTS, {"web1": failed(), "web2": {"result": "aborted"}, "web3": ok(), "web4": ok()},
                      max_fail_percentage=40)
    assert verdict["failed_hosts"] == ["web1"] and verdict["aborted_hosts"] == ["web2"]
    assert verdict["failed_percentage"] == 50.0 and verdict["stop"] is True
    assert verdict["msg"] == ("batch 2: 2 of 4 hosts did not pass (1 failed, 1 stopped with it; 50%, above the 40% "
                              "allowed), the rollout stops here: web1: boom (task: Load and persist the kill switch table); "
                              "stopped with it: web2")


def test_gate_names_each_failure_once_and_the_aborted_together():
    records = {"web1": failed("bad value\n  killswitch_x: 'y'"), "web2": {"result": "aborted"}, "web3": {"result": "aborted"}}
    verdict = ro.gate("preflight", ["web1", "web2", "web3", "web4"], records)
    assert verdict["msg"] == ("preflight: 4 of 4 hosts did not pass (1 failed, 2 stopped with them, 1 unreachable; 100%, "
                              "above the 0% allowed), the rollout stops here: web1: bad value killswitch_x: 'y' (task: Load "
                              "and persist the kill switch table); web4: unreachable; stopped with them: web2, web3")


@pytest.mark.parametrize("threshold,stop", [(0, True), (24.9, True), (25, False), (50, False), (100, False)])
def test_gate_threshold_is_a_share_of_the_stage(threshold, stop):
    records = {"web1": failed(), "web2": ok(), "web3": ok(), "web4": ok()}
    verdict = ro.gate("batch 2", HOSTS, records, max_fail_percentage=threshold)
    assert verdict["failed_percentage"] == 25.0
    assert verdict["stop"] is stop
    assert ("the rollout stops here" in verdict["msg"]) is stop
    assert ("within the %s%% allowed" % ro._number(threshold) in verdict["msg"]) is not stop


def test_gate_with_all_hosts_failed_stops_even_at_100_percent_only_if_above():
    records = {"web1": failed()}
    assert ro.gate("canary", ["web1"], records, max_fail_percentage=100)["stop"] is False
    assert ro.gate("canary", ["web1"], records, max_fail_percentage=99)["stop"] is True


def test_gate_message_without_task():
    verdict = ro.gate("canary", ["web1"], {"web1": {"result": "failed", "msg": ""}})
    assert verdict["msg"].endswith("web1: failed")


def test_gate_on_an_empty_stage():
    verdict = ro.gate("batch 3", [], {})
    assert verdict["stop"] is False and verdict["failed_percentage"] == 0


# --------------------------------------------------------------------------- host results


def test_all_hosts_converged_in_canary_then_batches():
    results = {"web1": ok(changed=True), "web2": ok(changed=False), "web3": ok(changed=True), "web4": ok(changed=False)}
    entries = ro.host_results(HOSTS, stages(["web1"], ["web2", "web3"], ["web4"]), None, PREFLIGHT_OK, results)
    assert [(e["host"], e["stage"], e["result"], e["changed"]) for e in entries] == [
        ("web1", "canary", "changed", True), ("web2", "batch 2", "ok", False),
        ("web3", "batch 2", "changed", True), ("web4", "batch 3", "ok", False)]
    assert all(e["digest"] == DIGEST_A and e["msg"] == "" for e in entries)


def test_preflight_failure_stops_everything():
    preflight = dict(PREFLIGHT_OK, web2={"result": "failed", "msg": "killswitch_tunnel_interfaces: 'x' is bad",
                                         "task": "Validate the policy and render the ruleset", "digest": ""},
                     web3={"result": "aborted", "msg": "", "task": "", "digest": ""})
    stop = {"stage": "preflight", "msg": "preflight: ..."}
    entries = {e["host"]: e for e in ro.host_results(HOSTS, stages(), stop, preflight, {})}
    assert entries["web2"]["result"] == "failed" and entries["web2"]["stage"] == "preflight"
    assert entries["web2"]["msg"] == ("preflight: killswitch_tunnel_interfaces: 'x' is bad "
                                      "(task: Validate the policy and render the ruleset)")
    assert entries["web3"]["result"] == "not run" and entries["web3"]["msg"] == "not run: the rollout stopped in preflight"
    for host in ("web1", "web4"):
        assert entries[host]["result"] == "not run"
        assert entries[host]["msg"] == "not run: the rollout stopped after preflight"
        assert entries[host]["digest"] == DIGEST_A


def test_unreachable_in_preflight():
    preflight = {h: r for h, r in PREFLIGHT_OK.items() if h != "web4"}
    preflight["web3"] = {}  # reset at the start of the run, never recorded
    entries = {e["host"]: e for e in ro.host_results(HOSTS, stages(), {"stage": "preflight"}, preflight, {})}
    for host in ("web3", "web4"):
        assert entries[host]["result"] == "unreachable" and entries[host]["stage"] == "preflight"
        assert entries[host]["digest"] is None


def test_failure_in_a_batch_leaves_later_batches_not_run():
    results = {"web1": ok(), "web2": failed("post-check: no reply"), "web3": ok()}
    stop = {"stage": "batch 2", "msg": "batch 2: ..."}
    entries = {e["host"]: e for e in ro.host_results(HOSTS, stages(["web1"], ["web2", "web3"]), stop, PREFLIGHT_OK, results)}
    assert entries["web2"]["result"] == "failed" and entries["web2"]["stage"] == "batch 2"
    assert entries["web2"]["msg"] == "post-check: no reply (task: Load and persist the kill switch table)"
    assert entries["web3"]["result"] == "changed"
    assert entries["web4"]["result"] == "not run" and entries["web4"]["stage"] is None
    assert entries["web4"]["msg"] == "not run: the rollout stopped after batch 2"


def test_failed_host_keeps_its_changed_flag_and_status():
    status = {"ok": False, "problems": ["netlock-killswitch.service is not enabled"]}
    record = dict(failed("netlock-killswitch.service is not enabled", "Post-check the kill switch", changed=True), status=status)
    entry = ro.host_results(["web1"], stages(["web1"]), None, PREFLIGHT_OK, {"web1": record})[0]
    assert entry["result"] == "failed" and entry["changed"] is True and entry["status"] == status


def test_explicit_unreachable_records():
    preflight = dict(PREFLIGHT_OK, web2={"result": "unreachable", "msg": "ssh: connect to host web2 port 22: No route to host"})
    entries = {e["host"]: e for e in ro.host_results(HOSTS, stages(), {"stage": "preflight"}, preflight, {})}
    assert entries["web2"]["result"] == "unreachable" and entries["web2"]["stage"] == "preflight"
    assert entries["web2"]["msg"] == ("unreachable in preflight (ssh: connect to host web2 port 22: No route to host): "
                                      "nothing was changed")
    results = {"web1": ok(), "web2": {"result": "unreachable", "msg": "timed out"}}
    entries = {e["host"]: e for e in ro.host_results(HOSTS, stages(["web1"], ["web2"]), None, PREFLIGHT_OK, results)}
    assert entries["web2"]["result"] == "unreachable" and entries["web2"]["stage"] == "batch 2"
    assert entries["web2"]["msg"] == "unreachable during the rollout (timed out)"
    verdict = ro.gate("batch 2", ["web2"], results)
    assert verdict["unreachable_hosts"] == ["web2"] and verdict["stop"] is True
    assert verdict["msg"].endswith("web2: unreachable (timed out)")


def test_interim_report_is_marked_incomplete():
    report = ro.summary(["web1"], stages(["web1"]), None, PREFLIGHT_OK, {}, now=NOW, complete=False)
    assert report["complete"] is False
    assert ro.render_table(report).startswith("kill switch rollout (in progress): 1 hosts")


def test_status_keeps_only_the_status_shape():
    registered = {"changed": False, "failed": True, "failed_when_result": True, "exception": "(traceback unavailable)",
                  "msg": "x", "table": {"present": True, "digest": None, "matches": False}, "boot_unit": {"enabled": True},
                  "guard": {"active": True}, "tunnels": [], "ok": False, "problems": ["x"]}
    entry = ro.host_results(["web1"], stages(["web1"]), None, PREFLIGHT_OK,
                            {"web1": dict(failed("x"), status=registered)})[0]
    assert entry["status"] == {"table": {"present": True, "digest": None, "matches": False}, "boot_unit": {"enabled": True},
                               "guard": {"active": True}, "tunnels": [], "ok": False, "problems": ["x"]}


@pytest.mark.parametrize("status", [None, "", {}, {"skipped": True, "changed": False}])
def test_no_status_when_the_post_check_did_not_run(status):
    entry = ro.host_results(["web1"], stages(["web1"]), None, PREFLIGHT_OK, {"web1": ok(status=status)})[0]
    assert entry["status"] is None


def test_aborted_in_a_batch_is_failed():
    entry = ro.host_results(["web1"], stages(["web1"]), None, PREFLIGHT_OK, {"web1": {"result": "aborted"}})[0]
    assert entry["result"] == "failed" and "stopped with its batch" in entry["msg"]


def test_unreachable_during_a_batch():
    results = ro.host_results(HOSTS, stages(["web1"], ["web2", "web3", "web4"]), {"stage": "batch 2"}, PREFLIGHT_OK,
                              {"web1": ok(), "web2": ok()})
    entries = {e["host"]: e for e in results}
    assert entries["web3"]["result"] == "unreachable" and entries["web3"]["stage"] == "batch 2"
    assert entries["web3"]["msg"] == "unreachable during the rollout"


def test_digest_of_the_run_wins_over_the_preflight():
    entry = ro.host_results(["web1"], stages(["web1"]), None, PREFLIGHT_OK, {"web1": ok(digest=DIGEST_B)})[0]
    assert entry["digest"] == DIGEST_B


def test_host_not_reached_without_a_stop():
    entry = ro.host_results(["web1"], stages(), None, PREFLIGHT_OK, {})[0]
    assert entry["result"] == "not run" and entry["msg"] == "not run: the rollout ended before this host"


# --------------------------------------------------------------------------- summary, table, JSON


def test_summary_lists_every_host_and_totals():
    results = {"web1": ok(), "web2": failed()}
    stop = ro.gate("batch 2", ["web2", "web3"], {"web2": failed()})
    report = ro.summary(HOSTS, stages(["web1"], ["web2", "web3"]), dict(stop, changed=False, failed=True),
                        PREFLIGHT_OK, results, max_fail_percentage=0, now=NOW)
    assert [h["host"] for h in report["hosts"]] == HOSTS
    assert report["totals"] == {"changed": 1, "ok": 0, "failed": 1, "unreachable": 1, "not run": 1}
    assert report["ok"] is False
    assert set(report["stopped"]) == set(ro.STOP_KEYS)
    assert report["stopped"]["failed_hosts"] == ["web2"] and report["stopped"]["unreachable_hosts"] == ["web3"]
    assert report["generated"] == "2026-05-01T12:00:00+00:00"
    assert [s["name"] for s in report["stages"]] == ["preflight", "canary", "batch 2"]
    assert report["check_mode"] is False and report["max_fail_percentage"] == 0
    json.dumps(report)  # plain data only


def test_summary_ok_when_every_host_converged():
    report = ro.summary(["web1"], stages(["web1"]), {}, PREFLIGHT_OK, {"web1": ok(changed=False)}, now=NOW)
    assert report["ok"] is True and report["stopped"] is None
    assert report["totals"]["ok"] == 1


def test_summary_time_defaults_to_now_in_utc():
    report = ro.summary([], [], None, {}, {})
    assert report["generated"].endswith("+00:00")
    assert report["ok"] is True


def test_render_table():
    results = {"web1": ok(changed=True), "web2": ok(changed=False, digest=DIGEST_B), "web3": failed("no reply")}
    stop = ro.gate("batch 2", ["web2", "web3"], results)
    report = ro.summary(HOSTS, stages(["web1"], ["web2", "web3"]), stop, PREFLIGHT_OK, results, now=NOW)
    text = ro.render_table(report)
    lines = text.splitlines()
    assert lines[0] == "kill switch rollout: 4 hosts"
    assert lines[1].split() == ["host", "stage", "result", "ruleset", "digest", "changed"]
    assert set(lines[2].replace(" ", "")) == {"-"}
    assert lines[3].split() == ["web1", "canary", "changed", "a" * 16, "yes"]
    assert lines[4].split() == ["web2", "batch", "2", "ok", "b" * 16, "no"]
    assert lines[5].split() == ["web3", "batch", "2", "failed", "a" * 16, "no"]
    assert lines[6].split() == ["web4", "-", "not", "run", "a" * 16, "no"]
    # columns line up
    assert len({line.index("stage") if "stage" in line else None for line in lines[1:2]}) == 1
    assert lines[3].index("canary") == lines[1].index("stage") == lines[6].index("-")
    assert "1 changed, 1 ok, 1 failed, 1 not run" in lines
    assert "stages: preflight (web1, web2, web3, web4) -> canary (web1) -> batch 2 (web2, web3)" in lines
    assert ("stopped after batch 2: 1 of 2 hosts did not pass (1 failed; 50%, above the 0% allowed), "
            "the rollout stops here") in lines
    assert "web3: no reply (task: Load and persist the kill switch table)" in lines
    assert sum(1 for line in lines if "no reply" in line) == 1, "each reason once"
    assert "web4: not run: the rollout stopped after batch 2" in lines
    assert text.endswith("\n")


def test_render_table_in_check_mode():
    report = ro.summary(["web1"], stages(["web1"]), None, PREFLIGHT_OK, {"web1": ok(changed=True)}, check_mode=True, now=NOW)
    text = ro.render_table(report)
    assert text.startswith("kill switch rollout (check mode): 1 hosts")
    assert "would change" in text.splitlines()[3]


def test_render_table_without_hosts():
    assert "no hosts" in ro.render_table(ro.summary([], [], None, {}, {}, now=NOW))


def test_write_json(tmp_path):
    report = ro.summary(HOSTS, stages(["web1"]), None, PREFLIGHT_OK, {"web1": ok()}, now=NOW)
    path = ro.write_json(report, str(tmp_path / "reports" / "rollout.json"))
    assert path == str(tmp_path / "reports" / "rollout.json")
    assert json.loads(open(path).read()) == report
    assert os.listdir(tmp_path / "reports") == ["rollout.json"], "no temporary file is left behind"


def test_write_json_relative_to_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = ro.write_json({"hosts": []}, "reports/rollout.json")
    assert path == str(tmp_path / "reports" / "rollout.json")
    assert json.loads((tmp_path / "reports" / "rollout.json").read_text()) == {"hosts": []}
