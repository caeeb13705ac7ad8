# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The killswitch_policy action plugin on a Windows host: the windows backend, the management path found
without running anything on the host, lockouts refused, no fence."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from ansible_collections.netlock.killswitch.plugins.action import killswitch_policy as action
from ansible_collections.netlock.killswitch.plugins.action.killswitch_policy import (
    NO_FENCE_ON_WINDOWS, ActionModule, connection_port, source_toward)
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy
from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_windows import document, render

ARGS = {"tunnel_interfaces": ["Wintun Userspace Tunnel"], "endpoints": [{"address": "198.51.100.7", "port": 51820}],
        "endpoint_program": "C:\\Program Files\\WireGuard\\wireguard.exe"}
# A WinRM host at 127.0.0.1: the controller's own address toward it is 127.0.0.1 on any machine.
WINRM = {"inventory_hostname": "win1", "ansible_host": "127.0.0.1", "ansible_connection": "winrm"}


def make_action(args, shell_family=None):
    task = SimpleNamespace(args=args, async_val=0, check_mode=False, action="netlock.killswitch.killswitch_policy")
    shell = SimpleNamespace(tmpdir="C:\\Windows\\Temp", SHELL_FAMILY=shell_family or "powershell")
    connection = SimpleNamespace(_shell=shell)
    plugin = ActionModule(task, connection, None, None, None, None)
    plugin._load_name = task.action
    return plugin


@pytest.fixture(autouse=True)
def no_command_on_the_host(monkeypatch):
    """Nothing may run on a Windows host: no POSIX probe for the backend, none for SSH_CONNECTION."""
    def refuse(self, cmd, sudoable=True, **kwargs):
        raise AssertionError("a command was sent to the host: %r" % cmd)
    monkeypatch.setattr(ActionModule, "_low_level_execute_command", refuse)


@pytest.fixture
def shown(monkeypatch):
    """The warnings the plugin shows through Ansible's display (which shows each text once per run)."""
    texts = []
    monkeypatch.setattr(action.display, "warning", lambda msg, *args, **kwargs: texts.append(msg))
    return texts


def run(args, task_vars, shell_family=None):
    return make_action(dict(args), shell_family).run(task_vars=dict(task_vars))


def test_a_winrm_host_gets_the_windows_document_with_winrm_as_management():
    result = run(dict(ARGS, management_ports=[5986]), WINRM)
    assert not result.get("failed"), result
    assert result["backend"] == "windows" and result["payload_suffix"] == ".json"
    assert result["management_path"] == {"source": "127.0.0.1", "port": 5986}
    expected = parse_policy({"killswitch_" + k: v for k, v in ARGS.items()} | {
        "killswitch_management_cidrs": ["127.0.0.1"], "killswitch_management_ports": [5986]})
    assert result["ruleset"] == render(expected)
    assert result["document"] == document(expected) == json.loads(result["ruleset"])
    inbound = [r for r in result["document"]["rules"] if r["direction"] == "Inbound" and r["protocol"] == "TCP"]
    assert [(r["local_ports"], r["remote_addresses"]) for r in inbound] == [(["5986"], ["127.0.0.1"])]
    assert result["fence"] == ""


def test_a_winrm_run_the_policy_would_cut_is_refused_before_the_host_changes():
    """management_ports keeps its default [22]: the WinRM connection on 5986 would be cut."""
    result = run(ARGS, WINRM)
    assert result["failed"] is True
    assert "killswitch_management_ports: [22]" in result["msg"] and "port 5986 on win1" in result["msg"]
    assert "127.0.0.1" in result["msg"] and "ruleset" not in result


def test_allow_lockout_renders_anyway_with_a_warning():
    result = run(dict(ARGS, allow_lockout=True), WINRM)
    assert not result.get("failed") and result["backend"] == "windows"
    assert any("cut the management connection from 127.0.0.1 to port 5986" in w for w in result["warnings"])


@pytest.mark.parametrize("task_vars,port", [
    ({"ansible_connection": "winrm"}, 5986),
    ({"ansible_connection": "winrm", "ansible_winrm_scheme": "http"}, 5985),
    ({"ansible_connection": "ansible.builtin.winrm", "ansible_winrm_scheme": "HTTPS"}, 5986),
    ({"ansible_connection": "winrm", "ansible_port": "55986"}, 55986),
    ({"ansible_connection": "psrp"}, 5986),
    ({"ansible_connection": "psrp", "ansible_psrp_protocol": "http"}, 5985),
    ({"ansible_connection": "psrp", "ansible_psrp_port": 5999}, 5999),
    # the connection's own variable wins over ansible_port, as in the connection plugins
    ({"ansible_connection": "winrm", "ansible_winrm_port": 15986}, 15986),
    ({"ansible_connection": "winrm", "ansible_winrm_port": "15985", "ansible_port": 5986}, 15985),
    ({"ansible_connection": "ansible.builtin.winrm", "ansible_winrm_port": 15986, "ansible_winrm_scheme": "http"}, 15986),
    ({"ansible_connection": "psrp", "ansible_psrp_port": 15986, "ansible_port": 5986}, 15986),
    ({"ansible_connection": "psrp", "ansible_port": 15986}, 15986),
    ({"ansible_connection": "ssh", "ansible_ssh_port": 2200, "ansible_port": 2222}, 2200),
    ({"ansible_connection": "winrm", "ansible_psrp_port": 15986}, 5986),
    ({"ansible_connection": "ssh"}, 22),
    ({"ansible_connection": "ssh", "ansible_port": 2222}, 2222),
    ({"ansible_connection": "ssh", "ansible_port": "not a port"}, None),
])
def test_connection_port(task_vars, port):
    assert connection_port(task_vars, task_vars["ansible_connection"]) == port


def test_the_management_port_is_ansible_winrm_port():
    """A listener on another port: the lockout check and the inbound allow use it, not the scheme's default."""
    cut = run(dict(ARGS, management_ports=[5986]), dict(WINRM, ansible_winrm_port=15986))
    assert cut["failed"] is True and "port 15986 on win1" in cut["msg"]
    ok = run(dict(ARGS, management_ports=[15986]), dict(WINRM, ansible_winrm_port=15986))
    assert ok["management_path"] == {"source": "127.0.0.1", "port": 15986} and not ok.get("failed")


def test_the_management_port_follows_the_winrm_scheme():
    result = run(dict(ARGS, management_ports=[5985]), dict(WINRM, ansible_winrm_scheme="http"))
    assert result["management_path"] == {"source": "127.0.0.1", "port": 5985} and not result.get("failed")


def test_source_toward_sends_nothing_and_finds_the_local_address():
    assert source_toward("127.0.0.1") == "127.0.0.1"
    assert source_toward("no-such-host.netlock-killswitch.invalid") is None


def test_an_unknown_management_path_fails_naming_the_variable(monkeypatch):
    monkeypatch.setattr(action, "source_toward", lambda host: None)
    result = run(ARGS, WINRM)
    assert result["failed"] is True
    assert "killswitch_management_cidrs" in result["msg"] and "win1" in result["msg"] and "winrm" in result["msg"]


def test_explicit_management_cidrs_still_must_admit_the_connection():
    result = run(dict(ARGS, management_cidrs=["192.0.2.0/24"], management_ports=[5986]), WINRM)
    assert result["failed"] is True and "127.0.0.1" in result["msg"]
    ok = run(dict(ARGS, management_cidrs=["127.0.0.0/8"], management_ports=[5986]), WINRM)
    assert ok["policy"]["management_networks"] == ["127.0.0.0/8"] and not ok.get("failed")


@pytest.mark.parametrize("task_vars,shell", [
    ({"ansible_os_family": "Windows", "ansible_connection": "ssh", "ansible_host": "127.0.0.1"}, "sh"),
    ({"ansible_facts": {"os_family": "Windows"}, "ansible_connection": "ssh", "ansible_host": "127.0.0.1"}, "sh"),
    ({"ansible_connection": "psrp", "ansible_host": "127.0.0.1"}, "sh"),
    ({"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_shell_type": "powershell"}, "sh"),
    ({"ansible_connection": "ssh", "ansible_host": "127.0.0.1"}, "powershell"),
])
def test_windows_is_recognized_without_asking_the_host(task_vars, shell):
    result = run(dict(ARGS, management_ports=[22, 5986]), dict(task_vars, inventory_hostname="win2"), shell)
    assert not result.get("failed"), result
    assert result["backend"] == "windows"
    expected_port = 5986 if task_vars["ansible_connection"] == "psrp" else 22
    assert result["management_path"] == {"source": "127.0.0.1", "port": expected_port}


def test_facts_saying_linux_win_over_a_powershell_looking_shell(monkeypatch):
    monkeypatch.setattr(ActionModule, "_probe_backend", lambda self: "nftables")
    monkeypatch.setattr(ActionModule, "_management_path", lambda self, task_vars: action.ManagementPath("192.0.2.1", 22))
    result = run(dict(ARGS, endpoint_program=None, tunnel_interfaces=["wg0"], management_cidrs=["192.0.2.1"]),
                 {"ansible_os_family": "Debian", "ansible_connection": "ssh"}, "powershell")
    assert result["backend"] == "nftables" and not result.get("failed"), result


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_linux_backend_on_a_windows_host_is_refused(backend):
    result = run(dict(ARGS, backend=backend, management_ports=[5986]), WINRM)
    assert result["failed"] is True
    assert "killswitch_backend" in result["msg"] and backend in result["msg"] and "win1" in result["msg"]


def test_the_windows_backend_on_a_linux_host_is_refused():
    result = run(dict(ARGS, backend="windows", management_cidrs=["192.0.2.1"]),
                 {"inventory_hostname": "lin1", "ansible_os_family": "Debian", "ansible_connection": "local"}, "sh")
    assert result["failed"] is True and "killswitch_backend" in result["msg"] and "Debian" in result["msg"]


def test_a_mark_is_refused_naming_variable_host_and_backend():
    result = run(dict(ARGS, endpoint_mark=51820, management_ports=[5986]), WINRM)
    assert result["failed"] is True and result["backend"] == "windows"
    assert any("killswitch_endpoint_mark" in p and "win1" in p and "windows backend" in p for p in result["problems"])


def test_no_fence_on_windows_said_once_per_run_and_required_fails(shown):
    for host in ("win1", "win2", "win3"):
        result = run(dict(ARGS, management_ports=[5986]), dict(WINRM, inventory_hostname=host))
        assert result["fence"] == "" and not any("fence" in w for w in result.get("warnings", []))
    # one text for every host: Ansible's display shows it once
    assert {text for text in shown if "fence" in text} == {NO_FENCE_ON_WINDOWS}
    assert all("win1" not in text for text in shown)
    required = run(dict(ARGS, management_ports=[5986], fence="required"), WINRM)
    assert required["failed"] is True and "killswitch_fence" in required["msg"] and "win1" in required["msg"]
    shown.clear()
    run(dict(ARGS, management_ports=[5986], fence="off"), WINRM)
    assert not [text for text in shown if "fence" in text]


def test_the_documents_warnings_are_shown(shown):
    run(dict(ARGS, management_ports=[5986], log_drops=True), WINRM)
    assert any(text.startswith("Windows: killswitch_log_drops") for text in shown)


@pytest.mark.parametrize("option,value", [("windows_state_dir", "/var/lib/netlock"), ("windows_state_dir", "C:\\Windows"),
                                          ("windows_exclusive", "maybe")])
def test_the_windows_options_are_validated(option, value):
    result = run(dict(ARGS, management_ports=[5986], **{option: value}), WINRM)
    assert result["failed"] is True and "killswitch_" + option in result["msg"]
