#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: killswitch_in_force
short_description: Tell in one module run whether a Linux host already has everything the role would converge
version_added: 1.2.0
description:
  - The role's first step on a Linux host with C(killswitch_state=present) (C(killswitch_in_force_check)). When
    every part is in force, the role's converge is skipped, so a no-op run costs this one module run instead of
    one per task (bench B2).
  - The action plugin renders on the controller what the role's tasks would write (its templates, the guard
    program, the stored policy) and compares it with what this module reads on the host, namely the content digests, modes
    and owners of the files, the stale policies and drop-ins, the units enabled, started and loaded, the fence table,
    the firewall tools, the ruleset in force (the same test M(netlock.killswitch.killswitch_firewall) makes before
    a full comparison) and what another backend left.
  - It changes nothing. Anything it cannot prove in force (a missing record, a hand edit, a pending rollback) counts
    as not in force, and the role's converge tasks for that part decide what to change.
author:
  - netlock.killswitch contributors (@netlock)
options:
  firewall:
    description:
      - The active backend's ruleset, as the role applies it. The action plugin replaces C(ruleset) with its
        digest before the module runs.
    type: dict
    required: true
    suboptions:
      backend:
        description: The firewall the ruleset is for.
        type: str
        choices: [nftables, iptables]
        required: true
      ruleset:
        description: The rendered payload (the action plugin sends only its SHA-256).
        type: str
      ruleset_sha256:
        description: The SHA-256 of the payload (set by the action plugin).
        type: str
      table:
        description: The table or chain prefix.
        type: str
        required: true
      path:
        description: The persisted payload.
        type: path
        required: true
      expected_path:
        description: The guard's expected listing; its C(.sha256) record says which ruleset it lists.
        type: path
        required: true
  other_backends:
    description: The other backends, each with its persisted payload; their table and payload must be gone.
    type: dict
    default: {}
  tools:
    description: Commands that must be on the host's C(PATH).
    type: list
    elements: str
    default: []
  absent:
    description: Paths that must not exist.
    type: list
    elements: path
    default: []
  units:
    description:
      - Units with what they must be, as dicts with C(name), C(enabled) and C(active) (booleans). Every unit must be
        loaded, and not changed on disk since systemd loaded it.
    type: list
    elements: dict
    default: []
  nft_tables:
    description: nftables tables that must be loaded, as C(family name) (the fence).
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - netlock.killswitch.role_files
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The module never changes the host.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - With pipelining on (C(ANSIBLE_PIPELINING=true)) the whole check is one SSH round trip.
seealso:
  - module: netlock.killswitch.killswitch_firewall
  - module: netlock.killswitch.killswitch_status
"""

EXAMPLES = r"""
- name: Check whether this host already has the kill switch in force
  netlock.killswitch.killswitch_in_force:
    firewall:
      backend: nftables
      ruleset: "{{ killswitch_rendered.ruleset }}"
      table: killswitch
      path: /etc/netlock-killswitch/ruleset.nft
      expected_path: /etc/netlock-killswitch/expected-table.txt
    tools: [nft, unshare]
    templates:
      - {src: netlock-killswitch.service.j2, dest: /etc/systemd/system/netlock-killswitch.service, mode: "0644"}
    units:
      - {name: netlock-killswitch.service, enabled: true, active: false}
  register: killswitch_in_force
"""

RETURN = r"""
in_force:
  description: Whether every part is in force; when true the role's converge would change nothing.
  returned: always
  type: bool
  sample: true
differences:
  description: What is not in force, one line per part (empty when RV(in_force)).
  returned: always
  type: list
  elements: str
  sample: ["/etc/netlock-killswitch/guard.json: content differs"]
todo:
  description:
    - What the role's converge has to look at, by part; its tasks for the other parts are skipped (set by the action
      plugin).
  returned: always
  type: dict
  sample:
    tools: false
    ruleset: true
    other_backends: []
    paths: [/etc/netlock-killswitch/policies/0123456789abcdef]
    units: []
    fence: false
    app_dropins: false
    stale_policies: true
    guard_leftovers: false
commands:
  description: The shell commands that load the persisted payload and list the live rules (the boot unit's and the guard's).
  returned: always
  type: dict
  sample: {load: "/usr/sbin/nft -f /etc/netlock-killswitch/ruleset.nft", list: "nft list table inet killswitch"}
observed:
  description: What the module read on the host, per part (the files' digests, the units' states, the tables).
  returned: always
  type: dict
"""

import glob
import grp
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.netlock.killswitch.plugins.module_utils import applied
from ansible_collections.netlock.killswitch.plugins.module_utils.role_parts import FILE_OPTIONS, parts

UNIT_PROPERTIES = ("Id", "LoadState", "UnitFileState", "ActiveState", "NeedDaemonReload")


def path_state(path):
    """Type, mode, owner, group and (for a file) content digest of a path, or None when it does not exist."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    kind = "directory" if stat.S_ISDIR(info.st_mode) else "file" if stat.S_ISREG(info.st_mode) else "other"
    state = dict(type=kind, mode="0%03o" % stat.S_IMODE(info.st_mode), owner=_name(pwd.getpwuid, info.st_uid),
                 group=_name(grp.getgrgid, info.st_gid))
    if kind == "file":
        state["sha256"] = applied.sha256_file(path)
    return state


def _name(lookup, number):
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def unit_states(module, names):
    """``systemctl show`` of every unit in one call: {name: {property: value}}."""
    if not names:
        return {}
    systemctl = module.get_bin_path("systemctl")
    if not systemctl:
        return {}
    rc, out, _err = module.run_command([systemctl, "show", "--property=" + ",".join(UNIT_PROPERTIES), "--"] + list(names))
    if rc != 0:
        return {}
    states = {}
    for block, name in zip(out.strip().split("\n\n"), names):
        values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        states[name] = values
    return states


def nft_tables(module, wanted):
    if not wanted:
        return []
    nft = module.get_bin_path("nft")
    if not nft:
        return []
    rc, out, _err = module.run_command([nft, "list", "tables"])
    if rc != 0:
        return []
    present = {line.split(None, 1)[1].strip() for line in out.splitlines() if line.startswith("table ")}
    return [name for name in wanted if name in present]


def firewall_state(module, spec):
    firewall = applied.firewall_for(module, spec["backend"], required=False)
    if firewall is None:
        return dict(in_force=False, rollback_pending=applied.rollback_pending(), commands={})
    pending = applied.rollback_pending()
    live = None if pending else applied.in_force(firewall, spec["table"], spec["path"], spec["ruleset_sha256"] or "",
                                                 spec["expected_path"])
    return dict(in_force=live is not None, rollback_pending=pending,
                commands=applied.commands(firewall, spec["table"], spec["path"]))


def leftover_state(module, backend, path, table):
    firewall = applied.firewall_for(module, backend, required=False)
    try:
        live, files = applied.leftovers(firewall, table, path)
    except RuntimeError as exc:  # listing failed: not provably clean
        return dict(table=True, files=[], error=str(exc))
    return dict(table=live is not None, files=files)


def observe(module, params):
    firewall = params["firewall"]
    files, directories, only = parts(params)
    paths = [item["dest"] for item in files] + [item["path"] for item in directories] + list(params["absent"])
    return dict(
        tools_missing=[tool for tool in params["tools"] if not module.get_bin_path(tool)],
        paths={path: path_state(path) for path in paths},
        globs={item["pattern"]: sorted(glob.glob(item["pattern"])) for item in only},
        units=unit_states(module, [item["name"] for item in params["units"]]),
        nft_tables=nft_tables(module, params["nft_tables"]),
        firewall=firewall_state(module, firewall),
        other_backends={backend: leftover_state(module, backend, path, firewall["table"])
                        for backend, path in sorted(params["other_backends"].items())},
    )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            firewall=dict(type="dict", required=True, options=dict(
                backend=dict(type="str", choices=["nftables", "iptables"], required=True),
                ruleset=dict(type="str", no_log=False),
                ruleset_sha256=dict(type="str"),
                table=dict(type="str", required=True),
                path=dict(type="path", required=True),
                expected_path=dict(type="path", required=True),
            )),
            other_backends=dict(type="dict", default={}),
            tools=dict(type="list", elements="str", default=[]),
            absent=dict(type="list", elements="path", default=[]),
            units=dict(type="list", elements="dict", default=[]),
            nft_tables=dict(type="list", elements="str", default=[]),
            **FILE_OPTIONS
        ),
        supports_check_mode=True,
    )
    params = dict(module.params)
    if params["firewall"]["ruleset_sha256"] is None and params["firewall"]["ruleset"] is not None:
        params["firewall"] = dict(params["firewall"], ruleset_sha256=applied.sha256_text(params["firewall"]["ruleset"]))
    try:
        observed = observe(module, params)
    except (OSError, RuntimeError, ValueError) as exc:
        module.fail_json(msg="reading the host's kill switch state failed: %s" % exc)
    module.exit_json(changed=False, observed=observed, commands=observed["firewall"]["commands"])


if __name__ == "__main__":
    main()
