# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""in_force.differences: every part the role converges, in force or named as not."""

from __future__ import annotations

import copy

import pytest

from ansible_collections.netlock.killswitch.plugins.plugin_utils.in_force import differences, normal_mode

SHA = "a" * 64
UNIT = {"LoadState": "loaded", "UnitFileState": "enabled", "ActiveState": "active", "NeedDaemonReload": "no"}
EXPECTED = {
    "files": {"/etc/k/guard.json": {"type": "file", "sha256": SHA, "mode": "0644"},
              "/etc/k/policies/abc": {"type": "directory", "mode": "0700"}},
    "absent": ["/etc/k/old"],
    "only": {"/etc/k/policies/*": ["/etc/k/policies/abc"]},
    "units": {"guard.timer": {"name": "guard.timer", "enabled": True, "active": True},
              "boot.service": {"name": "boot.service", "enabled": True, "active": False}},
    "nft_tables": ["inet killswitch_fence"],
}
OBSERVED = {
    "tools_missing": [],
    "firewall": {"in_force": True, "rollback_pending": False},
    "paths": {"/etc/k/guard.json": {"type": "file", "sha256": SHA, "mode": "0644", "owner": "root", "group": "root"},
              "/etc/k/policies/abc": {"type": "directory", "mode": "0700", "owner": "root", "group": "root"},
              "/etc/k/old": None},
    "globs": {"/etc/k/policies/*": ["/etc/k/policies/abc"]},
    "units": {"guard.timer": dict(UNIT), "boot.service": dict(UNIT, ActiveState="inactive")},
    "nft_tables": ["inet killswitch_fence"],
    "other_backends": {"iptables": {"table": False, "files": []}},
}


def observed(change):
    value = copy.deepcopy(OBSERVED)
    change(value)
    return value


def test_everything_in_force():
    assert differences(EXPECTED, OBSERVED) == []


@pytest.mark.parametrize("change,expected", [
    (lambda o: o.update(tools_missing=["nft"]), ["nft: not on the host"]),
    (lambda o: o["firewall"].update(in_force=False), ["the ruleset is not proven in force"]),
    (lambda o: o["firewall"].update(rollback_pending=True), ["an earlier apply awaits its confirmation"]),
    (lambda o: o["paths"].update({"/etc/k/guard.json": None}), ["/etc/k/guard.json: missing"]),
    (lambda o: o["paths"]["/etc/k/guard.json"].update(sha256="b" * 64), ["/etc/k/guard.json: content differs"]),
    (lambda o: o["paths"]["/etc/k/guard.json"].update(mode="0666"), ["/etc/k/guard.json: mode 0666, not 0644"]),
    (lambda o: o["paths"]["/etc/k/guard.json"].update(owner="operator"), ["/etc/k/guard.json: owner operator"]),
    (lambda o: o["paths"]["/etc/k/guard.json"].update(group="users"), ["/etc/k/guard.json: group users"]),
    (lambda o: o["paths"]["/etc/k/policies/abc"].update(type="file"), ["/etc/k/policies/abc: a file, not a directory"]),
    (lambda o: o["paths"].update({"/etc/k/old": {"type": "file"}}), ["/etc/k/old: present, should be absent"]),
    (lambda o: o["globs"]["/etc/k/policies/*"].append("/etc/k/policies/old"), ["/etc/k/policies/old: stale"]),
    (lambda o: o["units"]["guard.timer"].update(ActiveState="failed"), ["guard.timer: failed, not active"]),
    (lambda o: o["units"]["guard.timer"].update(UnitFileState="disabled"), ["guard.timer: disabled, not enabled"]),
    (lambda o: o["units"]["boot.service"].update(NeedDaemonReload="yes"), ["boot.service: changed on disk"]),
    (lambda o: o["units"].pop("guard.timer"), ["guard.timer: not loaded"]),
    (lambda o: o["units"]["guard.timer"].update(LoadState="not-found"), ["guard.timer: not loaded"]),
    (lambda o: o.update(nft_tables=[]), ["nft table inet killswitch_fence: not loaded"]),
    (lambda o: o["other_backends"]["iptables"].update(table=True), ["iptables: the iptables rules are still loaded"]),
    (lambda o: o["other_backends"]["iptables"].update(files=["/etc/k/ruleset.sh"]),
     ["iptables: /etc/k/ruleset.sh is still there"]),
])
def test_each_part_not_in_force_is_named(change, expected):
    """Each change alone makes the host not in force, and the difference says which part."""
    problems = differences(EXPECTED, observed(change))
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected):
        assert problem.startswith(start), problems


def test_an_inactive_boot_unit_is_in_force():
    """The boot unit is a oneshot run at boot: enabled is all the role asks of it."""
    assert differences(EXPECTED, observed(lambda o: o["units"]["boot.service"].update(ActiveState="inactive"))) == []


def test_nothing_observed_is_not_in_force():
    assert len(differences(EXPECTED, {})) > 5


@pytest.mark.parametrize("mode", ["0644", "644", 0o644, 420])
def test_modes_compare_in_any_spelling(mode):
    assert normal_mode(mode) == "0644"


def test_a_file_that_could_not_be_rendered_is_not_in_force():
    expected = copy.deepcopy(EXPECTED)
    expected["files"]["/etc/k/guard.json"] = {"type": "file", "mode": "0644", "unrendered": "'commands' is undefined"}
    assert differences(expected, OBSERVED) == [
        "/etc/k/guard.json: not compared, its template could not be rendered before the apply: 'commands' is undefined"]
