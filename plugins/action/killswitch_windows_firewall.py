# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converge the kill switch on a Windows host: the PowerShell module applies, the controller judges.

The module is kept thin because nothing can run PowerShell where this collection is tested: it lists what is
live and reconciles the rule group. Everything that needs judgement is done here, with windows_plan.py: which
third-party allow rules open an outbound path outside the tunnel (and, with ``exclusive``, which to disable),
the --diff text, the warnings and the ``killswitch_status`` that ``playbooks/drift.yml`` reports.

Order: the module with ``state=query`` (changes nothing), then with the requested state and the rules to
disable, in check mode when the task is.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.netlock.killswitch.plugins.plugin_utils import windows_plan

MODULE = "netlock.killswitch.killswitch_windows_firewall"
# The module's options (plugins/modules/killswitch_windows_firewall.py documents them, the unit test holds the
# PowerShell spec to that documentation); exclusive is turned into disable_rules here.
ARGUMENT_SPEC = dict(
    state=dict(type="str", choices=["query", "present", "absent"], default="present"),
    document=dict(type="dict"),
    disable_rules=dict(type="list", elements="str", default=[]),
    exclusive=dict(type="bool", default=False),
    state_dir=dict(type="path", default="C:\\ProgramData\\netlock-killswitch"),
    guard_enabled=dict(type="bool", default=True),
    guard_interval=dict(type="int", default=30),
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(
            argument_spec=ARGUMENT_SPEC, required_if=[("state", "present", ("document",))])
        host = task_vars.get("inventory_hostname", "the host")
        state = args["state"]
        document = args["document"] or {}
        module_args = {key: args[key] for key in ("state_dir", "guard_enabled", "guard_interval")}
        if args["document"] is not None:
            module_args["document"] = args["document"]

        query = self._module(dict(module_args, state="query"), task_vars)
        if query.get("failed"):
            return dict(result, **query)
        live = query.get("live") or query.get("before") or {}
        if state == "query":
            return self._finish(result, query, live, live, args, host, [])

        open_paths, warnings = [], []
        disable = list(args["disable_rules"])
        if state == "present":
            open_paths = windows_plan.open_paths(live.get("third_party") or [], document)
            if args["exclusive"]:
                disable += [path["name"] for path in open_paths if path["name"] not in disable]
            else:
                warnings = ["%s: the enabled firewall rule %r (%s) opens an outbound path outside the tunnel: %s; "
                            "killswitch_windows_exclusive: true disables it"
                            % (host, path["name"], path.get("display_name") or path["name"], path.get("why") or "")
                            for path in open_paths]
        applied = self._module(dict(module_args, state=state, disable_rules=sorted(disable) if state == "present" else []),
                               task_vars)
        if applied.get("failed"):
            return dict(result, **applied)
        after = applied.get("after") if applied.get("changed") else None
        outcome = self._finish(result, applied, live, after or applied.get("live") or live, args, host, warnings)
        if state == "present":
            outcome["third_party_open"] = open_paths
        return outcome

    def _module(self, module_args, task_vars):
        return self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)

    @staticmethod
    def _finish(result, module_result, before, after, args, host, warnings):
        """The module's result with the controller's diff, warnings and (with a document) killswitch_status."""
        document = args["document"] or None
        outcome = dict(result)
        outcome.update(module_result)
        outcome["before"] = before
        # The module resolves patterns only when it applies; for a query windows_plan finds them from the interfaces.
        unresolved = None if args["state"] == "query" else list(module_result.get("unresolved") or [])
        outcome["diff"] = windows_plan.diff(before, after)
        outcome["warnings"] = (list(result.get("warnings") or []) + list(module_result.get("warnings") or []) + warnings
                               + windows_plan.warnings(after, document, unresolved=unresolved))
        if document:
            # The live state this run found: in check mode drift found, in a real run drift repaired (docs/design/drift.md).
            outcome["status"] = windows_plan.status(before, document, host=host, guard_enabled=args["guard_enabled"],
                                                    guard_interval=args["guard_interval"], exclusive=args["exclusive"])
        return outcome
