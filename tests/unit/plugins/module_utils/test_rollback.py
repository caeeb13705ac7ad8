# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rollback script restores the previous table and file when armed, and does nothing once confirmed."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ansible_collections.netlock.killswitch.plugins.module_utils import rollback

NFT = shutil.which("nft") or "/usr/sbin/nft"
OLD = "table inet ks {\n\tchain output {\n\t\ttype filter hook output priority filter; policy drop;\n\t\toifname \"lo\" accept\n\t}\n}\n"
NEW = "table inet ks\ndelete table inet ks\ntable inet ks {\n\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n\t}\n}\n"

needs_netns = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not os.path.exists(NFT),
                                 reason="needs root, unshare and nft for a private network namespace")


def rehearse(tmp_path, had_table: bool, had_file: bool, confirm: bool):
    files = rollback.paths(str(tmp_path))
    ruleset = tmp_path / "ruleset.nft"
    (tmp_path / "new.nft").write_text(NEW)
    (tmp_path / "old.nft").write_text("table inet ks\ndelete table inet ks\n" + OLD)
    with open(files["previous-table.nft"], "w") as handle:
        handle.write(rollback.previous_table("ks", OLD if had_table else None))
    with open(files["previous-file.nft"], "w") as handle:
        handle.write("old file\n" if had_file else "")
    with open(files["rollback.sh"], "w") as handle:
        handle.write(rollback.script(NFT, str(ruleset), had_file, files))
    open(files["armed"], "w").close()
    ruleset.write_text("new file\n")
    steps = ["%s -f %s/old.nft" % (NFT, tmp_path)] if had_table else []
    steps += ["%s -f %s/new.nft" % (NFT, tmp_path)]
    if confirm:
        steps.append(rollback.confirm_command(files).replace("systemctl", ": systemctl"))
    steps += ["{ [ ! -e %s ] || sh %s; }" % (files["rollback.sh"], files["rollback.sh"]),
              "%s list table inet ks || echo NO-TABLE" % NFT]
    out = subprocess.run(["unshare", "--net", "sh", "-c", " && ".join(steps[:-1]) + "; " + steps[-1]],
                         capture_output=True, text=True, timeout=30, check=False)
    return out, ruleset, files


@needs_netns
def test_unconfirmed_apply_restores_table_and_file(tmp_path):
    out, ruleset, files = rehearse(tmp_path, had_table=True, had_file=True, confirm=False)
    assert "policy drop" in out.stdout and "policy accept" not in out.stdout, out
    assert ruleset.read_text() == "old file\n"
    assert not os.path.exists(files["armed"])


@needs_netns
def test_unconfirmed_first_apply_removes_table_and_file(tmp_path):
    out, ruleset, _files = rehearse(tmp_path, had_table=False, had_file=False, confirm=False)
    assert "NO-TABLE" in out.stdout, out
    assert not ruleset.exists()


@needs_netns
def test_confirmed_apply_stays(tmp_path):
    out, ruleset, files = rehearse(tmp_path, had_table=True, had_file=True, confirm=True)
    assert "policy accept" in out.stdout, out
    assert ruleset.read_text() == "new file\n"
    assert not any(os.path.exists(path) for path in files.values()), "confirmed state left behind"


def test_previous_table_replaces_atomically():
    text = rollback.previous_table("killswitch", OLD)
    assert text.startswith("table inet killswitch\ndelete table inet killswitch\n") and text.endswith(OLD)
    assert rollback.previous_table("killswitch", None) == "table inet killswitch\ndelete table inet killswitch\n"


def test_confirm_removes_the_cookie_and_stops_the_timer():
    command = rollback.confirm_command(rollback.paths("/run/x"))
    assert command.startswith("rm -f /run/x/armed")
    assert "systemctl stop %s.timer" % rollback.ROLLBACK_UNIT in command
    assert command.endswith("rm -f /run/x/previous-table.nft /run/x/previous-file.nft /run/x/rollback.sh")
