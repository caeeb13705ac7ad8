# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""killswitch_files: writes only what differs, atomically, root-owned; check mode writes nothing; diff per file."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.netlock.killswitch.plugins.modules import killswitch_files as mod
from ansible_collections.netlock.killswitch.tests.unit.plugins.modules.utils import patch_module_args


@pytest.fixture(autouse=True)
def chown_recorded(monkeypatch):
    """Owner changes are recorded, not made: the tests run without root too."""
    calls = []
    monkeypatch.setattr(mod.os, "chown", lambda path, uid, gid: calls.append((os.path.basename(path), uid, gid)))
    return calls


def run(monkeypatch, capsys, tmp_path, directories, copies, check=False):
    args = dict(directories=directories, copies=copies, _ansible_check_mode=check, _ansible_diff=True,
                _ansible_tmpdir=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir(exist_ok=True)
    with patch_module_args(args):
        with pytest.raises(SystemExit) as info:
            mod.main()
    return info.value.code, json.loads(capsys.readouterr().out)


def test_writes_what_is_missing_then_nothing(monkeypatch, capsys, tmp_path, chown_recorded):
    policy = tmp_path / "policies" / "abc"
    copies = [{"dest": str(policy / "ruleset"), "content": "table inet k {}\n", "mode": "0600"},
              {"dest": str(tmp_path / "guard.json"), "content": "{}", "mode": "0644"}]
    code, result = run(monkeypatch, capsys, tmp_path, [{"path": str(policy), "mode": "0700"}], copies)
    assert code == 0 and result["changed"] is True
    assert result["changed_paths"] == [str(policy), str(policy / "ruleset"), str(tmp_path / "guard.json")]
    assert (policy / "ruleset").read_text() == "table inet k {}\n" and oct(policy.stat().st_mode & 0o777) == "0o700"
    assert oct((policy / "ruleset").stat().st_mode & 0o777) == "0o600"
    assert [entry["after"] for entry in result["diff"]] == ["table inet k {}\n", "{}"]
    assert ("abc", 0, 0) in chown_recorded and any(name.startswith(".ruleset.") and (uid, gid) == (0, 0)
                                                   for name, uid, gid in chown_recorded)
    if os.geteuid() == 0:  # as anyone else the files are not root's, which is a difference
        code, again = run(monkeypatch, capsys, tmp_path, [{"path": str(policy), "mode": "0700"}], copies)
        assert again["changed"] is False and again["changed_paths"] == [] and again["diff"] == []


def test_a_changed_file_or_mode_is_written_and_shown(monkeypatch, capsys, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("compares owners: root only")
    target = tmp_path / "unit.service"
    target.write_text("old\n")
    target.chmod(0o644)
    code, result = run(monkeypatch, capsys, tmp_path, [], [{"dest": str(target), "content": "new\n", "mode": "0644"}])
    assert result["changed_paths"] == [str(target)] and target.read_text() == "new\n"
    assert result["diff"] == [{"before_header": str(target), "before": "old\n", "after_header": str(target),
                               "after": "new\n"}]
    target.chmod(0o666)
    code, result = run(monkeypatch, capsys, tmp_path, [], [{"dest": str(target), "content": "new\n", "mode": "0644"}])
    assert result["changed_paths"] == [str(target)] and oct(target.stat().st_mode & 0o777) == "0o644"


def test_check_mode_writes_nothing(monkeypatch, capsys, tmp_path):
    target = tmp_path / "d" / "f"
    code, result = run(monkeypatch, capsys, tmp_path, [{"path": str(tmp_path / "d"), "mode": "0700"}],
                       [{"dest": str(target), "content": "x", "mode": "0600"}], check=True)
    assert code == 0 and result["changed"] is True and result["changed_paths"] == [str(tmp_path / "d"), str(target)]
    assert not (tmp_path / "d").exists()


def test_a_directory_where_a_file_belongs_fails_naming_it(monkeypatch, capsys, tmp_path):
    (tmp_path / "f").mkdir()
    code, result = run(monkeypatch, capsys, tmp_path, [], [{"dest": str(tmp_path / "f"), "content": "x", "mode": "0600"}])
    assert code == 1 and "is not a regular file" in result["msg"] and str(tmp_path / "f") in result["msg"]


def test_large_or_binary_content_shows_its_size_in_the_diff():
    assert mod._text(b"\xff\xfe") == "(2 bytes, not UTF-8 text)\n"
    assert mod._text(b"x" * (mod.DIFF_BYTES + 1)) == "(%d bytes)\n" % (mod.DIFF_BYTES + 1)
    assert mod._text(None) == ""


def test_templates_without_the_action_are_refused(monkeypatch, capsys, tmp_path):
    code, result = run(monkeypatch, capsys, tmp_path, [], [{"dest": str(tmp_path / "f"), "mode": "0600"}])
    assert code == 1 and "action plugin" in result["msg"]


def test_only_removes_what_else_matches_after_writing(monkeypatch, capsys, tmp_path):
    policies = tmp_path / "policies"
    for name in ("old", "older"):
        (policies / name).mkdir(parents=True)
        (policies / name / "ruleset").write_text("x")
    (policies / "stray-file").write_text("y")
    keep = policies / "new"
    args = ([{"path": str(keep), "mode": "0700"}], [{"dest": str(keep / "ruleset"), "content": "z", "mode": "0600"}])

    def go(check):
        with patch_module_args(dict(directories=args[0], copies=args[1], _ansible_check_mode=check, _ansible_diff=True,
                                    only=[{"pattern": str(policies / "*"), "paths": [str(keep)]}],
                                    _ansible_tmpdir=str(tmp_path))):
            with pytest.raises(SystemExit):
                mod.main()
        return json.loads(capsys.readouterr().out)

    checked = go(True)
    assert checked["changed_paths"][-3:] == [str(policies / name) for name in ("old", "older", "stray-file")]
    assert (policies / "old").exists(), "check mode removes nothing"
    go(False)
    assert sorted(p.name for p in policies.iterdir()) == ["new"] and (keep / "ruleset").read_text() == "z"
