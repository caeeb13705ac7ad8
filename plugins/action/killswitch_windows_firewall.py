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

Safe apply (``rollback_timeout``, the role's ``killswitch_safe_apply_timeout``): the module arms a rollback
task before it changes anything and says so in ``rollback``.  This plugin then drops its connection and runs
the module with ``state=confirm`` over a new one, each attempt bounded, until the rollback is due; when no
attempt got through, the task fails naming ``killswitch_safe_apply_timeout`` and the host restores its previous
state on its own.
"""

from __future__ import annotations

import threading
import time

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.netlock.killswitch.plugins.plugin_utils import windows_plan

display = Display()

MODULE = "netlock.killswitch.killswitch_windows_firewall"
ATTEMPT_SECONDS = 30  # one confirmation attempt: a new WinRM/PSRP session, the module started, its answer
MARGIN_SECONDS = 2  # no attempt starts this close to the time the rollback task fires
CONFIRMED = "confirmed"
# The module's options (plugins/modules/killswitch_windows_firewall.py documents them, the unit test holds the
# PowerShell spec to that documentation); exclusive is turned into disable_rules here.
ARGUMENT_SPEC = dict(
    state=dict(type="str", choices=["query", "present", "absent", "confirm"], default="present"),
    document=dict(type="dict"),
    disable_rules=dict(type="list", elements="str", default=[]),
    exclusive=dict(type="bool", default=False),
    state_dir=dict(type="path", default="C:\\ProgramData\\netlock-killswitch"),
    guard_enabled=dict(type="bool", default=True),
    guard_interval=dict(type="int", default=30),
    rollback_timeout=dict(type="int", default=0),
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

        if state == "confirm":
            return dict(result, **self._module(dict(state="confirm", state_dir=args["state_dir"]), task_vars))

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
        if state == "present":
            module_args["rollback_timeout"] = args["rollback_timeout"]
        started = time.monotonic()
        applied = self._module(dict(module_args, state=state, disable_rules=sorted(disable) if state == "present" else []),
                               task_vars)
        if applied.get("failed") or applied.get("unreachable"):
            if state == "present" and args["rollback_timeout"] > 0 and not self._task.check_mode:
                applied["msg"] = ("%s (if the rollback was armed before this, the host restores its previous state "
                                  "within killswitch_safe_apply_timeout, %d s)" % (applied.get("msg") or "", args["rollback_timeout"]))
            return dict(result, **applied)
        after = applied.get("after") if applied.get("changed") else None
        outcome = self._finish(result, applied, live, after or applied.get("live") or live, args, host, warnings)
        if state == "present":
            outcome["third_party_open"] = open_paths
        armed = applied.get("rollback")
        if armed and armed.get("status") == "pending" and not self._task.check_mode:
            deadline = started + int(armed.get("timeout") or args["rollback_timeout"]) - MARGIN_SECONDS
            status = self._confirm(args["state_dir"], task_vars, deadline)
            outcome["rollback"] = dict(armed, status=status, confirmed=status == CONFIRMED)
            if status != CONFIRMED:
                outcome.update(failed=True, msg=self._not_confirmed(host, status, armed))
        return outcome

    @staticmethod
    def _not_confirmed(host, status, armed):
        timeout = armed.get("timeout")
        if status.startswith("rolled back") or status.startswith("rollback failed"):
            return ("%s: the rollback task %s ran before the apply was confirmed (%s): the host is back to its previous "
                    "firewall state; raise killswitch_safe_apply_timeout (%s s) if the host was reachable"
                    % (host, armed.get("task"), status, timeout))
        return ("%s: the apply could not be confirmed over a new connection within killswitch_safe_apply_timeout "
                "(%s s; %s): the host restores its previous firewall state on its own (task %s); check "
                "killswitch_management_cidrs and killswitch_management_ports" % (host, timeout, status, armed.get("task")))

    def _confirm(self, state_dir, task_vars, deadline):
        """Confirm over new connections until one answers or the rollback is due; returns the status."""
        status = "unreachable"
        while time.monotonic() < deadline:
            self._new_connection()
            answer = self._bounded(dict(state="confirm", state_dir=state_dir), task_vars,
                                   max(1, min(ATTEMPT_SECONDS, deadline - time.monotonic())))
            if answer is None:
                status = "no answer within %d s" % ATTEMPT_SECONDS
            elif answer.get("failed") or answer.get("unreachable"):
                status = "unreachable: %s" % (answer.get("msg") or "no connection")
            else:
                return str((answer.get("rollback") or {}).get("status") or "none")
            time.sleep(1)
        return status

    def _new_connection(self):
        """Drop the current WinRM/PSRP session, so that the confirmation proves a new one can be made."""
        try:
            self._connection.reset()
        except AttributeError:
            display.warning("the connection plugin cannot reset; confirming over the existing connection")
        except Exception as exc:  # a reset that fails leaves nothing to reuse
            display.vvv("connection reset failed: %s" % exc)

    def _bounded(self, module_args, task_vars, seconds):
        """The module in a thread, given up after ``seconds``; None when it did not answer."""
        answer = {}

        def attempt():
            try:
                answer["result"] = self._module(module_args, task_vars)
            except Exception as exc:  # connection failures: the host is not reachable (yet)
                answer["result"] = {"unreachable": True, "msg": str(exc)}

        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(seconds)
        if worker.is_alive():
            try:
                self._connection.close()
            except Exception:  # the stalled session is abandoned either way
                pass
            return None
        return answer.get("result")

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
        if args["state"] == "query":
            # playbooks/rollout.yml's post-check: in force (a document) or gone (none).
            outcome["postcheck"] = windows_plan.postcheck(after, outcome.get("status"))
        return outcome
