#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: killswitch_firewall
short_description: Converge the kill switch rules on a Linux host (nftables or iptables)
version_added: 1.0.0
description:
  - Loads a kill switch payload rendered on the controller for the host's backend (see
    M(netlock.killswitch.killswitch_policy)) and persists it under C(/etc) for the boot unit and the guard.
  - "C(nftables): one dedicated C(inet) table, and the C(bridge) table of the same name when the ruleset has one (bridged guests),
    replaced atomically by a single C(nft -f) transaction; compared, listed for the guard and removed together."
  - "C(iptables): our own chains, jumped to first from C(INPUT), C(OUTPUT) and C(FORWARD), loaded by one
    C(iptables-restore --noflush) transaction per family (IPv4, then IPv6); rules of other tools are left
    alone. Works with iptables-nft and iptables-legacy, whichever the host's alternatives select."
  - The payload is checked (C(nft -c), C(iptables-restore --test)) before anything changes; for nftables the
    load in a private network namespace below is that check (it runs the full C(nft -f)).
  - The live rules are compared with the desired ones as the kernel lists them (the desired side is loaded
    in a private network namespace and listed back), so an unchanged policy reports C(changed=false) and
    rules someone edited by hand, or a jump someone moved, are put back.
  - Formerly C(killswitch_nftables), which still works as a redirect.
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
  backend:
    description:
      - The firewall the payload was rendered for (the C(backend) that M(netlock.killswitch.killswitch_policy)
        returns).
    type: str
    choices: [nftables, iptables]
    default: nftables
  table:
    description:
      - Name of the C(inet) table (nftables), or the prefix of our chains (iptables).
    type: str
    default: killswitch
  endpoint_user:
    description:
      - The user endpoint traffic must come from (C(killswitch_endpoint_user)); checked on the host before
        anything changes, since a user that does not exist makes the firewall refuse the whole payload.
    type: str
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
      - Beside it, C(<expected_path>.sha256) records the digests of the ruleset and of the listing the kernel made
        of it. When that record, the persisted file and this listing all match O(ruleset), and the live rules list
        exactly as this listing, the run is a no-op after one listing of the live rules (no check, no load in a
        private namespace); anything else, drift included, takes the full comparison.
    type: path
  rollback_timeout:
    description:
      - Seconds the host waits, after a rule change, for the controller to reconnect and confirm; 0 disables.
      - Before applying, the module saves the live rules, the persisted file and the expected listing of the
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
  netlock.killswitch.killswitch_firewall:
    ruleset: "{{ killswitch_rendered.ruleset }}"

- name: Remove the kill switch table and file
  netlock.killswitch.killswitch_firewall:
    state: absent
"""

RETURN = r"""
backend:
  description: The firewall the module converged.
  returned: always
  type: str
  sample: nftables
commands:
  description: Shell commands for the role's boot unit and guard, from the backend's applier.
  returned: when O(state=present)
  type: dict
  contains:
    load:
      description: Loads the persisted ruleset (O(path)).
      type: str
      sample: /usr/sbin/nft -f /etc/netlock-killswitch/ruleset.nft
    list:
      description: Prints the live rules as the module and the guard compare them (counter values removed).
      type: str
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
import pwd
import socket
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.netlock.killswitch.plugins.module_utils import applied, rollback
from ansible_collections.netlock.killswitch.plugins.module_utils.firewall import Rejected


_read = applied.read_text


def _write(directory, content):
    fd, tmp = tempfile.mkstemp(prefix=".ruleset-", dir=directory)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.chmod(tmp, 0o644)
    return tmp


_rollback_files = applied.rollback_files


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


def arm_rollback(module, firewall, table, path, expected_path, live, timeout, table_changed, file_changed, ruleset,
                 listing):
    """Save the last confirmed state, start the rollback timer, stage the new ruleset and schedule its load.

    The load runs APPLY_DELAY seconds after the module returns, so that its reply reaches the controller
    before any rule changes; the action plugin then confirms over a new connection.
    """
    files = _rollback_files()
    staged = rollback.staged_paths(path, expected_path)
    systemd_run = module.get_bin_path("systemd-run", required=True)
    os.makedirs(os.path.dirname(files["armed"]), mode=0o700, exist_ok=True)
    pending = os.path.exists(files["armed"])
    units = [unit + suffix for unit in (rollback.APPLY_UNIT, rollback.ROLLBACK_UNIT) for suffix in (".timer", ".service")]
    module.run_command(["systemctl", "stop"] + units)
    module.run_command(["systemctl", "reset-failed"] + units)
    contents = {}
    if not pending:  # an unconfirmed earlier apply keeps the state it saved: the last confirmed one
        contents["previous-rules"] = firewall.previous_payload(table, live)
        for name, flag, source in (("previous-file", "had-file", path),
                                   ("previous-expected.txt", "had-expected", expected_path)):
            saved = _read(source) if source else None
            contents[name] = saved or ""
            if saved is None and os.path.exists(files[flag]):
                os.unlink(files[flag])
            elif saved is not None:
                contents[flag] = ""
    contents.update({
        "status": rollback.PENDING + "\n",
        "apply.sh": rollback.apply_script(rollback.command(firewall.load_argv(staged["ruleset"])), files, staged,
                                          path, expected_path, table_changed, file_changed),
        "rollback.sh": rollback.script(rollback.command(firewall.load_argv(files["previous-rules"])), path,
                                       expected_path, files, staged),
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


def _result(firewall, table, path, live_text, desired_text, changes, pending):
    table_changed, file_changed, expected_changed = changes
    return dict(
        changed=table_changed or file_changed or expected_changed or pending,
        table_changed=table_changed,
        file_changed=file_changed,
        expected_changed=expected_changed,
        rollback_pending=pending,
        path=path,
        table=desired_text if table_changed else live_text,
        diff=[dict(before_header="%s %s (live)" % (firewall.name, table), before=live_text or "",
                   after_header="%s %s (desired)" % (firewall.name, table), after=desired_text)],
        commands=applied.commands(firewall, table, path),
    )


def present(module, firewall, table, path, ruleset, rollback_timeout=0, expected_path=None):
    pending = applied.rollback_pending()
    if not pending:
        live_text = applied.in_force(firewall, table, path, applied.sha256_text(ruleset), expected_path)
        if live_text is not None:
            return _result(firewall, table, path, live_text, live_text, (False, False, False), False)
    # Checked and compared from the module's temp dir: check mode must not write under /etc.
    probe = _write(module.tmpdir, ruleset)
    problem = None if firewall.desired_checks else firewall.check(probe)
    if problem:
        module.fail_json(msg="the %s check rejected the ruleset, nothing was changed: %s" % (firewall.name, problem))
    try:
        desired, desired_text = firewall.desired(probe, table)
    except Rejected as exc:
        module.fail_json(msg="the %s check rejected the ruleset, nothing was changed: %s" % (firewall.name, exc))
    live = firewall.live(table)
    table_changed = live is None or live[0] != desired
    file_changed = _read(path) != ruleset
    expected_changed = bool(expected_path) and _read(expected_path) != desired_text
    result = _result(firewall, table, path, live[1] if live else None, desired_text,
                     (table_changed, file_changed, expected_changed), pending)
    if file_changed:
        result["diff"].append(dict(before_header=path, before=_read(path) or "", after_header=path, after=ruleset))
    if module.check_mode:
        return result
    record = applied.applied_record(applied.sha256_text(ruleset), desired_text) if expected_path else None
    if record and _read(applied.applied_record_path(expected_path)) != record:
        # A fact whatever happens next (apply, rollback, failure): this ruleset lists as desired_text.
        _stage(module, applied.applied_record_path(expected_path), record)
    if not result["changed"]:
        return result
    if rollback_timeout and (table_changed or pending):
        # Only a rule change can cut the controller off; an earlier unconfirmed apply needs confirming too.
        result["rollback"] = arm_rollback(module, firewall, table, path, expected_path, live, rollback_timeout,
                                          table_changed, file_changed, ruleset, desired_text)
        return result
    if pending:  # protection switched off: forget the earlier unconfirmed apply rather than let it roll back
        disarm(module)
    # Staged beside the target: the file the firewall loads is the one renamed into place.
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    staged = _write(os.path.dirname(path), ruleset)
    try:
        with _locked():
            if table_changed:
                # One transaction per table: on failure the kernel keeps the old rules untouched.
                problem = firewall.apply(staged)
                if problem:
                    module.fail_json(msg="loading the %s ruleset failed, the previous rules are still loaded: %s"
                                     % (firewall.name, problem), **result)
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


def absent(module, firewall, table, path, expected_path=None):
    live, files = applied.leftovers(firewall, table, path, expected_path)
    pending = applied.rollback_pending()
    result = dict(changed=live is not None or bool(files) or pending, table_changed=live is not None,
                  file_changed=path in files, rollback_pending=pending, path=path, table="",
                  diff=dict(before=live[1] if live else "", after=""))
    if module.check_mode or not result["changed"]:
        return result
    if pending:  # a rollback firing later would bring the table back
        disarm(module)
    if live is not None:
        problem = firewall.delete(table)
        if problem:
            module.fail_json(msg="removing the %s rules %s failed: %s" % (firewall.name, table, problem), **result)
    for name in files:
        os.unlink(name)
    return result


def check_user(module, user):
    """A user the firewall cannot resolve makes it refuse the whole payload: say so before anything changes."""
    if user is None or user.isdigit():
        return
    try:
        pwd.getpwnam(user)
    except KeyError:
        module.fail_json(msg="killswitch_endpoint_user: %r is not a user on %s; the %s rules could not match it, "
                             "nothing was changed" % (user, socket.gethostname(), module.params["backend"]))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            backend=dict(type="str", choices=["nftables", "iptables"], default="nftables"),
            ruleset=dict(type="str"),
            table=dict(type="str", default="killswitch"),
            path=dict(type="path", default="/etc/netlock-killswitch/ruleset.nft"),
            expected_path=dict(type="path"),
            rollback_timeout=dict(type="int", default=0),
            confirm=dict(type="bool", default=True),
            endpoint_user=dict(type="str"),
        ),
        required_if=[("state", "present", ["ruleset"])],
        supports_check_mode=True,
    )
    params = module.params
    present_state = params["state"] == "present"
    firewall = applied.firewall_for(module, params["backend"], required=present_state)
    try:
        if present_state:
            check_user(module, params["endpoint_user"])
            result = present(module, firewall, params["table"], params["path"], params["ruleset"],
                             params["rollback_timeout"], params["expected_path"])
        else:
            result = absent(module, firewall, params["table"], params["path"], params["expected_path"])
    except (RuntimeError, ValueError, OSError) as exc:
        module.fail_json(msg=str(exc))
    result["backend"] = params["backend"]
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
