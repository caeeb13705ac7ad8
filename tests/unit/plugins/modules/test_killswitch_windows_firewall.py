# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The PowerShell module killswitch_windows_firewall.ps1, checked without a PowerShell runtime.

No pwsh exists where this collection is tested, so the module is parsed with tree-sitter's PowerShell grammar:

* it parses without a syntax error (an ERROR or missing node fails, with the line);
* its ``$spec`` options (names, types, defaults, choices, elements) equal the DOCUMENTATION in the ``.py`` of
  the same name and the action plugin's ARGUMENT_SPEC: one contract, held equal here;
* every command it calls is a function it defines or a cmdlet on an allowlist (a typo fails);
* the guard script it writes is the same function block the module reconciles with, and that block is
  self-contained (it calls nothing defined only in the module), since guard.ps1 runs without the module.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_powershell
import yaml

from ansible_collections.netlock.killswitch.plugins.action import killswitch_windows_firewall as action_plugin
from ansible_collections.netlock.killswitch.plugins.modules import killswitch_windows_firewall as module_doc

ROOT = Path(__file__).resolve().parents[4]
SOURCE_PATH = ROOT / "plugins" / "modules" / "killswitch_windows_firewall.ps1"
ROLE_DEFAULTS = ROOT / "roles" / "killswitch" / "defaults" / "main.yml"
FUNCTION_BLOCK = "$killswitchFunctions"

# What the module may call: NetSecurity, NetAdapter, ScheduledTasks, CIM and core cmdlets. A name not here and not
# a function of the module is a typo (or a new dependency to add here on purpose).
ALLOWED_CMDLETS = frozenset({
    # NetSecurity
    "Get-NetFirewallProfile", "Set-NetFirewallProfile", "Get-NetFirewallRule", "New-NetFirewallRule",
    "Remove-NetFirewallRule", "Enable-NetFirewallRule", "Disable-NetFirewallRule", "Get-NetFirewallAddressFilter",
    "Get-NetFirewallPortFilter", "Get-NetFirewallApplicationFilter", "Get-NetFirewallInterfaceFilter",
    "Get-NetFirewallInterfaceTypeFilter",
    # NetAdapter
    "Get-NetAdapter",
    # ScheduledTasks
    "Get-ScheduledTask", "Register-ScheduledTask", "Unregister-ScheduledTask", "New-ScheduledTaskAction",
    "New-ScheduledTaskTrigger", "New-ScheduledTaskPrincipal", "New-ScheduledTaskSettingsSet",
    # CIM (the event triggers of the guard task)
    "Get-CimClass", "New-CimInstance",
    # core
    "Get-Service", "Test-Path", "New-Item", "Remove-Item", "Get-Item", "Get-Content", "ConvertFrom-Json",
    "ConvertTo-Json", "Set-Acl", "New-Object", "Where-Object", "ForEach-Object", "Sort-Object", "Select-Object",
    "Group-Object", "Join-Path", "Split-Path", "Get-Date", "New-TimeSpan", "Start-Sleep", "Out-Null",
})


# --------------------------------------------------------------------------- parsing

PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
SOURCE = SOURCE_PATH.read_bytes()
TREE = PARSER.parse(SOURCE)


def text(node, source=SOURCE):
    return source[node.start_byte:node.end_byte].decode()


def walk(node):
    yield node
    for child in node.children:
        yield from walk(child)


def syntax_errors(tree, source):
    return ["line %d: %r" % (node.start_point[0] + 1, text(node, source)[:80])
            for node in walk(tree.root_node) if node.type == "ERROR" or node.is_missing]


def value(node):
    """A literal PowerShell expression as Python: strings, integers, $true/$false/$null, @(...), @{...}."""
    kind = node.type
    if kind == "string_literal":
        raw = text(node)
        if raw.startswith("'"):
            return raw[1:-1].replace("''", "'")
        return raw[1:-1]
    if kind == "integer_literal":
        return int(text(node))
    if kind == "variable":
        constants = {"$true": True, "$false": False, "$null": None}
        if text(node).lower() not in constants:
            raise ValueError("not a literal: %s" % text(node))
        return constants[text(node).lower()]
    if kind == "array_expression":
        body = [child for child in node.named_children if child.type == "statement_list"]
        if not body:
            return []
        items = value(body[0])
        return items if isinstance(items, list) else [items]
    if kind == "hash_literal_expression":
        return hash_entries(node)
    named = [child for child in node.named_children if child.type not in ("comment",)]
    if kind == "array_literal_expression" and len(named) > 1:
        return [value(child) for child in named]
    if len(named) != 1:
        raise ValueError("not a literal: %s" % text(node)[:80])
    return value(named[0])


def hash_entries(node):
    body = next(child for child in node.named_children if child.type == "hash_literal_body")
    entries = {}
    for entry in body.named_children:
        if entry.type != "hash_entry":
            continue
        key = text(entry.child_by_field_name("key") or entry.named_children[0])
        entries[key] = value(entry.named_children[-1])
    return entries


def assignment(name):
    """The right-hand side node of the top-level ``$name = ...``."""
    for node in walk(TREE.root_node):
        if node.type == "assignment_expression":
            left = node.named_children[0]
            if text(left).strip().lower() == name.lower():
                return node.named_children[-1]
    raise AssertionError("%s is not assigned in %s" % (name, SOURCE_PATH.name))


def functions(root, source=SOURCE):
    """{name: function_statement node} of every function defined under root."""
    found = {}
    for node in walk(root):
        if node.type == "function_statement":
            name = text(next(child for child in node.named_children if child.type == "function_name"), source)
            assert name not in found, "function %s is defined twice" % name
            found[name] = node
    return found


def commands(root, source=SOURCE):
    """Names of the commands called under root (not `. $block` or `& $x`)."""
    names = set()
    for node in walk(root):
        if node.type == "command":
            name = next((child for child in node.named_children if child.type == "command_name"), None)
            if name is not None:
                names.add(text(name, source))
    return names


def function_block():
    node = assignment(FUNCTION_BLOCK)
    block = next(n for n in walk(node) if n.type == "script_block_expression")
    return block


# --------------------------------------------------------------------------- the tests

def test_the_module_parses_without_a_syntax_error():
    assert TREE.root_node.type == "program"
    assert syntax_errors(TREE, SOURCE) == []


def test_the_syntax_check_catches_an_error():
    """The check above can fail: a missing brace is found."""
    broken = SOURCE.replace(b"if ($profileChanged -and -not $CheckMode) {", b"if ($profileChanged -and -not $CheckMode) ", 1)
    assert broken != SOURCE
    assert syntax_errors(PARSER.parse(broken), broken)


def test_the_module_is_an_ansible_basic_module():
    lines = SOURCE.decode().splitlines()
    assert lines[0] == "#!powershell"
    assert "#AnsibleRequires -CSharpUtil Ansible.Basic" in lines
    assert "$module = [Ansible.Basic.AnsibleModule]::Create($args, $spec)" in lines
    spec = value(assignment("$spec"))
    assert spec["supports_check_mode"] is True


def spec_options():
    return value(assignment("$spec"))["options"]


def test_spec_options_equal_the_documentation():
    documented = yaml.safe_load(module_doc.DOCUMENTATION)["options"]
    options = spec_options()
    assert set(options) == set(documented)
    for name, spec in options.items():
        doc = documented[name]
        for key in ("type", "default", "choices", "elements"):
            assert spec.get(key) == doc.get(key), (name, key, spec.get(key), doc.get(key))
        assert spec.get("required", False) == doc.get("required", False), name


def test_spec_options_equal_the_action_plugins():
    options = spec_options()
    assert set(options) == set(action_plugin.ARGUMENT_SPEC)
    for name, spec in action_plugin.ARGUMENT_SPEC.items():
        for key in ("type", "default", "choices", "elements"):
            assert options[name].get(key) == spec.get(key), (name, key)


def test_the_state_dir_default_is_the_roles():
    defaults = yaml.safe_load(ROLE_DEFAULTS.read_text())
    if "killswitch_windows_state_dir" not in defaults:
        pytest.skip("killswitch_windows_state_dir is not in the role's defaults yet")
    assert spec_options()["state_dir"]["default"] == defaults["killswitch_windows_state_dir"]


def unknown_commands(tree, source):
    defined = set(functions(tree.root_node, source))
    return sorted(name for name in commands(tree.root_node, source) if name not in defined and name not in ALLOWED_CMDLETS)


def test_every_command_is_defined_here_or_allowed():
    unknown = unknown_commands(TREE, SOURCE)
    assert unknown == [], "commands neither defined in the module nor on the allowlist: %s" % unknown


def test_the_command_check_catches_a_typo():
    typo = SOURCE.replace(b"Set-NetFirewallProfile -Name $names", b"Set-NetFirewalProfile -Name $names", 1)
    assert typo != SOURCE
    assert unknown_commands(PARSER.parse(typo), typo) == ["Set-NetFirewalProfile"]


def test_the_guard_is_written_from_the_block_the_module_reconciles_with():
    block = function_block()
    in_block = functions(block)
    assert {"Invoke-KillswitchReconcile", "Invoke-KillswitchGuardPass"} <= set(in_block)
    # the module dot-sources the block, then writes its text into guard.ps1
    source = SOURCE.decode()
    assert "\n. %s\n" % FUNCTION_BLOCK in source
    writer = functions(TREE.root_node)["Get-KillswitchGuardScript"]
    assert "%s.ToString()" % FUNCTION_BLOCK in text(writer)
    assert "Invoke-KillswitchGuardPass -StateDir $stateDir" in text(writer)
    # the guard pass and the module's present path reconcile through the same function
    assert "Invoke-KillswitchReconcile" in commands(in_block["Invoke-KillswitchGuardPass"])
    assert "Invoke-KillswitchReconcile" in commands(functions(TREE.root_node)["Invoke-KillswitchPresent"])
    outside = set(functions(TREE.root_node)) - set(in_block)
    assert "Invoke-KillswitchReconcile" not in outside


def test_the_guard_block_stands_on_its_own():
    """guard.ps1 has the block and a few lines: the block may not call what only the module defines."""
    block = function_block()
    body = next(n for n in block.named_children if n.type == "script_block")
    guard_source = text(body).encode()
    guard_tree = PARSER.parse(guard_source)
    assert syntax_errors(guard_tree, guard_source) == []
    defined = set(functions(guard_tree.root_node, guard_source))
    module_only = set(functions(TREE.root_node)) - defined
    called = commands(guard_tree.root_node, guard_source)
    assert not called & module_only, "the guard block calls functions only the module defines: %s" % sorted(called & module_only)
    assert "$module" not in guard_source.decode()
    assert called - defined <= ALLOWED_CMDLETS


def test_the_reconcile_order_is_profiles_then_add_then_remove_then_disable():
    reconcile = text(functions(function_block())["Invoke-KillswitchReconcile"])
    steps = ["Set-NetFirewallProfile", "New-KillswitchRule", "$actions.Add(\"remove $name\")", "Disable-NetFirewallRule"]
    positions = [reconcile.index(step) for step in steps]
    assert positions == sorted(positions), dict(zip(steps, positions))


def test_a_rule_whose_interfaces_are_missing_is_created_disabled():
    desired = text(functions(function_block())["Get-KillswitchDesiredRule"])
    assert "$enabled = ($patterns.Count -eq 0) -or ($aliases.Count -gt 0)" in desired
    new_rule = text(functions(function_block())["New-KillswitchRule"])
    assert "Enabled = $(if ($Want.enabled) { 'True' } else { 'False' })" in new_rule
    described = text(functions(function_block())["Get-KillswitchDescription"])
    assert "'netlock.killswitch digest={0} interfaces={1}' -f $Rule.digest, ($Alias -join '|')" in described


LIST_FUNCTIONS = ("ConvertTo-KillswitchList", "Resolve-KillswitchInterface", "Get-KillswitchThirdParty",
                  "Get-KillswitchForwardingFeature")


def test_list_functions_are_always_wrapped_in_an_array():
    """A list function returns its items; a caller that does not wrap it in @() gets $null for none and a bare
    string for one (and a leading ',' in the function would nest the list in @())."""
    source = SOURCE.decode()
    bare = []
    for name in LIST_FUNCTIONS:
        body = text(functions(TREE.root_node)[name])
        assert not [line for line in body.splitlines() if line.strip().startswith(", ")], name
        for match in re.finditer(r"(?<!function )%s\b" % name, source):
            if not source[:match.start()].endswith("@("):
                bare.append("line %d: %s" % (source.count("\n", 0, match.start()) + 1, name))
    assert bare == [], bare


def test_the_description_is_the_one_the_controller_expects():
    """windows_plan judges a live rule by its description: the module must write it the way render_windows does."""
    from ansible_collections.netlock.killswitch.plugins.plugin_utils import render_windows
    described = text(functions(function_block())["Get-KillswitchDescription"])
    template = described[described.index("'netlock.killswitch"):].split("'")[1]
    rule = {"digest": "0f" * 32}
    for aliases in ([], ["WireGuard-Office"], ["OpenVPN Data Channel Offload", "Wintun Userspace Tunnel"]):
        assert template.format(rule["digest"], "|".join(aliases)) == render_windows.description(rule, aliases)


def test_absent_removes_the_guard_before_the_rules_and_restores_profiles_last():
    absent = text(functions(TREE.root_node)["Invoke-KillswitchAbsent"])
    steps = ["Remove-KillswitchGuard", "Remove-NetFirewallRule", "Enable-NetFirewallRule", "Set-NetFirewallProfile", "Remove-Item"]
    positions = [absent.index(step) for step in steps]
    assert positions == sorted(positions), dict(zip(steps, positions))
