# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Apply on the host, then prove the controller can still reach it.

When the module armed a rollback, the connection is reset and the confirmation runs over a new
one: if the new rules cut the controller off, it cannot confirm, and the host restores its
previous ruleset on its own when the timer fires.
"""

from __future__ import annotations

import time

from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        result.update(self._execute_module(module_name="netlock.killswitch.killswitch_nftables",
                                           module_args=self._task.args, task_vars=task_vars))
        armed = result.get("rollback")
        if not armed or result.get("failed"):
            return result
        if not self._task.args.get("confirm", True):
            armed["confirmed"] = False
            display.warning("%s: apply left unconfirmed on purpose; the host restores its previous ruleset in %ds"
                            % (task_vars.get("inventory_hostname"), armed["timeout"]))
            return result
        armed["confirmed"] = self._confirm(armed)
        if not armed["confirmed"]:
            result.update(failed=True, msg=(
                "the host could not be reached again within %ds of the apply: it restores its previous ruleset "
                "(check killswitch_management_cidrs and killswitch_management_ports)" % armed["timeout"]))
        return result

    def _confirm(self, armed):
        try:
            self._connection.reset()  # a persistent connection would pass even if new ones are refused
        except AttributeError:
            display.warning("the connection plugin cannot reset; confirming over the existing connection")
        deadline = time.monotonic() + armed["timeout"] - 2
        while time.monotonic() < deadline:
            try:
                if self._low_level_execute_command(armed["confirm"], sudoable=True)["rc"] == 0:
                    return True
            except AnsibleConnectionFailure:
                pass
            time.sleep(1)
        return False
