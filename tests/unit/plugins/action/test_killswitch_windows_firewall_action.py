# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The killswitch_windows_firewall action plugin: query, judge on the controller, apply, report.

The PowerShell module is replaced by a fake ``_execute_module`` that answers like the module's documented
return values. windows_plan (the controller's judgement, tested with its own tests) is replaced by recording
fakes here, so that these tests prove the wiring: what goes to the module, in which order, and what comes
back (diff, warnings, status, the rules exclusive mode disables).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import yaml

from ansible.errors import AnsibleActionFail

from ansible_collections.netlock.killswitch.plugins.action import killswitch_windows_firewall as action
from ansible_collections.netlock.killswitch.plugins.modules import killswitch_windows_firewall as module_doc

DOCUMENT = {"version": 1, "group": "netlock.killswitch killswitch", "digest": "ab" * 32, "rules": [],
            "tunnel_patterns": ["WireGuard-Office"], "warnings": [],
            "profiles": {"names": ["Domain", "Private", "Public"], "enabled": True,
                         "default_inbound": "Block", "default_outbound": "Block"}}
OPEN = {"name": "CoreNet-DNS-Out-UDP", "display_name": "Core Networking - DNS (UDP-Out)", "group": "@FirewallAPI.dll,-25000",
        "direction": "Outbound", "action": "Allow", "enabled": True, "program": "C:\\Windows\\system32\\svchost.exe",
        "protocol": "UDP", "remote_addresses": [], "remote_ports": ["53"], "interface_aliases": [], "interface_type": "Any"}
OPEN_TOO = dict(OPEN, name="Firefox-Out", display_name="Firefox", program="C:\\Program Files\\Mozilla Firefox\\firefox.exe",
                protocol="Any", remote_ports=[])
TUNNEL_ONLY = dict(OPEN, name="VPN-Client-Out", display_name="VPN client", interface_aliases=["WireGuard-Office"])


def live(rules=(), third_party=(OPEN, OPEN_TOO, TUNNEL_ONLY), outbound="Allow", features=()):
    profile = {"enabled": True, "default_inbound": "Block", "default_outbound": outbound}
    return {"profiles": {name: dict(profile) for name in ("Domain", "Private", "Public")},
            "rules": [dict(name=name, display_name=name, direction="Outbound", enabled=True, description="d") for name in rules],
            "third_party": [dict(rule) for rule in third_party], "interfaces": ["Ethernet", "WireGuard-Office"],
            "forwarding_features": list(features), "recorded": None, "guard": {"task": bool(rules), "interval": 30}}


class FakePlan:
    """Recording stand-ins for windows_plan: open_paths flags rules not limited to the tunnel with any address."""

    def __init__(self):
        self.calls = []

    def open_paths(self, third_party, document):
        self.calls.append(("open_paths", copy.deepcopy(third_party), document))
        return [{"name": rule["name"], "display_name": rule["display_name"], "why": "any address on any interface"}
                for rule in third_party if not rule["remote_addresses"] and not rule["interface_aliases"]]

    def diff(self, before, after):
        self.calls.append(("diff", before, after))
        return {"before": "outbound %s\n" % before["profiles"]["Public"]["default_outbound"],
                "after": "outbound %s\n" % after["profiles"]["Public"]["default_outbound"]}

    def warnings(self, live_state, document=None, unresolved=None):
        self.calls.append(("warnings", live_state, document, unresolved))
        found = ["%s forwards around Windows Firewall" % name for name in live_state.get("forwarding_features", [])]
        return found + ["unresolved %s" % name for name in unresolved or []]

    def status(self, live_state, document, host="", guard_enabled=True, guard_interval=None, exclusive=False):
        self.calls.append(("status", live_state, document, dict(host=host, guard_enabled=guard_enabled,
                                                                guard_interval=guard_interval, exclusive=exclusive)))
        drifted = live_state["profiles"]["Public"]["default_outbound"] != "Block"
        return {"host": host, "backend": "windows", "digest": document["digest"][:16], "drifted": drifted,
                "parts": {"table": {"in_sync": not drifted, "diff": "x" if drifted else ""}}}

    def called(self, name):
        return [call for call in self.calls if call[0] == name]


@pytest.fixture
def plan(monkeypatch):
    fake = FakePlan()
    for name in ("open_paths", "diff", "warnings", "status"):
        monkeypatch.setattr(action.windows_plan, name, getattr(fake, name))
    return fake


class FakeModule:
    """Answers as the PowerShell module does: state=query lists, present/absent return actions, before and after."""

    def __init__(self, before, actions=(), after=None, unresolved=(), fail=None):
        self.before, self.actions, self.after, self.unresolved, self.fail = before, list(actions), after, list(unresolved), fail
        self.calls = []

    def __call__(self, module_name=None, module_args=None, task_vars=None, **kwargs):
        self.calls.append((module_name, copy.deepcopy(module_args)))
        if self.fail and module_args["state"] == self.fail:
            return {"failed": True, "msg": "Get-NetFirewallProfile: access denied"}
        result = {"changed": False, "actions": [], "unresolved": [], "before": self.before, "live": self.before}
        if module_args["state"] != "query":
            result.update(actions=list(self.actions), unresolved=list(self.unresolved))
            if self.actions:
                result.update(changed=True, after=self.after, live=self.after)
        return result

    def states(self):
        return [args["state"] for _name, args in self.calls]


def run(args, module, check_mode=False, host="win1"):
    task = SimpleNamespace(args=args, async_val=0, check_mode=check_mode, diff=True,
                           action="netlock.killswitch.killswitch_windows_firewall")
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir="C:\\Temp\\already-there"))
    plugin = action.ActionModule(task, connection, SimpleNamespace(check_mode=check_mode), None, None, None)
    plugin._load_name = task.action  # as the plugin loader sets it (ansible-core 2.18 reads it)
    plugin._execute_module = module
    return plugin.run(task_vars={"inventory_hostname": host})


def test_a_change_is_applied_and_reported_with_diff_and_status(plan):
    before, after = live(), live(rules=["netlock.killswitch.killswitch.00.loopback-out"], outbound="Block")
    module = FakeModule(before, actions=["profiles Domain,Private,Public: default outbound Allow -> Block",
                                         "add netlock.killswitch.killswitch.00.loopback-out"], after=after)
    result = run({"document": DOCUMENT}, module)
    assert module.states() == ["query", "present"]
    assert module.calls[0][0] == "netlock.killswitch.killswitch_windows_firewall"
    assert module.calls[1][1]["document"] == DOCUMENT and module.calls[1][1]["state_dir"] == "C:\\ProgramData\\netlock-killswitch"
    assert result["changed"] is True and result["actions"][0].startswith("profiles Domain,Private,Public")
    assert result["diff"] == {"before": "outbound Allow\n", "after": "outbound Block\n"}
    assert plan.called("diff") == [("diff", before, after)]
    # the status is judged on what this run found: in a real run, drift it repaired
    assert plan.called("status") == [("status", before, DOCUMENT, dict(host="win1", guard_enabled=True, guard_interval=30,
                                                                       exclusive=False))]
    assert result["status"]["host"] == "win1" and result["status"]["drifted"] is True
    assert [p["name"] for p in result["third_party_open"]] == ["CoreNet-DNS-Out-UDP", "Firefox-Out"]


def test_an_unchanged_host_reports_no_change_and_an_empty_diff(plan):
    state = live(rules=["netlock.killswitch.killswitch.00.loopback-out"], outbound="Block", third_party=[TUNNEL_ONLY])
    module = FakeModule(state)
    result = run({"document": DOCUMENT}, module)
    assert result["changed"] is False and "after" not in result
    assert result["diff"]["before"] == result["diff"]["after"]
    assert plan.called("diff") == [("diff", state, state)]
    assert result["status"]["drifted"] is False and result["third_party_open"] == []
    assert not [w for w in result["warnings"] if "opens an outbound path" in w]


def test_check_mode_reports_the_predicted_change_and_the_drift_found(plan):
    before, predicted = live(), live(rules=["netlock.killswitch.killswitch.00.loopback-out"], outbound="Block")
    module = FakeModule(before, actions=["add netlock.killswitch.killswitch.00.loopback-out"], after=predicted)
    result = run({"document": DOCUMENT}, module, check_mode=True)
    # ansible-core's _execute_module gives the module the task's check mode unless the action opts out; the module
    # must still be asked, to compute what it would change
    assert action.ActionModule._supports_check_mode is True
    assert module.states() == ["query", "present"]
    assert result["changed"] is True and result["diff"]["after"] == "outbound Block\n"
    assert result["status"]["drifted"] is True and plan.called("status")[0][1] is before


def test_exclusive_disables_exactly_the_rules_that_open_a_path(plan):
    module = FakeModule(live(), actions=["disable CoreNet-DNS-Out-UDP", "disable Firefox-Out"], after=live(third_party=[TUNNEL_ONLY]))
    result = run({"document": DOCUMENT, "exclusive": True, "disable_rules": ["Legacy-Out"]}, module)
    assert module.calls[1][1]["disable_rules"] == ["CoreNet-DNS-Out-UDP", "Firefox-Out", "Legacy-Out"]
    assert "VPN-Client-Out" not in module.calls[1][1]["disable_rules"]
    assert plan.called("open_paths")[0][1] == live()["third_party"] and plan.called("open_paths")[0][2] == DOCUMENT
    assert not [w for w in result["warnings"] if "opens an outbound path" in w]
    assert plan.called("status")[0][3]["exclusive"] is True


def test_without_exclusive_every_open_path_is_a_warning_naming_the_rule(plan):
    module = FakeModule(live())
    result = run({"document": DOCUMENT}, module)
    assert module.calls[1][1]["disable_rules"] == []
    leaks = [w for w in result["warnings"] if "opens an outbound path" in w]
    assert len(leaks) == 2
    assert "'CoreNet-DNS-Out-UDP'" in leaks[0] and "win1" in leaks[0] and "killswitch_windows_exclusive" in leaks[0]
    assert "'Firefox-Out'" in leaks[1]


def test_absent_removes_without_judging_third_party_rules(plan):
    before = live(rules=["netlock.killswitch.killswitch.00.loopback-out"], outbound="Block")
    module = FakeModule(before, actions=["unregister task netlock-killswitch-guard",
                                         "remove netlock.killswitch.killswitch.00.loopback-out"], after=live(rules=[]))
    result = run({"state": "absent", "disable_rules": ["Ignored-Out"], "exclusive": True}, module)
    assert module.states() == ["query", "absent"]
    assert module.calls[1][1]["disable_rules"] == [] and "document" not in module.calls[1][1]
    assert result["changed"] is True and "third_party_open" not in result and "status" not in result
    assert plan.called("open_paths") == [] and result["diff"]["after"] == "outbound Allow\n"


def test_forwarding_features_and_unresolved_patterns_become_warnings(plan):
    state = live(features=["Hyper-V", "WSL"], third_party=[])
    module = FakeModule(state, actions=["add x"], after=dict(state), unresolved=["WireGuard-Office"])
    result = run({"document": DOCUMENT}, module)
    assert "Hyper-V forwards around Windows Firewall" in result["warnings"]
    assert "WSL forwards around Windows Firewall" in result["warnings"]
    assert "unresolved WireGuard-Office" in result["warnings"] and result["unresolved"] == ["WireGuard-Office"]
    assert plan.called("warnings")[0][2] == DOCUMENT and plan.called("warnings")[0][3] == ["WireGuard-Office"]


def test_a_failed_query_stops_before_anything_changes(plan):
    module = FakeModule(live(), fail="query")
    result = run({"document": DOCUMENT}, module)
    assert result["failed"] is True and "access denied" in result["msg"]
    assert module.states() == ["query"]


def test_query_changes_nothing_and_calls_the_module_once(plan):
    module = FakeModule(live())
    result = run({"state": "query"}, module)
    assert module.states() == ["query"] and result["changed"] is False and result["live"] == live()


def test_present_without_a_document_fails_before_the_host_is_asked(plan):
    module = FakeModule(live())
    with pytest.raises(AnsibleActionFail, match="document"):
        run({"state": "present"}, module)
    assert module.calls == []


def test_the_action_options_are_the_documented_options():
    documented = yaml.safe_load(module_doc.DOCUMENTATION)["options"]
    assert set(documented) == set(action.ARGUMENT_SPEC)
    for name, spec in action.ARGUMENT_SPEC.items():
        for key in ("type", "default", "choices", "elements"):
            assert documented[name].get(key) == spec.get(key), (name, key)


# --------------------------------------------------------------------------- with the real windows_plan and document

def rendered_document():
    from ansible_collections.netlock.killswitch.plugins.plugin_utils import policy, render_windows
    variables = {policy.PREFIX + name: value for name, value in policy.DEFAULTS.items()}
    variables.update({policy.PREFIX + "tunnel_interfaces": ["WireGuard-Office"],
                      policy.PREFIX + "endpoints": [{"address": "198.51.100.7", "port": 51820}],
                      policy.PREFIX + "endpoint_program": "C:\\Program Files\\WireGuard\\wireguard.exe",
                      policy.PREFIX + "management_cidrs": ["198.18.30.1/32"], policy.PREFIX + "management_ports": [5986],
                      policy.PREFIX + "dns_servers": ["10.64.0.1"]})
    return render_windows.document(policy.parse_policy(variables, resolve=lambda name: []))


def in_sync_live(document, third_party):
    from ansible_collections.netlock.killswitch.plugins.plugin_utils import render_windows
    state = live(outbound="Block", third_party=third_party)
    state["rules"] = []
    for rule in document["rules"]:
        aliases = ["WireGuard-Office"] if rule["interface_aliases"] else []
        state["rules"].append(dict(
            name=rule["name"], display_name=rule["display_name"], direction=rule["direction"], enabled=True,
            description=render_windows.description(rule, aliases), protocol=rule["protocol"], local_ports=rule["local_ports"],
            remote_ports=rule["remote_ports"], icmp_types=rule["icmp_types"], local_addresses=[],
            remote_addresses=rule["remote_addresses"], program=rule["program"], interface_aliases=aliases))
    state["guard"] = {"task": True, "state": "Ready", "runs_guard": True, "interval": 30,
                      "action": 'powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File "C:\\ks\\guard.ps1"'}
    return state


def test_with_the_real_plan_exclusive_disables_the_leaks_only():
    document = rendered_document()
    loopback_only = dict(OPEN, name="Local-Agent-Out", display_name="agent", remote_addresses=["127.0.0.1"])
    third_party = [OPEN, OPEN_TOO, TUNNEL_ONLY, loopback_only]
    before = live(third_party=third_party)
    module = FakeModule(before, actions=["disable CoreNet-DNS-Out-UDP", "disable Firefox-Out"],
                        after=in_sync_live(document, [TUNNEL_ONLY, loopback_only]))
    result = run({"document": document, "exclusive": True}, module)
    assert module.calls[1][1]["disable_rules"] == ["CoreNet-DNS-Out-UDP", "Firefox-Out"]
    assert [path["name"] for path in result["third_party_open"]] == ["CoreNet-DNS-Out-UDP", "Firefox-Out"]
    assert result["status"]["host"] == "win1" and result["status"]["backend"] == "windows"
    assert result["status"]["drifted"] is True and result["status"]["parts"]["table"]["in_sync"] is False
    assert result["diff"]["before"] != result["diff"]["after"]


def test_with_the_real_plan_an_in_sync_host_reports_no_drift():
    document = rendered_document()
    state = in_sync_live(document, [TUNNEL_ONLY])
    result = run({"document": document}, FakeModule(state))
    assert result["changed"] is False and result["third_party_open"] == []
    assert result["status"]["drifted"] is False, result["status"]
    assert result["diff"]["before"] == result["diff"]["after"]


# --------------------------------------------------------------------------- safe apply: arm, reconnect, confirm

class FakeClock:
    """time for the action plugin: sleep advances the clock instead of waiting."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class FakeConnection:
    """Records each reset in the log the module shares, so the order of reset and confirm is seen."""

    def __init__(self, log, can_reset=True):
        self.log, self.resets, self.closes = log, 0, 0
        self._shell = SimpleNamespace(tmpdir="C:\\Temp\\already-there")
        if not can_reset:
            self.reset = None

    def reset(self):
        self.resets += 1
        self.log.append("reset")

    def close(self):
        self.closes += 1


class ArmingModule(FakeModule):
    """present arms a rollback (as the module does with rollback_timeout > 0, not in check mode); confirm answers
    from ``confirms``: a status, or an exception for a connection that cannot be made."""

    def __init__(self, before, confirms=(), **kwargs):
        super().__init__(before, **kwargs)
        self.confirms, self.log = list(confirms), []

    def __call__(self, module_name=None, module_args=None, task_vars=None, **kwargs):
        self.log.append(module_args["state"])
        if module_args["state"] == "confirm":
            self.calls.append((module_name, copy.deepcopy(module_args)))
            answer = self.confirms.pop(0) if self.confirms else ConnectionError("winrm: connect timed out")
            if isinstance(answer, Exception):
                raise answer
            return {"changed": True, "actions": [], "rollback": {"status": answer}}
        result = super().__call__(module_name, module_args, task_vars, **kwargs)
        timeout = module_args.get("rollback_timeout") or 0
        if module_args["state"] == "present" and timeout > 0 and self.actions and not self.check_mode:
            result["rollback"] = {"timeout": timeout, "task": "netlock-killswitch-rollback", "status": "pending",
                                  "snapshot": "C:\\ProgramData\\netlock-killswitch\\rollback.json"}
        return result


def run_armed(args, module, check_mode=False, can_reset=True, clock=None, monkeypatch=None):
    module.check_mode = check_mode
    connection = FakeConnection(module.log, can_reset=can_reset)
    if monkeypatch is not None:
        monkeypatch.setattr(action, "time", clock or FakeClock())
    task = SimpleNamespace(args=args, async_val=0, check_mode=check_mode, diff=True,
                           action="netlock.killswitch.killswitch_windows_firewall")
    plugin = action.ActionModule(task, connection, SimpleNamespace(check_mode=check_mode), None, None, None)
    plugin._load_name = task.action
    plugin._execute_module = module
    return plugin.run(task_vars={"inventory_hostname": "win1"}), connection


CHANGE = ["profiles Domain,Private,Public: default outbound Allow -> Block"]


def test_an_armed_apply_is_confirmed_over_a_new_connection(plan, monkeypatch):
    module = ArmingModule(live(), confirms=["confirmed"], actions=CHANGE, after=live(outbound="Block"))
    result, connection = run_armed({"document": DOCUMENT, "rollback_timeout": 60}, module, monkeypatch=monkeypatch)
    assert module.calls[1][1]["rollback_timeout"] == 60 and module.calls[1][1]["state"] == "present"
    # the confirmation runs only after the connection was reset: it proves a new session gets through
    assert module.log == ["query", "present", "reset", "confirm"]
    assert module.calls[2][1] == {"state": "confirm", "state_dir": "C:\\ProgramData\\netlock-killswitch"}
    assert not result.get("failed"), result.get("msg")
    assert result["rollback"]["confirmed"] is True and result["rollback"]["status"] == "confirmed"
    assert result["changed"] is True


def test_an_apply_that_cannot_be_confirmed_fails_naming_the_timeout(plan, monkeypatch):
    module = ArmingModule(live(), confirms=[], actions=CHANGE, after=live(outbound="Block"))
    clock = FakeClock()
    result, connection = run_armed({"document": DOCUMENT, "rollback_timeout": 20}, module, clock=clock,
                                   monkeypatch=monkeypatch)
    assert result["failed"] is True
    assert "killswitch_safe_apply_timeout" in result["msg"] and "restores its previous firewall state" in result["msg"]
    assert result["rollback"]["confirmed"] is False and result["rollback"]["status"].startswith("unreachable")
    # it kept trying over new connections, each after a reset, and gave up before the rollback was due
    confirms = module.states().count("confirm")
    assert confirms >= 2 and connection.resets == confirms
    assert clock.now < 1000.0 + 20


def test_a_rollback_that_ran_first_fails_the_task(plan, monkeypatch):
    module = ArmingModule(live(), confirms=["rolled back"], actions=CHANGE, after=live(outbound="Block"))
    result, _connection = run_armed({"document": DOCUMENT, "rollback_timeout": 60}, module, monkeypatch=monkeypatch)
    assert result["failed"] is True and "ran before the apply was confirmed" in result["msg"]
    assert "killswitch_safe_apply_timeout" in result["msg"] and result["rollback"]["status"] == "rolled back"


def test_a_late_connection_after_failures_still_confirms(plan, monkeypatch):
    module = ArmingModule(live(), confirms=[ConnectionError("refused"), "confirmed"], actions=CHANGE,
                          after=live(outbound="Block"))
    result, connection = run_armed({"document": DOCUMENT, "rollback_timeout": 60}, module, monkeypatch=monkeypatch)
    assert not result.get("failed") and result["rollback"]["confirmed"] is True
    assert module.log == ["query", "present", "reset", "confirm", "reset", "confirm"]


def test_timeout_zero_arms_nothing_and_confirms_nothing(plan, monkeypatch):
    module = ArmingModule(live(), actions=CHANGE, after=live(outbound="Block"))
    result, connection = run_armed({"document": DOCUMENT}, module, monkeypatch=monkeypatch)
    assert module.calls[1][1]["rollback_timeout"] == 0
    assert module.log == ["query", "present"] and connection.resets == 0
    assert "rollback" not in result and not result.get("failed")


def test_check_mode_arms_nothing_and_confirms_nothing(plan, monkeypatch):
    module = ArmingModule(live(), actions=CHANGE, after=live(outbound="Block"))
    result, connection = run_armed({"document": DOCUMENT, "rollback_timeout": 60}, module, check_mode=True,
                                   monkeypatch=monkeypatch)
    assert module.log == ["query", "present"] and connection.resets == 0
    assert "rollback" not in result and result["changed"] is True


def test_a_pending_rollback_reported_in_check_mode_is_not_confirmed(plan, monkeypatch):
    """Even a module answer that says pending is never confirmed by a check-mode run: it changed nothing."""
    module = ArmingModule(live(), actions=CHANGE, after=live(outbound="Block"))
    module.check_mode = True

    def always_armed(module_name=None, module_args=None, task_vars=None, **kwargs):
        result = ArmingModule.__call__(module, module_name, module_args, task_vars)
        if module_args["state"] == "present":
            result["rollback"] = {"timeout": 60, "task": "netlock-killswitch-rollback", "status": "pending"}
        return result

    monkeypatch.setattr(action, "time", FakeClock())
    task = SimpleNamespace(args={"document": DOCUMENT, "rollback_timeout": 60}, async_val=0, check_mode=True, diff=True,
                           action="netlock.killswitch.killswitch_windows_firewall")
    connection = FakeConnection(module.log)
    plugin = action.ActionModule(task, connection, SimpleNamespace(check_mode=True), None, None, None)
    plugin._load_name = task.action
    plugin._execute_module = always_armed
    result = plugin.run(task_vars={"inventory_hostname": "win1"})
    assert "confirm" not in module.log and connection.resets == 0 and not result.get("failed")


def test_state_confirm_is_passed_to_the_module_alone(plan, monkeypatch):
    module = ArmingModule(live(), confirms=["confirmed"])
    result, _connection = run_armed({"state": "confirm"}, module, monkeypatch=monkeypatch)
    assert module.log == ["confirm"] and result["rollback"]["status"] == "confirmed"


def test_query_with_a_document_is_the_rollouts_post_check(plan):
    module = FakeModule(live(outbound="Allow"))
    result = run({"state": "query", "document": DOCUMENT}, module)
    assert module.states() == ["query"]
    assert result["postcheck"]["ok"] is False and result["status"]["drifted"] is True
    in_force = run({"state": "query", "document": DOCUMENT}, FakeModule(live(outbound="Block")))
    assert in_force["postcheck"]["ok"] is True


def test_query_without_a_document_checks_that_the_kill_switch_is_gone(plan):
    left = run({"state": "query"}, FakeModule(live(rules=["netlock.killswitch.killswitch.00.loopback-out"])))
    assert left["postcheck"]["ok"] is False and "status" not in left
    gone = run({"state": "query"}, FakeModule(live(rules=[])))
    assert gone["postcheck"]["ok"] is True
