# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print the fleet's drift table on the controller, write it as JSON and fail on drift or a silent host."""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.netlock.killswitch.plugins.plugin_utils.drift import fleet_report, render_table, verdict
from ansible_collections.netlock.killswitch.plugins.plugin_utils.rollout import host_records, plain, write_json

display = Display()

STATUS_FACT = "killswitch_status"
ERROR_FACT = "killswitch_drift_error"

ARGUMENT_SPEC = dict(
    targets=dict(type="list", elements="str", required=True),
    statuses=dict(type="list", elements="dict"),
    path=dict(type="path", default="reports/drift.json"),
    enforced=dict(type="bool", default=False),
    fail=dict(type="bool", default=True),
    show=dict(type="bool", default=True),
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[0].validated_parameters
        hostvars = task_vars.get("hostvars") or {}
        targets = args["targets"]
        if args["statuses"] is None:
            statuses = [status for status in host_records(hostvars, targets, STATUS_FACT).values() if status]
        else:
            statuses = plain(args["statuses"])
        errors = {host: error for host, error in host_records(hostvars, targets, ERROR_FACT).items() if error}
        report = fleet_report(statuses, targets, enforced=args["enforced"], errors=errors,
                              check_mode=not args["enforced"])
        table = render_table(report)
        try:
            path = write_json(report, args["path"])
        except OSError as exc:
            return dict(result, failed=True, msg="could not write the drift report to %s: %s" % (args["path"], exc),
                        report=report)
        failed, msg = verdict(report, fail=args["fail"], path=path)
        if args["show"]:
            # A failing report goes to stderr with its verdict: cron (docs/drift/cron) discards stdout and
            # mails stderr, so that only a run that found something mails anybody.
            display.display(table + msg + "\n" if failed else table, stderr=failed)
        result.update(changed=False, failed=failed, msg=msg, path=path, drifted=report["drifted"],
                      unreachable=report["unreachable"])
        if not failed:
            # On failure the table was printed and the report written: the failure itself stays short.
            result.update(report=report, table=table.splitlines())
        return result
