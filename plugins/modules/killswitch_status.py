#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: killswitch_status
short_description: Report whether the kill switch is in force on a Linux host
version_added: 1.0.0
description:
  - Reads, without changing anything, whether the kill switch is in force on the host, and returns one
    status shape used by the staged rollout's post-check (C(playbooks/rollout.yml)).
  - The table must be loaded and carry the policy digest in its comment (C(netlock.killswitch) followed
    by the first 16 hex digits of the digest that M(netlock.killswitch.killswitch_policy) returns),
    the boot unit must be enabled, the guard timer active (when O(guard) is set), and traffic must
    flow through every tunnel interface that is up, tested by echo requests to O(traffic_target)
    bound to that interface.
  - With O(state=absent) the verdict is reversed, nothing may be left (no table, no enabled boot unit, no active guard).
  - The module never fails because of what it finds; it returns RV(ok) and RV(problems), so a playbook
    decides with C(failed_when).
author:
  - netlock.killswitch contributors (@netlock)
options:
  state:
    description:
      - V(present) checks that the kill switch is in force; V(absent) checks that nothing of it is left.
    type: str
    choices: [present, absent]
    default: present
  backend:
    description:
      - The firewall holding the kill switch. For V(iptables) the output chain C(<table>-out) must exist and its
        first rule carry the digest comment.
    type: str
    choices: [nftables, iptables]
    default: nftables
  table:
    description: Name of the kill switch C(inet) table (nftables), or the prefix of its chains (iptables).
    type: str
    default: killswitch
  digest:
    description:
      - The policy digest the table must carry (the C(digest) of M(netlock.killswitch.killswitch_policy));
        the full SHA-256 or its first 16 hex digits.
      - When omitted, RV(table.matches) is V(null) and only the table's presence counts.
    type: str
  boot_unit:
    description: The systemd unit that loads the ruleset at boot.
    type: str
    default: netlock-killswitch.service
  guard:
    description: Whether the guard timer must be active (the role's C(killswitch_guard_enabled)).
    type: bool
    default: true
  guard_unit:
    description: The guard's systemd timer.
    type: str
    default: netlock-killswitch-guard.timer
  tunnel_interfaces:
    description:
      - Tunnel interface names or nft wildcard patterns (C(wg0), C(tun*)), as in the role's
        C(killswitch_tunnel_interfaces).
      - Each interface present that is up is tested for traffic; a named interface that is absent is
        listed as down. A tunnel that is down is no problem, the kill switch is meant to hold then.
    type: list
    elements: str
    default: []
  traffic_target:
    description:
      - An address reachable through the tunnel (typically the resolver inside it). Three echo requests
        are sent bound to each tunnel interface that is up; no reply is a problem.
      - When omitted, or when C(ping) is not installed, traffic is V(not checked).
    type: str
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Read-only; it runs the same in check mode.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - Runs as root (C(nft list) needs C(CAP_NET_ADMIN)). Needs C(nft) and C(systemctl); C(ping) for the traffic test.
seealso:
  - module: netlock.killswitch.killswitch_policy
  - module: netlock.killswitch.killswitch_firewall
"""

EXAMPLES = r"""
- name: Check that the kill switch is in force and the tunnel carries traffic
  netlock.killswitch.killswitch_status:
    digest: "{{ killswitch_rendered.digest }}"
    tunnel_interfaces: [wg0]
    traffic_target: 10.64.0.1
  register: killswitch_postcheck
  failed_when: not killswitch_postcheck.ok

- name: Check that a removal left nothing behind
  netlock.killswitch.killswitch_status:
    state: absent
  register: killswitch_gone
  failed_when: not killswitch_gone.ok
"""

RETURN = r"""
table:
  description: The kill switch table.
  returned: always
  type: dict
  contains:
    present:
      description: Whether the table is loaded.
      type: bool
    digest:
      description: The digest prefix in the table's comment, or V(null) when there is none.
      type: str
      sample: 3f2a9c0d11b4e7a8
    matches:
      description: Whether that digest is the expected one; V(null) when O(digest) is not given.
      type: bool
bridge_table:
  description:
    - The C(bridge) table of the same name, which filters bridged frames (none with C(killswitch_forward=off)).
    - A problem when it carries another policy's digest, or is left after the kill switch was removed.
  returned: with O(backend=nftables)
  type: dict
  contains:
    present:
      description: Whether the table is loaded.
      type: bool
    digest:
      description: The digest prefix in the table's comment, or V(null) when there is none.
      type: str
    matches:
      description: Whether that digest is the expected one; V(null) when O(digest) is not given.
      type: bool
boot_unit:
  description: The boot unit.
  returned: always
  type: dict
  contains:
    name:
      description: Unit name.
      type: str
    enabled:
      description: Whether C(systemctl is-enabled) says C(enabled).
      type: bool
guard:
  description: The guard timer.
  returned: always
  type: dict
  contains:
    name:
      description: Unit name.
      type: str
    active:
      description: Whether C(systemctl is-active) says C(active).
      type: bool
tunnels:
  description: Each tunnel interface named by O(tunnel_interfaces).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Interface name.
      type: str
    up:
      description: Whether it is up (IFF_UP and not without carrier).
      type: bool
    traffic:
      description: V(ok) (a reply came back), V(failed) (none did) or V(not checked) (down, or no target).
      type: str
    target:
      description: The address probed, when the interface is up.
      type: str
ok:
  description: Whether the kill switch is in force (or, with O(state=absent), entirely removed).
  returned: always
  type: bool
problems:
  description: Every reason RV(ok) is false.
  returned: always
  type: list
  elements: str
  sample: ["netlock-killswitch-guard.timer is not active"]
msg:
  description: The verdict in one line.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.netlock.killswitch.plugins.module_utils.status import ARGUMENT_SPEC, status


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
    )
    params = module.params
    try:
        result = status(
            lambda argv: module.run_command(list(argv)),
            nft=module.get_bin_path("iptables-save" if params["backend"] == "iptables" else "nft", required=True),
            backend=params["backend"],
            systemctl=module.get_bin_path("systemctl", required=True),
            ping=module.get_bin_path("ping"),
            state=params["state"],
            table=params["table"],
            digest=params["digest"],
            boot_unit=params["boot_unit"],
            guard=params["guard"],
            guard_unit=params["guard_unit"],
            tunnel_interfaces=params["tunnel_interfaces"],
            traffic_target=params["traffic_target"],
        )
    except RuntimeError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
