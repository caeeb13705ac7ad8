# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""inventories/example, the inventory the molecule template (extensions/molecule/killswitch) runs against.

Its policy validates and renders for every backend, and uses only documentation/benchmark addresses, so
that the template's CI run (make molecule-template) tests a policy that holds; the template's defaults name
this inventory and its group.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest
import yaml

from ansible_collections.netlock.killswitch.plugins.plugin_utils import backends, policy

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "inventories" / "example"
SCENARIO = REPO_ROOT / "extensions" / "molecule" / "killswitch"
GROUP = "vpn_clients"
DOCUMENTATION = [ipaddress.ip_network(n) for n in ("198.18.0.0/15", "2001:db8::/32", "fe80::/10")]


def _variables():
    return yaml.safe_load((EXAMPLE / "group_vars" / (GROUP + ".yml")).read_text())


def test_hosts_are_in_the_group():
    hosts = yaml.safe_load((EXAMPLE / "hosts.yml").read_text())
    assert hosts["all"]["children"][GROUP]["hosts"]


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_policy_validates_and_renders(backend):
    parsed = policy.parse_policy(dict(_variables(), killswitch_backend=backend))
    assert parsed.tunnel_interfaces == ("wg0",)
    assert backends.render_for(parsed, backend, host="laptop-ops-01")


def test_addresses_are_documentation_ranges():
    text = (EXAMPLE / "group_vars" / (GROUP + ".yml")).read_text() + (EXAMPLE / "hosts.yml").read_text()
    found = re.findall(r"(?<![\w:.])(\d{1,3}(?:\.\d{1,3}){3}(?:/\d+)?|[0-9a-f]{1,4}:[0-9a-f:]*:[0-9a-f:/]*)", text)
    assert found
    for value in found:
        network = ipaddress.ip_network(value, strict=False)
        assert any(network.subnet_of(d) for d in DOCUMENTATION if d.version == network.version), value


def test_template_defaults_name_this_inventory():
    molecule = (SCENARIO / "molecule.yml").read_text()
    assert "${KILLSWITCH_INVENTORY:-../../../inventories/example}/group_vars" in molecule
    assert "${KILLSWITCH_GROUP:-%s}" % GROUP in molecule
    assert (SCENARIO / "../../../inventories/example/group_vars").resolve() == EXAMPLE / "group_vars"


# --------------------------------------------------------------------------- the mixed fleet, one run

def _hosts_as_ansible_sees_them():
    """Every host of the example inventory with its variables as Ansible merges them (group precedence), over
    the role's defaults: what the role's killswitch_policy task reads for each host."""
    # pylint: disable=import-outside-toplevel
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(EXAMPLE / "hosts.yml")])
    manager = VariableManager(loader=loader, inventory=inventory)
    defaults = yaml.safe_load((REPO_ROOT / "roles" / "killswitch" / "defaults" / "main.yml").read_text())
    hosts = {}
    for host in inventory.get_hosts(GROUP):
        found = manager.get_vars(host=host)
        hosts[host.name] = dict(defaults, **{k: v for k, v in found.items() if k.startswith(("killswitch_", "ansible_"))})
    return hosts


def _backend(host_vars):
    """The backend killswitch_policy picks for the host: windows by its connection, without asking the host."""
    # pylint: disable=import-outside-toplevel
    from types import SimpleNamespace

    from ansible_collections.netlock.killswitch.plugins.action.killswitch_policy import ActionModule

    plugin = ActionModule.__new__(ActionModule)
    plugin._connection = SimpleNamespace(transport=host_vars.get("ansible_connection", "ssh"), _shell=None)
    connection = plugin._connection_name(host_vars)
    return "windows" if plugin._is_windows(host_vars, connection) else "nftables"


def test_the_mixed_fleet_renders_nftables_and_windows_from_one_policy_in_one_run():
    """One inventory, one policy (group_vars/vpn_clients.yml; windows_clients.yml only says what Windows needs
    instead): each Linux host gets an nftables ruleset, each Windows host a Windows Firewall document, and both
    hold the same endpoints, resolvers, LAN and management sources."""
    hosts = _hosts_as_ansible_sees_them()
    chosen = {name: _backend(variables) for name, variables in hosts.items()}
    assert chosen == {"laptop-ops-01": "nftables", "laptop-ops-02": "nftables", "build-agent-01": "nftables",
                      "win-ops-01": "windows", "win-ops-02": "windows"}
    rendered = {}
    for name, variables in hosts.items():
        parsed = policy.parse_policy(dict(variables, killswitch_backend=chosen[name]))
        rendered[name] = backends.render_for(parsed, chosen[name], host=name)
        assert parsed.endpoints == policy.parse_policy(_variables()).endpoints
        assert parsed.dns_servers == policy.parse_policy(_variables()).dns_servers
    nft, windows = rendered["laptop-ops-01"], json.loads(rendered["win-ops-01"])
    assert "table inet killswitch" in nft and "meta mark 0x%08x ip daddr @endpoint_udp_51820_v4" % 51820 in nft
    assert {p["default_outbound"] for p in [windows["profiles"]]} == {"Block"}
    endpoint_rules = [r for r in windows["rules"] if r["direction"] == "Outbound" and r["remote_ports"] == ["51820"]]
    assert {a for r in endpoint_rules for a in r["remote_addresses"]} == {"198.18.62.1", "2001:db8:62::1"}
    management = [r for r in windows["rules"] if r["direction"] == "Inbound" and r["local_ports"] == ["5986"]]
    assert sorted(a for r in management for a in r["remote_addresses"]) == ["198.18.65.0/28", "2001:db8:65::/64"]
    assert "ip saddr @management_v4 tcp dport 22 accept" in nft and "elements = { 198.18.65.0/28 }" in nft
    assert rendered["win-ops-02"] == rendered["win-ops-01"] and rendered["laptop-ops-02"] == nft


def test_windows_hosts_are_reached_over_winrm_and_psrp_without_become():
    hosts = _hosts_as_ansible_sees_them()
    assert hosts["win-ops-01"]["ansible_connection"] == "winrm" and hosts["win-ops-02"]["ansible_connection"] == "psrp"
    for name in ("win-ops-01", "win-ops-02"):
        assert hosts[name]["ansible_become"] is False and hosts[name]["ansible_port"] == 5986
    assert hosts["laptop-ops-01"]["ansible_become"] is True
