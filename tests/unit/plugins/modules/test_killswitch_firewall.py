# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""killswitch_firewall: present()/absent() with a fake module and a fake Nft; main() end to end."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.netlock.killswitch.plugins.modules import killswitch_firewall as mod
from ansible_collections.netlock.killswitch.tests.unit.plugins.modules.utils import patch_module_args

RULESET = "table inet killswitch\ndelete table inet killswitch\ntable inet killswitch {\n}\n# new\n"
OLD_RULESET = "table inet killswitch\ndelete table inet killswitch\ntable inet killswitch {\n}\n# old\n"
DESIRED = [{"table": {"family": "inet", "name": "killswitch"}}, {"chain": {"name": "output", "policy": "drop"}}]
DESIRED_TEXT = "table inet killswitch {\n\tchain output {\n\t}\n}\n"
OTHER = [{"table": {"family": "inet", "name": "killswitch"}}, {"chain": {"name": "output", "policy": "accept"}}]
OTHER_TEXT = "table inet killswitch {\n\tchain output { policy accept; }\n}\n"


class FailJson(Exception):
    def __init__(self, kwargs):
        super().__init__(kwargs.get("msg"))
        self.kwargs = kwargs


class FakeModule:
    """What present()/absent() use of AnsibleModule; tmpdir stands in for the module's own temp dir."""

    def __init__(self, tmpdir, check_mode=False):
        self.tmpdir = str(tmpdir)
        self.check_mode = check_mode
        self.moves = []
        self.commands = []

    def get_bin_path(self, name, required=False):
        return "/usr/bin/" + name

    def run_command(self, argv):
        self.commands.append(argv)
        return 0, "", ""

    def fail_json(self, **kwargs):
        raise FailJson(kwargs)

    def atomic_move(self, src, dest):
        self.moves.append((src, dest))
        os.replace(src, dest)


class FakeNft:
    """Scripted answers; records each call and the staged file's content when nft saw it."""

    name = "nftables"
    desired_checks = False  # the real Nft's desired() is its check; here both are scripted apart

    def load_argv(self, path):
        return ["/usr/sbin/nft", "-f", path]

    def list_command(self, table):
        return "nft list table inet %s" % table

    def previous_payload(self, table, live):
        return "table inet %s\ndelete table inet %s\n%s" % (table, table, live[1] if live else "")

    def __init__(self, live=None, desired=(DESIRED, DESIRED_TEXT), check_error=None, apply_error=None,
                 delete_error=None, desired_error=None):
        self.live_value = live
        self.desired_value = desired
        self.check_error = check_error
        self.apply_error = apply_error
        self.delete_error = delete_error
        self.desired_error = desired_error
        self.calls = []
        self.seen = {}

    def _saw(self, name, path):
        with open(path) as handle:
            self.seen[name] = (path, handle.read())

    def check(self, path):
        self.calls.append("check")
        self._saw("check", path)
        return self.check_error

    def desired(self, path, table):
        self.calls.append("desired")
        self._saw("desired", path)
        if self.desired_error:
            raise RuntimeError(self.desired_error)
        return self.desired_value

    def live(self, table):
        self.calls.append("live")
        return self.live_value

    def listing(self, table):
        self.calls.append("listing")
        return self.live_value[1] if self.live_value else ""

    def apply(self, path):
        self.calls.append("apply")
        self._saw("apply", path)
        if self.apply_error is None:
            self.live_value = self.desired_value
        return self.apply_error

    def delete(self, table):
        self.calls.append("delete")
        if self.delete_error is None:
            self.live_value = None
        return self.delete_error


@pytest.fixture
def module_tmpdir(tmp_path):
    """The module's temp dir (AnsibleModule.tmpdir), apart from the target directory."""
    directory = tmp_path / "ansible-moduletmp"
    directory.mkdir()
    return directory


@pytest.fixture
def new_module(module_tmpdir):
    def make(check_mode=False):
        return FakeModule(module_tmpdir, check_mode=check_mode)
    return make


@pytest.fixture(autouse=True)
def rollback_dir(tmp_path, monkeypatch):
    """The rollback state lives under the test's own directory, never under /run."""
    directory = tmp_path / "run" / "rollback"
    monkeypatch.setattr(mod.rollback, "ROLLBACK_DIR", str(directory))
    return directory


@pytest.fixture
def target(tmp_path):
    directory = tmp_path / "etc" / "netlock-killswitch"
    directory.mkdir(parents=True)
    return directory / "ruleset.nft"


def listing(directory):
    return sorted(os.listdir(directory))


def present(module, nft, path, ruleset=RULESET):
    return mod.present(module, nft, "killswitch", str(path), ruleset)


# --------------------------------------------------------------------------- present


def test_unchanged_reports_no_change(new_module, target):
    target.write_text(RULESET)
    before = os.stat(target)
    nft = FakeNft(live=(DESIRED, DESIRED_TEXT))
    module = new_module()
    result = present(module, nft, target)
    assert result["changed"] is False
    assert result["table_changed"] is False
    assert result["file_changed"] is False
    assert result["table"] == DESIRED_TEXT
    assert result["path"] == str(target)
    assert "apply" not in nft.calls and module.moves == []
    assert os.stat(target).st_mtime_ns == before.st_mtime_ns and os.stat(target).st_ino == before.st_ino
    assert listing(target.parent) == ["ruleset.nft"], "the staged file must not be left behind"


def test_staged_file_is_checked_before_anything_else(new_module, module_tmpdir, target):
    nft = FakeNft(live=None)
    present(new_module(), nft, target)
    assert nft.calls[0] == "check"
    probe, content = nft.seen["check"]
    assert content == RULESET
    assert os.path.dirname(probe) == str(module_tmpdir), "checked from the module's temp dir, not beside the target"
    assert nft.seen["desired"][0] == probe


def test_applied_file_is_staged_beside_the_target(new_module, target):
    """When applying, the file nft loads is the one renamed into place: same directory, atomic rename."""
    module = new_module()
    nft = FakeNft(live=None)
    present(module, nft, target)
    staged, content = nft.seen["apply"]
    assert content == RULESET
    assert os.path.dirname(staged) == str(target.parent)
    assert staged != str(target)
    assert module.moves == [(staged, str(target))]
    assert listing(target.parent) == ["ruleset.nft"]


def test_live_differs_applies_the_table(new_module, target):
    target.write_text(RULESET)
    nft = FakeNft(live=(OTHER, OTHER_TEXT))
    module = new_module()
    result = present(module, nft, target)
    assert result["changed"] is True
    assert result["table_changed"] is True
    assert result["file_changed"] is False
    assert nft.calls.count("apply") == 1
    assert nft.seen["apply"][1] == RULESET
    assert module.moves == []
    assert target.read_text() == RULESET
    assert result["table"] == DESIRED_TEXT
    assert result["diff"][0]["before"] == OTHER_TEXT
    assert result["diff"][0]["after"] == DESIRED_TEXT
    assert len(result["diff"]) == 1
    assert listing(target.parent) == ["ruleset.nft"]


def test_missing_table_is_applied(new_module, target):
    target.write_text(RULESET)
    nft = FakeNft(live=None)
    result = present(new_module(), nft, target)
    assert result["changed"] is True and result["table_changed"] is True
    assert "apply" in nft.calls
    assert result["diff"][0]["before"] == ""


def test_file_missing_is_written(new_module, target):
    nft = FakeNft(live=(DESIRED, DESIRED_TEXT))
    module = new_module()
    result = present(module, nft, target)
    assert result["changed"] is True
    assert result["file_changed"] is True
    assert result["table_changed"] is False
    assert "apply" not in nft.calls
    assert target.read_text() == RULESET
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert module.moves == [(module.moves[0][0], str(target))]
    assert result["diff"][1] == {"before_header": str(target), "before": "", "after_header": str(target),
                                 "after": RULESET}
    assert listing(target.parent) == ["ruleset.nft"]


def test_file_differs_is_replaced(new_module, target):
    target.write_text(OLD_RULESET)
    result = present(new_module(), FakeNft(live=(DESIRED, DESIRED_TEXT)), target)
    assert result["file_changed"] is True
    assert target.read_text() == RULESET
    assert result["diff"][1]["before"] == OLD_RULESET


def test_missing_directory_is_created(new_module, tmp_path):
    path = tmp_path / "new" / "dir" / "ruleset.nft"
    present(new_module(), FakeNft(live=None), path)
    assert path.read_text() == RULESET


def test_second_run_is_unchanged(new_module, target):
    """Idempotence: what the first run leaves behind is what the second run wants."""
    nft = FakeNft(live=(OTHER, OTHER_TEXT))
    assert present(new_module(), nft, target)["changed"] is True
    again = present(new_module(), nft, target)
    assert again["changed"] is False
    assert nft.calls.count("apply") == 1


def test_check_mode_changes_nothing(new_module, target):
    target.write_text(OLD_RULESET)
    before = os.stat(target)
    nft = FakeNft(live=(OTHER, OTHER_TEXT))
    module = new_module(check_mode=True)
    result = present(module, nft, target)
    assert result["changed"] is True
    assert result["table_changed"] is True and result["file_changed"] is True
    assert "apply" not in nft.calls and "delete" not in nft.calls
    assert module.moves == []
    assert target.read_text() == OLD_RULESET
    assert os.stat(target).st_mtime_ns == before.st_mtime_ns
    assert listing(target.parent) == ["ruleset.nft"]
    # check mode with --diff shows exactly what a run would change
    assert result["diff"][0]["before"] == OTHER_TEXT and result["diff"][0]["after"] == DESIRED_TEXT
    assert result["diff"][1]["before"] == OLD_RULESET and result["diff"][1]["after"] == RULESET


def test_check_mode_with_missing_file(new_module, target):
    result = present(new_module(check_mode=True), FakeNft(live=None), target)
    assert result["changed"] is True and result["file_changed"] is True
    assert not target.exists()
    assert listing(target.parent) == []


def test_check_mode_does_not_create_the_directory(new_module, module_tmpdir, tmp_path):
    """Check mode stages the file in the module's temp dir only: not even the target directory appears."""
    path = tmp_path / "etc" / "netlock-killswitch" / "ruleset.nft"
    nft = FakeNft(live=None)
    result = present(new_module(check_mode=True), nft, path)
    assert result["changed"] is True and result["table_changed"] is True and result["file_changed"] is True
    assert nft.calls == ["check", "desired", "live"]
    assert not (tmp_path / "etc").exists()
    assert listing(tmp_path) == [module_tmpdir.name]


def test_nft_check_failure_fails_and_writes_nothing(new_module, target):
    target.write_text(OLD_RULESET)
    nft = FakeNft(live=(OTHER, OTHER_TEXT), check_error="/tmp/x.nft:3:1: Error: syntax error")
    module = new_module()
    with pytest.raises(FailJson) as info:
        present(module, nft, target)
    assert "the nftables check rejected the ruleset" in info.value.kwargs["msg"]
    assert "Error: syntax error" in info.value.kwargs["msg"]
    assert nft.calls == ["check"]
    assert module.moves == []
    assert target.read_text() == OLD_RULESET
    assert listing(target.parent) == ["ruleset.nft"], "nothing is staged beside the target before nft -c passes"


def test_apply_failure_leaves_the_persisted_file_untouched(new_module, target):
    target.write_text(OLD_RULESET)
    before = os.stat(target)
    nft = FakeNft(live=(OTHER, OTHER_TEXT), apply_error="Error: Could not process rule: No such file or directory")
    module = new_module()
    with pytest.raises(FailJson) as info:
        present(module, nft, target)
    assert "loading the nftables ruleset failed, the previous rules are still loaded" in info.value.kwargs["msg"]
    assert "Could not process rule" in info.value.kwargs["msg"]
    assert info.value.kwargs["table_changed"] is True
    assert module.moves == []
    assert target.read_text() == OLD_RULESET
    assert os.stat(target).st_ino == before.st_ino
    assert listing(target.parent) == ["ruleset.nft"]


def test_apply_failure_with_no_file_writes_none(new_module, target):
    with pytest.raises(FailJson):
        present(new_module(), FakeNft(live=None, apply_error="Error"), target)
    assert listing(target.parent) == []


def test_desired_failure_propagates_and_writes_nothing(new_module, target):
    nft = FakeNft(live=None, desired_error="loading the ruleset in a private network namespace failed: x")
    with pytest.raises(RuntimeError, match="private network namespace"):
        present(new_module(), nft, target)
    assert "apply" not in nft.calls
    assert listing(target.parent) == []


# --------------------------------------------------------------------------- absent


def test_absent_removes_table_and_file(new_module, target):
    target.write_text(RULESET)
    nft = FakeNft(live=(DESIRED, DESIRED_TEXT))
    result = mod.absent(new_module(), nft, "killswitch", str(target))
    assert result["changed"] is True
    assert result["table_changed"] is True and result["file_changed"] is True
    assert nft.calls == ["live", "delete"]
    assert not target.exists()
    assert result["diff"] == {"before": DESIRED_TEXT, "after": ""}


def test_absent_removes_a_file_without_a_table(new_module, target):
    target.write_text(RULESET)
    nft = FakeNft(live=None)
    result = mod.absent(new_module(), nft, "killswitch", str(target))
    assert result["changed"] is True and result["table_changed"] is False and result["file_changed"] is True
    assert "delete" not in nft.calls
    assert not target.exists()


def test_absent_when_nothing_is_there(new_module, target):
    nft = FakeNft(live=None)
    result = mod.absent(new_module(), nft, "killswitch", str(target))
    assert result["changed"] is False
    assert result["table_changed"] is False and result["file_changed"] is False
    assert nft.calls == ["live"]


def test_absent_check_mode_changes_nothing(new_module, target):
    target.write_text(RULESET)
    nft = FakeNft(live=(DESIRED, DESIRED_TEXT))
    result = mod.absent(new_module(check_mode=True), nft, "killswitch", str(target))
    assert result["changed"] is True
    assert "delete" not in nft.calls
    assert target.read_text() == RULESET


def test_absent_delete_failure_keeps_the_file(new_module, target):
    target.write_text(RULESET)
    nft = FakeNft(live=(DESIRED, DESIRED_TEXT), delete_error="Error: Device or resource busy")
    with pytest.raises(FailJson) as info:
        mod.absent(new_module(), nft, "killswitch", str(target))
    assert "removing the nftables rules killswitch failed" in info.value.kwargs["msg"]
    assert "busy" in info.value.kwargs["msg"]
    assert target.read_text() == RULESET


# --------------------------------------------------------------------------- commit-confirmed applies


def armed(module, nft, path, timeout=30, expected=None):
    return mod.present(module, nft, "killswitch", str(path), RULESET, timeout, expected)


def test_rollback_defers_the_rule_change(new_module, target, rollback_dir):
    """With a rollback the module changes no rule itself: it stages, arms, and schedules the load."""
    module = new_module()
    target.write_text(OLD_RULESET)
    nft = FakeNft(live=(OTHER, OTHER_TEXT))
    expected = target.parent / "expected-table.txt"
    result = armed(module, nft, target, expected=str(expected))
    assert "apply" not in nft.calls, "the rules must not change before the module's reply is out"
    assert target.read_text() == OLD_RULESET
    assert (target.parent / ".staged-ruleset.nft").read_text() == RULESET
    assert (target.parent / ".staged-expected-table.txt").read_text() == DESIRED_TEXT
    assert (rollback_dir / "status").read_text().strip() == "pending"
    assert (rollback_dir / "previous-rules").read_text().endswith(OTHER_TEXT)
    assert (rollback_dir / "previous-file").read_text() == OLD_RULESET
    assert (rollback_dir / "had-file").exists() and not (rollback_dir / "had-expected").exists()
    timers = [argv for argv in module.commands if argv[0].endswith("systemd-run")]
    assert [t[2] for t in timers] == ["netlock-killswitch-rollback", "netlock-killswitch-apply"]
    assert timers[0][3] == "--on-active=30s" and timers[1][3] == "--on-active=1000ms"
    assert result["changed"] is True and result["rollback"]["timeout"] == 30
    assert result["rollback"]["confirm"] == "/bin/sh %s" % (rollback_dir / "confirm.sh")


def test_a_file_only_change_needs_no_rollback(new_module, target, rollback_dir):
    target.write_text(OLD_RULESET)
    result = armed(new_module(), FakeNft(live=(DESIRED, DESIRED_TEXT)), target)
    assert "rollback" not in result and result["file_changed"] and not result["table_changed"]
    assert target.read_text() == RULESET and not (rollback_dir / "armed").exists()


def test_the_direct_apply_holds_the_guards_lock(new_module, target, rollback_dir):
    """The guard compares live and expected under the same lock: it never sees the table without its files."""
    import fcntl

    held = []

    class Locked(FakeNft):
        def apply(self, path):
            with open(str(rollback_dir / "lock"), "w") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held.append(False)
                except OSError:
                    held.append(True)
            return super().apply(path)
    mod.present(new_module(), Locked(live=None), "killswitch", str(target), RULESET, 0)
    assert held == [True]


def test_an_unconfirmed_apply_is_confirmed_by_the_next_run(new_module, target, rollback_dir):
    """The earlier run was cut off before it confirmed: same rules now, yet a change that needs confirming,
    and the rollback target stays the state saved before that earlier apply."""
    rollback_dir.mkdir(parents=True)
    (rollback_dir / "armed").write_text("")
    (rollback_dir / "previous-rules").write_text("last confirmed")
    target.write_text(RULESET)
    result = armed(new_module(), FakeNft(live=(DESIRED, DESIRED_TEXT)), target)
    assert result["changed"] is True and result["rollback_pending"] is True
    assert result["rollback"]["pending_before"] is True
    assert (rollback_dir / "previous-rules").read_text() == "last confirmed"


def test_a_pending_rollback_is_disarmed_when_protection_is_off(new_module, target, rollback_dir):
    rollback_dir.mkdir(parents=True)
    (rollback_dir / "armed").write_text("")
    module = new_module()
    result = mod.present(module, FakeNft(live=(OTHER, OTHER_TEXT)), "killswitch", str(target), RULESET, 0)
    assert "rollback" not in result
    assert any("netlock-killswitch-rollback.timer" in " ".join(argv) for argv in module.commands)


def test_no_rollback_writes_the_expected_listing(new_module, target):
    expected = target.parent / "expected-table.txt"
    result = mod.present(new_module(), FakeNft(live=None), "killswitch", str(target), RULESET, 0, str(expected))
    assert expected.read_text() == DESIRED_TEXT and result["expected_changed"] is True
    again = mod.present(new_module(), FakeNft(live=(DESIRED, DESIRED_TEXT)), "killswitch", str(target), RULESET, 0,
                        str(expected))
    assert again["changed"] is False


def test_absent_disarms_and_removes_the_listing(new_module, target, rollback_dir):
    rollback_dir.mkdir(parents=True)
    (rollback_dir / "armed").write_text("")
    expected = target.parent / "expected-table.txt"
    expected.write_text(DESIRED_TEXT)
    module = new_module()
    result = mod.absent(module, FakeNft(live=None), "killswitch", str(target), str(expected))
    assert result["changed"] is True and result["rollback_pending"] is True
    assert not expected.exists()
    assert any("netlock-killswitch-rollback.timer" in " ".join(argv) for argv in module.commands)


# --------------------------------------------------------------------------- main()


def run_main(monkeypatch, capsys, args, fake, tmpdir):
    """main() with args (the module's temp dir is tmpdir); returns the exit code and the JSON result."""
    args = dict(args, _ansible_tmpdir=str(tmpdir))
    made = []

    def factory(run, nft="nft", unshare="unshare"):
        made.append((nft, unshare))
        return fake

    monkeypatch.setattr(mod.applied, "Nft", factory)
    monkeypatch.setattr(mod.AnsibleModule, "get_bin_path", lambda self, name, required=False, opt_dirs=None: "/bin/" + name)
    with patch_module_args(args):
        with pytest.raises(SystemExit) as info:
            mod.main()
    assert made in ([], [("/bin/nft", "/bin/unshare")])
    return info.value.code, json.loads(capsys.readouterr().out)


def test_main_present(monkeypatch, capsys, module_tmpdir, target):
    args = {"ruleset": RULESET, "path": str(target)}
    code, result = run_main(monkeypatch, capsys, args, FakeNft(live=None), module_tmpdir)
    assert code == 0
    assert result["changed"] is True and result["table_changed"] is True and result["file_changed"] is True
    assert "diff" not in result
    assert target.read_text() == RULESET


def test_main_diff_and_check_mode(monkeypatch, capsys, module_tmpdir, target):
    args = {"ruleset": RULESET, "path": str(target), "_ansible_check_mode": True, "_ansible_diff": True}
    code, result = run_main(monkeypatch, capsys, args, FakeNft(live=(OTHER, OTHER_TEXT)), module_tmpdir)
    assert code == 0
    assert result["changed"] is True
    assert result["diff"][0]["after"] == DESIRED_TEXT
    assert not target.exists()


def test_main_check_mode_creates_nothing_under_the_target(monkeypatch, capsys, module_tmpdir, tmp_path):
    path = tmp_path / "etc" / "netlock-killswitch" / "ruleset.nft"
    args = {"ruleset": RULESET, "path": str(path), "_ansible_check_mode": True}
    code, result = run_main(monkeypatch, capsys, args, FakeNft(live=None), module_tmpdir)
    assert code == 0
    assert result["changed"] is True and result["file_changed"] is True
    assert not (tmp_path / "etc").exists()


def test_main_requires_ruleset_when_present(monkeypatch, capsys, module_tmpdir, target):
    code, result = run_main(monkeypatch, capsys, {"path": str(target)}, FakeNft(), module_tmpdir)
    assert code == 1
    assert result["failed"] is True and "ruleset" in result["msg"]


def test_main_runtime_error_fails_cleanly(monkeypatch, capsys, module_tmpdir, target):
    nft = FakeNft(live=None, desired_error="loading the ruleset in a private network namespace failed: boom")
    code, result = run_main(monkeypatch, capsys, {"ruleset": RULESET, "path": str(target)}, nft, module_tmpdir)
    assert code == 1
    assert result["failed"] is True and "boom" in result["msg"]
    assert listing(target.parent) == []


def test_main_absent(monkeypatch, capsys, module_tmpdir, target):
    target.write_text(RULESET)
    nft = FakeNft(live=(DESIRED, DESIRED_TEXT))
    code, result = run_main(monkeypatch, capsys, {"state": "absent", "path": str(target)}, nft, module_tmpdir)
    assert code == 0
    assert result["changed"] is True
    assert "delete" in nft.calls and not target.exists()


# --------------------------------------------------------------------------- real nft, in a netns

E2E_SCRIPT = r'''
import json, os, subprocess, sys
from ansible_collections.netlock.killswitch.plugins.module_utils.nft_live import Nft
from ansible_collections.netlock.killswitch.plugins.modules import killswitch_firewall as mod

nft_bin, unshare_bin, path, first, second = sys.argv[1:6]

class Module:
    check_mode = False
    tmpdir = sys.argv[6]
    def fail_json(self, **kwargs):
        raise SystemExit("fail_json: %s" % kwargs["msg"])
    def atomic_move(self, src, dest):
        os.replace(src, dest)

def run(argv):
    p = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return p.returncode, p.stdout, p.stderr

nft = Nft(run, nft=nft_bin, unshare=unshare_bin)
texts = [open(first).read(), open(second).read()]
out = []
for text in (texts[0], texts[0], texts[1], texts[1]):
    r = mod.present(Module(), nft, "killswitch", path, text)
    out.append([r["changed"], r["table_changed"], r["file_changed"]])
subprocess.run([nft_bin, "add", "rule", "inet", "killswitch", "output", "accept"], check=True)
r = mod.present(Module(), nft, "killswitch", path, texts[1])
out.append([r["changed"], r["table_changed"], r["file_changed"]])
r = mod.absent(Module(), nft, "killswitch", path)
out.append([r["changed"], nft.live("killswitch") is None, os.path.exists(path)])
print(json.dumps(out))
'''


def test_present_is_idempotent_with_real_nft(nft_binary, unshare_binary, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_nftables import render
    from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy

    base = {"killswitch_tunnel_interfaces": ["wg0"], "killswitch_endpoints": [{"address": "198.51.100.7", "port": 1}],
            "killswitch_allow_lan": True, "killswitch_management_cidrs": ["192.0.2.10"]}
    first, second = tmp_path / "first.nft", tmp_path / "second.nft"
    first.write_text(render(parse_policy(base)))
    second.write_text(render(parse_policy(dict(base, killswitch_ipv6="tunnel"))))
    path = tmp_path / "etc" / "ruleset.nft"
    module_tmpdir = tmp_path / "ansible-moduletmp"
    module_tmpdir.mkdir()
    collections = str(Path(__file__).resolve().parents[4] / ".collections")
    proc = subprocess.run([unshare_binary, "--net", "--", sys.executable, "-c", E2E_SCRIPT, nft_binary, unshare_binary,
                           str(path), str(first), str(second), str(module_tmpdir)], capture_output=True, text=True, timeout=60, check=False,
                          env=dict(os.environ, PYTHONPATH=collections))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        [True, True, True],     # first run: table and file created
        [False, False, False],  # same input again: changed=0
        [True, True, True],     # a different policy
        [False, False, False],
        [True, True, False],    # a hand edit of the live table is put back
        [True, True, False],    # absent: changed, table gone, file gone
    ]


def test_main_refuses_an_endpoint_user_the_host_does_not_have(monkeypatch, capsys, module_tmpdir, target):
    """nft and iptables would refuse the whole payload with a bare "User does not exist": say which variable."""
    fake = FakeNft(live=None)
    args = {"ruleset": RULESET, "path": str(target), "endpoint_user": "no-such-vpn-user"}
    code, result = run_main(monkeypatch, capsys, args, fake, module_tmpdir)
    assert code == 1 and result["failed"]
    assert "killswitch_endpoint_user" in result["msg"] and "no-such-vpn-user" in result["msg"]
    assert fake.calls == [] and not target.exists(), "nothing may change before the user is known"


@pytest.mark.parametrize("user", ["root", "0", "4242"])
def test_main_accepts_an_existing_user_or_a_uid(monkeypatch, capsys, module_tmpdir, target, user):
    code, result = run_main(monkeypatch, capsys, {"ruleset": RULESET, "path": str(target), "endpoint_user": user},
                            FakeNft(live=None), module_tmpdir)
    assert code == 0 and result["changed"], result


def test_main_iptables_backend_uses_the_iptables_applier(monkeypatch, capsys, module_tmpdir, target):
    made = []

    class FakeIptables(FakeNft):
        name = "iptables"

    def factory(run, sh="/bin/sh", unshare="unshare"):
        made.append((sh, unshare))
        return FakeIptables(live=None)
    monkeypatch.setattr(mod.applied, "Iptables", factory)
    code, result = run_main(monkeypatch, capsys, {"ruleset": RULESET, "path": str(target), "backend": "iptables"},
                            None, module_tmpdir)
    assert code == 0 and result["backend"] == "iptables" and made == [("/bin/sh", "/bin/unshare")]
    assert result["commands"]["load"].startswith("/usr/sbin/nft")  # the fake's load_argv


# --------------------------------------------------------------------------- the in-force shortcut


def converged(new_module, target, expected):
    """A first run that applies RULESET, writing the file, the expected listing and the record."""
    result = mod.present(new_module(), FakeNft(live=None), "killswitch", str(target), RULESET, 0, str(expected))
    assert result["changed"] is True
    assert (target.parent / "expected-table.txt.sha256").exists()


def test_in_force_is_one_listing_and_no_change(new_module, target):
    expected = target.parent / "expected-table.txt"
    converged(new_module, target, expected)
    nft = FakeNft(live=(DESIRED, DESIRED_TEXT))
    module = new_module()
    result = mod.present(module, nft, "killswitch", str(target), RULESET, 0, str(expected))
    assert nft.calls == ["listing"]
    assert result["changed"] is False and not result["table_changed"] and not result["file_changed"]
    assert not result["expected_changed"] and result["table"] == DESIRED_TEXT
    assert result["diff"][0]["before"] == result["diff"][0]["after"] == DESIRED_TEXT
    assert module.moves == []


@pytest.mark.parametrize("live", [(OTHER, OTHER_TEXT), None], ids=["hand edit", "flushed"])
def test_drift_takes_the_full_comparison_and_is_put_back(new_module, target, live):
    expected = target.parent / "expected-table.txt"
    converged(new_module, target, expected)
    nft = FakeNft(live=live)
    result = mod.present(new_module(), nft, "killswitch", str(target), RULESET, 0, str(expected))
    assert nft.calls == ["listing", "check", "desired", "live", "apply"]
    assert result["changed"] is True and result["table_changed"] is True and not result["file_changed"]


def test_drift_in_check_mode_is_reported_and_left(new_module, target):
    expected = target.parent / "expected-table.txt"
    converged(new_module, target, expected)
    nft = FakeNft(live=(OTHER, OTHER_TEXT))
    result = mod.present(new_module(check_mode=True), nft, "killswitch", str(target), RULESET, 0, str(expected))
    assert result["changed"] is True and "apply" not in nft.calls
    assert result["diff"][0]["before"] == OTHER_TEXT and result["diff"][0]["after"] == DESIRED_TEXT


@pytest.mark.parametrize("tamper", ["file", "expected", "record", "ruleset"])
def test_anything_but_the_recorded_state_takes_the_full_comparison(new_module, target, tamper):
    expected = target.parent / "expected-table.txt"
    converged(new_module, target, expected)
    ruleset = RULESET
    if tamper == "file":
        target.write_text(OLD_RULESET)
    elif tamper == "expected":
        expected.write_text(OTHER_TEXT)
    elif tamper == "record":
        (target.parent / "expected-table.txt.sha256").write_text("{}\n")
    else:
        ruleset = RULESET + "# another comment\n"
    nft = FakeNft(live=(DESIRED, DESIRED_TEXT))
    result = mod.present(new_module(), nft, "killswitch", str(target), ruleset, 0, str(expected))
    assert "desired" in nft.calls and "live" in nft.calls
    assert result["changed"] is (tamper != "record")
    assert expected.read_text() == DESIRED_TEXT and target.read_text() == ruleset
    # the full comparison recorded the state it saw: the next run is one listing again
    nft = FakeNft(live=(DESIRED, DESIRED_TEXT))
    assert mod.present(new_module(), nft, "killswitch", str(target), ruleset, 0, str(expected))["changed"] is False
    assert nft.calls == ["listing"]


def test_a_failing_listing_takes_the_full_comparison(new_module, target):
    expected = target.parent / "expected-table.txt"
    converged(new_module, target, expected)

    class Failing(FakeNft):
        def listing(self, table):
            self.calls.append("listing")
            raise RuntimeError("listing the live nftables rules failed: boom")
    nft = Failing(live=(DESIRED, DESIRED_TEXT))
    result = mod.present(new_module(), nft, "killswitch", str(target), RULESET, 0, str(expected))
    assert nft.calls == ["listing", "check", "desired", "live"] and result["changed"] is False


def test_a_pending_rollback_takes_the_full_comparison(new_module, target, rollback_dir):
    expected = target.parent / "expected-table.txt"
    converged(new_module, target, expected)
    (rollback_dir / "armed").write_text("")
    nft = FakeNft(live=(DESIRED, DESIRED_TEXT))
    result = armed(new_module(), nft, target, expected=str(expected))
    assert "listing" not in nft.calls and result["changed"] is True and result["rollback_pending"] is True


def test_check_mode_writes_no_record(new_module, target):
    expected = target.parent / "expected-table.txt"
    mod.present(new_module(check_mode=True), FakeNft(live=None), "killswitch", str(target), RULESET, 0, str(expected))
    assert listing(target.parent) == []


def test_absent_removes_the_record(new_module, target):
    expected = target.parent / "expected-table.txt"
    converged(new_module, target, expected)
    result = mod.absent(new_module(), FakeNft(live=(DESIRED, DESIRED_TEXT)), "killswitch", str(target), str(expected))
    assert result["changed"] is True and listing(target.parent) == []


class SelfCheckingNft(FakeNft):
    """An applier whose desired() is its check (the real Nft): a refused file raises Rejected."""

    desired_checks = True

    def desired(self, path, table):
        if self.check_error:
            self.calls.append("desired")
            raise mod.Rejected(self.check_error)
        return super().desired(path, table)


def test_a_self_checking_applier_is_not_checked_twice(new_module, target):
    nft = SelfCheckingNft(live=None)
    assert present(new_module(), nft, target)["changed"] is True
    assert nft.calls == ["desired", "live", "apply"]


def test_a_refused_file_fails_as_the_check_would(new_module, target):
    target.write_text(OLD_RULESET)
    nft = SelfCheckingNft(live=(OTHER, OTHER_TEXT), check_error="/tmp/x.nft:3:1: Error: syntax error")
    with pytest.raises(FailJson) as info:
        present(new_module(), nft, target)
    assert "the nftables check rejected the ruleset, nothing was changed" in info.value.kwargs["msg"]
    assert "Error: syntax error" in info.value.kwargs["msg"]
    assert nft.calls == ["desired"] and target.read_text() == OLD_RULESET


IN_FORCE_SCRIPT = r'''
import json, os, subprocess, sys
from ansible_collections.netlock.killswitch.plugins.module_utils.nft_live import Nft
from ansible_collections.netlock.killswitch.plugins.modules import killswitch_firewall as mod

nft_bin, unshare_bin, path, expected, ruleset_path, tmpdir = sys.argv[1:7]

class Module:
    check_mode = False
    tmpdir = sys.argv[6]
    def fail_json(self, **kwargs):
        raise SystemExit("fail_json: %s" % kwargs["msg"])
    def atomic_move(self, src, dest):
        os.replace(src, dest)

calls = []
def run(argv):
    calls.append(argv[0])
    p = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return p.returncode, p.stdout, p.stderr

nft = Nft(run, nft=nft_bin, unshare=unshare_bin)
text = open(ruleset_path).read()
out = []
def converge(label, check_mode=False):
    del calls[:]
    module = Module()
    module.check_mode = check_mode
    r = mod.present(module, nft, "killswitch", path, text, 0, expected)
    out.append([label, r["changed"], r["table_changed"], len(calls)])
converge("first")
converge("again")
subprocess.run([nft_bin, "add", "rule", "inet", "killswitch", "output", "accept"], check=True)
converge("hand edit, check mode", check_mode=True)
converge("hand edit")
converge("after the repair")
subprocess.run([nft_bin, "flush", "ruleset"], check=True)
converge("flushed")
subprocess.run([nft_bin, "flush", "chain", "inet", "killswitch", "output"], check=True)
converge("chain flushed")
converge("last")
print(json.dumps(out))
'''


def test_in_force_shortcut_with_real_nft(nft_binary, unshare_binary, tmp_path):
    """The shortcut (one listing) only when nothing changed; every tamper is seen and put back."""
    import subprocess
    import sys
    from pathlib import Path

    from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_nftables import render
    from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy

    ruleset = tmp_path / "ruleset-in.nft"
    ruleset.write_text(render(parse_policy({"killswitch_tunnel_interfaces": ["wg0"],
                                            "killswitch_endpoints": [{"address": "198.51.100.7", "port": 1}],
                                            "killswitch_extra_outbound": [{"cidr": "198.18.0.%d" % n} for n in range(1, 40, 2)]})))
    etc = tmp_path / "etc"
    module_tmpdir = tmp_path / "ansible-moduletmp"
    module_tmpdir.mkdir()
    collections = str(Path(__file__).resolve().parents[4] / ".collections")
    proc = subprocess.run([unshare_binary, "--net", "--", sys.executable, "-c", IN_FORCE_SCRIPT, nft_binary, unshare_binary,
                           str(etc / "ruleset.nft"), str(etc / "expected-table.txt"), str(ruleset), str(module_tmpdir)],
                          capture_output=True, text=True, timeout=60, check=False, env=dict(os.environ, PYTHONPATH=collections))
    assert proc.returncode == 0, proc.stderr
    # [run, changed, table_changed, commands run]; the full comparison is 3 commands (load and list in a private
    # namespace, live JSON, live text) and a 4th to load; the shortcut is 1 (the guard's list command).
    assert json.loads(proc.stdout) == [
        ["first", True, True, 3],
        ["again", False, False, 1],
        ["hand edit, check mode", True, True, 4],
        ["hand edit", True, True, 5],
        ["after the repair", False, False, 1],
        ["flushed", True, True, 4],
        ["chain flushed", True, True, 5],
        ["last", False, False, 1],
    ]
