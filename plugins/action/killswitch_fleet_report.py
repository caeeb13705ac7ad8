# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print the staged rollout's summary table on the controller and write it as JSON."""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.netlock.killswitch.plugins.plugin_utils.rollout import (
    PREFLIGHT_FACT,
    RESULT_FACT,
    host_records,
    plain,
    render_table,
    summary,
    write_json,
)

display = Display()

ARGUMENT_SPEC = dict(
    hosts=dict(type="list", elements="str", required=True),
    stages=dict(type="list", elements="dict", default=[]),
    stop=dict(type="dict", default={}),
    max_fail_percentage=dict(type="float"),
    path=dict(type="path", default="reports/rollout.json"),
    show=dict(type="bool", default=True),
    fail=dict(type="bool", default=True),
    final=dict(type="bool", default=True),
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[0].validated_parameters
        hostvars = task_vars.get("hostvars") or {}
        report = summary(
            targets=args["hosts"],
            stages=plain(args["stages"]),
            stop=plain(args["stop"]),
            preflight=host_records(hostvars, args["hosts"], PREFLIGHT_FACT),
            results=host_records(hostvars, args["hosts"], RESULT_FACT),
            check_mode=bool(self._play_context.check_mode),
            max_fail_percentage=args["max_fail_percentage"],
            complete=args["final"],
        )
        table = render_table(report)
        try:
            path = write_json(report, args["path"])
        except OSError as exc:
            return dict(result, failed=True, msg="could not write the report to %s: %s" % (args["path"], exc),
                        report=report)
        if args["show"] and args["final"]:
            display.display(table)
        bad = [h["host"] for h in report["hosts"] if h["result"] not in ("ok", "changed")]
        result.update(changed=False, path=path, not_converged=bad)
        if bad and args["fail"] and args["final"]:
            # The table was printed and the report written: the failure itself stays short.
            result.update(failed=True, msg="the rollout did not converge %d of %d hosts: %s (report: %s)" % (
                len(bad), len(report["hosts"]), ", ".join(bad), path))
        else:
            result.update(failed=False, msg="report: %s" % path, report=report, table=table.splitlines())
        return result
