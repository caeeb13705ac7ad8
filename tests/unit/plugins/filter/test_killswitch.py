# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The netlock.killswitch.drift_status filter, and the role's status.yml that calls it, run by Ansible itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.netlock.killswitch.plugins.filter.killswitch import FilterModule, drift_status
from ansible_collections.netlock.killswitch.plugins.plugin_utils.drift import PARTS

REPO_ROOT = Path(__file__).resolve().parents[4]
STATUS_TASKS = REPO_ROOT / "roles" / "killswitch" / "tasks" / "status.yml"
COLLECTIONS = REPO_ROOT / ".collections"


def test_registered_as_drift_status():
    assert FilterModule().filters() == {"drift_status": drift_status}


def test_filter_builds_the_documented_shape():
    apply = dict(changed=True, table_changed=True, file_changed=False, path="/etc/netlock-killswitch/ruleset.nft",
                 diff=[dict(before_header="live", before="a\n", after_header="desired", after="b\n")])
    status = drift_status({"table": apply, "file": apply, "boot_unit": [{}, {"skipped": True}]}, host="web1",
                          backend="nftables", digest="f" * 64)
    assert list(status) == ["host", "backend", "digest", "drifted", "parts"]
    assert status["host"] == "web1" and status["backend"] == "nftables" and status["digest"] == "f" * 16
    assert status["drifted"] is True
    assert list(status["parts"]) == list(PARTS)
    assert status["parts"]["table"] == dict(in_sync=False, diff="--- live\n+++ desired\n@@ -1 +1 @@\n-a\n+b")
    assert all(status["parts"][part] == dict(in_sync=True, diff="") for part in PARTS if part != "table")


def test_filter_errors_are_ansible_errors():
    with pytest.raises(AnsibleFilterError, match="unknown kill switch part"):
        drift_status({"tables": {}}, host="web1")
    with pytest.raises(AnsibleFilterError, match="expects a dict"):
        drift_status(["table"], host="web1")


def test_status_yml_is_one_set_fact_with_the_filter():
    tasks = yaml.safe_load(STATUS_TASKS.read_text())
    assert len(tasks) == 1
    task = tasks[0]
    assert set(task["ansible.builtin.set_fact"]) == {"killswitch_status", "killswitch_changed"}
    assert "netlock.killswitch.drift_status(" in task["ansible.builtin.set_fact"]["killswitch_status"]
    assert task["tags"] == ["always"]


PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  connection: local
  vars:
    killswitch_active_backend: nftables
  tasks:
    - name: Registered results as the role leaves them ({case})
      ansible.builtin.set_fact:
{facts}
    - ansible.builtin.include_tasks: {tasks}
    - ansible.builtin.copy:
        content: "{{{{ killswitch_status | to_json }}}}"
        dest: {out}
"""


def run_status_yml(tmp_path, case, facts, check=False):
    """status.yml run by ansible-playbook, with the given registered results; returns killswitch_status."""
    out = tmp_path / ("%s.json" % case)
    lines = "\n".join("        %s: %s" % (name, json.dumps(value)) for name, value in facts.items()) or \
        "        killswitch_nothing: true"
    playbook = tmp_path / ("%s.yml" % case)
    playbook.write_text(PLAYBOOK.format(case=case, facts=lines, tasks=STATUS_TASKS, out=out))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), str(playbook)] + (["--check"] if check else [])
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if check:  # copy does not write in check mode: read the fact from the output instead
        return None
    return json.loads(out.read_text())


def test_status_yml_with_nothing_registered(tmp_path):
    """Every registered variable undefined (e.g. a run cut short by tags): every part in sync, no error."""
    status = run_status_yml(tmp_path, "nothing", {})
    assert status == dict(host="localhost", backend="nftables", digest="", drifted=False,
                          parts={part: dict(in_sync=True, diff="") for part in PARTS})


def test_status_yml_with_drift_in_every_part(tmp_path):
    unit = dict(changed=True, name="netlock-killswitch-watch.service", enabled=True, state="started")
    facts = {
        "killswitch_rendered": {"digest": "a" * 64},
        "killswitch_apply": dict(changed=True, table_changed=True, file_changed=True, path="/etc/r.nft",
                                 diff=[dict(before_header="live", before="x\n", after_header="desired", after="y\n"),
                                       dict(before_header="/etc/r.nft", before="", after_header="/etc/r.nft",
                                            after="y\n")]),
        "killswitch_other_backends": dict(changed=False, results=[dict(changed=False, skipped=True)]),
        "killswitch_unit": dict(changed=False),
        "killswitch_unit_enabled": dict(changed=True, name="netlock-killswitch.service", enabled=True),
        "killswitch_guard_units": dict(changed=True, results=[dict(changed=True, dest="/etc/g.json",
                                                                   diff=[dict(before="1\n", after="2\n")])]),
        "killswitch_guard_timer": dict(changed=False, skipped=True),
        "killswitch_watch_service": unit,
        "killswitch_policy_store": dict(changed=True, results=[dict(changed=True, dest="/etc/p/fence.nft",
                                                                    diff=dict(prepared="fence.nft: missing"))]),
    }
    status = run_status_yml(tmp_path, "drift", facts)
    assert status["digest"] == "a" * 16 and status["drifted"] is True
    assert {part: s["in_sync"] for part, s in status["parts"].items()} == {part: False for part in PARTS}
    assert status["parts"]["table"]["diff"] == "--- live\n+++ desired\n@@ -1 +1 @@\n-x\n+y"
    assert status["parts"]["file"]["diff"] == "--- /etc/r.nft\n+++ /etc/r.nft\n@@ -0,0 +1 @@\n+y"
    assert status["parts"]["boot_unit"]["diff"] == "netlock-killswitch.service: not as the policy wants it (enabled=True)"
    assert status["parts"]["fence"]["diff"] == "fence.nft: missing"


def test_status_yml_runs_in_check_mode(tmp_path):
    run_status_yml(tmp_path, "check", {"killswitch_apply": dict(changed=False, table_changed=False)}, check=True)
