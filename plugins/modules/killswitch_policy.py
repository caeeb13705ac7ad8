#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: killswitch_policy
short_description: Validate a kill switch policy and render its ruleset for the host's firewall on the controller
version_added: 1.0.0
description:
  - Parses the kill switch options into one normalized policy, fails with a message naming every bad
    variable and value, and renders the payload of the host's backend (nftables or iptables) for
    M(netlock.killswitch.killswitch_firewall), or the Windows Firewall document for
    M(netlock.killswitch.killswitch_windows_firewall).
  - Runs on the controller (an action plugin). It changes nothing on the host; it only asks it which firewall
    works (V(auto)) and, over SSH, where the connection comes from.
  - A Windows host (C(ansible_os_family) Windows, a C(winrm) or C(psrp) connection, or a PowerShell shell) gets the
    V(windows) backend without being asked anything; the management source is the controller's own address
    toward C(ansible_host) (a UDP socket connected to it; nothing is sent) and the port is the connection's
    (C(ansible_port), else 5986 or 5985 by the WinRM scheme, 22 over SSH).
  - Hostnames in O(endpoints) are resolved here and pinned as addresses, so the host never needs DNS
    outside the tunnel; a name that does not resolve fails the task.
  - The options mirror the role variables of the same name with the C(killswitch_) prefix; see the
    role's C(meta/argument_specs.yml) for the full meaning of each.
author:
  - netlock.killswitch contributors (@netlock)
options:
  tunnel_interfaces:
    description: Tunnel interface names or nft wildcards (C(wg0), C(tun*)); traffic may leave only through these.
    type: list
    elements: str
    required: true
  endpoints:
    description:
      - VPN servers reachable outside the tunnel, each C({address, port, protocol}).
      - C(address) is an IP, a CIDR or a hostname; C(protocol) is C(udp) (default) or C(tcp).
    type: list
    elements: dict
    required: true
  endpoint_mark:
    description: When set, endpoint traffic must also carry this fwmark.
    type: int
  endpoint_user:
    description: When set, endpoint traffic must also come from this user (name or uid).
    type: str
  endpoint_program:
    description:
      - When set, endpoint traffic must also come from this program (absolute path).
      - Only backends that can match a program enforce it; on the others the task fails naming the variable,
        the host and the backend.
    type: str
  backend:
    description:
      - The firewall to render for. V(auto) asks the host (with become) whether C(nft) works, else whether
        C(iptables-restore) exists, else picks V(nftables); on a Windows host V(auto) is V(windows) (Windows
        Firewall), and a Linux backend there fails the task.
    type: str
    choices: [auto, nftables, iptables, windows]
    default: auto
  allow_lan:
    description: Allow traffic to O(lan_cidrs) outside the tunnel.
    type: bool
    default: false
  lan_cidrs:
    description: The ranges that count as LAN. Defaults to RFC 1918, 169.254.0.0/16, fe80::/10 and fc00::/7.
    type: list
    elements: str
  management_cidrs:
    description:
      - Sources that may connect to O(management_ports) outside the tunnel.
      - When omitted, the controller's address as the host sees it. Over C(ssh) and C(paramiko) the action
        reads C(SSH_CONNECTION) over the connection itself, without become (sudo and su drop it from the
        environment), falling back to gathered facts; the task fails if it is still unknown rather than
        lock the operator out. Other connections (local, docker) get no management exception.
    type: list
    elements: str
  management_ports:
    description: Inbound TCP ports kept open to O(management_cidrs).
    type: list
    elements: int
    default: [22]
  dns_servers:
    description: Resolvers reachable only through the tunnel; all other DNS (53 and 853) is refused. Empty allows DNS to any resolver through the tunnel.
    type: list
    elements: str
    default: []
  allow_dhcp:
    description: Allow DHCPv4/DHCPv6 client traffic and link-local neighbour discovery.
    type: bool
    default: true
  ipv6:
    description: C(block) allows no IPv6 beyond neighbour discovery; C(tunnel) allows IPv6 through the tunnel only.
    type: str
    choices: [block, tunnel]
    default: block
  forward:
    description: C(tunnel) lets forwarded traffic leave through the tunnel only; C(block) drops all forwarding; C(off) leaves it alone.
    type: str
    choices: [block, tunnel, 'off']
    default: tunnel
  extra_outbound:
    description: Explicit exceptions outside the tunnel, each C({cidr, protocol, port}); C(protocol) is tcp, udp, icmp or any. They never open DNS.
    type: list
    elements: dict
    default: []
  app_exceptions:
    description:
      - Per-app exceptions outside the tunnel (nftables only), each C({service or cgroup, cidr, protocol, port}).
        Only the processes of that systemd service or cgroup v2 reach that destination. See the role's C(killswitch_app_exceptions).
    type: list
    elements: dict
    default: []
  log_drops:
    description: Log dropped packets, rate-limited.
    type: bool
    default: false
  table:
    description: Name of the dedicated C(inet) table (nftables), or the prefix of our chains (iptables).
    type: str
    default: killswitch
  safe_apply_timeout:
    description: Validated here; see the role.
    type: int
  guard_enabled:
    description: Validated here; see the role.
    type: bool
  guard_interval:
    description: Validated here; see the role.
    type: int
  fence:
    description:
      - V(off) returns no RV(fence); V(auto) returns none, with a warning, when nftables cannot express the policy;
        V(required) fails then. See the role's C(killswitch_fence).
    type: str
    choices: [auto, required, "off"]
    default: auto
  metrics_path:
    description: Validated here; see the role.
    type: str
    default: /var/lib/prometheus/node-exporter/netlock_killswitch.prom
  windows_exclusive:
    description:
      - Validated here; see the role. On Windows, V(true) disables every enabled third-party allow rule that opens
        an outbound path outside the tunnel (recorded, and enabled again by C(killswitch_state=absent)).
    type: bool
    default: false
  windows_state_dir:
    description: Validated here (an absolute Windows directory); see the role.
    type: str
    default: C:\ProgramData\netlock-killswitch
  allow_lockout:
    description:
      - Over SSH the task fails when the rendered rules would not admit the live management connection
        (its source in O(management_cidrs) and its port in O(management_ports)). V(true) renders such a
        policy anyway, with a warning; the safe-apply rollback then restores the host.
    type: bool
    default: false
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Changes nothing in any mode; it runs the same in check mode so later tasks can diff.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
  async:
    description: Supports being used with the C(async) keyword.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: all
    details: Runs on the controller.
seealso:
  - module: netlock.killswitch.killswitch_firewall
"""

EXAMPLES = r"""
- name: Render the kill switch for a WireGuard client
  netlock.killswitch.killswitch_policy:
    tunnel_interfaces: [wg0]
    endpoints:
      - {address: vpn.example.net, port: 51820, protocol: udp}
    endpoint_mark: 51820
    dns_servers: [10.64.0.1]
  register: killswitch_rendered
"""

RETURN = r"""
backend:
  description: The firewall the payload was rendered for (V(auto) resolved on the host).
  returned: success
  type: str
  sample: nftables
payload_suffix:
  description: The file extension the role gives the persisted payload.
  returned: success
  type: str
  sample: .nft
ruleset:
  description:
    - The payload for the host's backend; the same policy always renders the same bytes.
    - For nftables, a complete C(nft -f) file; for iptables, a C(sh) script holding the
      C(iptables-restore) lines of both families (C(sh FILE load|check|delete|list)); for windows, the JSON
      text of RV(document).
  returned: success
  type: str
document:
  description:
    - The Windows Firewall document (the RV(ruleset) JSON, parsed) for M(netlock.killswitch.killswitch_windows_firewall)
      - the rule group, the profiles' default Block, the allow rules with their digests, the tunnel interface patterns
      and what Windows cannot express.
  returned: when the backend is windows
  type: dict
digest:
  description: SHA-256 of the normalized policy.
  returned: success
  type: str
fence:
  description:
    - The fence payload (C(nft -f) text of the owned table C(inet <table>_fence)), the same rules for every backend;
      empty when O(fence=off), or with O(fence=auto) when nftables cannot express the policy.
  returned: success
  type: str
fence_table:
  description: Name of the fence table.
  returned: success
  type: str
table:
  description: Name of the C(inet) table.
  returned: success
  type: str
  sample: killswitch
policy:
  description: The normalized policy, with hostnames pinned to addresses.
  returned: success
  type: dict
app_services:
  description: The systemd services with app exceptions (O(app_exceptions)); the role gives each an C(ExecStartPre) drop-in.
  returned: success
  type: list
  elements: str
  sample: [backup.service]
management_path:
  description:
    - The live management connection as the host sees it, over SSH; for a Windows host the controller's own
      address toward it and the connection's port.
  returned: over ssh, paramiko, winrm and psrp connections
  type: dict
  contains:
    source:
      description: The controller's address (or its jump host's) as the host sees it (Windows, as the controller sends from).
      type: str
      sample: 198.18.30.1
    port:
      description: The host's port the connection arrives on.
      type: int
      sample: 22
problems:
  description: Every rejected variable and value.
  returned: failure
  type: list
  elements: str
"""
