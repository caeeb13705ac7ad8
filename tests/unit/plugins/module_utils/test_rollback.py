# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The commit-confirmed protocol's scripts, run for real against nft in a private network namespace.

systemctl is replaced by a stub (the timers are the module's business); nft, flock and the files are real.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ansible_collections.netlock.killswitch.plugins.module_utils import rollback
from ansible_collections.netlock.killswitch.plugins.module_utils.nft_live import Nft

NFT = shutil.which("nft") or "/usr/sbin/nft"
OLD = "table inet ks {\n\tchain output {\n\t\ttype filter hook output priority filter; policy drop;\n\t\toifname \"lo\" accept\n\t}\n}\n"
NEW = "table inet ks\ndelete table inet ks\ntable inet ks {\n\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n\t}\n}\n"
BROKEN = "table inet ks {\n\tchain output {\n\t\tno such statement;\n\t}\n}\n"

needs_netns = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not os.path.exists(NFT),
                                 reason="needs root, unshare and nft for a private network namespace")


class Host:
    """One armed apply, laid out as the module lays it out, with the live table in a private netns."""

    def __init__(self, tmp_path, had_table=True, had_file=True, new=NEW, previous_listing=OLD):
        self.tmp = tmp_path
        self.files = rollback.paths(str(tmp_path / "rollback"))
        os.makedirs(str(tmp_path / "rollback"))
        self.ruleset = str(tmp_path / "etc" / "ruleset.nft")
        self.expected = str(tmp_path / "etc" / "expected.txt")
        os.makedirs(str(tmp_path / "etc"))
        self.staged = rollback.staged_paths(self.ruleset, self.expected)
        self.had_table = had_table
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "systemctl").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "systemctl").chmod(0o755)
        self.env = dict(os.environ, PATH="%s:%s" % (bin_dir, os.environ.get("PATH", "")))
        write = self.write
        if had_file:
            write(self.ruleset, "old file\n")
            write(self.expected, "old listing\n")
            write(self.files["had-file"], "")
            write(self.files["had-expected"], "")
        nft = Nft(None, nft=NFT)
        write(self.files["previous-rules"], nft.previous_payload("ks", (None, previous_listing) if had_table else None))
        write(self.files["previous-file"], "old file\n" if had_file else "")
        write(self.files["previous-expected.txt"], "old listing\n" if had_file else "")
        write(self.files["status"], rollback.PENDING + "\n")
        write(self.files["apply.sh"], rollback.apply_script(
            rollback.command(nft.load_argv(self.staged["ruleset"])), self.files, self.staged, self.ruleset,
            self.expected, table_changed=True, file_changed=True))
        write(self.files["rollback.sh"], rollback.script(rollback.command(nft.load_argv(self.files["previous-rules"])),
                                                         self.ruleset, self.expected, self.files, self.staged))
        write(self.files["confirm.sh"], rollback.confirm_script(self.files))
        write(self.files["armed"], "")
        write(self.staged["ruleset"], new)
        write(self.staged["expected"], "new listing\n")

    @staticmethod
    def write(path, content):
        with open(path, "w") as handle:
            handle.write(content)

    def run(self, *steps):
        """Run the steps in one private network namespace (old table loaded first); print each step's output."""
        script = ["set -u"]
        if self.had_table:
            script.append("%s -f %s" % (NFT, self.tmp / "old.nft"))
            self.write(str(self.tmp / "old.nft"), "table inet ks\ndelete table inet ks\n" + OLD)
        for step in steps:
            script.append("echo '## %s'; /bin/sh %s" % (step, self.files[step]))
        script.append("echo '## live'; %s list table inet ks 2>/dev/null || echo NO-TABLE" % NFT)
        out = subprocess.run(["unshare", "--net", "sh", "-c", "\n".join(script)], capture_output=True, text=True,
                             timeout=60, check=False, env=self.env)
        sections, name = {}, None
        for line in out.stdout.splitlines():
            if line.startswith("## "):
                name = line[3:]
                sections[name] = []
            elif name:
                sections[name].append(line)
        return {k: "\n".join(v) for k, v in sections.items()}, out

    def read(self, path):
        return open(path).read() if os.path.exists(path) else None


@needs_netns
def test_unconfirmed_apply_restores_table_files_and_listing(tmp_path):
    host = Host(tmp_path)
    out, raw = host.run("apply.sh", "rollback.sh")
    assert "policy drop" in out["live"] and "policy accept" not in out["live"], raw
    assert host.read(host.ruleset) == "old file\n"
    assert host.read(host.expected) == "old listing\n"
    assert host.read(host.files["status"]).strip() == rollback.ROLLED_BACK
    assert not os.path.exists(host.files["armed"])


@needs_netns
def test_applied_then_confirmed_stays(tmp_path):
    host = Host(tmp_path)
    out, raw = host.run("apply.sh", "confirm.sh", "rollback.sh")
    assert out["confirm.sh"].strip() == rollback.CONFIRMED, raw
    assert "policy accept" in out["live"], raw
    assert host.read(host.ruleset) == NEW and host.read(host.expected) == "new listing\n"
    for name in ("armed", "previous-rules", "previous-file", "previous-expected.txt"):
        assert not os.path.exists(host.files[name]), "confirmed state left behind: %s" % name
    assert not any(os.path.exists(p) for p in host.staged.values())


@needs_netns
def test_confirm_before_the_apply_only_reports_pending(tmp_path):
    host = Host(tmp_path)
    out, raw = host.run("confirm.sh")
    assert out["confirm.sh"].strip() == rollback.PENDING, raw
    assert os.path.exists(host.files["armed"]), "a confirmation must not disarm an apply that has not happened"
    assert "policy drop" in out["live"]


@needs_netns
def test_rollback_before_the_apply_cancels_it(tmp_path):
    host = Host(tmp_path)
    out, raw = host.run("rollback.sh", "apply.sh")
    assert "policy drop" in out["live"], raw
    assert host.read(host.ruleset) == "old file\n"
    assert not any(os.path.exists(p) for p in host.staged.values())


@needs_netns
def test_unconfirmed_first_apply_removes_table_and_files(tmp_path):
    host = Host(tmp_path, had_table=False, had_file=False)
    out, raw = host.run("apply.sh", "rollback.sh")
    assert "NO-TABLE" in out["live"], raw
    assert host.read(host.ruleset) is None and host.read(host.expected) is None


@needs_netns
def test_failed_apply_keeps_the_old_table_and_disarms(tmp_path):
    host = Host(tmp_path, new=BROKEN)
    out, raw = host.run("apply.sh", "confirm.sh", "rollback.sh")
    assert out["confirm.sh"].startswith(rollback.FAILED + ":"), raw
    assert "policy drop" in out["live"], raw
    assert host.read(host.ruleset) == "old file\n"
    assert not os.path.exists(host.files["armed"])


@needs_netns
def test_a_restore_that_fails_leaves_the_new_rules(tmp_path):
    """Fail closed: a previous listing nft cannot load must not leave the host without a table."""
    host = Host(tmp_path, previous_listing=BROKEN)
    out, raw = host.run("apply.sh", "rollback.sh")
    assert "policy accept" in out["live"] and "NO-TABLE" not in out["live"], raw
    assert host.read(host.ruleset) == NEW, "the files stay with the table that is loaded"


def test_previous_table_replaces_atomically():
    both = "table inet killswitch\ndelete table inet killswitch\ntable bridge killswitch\ndelete table bridge killswitch\n"
    text = Nft(None).previous_payload("killswitch", (None, OLD))
    assert text.startswith(both) and text.endswith(OLD)
    assert Nft(None).previous_payload("killswitch", None) == both


def test_staged_files_sit_beside_their_targets():
    staged = rollback.staged_paths("/etc/netlock-killswitch/ruleset.nft", "/etc/netlock-killswitch/expected-table.txt")
    assert staged == {"ruleset": "/etc/netlock-killswitch/.staged-ruleset.nft",
                      "expected": "/etc/netlock-killswitch/.staged-expected-table.txt"}
    assert rollback.staged_paths("/etc/x/r.nft", None)["expected"] is None


def test_every_script_takes_the_same_lock():
    files = rollback.paths("/run/x")
    staged = rollback.staged_paths("/etc/x/r.nft", None)
    for text in (rollback.apply_script("nft", files, staged, "/etc/x/r.nft", None, True, True),
                 rollback.script("nft", "/etc/x/r.nft", None, files, staged), rollback.confirm_script(files)):
        assert "exec 9>/run/x/lock\nflock -w 30 9 || exit 1\n" in text


def test_disarm_stops_both_timers():
    command = rollback.disarm_command(rollback.paths("/run/x"))
    assert "%s.timer" % rollback.APPLY_UNIT in command and "%s.timer" % rollback.ROLLBACK_UNIT in command
    assert command.endswith("rm -f /run/x/armed")
