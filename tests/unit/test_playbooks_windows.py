# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/rollout.yml and playbooks/drift.yml on a mixed fleet, read as data (no Windows host here).

* a host is Windows by its connection (facts are not gathered when the reach task runs): WinRM, PSRP, or OpenSSH
  with a PowerShell or cmd shell;
* every reach task runs exactly one ping: ansible.builtin.ping on other hosts, on Windows hosts
  ansible.builtin.wait_for_connection (ansible-core runs its ping as win_ping there), not skipped
  in check mode, a timeout that is recorded as unreachable;
* the unreachable decision reads the result of the ping that ran, not the skipped one;
* the rollout's post-check runs the Linux module on Linux hosts only and the Windows module (state=query, its
  postcheck) on Windows hosts only, and the record keeps whichever ran;
* drift.yml runs the role on a reached Windows host, whose killswitch_status the role publishes.

Every condition is evaluated with StrictUndefined, so a test cannot pass by not evaluating one.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
import yaml

from ansible_collections.netlock.killswitch.plugins.action.killswitch_windows_firewall import ARGUMENT_SPEC

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
ENV = jinja2.Environment(undefined=jinja2.StrictUndefined)
ENV.filters["bool"] = lambda value: value if isinstance(value, bool) else str(value).strip().lower() in ("true", "yes", "1")
ENV.tests["unreachable"] = lambda result: bool(result.get("unreachable"))
ENV.tests["failed"] = lambda result: bool(result.get("failed"))
ENV.tests["skipped"] = lambda result: bool(result.get("skipped"))
PING, WINDOWS_PING = "ansible.builtin.ping", "ansible.builtin.wait_for_connection"
WINDOWS_CONNECTIONS = [{"ansible_connection": "winrm"}, {"ansible_connection": "psrp"},
                       {"ansible_connection": "ssh", "ansible_shell_type": "powershell"},
                       {"ansible_connection": "ssh", "ansible_shell_type": "cmd"}]
OTHER_CONNECTIONS = [{}, {"ansible_connection": "ssh"}, {"ansible_connection": "local"},
                     {"ansible_connection": "community.docker.docker"}, {"ansible_shell_type": "sh"}]


def plays(name):
    return yaml.safe_load((PLAYBOOKS / name).read_text())


def tasks_of(task_list):
    """Every task, blocks opened (with the block's vars passed down), in order."""
    for task in task_list:
        yield task
        for key in ("block", "rescue", "always"):
            for inner in tasks_of(task.get(key) or []):
                yield dict(inner, vars=dict(task.get("vars") or {}, **(inner.get("vars") or {})))


def expression(text):
    return str(text).strip().removeprefix("{{").removesuffix("}}").strip()


def holds(when, context):
    conditions = when if isinstance(when, list) else [when]
    return all(ENV.compile_expression(expression(condition))(**context) for condition in conditions)


def on_windows(play, connection):
    return ENV.compile_expression(expression(play["vars"]["killswitch_on_windows"]))(**connection)


REACHING_PLAYS = [("rollout.yml", 0), ("rollout.yml", 1), ("drift.yml", 0)]


@pytest.mark.parametrize("name, index", REACHING_PLAYS)
@pytest.mark.parametrize("connection", WINDOWS_CONNECTIONS + OTHER_CONNECTIONS)
def test_a_host_is_windows_by_its_connection(name, index, connection):
    assert on_windows(plays(name)[index], connection) is (connection in WINDOWS_CONNECTIONS)


def reach_tasks(play):
    return [task for task in tasks_of(play["tasks"]) if PING in task or WINDOWS_PING in task]


@pytest.mark.parametrize("name, index", REACHING_PLAYS)
@pytest.mark.parametrize("windows", [True, False])
def test_exactly_one_ping_runs_and_the_right_one(name, index, windows):
    play = plays(name)[index]
    reach = reach_tasks(play)
    assert len(reach) == 2
    ran = [task for task in reach if holds(task["when"], {"killswitch_on_windows": windows})]
    assert len(ran) == 1
    task = ran[0]
    assert (WINDOWS_PING in task) is windows and (PING in task) is not windows
    assert task["ignore_unreachable"] is True
    if windows:
        # a reach test must run under --check too, and a timeout is an unreachable host, not a failed run
        assert task["check_mode"] is False and task["ignore_errors"] is True
        assert 0 < task[WINDOWS_PING]["timeout"] <= 60


def unreachable_decision(play):
    """(the task that records an unreachable host, the name of the result variable it reads)."""
    for task in tasks_of(play["tasks"]):
        when = str(task.get("when", ""))
        if "is unreachable" in when and "not unreachable" not in when:
            return task, when.split()[0]
    raise AssertionError("no unreachable decision")


# A failed ansible.builtin.ping fails its task (no ignore_errors) and the rescue records it; a Windows reach that
# timed out is failed, with its errors ignored, and must be recorded as unreachable.
OUTCOMES = [(True, {"unreachable": True}, True), (True, {"failed": True, "msg": "timed out"}, True),
            (True, {"ping": "pong"}, False), (False, {"unreachable": True}, True), (False, {"ping": "pong"}, False)]


@pytest.mark.parametrize("name, index", REACHING_PLAYS)
@pytest.mark.parametrize("windows, outcome, recorded", OUTCOMES)
def test_the_decision_reads_the_ping_that_ran(name, index, windows, outcome, recorded):
    play = plays(name)[index]
    task, variable = unreachable_decision(play)
    reach = reach_tasks(play)
    posix = next(t["register"] for t in reach if PING in t)
    win = next(t["register"] for t in reach if WINDOWS_PING in t)
    skipped = {"skipped": True, "changed": False}
    context = {"killswitch_on_windows": windows, win: outcome if windows else skipped, posix: skipped if windows else outcome}
    if variable in (task.get("vars") or {}):
        chosen = ENV.compile_expression(expression(task["vars"][variable]))(**context)
    else:  # drift.yml keeps the answer in a fact first
        keep = next(t for t in tasks_of(play["tasks"]) if variable in (t.get("ansible.builtin.set_fact") or {}))
        chosen = ENV.compile_expression(expression(keep["ansible.builtin.set_fact"][variable]))(**context)
    assert chosen == outcome
    assert holds(task["when"], {variable: chosen}) is recorded


def converge_tasks():
    play = plays("rollout.yml")[1]
    return list(tasks_of(play["tasks"]))


@pytest.mark.parametrize("os_family", ["Windows", "Debian", "RedHat"])
def test_the_post_check_runs_the_module_of_the_hosts_os(os_family):
    linux = next(t for t in converge_tasks() if "netlock.killswitch.killswitch_status" in t)
    windows = next(t for t in converge_tasks() if "netlock.killswitch.killswitch_windows_firewall" in t)
    context = {"ansible_check_mode": False, "killswitch_windows": os_family == "Windows"}
    assert holds(linux["when"], context) is (os_family != "Windows")
    assert holds(windows["when"], context) is (os_family == "Windows")
    assert not holds(windows["when"], dict(context, ansible_check_mode=True))


def test_the_windows_post_check_queries_and_fails_unless_in_force():
    task = next(t for t in converge_tasks() if "netlock.killswitch.killswitch_windows_firewall" in t)
    args = task["netlock.killswitch.killswitch_windows_firewall"]
    assert set(args) <= set(ARGUMENT_SPEC) and args["state"] == "query"
    fails = expression(task["failed_when"])
    register = task["register"]
    assert ENV.compile_expression(fails)(**{register: {"postcheck": {"ok": False}}}) is True
    assert ENV.compile_expression(fails)(**{register: {"postcheck": {"ok": True}}}) is False


def test_the_record_keeps_the_post_check_that_ran():
    record = next(t for t in converge_tasks() if t.get("name") == "Record the result")
    status = expression(record["ansible.builtin.set_fact"]["killswitch_rollout_result"]["status"])
    windows = {"killswitch_postcheck": {"skipped": True}, "killswitch_postcheck_windows": {"postcheck": {"ok": True, "problems": []}}}
    linux = {"killswitch_postcheck": {"ok": True, "table": {}}, "killswitch_postcheck_windows": {"skipped": True}}
    assert ENV.compile_expression(status)(**windows) == {"ok": True, "problems": []}
    assert ENV.compile_expression(status)(**linux) == {"ok": True, "table": {}}


def test_drift_runs_the_role_on_a_reached_windows_host():
    play = plays("drift.yml")[0]
    converge = next(t for t in play["tasks"] if t.get("name", "").startswith("Converge the kill switch"))
    assert holds(converge["when"], {"killswitch_drift_reach": {"ping": "pong", "changed": False}})
    assert not holds(converge["when"], {"killswitch_drift_reach": {"failed": True}})
    assert any("ansible.builtin.include_role" in t for t in converge["block"])
