# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decide on the controller whether a staged rollout goes on after a stage (preflight, canary, batch)."""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.netlock.killswitch.plugins.plugin_utils.rollout import RESULT_FACT, gate, host_records

ARGUMENT_SPEC = dict(
    stage=dict(type="str", required=True),
    hosts=dict(type="list", elements="str", required=True),
    fact=dict(type="str", default=RESULT_FACT),
    max_fail_percentage=dict(type="float", default=0),
    warn=dict(type="bool", default=True),
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[0].validated_parameters
        if not 0 <= args["max_fail_percentage"] <= 100:
            return dict(result, failed=True, msg="max_fail_percentage: %r is not between 0 and 100" % args["max_fail_percentage"])
        records = host_records(task_vars.get("hostvars") or {}, args["hosts"], args["fact"])
        verdict = gate(args["stage"], args["hosts"], records, args["max_fail_percentage"])
        result.update(verdict, changed=False, failed=verdict["stop"])
        if args["warn"] and not verdict["stop"] and (verdict["failed_hosts"] or verdict["aborted_hosts"] or verdict["unreachable_hosts"]):
            result["warnings"] = [verdict["msg"]]
        return result
