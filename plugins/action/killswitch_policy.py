# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate the kill switch policy and render its ruleset on the controller.

Runs entirely on the controller: hostnames are pinned here, so a host never needs DNS outside
the tunnel, and bad input fails before any host is touched.
"""

from __future__ import annotations

import socket
from dataclasses import asdict

from ansible.plugins.action import ActionBase
from ansible_collections.netlock.killswitch.plugins.module_utils.nft_render import render
from ansible_collections.netlock.killswitch.plugins.module_utils.policy import PREFIX, PolicyError, parse_policy

POLICY_OPTIONS = (
    "tunnel_interfaces", "endpoints", "endpoint_mark", "endpoint_user", "allow_lan", "lan_cidrs",
    "management_cidrs", "management_ports", "dns_servers", "allow_dhcp", "ipv6", "forward",
    "extra_outbound", "log_drops", "table", "safe_apply_timeout", "guard_enabled", "guard_interval",
)
SSH_CONNECTIONS = ("ssh", "paramiko", "paramiko_ssh", "ansible.builtin.ssh", "ansible.builtin.paramiko_ssh",
                   "ansible.netcommon.libssh")


def resolve(name):
    """Every address a name resolves to on the controller, sorted so that the pin is stable."""
    try:
        answers = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise LookupError(exc.strerror) from None
    return sorted({info[4][0] for info in answers})


def controller_address(task_vars):
    """The controller's address as the host sees it (the SSH client), or None."""
    env = (task_vars.get("ansible_facts") or {}).get("env") or {}
    for key in ("SSH_CLIENT", "SSH_CONNECTION"):
        if env.get(key):
            return env[key].split()[0]
    return None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(POLICY_OPTIONS)
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = self._task.args
        variables = {PREFIX + name: args.get(name) for name in POLICY_OPTIONS}
        if args.get("management_cidrs") is None:
            address = controller_address(task_vars)
            connection = task_vars.get("ansible_connection", "ssh")
            if address is None and connection in SSH_CONNECTIONS:
                return dict(result, failed=True, msg=(
                    "%smanagement_cidrs: None and the controller's address is unknown (no SSH_CLIENT in the "
                    "host's facts); set it so the kill switch cannot lock you out" % PREFIX))
            variables[PREFIX + "management_cidrs"] = [address] if address else []
        try:
            policy = parse_policy(variables, resolve=resolve)
        except PolicyError as exc:
            return dict(result, failed=True, msg=str(exc), problems=[str(p) for p in exc.problems])
        result.update(
            changed=False,
            ruleset=render(policy),
            digest=policy.digest(),
            table=policy.table,
            policy=_plain(asdict(policy)),
        )
        if policy.warnings:
            result["warnings"] = list(policy.warnings)
        return result


def _plain(value):
    """Addresses and tuples as strings and lists, for registered variables and JSON reports."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)
