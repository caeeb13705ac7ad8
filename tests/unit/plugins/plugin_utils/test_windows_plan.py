# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""windows_plan: the controller's judgement of a Windows host's ``live`` state against the document.

The third-party rules below are the kinds Windows and its software ship: Core Networking, browsers, VPN
clients, vendor updaters.  Each verdict is asserted, the conservative ones (reported because they cannot be
proven safe) included.
"""

from __future__ import annotations

import copy

import pytest

from ansible_collections.netlock.killswitch.plugins.plugin_utils import drift, windows_plan
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy
from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_windows import description, document
from ansible_collections.netlock.killswitch.tests.unit.plugins.plugin_utils.windows_firewall_model import STOCK_OPEN_RULES

PROGRAM = "C:\\Program Files\\WireGuard\\wireguard.exe"
POLICY = {
    "killswitch_tunnel_interfaces": ["Wintun*", "NordLynx"],
    "killswitch_endpoints": [{"address": "198.51.100.7", "port": 51820}],
    "killswitch_endpoint_program": PROGRAM,
    "killswitch_allow_lan": True,
    "killswitch_lan_cidrs": ["192.168.0.0/16"],
    "killswitch_extra_outbound": [{"cidr": "203.0.113.0/24", "protocol": "tcp", "port": 443}],
    "killswitch_management_cidrs": ["192.0.2.10"],
    "killswitch_management_ports": [5986],
}
DOCUMENT = document(parse_policy(POLICY))


def third_party(name, **fields):
    rule = {"name": name, "display_name": name.replace("-", " "), "group": "", "direction": "Outbound",
            "action": "Allow", "enabled": True, "program": "Any", "protocol": "Any", "remote_addresses": ["Any"],
            "remote_ports": ["Any"], "interface_aliases": ["Any"], "interface_type": "Any"}
    rule.update(fields)
    return rule


# (rule, opens a path outside the tunnel?)
THIRD_PARTY = [
    # the typical leak: any protocol, any address, any interface
    (third_party("Firefox-out", program="C:\\Program Files\\Mozilla Firefox\\firefox.exe"), True),
    (third_party("CoreNet-DNS-Out", group="@FirewallAPI.dll,-25000", protocol="UDP", remote_ports=["53"],
                 program="%SystemRoot%\\system32\\svchost.exe"), True),
    # limited to tunnel interfaces: an alias a pattern matches, or the pattern itself
    (third_party("WireGuard-tunnel", interface_aliases=["Wintun Userspace Tunnel"]), False),
    (third_party("Nord-tunnel", interface_aliases=["nordlynx"]), False),
    (third_party("Tunnel-pattern", interface_aliases=["Wintun*"]), False),
    (third_party("Mixed-interfaces", interface_aliases=["Wintun Userspace Tunnel", "Ethernet"]), True),
    (third_party("Other-wildcard", interface_aliases=["Win*"]), True),  # could match Wi-Fi: not provably a tunnel
    # loopback only
    (third_party("Local-only", remote_addresses=["127.0.0.1", "::1"]), False),
    (third_party("Local-net8", remote_addresses=["127.0.0.0/255.0.0.0"]), False),
    (third_party("Local-and-v6-ll", remote_addresses=["127.0.0.1", "fe80::/10"]), True),
    # within what the document allows everywhere, for every protocol and port the rule allows
    (third_party("Office-https", protocol="TCP", remote_ports=["443"], remote_addresses=["203.0.113.10"]), False),
    (third_party("Office-https-range", protocol="TCP", remote_ports=["443"],
                 remote_addresses=["203.0.113.1-203.0.113.20"]), False),
    (third_party("Office-http", protocol="TCP", remote_ports=["80"], remote_addresses=["203.0.113.10"]), True),
    (third_party("Office-wider", protocol="TCP", remote_ports=["443"], remote_addresses=["203.0.0.0/16"]), True),
    (third_party("Lan-web", protocol="TCP", remote_ports=["80", "8000-8080"], remote_addresses=["192.168.1.0/24"]),
     False),
    (third_party("Lan-icmp", protocol="ICMPv4", remote_addresses=["192.168.0.0/255.255.0.0"]), False),
    (third_party("Lan-icmp-number", protocol=1, remote_addresses=["192.168.3.4"]), False),
    # the LAN allows leave DNS out: a rule that opens DNS to the LAN is a path the document does not give
    (third_party("Lan-all-tcp", protocol="TCP", remote_addresses=["192.168.1.0/24"]), True),
    (third_party("Lan-dns", protocol="UDP", remote_ports=["53"], remote_addresses=["192.168.1.1"]), True),
    (third_party("Lan-any-protocol", remote_addresses=["192.168.1.0/24"]), True),
    # the endpoint allow holds only for the VPN client's program
    (third_party("Endpoint-any-program", protocol="UDP", remote_ports=["51820"], remote_addresses=["198.51.100.7"]),
     True),
    (third_party("Endpoint-vpn-client", protocol="UDP", remote_ports=["51820"], remote_addresses=["198.51.100.7"],
                 program=PROGRAM.upper()), False),
    # conservative: what only the host can resolve, or cannot be read, is reported
    (third_party("Intranet", remote_addresses=["LocalSubnet"]), True),
    (third_party("Rpc", protocol="TCP", remote_ports=["RPC"], remote_addresses=["192.168.1.1"]), True),
    (third_party("Odd-protocol", protocol=47, remote_addresses=["192.168.1.1"]), True),
    # not an enabled allow-outbound rule: never reported
    (third_party("Disabled", enabled=False), False),
    (third_party("Disabled-as-number", enabled=2), False),
    (third_party("Block-rule", action="Block"), False),
    (third_party("Inbound", direction="Inbound"), False),
    (third_party("Enum-numbers", enabled=1, direction=2, action=2), True),
    (third_party("Ours", group=DOCUMENT["group"]), False),
]


@pytest.mark.parametrize("rule,opens", THIRD_PARTY, ids=[rule["name"] for rule, _opens in THIRD_PARTY])
def test_open_paths_verdict(rule, opens):
    found = windows_plan.open_paths([rule], DOCUMENT)
    assert bool(found) is opens, found
    if opens:
        assert found == [{"name": rule["name"], "display_name": rule["display_name"], "why": found[0]["why"]}]
        assert found[0]["why"].endswith(", outside the tunnel") or "only known on the host" in found[0]["why"]


def test_open_paths_explains_the_typical_leak_and_sorts_by_name():
    found = windows_plan.open_paths([rule for rule, _opens in THIRD_PARTY], DOCUMENT)
    assert [entry["name"] for entry in found] == sorted(rule["name"] for rule, opens in THIRD_PARTY if opens)
    firefox = next(entry for entry in found if entry["name"] == "Firefox-out")
    assert firefox["why"] == ("allows any protocol to any address on any interface for C:\\Program Files\\Mozilla "
                              "Firefox\\firefox.exe, outside the tunnel")
    intranet = next(entry for entry in found if entry["name"] == "Intranet")
    assert "LocalSubnet" in intranet["why"] and "only known on the host" in intranet["why"]


def test_open_paths_of_nothing():
    assert windows_plan.open_paths([], DOCUMENT) == []
    assert windows_plan.open_paths(None, DOCUMENT) == []


@pytest.mark.parametrize("values,expected", [
    (["Any"], ["0.0.0.0/0", "::/0"]), ([], ["0.0.0.0/0", "::/0"]), (["10.0.0.0/255.0.0.0"], ["10.0.0.0/8"]),
    (["192.0.2.1-192.0.2.2"], ["192.0.2.1/32", "192.0.2.2/32"]), (["Internet"], None), (["DefaultGateway"], None)])
def test_parse_addresses(values, expected):
    found = windows_plan.parse_addresses(values)
    assert (None if found is None else [str(n) for n in found]) == expected


# --------------------------------------------------------------------------- live states


GUARD_ACTION = 'powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File "C:\\ProgramData\\netlock-killswitch\\guard.ps1"'
HEALTHY_GUARD = {"task": True, "state": "Ready", "runs_guard": True, "action": GUARD_ACTION, "interval": 30}


def applied_filters(rule, resolved):
    """A rule's filters as the module reports them after New-NetFirewallRule made it from the document's rule."""
    return {"protocol": rule["protocol"], "local_ports": list(rule["local_ports"]), "remote_ports": list(rule["remote_ports"]),
            "icmp_types": list(rule["icmp_types"]), "local_addresses": [], "remote_addresses": list(rule["remote_addresses"]),
            "program": rule["program"], "interface_aliases": list(resolved)}


def live_as_applied(doc=None, interfaces=("Wintun Userspace Tunnel", "Ethernet", "Wi-Fi")):
    """The live dict of a host where the module applied ``doc`` (DOCUMENT by default) and the guard runs."""
    doc = doc or DOCUMENT
    rules = []
    for rule in doc["rules"]:
        resolved = [alias for alias in interfaces if any(windows_plan.like(alias, p) for p in rule["interface_aliases"])]
        rules.append(dict({"name": rule["name"], "display_name": rule["display_name"], "direction": rule["direction"],
                           "enabled": bool(resolved) or not rule["interface_aliases"], "description": description(rule, resolved)},
                          **applied_filters(rule, resolved)))
    return {"profiles": {name: {"enabled": True, "default_inbound": "Block", "default_outbound": "Block"}
                         for name in ("Domain", "Private", "Public")},
            "rules": rules, "third_party": [], "interfaces": list(interfaces), "forwarding_features": [],
            "recorded": {"profiles": {}}, "guard": dict(HEALTHY_GUARD)}


def test_status_has_the_linux_shape_and_is_in_sync_as_applied():
    linux = drift.host_status({}, "lin1", "nftables", "a" * 64)
    windows = windows_plan.status(live_as_applied(), DOCUMENT, host="win1", guard_interval=30)
    assert set(windows) == set(linux)
    assert set(windows["parts"]) == set(linux["parts"]) == set(drift.PARTS)
    for part in drift.PARTS:
        assert set(windows["parts"][part]) == set(linux["parts"][part]) == {"in_sync", "diff"}
    assert windows == {"host": "win1", "backend": "windows", "digest": DOCUMENT["digest"][:16], "drifted": False,
                       "parts": {part: {"in_sync": True, "diff": ""} for part in drift.PARTS}}


def test_the_fleet_report_reads_a_windows_status():
    status = windows_plan.status(live_as_applied(interfaces=()), DOCUMENT, host="win1")
    report = drift.fleet_report([status], ["win1"])
    assert report["hosts"][0]["result"] == drift.IN_SYNC and report["hosts"][0]["backend"] == "windows"


def test_alias_order_in_a_description_is_not_drift():
    live = live_as_applied(interfaces=("Wintun A", "Wintun B"))
    for rule in live["rules"]:
        if "Wintun A|Wintun B" in rule["description"]:
            rule["description"] = rule["description"].replace("Wintun A|Wintun B", "Wintun B|Wintun A")
            break
    else:
        pytest.fail("no rule resolved to both adapters")
    assert windows_plan.status(live, DOCUMENT)["drifted"] is False


def _drift(live, **kwargs):
    status = windows_plan.status(live, DOCUMENT, host="win1", **kwargs)
    return {part: value["diff"] for part, value in status["parts"].items() if not value["in_sync"]}


def test_a_profile_set_back_to_allow_is_drift():
    live = live_as_applied()
    live["profiles"]["Public"]["default_outbound"] = "Allow"
    drifted = _drift(live)
    assert list(drifted) == ["table"]
    assert "-profile Public: enabled=True inbound=Block outbound=Allow" in drifted["table"]
    assert "+profile Public: enabled=True inbound=Block outbound=Block" in drifted["table"]


def test_a_disabled_firewall_profile_is_drift():
    live = live_as_applied()
    live["profiles"]["Domain"]["enabled"] = False
    assert "outbound=Block" in _drift(live)["table"] and "-profile Domain: enabled=False" in _drift(live)["table"]


def test_a_removed_a_changed_and_a_foreign_rule_in_the_group_are_drift():
    live = live_as_applied()
    removed = live["rules"].pop(0)
    live["rules"][0]["description"] = "netlock.killswitch digest=0000 interfaces="
    live["rules"].append({"name": "netlock.killswitch.killswitch.99.added", "display_name": "x", "direction": "Outbound",
                          "enabled": True, "description": ""})
    text = _drift(live)["table"]
    assert "+rule %s:" % removed["name"] in text
    changed = live["rules"][0]
    assert "-rule %s: %s enabled=True netlock.killswitch digest=0000 interfaces=\n" % (
        changed["name"], changed["direction"]) in text
    assert "-rule netlock.killswitch.killswitch.99.added:" in text


def rule_with(live, predicate):
    return next(rule for rule in live["rules"] if predicate(rule))


def test_a_rule_edited_in_place_with_its_description_kept_is_drift():
    """The module and the guard replace such a rule; the report must not call the host in sync meanwhile."""
    live = live_as_applied()
    endpoint = rule_with(live, lambda r: r["remote_addresses"] == ["198.51.100.7"])
    endpoint["remote_addresses"] = ["0.0.0.0/0"]
    text = _drift(live)["table"]
    assert "-rule %s: remote_addresses 0.0.0.0/0, policy 198.51.100.7" % endpoint["name"] in text
    assert "-rule %s: %s" % (endpoint["name"], endpoint["direction"]) not in text  # the description is unchanged


@pytest.mark.parametrize("field, value", [
    ("remote_ports", ["1-65535"]), ("protocol", "Any"), ("program", None), ("local_addresses", ["10.0.0.0/8"]),
    ("interface_aliases", []),
])
def test_each_filter_edited_in_place_is_drift(field, value):
    live = live_as_applied()
    rule = rule_with(live, lambda r: r["program"] and r["interface_aliases"] == [] and r["remote_ports"]) \
        if field != "interface_aliases" else rule_with(live, lambda r: r["interface_aliases"])
    rule[field] = value
    assert "-rule %s: %s " % (rule["name"], field) in _drift(live)["table"]


def test_windows_forms_of_the_same_filters_are_not_drift():
    """What Windows may report: a mask for a prefix, 'Any' for none, a protocol number, 135:*, another case."""
    live = live_as_applied()
    changed = 0
    for rule in live["rules"]:
        if rule["remote_addresses"] == ["192.168.0.0/16"]:
            rule["remote_addresses"] = ["192.168.0.0/255.255.0.0"]
            changed += 1
        if rule["protocol"] == "TCP":
            rule["protocol"] = "6"
            changed += 1
        if rule["icmp_types"]:
            rule["icmp_types"] = ["%s:*" % t for t in rule["icmp_types"]]
            changed += 1
        if rule["program"]:
            rule["program"] = rule["program"].upper()
            changed += 1
        if not rule["local_ports"]:
            rule["local_ports"] = ["Any"]
    assert changed >= 4
    assert windows_plan.status(live, DOCUMENT)["drifted"] is False


@pytest.mark.parametrize("values, kind, expected", [
    (["10.0.0.0/255.0.0.0"], "address", "10.0.0.0/8"), (["10.1.2.3/32"], "address", "10.1.2.3"),
    (["2001:DB8:0:0::1/128"], "address", "2001:db8::1"), (["Any"], "address", ""), ([], "port", ""),
    (["135:*", "136"], "icmp", "135|136"), ("17", "protocol", "udp"), (["b", "A", "a"], "alias", "a|b"),
])
def test_filter_set_reads_what_the_module_normalizes(values, kind, expected):
    assert windows_plan.filter_set(values, kind) == expected


def test_a_rule_whose_filters_were_not_reported_is_not_trusted():
    live = live_as_applied()
    rule = live["rules"][0]
    del rule["remote_addresses"]
    assert "-rule %s: filters not reported (remote_addresses)" % rule["name"] in _drift(live)["table"]


def test_a_new_tunnel_adapter_not_yet_resolved_is_drift():
    live = live_as_applied(interfaces=("Ethernet",))
    live["interfaces"].append("Wintun Userspace Tunnel")  # came up after the last reconcile
    assert "interfaces=Wintun Userspace Tunnel" in _drift(live)["table"]


def test_the_guard_task_absent_or_with_another_interval_is_drift_only_when_the_guard_is_on():
    live = live_as_applied()
    live["guard"] = {"task": False, "interval": None}
    assert _drift(live) == {"guard": "-guard task netlock-killswitch-guard: absent"}
    assert _drift(live, guard_enabled=False) == {}
    live["guard"] = dict(HEALTHY_GUARD, interval=60)
    assert _drift(live, guard_interval=30) == {"guard": "-guard task netlock-killswitch-guard: interval 60 s, expected 30 s"}
    assert _drift(live) == {}


@pytest.mark.parametrize("state", ["Ready", "Running", "Queued", 3, 4])
def test_a_guard_task_that_is_enabled_and_runs_guard_ps1_is_in_sync(state):
    live = live_as_applied()
    live["guard"]["state"] = state
    assert _drift(live, guard_interval=30) == {}


@pytest.mark.parametrize("state", ["Disabled", "disabled", 1])
def test_a_disabled_guard_task_is_drift(state):
    live = live_as_applied()
    live["guard"]["state"] = state
    assert _drift(live, guard_interval=30) == {"guard": "-guard task netlock-killswitch-guard: disabled"}
    assert _drift(live, guard_enabled=False) == {}
    assert "guard task: present, disabled, interval 30 s" in windows_plan.diff(live, None)["before"]


def test_a_guard_task_that_runs_something_else_is_drift():
    live = live_as_applied()
    live["guard"].update(runs_guard=False, action="cmd.exe /c exit 0")
    assert _drift(live) == {"guard": "-guard task netlock-killswitch-guard: runs cmd.exe /c exit 0, not guard.ps1"}
    live["guard"].update(state="Disabled")
    assert _drift(live)["guard"].splitlines() == ["-guard task netlock-killswitch-guard: disabled",
                                                  "-guard task netlock-killswitch-guard: runs cmd.exe /c exit 0, not guard.ps1"]


def test_a_guard_whose_action_was_not_reported_is_not_trusted():
    """A live dict without runs_guard (a module that did not check the action) cannot prove the guard runs."""
    live = live_as_applied()
    live["guard"] = {"task": True, "interval": 30}
    assert _drift(live) == {"guard": "-guard task netlock-killswitch-guard: runs an unknown action, not guard.ps1"}


# What a stock Windows host has enabled: the evaluation model's list, so both tests mean the same host.
STOCK_RULES = list(STOCK_OPEN_RULES)


@pytest.mark.parametrize("exclusive", [False, True])
def test_an_enabled_open_path_is_drift_whatever_exclusive_is(exclusive):
    """A stock host leaks DNS and IPv6 through these rules: in sync only once they are disabled."""
    live = live_as_applied()
    live["third_party"] = [third_party("Firefox-out")] + STOCK_RULES
    table = _drift(live, exclusive=exclusive)["table"].splitlines()
    assert sorted(line.split(":")[0] for line in table) == [
        "-third-party CoreNet-DNS-Out-UDP", "-third-party CoreNet-IPHTTPS-Out", "-third-party CoreNet-IPv6-Out",
        "-third-party CoreNet-Teredo-Out", "-third-party Firefox-out"]
    assert "-third-party CoreNet-DNS-Out-UDP: allows UDP port 53 to any address on any interface" in table[0]
    remedy = "(exclusive mode disables it)" if exclusive else "(disable it, or set killswitch_windows_exclusive: true)"
    assert all(line.endswith(remedy) for line in table)
    assert windows_plan.status(live, DOCUMENT, exclusive=exclusive)["drifted"] is True


def test_disabled_or_tunnel_only_third_party_rules_are_not_drift():
    live = live_as_applied()
    live["third_party"] = [dict(rule, enabled=False) for rule in STOCK_RULES] + [
        third_party("WireGuard-tunnel", interface_aliases=["Wintun Userspace Tunnel"])]
    assert _drift(live) == {}


# --------------------------------------------------------------------------- diff and warnings


def test_diff_of_a_first_apply():
    before = {"profiles": {"Public": {"enabled": True, "default_inbound": "Block", "default_outbound": "Allow"}},
              "rules": [], "third_party": [third_party("Firefox-out")], "guard": {"task": False, "interval": None}}
    after = copy.deepcopy(before)
    after["profiles"]["Public"]["default_outbound"] = "Block"
    after["rules"] = [{"name": "b", "direction": "Outbound", "enabled": True, "description": "d2"},
                      {"name": "a", "direction": "Inbound", "enabled": False, "description": "d1"}]
    after["third_party"][0]["enabled"] = False
    after["guard"] = dict(HEALTHY_GUARD)
    result = windows_plan.diff(before, after)
    assert result == {
        "before": ("profile Public: enabled=True inbound=Block outbound=Allow\n"
                   "third-party Firefox-out: enabled allow outbound (Firefox out)\n"
                   "guard task: absent, interval None s\n"),
        "after": ("profile Public: enabled=True inbound=Block outbound=Block\n"
                  "rule a: Inbound enabled=False d1\n"
                  "rule b: Outbound enabled=True d2\n"
                  "guard task: present, interval 30 s\n")}


def test_diff_without_a_change_is_empty_and_the_same_on_both_sides():
    live = live_as_applied()
    result = windows_plan.diff(live, None)
    assert result["before"] == result["after"] != ""
    assert windows_plan.diff(live, copy.deepcopy(live))["before"] == result["after"]
    assert windows_plan.diff({}, None) == {"before": "", "after": ""}


def test_warnings_for_forwarding_features_and_unresolved_patterns():
    live = live_as_applied(interfaces=("Ethernet",))
    assert windows_plan.warnings(dict(live, interfaces=["Ethernet", "Wintun Userspace Tunnel", "NordLynx"]),
                                 DOCUMENT) == []
    live["forwarding_features"] = ["Hyper-V", "WSL"]
    found = windows_plan.warnings(live, DOCUMENT)
    assert len(found) == 2
    assert found[0].startswith("Hyper-V, WSL present: forwarded traffic bypasses Windows Firewall")
    assert "NordLynx, Wintun*" in found[1] and "match no adapter" in found[1]
    assert windows_plan.warnings(live, DOCUMENT, unresolved=["NordLynx"])[1].count("NordLynx") == 1
    assert "Wintun*" not in windows_plan.warnings(live, DOCUMENT, unresolved=["NordLynx"])[1]


def test_warnings_from_live_alone_name_the_disabled_rules():
    live = live_as_applied(interfaces=("Ethernet",))
    found = windows_plan.warnings(live)
    disabled = sorted(r["name"] for r in live["rules"] if not r["enabled"])
    assert disabled and found == ["rules disabled because their tunnel interfaces are not present: %s"
                                  % ", ".join(disabled)]
    assert windows_plan.warnings(live_as_applied(interfaces=("Wintun X", "NordLynx"))) == []


# --------------------------------------------------------------------------- the rollout's post-check

def test_postcheck_of_a_host_in_force_is_ok_and_the_rollout_report_keeps_it():
    from ansible_collections.netlock.killswitch.plugins.plugin_utils import rollout
    live = live_as_applied()
    check = windows_plan.postcheck(live, windows_plan.status(live, DOCUMENT, guard_interval=30))
    assert check == {"ok": True, "problems": []}
    assert rollout._status(check) == check  # the report keeps a status with "ok"


def test_postcheck_of_a_drifted_host_names_each_problem():
    live = live_as_applied()
    live["profiles"]["Public"]["default_outbound"] = "Allow"
    live["guard"]["task"] = False
    check = windows_plan.postcheck(live, windows_plan.status(live, DOCUMENT, guard_interval=30))
    assert check["ok"] is False
    assert "table: -profile Public: enabled=True inbound=Block outbound=Allow" in check["problems"]
    assert "guard: -guard task netlock-killswitch-guard: absent" in check["problems"]


def test_postcheck_of_a_removal_without_a_document():
    gone = dict(live_as_applied(), rules=[], guard={"task": False})
    assert windows_plan.postcheck(gone, None) == {"ok": True, "problems": []}
    left = live_as_applied()
    check = windows_plan.postcheck(left, None)
    assert check["ok"] is False and "the guard task netlock-killswitch-guard is still there" in check["problems"]
    assert "rule %s is still there" % left["rules"][0]["name"] in check["problems"]
