# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render on the controller what the role would write, read the host in one module run, compare.

The module gets paths and digests only (never the payloads); the templates are rendered after its answer, as
M(ansible.builtin.template) renders them, with the module's ``commands`` where the role's templates read the apply's
(``killswitch_apply.commands``), so that a template and this check cannot disagree about a file's content.
"""

from __future__ import annotations

import hashlib

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase

from ansible_collections.netlock.killswitch.plugins.module_utils.role_parts import app_dropin_parts, parts
from ansible_collections.netlock.killswitch.plugins.plugin_utils import in_force, role_files

MODULE = "netlock.killswitch.killswitch_in_force"


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        files, directories, only = parts(args)
        role_files.check_items(files)
        firewall = dict(args.get("firewall") or {})
        if "ruleset" in firewall:
            firewall["ruleset_sha256"] = sha256_bytes((firewall.pop("ruleset") or "").encode("utf-8"))
        # The module reads paths: the payloads stay on the controller.
        copies = [dict(dest=item["dest"], mode=item["mode"]) for item in args.get("copies") or []]
        answer = self._execute_module(module_name=MODULE, module_args=dict(args, firewall=firewall, copies=copies),
                                      task_vars=task_vars)
        if answer.get("failed"):
            return dict(result, **answer)
        observed = answer["observed"]
        commands = answer.get("commands") or {}
        expected = dict(
            files={item["dest"]: self._expected_file(item, task_vars, commands) for item in files},
            absent=list(args.get("absent") or []),
            only={item["pattern"]: list(item.get("paths") or []) for item in only},
            units={item["name"]: item for item in args.get("units") or []},
            nft_tables=list(args.get("nft_tables") or []),
        )
        expected["files"].update((item["path"], dict(type="directory", mode=item["mode"])) for item in directories)
        found = in_force.findings(expected, observed)
        dropin_templates, dropin_directories, dropin_only = app_dropin_parts(args.get("app_dropins"))
        dropin_paths = [item["dest"] for item in dropin_templates] + [item["path"] for item in dropin_directories]
        todo = in_force.todo(found, dropin_paths, [item["pattern"] for item in dropin_only])
        result.update(changed=False, in_force=not found, differences=[text for _kind, _key, text in found], todo=todo,
                      commands=commands, observed=observed)
        return result

    def _expected_file(self, item, task_vars, commands):
        try:
            data = role_files.content(self, item, task_vars, commands)
        except AnsibleActionFail:
            raise  # the role names a file it does not have
        except AnsibleError as exc:
            # A template reading what only the apply returns, on a host whose firewall tools are missing (no
            # commands): not in force, and the converge's own write says what is wrong, if anything.
            return dict(type="file", mode=item["mode"], unrendered=str(exc).splitlines()[0] if str(exc) else repr(exc))
        return dict(type="file", mode=item["mode"], sha256=sha256_bytes(data))
