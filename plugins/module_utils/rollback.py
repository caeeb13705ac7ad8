# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lockout-safe applies: the host puts its previous ruleset back unless the controller confirms.

Before an apply the module arms a rollback: it saves the live table and the persisted file, writes
a cookie and starts a systemd timer.  The controller reconnects and removes the cookie (and stops
the timer); if it cannot reach the host in time, the timer restores both.  Pure text here; the
module does the I/O.
"""

from __future__ import annotations

import shlex
from typing import Dict, Optional

ROLLBACK_DIR = "/run/netlock-killswitch/rollback"
ROLLBACK_UNIT = "netlock-killswitch-rollback"


def paths(directory: str = ROLLBACK_DIR) -> Dict[str, str]:
    return {name: "%s/%s" % (directory, name) for name in ("armed", "previous-table.nft", "previous-file.nft", "rollback.sh")}


def previous_table(table: str, listing: Optional[str]) -> str:
    """An nft file that restores the listed table atomically, or removes the table if there was none."""
    return "table inet %s\ndelete table inet %s\n%s" % (table, table, listing or "")


def script(nft: str, ruleset_path: str, had_file: bool, files: Dict[str, str]) -> str:
    """What the timer runs: nothing once the cookie is gone, else restore the table, then the file."""
    q = shlex.quote
    restore_file = ("cp %s %s" % (q(files["previous-file.nft"]), q(ruleset_path)) if had_file
                    else "rm -f %s" % q(ruleset_path))
    return (
        "#!/bin/sh\n"
        "# netlock.killswitch: the controller did not confirm the last apply in time.\n"
        "[ -e %(armed)s ] || exit 0\n"
        "%(nft)s -f %(table)s || exit 1\n"
        "%(restore_file)s\n"
        "rm -f %(armed)s\n"
        "echo 'netlock.killswitch: apply not confirmed, previous ruleset restored'\n"
    ) % dict(armed=q(files["armed"]), nft=q(nft), table=q(files["previous-table.nft"]), restore_file=restore_file)


def confirm_command(files: Dict[str, str], unit: str = ROLLBACK_UNIT) -> str:
    """What the controller runs once it can reach the host again: disarm, then drop the saved state."""
    saved = " ".join(shlex.quote(files[name]) for name in ("previous-table.nft", "previous-file.nft", "rollback.sh"))
    return "rm -f %s && { systemctl stop %s.timer 2>/dev/null || true; } && rm -f %s" % (
        shlex.quote(files["armed"]), unit, saved)
