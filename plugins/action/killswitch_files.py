# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make each file's content on the controller (plugin_utils/role_files.py) and write them all in one module run."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.netlock.killswitch.plugins.module_utils.role_parts import parts
from ansible_collections.netlock.killswitch.plugins.plugin_utils import role_files

MODULE = "netlock.killswitch.killswitch_files"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = self._task.args
        files, directories, only = parts(args)
        role_files.check_items(files)
        copies = [dict(dest=item["dest"], mode=item["mode"],
                       content=role_files.content(self, item, task_vars).decode("utf-8")) for item in files]
        result.update(self._execute_module(module_name=MODULE, task_vars=task_vars,
                                           module_args=dict(copies=copies, directories=directories, only=only)))
        return result
