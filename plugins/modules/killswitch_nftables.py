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
  expected_path:
    description:
      - Where the kernel's listing of the table (counter values removed) is recorded for the guard,
        which reloads O(path) whenever the live table differs from it.
      - Written with the table, restored by a rollback and removed with O(state=absent).
    type: path
  rollback_timeout:
    description:
      - Seconds the host waits, after a rule change, for the controller to reconnect and confirm; 0 disables.
      - Before applying, the module saves the live table, the persisted file and the expected listing of the
        last confirmed apply and starts a systemd timer. The new ruleset is staged and loaded by a second
        timer one second after the module returns, so a rule that cuts the connection cannot swallow the
        module's reply. The action plugin then resets the connection and confirms over a new one, with
        bounded attempts. If the new rules cut the controller off, the task fails and the timer restores the
        previous table and files; a failed restore leaves the new table (fail closed).
      - A run that finds an earlier apply still unconfirmed reports a change and confirms it, keeping the
        state saved before that apply as the rollback target.
      - With 0, a rule change is applied directly and a pending rollback is disarmed.
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
expected_changed:
  description: Whether the guard's recorded listing (O(expected_path)) differed from the desired table.
  returned: always
  type: bool
  sample: false
rollback_pending:
  description: Whether an earlier apply was still waiting for its confirmation when the module ran.
  returned: always
  type: bool
  sample: false
rollback:
  description: The armed rollback, when O(rollback_timeout) is set and the rules change (or an earlier apply awaits confirmation).
  returned: when armed
  type: dict
  contains:
    timeout:
      description: Seconds before the host restores its previous ruleset.
      type: int
    delay:
      description: Seconds between the module's reply and the load of the new ruleset.
      type: float
    status:
      description: "The host's last word on the apply: V(confirmed), V(rolled back), V(failed) with nft's message, or V(unreachable)."
      type: str
    confirmed:
      description: Whether the controller reconnected over a new connection and confirmed in time.
      type: bool
"""

import contextlib
import fcntl
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


def _rollback_files():
    return rollback.paths(rollback.ROLLBACK_DIR)


@contextlib.contextmanager
def _locked():
    """The lock the apply, rollback and confirm scripts and the guard take: table and files change together."""
    lock = _rollback_files()["lock"]
    os.makedirs(os.path.dirname(lock), mode=0o700, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _stage(module, path, content):
    """Write content to path through a temporary file in the same directory (atomic rename)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    tmp = _write(directory, content)
    try:
        module.atomic_move(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def arm_rollback(module, table, path, expected_path, live, timeout, table_changed, file_changed, ruleset, listing):
    """Save the last confirmed state, start the rollback timer, stage the new ruleset and schedule its load.

    The load runs APPLY_DELAY seconds after the module returns, so that its reply reaches the controller
    before any rule changes; the action plugin then confirms over a new connection.
    """
    files = _rollback_files()
    staged = rollback.staged_paths(path, expected_path)
    nft = module.get_bin_path("nft", required=True)
    systemd_run = module.get_bin_path("systemd-run", required=True)
    os.makedirs(os.path.dirname(files["armed"]), mode=0o700, exist_ok=True)
    pending = os.path.exists(files["armed"])
    units = [unit + suffix for unit in (rollback.APPLY_UNIT, rollback.ROLLBACK_UNIT) for suffix in (".timer", ".service")]
    module.run_command(["systemctl", "stop"] + units)
    module.run_command(["systemctl", "reset-failed"] + units)
    contents = {}
    if not pending:  # an unconfirmed earlier apply keeps the state it saved: the last confirmed one
        contents["previous-table.nft"] = rollback.previous_table(table, live[1] if live else None)
        for name, flag, source in (("previous-file.nft", "had-file", path),
                                   ("previous-expected.txt", "had-expected", expected_path)):
            saved = _read(source) if source else None
            contents[name] = saved or ""
            if saved is None and os.path.exists(files[flag]):
                os.unlink(files[flag])
            elif saved is not None:
                contents[flag] = ""
    contents.update({
        "status": rollback.PENDING + "\n",
        "apply.sh": rollback.apply_script(nft, files, staged, path, expected_path, table_changed, file_changed),
        "rollback.sh": rollback.script(nft, path, expected_path, files, staged),
        "confirm.sh": rollback.confirm_script(files),
        "armed": "",
    })
    for name, content in contents.items():
        with open(files[name], "w") as handle:
            handle.write(content)
    _stage(module, staged["ruleset"], ruleset)
    if expected_path:
        _stage(module, staged["expected"], listing)
    for unit, delay, script in ((rollback.ROLLBACK_UNIT, "%ds" % timeout, files["rollback.sh"]),
                                (rollback.APPLY_UNIT, "%dms" % (rollback.APPLY_DELAY * 1000), files["apply.sh"])):
        rc, out, err = module.run_command([systemd_run, "--unit", unit, "--on-active=%s" % delay,
                                           "--timer-property=AccuracySec=100ms", "/bin/sh", script])
        if rc != 0:
            module.run_command(["sh", "-c", rollback.disarm_command(files)])
            module.fail_json(msg="could not start the %s timer, nothing was changed: %s" % (unit, err or out))
    return dict(timeout=timeout, delay=rollback.APPLY_DELAY, pending_before=pending, cookie=files["armed"],
                unit=rollback.ROLLBACK_UNIT, confirm=rollback.confirm_command(files))


def present(module, nft, table, path, ruleset, rollback_timeout=0, expected_path=None):
    # Checked and compared from the module's temp dir: check mode must not write under /etc.
    probe = _write(module.tmpdir, ruleset)
    problem = nft.check(probe)
    if problem:
        module.fail_json(msg="nft -c rejected the ruleset, nothing was changed: %s" % problem)
    desired, desired_text = nft.desired(probe, table)
    live = nft.live(table)
    table_changed = live is None or live[0] != desired
    file_changed = _read(path) != ruleset
    expected_changed = bool(expected_path) and _read(expected_path) != desired_text
    pending = os.path.exists(_rollback_files()["armed"])
    result = dict(
        changed=table_changed or file_changed or expected_changed or pending,
        table_changed=table_changed,
        file_changed=file_changed,
        expected_changed=expected_changed,
        rollback_pending=pending,
        path=path,
        table=desired_text if table_changed else live[1],
        diff=[dict(before_header="inet %s (live)" % table, before=live[1] if live else "",
                   after_header="inet %s (desired)" % table, after=desired_text)],
    )
    if file_changed:
        result["diff"].append(dict(before_header=path, before=_read(path) or "", after_header=path, after=ruleset))
    if module.check_mode or not result["changed"]:
        return result
    if rollback_timeout and (table_changed or pending):
        # Only a rule change can cut the controller off; an earlier unconfirmed apply needs confirming too.
        result["rollback"] = arm_rollback(module, table, path, expected_path, live, rollback_timeout,
                                          table_changed, file_changed, ruleset, desired_text)
        return result
    if pending:  # protection switched off: forget the earlier unconfirmed apply rather than let it roll back
        disarm(module)
    # Staged beside the target: the file nft loads is the one renamed into place.
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    staged = _write(os.path.dirname(path), ruleset)
    try:
        with _locked():
            if table_changed:
                # One nft transaction: on failure the kernel keeps the old table untouched.
                problem = nft.apply(staged)
                if problem:
                    module.fail_json(msg="nft -f failed, the previous table is still loaded: %s" % problem, **result)
            if file_changed:
                module.atomic_move(staged, path)
            if expected_changed:
                _stage(module, expected_path, desired_text)
    finally:
        if os.path.exists(staged):
            os.unlink(staged)
    return result


def disarm(module):
    module.run_command(["sh", "-c", rollback.disarm_command(_rollback_files())])


def absent(module, nft, table, path, expected_path=None):
    live = nft.live(table)
    files = [p for p in (path, expected_path) if p and os.path.exists(p)]
    pending = os.path.exists(_rollback_files()["armed"])
    result = dict(changed=live is not None or bool(files) or pending, table_changed=live is not None,
                  file_changed=path in files, rollback_pending=pending, path=path, table="",
                  diff=dict(before=live[1] if live else "", after=""))
    if module.check_mode or not result["changed"]:
        return result
    if pending:  # a rollback firing later would bring the table back
        disarm(module)
    if live is not None:
        problem = nft.delete(table)
        if problem:
            module.fail_json(msg="nft delete table inet %s failed: %s" % (table, problem), **result)
    for name in files:
        os.unlink(name)
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            ruleset=dict(type="str"),
            table=dict(type="str", default="killswitch"),
            path=dict(type="path", default="/etc/netlock-killswitch/ruleset.nft"),
            expected_path=dict(type="path"),
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
            result = present(module, nft, params["table"], params["path"], params["ruleset"], params["rollback_timeout"],
                             params["expected_path"])
        else:
            result = absent(module, nft, params["table"], params["path"], params["expected_path"])
    except (RuntimeError, ValueError, OSError) as exc:
        module.fail_json(msg=str(exc))
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
