# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role's OS dispatch and its Windows tasks, read as data (no Windows host here).

* ``tasks/main.yml`` sends a Windows host to ``windows.yml`` / ``windows_absent.yml`` and every other host to the
  Linux ``present.yml`` / ``absent.yml``, never both;
* the Windows tasks use nothing of the Linux path (packages, systemd, files under /etc);
* they pass the module only options it takes, from role variables the role documents;
* the absent path's ``killswitch_status`` is the shape ``playbooks/drift.yml`` reads, built by the filter.
* ``tasks_from: preflight`` (``playbooks/rollout.yml``) on Windows is the controller's render only, nothing POSIX,
  and on Linux still finds the tools and checks the ruleset;
* ``tasks_from: verify`` on Windows fails, saying killswitch_verify is not available there, before any Linux check.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pytest
import yaml

from ansible_collections.netlock.killswitch.plugins.action.killswitch_windows_firewall import ARGUMENT_SPEC
from ansible_collections.netlock.killswitch.plugins.filter.killswitch import drift_status
from ansible_collections.netlock.killswitch.plugins.plugin_utils.drift import PARTS

ROLE = Path(__file__).resolve().parents[3] / "roles" / "killswitch"
MODULE = "netlock.killswitch.killswitch_windows_firewall"
LINUX_ONLY = ("ansible.builtin.package", "ansible.builtin.systemd_service", "ansible.builtin.template",
              "ansible.builtin.copy", "ansible.builtin.command", "ansible.builtin.file",
              "netlock.killswitch.killswitch_firewall")
ENV = jinja2.Environment(undefined=jinja2.StrictUndefined)
ENV.filters["netlock.killswitch.drift_status"] = drift_status
ENV.filters["bool"] = lambda value: value if isinstance(value, bool) else str(value).strip().lower() in ("true", "yes", "1")


def tasks(name):
    return yaml.safe_load((ROLE / "tasks" / name).read_text())


ROLE_VARS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())


def windows(**host_vars):
    """killswitch_windows as vars/main.yml computes it for a host with these variables."""
    return ENV.from_string(ROLE_VARS["killswitch_windows"]).render(**host_vars).strip() == "True"


def facts_context(os_family):
    facts = {"ansible_facts": {"os_family": os_family}}
    return dict(facts, killswitch_windows=windows(**facts))


def included(os_family, state):
    """The task files main.yml includes after setup.yml for a host of this OS family and state."""
    files = []
    for task in tasks("main.yml"):
        target = task.get("ansible.builtin.include_tasks")
        if isinstance(target, dict):
            target = target.get("file")
        if not isinstance(target, str) or target == "setup.yml":
            continue
        condition = task.get("when", "true")
        context = dict(facts_context(os_family), killswitch_state=state)
        if ENV.compile_expression(condition)(**context):
            files.append(ENV.from_string(target).render(**context))
    return files


@pytest.mark.parametrize("os_family", ["Debian", "RedHat", "Suse"])
@pytest.mark.parametrize("state", ["present", "absent"])
def test_linux_hosts_take_the_linux_path(os_family, state):
    assert included(os_family, state) == ["%s.yml" % state]


def test_windows_hosts_take_the_windows_path():
    assert included("Windows", "present") == ["windows.yml"]
    assert included("Windows", "absent") == ["windows_absent.yml"]


@pytest.mark.parametrize("name", ["windows.yml", "windows_absent.yml"])
def test_the_windows_tasks_use_nothing_of_the_linux_path(name):
    used = {key for task in tasks(name) for key in task if "." in key}
    assert not used & set(LINUX_ONLY), used & set(LINUX_ONLY)
    assert "/etc/" not in (ROLE / "tasks" / name).read_text()


@pytest.mark.parametrize("name", ["windows.yml", "windows_absent.yml"])
def test_the_windows_tasks_pass_options_the_module_takes_from_documented_variables(name):
    documented = set(yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"])
    task = next(t for t in tasks(name) if MODULE in t)
    passed = task[MODULE]
    assert set(passed) <= set(ARGUMENT_SPEC)
    for option, value in passed.items():
        for variable in re.findall(r"\bkillswitch_\w+", str(value)):
            assert variable in documented or variable == "killswitch_rendered", (option, variable)


def test_present_passes_the_rendered_document_and_every_windows_variable():
    passed = next(t for t in tasks("windows.yml") if MODULE in t)[MODULE]
    assert passed["document"] == "{{ killswitch_rendered.ruleset | from_json }}"
    assert passed["exclusive"] == "{{ killswitch_windows_exclusive }}"
    assert passed["state_dir"] == "{{ killswitch_windows_state_dir }}"
    assert passed["guard_enabled"] == "{{ killswitch_guard_enabled }}"
    assert passed["guard_interval"] == "{{ killswitch_guard_interval }}"
    # the safe apply of the role interface, as on Linux: armed, confirmed over a new connection, else rolled back
    assert passed["rollback_timeout"] == "{{ killswitch_safe_apply_timeout }}"
    status = next(t for t in tasks("windows.yml") if "killswitch_status" in t.get("ansible.builtin.set_fact", {}))
    assert "killswitch_windows_apply.status" in status["ansible.builtin.set_fact"]["killswitch_status"]


def absent_status(result):
    task = next(t for t in tasks("windows_absent.yml") if "killswitch_status" in t.get("ansible.builtin.set_fact", {}))
    expression = task["ansible.builtin.set_fact"]["killswitch_status"].strip()
    assert expression.startswith("{{") and expression.endswith("}}")
    return ENV.compile_expression(expression[2:-2])(killswitch_windows_apply=result, inventory_hostname="win1")


def test_absent_publishes_a_status_drift_reports_can_read():
    removed = {"changed": True, "diff": {"before": "rule a\nguard task: present\n", "after": ""}}
    status = absent_status(removed)
    assert status["host"] == "win1" and status["backend"] == "windows" and set(status["parts"]) == set(PARTS)
    assert status["drifted"] is True and "-rule a" in status["parts"]["table"]["diff"]
    assert absent_status({"changed": False, "diff": {"before": "", "after": ""}})["drifted"] is False


# --------------------------------------------------------------------------- preflight and verify (rollout.yml, molecule)

POSIX = LINUX_ONLY + ("ansible.builtin.shell", "ansible.builtin.raw", "ansible.builtin.script")


def condition_holds(when, context):
    conditions = when if isinstance(when, list) else [when]
    return all(ENV.compile_expression(str(condition))(**context) for condition in conditions)


def what_runs(task_list, context):
    """(action, argument) of each task of task_list that runs for this context, blocks opened, in order.

    A task whose condition is false is left out with everything under it, as Ansible skips it; a condition naming a
    variable the context lacks fails (StrictUndefined), so a test cannot pass by not evaluating it."""
    ran = []
    for task in task_list:
        if "when" in task and not condition_holds(task["when"], context):
            continue
        if "block" in task:
            ran += what_runs(task["block"], context)
            continue
        action = next(key for key in task if "." in key)
        argument = task[action]
        ran.append((action, argument if isinstance(argument, str) else None))
    return ran


def context(os_family, **extra):
    return dict(facts_context(os_family), killswitch_state="present", inventory_hostname="win1", **extra)


def test_preflight_on_windows_is_the_controller_render_only():
    ran = what_runs(tasks("preflight.yml"), context("Windows"))
    assert ran == [("ansible.builtin.include_tasks", "setup.yml")]


def test_setup_runs_nothing_posix_on_a_host():
    used = {key for task in tasks("setup.yml") for key in task if "." in key}
    assert used == {"netlock.killswitch.killswitch_policy"}
    assert not used & set(POSIX)


@pytest.mark.parametrize("os_family", ["Debian", "RedHat"])
def test_preflight_on_linux_still_finds_the_tools_and_checks_the_ruleset(os_family):
    ran = what_runs(tasks("preflight.yml"), context(os_family, killswitch_tools={"stdout_lines": []}))
    assert ran[:2] == [("ansible.builtin.include_tasks", "setup.yml"), ("ansible.builtin.include_tasks", "tools.yml")]
    assert ran[2][0] == "netlock.killswitch.killswitch_firewall"
    assert len(ran) == 3


def test_preflight_check_can_fail_on_a_posix_task_for_windows():
    """The check above would catch a POSIX task left unconditional in the preflight."""
    unguarded = tasks("preflight.yml") + [{"name": "Find the tools", "ansible.builtin.include_tasks": "tools.yml"}]
    ran = what_runs(unguarded, context("Windows"))
    assert ("ansible.builtin.include_tasks", "tools.yml") in ran


def refusal(task_list):
    return next(t for t in task_list if "ansible.builtin.fail" in t)


def test_verify_fails_on_windows_before_any_linux_check_saying_why():
    task_list = tasks("verify.yml")
    ran = what_runs(task_list, context("Windows"))
    assert ran[:2] == [("ansible.builtin.include_tasks", "setup.yml"), ("ansible.builtin.fail", None)]
    # the fail stops the host: nothing Linux runs before it
    assert not {action for action, _argument in ran[:2]} & set(POSIX + ("netlock.killswitch.killswitch_verify",))
    message = " ".join(ENV.from_string(refusal(task_list)["ansible.builtin.fail"]["msg"]).render(**context("Windows")).split())
    assert message.startswith("win1 runs Windows, and netlock.killswitch.killswitch_verify is not available for Windows yet")
    assert "nothing was verified" in message and "docs/windows.md" in message


@pytest.mark.parametrize("os_family", ["Debian", "RedHat"])
def test_verify_on_linux_runs_killswitch_verify(os_family):
    ran = what_runs(tasks("verify.yml"), context(os_family))
    assert [action for action, _argument in ran] == ["ansible.builtin.include_tasks", "netlock.killswitch.killswitch_verify"]


@pytest.mark.parametrize("host_vars,expected", [
    ({"ansible_facts": {"os_family": "Windows"}}, True),
    ({"ansible_facts": {"os_family": "Debian"}, "ansible_connection": "winrm"}, False),  # gathered facts win
    ({"ansible_facts": {}}, False),
    ({"ansible_facts": {}, "ansible_connection": "winrm"}, True),
    ({"ansible_facts": {}, "ansible_connection": "ansible.builtin.psrp"}, True),
    ({"ansible_facts": {}, "ansible_connection": "ssh", "ansible_shell_type": "powershell"}, True),
    ({"ansible_facts": {}, "ansible_connection": "ssh", "ansible_shell_type": "cmd"}, True),
    ({"ansible_facts": {}, "ansible_connection": "ssh", "ansible_shell_type": "sh"}, False),
    ({"ansible_facts": {}, "ansible_connection": "community.docker.docker"}, False),
])
def test_windows_is_told_without_gathering_facts(host_vars, expected):
    """The role gathers no facts (bench B2): a Windows host is told by its connection or shell, as killswitch_policy
    tells it."""
    assert windows(**host_vars) is expected
