# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""tasks/app_dropins.yml run for real (ansible-playbook, connection local) on a unit directory of the test's own, with
a fake systemctl: each service with an app exception gets the ExecStartPre drop-in that runs ``guard.py cgroups``, a
second run changes nothing, and the drop-ins of services no longer listed go while other drop-ins stay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
PLAY = """\
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.import_role:
        name: netlock.killswitch.killswitch
        tasks_from: app_dropins.yml
"""


def run_play(tmp_path, services):
    playbook = Path(sys.executable).parent / "ansible-playbook"
    if not playbook.exists():
        pytest.skip("ansible-playbook is not installed beside %s" % sys.executable)
    extra = {"killswitch_guard_unit_dir": str(tmp_path / "units"), "ansible_python_interpreter": sys.executable}
    if services is not None:
        extra["killswitch_rendered"] = {"app_services": services}
    env = dict(os.environ, PATH="%s:%s" % (tmp_path / "bin", os.environ.get("PATH", "")),
               ANSIBLE_COLLECTIONS_PATH=str(REPO_ROOT / ".collections"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([str(playbook), "-i", "localhost,", str(tmp_path / "play.yml"), "-e", json.dumps(extra)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recap = [line for line in proc.stdout.splitlines() if line.startswith("localhost ")][-1]
    return int(recap.split("changed=")[1].split()[0])


def test_drop_ins_follow_the_services_with_app_exceptions(tmp_path):
    (tmp_path / "play.yml").write_text(PLAY)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "systemctl").write_text('#!/bin/sh\necho "$*" >> "%s"\n' % (tmp_path / "calls"))
    (tmp_path / "bin" / "systemctl").chmod(0o755)
    units = tmp_path / "units"
    (units / "old.service.d").mkdir(parents=True)
    (units / "old.service.d" / "netlock-killswitch-app.conf").write_text("[Service]\n")
    (units / "old.service.d" / "theirs.conf").write_text("[Service]\n")

    def files():
        return sorted(str(path.relative_to(units)) for path in units.rglob("*") if path.is_file())

    assert run_play(tmp_path, ["backup.service", "a.service"]) > 0
    assert files() == ["a.service.d/netlock-killswitch-app.conf", "backup.service.d/netlock-killswitch-app.conf",
                       "old.service.d/theirs.conf"]
    text = (units / "backup.service.d" / "netlock-killswitch-app.conf").read_text()
    assert ("\n[Service]\nExecStartPre=-+/usr/bin/python3 /etc/netlock-killswitch/guard.py --config "
            "/etc/netlock-killswitch/guard.json cgroups\n") in text
    assert (tmp_path / "calls").read_text() == "daemon-reload\n"
    assert run_play(tmp_path, ["backup.service", "a.service"]) == 0, "a second run changes nothing"
    assert run_play(tmp_path, None) > 0  # absent, or no app exceptions left
    assert files() == ["old.service.d/theirs.conf"]
    assert (tmp_path / "calls").read_text() == "daemon-reload\n" * 2
