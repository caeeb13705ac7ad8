# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugin_utils/drift.py: one host's killswitch_status from registered results, and the fleet report."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.netlock.killswitch.plugins.plugin_utils import drift

RULESET = "/etc/netlock-killswitch/ruleset.nft"
LIVE = "table inet killswitch {\n\tchain output {\n\t\ttype filter hook output priority 0; policy drop;\n" \
       "\t\taccept\n\t\toifname \"wg0\" accept\n\t}\n}\n"
DESIRED = "table inet killswitch {\n\tchain output {\n\t\ttype filter hook output priority 0; policy drop;\n" \
          "\t\toifname \"wg0\" accept\n\t}\n}\n"
DIGEST = "0123456789abcdef" * 4


def firewall(table_changed=False, file_changed=False, expected_changed=False, diff=True):
    """A killswitch_firewall result in check mode with --diff, as the module returns it."""
    result = dict(changed=table_changed or file_changed or expected_changed, table_changed=table_changed,
                  file_changed=file_changed, expected_changed=expected_changed, rollback_pending=False,
                  path=RULESET, backend="nftables")
    if diff:
        result["diff"] = [dict(before_header="nftables killswitch (live)", before=LIVE if table_changed else DESIRED,
                               after_header="nftables killswitch (desired)", after=DESIRED)]
        if file_changed:
            result["diff"].append(dict(before_header=RULESET, before="flush ruleset\n", after_header=RULESET,
                                       after="table inet killswitch\n"))
    return result


def template(dest, changed, before="", after=""):
    result = dict(changed=changed, dest=dest, item=dict(src=dest.rsplit("/", 1)[-1] + ".j2", dest=dest))
    if changed:
        result["diff"] = [dict(before_header=dest, before=before, after_header=dest, after=after)]
    return result


SKIPPED = dict(changed=False, skipped=True, skip_reason="Conditional result was False")


def test_everything_in_sync():
    status = drift.host_status({"table": firewall(), "file": firewall(), "boot_unit": [template("/u", False), {}]},
                               "web1", "nftables", DIGEST)
    assert status == dict(host="web1", backend="nftables", digest=DIGEST[:16], drifted=False,
                          parts={part: dict(in_sync=True, diff="") for part in drift.PARTS})


def test_table_and_file_are_separate_parts():
    result = firewall(table_changed=True)
    status = drift.host_status({"table": result, "file": result}, "web1")
    assert status["drifted"] is True
    assert status["parts"]["file"] == dict(in_sync=True, diff="")
    table = status["parts"]["table"]
    assert table["in_sync"] is False
    assert table["diff"].splitlines()[:2] == ["--- nftables killswitch (live)", "+++ nftables killswitch (desired)"]
    assert "-\t\taccept" in table["diff"].splitlines()
    assert RULESET not in table["diff"]


def test_file_diff_is_only_the_file_entry():
    result = firewall(file_changed=True)
    status = drift.host_status({"table": result, "file": result}, "web1")
    assert status["parts"]["table"]["in_sync"] is True
    lines = status["parts"]["file"]["diff"].splitlines()
    assert lines[:2] == ["--- " + RULESET, "+++ " + RULESET]
    assert "-flush ruleset" in lines and "+table inet killswitch" in lines


def test_expected_listing_counts_as_file_and_rollback_pending_as_table():
    assert not drift.host_status({"file": firewall(expected_changed=True)}, "h")["parts"]["file"]["in_sync"]
    pending = dict(firewall(), changed=True, rollback_pending=True)
    assert not drift.host_status({"table": pending}, "h")["parts"]["table"]["in_sync"]


def test_skipped_undefined_and_missing_parts_are_in_sync():
    status = drift.host_status({"guard": [SKIPPED, {}, None], "watcher": {}, "fence": SKIPPED}, "h")
    assert status["drifted"] is False
    assert set(status["parts"]) == set(drift.PARTS)


def test_loop_results_are_read_item_by_item():
    loop = dict(changed=True, results=[template("/etc/netlock-killswitch/guard.json", True, '{"a": 1}\n', '{"a": 2}\n'),
                                       template("/etc/netlock-killswitch/guard.py", False), SKIPPED])
    guard = drift.host_status({"guard": loop}, "h")["parts"]["guard"]
    assert guard["in_sync"] is False
    lines = guard["diff"].splitlines()
    assert lines[0] == "--- /etc/netlock-killswitch/guard.json"
    assert '-{"a": 1}' in lines and '+{"a": 2}' in lines
    assert "guard.py" not in guard["diff"]


def test_a_changed_result_without_a_diff_gets_one_line():
    unit = dict(changed=True, name="netlock-killswitch-watch.service", enabled=True, state="started",
                status={"ActiveState": "inactive"})
    watcher = drift.host_status({"watcher": unit}, "h")["parts"]["watcher"]
    assert watcher == dict(in_sync=False, diff="netlock-killswitch-watch.service: not as the policy wants it "
                                               "(enabled=True, state=started)")


def test_prepared_diff_and_dict_before_after():
    prepared = dict(changed=True, diff=dict(prepared="+ one line\n"))
    removed = dict(changed=True, path="/etc/systemd/system/netlock-killswitch.service",
                   diff=dict(before=dict(path="/etc/x", state="file"), after=dict(path="/etc/x", state="absent")))
    status = drift.host_status({"fence": prepared, "boot_unit": removed}, "h")
    assert status["parts"]["fence"]["diff"] == "+ one line"
    assert "-state: file" in status["parts"]["boot_unit"]["diff"].splitlines()
    assert "+state: absent" in status["parts"]["boot_unit"]["diff"].splitlines()


def test_a_long_diff_is_cut():
    before = "".join("line %d\n" % n for n in range(200))
    part = drift.part_status("guard", dict(changed=True, diff=dict(before=before, after="")))
    lines = part["diff"].splitlines()
    assert len(lines) == drift.DIFF_LINES + 1
    assert lines[-1] == "... %d more lines" % (200 + 3 - drift.DIFF_LINES)


def test_absent_loop_over_backends():
    """state=absent registers killswitch_apply as a loop over every backend, its diff a dict without headers."""
    loop = dict(changed=True, results=[
        dict(changed=True, table_changed=True, file_changed=True, path=RULESET, item="nftables",
             diff=dict(before=LIVE, after="")),
        dict(changed=False, table_changed=False, file_changed=False, path="/etc/netlock-killswitch/ruleset.sh",
             item="iptables", diff=dict(before="", after="")),
    ])
    status = drift.host_status({"table": loop, "file": loop}, "h")
    assert "-\t\toifname \"wg0\" accept" in status["parts"]["table"]["diff"].splitlines()
    assert status["parts"]["file"] == dict(in_sync=False, diff=RULESET + ": not as the policy wants it")


def test_unknown_part_is_refused():
    with pytest.raises(drift.StatusError, match="unknown kill switch part.*tabel"):
        drift.host_status({"tabel": {}}, "h")


# --------------------------------------------------------------------------- the fleet

NOW = datetime.datetime(2026, 12, 3, 21, 0, tzinfo=datetime.timezone.utc)


def statuses():
    drifted = drift.host_status({"table": firewall(table_changed=True), "file": firewall(table_changed=True),
                                 "watcher": dict(changed=True, name="netlock-killswitch-watch.service")},
                                "web1", "nftables", DIGEST)
    clean = drift.host_status({"table": firewall(), "file": firewall()}, "web2", "iptables", DIGEST)
    stranger = drift.host_status({}, "not-targeted")
    return [drifted, clean, stranger, {}, {"host": "web3"}]  # web3's fact is not a status


def test_fleet_report():
    report = drift.fleet_report(statuses(), ["web1", "web2", "web3", "web4"], errors={"web4": "the role failed: x"},
                                now=NOW)
    assert report["generated"] == "2026-12-03T21:00:00+00:00"
    assert report["targets"] == ["web1", "web2", "web3", "web4"]
    assert [h["host"] for h in report["hosts"]] == ["web1", "web2", "web3", "web4"]
    assert [h["result"] for h in report["hosts"]] == ["drifted", "in sync", "unreachable", "failed"]
    assert report["drifted"] == ["web1"] and report["unreachable"] == ["web3", "web4"]
    assert report["ok"] is False and report["enforced"] is False and report["check_mode"] is True
    assert report["totals"] == {"in sync": 1, "drifted": 1, "repaired": 0, "unreachable": 1, "failed": 1}
    web1 = report["hosts"][0]
    assert web1["drifted_parts"] == ["table", "watcher"]
    assert web1["summary"]["table"] == '+0 -1: - accept'
    assert web1["summary"]["watcher"] == "netlock-killswitch-watch.service: not as the policy wants it"
    assert web1["parts"]["table"]["diff"].startswith("--- nftables killswitch (live)")
    assert web1["digest"] == DIGEST[:16] and web1["backend"] == "nftables"
    assert report["hosts"][2]["msg"] == "unreachable: no status from this host"
    assert report["hosts"][3]["msg"] == "the role failed: x"


def test_enforced_drift_is_repaired_and_passes():
    report = drift.fleet_report(statuses()[:2], ["web1", "web2"], enforced=True)
    assert [h["result"] for h in report["hosts"]] == ["repaired", "in sync"]
    assert report["ok"] is True and report["check_mode"] is False
    assert drift.verdict(report) == (False, "1 of 2 hosts drifted and were repaired: web1")


def test_table():
    report = drift.fleet_report(statuses(), ["web1", "web2", "web3"], now=NOW)
    lines = drift.render_table(report).splitlines()
    assert lines[0] == "kill switch drift (report only): 3 hosts"
    assert lines[1].split() == ["host", "backend", "policy", "table", "file", "boot_unit", "guard", "watcher", "fence",
                                "result"]
    assert lines[3].split() == ["web1", "nftables", DIGEST[:16], "DRIFT", "ok", "ok", "ok", "DRIFT", "ok", "drifted"]
    assert lines[4].split() == ["web2", "iptables", DIGEST[:16]] + ["ok"] * 6 + ["in", "sync"]
    assert lines[5].split() == ["web3"] + ["-"] * 8 + ["unreachable"]
    assert "1 of 3 hosts drifted: web1; 1 unreachable: web3" in lines
    assert "web1 table: +0 -1: - accept" in lines
    assert "web3: unreachable: no status from this host" in lines


def test_table_when_enforced_and_clean():
    report = drift.fleet_report(statuses()[:2], ["web1", "web2"], enforced=True)
    text = drift.render_table(report)
    assert "FIXED" in text and "DRIFT" not in text
    assert "1 of 2 hosts drifted (repaired): web1; 0 unreachable" in text.splitlines()
    clean = drift.fleet_report(statuses()[1:2], ["web2"])
    assert "0 of 1 hosts drifted; 0 unreachable" in drift.render_table(clean).splitlines()


def test_verdict():
    report = drift.fleet_report(statuses(), ["web1", "web2", "web3"])
    failed, msg = drift.verdict(report, path="/r/drift.json")
    assert failed is True
    assert msg == ("kill switch drift found on 1 of 3 hosts: web1 (table, watcher); run with "
                   "-e killswitch_drift_enforce=true to restore the policy; no kill switch status from 1 of 3 hosts: "
                   "web3 (unreachable: no status from this host) (report: /r/drift.json)")
    failed, msg = drift.verdict(report, fail=False)
    assert failed is False and msg.endswith("(not failing: killswitch_drift_fail is false)")
    unreachable_only = drift.fleet_report(statuses(), ["web3"], enforced=True)
    assert drift.verdict(unreachable_only)[0] is True
    assert drift.verdict(drift.fleet_report(statuses(), ["web2"])) == (False, "all 1 hosts in sync")


@pytest.mark.parametrize("diff,line", [
    ("", "changed"),
    ("--- a\n+++ b\n@@ -1 +1 @@\n-old rule\n+new   rule\n", "+1 -1: -old rule"),
    ("unit: not as the policy wants it", "unit: not as the policy wants it"),
    ("+" + "x" * 300, "+1 -0: +" + "x" * (drift.SUMMARY_CHARS - 3 - 8) + "..."),
])
def test_diff_summary(diff, line):
    assert drift.diff_summary(diff) == line
