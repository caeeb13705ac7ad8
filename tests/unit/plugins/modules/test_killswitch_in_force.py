# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""killswitch_in_force: what the module reads on a host, and (end to end, ansible-playbook on localhost) that its
action renders exactly what ansible.builtin.template and copy write, so that the role's no-op check cannot disagree
with the tasks it skips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.netlock.killswitch.plugins.module_utils.role_parts import app_dropin_parts, parts
from ansible_collections.netlock.killswitch.plugins.modules import killswitch_in_force as mod

REPO_ROOT = Path(__file__).resolve().parents[4]
COLLECTIONS = REPO_ROOT / ".collections"


def test_path_state_of_a_file_a_directory_and_nothing(tmp_path):
    target = tmp_path / "f"
    target.write_text("hello\n")
    target.chmod(0o640)
    state = mod.path_state(str(target))
    assert state["type"] == "file" and state["mode"] == "0640"
    assert state["sha256"] == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    assert mod.path_state(str(tmp_path))["type"] == "directory" and "sha256" not in mod.path_state(str(tmp_path))
    assert mod.path_state(str(tmp_path / "missing")) is None
    (tmp_path / "link").symlink_to(target)
    assert mod.path_state(str(tmp_path / "link"))["type"] == "other"  # the role writes files, not links


def test_app_dropins_expand_to_a_template_a_directory_and_a_stale_pattern_per_service():
    templates, directories, only = app_dropin_parts(
        {"template": "app.conf.j2", "unit_dir": "/etc/systemd/system/", "name": "app.conf", "services": ["a.service"]})
    assert templates == [{"src": "app.conf.j2", "dest": "/etc/systemd/system/a.service.d/app.conf", "mode": "0644",
                          "item": "a.service"}]
    assert directories == [{"path": "/etc/systemd/system/a.service.d", "mode": "0755"}]
    assert only == [{"pattern": "/etc/systemd/system/*/app.conf", "paths": ["/etc/systemd/system/a.service.d/app.conf"]},
                    {"pattern": "/etc/systemd/system/app.conf", "paths": []}]
    assert app_dropin_parts(None) == ([], [], [])


def test_parts_lists_templates_copies_and_drop_ins():
    files, directories, only = parts({
        "templates": [{"src": "t.j2", "dest": "/a", "mode": "0644"}], "copies": [{"dest": "/b", "mode": "0600"}],
        "directories": [{"path": "/d", "mode": "0700"}], "only": [{"pattern": "/d/*", "paths": ["/d/x"]}],
        "app_dropins": {"template": "app.j2", "unit_dir": "/u", "name": "n.conf", "services": ["s"]}})
    assert [(f["dest"], f["kind"]) for f in files] == [("/a", "template"), ("/u/s.d/n.conf", "template"), ("/b", "copy")]
    assert [d["path"] for d in directories] == ["/d", "/u/s.d"]
    assert [o["pattern"] for o in only] == ["/d/*", "/u/*/n.conf", "/u/n.conf"]


class FakeModule:
    def __init__(self, answers):
        self.answers = answers
        self.seen = []

    def get_bin_path(self, name, required=False):
        return "/usr/bin/" + name

    def run_command(self, argv):
        self.seen.append(list(argv))
        return self.answers[argv[0].rsplit("/", 1)[-1]]


def test_unit_states_is_one_systemctl_call_for_every_unit():
    out = ("Id=a.service\nLoadState=loaded\nUnitFileState=enabled\nActiveState=active\nNeedDaemonReload=no\n\n"
           "Id=b.timer\nLoadState=not-found\nUnitFileState=\nActiveState=inactive\nNeedDaemonReload=no\n")
    module = FakeModule({"systemctl": (0, out, "")})
    states = mod.unit_states(module, ["a.service", "b.timer"])
    assert len(module.seen) == 1 and module.seen[0][-2:] == ["a.service", "b.timer"]
    assert states["a.service"]["ActiveState"] == "active" and states["b.timer"]["LoadState"] == "not-found"
    assert mod.unit_states(FakeModule({"systemctl": (1, "", "no bus")}), ["a.service"]) == {}


def test_nft_tables_reports_the_wanted_tables_loaded():
    module = FakeModule({"nft": (0, "table inet killswitch\ntable inet killswitch_fence\ntable bridge killswitch\n", "")})
    assert mod.nft_tables(module, ["inet killswitch_fence", "inet other"]) == ["inet killswitch_fence"]
    assert mod.nft_tables(module, []) == [] and len(module.seen) == 1


# --------------------------------------------------------------------------- end to end: the action against the modules

TEMPLATE = """# {{ ansible_managed }}
[Service]
{% if item is defined %}
# for {{ item }}
{% endif %}
ExecStart={{ demo_config.load }}
Environment=LIST={{ demo_config.list | quote }}
"""

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  connection: local
  vars:
    demo_config: {{load: "{{{{ killswitch_apply.commands.load }}}}", list: "{{{{ killswitch_apply.commands.list }}}}"}}
    check:
      firewall: {{backend: nftables, ruleset: "", table: killswitch_unit_test, path: "{dir}/ruleset.nft",
                 expected_path: "{dir}/expected.txt"}}
      templates: [{{src: demo.j2, dest: "{dir}/demo.service", mode: "0644"}}]
      copies:
        - {{src: payload.bin, dest: "{dir}/payload.bin", mode: "0600"}}
        - {{content: "no newline at the end", dest: "{dir}/content.txt", mode: "0640"}}
      directories: [{{path: "{dir}/policy", mode: "0700"}}]
      app_dropins: {{template: demo.j2, unit_dir: "{dir}/units", name: app.conf, services: [one.service]}}
      only: [{{pattern: "{dir}/policy/*", paths: []}}]
    files:
      templates: [{{src: demo.j2, dest: "{dir}/files/demo.service", mode: "0644"}}]
      copies:
        - {{src: notes.txt, dest: "{dir}/files/notes.txt", mode: "0600"}}
        - {{content: "no newline at the end", dest: "{dir}/files/content.txt", mode: "0640"}}
      directories: [{{path: "{dir}/files/policy", mode: "0700"}}]
  tasks:
    - name: Before anything is written
      netlock.killswitch.killswitch_in_force: "{{{{ check }}}}"
      register: before
    - name: Written by the modules the role uses
      vars:
        killswitch_apply: "{{{{ before }}}}"
      block:
        - ansible.builtin.template: {{src: demo.j2, dest: "{dir}/demo.service", mode: "0644"}}
        - ansible.builtin.copy: {{src: payload.bin, dest: "{dir}/payload.bin", mode: "0600"}}
        - ansible.builtin.copy: {{content: "no newline at the end", dest: "{dir}/content.txt", mode: "0640"}}
        - ansible.builtin.file: {{path: "{dir}/policy", state: directory, mode: "0700"}}
        - ansible.builtin.file: {{path: "{dir}/units/one.service.d", state: directory, mode: "0755"}}
        - ansible.builtin.template: {{src: demo.j2, dest: "{dir}/units/one.service.d/app.conf", mode: "0644"}}
          loop: [one.service]
    - name: After
      netlock.killswitch.killswitch_in_force: "{{{{ check }}}}"
      register: after
    - name: The same files written by killswitch_files, elsewhere
      netlock.killswitch.killswitch_files: "{{{{ files }}}}"
      vars:
        killswitch_apply: "{{{{ before }}}}"
      register: written
    - name: After killswitch_files
      netlock.killswitch.killswitch_in_force: "{{{{ check | combine(files) }}}}"
      register: after_files
    - name: A template that reads what only an apply returns, on a host without the firewall's tools
      netlock.killswitch.killswitch_in_force:
        firewall: "{{{{ check.firewall }}}}"
        templates: [{{src: later.j2, dest: "{dir}/later.service", mode: "0644"}}]
      register: unrendered
    - name: A stale drop-in and a changed file
      ansible.builtin.shell: "mkdir -p {dir}/units/gone.service.d && echo x > {dir}/units/gone.service.d/app.conf && echo >> {dir}/demo.service"
    - name: Drifted
      netlock.killswitch.killswitch_in_force: "{{{{ check }}}}"
      register: drifted
    - ansible.builtin.copy:
        content: "{{{{ {{'before': before, 'after': after, 'drifted': drifted, 'written': written,
                        'after_files': after_files, 'unrendered': unrendered}} | to_json }}}}"
        dest: "{dir}/out.json"
"""


@pytest.mark.skipif(not any(os.access(os.path.join(d, "nft"), os.X_OK) for d in ("/usr/sbin", "/sbin")),
                    reason="the commands the templates read come from the host's nft")
def test_the_action_renders_what_template_and_copy_write(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "demo.j2").write_text(TEMPLATE)
    (tmp_path / "templates" / "later.j2").write_text("ExecStart={{ not_applied_yet.commands.load }}\n")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "payload.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "files" / "notes.txt").write_text("Ünïcode text\n")
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK.format(dir=work))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), str(playbook)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads((work / "out.json").read_text())
    ours = str(work)

    def file_problems(result):
        return sorted(p for p in result["differences"] if p.startswith(ours) and ": owner" not in p
                      and ": group" not in p)  # owner and group are root on a host, whoever runs this test

    assert not out["before"]["in_force"]
    assert file_problems(out["before"]) == sorted("%s/%s: missing" % (ours, name) for name in (
        "content.txt", "demo.service", "payload.bin", "policy", "units/one.service.d",
        "units/one.service.d/app.conf"))
    assert out["before"]["commands"]["load"] and out["before"]["commands"]["list"]
    assert file_problems(out["after"]) == [], out["after"]["differences"]
    assert any(p.startswith("the ruleset is not proven in force") for p in out["after"]["differences"])
    written = sorted(out["written"]["changed_paths"])
    names = ("content.txt", "demo.service", "notes.txt", "policy")
    assert written == sorted("%s/files/%s" % (ours, name) for name in names)
    assert not [p for p in file_problems(out["after_files"]) if p.startswith(ours + "/files/")], out["after_files"]
    for name in ("demo.service", "content.txt"):  # byte for byte what template and copy wrote (before the drift)
        by_modules = out["after"]["observed"]["paths"]["%s/%s" % (ours, name)]["sha256"]
        assert out["after_files"]["observed"]["paths"]["%s/files/%s" % (ours, name)]["sha256"] == by_modules
    assert oct((work / "files" / "content.txt").stat().st_mode & 0o777) == "0o640"
    assert out["unrendered"]["in_force"] is False and not out["unrendered"].get("failed")
    assert [p.split(":")[0] for p in file_problems(out["unrendered"])] == ["%s/later.service" % ours]
    assert "could not be rendered" in file_problems(out["unrendered"])[0]
    assert "%s/later.service" % ours in out["unrendered"]["todo"]["paths"]
    assert file_problems(out["drifted"]) == ["%s/demo.service: content differs" % ours,
                                             "%s/units/gone.service.d/app.conf: stale" % ours]
