# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Commit-confirmed applies: the host puts its last confirmed ruleset back unless the controller confirms.

The protocol, all on the host and all under one lock:

1. the module saves the live rules (as a payload of the host's backend that restores them), the persisted file and the guard's expected listing, writes the
   ``armed`` cookie and starts the rollback timer (``timeout`` seconds);
2. it stages the new ruleset and starts the apply timer (``APPLY_DELAY``): the rules change only after
   the module's reply is on its way, so a rule that cuts the connection cannot swallow the reply;
3. ``apply.sh`` loads the staged ruleset (one transaction per table) and writes ``status``;
4. the controller, over a new connection, runs ``confirm.sh``: once the status is ``applied`` it removes
   the cookie and stops the rollback timer; if it cannot reach the host, ``rollback.sh`` fires and puts
   the saved table, file and listing back (a failed restore leaves the new table: fail closed).

A run that finds the cookie still there (an earlier run was cut off before it confirmed) keeps the saved
state of the last confirmed apply, so a rollback never lands on an unconfirmed ruleset.  Pure text here;
the module does the I/O.
"""

from __future__ import annotations

import shlex
from typing import Dict, Optional, Sequence

ROLLBACK_DIR = "/run/netlock-killswitch/rollback"
ROLLBACK_UNIT = "netlock-killswitch-rollback"
APPLY_UNIT = "netlock-killswitch-apply"
APPLY_DELAY = 1.0  # seconds between the module's reply and the rule change

# Status words written to ``status`` and printed by confirm.sh.
PENDING, APPLIED, CONFIRMED, ROLLED_BACK, FAILED = "pending", "applied", "confirmed", "rolled back", "failed"

STATE_FILES = ("armed", "lock", "status", "previous-rules", "previous-file", "previous-expected.txt",
               "had-file", "had-expected", "apply.sh", "rollback.sh", "confirm.sh")


def paths(directory: str = ROLLBACK_DIR) -> Dict[str, str]:
    return {name: "%s/%s" % (directory, name) for name in STATE_FILES}


def staged_paths(ruleset_path: str, expected_path: Optional[str]) -> Dict[str, Optional[str]]:
    """Staged copies sit beside their targets, so that moving them in place is atomic."""
    directory = ruleset_path.rsplit("/", 1)[0] or "/"
    expected = None
    if expected_path:
        expected = "%s/.staged-%s" % (expected_path.rsplit("/", 1)[0] or "/", expected_path.rsplit("/", 1)[-1])
    return {"ruleset": "%s/.staged-%s" % (directory, ruleset_path.rsplit("/", 1)[-1]), "expected": expected}


def command(argv: Sequence[str]) -> str:
    """A backend's load command (``Firewall.load_argv``) as shell text."""
    return " ".join(shlex.quote(arg) for arg in argv)


def _locked(files: Dict[str, str]) -> str:
    return "exec 9>%s\nflock -w 30 9 || exit 1\n" % shlex.quote(files["lock"])


def _restore(saved: str, flag: str, target: str) -> str:
    """Put a saved file back, or remove the target when there was none before the first unconfirmed apply."""
    q = shlex.quote
    return "if [ -e %s ]; then cp %s %s.restore && mv -f %s.restore %s; else rm -f %s; fi\n" % (
        q(flag), q(saved), q(target), q(target), q(target), q(target))


def apply_script(load_staged: str, files: Dict[str, str], staged: Dict[str, Optional[str]], ruleset_path: str,
                 expected_path: Optional[str], table_changed: bool, file_changed: bool) -> str:
    """What the apply timer runs: load the staged ruleset (``load_staged``), move the files in place, record
    the status."""
    q = shlex.quote
    load = "%s 2>&1" % load_staged if table_changed else "true"
    place = ("mv -f %s %s\n" % (q(staged["ruleset"]), q(ruleset_path)) if file_changed
             else "rm -f %s\n" % q(staged["ruleset"]))
    if expected_path:
        place += "mv -f %s %s\n" % (q(staged["expected"]), q(expected_path))
    return (
        "#!/bin/sh\n"
        "# netlock.killswitch: load the staged ruleset once the module's reply is on its way.\n"
        "%(lock)s"
        "[ -e %(armed)s ] || exit 0\n"
        "if out=$(%(load)s); then\n"
        "%(place)s"
        "  echo %(applied)s > %(status)s\n"
        "else\n"
        "  rm -f %(armed)s %(staged)s\n"
        "  printf '%(failed)s: %%s\\n' \"$out\" > %(status)s\n"
        "  systemctl stop %(rollback)s.timer 2>/dev/null\n"
        "fi\n"
        "exit 0\n"
    ) % dict(lock=_locked(files), armed=q(files["armed"]), load=load, place=place, applied=APPLIED,
             status=q(files["status"]), staged=" ".join(q(p) for p in staged.values() if p), failed=FAILED,
             rollback=ROLLBACK_UNIT)


def script(load_previous: str, ruleset_path: str, expected_path: Optional[str], files: Dict[str, str],
           staged: Dict[str, Optional[str]]) -> str:
    """What the rollback timer runs: nothing once confirmed, else restore the rules (``load_previous`` loads
    the saved payload), then the files."""
    q = shlex.quote
    restore = _restore(files["previous-file"], files["had-file"], ruleset_path)
    if expected_path:
        restore += _restore(files["previous-expected.txt"], files["had-expected"], expected_path)
    return (
        "#!/bin/sh\n"
        "# netlock.killswitch: the controller did not confirm the last apply in time.\n"
        "%(lock)s"
        "[ -e %(armed)s ] || exit 0\n"
        "systemctl stop %(apply)s.timer 2>/dev/null\n"
        "rm -f %(staged)s\n"
        "%(load)s || exit 1\n"
        "%(restore)s"
        "rm -f %(armed)s\n"
        "echo %(rolled_back)s > %(status)s\n"
        "echo 'netlock.killswitch: apply not confirmed, previous ruleset restored'\n"
    ) % dict(lock=_locked(files), armed=q(files["armed"]), apply=APPLY_UNIT,
             staged=" ".join(q(p) for p in staged.values() if p), load=load_previous, restore=restore, rolled_back=shlex.quote(ROLLED_BACK),
             status=q(files["status"]))


def confirm_script(files: Dict[str, str]) -> str:
    """What the controller runs over a new connection: confirm once applied; print the status either way."""
    q = shlex.quote
    saved = " ".join(q(files[name]) for name in ("previous-rules", "previous-file", "previous-expected.txt",
                                                 "had-file", "had-expected"))
    return (
        "#!/bin/sh\n"
        "# netlock.killswitch: the controller reached the host over a new connection.\n"
        "%(lock)s"
        "if [ -e %(armed)s ] && [ \"$(cat %(status)s)\" = %(applied)s ]; then\n"
        "  rm -f %(armed)s %(saved)s\n"
        "  systemctl stop %(rollback)s.timer 2>/dev/null\n"
        "  echo %(confirmed)s > %(status)s\n"
        "fi\n"
        "cat %(status)s\n"
    ) % dict(lock=_locked(files), armed=q(files["armed"]), status=q(files["status"]), applied=APPLIED,
             saved=saved, rollback=ROLLBACK_UNIT, confirmed=CONFIRMED)


def confirm_command(files: Dict[str, str]) -> str:
    return "/bin/sh %s" % shlex.quote(files["confirm.sh"])


def disarm_command(files: Dict[str, str]) -> str:
    """Stop both timers and forget an unconfirmed apply (used by state=absent)."""
    return "systemctl stop %s.timer %s.timer 2>/dev/null; rm -f %s" % (
        APPLY_UNIT, ROLLBACK_UNIT, " ".join(shlex.quote(files[n]) for n in ("armed",)))
