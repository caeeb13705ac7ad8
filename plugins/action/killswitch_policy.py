# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate the kill switch policy and render its ruleset on the controller.

Runs on the controller: hostnames are pinned here, so a host never needs DNS outside the tunnel,
and bad input fails before any host is touched.  Over SSH it asks the host, over the connection
itself and without become (sudo and su drop ``SSH_*``), which address and port the controller's
connection comes from: that source is the default management source, and a policy that would cut
it is refused unless ``allow_lockout`` is set.

A Windows host (``ansible_os_family`` Windows, a winrm or psrp connection, or a PowerShell shell) gets the
``windows`` backend and is never sent a POSIX command: the management source is the controller's own
address toward the host (a UDP socket connected to it, which sends nothing) and the port is the
connection's (``ansible_winrm_port`` or ``ansible_psrp_port``, then ``ansible_port``, else 5986 or 5985 by the
WinRM scheme or PSRP protocol, 22 over SSH).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.netlock.killswitch.plugins.plugin_utils import backends, render_nftables
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import DEFAULTS, PREFIX, PolicyError, parse_policy

display = Display()

# The role variables without the prefix (policy.DEFAULTS is the one list); the state is the role's business.
POLICY_OPTIONS = tuple(name for name in DEFAULTS if name != "state")
SSH_CONNECTIONS = ("ssh", "paramiko", "paramiko_ssh", "ansible.builtin.ssh", "ansible.builtin.paramiko_ssh",
                   "ansible.netcommon.libssh", "libssh")
WINRM_CONNECTIONS = ("winrm", "ansible.builtin.winrm")
PSRP_CONNECTIONS = ("psrp", "ansible.builtin.psrp")
WINDOWS_CONNECTIONS = WINRM_CONNECTIONS + PSRP_CONNECTIONS
WINRM_PORTS = {"http": 5985, "https": 5986}
SSH_PORT = 22
NO_FENCE_ON_WINDOWS = ("%sfence: Windows has no fence (no second firewall under Windows Firewall); the scheduled-task "
                       "guard re-asserts the rule group" % PREFIX)
# Read over the connection itself and without become: sudo and su reset the environment.
SSH_CONNECTION_PROBE = "echo \"${SSH_CONNECTION:-}\""
# killswitch_backend auto: nftables where nft works (needs root, so with become), else iptables; a host with
# neither gets nftables, which the role installs.
BACKEND_PROBE = ("if command -v nft >/dev/null 2>&1 && nft list tables >/dev/null 2>&1; then echo nftables; "
                 "elif command -v iptables-restore >/dev/null 2>&1; then echo iptables; else echo nftables; fi")


@dataclass(frozen=True)
class ManagementPath:
    """The live management connection as the host sees it: who connects, to which port."""

    source: str
    port: int

    @classmethod
    def parse(cls, text):
        """From ``SSH_CONNECTION`` ("client port server port") or ``SSH_CLIENT`` ("client port server-port")."""
        fields = (text or "").split()
        if len(fields) not in (3, 4):
            return None
        try:
            ipaddress.ip_address(fields[0])
            return cls(fields[0], int(fields[-1]))
        except ValueError:
            return None


def resolve(name):
    """Every address a name resolves to on the controller, sorted so that the pin is stable."""
    try:
        answers = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise LookupError(exc.strerror) from None
    return sorted({info[4][0] for info in answers})


def path_from_facts(task_vars):
    """The management path from gathered facts (only present when facts were gathered without become)."""
    env = (task_vars.get("ansible_facts") or {}).get("env") or {}
    for key in ("SSH_CLIENT", "SSH_CONNECTION"):
        path = ManagementPath.parse(env.get(key))
        if path:
            return path
    return None


def controller_address(task_vars):
    """The controller's address as the host sees it in gathered facts, or None."""
    path = path_from_facts(task_vars)
    return path.source if path else None


def source_toward(host):
    """The controller's own address on the route to ``host``: a UDP socket connected to it (nothing is sent).

    None when the name does not resolve or no route leads there.  Behind NAT the host sees another address;
    set killswitch_management_cidrs there."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
    except (socket.gaierror, UnicodeError, TypeError):
        return None
    for family, _kind, _proto, _name, address in infos:
        probe = socket.socket(family, socket.SOCK_DGRAM)
        try:
            probe.connect((address[0], 9) + tuple(address[2:]))
            return probe.getsockname()[0].split("%", 1)[0]
        except OSError:
            continue
        finally:
            probe.close()
    return None


def connection_port(task_vars, connection):
    """The host's port the connection arrives on, as the connection plugin reads it: its own variable
    (ansible_winrm_port, ansible_psrp_port, ansible_ssh_port) over ansible_port, else its default."""
    if connection in WINRM_CONNECTIONS:
        own = "ansible_winrm_port"
    elif connection in PSRP_CONNECTIONS:
        own = "ansible_psrp_port"
    else:
        own = "ansible_ssh_port"
    for key in (own, "ansible_port"):
        value = task_vars.get(key)
        if value not in (None, ""):
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    if connection in WINRM_CONNECTIONS:
        return WINRM_PORTS.get(str(task_vars.get("ansible_winrm_scheme") or "https").lower())
    if connection in PSRP_CONNECTIONS:
        return WINRM_PORTS.get(str(task_vars.get("ansible_psrp_protocol") or "https").lower())
    return SSH_PORT


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(POLICY_OPTIONS)

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = self._task.args
        variables = {PREFIX + name: args.get(name) for name in POLICY_OPTIONS}
        connection = self._connection_name(task_vars)
        windows = self._is_windows(task_vars, connection)
        remote = connection in SSH_CONNECTIONS or connection in WINDOWS_CONNECTIONS
        if windows:
            path = self._windows_management_path(task_vars, connection) if remote else None
        else:
            path = self._management_path(task_vars) if remote else None
        if args.get("management_cidrs") is None:
            if remote and path is None:
                how = ("from a socket toward ansible_host and the port of the %s connection" % connection if windows
                       else "no SSH_CONNECTION over the %s connection" % connection)
                return dict(result, failed=True, msg=(
                    "%smanagement_cidrs: None and the controller's address as %s sees it is unknown (%s); set it "
                    "so the kill switch cannot lock you out"
                    % (PREFIX, task_vars.get("inventory_hostname", "the host"), how)))
            variables[PREFIX + "management_cidrs"] = [path.source] if path else []
        try:
            policy = parse_policy(variables, resolve=resolve)
        except PolicyError as exc:
            return dict(result, failed=True, msg=str(exc), problems=[str(p) for p in exc.problems])
        if path is not None:
            result["management_path"] = {"source": path.source, "port": path.port}
            if not policy.admits_management(path.source, path.port):
                if not _truthy(args.get("allow_lockout")):
                    return dict(result, failed=True, msg=(
                        "%smanagement_cidrs: %s with %smanagement_ports: %s would cut the live management connection "
                        "from %s to port %d on %s; add that source and port, or set %sallow_lockout: true to apply "
                        "anyway (the safe-apply rollback then restores the host)" % (
                            PREFIX, [str(n) for n in policy.management_networks], PREFIX,
                            list(policy.management_ports), path.source, path.port,
                            task_vars.get("inventory_hostname", "the host"), PREFIX)))
                result.setdefault("warnings", []).append(
                    "%s: %sallow_lockout is set: the new rules cut the management connection from %s to port %d"
                    % (task_vars.get("inventory_hostname", "the host"), PREFIX, path.source, path.port))
        host = task_vars.get("inventory_hostname", "the host")
        backend = args.get("backend") or "auto"
        if backend == "auto":
            backend = "windows" if windows else self._probe_backend()
        mismatch = _backend_mismatch(backend, windows, task_vars, host)
        if mismatch:
            return dict(result, failed=True, msg=mismatch, problems=[mismatch], backend=backend)
        try:
            payload = backends.render_for(policy, backend, host)
            for warning in backends.warnings_for(policy, backend, host):
                result.setdefault("warnings", []).append(warning)
        except PolicyError as exc:
            return dict(result, failed=True, msg=str(exc), problems=[str(p) for p in exc.problems], backend=backend)
        fence, fence_problem = "", None
        if backend == "windows":
            if args.get("fence") == "required":
                return dict(result, failed=True, msg="%sfence: required, and %s runs Windows, which has none" % (
                    PREFIX, host), problems=["%sfence: 'required' cannot be met on Windows" % PREFIX], backend=backend)
            if (args.get("fence") or DEFAULTS["fence"]) != "off":
                display.warning(NO_FENCE_ON_WINDOWS)  # the same text for every host: Ansible shows it once
            result["document"] = json.loads(payload)
            for text in result["document"]["warnings"]:
                display.warning("Windows: %s" % text)
        elif (args.get("fence") or DEFAULTS["fence"]) != "off":
            try:
                fence = backends.fence_for(policy, host)
            except PolicyError as exc:
                fence_problem = exc
        if fence_problem is not None and args.get("fence") == "required":
            return dict(result, failed=True, msg="%sfence: required, and %s" % (PREFIX, fence_problem),
                        problems=[str(p) for p in fence_problem.problems], backend=backend)
        if fence_problem is not None:
            result.setdefault("warnings", []).append("%s: no fence (%sfence: auto): %s" % (host, PREFIX, fence_problem))
        result.update(
            changed=False,
            backend=backend,
            fence=fence,
            fence_table=render_nftables.fence_table(policy),
            payload_suffix=backends.backend(backend).payload_suffix,
            ruleset=payload,
            digest=policy.digest(),
            table=policy.table,
            policy=_plain(policy.data()),
            app_services=list(policy.app_services),
        )
        if policy.warnings:
            result.setdefault("warnings", []).extend(policy.warnings)
        return result

    def _probe_backend(self):
        out = self._low_level_execute_command(BACKEND_PROBE, sudoable=True)
        answer = (out.get("stdout") or "").strip().splitlines()
        if out.get("rc") != 0 or not answer or answer[-1] not in backends.LINUX_BACKENDS:
            raise AnsibleError("%sbackend: auto could not tell which firewall the host has: %s"
                               % (PREFIX, (out.get("stderr") or out.get("stdout") or "").strip()))
        return answer[-1]

    def _connection_name(self, task_vars):
        transport = getattr(self._connection, "transport", None)
        return transport or task_vars.get("ansible_connection") or "ssh"

    def _is_windows(self, task_vars, connection):
        """Windows by its facts, its connection (winrm, psrp) or its shell (PowerShell), without asking it."""
        family = task_vars.get("ansible_os_family") or (task_vars.get("ansible_facts") or {}).get("os_family")
        if family:
            return str(family) == "Windows"
        shell = getattr(getattr(self._connection, "_shell", None), "SHELL_FAMILY", None)
        return (connection in WINDOWS_CONNECTIONS or shell == "powershell"
                or str(task_vars.get("ansible_shell_type") or "") == "powershell")

    def _windows_management_path(self, task_vars, connection):
        """The controller's own address toward the host, and the connection's port; no command runs there."""
        target = task_vars.get("ansible_host") or task_vars.get("inventory_hostname")
        port = connection_port(task_vars, connection)
        source = source_toward(target) if target else None
        if source is None or port is None:
            display.vvv("no management path toward %r (port %r)" % (target, port))
            return None
        return ManagementPath(source, port)

    def _management_path(self, task_vars):
        """Ask the host over the connection itself, without become; gathered facts are the fallback."""
        try:
            out = self._low_level_execute_command(SSH_CONNECTION_PROBE, sudoable=False)
            path = ManagementPath.parse(out.get("stdout", "").strip().splitlines()[-1] if out.get("stdout", "").strip()
                                        else "")
        except AnsibleConnectionFailure:
            raise  # Ansible reports the host as unreachable
        except Exception as exc:  # e.g. a shell that cannot echo: fall back to the facts
            display.vvv("reading SSH_CONNECTION failed: %s" % exc)
            path = None
        return path or path_from_facts(task_vars)


def _backend_mismatch(backend, windows, task_vars, host):
    """A Linux backend for a Windows host, or windows for a host whose facts say it is not Windows."""
    family = task_vars.get("ansible_os_family") or (task_vars.get("ansible_facts") or {}).get("os_family")
    if windows and backend != "windows":
        return "%sbackend: %r cannot run on %s, a Windows host (use auto or windows)" % (PREFIX, backend, host)
    if backend == "windows" and not windows and family:
        return "%sbackend: 'windows' cannot run on %s, whose OS family is %s" % (PREFIX, host, family)
    return None


def _truthy(value):
    return str(value).strip().lower() in ("true", "yes", "on", "1", "y", "t") if value is not None else False


def _plain(value):
    """Addresses and tuples as strings and lists, for registered variables and JSON reports."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)
