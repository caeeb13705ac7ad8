#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: killswitch_nftables
short_description: Converge the kill switch nftables table on a Linux host
version_added: 1.0.0
description:
  - Loads a rendered kill switch ruleset (see M(netlock.killswitch.killswitch_policy)) as one
    dedicated C(inet) table, replaced atomically by a single C(nft -f) transaction, and persists
    it under C(/etc) for the boot unit.
  - The file is checked with C(nft -c) before anything changes.
  - The live table is compared with the desired one as normalized C(nft -j) JSON (the desired
    side is loaded in a private network namespace and listed back), so an unchanged policy
    reports C(changed=false) and a table someone edited by hand is put back.
  - Needs the C(nft) and C(unshare) commands, not the Python nftables bindings.
author:
  - netlock.killswitch contributors (@netlock)
options:
  state:
    description:
      - C(present) loads and persists O(ruleset).
      - C(absent) deletes the table and the persisted file.
    type: str
    choices: [present, absent]
    default: present
  ruleset:
    description:
      - The complete C(nft -f) file, as rendered by M(netlock.killswitch.killswitch_policy).
      - Required when O(state=present).
    type: str
  table:
    description:
      - Name of the C(inet) table the ruleset defines.
    type: str
    default: killswitch
  path:
    description:
      - Where the ruleset is persisted for the boot unit.
    type: path
    default: /etc/netlock-killswitch/ruleset.nft
  rollback_timeout:
    description:
      - Seconds the host waits, after a change, for the controller to reconnect and confirm; 0 disables.
      - Before applying, the module saves the live table and the persisted file and starts a systemd
        timer. The action plugin then resets the connection and confirms over a new one. If the new
        rules cut the controller off, the timer restores the previous table and file.
    type: int
    default: 0
  confirm:
    description:
      - Confirm the apply after reconnecting. V(false) leaves the rollback armed, to rehearse a lockout.
    type: bool
    default: true
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details:
      - The diff is the live table against the desired one, in C(nft list) text without counter values.
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
    platforms: posix
notes:
  - Runs as root (nftables and network namespaces need C(CAP_NET_ADMIN) and C(CAP_SYS_ADMIN)).
seealso:
  - module: netlock.killswitch.killswitch_policy
"""

EXAMPLES = r"""
- name: Render the policy on the controller
  netlock.killswitch.killswitch_policy:
    tunnel_interfaces: [wg0]
    endpoints:
      - {address: 198.51.100.7, port: 51820}
  register: killswitch_rendered

- name: Load and persist it
  netlock.killswitch.killswitch_nftables:
    ruleset: "{{ killswitch_rendered.ruleset }}"

- name: Remove the kill switch table and file
  netlock.killswitch.killswitch_nftables:
    state: absent
"""

RETURN = r"""
table_changed:
  description: Whether the live table differed from the desired one (or was missing).
  returned: always
  type: bool
  sample: true
file_changed:
  description: Whether the persisted ruleset file differed from O(ruleset) (or was missing).
  returned: always
  type: bool
  sample: false
table:
  description: The live table after the run, in C(nft list) text without counter values.
  returned: success
  type: str
  sample: "table inet killswitch { ... }"
path:
  description: The persisted ruleset file.
  returned: always
  type: str
  sample: /etc/netlock-killswitch/ruleset.nft
rollback:
  description: The armed rollback, when O(rollback_timeout) is set and something changed.
  returned: when armed
  type: dict
  contains:
    timeout:
      description: Seconds before the host restores its previous ruleset.
      type: int
    confirmed:
      description: Whether the controller reconnected and confirmed in time.
      type: bool
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.netlock.killswitch.plugins.module_utils import rollback
from ansible_collections.netlock.killswitch.plugins.module_utils.nft_live import Nft


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _write(directory, content):
    fd, tmp = tempfile.mkstemp(prefix=".ruleset-", suffix=".nft", dir=directory)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.chmod(tmp, 0o644)
    return tmp


def arm_rollback(module, table, path, live, timeout):
    """Save what is there now and start the timer that restores it unless the controller confirms."""
    files = rollback.paths()
    os.makedirs(rollback.ROLLBACK_DIR, mode=0o700, exist_ok=True)
    previous_file = _read(path)
    contents = {
        "previous-table.nft": rollback.previous_table(table, live[1] if live else None),
        "previous-file.nft": previous_file or "",
        "rollback.sh": rollback.script(module.get_bin_path("nft", required=True), path, previous_file is not None, files),
        "armed": "",
    }
    for name, content in contents.items():
        with open(files[name], "w") as handle:
            handle.write(content)
    systemd_run = module.get_bin_path("systemd-run", required=True)
    module.run_command(["systemctl", "stop", rollback.ROLLBACK_UNIT + ".timer", rollback.ROLLBACK_UNIT + ".service"])
    module.run_command(["systemctl", "reset-failed", rollback.ROLLBACK_UNIT + ".timer", rollback.ROLLBACK_UNIT + ".service"])
    rc, out, err = module.run_command([systemd_run, "--unit", rollback.ROLLBACK_UNIT, "--on-active=%ds" % timeout,
                                       "--timer-property=AccuracySec=1s", "/bin/sh", files["rollback.sh"]])
    if rc != 0:
        module.fail_json(msg="could not arm the rollback timer, nothing was changed: %s" % (err or out))
    return dict(timeout=timeout, cookie=files["armed"], unit=rollback.ROLLBACK_UNIT,
                confirm=rollback.confirm_command(files))


def present(module, nft, table, path, ruleset, rollback_timeout=0):
    # Checked and compared from the module's temp dir: check mode must not write under /etc.
    probe = _write(module.tmpdir, ruleset)
    problem = nft.check(probe)
    if problem:
        module.fail_json(msg="nft -c rejected the ruleset, nothing was changed: %s" % problem)
    desired, desired_text = nft.desired(probe, table)
    live = nft.live(table)
    table_changed = live is None or live[0] != desired
    file_changed = _read(path) != ruleset
    result = dict(
        changed=table_changed or file_changed,
        table_changed=table_changed,
        file_changed=file_changed,
        path=path,
        table=desired_text if table_changed else live[1],
        diff=[dict(before_header="inet %s (live)" % table, before=live[1] if live else "",
                   after_header="inet %s (desired)" % table, after=desired_text)],
    )
    if file_changed:
        result["diff"].append(dict(before_header=path, before=_read(path) or "", after_header=path, after=ruleset))
    if module.check_mode or not result["changed"]:
        return result
    # Staged beside the target so the final rename is atomic.
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    staged = _write(os.path.dirname(path), ruleset)
    try:
        if rollback_timeout:
            result["rollback"] = arm_rollback(module, table, path, live, rollback_timeout)
        if table_changed:
            # One nft transaction: on failure the kernel keeps the old table untouched.
            problem = nft.apply(staged)
            if problem:
                if rollback_timeout:
                    module.run_command(["sh", "-c", result["rollback"]["confirm"]])
                module.fail_json(msg="nft -f failed, the previous table is still loaded: %s" % problem, **result)
        if file_changed:
            module.atomic_move(staged, path)
    finally:
        if os.path.exists(staged):
            os.unlink(staged)
    return result


def absent(module, nft, table, path):
    live = nft.live(table)
    on_disk = _read(path)
    result = dict(changed=live is not None or on_disk is not None, table_changed=live is not None,
                  file_changed=on_disk is not None, path=path, table="",
                  diff=dict(before=live[1] if live else "", after=""))
    if module.check_mode or not result["changed"]:
        return result
    if live is not None:
        problem = nft.delete(table)
        if problem:
            module.fail_json(msg="nft delete table inet %s failed: %s" % (table, problem), **result)
    if on_disk is not None:
        os.unlink(path)
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            ruleset=dict(type="str"),
            table=dict(type="str", default="killswitch"),
            path=dict(type="path", default="/etc/netlock-killswitch/ruleset.nft"),
            rollback_timeout=dict(type="int", default=0),
            confirm=dict(type="bool", default=True),
        ),
        required_if=[("state", "present", ["ruleset"])],
        supports_check_mode=True,
    )
    nft = Nft(lambda argv: module.run_command(list(argv)),
              nft=module.get_bin_path("nft", required=True),
              unshare=module.get_bin_path("unshare", required=True))
    params = module.params
    try:
        if params["state"] == "present":
            result = present(module, nft, params["table"], params["path"], params["ruleset"], params["rollback_timeout"])
        else:
            result = absent(module, nft, params["table"], params["path"])
    except (RuntimeError, ValueError, OSError) as exc:
        module.fail_json(msg=str(exc))
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
