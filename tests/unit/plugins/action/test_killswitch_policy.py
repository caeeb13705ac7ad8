# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The killswitch_policy action plugin: controller address, name resolution, and run()."""

from __future__ import annotations

import ipaddress
import socket
from types import SimpleNamespace

import pytest

from ansible_collections.netlock.killswitch.plugins.action import killswitch_policy as action
from ansible_collections.netlock.killswitch.plugins.action.killswitch_policy import (
    ActionModule,
    controller_address,
    resolve,
)
from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_nftables import render
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy

# --------------------------------------------------------------------------- controller_address


@pytest.mark.parametrize("env,expected", [
    ({"SSH_CLIENT": "192.0.2.10 50022 22"}, "192.0.2.10"),
    ({"SSH_CONNECTION": "2001:db8::10 50022 2001:db8::1 22"}, "2001:db8::10"),
    ({"SSH_CLIENT": "192.0.2.10 1 22", "SSH_CONNECTION": "192.0.2.99 1 192.0.2.1 22"}, "192.0.2.10"),
    ({"SSH_CLIENT": "", "SSH_CONNECTION": "192.0.2.99 1 192.0.2.1 22"}, "192.0.2.99"),
    ({}, None),
    ({"HOME": "/root"}, None),
])
def test_controller_address_from_facts(env, expected):
    assert controller_address({"ansible_facts": {"env": env}}) == expected


@pytest.mark.parametrize("task_vars", [{}, {"ansible_facts": None}, {"ansible_facts": {}},
                                       {"ansible_facts": {"env": None}}])
def test_controller_address_without_facts(task_vars):
    assert controller_address(task_vars) is None


# --------------------------------------------------------------------------- resolve


def test_resolve_localhost():
    answers = resolve("localhost")
    assert answers, "localhost resolves to something"
    addresses = [ipaddress.ip_address(a) for a in answers]
    assert all(a.is_loopback for a in addresses)
    assert answers == sorted(set(answers)), "sorted and deduplicated, so the pin is stable"


def test_resolve_literal_address():
    assert resolve("198.51.100.7") == ["198.51.100.7"]


def test_resolve_invalid_name_raises_lookup_error():
    with pytest.raises(LookupError) as info:
        resolve("no-such-host.netlock-killswitch.invalid")
    assert str(info.value)  # the resolver's own text, for the policy error message
    assert not isinstance(info.value, socket.gaierror), "callers only need to know LookupError"


def test_resolve_is_usable_as_the_policy_resolver():
    with pytest.raises(Exception) as info:
        parse_policy({"killswitch_tunnel_interfaces": ["wg0"],
                      "killswitch_endpoints": [{"address": "vpn.netlock-killswitch.invalid", "port": 1}]},
                     resolve=resolve)
    assert "killswitch_endpoints[0].address" in str(info.value)
    assert "vpn.netlock-killswitch.invalid" in str(info.value)
    assert "does not resolve" in str(info.value)


# --------------------------------------------------------------------------- run()


def make_action(args, check_mode=False):
    task = SimpleNamespace(args=args, async_val=0, check_mode=check_mode, action="netlock.killswitch.killswitch_policy")
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir="/tmp/already-there"))
    action = ActionModule(task, connection, None, None, None, None)
    action._load_name = task.action  # as the plugin loader sets it; ansible-core 2.18 reads it for unsupported parameters
    return action


ARGS = {"tunnel_interfaces": ["wg0"], "endpoints": [{"address": "198.51.100.7", "port": 51820}]}


@pytest.fixture(autouse=True)
def host_with_nftables(monkeypatch):
    """killswitch_backend auto asks the host; these tests' host has a working nft."""
    monkeypatch.setattr(ActionModule, "_probe_backend", lambda self: "nftables")


FACTS = {"ansible_facts": {"env": {"SSH_CLIENT": "192.0.2.10 50022 22"}}}


def test_run_renders_the_ruleset_with_the_controller_as_management_source():
    result = make_action(dict(ARGS)).run(task_vars=dict(FACTS))
    assert not result.get("failed"), result
    assert result["changed"] is False
    expected = parse_policy({"killswitch_tunnel_interfaces": ["wg0"],
                             "killswitch_endpoints": [{"address": "198.51.100.7", "port": 51820}],
                             "killswitch_management_cidrs": ["192.0.2.10"]})
    assert result["ruleset"] == render(expected)
    assert result["digest"] == expected.digest()
    assert result["table"] == "killswitch"
    assert result["policy"]["management_networks"] == ["192.0.2.10/32"]
    assert result["policy"]["endpoints"] == [{"networks": ["198.51.100.7/32"], "protocol": "udp", "port": 51820}]
    assert "warnings" not in result


def test_run_explicit_management_cidrs_win_over_facts():
    result = make_action(dict(ARGS, management_cidrs=["192.0.2.0/24"])).run(task_vars=dict(FACTS))
    assert result["policy"]["management_networks"] == ["192.0.2.0/24"]


# --------------------------------------------------------------------------- the live management path


def over_ssh(monkeypatch, stdout="198.18.30.1 40022 198.18.30.11 22\n", sudoable_seen=None):
    """The host answers the SSH_CONNECTION probe; records whether it was asked with become."""
    def low_level(self, cmd, sudoable=True, **kwargs):
        if sudoable_seen is not None:
            sudoable_seen.append(sudoable)
        assert "SSH_CONNECTION" in cmd
        return {"rc": 0, "stdout": stdout, "stderr": ""}
    monkeypatch.setattr(ActionModule, "_low_level_execute_command", low_level)


SSH = {"ansible_connection": "ssh", "inventory_hostname": "fleet1"}


def test_the_controller_is_found_over_the_connection_without_become(monkeypatch):
    """sudo drops SSH_*: the probe runs without become, and gathered (become) facts are not needed."""
    seen = []
    over_ssh(monkeypatch, sudoable_seen=seen)
    result = make_action(dict(ARGS)).run(task_vars=dict(SSH))
    assert not result.get("failed"), result
    assert seen == [False]
    assert result["policy"]["management_networks"] == ["198.18.30.1/32"]
    assert result["management_path"] == {"source": "198.18.30.1", "port": 22}


@pytest.mark.parametrize("connection", ["ssh", "paramiko", "ansible.builtin.paramiko_ssh"])
def test_every_ssh_connection_is_probed(monkeypatch, connection):
    over_ssh(monkeypatch)
    result = make_action(dict(ARGS)).run(task_vars=dict(SSH, ansible_connection=connection))
    assert result["policy"]["management_networks"] == ["198.18.30.1/32"]


def test_no_ssh_connection_in_the_answer_fails_naming_the_variable(monkeypatch):
    over_ssh(monkeypatch, stdout="\n")
    result = make_action(dict(ARGS)).run(task_vars=dict(SSH))
    assert result["failed"] is True and "killswitch_management_cidrs" in result["msg"] and "fleet1" in result["msg"]
    assert "ruleset" not in result


def test_an_unreachable_host_is_left_to_ansible(monkeypatch):
    from ansible.errors import AnsibleConnectionFailure

    def unreachable(self, cmd, sudoable=True, **kwargs):
        raise AnsibleConnectionFailure("ssh: connect to host fleet1 port 22: No route to host")
    monkeypatch.setattr(ActionModule, "_low_level_execute_command", unreachable)
    with pytest.raises(AnsibleConnectionFailure):
        make_action(dict(ARGS)).run(task_vars=dict(SSH))


@pytest.mark.parametrize("overrides", [
    {"management_cidrs": ["198.18.31.0/24"]},                     # the controller is not a source
    {"management_cidrs": ["198.18.30.0/24"], "management_ports": [2222]},  # its port is not open
    {"management_cidrs": []},
])
def test_a_policy_that_cuts_the_live_connection_is_refused(monkeypatch, overrides):
    over_ssh(monkeypatch)
    result = make_action(dict(ARGS, **overrides)).run(task_vars=dict(SSH))
    assert result["failed"] is True, result
    assert "would cut the live management connection from 198.18.30.1 to port 22 on fleet1" in result["msg"]
    assert "killswitch_allow_lockout" in result["msg"]
    assert "ruleset" not in result


def test_allow_lockout_renders_it_with_a_warning(monkeypatch):
    over_ssh(monkeypatch)
    result = make_action(dict(ARGS, management_cidrs=["198.18.31.0/24"], allow_lockout=True)).run(task_vars=dict(SSH))
    assert not result.get("failed"), result
    assert any("cut the management connection" in w for w in result["warnings"])


def test_a_management_source_through_the_tunnel_is_kept(monkeypatch):
    """The controller reaches the host through the tunnel: its tunnel address is the management source."""
    over_ssh(monkeypatch, stdout="198.18.130.5 40022 198.18.130.11 22\n")
    result = make_action(dict(ARGS)).run(task_vars=dict(SSH))
    assert result["policy"]["management_networks"] == ["198.18.130.5/32"]


@pytest.mark.parametrize("text,expected", [
    ("198.18.30.1 40022 198.18.30.11 22", ("198.18.30.1", 22)),
    ("2001:db8:30::1 40022 2001:db8:30::11 2222", ("2001:db8:30::1", 2222)),
    ("198.18.30.1 40022 22", ("198.18.30.1", 22)),
    ("", None), ("garbage", None), ("host.example 1 2 22", None), ("198.18.30.1 1 2 port", None),
])
def test_management_path_parsing(text, expected):
    path = action.ManagementPath.parse(text)
    assert (path and (path.source, path.port)) == expected or (path is None and expected is None)


def test_run_refuses_to_lock_out_an_unknown_ssh_controller():
    result = make_action(dict(ARGS)).run(task_vars={"ansible_connection": "ssh"})
    assert result["failed"] is True
    assert "killswitch_management_cidrs" in result["msg"]
    assert "ruleset" not in result


def test_run_local_connection_needs_no_management_source():
    result = make_action(dict(ARGS)).run(task_vars={"ansible_connection": "local"})
    assert not result.get("failed"), result
    assert result["policy"]["management_networks"] == []
    assert "@management" not in result["ruleset"]


def test_run_reports_every_problem():
    args = dict(ARGS, endpoints=[{"address": "300.1.2.3", "port": 0}], ipv6="sideways")
    result = make_action(args).run(task_vars=dict(FACTS))
    assert result["failed"] is True
    assert "ruleset" not in result
    assert any(p.startswith("killswitch_endpoints[0].address: '300.1.2.3'") for p in result["problems"])
    assert any(p.startswith("killswitch_endpoints[0].port: 0") for p in result["problems"])
    assert any(p.startswith("killswitch_ipv6: 'sideways'") for p in result["problems"])
    assert "killswitch_endpoints[0].port" in result["msg"]


def test_run_unresolvable_endpoint_fails_before_the_host(monkeypatch):
    def failing(name):
        raise LookupError("Name or service not known")

    monkeypatch.setattr(action, "resolve", failing)
    result = make_action(dict(ARGS, endpoints=[{"address": "vpn.example.com", "port": 1}])).run(task_vars=dict(FACTS))
    assert result["failed"] is True
    assert "killswitch_endpoints[0].address: 'vpn.example.com' does not resolve: Name or service not known" \
        in result["problems"]


def test_run_pins_hostnames(monkeypatch):
    monkeypatch.setattr(action, "resolve", lambda name: {"vpn.example.com": ["203.0.113.7", "2001:db8::7"]}[name])
    result = make_action(dict(ARGS, endpoints=[{"address": "vpn.example.com", "port": 1}])).run(task_vars=dict(FACTS))
    assert result["policy"]["endpoints"][0]["networks"] == ["203.0.113.7/32"]
    assert "203.0.113.7" in result["ruleset"] and "vpn.example.com" not in result["ruleset"]


def test_run_passes_warnings_through():
    result = make_action(dict(ARGS, allow_lan=True, lan_cidrs=["8.8.8.0/24"])).run(task_vars=dict(FACTS))
    assert any("8.8.8.0/24" in w for w in result["warnings"])


def test_run_rejects_unknown_options():
    from ansible.errors import AnsibleActionFail

    with pytest.raises(AnsibleActionFail, match="tunnels"):
        make_action(dict(ARGS, tunnels=["wg0"])).run(task_vars=dict(FACTS))


def test_run_validates_the_settings_options():
    result = make_action(dict(ARGS, guard_interval=1)).run(task_vars=dict(FACTS))
    assert result["failed"] is True
    assert any(p.startswith("killswitch_guard_interval: 1") for p in result["problems"])


# --------------------------------------------------------------------------- backends

LOCAL = {"ansible_connection": "local", "inventory_hostname": "web7"}


@pytest.mark.parametrize("answer,backend", [("nftables\n", "nftables"), ("iptables\n", "iptables"),
                                            ("motd line\niptables\n", "iptables")])
def test_auto_asks_the_host_with_become(monkeypatch, answer, backend):
    seen = []

    def low_level(self, cmd, sudoable=True, **kwargs):
        seen.append((sudoable, "nft list tables" in cmd and "iptables-restore" in cmd))
        return {"rc": 0, "stdout": answer, "stderr": ""}
    monkeypatch.setattr(ActionModule, "_low_level_execute_command", low_level)
    monkeypatch.undo()  # the autouse stub of _probe_backend
    monkeypatch.setattr(ActionModule, "_low_level_execute_command", low_level)
    result = make_action(dict(ARGS)).run(task_vars=dict(LOCAL))
    assert not result.get("failed"), result
    assert result["backend"] == backend and seen == [(True, True)]


def test_auto_fails_when_the_host_cannot_tell(monkeypatch):
    monkeypatch.undo()
    monkeypatch.setattr(ActionModule, "_low_level_execute_command",
                        lambda self, cmd, sudoable=True, **kw: {"rc": 1, "stdout": "", "stderr": "sudo: a password"})
    with pytest.raises(Exception) as info:
        make_action(dict(ARGS)).run(task_vars=dict(LOCAL))
    assert "killswitch_backend" in str(info.value) and "sudo: a password" in str(info.value)


def test_iptables_backend_renders_the_iptables_payload():
    result = make_action(dict(ARGS, backend="iptables")).run(task_vars=dict(LOCAL))
    assert not result.get("failed"), result
    assert result["backend"] == "iptables" and result["payload_suffix"] == ".sh"
    assert result["ruleset"].startswith("#!/bin/sh") and "iptables-restore" in result["ruleset"]
    # bridged frames are not the iptables rules' to see without br_netfilter: the operator is told
    assert [w for w in result["warnings"] if "bridge-nf-call-iptables" in w], result.get("warnings")


def test_nftables_backend_has_no_bridged_frames_warning():
    result = make_action(dict(ARGS, backend="nftables")).run(task_vars=dict(LOCAL))
    assert not result.get("failed"), result
    assert not [w for w in result.get("warnings", []) if "bridge" in w]


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_an_owner_the_backend_cannot_enforce_names_variable_host_and_backend(backend):
    result = make_action(dict(ARGS, backend=backend, endpoint_program="/usr/bin/wireguard")).run(
        task_vars=dict(LOCAL))
    assert result["failed"] and result["backend"] == backend
    assert "killswitch_endpoint_program" in result["msg"] and "web7" in result["msg"] and backend in result["msg"]
