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
