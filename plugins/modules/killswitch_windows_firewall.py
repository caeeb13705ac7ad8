#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

# The documentation of the PowerShell module killswitch_windows_firewall.ps1 beside this file.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: killswitch_windows_firewall
short_description: Converge the kill switch on a Windows host with Windows Firewall
version_added: 1.0.0
description:
  - "Enforces a kill switch document rendered on the controller for the C(windows) backend (see
    M(netlock.killswitch.killswitch_policy)) with Windows Firewall: every profile (Domain, Private, Public) enabled
    with default inbound and outbound C(Block), and allow rules in one rule group that the module owns."
  - Windows Firewall has no atomic load. The module works in a fail-closed order, so that no moment is more open
    than the old or the new policy, first the profile defaults to C(Block), then the group's rules added or replaced,
    then the group's rules that are no longer wanted removed, then the third-party rules in O(disable_rules) disabled.
  - A rule of the group is replaced when its live description is not exactly
    C(netlock.killswitch digest=<rule digest> interfaces=<resolved aliases joined with |>), when it is enabled while it
    should not be (or the other way round), when its action or direction changed, or when one of its filters
    (addresses, ports, protocol, ICMP types, program, interfaces) differs from the desired rule's.
  - Interface alias patterns (C(Wintun*)) are resolved with C(Get-NetAdapter -Name <pattern> -IncludeHidden) when a
    rule is made, since Windows Firewall binds a rule to the adapters that exist then. A rule whose patterns match no
    adapter is created disabled (fail closed, since enabled without an interface it would allow every interface) and its
    patterns are returned in RV(unresolved); the guard resolves them again on every pass.
  - The profile defaults and enabled state the host had are recorded once in C(<state_dir>\\recorded.json), never
    overwritten while it exists; O(state=absent) restores them and enables the third-party rules it disabled.
  - The guard is the scheduled task C(netlock-killswitch-guard), run as SYSTEM at startup, every O(guard_interval)
    seconds and on network and firewall change events. It runs C(<state_dir>\\guard.ps1), which the module writes from
    the same functions it reconciles with, reconciles C(<state_dir>\\policy.json), writes C(<state_dir>\\status.json)
    and logs each repair to the Application event log (source C(netlock-killswitch), event 1001).
  - Task Scheduler repeats a task at most once a minute; a shorter interval runs several passes within each run.
  - With O(rollback_timeout), the apply is armed first and rolled back by the host unless confirmed (see the option).
  - The module (O(state=present) and O(state=absent)) and each guard pass hold the named mutex
    C(Global\netlock-killswitch) while they change the host; the module waits up to 120 s for it and fails naming it,
    a guard pass waits 5 s and is skipped. C(policy.json) is written before the reconcile, so the guard never re-applies
    the previous policy in the middle of an apply.
  - The third-party analysis (which enabled outbound allow rules open a path outside the tunnel) and the diff text
    are made on the controller by the action plugin of the same name.
author:
  - netlock.killswitch contributors (@netlock)
options:
  state:
    description:
      - V(query) changes nothing and returns RV(live).
      - V(present) converges the host to O(document).
      - V(absent) removes a pending rollback task, the group's rules and the guard, enables the third-party rules that
        were disabled, restores the recorded profile defaults and removes the module's own files from O(state_dir),
        then O(state_dir) if nothing else is in it (never recursively).
      - V(confirm) confirms an apply armed with O(rollback_timeout) (the action plugin sends it over a new connection);
        the rollback task and its snapshot are removed. RV(rollback.status) is V(confirmed), or how a rollback that
        already ran ended (V(rolled back)), or V(none) when nothing was armed.
    type: str
    choices: [query, present, absent, confirm]
    default: present
  document:
    description:
      - The kill switch document as rendered by M(netlock.killswitch.killswitch_policy) for the C(windows) backend,
        parsed from JSON (C(killswitch_rendered.ruleset | from_json)).
      - Required when O(state=present). With O(state=absent) its C(group) is removed; without it, the group recorded
        in C(<state_dir>\\policy.json).
    type: dict
  disable_rules:
    description:
      - Names of third-party firewall rules to disable (O(state=present) only), recorded so that O(state=absent)
        enables them again. The guard keeps them disabled.
      - The action plugin adds every rule that opens an outbound path outside the tunnel when O(exclusive=true).
    type: list
    elements: str
    default: []
  exclusive:
    description:
      - Handled by the action plugin, on the controller. Disable every enabled third-party allow rule that opens an
        outbound path outside the tunnel (C(killswitch_windows_exclusive)).
      - Without it such rules are reported (RV(third_party_open)) and warned about, and stay enabled.
    type: bool
    default: false
  state_dir:
    description:
      - Where the module keeps C(recorded.json), C(policy.json), C(guard.ps1) and C(status.json); only SYSTEM and
        Administrators may write it.
      - The module creates it with a marker file, C(.netlock-killswitch), and refuses an existing directory that is not
        empty and has no marker. The controller refuses a drive root and well-known directories (C(C:\Windows) and
        all under it, C(C:\Users), C(C:\ProgramData), C(C:\Program Files), C(C:\Program Files (x86))).
    type: path
    default: C:\ProgramData\netlock-killswitch
  guard_enabled:
    description:
      - Install the guard task; V(false) removes it.
    type: bool
    default: true
  guard_interval:
    description:
      - Seconds between two guard passes.
    type: int
    default: 30
  rollback_timeout:
    description:
      - Safe apply (C(killswitch_safe_apply_timeout)). With a value over 0 and O(state=present), before it changes
        anything the module writes a snapshot of what the apply may change (the profiles, the rules of the group and of
        the group in C(policy.json), the third-party rules it disables, C(policy.json) and C(recorded.json)) to
        C(<state_dir>\rollback.json) and registers the one-shot task C(netlock-killswitch-rollback), run as SYSTEM
        this many seconds later, which restores that snapshot unless the apply was confirmed (O(state=confirm)).
      - The action plugin resets the connection and confirms over a new one; when it cannot, the task fails naming
        C(killswitch_safe_apply_timeout) and the host rolls back on its own.
      - Armed only when the apply changes something, or an earlier apply is still unconfirmed (its snapshot is kept,
        so a rollback lands on the last confirmed state). V(0) disables it and disarms a pending rollback. Check mode
        arms nothing.
    type: int
    default: 0
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - The same actions are computed and returned, nothing is changed.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details:
      - The diff (made on the controller) is the profiles, the group's rules, the enabled third-party outbound allow
        rules and the guard task, before and after (in check mode, as the module predicts them).
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: windows
notes:
  - Needs an administrator (WinRM or PSRP as an administrator, or C(become_method=runas) as SYSTEM).
  - Windows Firewall does not see traffic that Hyper-V, WSL2 or Windows Sandbox forward for their guests through
    a virtual switch or NAT, nor what another WFP callout driver permits; those features are returned in
    RV(live.forwarding_features) and warned about. Loopback traffic is not filtered by Windows Firewall.
  - Not tested on a real Windows host in this collection's CI; see C(docs/windows.md).
seealso:
  - module: netlock.killswitch.killswitch_policy
  - module: netlock.killswitch.killswitch_firewall
"""

EXAMPLES = r"""
- name: Render the policy on the controller for a Windows host
  netlock.killswitch.killswitch_policy:
    tunnel_interfaces: [WireGuard-Office]
    endpoints:
      - {address: 198.51.100.7, port: 51820}
    endpoint_program: C:\Program Files\WireGuard\wireguard.exe
    backend: windows
  register: killswitch_rendered

- name: Enforce it with Windows Firewall
  netlock.killswitch.killswitch_windows_firewall:
    document: "{{ killswitch_rendered.ruleset | from_json }}"
    exclusive: true

- name: What is live, changing nothing
  netlock.killswitch.killswitch_windows_firewall:
    state: query
  register: killswitch_windows_live

- name: Remove the kill switch and restore the recorded profile defaults
  netlock.killswitch.killswitch_windows_firewall:
    state: absent
"""

RETURN = r"""
actions:
  description:
    - What the module did (in check mode, would do), in order.
  returned: always
  type: list
  elements: str
  sample:
    - "profiles Domain,Private,Public: default outbound Allow -> Block"
    - add netlock.killswitch.killswitch.00.loopback-out
    - remove netlock.killswitch.killswitch.09.lan-out
    - disable CoreNet-DNS-Out-UDP
unresolved:
  description: Interface alias patterns that matched no adapter; the rules using only those are disabled.
  returned: always
  type: list
  elements: str
  sample: [WireGuard-Office]
live:
  description:
    - The host's firewall state, after the change when there was one. In the lists, V([]) means any (Windows says C(Any)).
  returned: always
  type: dict
  contains:
    profiles:
      description: Per profile (Domain, Private, Public) C(enabled), C(default_inbound) and C(default_outbound).
      type: dict
      sample: {"Public": {"enabled": true, "default_inbound": "Block", "default_outbound": "Block"}}
    rules:
      description:
        - The group's rules, by name, with C(name), C(display_name), C(description), C(group), C(direction), C(action),
          C(enabled) and their filters, C(protocol), C(local_ports), C(remote_ports), C(icmp_types), C(local_addresses),
          C(remote_addresses), C(program) (null for any) and C(interface_aliases).
      type: list
      elements: dict
    third_party:
      description:
        - Every enabled outbound allow rule in force (local and group policy) that is not in the group, with
          C(name), C(display_name), C(group), C(direction), C(action), C(enabled), C(program) (null for any),
          C(protocol), C(remote_addresses), C(remote_ports), C(interface_aliases) and C(interface_type).
      type: list
      elements: dict
    interfaces:
      description: Aliases of the adapters present, hidden ones included.
      type: list
      elements: str
    forwarding_features:
      description: Features present whose guests' traffic bypasses Windows Firewall.
      type: list
      elements: str
      sample: [Hyper-V, WSL]
    recorded:
      description: The content of C(recorded.json) (the host's own profile defaults, the third-party rules disabled), or null.
      type: dict
    guard:
      description:
        - C(task), whether the guard task exists; C(state), its Task Scheduler state (C(Ready), C(Running),
          C(Disabled), ...); C(action), the command line it runs; C(runs_guard), whether that is exactly
          C(<state_dir>\guard.ps1)'s; C(interval) in seconds.
        - O(state=present) registers the task again unless it exists, is not C(Disabled) and runs the guard.
      type: dict
before:
  description: RV(live) before the change.
  returned: always
  type: dict
after:
  description: RV(live) after the change; in check mode, as predicted.
  returned: changed
  type: dict
rollback:
  description:
    - The armed rollback (O(state=present) with O(rollback_timeout)) with C(timeout), C(task), C(snapshot), C(at) (when
      it fires, UTC) and C(status); the action plugin sets C(status) to C(confirmed) once it confirmed, and C(confirmed).
    - With O(state=confirm), C(status) only.
  returned: when armed, and with O(state=confirm)
  type: dict
  sample: {"timeout": 60, "task": "netlock-killswitch-rollback", "status": "confirmed", "confirmed": true}
  contains:
    status:
      description:
        - "V(pending) as armed; V(confirmed); V(rolled back) or C(rollback failed: <error>) when the rollback task ran
          first; V(none) when nothing was armed; C(unreachable: <error>) when no new connection got through."
      type: str
third_party_open:
  description:
    - Added by the action plugin. The third-party rules that open an outbound path outside the tunnel, each with
      C(name), C(display_name) and C(why).
  returned: O(state=present)
  type: list
  elements: dict
postcheck:
  description:
    - Added by the action plugin with O(state=query), for C(playbooks/rollout.yml). C(ok) is whether the kill switch
      is in force as O(document) wants it (RV(status) not drifted), or, without O(document), whether it is gone (no
      rule of the group, no guard task); C(problems) says what is not.
  returned: O(state=query)
  type: dict
  sample: {"ok": false, "problems": ["table: -profile Public: enabled=True inbound=Block outbound=Allow"]}
status:
  description:
    - Added by the action plugin. This host's C(killswitch_status) (the shape of C(docs/design/drift.md)), for
      C(playbooks/drift.yml).
  returned: O(state=present), and O(state=query) with O(document)
  type: dict
"""
