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
  self-contained (it calls nothing defined only in the module), since guard.ps1 runs without the module;
* the reconcile keeps a group rule only when one comparison function (in that block, so the guard uses it too) finds
  its filters (addresses, ports, protocol, ICMP types, program, interfaces) equal to the desired ones, normalized
  alike on both sides, besides its Description, state, action and direction: a Description-only check fails;
* the module and the guard take turns through one named mutex (a helper in that block), and the module writes
  policy.json before it reconciles, so a guard pass never re-applies the old policy in the middle of an apply;
* absent disables, stops and waits (bounded) for the guard task before it unregisters it and restores the host;
* the state directory is the module's own: made with a marker, a non-empty one without it refused, and absent
  removes only the module's files, then the directory if empty, never recursively;
* the guard task counts only when it exists, is not Disabled and runs this guard.ps1, and live.guard says so;
* the safe apply: the snapshot and the rollback task are armed before the apply changes anything, never in check
  mode; the rollback script is the same function block, takes the same lock, restores only a pending snapshot, the
  state files (policy.json) before the rules and the profiles last; a snapshot rule restores every filter it records;
  confirm and absent remove the task and the snapshot.

Each of these has a test that feeds the checker the code as it was before the fix and expects it to be caught.
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
    "New-ScheduledTaskTrigger", "New-ScheduledTaskPrincipal", "New-ScheduledTaskSettingsSet", "Disable-ScheduledTask",
    "Stop-ScheduledTask",
    # CIM (the event triggers of the guard task)
    "Get-CimClass", "New-CimInstance",
    # core
    "Get-Service", "Test-Path", "New-Item", "Remove-Item", "Get-Item", "Get-ChildItem", "Get-Content", "ConvertFrom-Json",
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
    steps = ["Remove-KillswitchGuard", "Remove-NetFirewallRule", "Enable-NetFirewallRule", "Set-NetFirewallProfile",
             "Remove-KillswitchStateDir"]
    positions = [absent.index(step) for step in steps]
    assert positions == sorted(positions), dict(zip(steps, positions))


# --------------------------------------------------------------------------- what "in sync" means

IN_SYNC = "Test-KillswitchRuleInSync"
NORMALIZER = "ConvertTo-KillswitchFilterSet"
# Each filter of a live group rule: the cmdlet that reads it, its property, and the desired rule's value it must equal.
FILTERS = {
    "RemoteAddress": ("Get-NetFirewallAddressFilter", "$address.RemoteAddress", "$rule.remote_addresses"),
    "LocalAddress": ("Get-NetFirewallAddressFilter", "$address.LocalAddress", "$null"),
    "LocalPort": ("Get-NetFirewallPortFilter", "$port.LocalPort", "$rule.local_ports"),
    "RemotePort": ("Get-NetFirewallPortFilter", "$port.RemotePort", "$rule.remote_ports"),
    "Protocol": ("Get-NetFirewallPortFilter", "$port.Protocol", "$rule.protocol"),
    "IcmpType": ("Get-NetFirewallPortFilter", "$port.IcmpType", "$rule.icmp_types"),
    "Program": ("Get-NetFirewallApplicationFilter", "$application.Program", "$rule.program"),
    "InterfaceAlias": ("Get-NetFirewallInterfaceFilter", "$interface.InterfaceAlias", "$Want.aliases"),
}
# Besides the filters, the rule itself: checked on the live rule ($Have) against the desired one.
RULE_CHECKS = ("$Have.Description -ceq $Want.description", "([string]$Have.Enabled -eq 'True') -eq $Want.enabled",
               "[string]$Have.Action -eq 'Allow'", "[string]$Have.Direction -eq [string]$rule.direction")


def in_sync_problems(source):
    """Why the reconcile of this module source would trust a group rule it should not (an empty list: none)."""
    tree = PARSER.parse(source)
    block = next(n for n in walk(tree.root_node) if n.type == "script_block_expression")
    defined = functions(block, source)
    problems = []
    if IN_SYNC not in defined:
        return ["%s is not defined in the function block the guard runs" % IN_SYNC]
    reconcile = text(defined["Invoke-KillswitchReconcile"], source)
    if IN_SYNC not in commands(defined["Invoke-KillswitchReconcile"], source):
        problems.append("Invoke-KillswitchReconcile does not call %s" % IN_SYNC)
    # the rule is kept as it is ('continue') only on the comparison function's word
    kept = re.search(r"elseif \((.*?)\) \{\s*continue", reconcile, re.DOTALL)
    if kept is None or kept.group(1).strip() != "%s -Have $have -Want $want" % IN_SYNC:
        problems.append("the reconcile keeps a rule on %r, not on %s" % (kept and kept.group(1).strip(), IN_SYNC))
    body = text(defined[IN_SYNC], source)
    for name, (cmdlet, live, wanted) in FILTERS.items():
        if cmdlet not in commands(defined[IN_SYNC], source):
            problems.append("%s does not read %s (%s)" % (IN_SYNC, name, cmdlet))
        if not re.search(r"%s = @\('\w+', %s, %s\)" % (name, re.escape(live), re.escape(wanted)), body):
            problems.append("%s does not compare %s with %s" % (IN_SYNC, live, wanted))
    for check in RULE_CHECKS:
        if check not in body:
            problems.append("%s does not check %s" % (IN_SYNC, check))
    # both sides go through the same normalization, and a difference means out of sync
    same = ("(%s -Value $liveValue -Kind $kind) -cne (%s -Value $wantedValue -Kind $kind)" % (NORMALIZER, NORMALIZER))
    if same not in body or "return $false" not in body[body.index(same) if same in body else 0:]:
        problems.append("%s does not compare the live and desired values normalized alike" % IN_SYNC)
    return problems


def test_the_reconcile_compares_every_filter_of_a_group_rule():
    assert in_sync_problems(SOURCE) == []


def test_the_comparison_is_in_the_block_the_guard_runs():
    block = functions(function_block())
    assert {IN_SYNC, NORMALIZER} <= set(block)
    assert NORMALIZER in commands(block[IN_SYNC])


def test_a_description_only_check_is_caught():
    """The pre-fix reconcile: a rule whose Description matches is kept, whatever its addresses or ports are."""
    call = b"elseif (Test-KillswitchRuleInSync -Have $have -Want $want) {"
    assert call in SOURCE
    trusting = SOURCE.replace(call, b"elseif ($have.Description -ceq $want.description -and "
                                    b"[string]$have.Action -eq 'Allow') {", 1)
    problems = in_sync_problems(trusting)
    assert "Invoke-KillswitchReconcile does not call %s" % IN_SYNC in problems


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_a_comparison_without_one_filter_is_caught(name):
    line = re.search(r"\n *%s = @\([^\n]*\)" % name, SOURCE.decode()).group(0)
    without = SOURCE.replace(line.encode(), b"", 1)
    assert "%s does not compare %s with %s" % (IN_SYNC, FILTERS[name][1], FILTERS[name][2]) in in_sync_problems(without)


def test_a_comparison_that_normalizes_one_side_only_is_caught():
    one_sided = SOURCE.replace(b"(ConvertTo-KillswitchFilterSet -Value $wantedValue -Kind $kind)", b"([string]$wantedValue)", 1)
    assert one_sided != SOURCE
    assert in_sync_problems(one_sided)


def test_the_normalization_reads_windows_forms_of_the_same_value():
    """What Windows may report for what the document says: 'Any' for [], a mask for a prefix, 135:* for 135."""
    body = text(functions(function_block())[NORMALIZER])
    assert "@(ConvertTo-KillswitchList -Value $Value)" in body  # drops 'Any', $null and ''
    assert ".ToLowerInvariant()" in body
    assert "$item -replace ':\\*$', ''" in body
    assert "'6' = 'tcp'; '17' = 'udp'" in body
    assert "GetAddressBytes()" in body and "[System.Net.IPAddress]::TryParse($end, [ref]$parsed)" in body
    assert "Sort-Object -Unique" in body


# --------------------------------------------------------------------------- the module and the guard take turns

LOCK_NAME = "$KillswitchMutexName = 'Global\\netlock-killswitch'"


def guarded_calls(root, source):
    """{command: True} for each command called inside a try block whose finally releases the lock."""
    inside = set()
    for node in walk(root):
        if node.type != "try_statement":
            continue
        body = next(child for child in node.named_children if child.type == "statement_block")
        final = next((child for child in node.named_children if child.type == "finally_clause"), None)
        if final is not None and "Exit-KillswitchLock" in commands(final, source):
            inside |= commands(body, source)
    return inside


def lock_problems(source):
    """Why a guard pass could run in the middle of an apply of this module source (an empty list: it cannot)."""
    tree = PARSER.parse(source)
    block = next(n for n in walk(tree.root_node) if n.type == "script_block_expression")
    in_block = functions(block, source)
    everywhere = functions(tree.root_node, source)
    problems = []
    if not {"Enter-KillswitchLock", "Exit-KillswitchLock"} <= set(in_block):
        return ["the lock helpers are not in the function block the guard runs"]
    if LOCK_NAME not in text(block, source):
        problems.append("the block does not name the mutex Global\\netlock-killswitch")
    enter = text(in_block["Enter-KillswitchLock"], source)
    if "[System.Threading.Mutex]::new($false, $KillswitchMutexName" not in enter:
        problems.append("Enter-KillswitchLock does not open the named mutex")
    if ".WaitOne([TimeSpan]::FromSeconds($TimeoutSeconds))" not in enter:
        problems.append("Enter-KillswitchLock does not wait with a bound")
    # the guard: the lock before policy.json is read, no pass without it, the pass inside try/finally
    guard = in_block["Invoke-KillswitchGuardPass"]
    guard_text = text(guard, source)
    if not re.search(r"\$lock = Enter-KillswitchLock -TimeoutSeconds \$KillswitchGuardLockSeconds\s+"
                     r"if \(\$null -eq \$lock\) \{\s+return\s+\}", guard_text):
        problems.append("the guard pass does not take the lock first, or does not skip without it")
    if "Invoke-KillswitchReconcile" not in guarded_calls(guard, source):
        problems.append("the guard reconciles outside the lock")
    elif not 0 <= guard_text.find("Enter-KillswitchLock") < guard_text.index("policy.json"):
        problems.append("the guard reads policy.json before it takes the lock")
    # the module: the lock before it reads or changes anything, a clear failure without it, released in finally
    top = source.decode()[source.decode().index("\n$state = $module.Params.state"):]
    taken = re.search(r"\$lock = Enter-KillswitchLock -TimeoutSeconds \$KillswitchModuleLockSeconds\s+"
                      r"if \(\$null -eq \$lock\) \{.*?\$module\.FailJson\(\$busy\)\s+\}", top, re.DOTALL)
    if taken is None:
        problems.append("the module does not take the lock, or does not fail without it")
    elif top.index("Get-KillswitchLive") < taken.start():
        problems.append("the module reads the host before it takes the lock")
    if not {"Invoke-KillswitchPresent", "Invoke-KillswitchAbsent", "Get-KillswitchLive"} <= guarded_calls(tree.root_node, source):
        problems.append("the module applies outside the lock")
    # present: the guard's copy of the policy is written before the reconcile
    present = text(everywhere["Invoke-KillswitchPresent"], source)
    write = present.find("Write-KillswitchFile -Path $policyPath")
    if write < 0 or write > present.index("Invoke-KillswitchReconcile"):
        problems.append("present writes policy.json after the reconcile")
    return problems


def test_the_module_and_the_guard_take_turns():
    assert lock_problems(SOURCE) == []


def test_writing_policy_json_after_the_reconcile_is_caught():
    """The old order: the reconcile, then policy.json; a guard pass in between re-applies the old policy."""
    source = SOURCE.decode()
    start = source.index("    # The guard's copy of the policy, written before the reconcile")
    end = source.index("    $plan = Invoke-KillswitchReconcile")
    write = source[start:end]
    late = source[:start] + source[end:].replace("    if ($GuardEnabled) {", write + "    if ($GuardEnabled) {", 1)
    assert late != source
    assert "present writes policy.json after the reconcile" in lock_problems(late.encode())


def test_a_guard_pass_without_the_lock_is_caught():
    unguarded = re.sub(rb"\n( +)\$lock = Enter-KillswitchLock -TimeoutSeconds \$KillswitchGuardLockSeconds\s+"
                       rb"if \(\$null -eq \$lock\) \{\s+return\s+\}", b"", SOURCE, count=1)
    assert unguarded != SOURCE
    assert "the guard pass does not take the lock first, or does not skip without it" in lock_problems(unguarded)


def test_a_module_without_the_lock_is_caught():
    unlocked = SOURCE.replace(b"finally {\n    Exit-KillswitchLock -Mutex $lock\n}", b"finally {\n}", 1)
    assert unlocked != SOURCE
    assert "the module applies outside the lock" in lock_problems(unlocked)


def test_an_unbounded_wait_is_caught():
    unbounded = SOURCE.replace(b".WaitOne([TimeSpan]::FromSeconds($TimeoutSeconds))", b".WaitOne()", 1)
    assert unbounded != SOURCE
    assert "Enter-KillswitchLock does not wait with a bound" in lock_problems(unbounded)


def test_the_guard_skips_a_pass_when_policy_json_is_gone():
    guard = text(functions(function_block())["Invoke-KillswitchGuardPass"])
    assert re.search(r"if \(-not \(Test-Path -LiteralPath \$policyPath -PathType Leaf\)\) \{\s+return", guard)


# --------------------------------------------------------------------------- absent and a running guard

def guard_removal_problems(source):
    """Why absent could restore the host while a guard instance still runs (an empty list: it cannot)."""
    tree = PARSER.parse(source)
    defined = functions(tree.root_node, source)
    removal = text(defined["Remove-KillswitchGuard"], source)
    problems = []
    steps = ["Disable-ScheduledTask -TaskName $KillswitchTaskName", "Stop-ScheduledTask -TaskName $KillswitchTaskName",
             "-eq 'Running'", "Unregister-ScheduledTask -TaskName $KillswitchTaskName"]
    positions = [removal.find(step) for step in steps]
    if -1 in positions or positions != sorted(positions):
        problems.append("Remove-KillswitchGuard does not disable, stop, wait for and then unregister the task: %s"
                        % dict(zip(steps, positions)))
    wait = re.search(r"while \((.*?)\) \{(.*?)\n    \}", removal, re.DOTALL)
    if wait is None or "Get-ScheduledTask" not in wait.group(1) or not re.search(
            r"if \(\(Get-Date\) -gt \$deadline\) \{.*?\bthrow\b", wait.group(2), re.DOTALL):
        problems.append("the wait for the running instance is not bounded by a deadline that fails the module")
    if "$KillswitchGuardStopSeconds = " not in source.decode():
        problems.append("the wait has no bound")
    absent = text(defined["Invoke-KillswitchAbsent"], source)
    if not absent.find("Remove-KillswitchGuard") < absent.find("Remove-NetFirewallRule") < absent.find("Set-NetFirewallProfile"):
        problems.append("absent touches rules or profiles before the guard is gone")
    return problems


def test_absent_stops_and_waits_for_a_running_guard_before_it_restores():
    assert guard_removal_problems(SOURCE) == []


def test_unregistering_a_running_guard_at_once_is_caught():
    """The old removal: Unregister-ScheduledTask alone, while an instance may still run and re-assert the policy."""
    removal = text(functions(TREE.root_node)["Remove-KillswitchGuard"])
    old = ("function Remove-KillswitchGuard {\n    param([bool]$CheckMode, $Actions)\n"
           "    if ($null -ne (Get-ScheduledTask -TaskName $KillswitchTaskName -ErrorAction SilentlyContinue)) {\n"
           "        $Actions.Add(\"unregister task $KillswitchTaskName\")\n"
           "        if (-not $CheckMode) {\n"
           "            Unregister-ScheduledTask -TaskName $KillswitchTaskName -Confirm:$false\n        }\n    }\n}")
    at_once = SOURCE.replace(removal.encode(), old.encode(), 1)
    assert at_once != SOURCE and syntax_errors(PARSER.parse(at_once), at_once) == []
    problems = guard_removal_problems(at_once)
    assert any(p.startswith("Remove-KillswitchGuard does not disable, stop") for p in problems), problems


def test_an_unbounded_wait_for_the_guard_is_caught():
    endless = re.sub(rb"\n +if \(\(Get-Date\) -gt \$deadline\) \{.*?\n        \}", b"", SOURCE, count=1, flags=re.DOTALL)
    assert endless != SOURCE and syntax_errors(PARSER.parse(endless), endless) == []
    assert "the wait for the running instance is not bounded by a deadline that fails the module" in \
        guard_removal_problems(endless)


# --------------------------------------------------------------------------- the state directory is the module's own

STATE_FILES = ["policy.json", "recorded.json", "status.json", "guard.ps1", "rollback.json", "rollback.ps1", ".netlock-killswitch"]


def state_dir_problems(source):
    """How this module source could write into, or remove, a directory that is not its own (an empty list: it cannot)."""
    tree = PARSER.parse(source)
    defined = functions(tree.root_node, source)
    code = source.decode()
    problems = []
    if "$KillswitchStateMarker = '.netlock-killswitch'" not in code or \
            "$KillswitchStateFiles = @('policy.json', 'recorded.json', 'status.json', 'guard.ps1', 'rollback.json', 'rollback.ps1', " \
            "$KillswitchStateMarker)" \
            not in code:
        problems.append("the marker or the list of the module's own files is not the expected one")
    for name, node in defined.items():
        if re.search(r"Remove-Item\b[^\n]*-Recurse", text(node, source)):
            problems.append("%s removes recursively" % name)
    # present: an existing non-empty directory without the marker fails the module, check mode too, before anything
    checker = text(defined["Get-KillswitchStateDirProblem"], source) if "Get-KillswitchStateDirProblem" in defined else ""
    if not re.search(r"if \(Test-Path -LiteralPath \(Join-Path -Path \$Path -ChildPath \$KillswitchStateMarker\) "
                     r"-PathType Leaf\) \{\s+return \$null\s+\}\s+if \(@\(Get-ChildItem -LiteralPath \$Path -Force\)"
                     r"\.Count -gt 0\) \{\s+return", checker):
        problems.append("a non-empty directory without the marker is not refused")
    top = code[code.index("\n$state = $module.Params.state"):]
    refused = re.search(r"if \(\$state -eq 'present'\) \{\s+\$stateDirProblem = Get-KillswitchStateDirProblem -Path "
                        r"\$stateDir\s+if \(\$null -ne \$stateDirProblem\) \{\s+\$module\.FailJson\(\$stateDirProblem\)", top)
    if refused is None or refused.start() > top.index("Invoke-KillswitchPresent"):
        problems.append("present does not fail on a directory that is not its own before it acts")
    setter = text(defined["Set-KillswitchStateDir"], source)
    if not 0 <= setter.find("Write-KillswitchFile -Path $marker") < setter.find("Set-Acl"):
        problems.append("the module does not mark the directory it makes before it sets its ACL")
    # absent: its own files one by one, then the directory only if nothing else is left
    remover = text(defined["Remove-KillswitchStateDir"], source) if "Remove-KillswitchStateDir" in defined else ""
    steps = ["$problem = Get-KillswitchStateDirProblem", "foreach ($name in $KillswitchStateFiles)",
             "Remove-Item -LiteralPath $file -Force", "if ($others.Count -gt 0) {", "Remove-Item -LiteralPath $StateDir -Force"]
    positions = [remover.find(step) for step in steps]
    if -1 in positions or positions != sorted(positions):
        problems.append("absent does not remove its own files and then only an empty directory: %s" % dict(zip(steps, positions)))
    if "Remove-KillswitchStateDir" not in commands(defined["Invoke-KillswitchAbsent"], source):
        problems.append("absent does not go through Remove-KillswitchStateDir")
    return problems


def test_the_state_directory_is_made_marked_and_removed_file_by_file():
    assert state_dir_problems(SOURCE) == []


def test_the_old_recursive_removal_is_caught():
    absent = text(functions(TREE.root_node)["Invoke-KillswitchAbsent"])
    call = "    Remove-KillswitchStateDir -StateDir $StateDir -CheckMode $CheckMode -Actions $actions -Warnings $warnings\n"
    assert call in absent
    old = ("    if (Test-Path -LiteralPath $StateDir) {\n        $actions.Add(\"remove $StateDir\")\n"
           "        if (-not $CheckMode) {\n            Remove-Item -LiteralPath $StateDir -Recurse -Force\n        }\n    }\n")
    recursive = SOURCE.replace(call.encode(), old.encode(), 1)
    assert syntax_errors(PARSER.parse(recursive), recursive) == []
    problems = state_dir_problems(recursive)
    assert "Invoke-KillswitchAbsent removes recursively" in problems
    assert "absent does not go through Remove-KillswitchStateDir" in problems


def test_writing_into_a_foreign_directory_is_caught():
    trusting = SOURCE.replace(b"$module.FailJson($stateDirProblem)", b"$module.Warn($stateDirProblem)", 1)
    assert trusting != SOURCE
    assert "present does not fail on a directory that is not its own before it acts" in state_dir_problems(trusting)
    no_marker = re.sub(rb"\n +if \(Test-Path -LiteralPath \(Join-Path -Path \$Path -ChildPath \$KillswitchStateMarker\) "
                       rb"-PathType Leaf\) \{\s+return \$null\s+\}", b"", SOURCE, count=1)
    assert no_marker != SOURCE
    assert "a non-empty directory without the marker is not refused" in state_dir_problems(no_marker)


def test_the_own_files_are_every_file_the_module_writes():
    """A file the module writes into the state directory and absent does not know would keep the directory."""
    written = set(re.findall(r"-ChildPath '([^']+)'", SOURCE.decode()))
    assert written | {".netlock-killswitch"} == set(STATE_FILES)


# --------------------------------------------------------------------------- a guard task counts only when it guards

GUARD_KEYS = {"task", "state", "runs_guard", "action", "interval"}


def guard_health_problems(source):
    """How a disabled guard task, or one running something else, could pass for a guard (an empty list: it cannot)."""
    defined = functions(PARSER.parse(source).root_node, source)
    problems = []
    state = text(defined["Get-KillswitchGuardState"], source)
    if "Get-KillswitchGuardAction -ScriptPath (Join-Path -Path $StateDir -ChildPath 'guard.ps1')" not in state or \
            "runs_guard = ($commands.Count -eq 1 -and $commands[0] -eq $expected)" not in state:
        problems.append("Get-KillswitchGuardState does not compare the task's action with this guard.ps1")
    if "state = [string]$task.State" not in state:
        problems.append("Get-KillswitchGuardState does not report the task's state")
    install = text(defined["Install-KillswitchGuard"], source)
    kept = re.search(r"if \((.*?)\) \{\s+return\s+\}", install)
    condition = kept.group(1) if kept else ""
    for needed in ("[string]$task.Description -ceq $signature", "$guard.state -ne 'Disabled'", "$guard.runs_guard"):
        if needed not in condition:
            problems.append("Install-KillswitchGuard keeps the task without checking %s" % needed)
    if "(Get-KillswitchGuardAction -ScriptPath $ScriptPath) -split ' ', 2" not in install:
        problems.append("Install-KillswitchGuard registers an action other than the one it checks")
    if "guard = Get-KillswitchGuardState -StateDir $StateDir" not in text(defined["Get-KillswitchLive"], source):
        problems.append("live.guard is not the checked state")
    return problems


def test_the_guard_task_counts_only_when_enabled_and_running_guard_ps1():
    assert guard_health_problems(SOURCE) == []


def test_keeping_a_task_on_its_description_alone_is_caught():
    """The old check: a task with the right Description was kept, disabled or pointed elsewhere."""
    install = text(functions(TREE.root_node)["Install-KillswitchGuard"])
    condition = re.search(r"if \((.*?)\) \{\s+return", install).group(1)
    trusting = SOURCE.replace(condition.encode(), b"$null -ne $task -and [string]$task.Description -ceq $signature", 1)
    assert trusting != SOURCE
    problems = guard_health_problems(trusting)
    assert "Install-KillswitchGuard keeps the task without checking $guard.state -ne 'Disabled'" in problems
    assert "Install-KillswitchGuard keeps the task without checking $guard.runs_guard" in problems


def test_live_guard_has_the_keys_windows_plan_reads():
    state = text(functions(TREE.root_node)["Get-KillswitchGuardState"])
    returned = [set(re.findall(r"(\w+) = ", block)) for block in re.findall(r"\[ordered\]@\{(.*?)\}", state, re.DOTALL)]
    assert returned == [GUARD_KEYS, GUARD_KEYS]
    predicted = text(functions(TREE.root_node)["Get-KillswitchPredictedAbsent"])
    assert set(re.findall(r"(\w+) = ", re.search(r"\$predicted\.guard = \[ordered\]@\{(.*?)\}", predicted).group(1))) == GUARD_KEYS
    plan = (ROOT / "plugins" / "plugin_utils" / "windows_plan.py").read_text()
    assert all('guard.get("%s")' % key in plan for key in GUARD_KEYS)


# --------------------------------------------------------------------------- safe apply: snapshot, rollback task, confirm

def top_level(source):
    code = source.decode()
    return code[code.index("\n$state = $module.Params.state"):]


def rollback_problems(source):
    """How an apply of this module source could change the host before the rollback is armed, or a rollback could
    restore the wrong thing or race the guard (an empty list: neither)."""
    tree = PARSER.parse(source)
    block = next(n for n in walk(tree.root_node) if n.type == "script_block_expression")
    in_block = functions(block, source)
    everywhere = functions(tree.root_node, source)
    problems = []
    for name in ("Invoke-KillswitchRollback", "Get-KillswitchSnapshot", "Restore-KillswitchRule", "Get-KillswitchRuleRecord"):
        if name not in in_block:
            problems.append("%s is not in the function block the rollback script runs" % name)
    if problems:
        return problems
    writer = text(everywhere["Get-KillswitchRollbackScript"], source)
    if "$killswitchFunctions.ToString()" not in writer or "'Invoke-KillswitchRollback -StateDir $stateDir'" not in writer:
        problems.append("rollback.ps1 is not the function block and a call of Invoke-KillswitchRollback")
    # the rollback: the module's lock, the snapshot read under it and restored only while pending
    rollback = text(in_block["Invoke-KillswitchRollback"], source)
    if not 0 <= rollback.find("Enter-KillswitchLock -TimeoutSeconds $KillswitchModuleLockSeconds") < rollback.find("Get-Content"):
        problems.append("the rollback reads the snapshot before it takes the lock")
    if "Exit-KillswitchLock -Mutex $lock" not in rollback or not re.search(r"if \(\[string\]\$snapshot\.status -ne 'pending'\) \{\s+return", rollback):
        problems.append("the rollback does not restore only a pending snapshot under the lock")
    steps = ["Write-KillswitchFile -Path $file", "Remove-NetFirewallRule", "Restore-KillswitchRule", "Enable-NetFirewallRule",
             "Set-NetFirewallProfile"]
    positions = [rollback.find(step) for step in steps]
    if -1 in positions or positions != sorted(positions):
        problems.append("the rollback does not restore the state files, then the rules, then the third-party rules, "
                        "then the profiles: %s" % dict(zip(steps, positions)))
    # every filter a snapshot records is restored
    record = text(in_block["Get-KillswitchRuleRecord"], source)
    restore = text(in_block["Restore-KillswitchRule"], source)
    recorded = set(re.findall(r"\n +(\w+) = ", record))
    restored = set(re.findall(r"\$Record\.(\w+)", restore)) | set(re.findall(r"= '(\w+)'", restore))
    if recorded - restored:
        problems.append("Restore-KillswitchRule does not restore %s" % sorted(recorded - restored))
    # the module: armed before the apply, and not in check mode
    top = top_level(source)
    arm = top.find("Register-KillswitchRollback")
    apply_at = top.find("Invoke-KillswitchPresent @presentArgs -CheckMode $checkMode")
    if arm < 0 or apply_at < 0 or arm > apply_at:
        problems.append("the rollback is not armed before the apply")
    elif not re.search(r"if \(\$module\.Params\.rollback_timeout -gt 0 -and -not \$checkMode\) \{[^}]*?"
                       r"Invoke-KillswitchPresent @presentArgs -CheckMode \$true", top):
        problems.append("the rollback is armed in check mode, or without looking at what the apply changes")
    if "Invoke-KillswitchConfirm" not in guarded_calls(tree.root_node, source):
        problems.append("confirm runs outside the lock")
    if "Remove-KillswitchRollback" not in commands(everywhere["Invoke-KillswitchConfirm"], source):
        problems.append("confirm does not remove the rollback task and its snapshot")
    absent = text(everywhere["Invoke-KillswitchAbsent"], source)
    if not 0 <= absent.find("Remove-KillswitchRollback") < absent.find("Remove-KillswitchGuard"):
        problems.append("absent does not disarm the rollback first")
    removal = text(everywhere["Remove-KillswitchRollback"], source)
    if not 0 <= removal.find("Disable-ScheduledTask -TaskName $KillswitchRollbackTaskName") < \
            removal.find("Unregister-ScheduledTask -TaskName $KillswitchRollbackTaskName"):
        problems.append("the rollback task is not disabled and unregistered")
    return problems


def test_the_rollback_is_armed_first_restores_in_order_and_takes_turns():
    assert rollback_problems(SOURCE) == []


def test_arming_after_the_apply_is_caught():
    top = top_level(SOURCE)
    apply_line = "            $outcome = Invoke-KillswitchPresent @presentArgs -CheckMode $checkMode\n"
    arm_start = top.index("            if ($module.Params.rollback_timeout -gt 0 -and -not $checkMode) {")
    arm_end = top.index(apply_line)
    late = top[:arm_start] + apply_line + top[arm_start:arm_end] + top[arm_end + len(apply_line):]
    source = SOURCE.decode().replace(top, late).encode()
    assert source != SOURCE and syntax_errors(PARSER.parse(source), source) == []
    assert "the rollback is not armed before the apply" in rollback_problems(source)


def test_arming_in_check_mode_is_caught():
    armed = SOURCE.replace(b"if ($module.Params.rollback_timeout -gt 0 -and -not $checkMode) {",
                           b"if ($module.Params.rollback_timeout -gt 0) {", 1)
    assert armed != SOURCE
    assert "the rollback is armed in check mode, or without looking at what the apply changes" in rollback_problems(armed)


def test_a_rollback_that_restores_the_rules_before_policy_json_is_caught():
    """Rules first, then policy.json: a guard pass in between (the lock released by a failure) re-applies the
    unconfirmed policy over the rollback."""
    rollback = text(functions(function_block())["Invoke-KillswitchRollback"])
    files = re.search(r"\n( +)foreach \(\$name in \$KillswitchRollbackFiles\) \{.*?\n\1\}", rollback, re.DOTALL).group(0)
    rules = re.search(r"\n( +)foreach \(\$group in @\(ConvertTo-KillswitchList -Value \$snapshot\.groups\)\) \{.*?\n\1\}",
                      rollback, re.DOTALL).group(0)
    swapped = rollback.replace(files + rules, rules + files, 1)
    assert swapped != rollback
    source = SOURCE.replace(rollback.encode(), swapped.encode(), 1)
    assert syntax_errors(PARSER.parse(source), source) == []
    assert any(p.startswith("the rollback does not restore the state files, then the rules") for p in rollback_problems(source))


def test_a_rollback_without_the_pending_check_is_caught():
    """A confirmation removes the snapshot, or marks it done: a rollback that does not look restores over it."""
    unchecked = re.sub(rb"\n +if \(\[string\]\$snapshot\.status -ne 'pending'\) \{\s+return\s+\}", b"", SOURCE, count=1)
    assert unchecked != SOURCE
    assert "the rollback does not restore only a pending snapshot under the lock" in rollback_problems(unchecked)


def test_a_snapshot_filter_that_is_not_restored_is_caught():
    dropped = SOURCE.replace(b"            RemoteAddress = 'remote_addresses'\n            InterfaceAlias = 'interface_aliases'\n",
                             b"            InterfaceAlias = 'interface_aliases'\n", 1)
    assert dropped != SOURCE
    assert "Restore-KillswitchRule does not restore ['remote_addresses']" in rollback_problems(dropped)


def test_absent_that_leaves_the_rollback_armed_is_caught():
    kept = SOURCE.replace(b"    Remove-KillswitchRollback -StateDir $StateDir -CheckMode $CheckMode -Actions $actions\n    Remove-KillswitchGuard",
                          b"    Remove-KillswitchGuard", 1)
    assert kept != SOURCE
    assert "absent does not disarm the rollback first" in rollback_problems(kept)


def test_a_rollback_without_the_lock_is_caught():
    rollback = text(functions(function_block())["Invoke-KillswitchRollback"])
    unlocked = rollback.replace("$lock = Enter-KillswitchLock -TimeoutSeconds $KillswitchModuleLockSeconds", "$lock = 1", 1)
    assert unlocked != rollback
    source = SOURCE.replace(rollback.encode(), unlocked.encode(), 1)
    assert "the rollback reads the snapshot before it takes the lock" in rollback_problems(source)


def test_live_rules_carry_the_filters_windows_plan_compares():
    """windows_plan.status judges a group rule by its filters too; the module must return each one in live.rules."""
    from ansible_collections.netlock.killswitch.plugins.plugin_utils import windows_plan
    record = text(functions(function_block())["Get-KillswitchRuleRecord"])
    returned = set(re.findall(r"\n +(\w+) = ", record))
    assert {name for name, _kind, _key in windows_plan.FILTERS} <= returned
    assert {"name", "display_name", "direction", "enabled", "description"} <= returned
    live = text(functions(TREE.root_node)["Get-KillswitchLive"])
    assert re.search(r"\$rules = foreach \(\$rule in \(Get-KillswitchGroupRule[^\n]*\n\s+Get-KillswitchRuleRecord -Rule \$rule", live)
