# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Apply on the host, then prove the controller can still reach it over a new connection.

When the module armed a rollback it has not changed any rule yet: the host loads the staged ruleset
a moment after the module's reply left (see module_utils/rollback.py).  The controller waits for that
moment, drops its connection (a ControlPersist master included) and confirms over new ones.  Every
attempt is bounded, so a rule that cuts the controller off makes the task fail within the rollback
timeout plus a few seconds, never hang; the host then restores its last confirmed ruleset on its own.
"""

from __future__ import annotations

import time

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.netlock.killswitch.plugins.module_utils import rollback
from ansible_collections.netlock.killswitch.plugins.plugin_utils import confirm

display = Display()

ATTEMPT_SECONDS = 5  # one confirmation attempt: connect, run, answer
KEEPALIVE = "-o ServerAliveInterval=1 -o ServerAliveCountMax=3"  # a stalled ssh session ends in ~3 s


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        result.update(self._execute_module(module_name="netlock.killswitch.killswitch_firewall",
                                           module_args=self._task.args, task_vars=task_vars))
        armed = result.get("rollback")
        if not armed or result.get("failed"):
            return result
        if not self._task.args.get("confirm", True):
            armed.update(confirmed=False, status=rollback.PENDING)
            display.warning("%s: apply left unconfirmed on purpose; the host restores its previous ruleset in %ds"
                            % ((task_vars or {}).get("inventory_hostname"), armed["timeout"]))
            return result
        status = self._confirm(armed)
        armed.update(status=status, confirmed=status == rollback.CONFIRMED)
        if status.startswith(rollback.FAILED):
            result.update(failed=True, msg="nft -f failed on the host, the previous table is still loaded: %s" % status)
        elif not armed["confirmed"]:
            result.update(failed=True, msg=(
                "the host could not be reached over a new connection within %ds of the apply (%s): it restores "
                "its previous ruleset on its own (check killswitch_management_cidrs and killswitch_management_ports)"
                % (armed["timeout"], status)))
        return result

    def _confirm(self, armed):
        """Confirm over new connections until the host answers or the rollback is due; returns the status."""
        # The rules change `delay` seconds after the module's reply; a session opened before that could be
        # cut in the middle and stall, so no new session starts until then.
        time.sleep(armed.get("delay", 0) + 0.5)
        deadline = time.monotonic() + armed["timeout"] - armed.get("delay", 0) - 2
        status = "unreachable"
        while time.monotonic() < deadline:
            self._new_connection(min(ATTEMPT_SECONDS, max(1, int(deadline - time.monotonic()))))
            answer = self._bounded(armed["confirm"], ATTEMPT_SECONDS + 2)
            if answer is not None:
                status = answer
                if status != rollback.PENDING:
                    return status
            time.sleep(0.5)
        return status

    def _new_connection(self, timeout):
        """Drop the current connection (and any ControlPersist master) so the next command opens a new one."""
        for name, value in (("timeout", timeout), ("ssh_extra_args", KEEPALIVE)):
            try:
                current = self._connection.get_option(name)
                if name == "ssh_extra_args" and current:
                    value = current if KEEPALIVE in current else "%s %s" % (current, KEEPALIVE)
                self._connection.set_option(name, value)
            except (AnsibleError, KeyError, AttributeError):
                pass  # a connection plugin without the option
        confirm.reset_connection(self._connection, display)

    def _bounded(self, command, seconds):
        """Run the confirmation and give up on it after `seconds`; None when it did not answer."""
        def attempt():
            out = self._low_level_execute_command(command, sudoable=True)
            if out["rc"] != 0:
                return None
            return out["stdout"].strip().splitlines()[-1] if out["stdout"].strip() else ""

        return confirm.bounded(attempt, self._connection, seconds)
