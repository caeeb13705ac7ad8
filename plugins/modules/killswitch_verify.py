#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: killswitch_verify
short_description: Prove on a live Linux host, without taking the tunnel down, that the kill switch is in force
version_added: 1.0.0
description:
  - Checks, without changing anything, that the kill switch of O(policy) is in force on the host, and proves it
    by traffic. Fails, naming every open path, when it is not.
  - B(Rules and units.) The main rules must be loaded and carry the policy digest (the nftables table, or the
    iptables backend's chains, read as M(netlock.killswitch.killswitch_status) reads them), the boot unit must be
    enabled and, when O(guard) is set, the guard timer and the watcher active and the fence loaded (see O(fence)).
    With nftables the C(bridge) table of the same name (bridged guests) must be loaded with the digest too, and be
    absent when the policy's C(forward) is C(off).
  - B(Traffic.) On every interface outside the tunnel that is administratively up (or those named in O(interfaces)),
    for IPv4 and IPv6 where the kernel has a route to the probe address through it, four probes go to an address the
    policy does not allow (O(probe_addresses)), each bound to the interface with C(SO_BINDTODEVICE) so that routing
    cannot move it elsewhere. They are a TCP SYN to port 443, a UDP datagram to port 443, an ICMP (ICMPv6) echo
    request, and a DNS query to port 53 (for C(netlock-killswitch-verify.invalid), which never resolves). Each must be
    B(refused by the local firewall).
  - B(How a probe is judged.) The verdict is the local firewall's own answer, never a reply from the network, so no
    probe waits on anything outside the host. For a locally generated packet, netfilter runs inside the sending call;
    a drop or a reject in the output hook makes C(sendto) fail with C(EPERM) before anything reaches the device,
    and a C(sendto) that succeeds means the packet got past every local rule, which is an open path (RV(open_paths)).
    UDP, DNS and ICMP are judged by C(sendto). TCP cannot be judged by C(connect), because the kernel swallows the
    C(EPERM) of a dropped SYN and retries, so a dropped SYN and a SYN that left and met no answer both time out. So the
    SYN is first sent on a raw socket, whose C(sendto) returns the verdict; only when that is refused does a real
    C(connect) follow, bounded by O(probe_timeout), to report what a program sees (C(ECONNREFUSED) at once under the
    kill switch's C(reject with tcp reset), no answer under a drop); a C(connect) that succeeds is an open path too.
    A probe whose address the kernel cannot route through the interface (C(ENETUNREACH) and the like) never reaches
    the firewall; it is reported as not probed and is no failure.
  - B(What may leave.) Under the kill switch nothing does. Without it, each probe lets one packet past the firewall
    (for TCP the raw SYN; no C(connect) follows a SYN that got out), to a documentation address nothing answers at;
    four probes per interface and family, none retried.
  - B(The positive control.) Through every tunnel interface that is up, the same probes must pass the local firewall,
    which shows on this very host that the probes can tell a refused packet from a sent one. The DNS query goes to the
    policy's resolver of that family (C(killswitch_dns_servers)) when it has one. Where the policy refuses traffic
    through the tunnel too (IPv6 with C(killswitch_ipv6=block), DNS to an address that is not one of the resolvers),
    the probe must be refused there as well. A tunnel that is down or absent is not probed; the kill switch is meant
    to hold then. These probes do leave the host, through the tunnel.
  - The module never changes anything. It lists rules (C(nft list table), C(iptables-save)), asks systemd
    (C(systemctl is-enabled), C(is-active)), reads the guard's state file and sends the probes.
author:
  - netlock.killswitch contributors (@netlock)
options:
  policy:
    description:
      - The kill switch policy the host must enforce, as M(netlock.killswitch.killswitch_policy) returns it in
        C(policy) (the role registers it as C(killswitch_rendered)). The table name, the tunnel interfaces, the
        exceptions the probe addresses are checked against and what the tunnel must carry all come from it.
    type: dict
    required: true
  digest:
    description:
      - The policy digest the main rules (and the fence) must carry; the full SHA-256 or its first 16 hex digits.
      - When omitted, the digest of O(policy), computed as M(netlock.killswitch.killswitch_policy) does.
    type: str
  backend:
    description:
      - The firewall holding the kill switch. For V(iptables) the output chain C(<table>-out) must exist and its
        first rule carry the digest comment.
    type: str
    choices: [nftables, iptables]
    default: nftables
  boot_unit:
    description: The systemd unit that loads the ruleset at boot; it must be enabled.
    type: str
    default: netlock-killswitch.service
  guard:
    description:
      - Whether the guard must run (the role's C(killswitch_guard_enabled)), with its timer O(guard_unit) and the watcher
        O(watch_unit) active, and the fence loaded as O(fence) says.
    type: bool
    default: true
  guard_unit:
    description: The guard's systemd timer.
    type: str
    default: netlock-killswitch-guard.timer
  watch_unit:
    description: The watcher's systemd service, which reacts to ruleset changes and holds the fence.
    type: str
    default: netlock-killswitch-watch.service
  fence:
    description:
      - The role's C(killswitch_fence). V(required) the fence table O(fence_table) must be loaded (with the policy
        digest); V(auto) it must be loaded unless the watcher recorded in O(guard_state_path) that this host cannot
        hold one (Linux before 5.12, no libnftables); V(off) it is not checked.
    type: str
    choices: [auto, required, "off"]
    default: auto
  fence_table:
    description: The fence's nftables C(inet) table. When omitted, the policy's table name followed by C(_fence).
    type: str
  guard_state_path:
    description: The guard's state file, where the watcher records why a host cannot hold a fence.
    type: path
    default: /var/lib/netlock-killswitch/guard-state.json
  traffic:
    description: Whether to prove the kill switch by traffic. V(false) checks only the rules and units; no packet is sent.
    type: bool
    default: true
  probe_addresses:
    description:
      - The destinations of the probes, at most one IPv4 and one IPv6 address. The policy must not allow them (an
        endpoint, a C(killswitch_extra_outbound) exception, or a LAN range with C(killswitch_allow_lan)), or a
        probe proves nothing; the task fails naming the exception.
      - A family not given here takes the first of its defaults that the policy does not allow, from the
        documentation ranges, IPv4 V(198.51.100.1), V(203.0.113.1), V(192.0.2.1), IPv6 V(2001:db8:ffff::1),
        V(3fff:ffff::1), V(2001:db8:fffe::1); the C(probe_addresses) check says which were passed over.
      - Nothing should answer at these addresses; the verdict never depends on it.
    type: list
    elements: str
  interfaces:
    description:
      - The interfaces outside the tunnel to probe, names or C(*) wildcards (C(eth*)). A name that is not on the host
        fails the task.
      - When empty, every interface but the loopback and the policy's tunnel interfaces that is administratively up,
        carrier or not; a port of a bridge or bond is left to its master. The tunnel interfaces are always probed
        when up (the positive control).
    type: list
    elements: str
    default: []
  probe_timeout:
    description:
      - Seconds a TCP C(connect) may wait after its SYN was refused (the only wait there is), more than 0 and at most 5.
    type: float
    default: 0.5
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Read-only; it runs the same in check mode, probes included (they change nothing).
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
    details: Linux only (nftables or iptables, systemd).
notes:
  - Runs as root (C(nft list) needs C(CAP_NET_ADMIN), the probes raw sockets and C(SO_BINDTODEVICE), C(CAP_NET_RAW)).
    Needs C(nft) (or C(iptables-save)) and C(systemctl).
  - The probes are locally generated packets, so they prove the output path. Forwarded traffic (containers and VMs,
    the forward chain) is checked only as part of the rules and their digest, not by traffic.
  - A process with C(CAP_NET_RAW) can still send frames on an C(AF_PACKET) socket that no netfilter hook sees; no
    probe here tests that, and no OS-level kill switch can stop it (see the collection README).
  - Interfaces are read from C(/sys/class/net), which must belong to the host's network namespace (it does on a
    host and in a container; after C(unshare --net) remount sysfs).
seealso:
  - module: netlock.killswitch.killswitch_status
  - module: netlock.killswitch.killswitch_policy
  - module: netlock.killswitch.killswitch_firewall
"""

EXAMPLES = r"""
# The role does this with `tasks_from: verify` (roles/killswitch/tasks/verify.yml).
- name: Render the policy on the controller
  netlock.killswitch.killswitch_policy:
    tunnel_interfaces: [wg0]
    endpoints:
      - {address: vpn.example.net, port: 51820, protocol: udp}
    endpoint_mark: 51820
    dns_servers: [10.64.0.1]
  register: killswitch_rendered

- name: Prove that the kill switch is in force, by rules, units and traffic
  netlock.killswitch.killswitch_verify:
    policy: "{{ killswitch_rendered.policy }}"
    backend: "{{ killswitch_rendered.backend }}"
  register: killswitch_verified

- name: Probe only the uplinks, with addresses of our own, and report instead of failing
  netlock.killswitch.killswitch_verify:
    policy: "{{ killswitch_rendered.policy }}"
    interfaces: ["eth*", wlan0]
    probe_addresses: [203.0.113.77, "2001:db8:77::1"]
  register: killswitch_verified
  failed_when: false

- name: Show what is open
  ansible.builtin.debug:
    msg: "{{ killswitch_verified.open_paths | map(attribute='path') | list }}"
  when: killswitch_verified.open_paths | length > 0
"""

RETURN = r"""
ok:
  description: Whether every check passed.
  returned: always
  type: bool
msg:
  description: The verdict in one line; on failure every failed check's detail, each open path named.
  returned: always
  type: str
  sample: "eth0 IPv4 UDP to 198.51.100.1:443 was sent: the kill switch does not block it (sendto() succeeded)"
checks:
  description:
    - Every check, in order, each with its verdict. C(table), C(boot_unit), C(guard), C(watcher), C(fence),
      C(probe_addresses), then one per probe (named as in RV(open_paths), with C( (tunnel)) for the positive
      control) and one per interface or family that was not probed, saying why.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: What was checked.
      type: str
      sample: eth0 IPv6 TCP to [2001:db8:ffff::1]:443
    ok:
      description: Whether it is as the kill switch needs it.
      type: bool
    detail:
      description: What was found.
      type: str
      sample: "refused by the local firewall: a SYN's sendto() got EPERM; connect() got ECONNREFUSED after 0.1 ms"
open_paths:
  description: Every probe that should have been refused and got past the local firewall. Empty when the kill switch holds.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The probe in words.
      type: str
      sample: eth0 IPv4 UDP to 198.51.100.1:443
    interface:
      description: The interface the probe was bound to.
      type: str
    family:
      description: 4 or 6.
      type: int
    protocol:
      description: C(tcp), C(udp), C(icmp) or C(dns).
      type: str
    target:
      description: The destination address.
      type: str
    port:
      description: The destination port; V(null) for ICMP.
      type: int
    outcome:
      description: C(sent) (the sending call succeeded) or C(connected) (a TCP connection was made).
      type: str
    detail:
      description: The sending call's result.
      type: str
probes:
  description: Every probe that ran, outside the tunnel and through it.
  returned: always
  type: list
  elements: dict
  contains:
    interface:
      description: The interface the probe was bound to.
      type: str
    tunnel:
      description: Whether that is a tunnel interface (the positive control).
      type: bool
    family:
      description: 4 or 6.
      type: int
    protocol:
      description: C(tcp), C(udp), C(icmp) or C(dns).
      type: str
    target:
      description: The destination address.
      type: str
    port:
      description: The destination port; V(null) for ICMP.
      type: int
    expected:
      description: C(refused) or C(passes), what the policy says.
      type: str
    why:
      description: Why the policy says so.
      type: str
    outcome:
      description: C(refused) (by the local firewall), C(sent), C(connected), or C(unroutable) (no route, not probed).
      type: str
    errno:
      description: The sending call's error number, V(null) when it succeeded.
      type: int
    detail:
      description: The sending call's result in words.
      type: str
    ok:
      description: Whether the outcome is the expected one.
      type: bool
probe_addresses:
  description: The addresses probed.
  returned: always
  type: dict
  sample: {ipv4: 198.51.100.1, ipv6: "2001:db8:ffff::1"}
digest:
  description: The policy digest (first 16 hex digits) the rules had to carry.
  returned: always
  type: str
  sample: 3f2a9c0d11b4e7a8
table:
  description: The main rules as found, as M(netlock.killswitch.killswitch_status) returns them.
  returned: always
  type: dict
  contains:
    present:
      description: Whether the table (or the output chain) is loaded.
      type: bool
    digest:
      description: The digest prefix in its comment, or V(null).
      type: str
    matches:
      description: Whether that is the expected digest.
      type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.netlock.killswitch.plugins.module_utils.probe import Prober, ProbeError
from ansible_collections.netlock.killswitch.plugins.module_utils.verify import (
    ARGUMENT_SPEC, MAX_PROBE_TIMEOUT, VerifyError, verify)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    if not 0 < params["probe_timeout"] <= MAX_PROBE_TIMEOUT:
        module.fail_json(msg="probe_timeout: %s is not more than 0 and at most %s seconds"
                         % (params["probe_timeout"], MAX_PROBE_TIMEOUT))
    iptables = params["backend"] == "iptables"
    rules_tool = module.get_bin_path("iptables-save" if iptables else "nft", required=True)
    try:
        result = verify(
            lambda argv: module.run_command(list(argv)),
            Prober(params["probe_timeout"]) if params["traffic"] else None,
            nft=rules_tool,
            systemctl=module.get_bin_path("systemctl", required=True),
            policy=params["policy"],
            fence_nft=module.get_bin_path("nft") if iptables else rules_tool,
            backend=params["backend"],
            digest=params["digest"],
            boot_unit=params["boot_unit"],
            guard=params["guard"],
            guard_unit=params["guard_unit"],
            watch_unit=params["watch_unit"],
            fence=params["fence"],
            fence_table=params["fence_table"],
            guard_state_path=params["guard_state_path"],
            traffic=params["traffic"],
            probe_addresses=params["probe_addresses"],
            interfaces=params["interfaces"],
        )
    except (VerifyError, ProbeError, RuntimeError) as exc:
        module.fail_json(msg=str(exc))
    for warning in result.pop("warnings"):
        module.warn(warning)
    if not result["ok"]:
        module.fail_json(changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
