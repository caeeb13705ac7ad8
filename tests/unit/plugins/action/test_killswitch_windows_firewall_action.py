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
    state["rules"] = [dict(name=rule["name"], display_name=rule["display_name"], direction=rule["direction"], enabled=True,
                           description=render_windows.description(rule, ["WireGuard-Office"] if rule["interface_aliases"] else []))
                      for rule in document["rules"]]
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
