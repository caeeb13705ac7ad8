# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One option contract: ``roles/killswitch/meta/argument_specs.yml`` is the documented source.

Everything else that names a role variable must agree with it: ``defaults/main.yml``, the policy's
``DEFAULTS`` and choice lists, the ``killswitch_policy`` module documentation, the action plugin's
option list, the role task that passes the variables on, and the public spec the outside suites test.
Each test fails on the first name, type, default or choice that disagrees.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ansible_collections.netlock.killswitch.plugins.action.killswitch_policy import POLICY_OPTIONS
from ansible_collections.netlock.killswitch.plugins.modules import killswitch_policy as policy_module
from ansible_collections.netlock.killswitch.plugins.plugin_utils import backends, policy

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "killswitch"
SPEC = ROOT.parent / "shared" / "spec" / "role-interface.md"
PYTHON_TYPES = {"str": str, "int": int, "bool": bool, "list": list, "dict": dict}
CHOICES = {"state": policy.STATES, "backend": policy.BACKENDS, "ipv6": policy.IPV6_MODES,
           "forward": policy.FORWARD_MODES, "fence": policy.FENCES}


def argument_specs():
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    return specs["argument_specs"]["main"]["options"]


def role_defaults():
    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def module_options():
    return yaml.safe_load(policy_module.DOCUMENTATION)["options"]


def test_argument_specs_and_policy_name_the_same_variables():
    assert set(argument_specs()) == {policy.PREFIX + name for name in policy.DEFAULTS}


@pytest.mark.parametrize("name", sorted(policy.DEFAULTS))
def test_type_and_default_agree_everywhere(name):
    spec = argument_specs()[policy.PREFIX + name]
    default = policy.DEFAULTS[name]
    if default is not None:
        assert isinstance(default, PYTHON_TYPES[spec["type"]]), (name, spec["type"], default)
    assert spec.get("default") == default, "argument_specs default of %s%s" % (policy.PREFIX, name)
    defaults = role_defaults()
    if default is None and name == "management_cidrs":
        assert policy.PREFIX + name not in defaults, "unset means: the controller's address"
    else:
        assert defaults[policy.PREFIX + name] == default, "defaults/main.yml value of %s%s" % (policy.PREFIX, name)


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_choices_agree(name):
    assert tuple(argument_specs()[policy.PREFIX + name]["choices"]) == CHOICES[name]
    if name in module_options():
        assert tuple(module_options()[name]["choices"]) == CHOICES[name]


def test_backend_choices_are_the_backends_there_are():
    assert set(policy.BACKENDS) == {"auto"} | set(backends.BACKENDS)


def test_the_action_plugin_takes_every_policy_option():
    assert set(POLICY_OPTIONS) == set(policy.DEFAULTS) - {"state"}


def test_the_module_documents_every_option_with_the_same_type_and_default():
    options = module_options()
    assert set(options) == set(POLICY_OPTIONS)
    specs = argument_specs()
    for name, doc in options.items():
        spec = specs[policy.PREFIX + name]
        assert doc["type"] == spec["type"], name
        if "elements" in spec:
            assert doc.get("elements") == spec["elements"], name
        if "default" in doc:
            assert doc["default"] == policy.DEFAULTS[name], name


def test_the_role_passes_every_option_to_the_policy():
    tasks = yaml.safe_load((ROLE / "tasks" / "setup.yml").read_text())
    task = next(t for t in tasks if "netlock.killswitch.killswitch_policy" in t)
    passed = task["netlock.killswitch.killswitch_policy"]
    assert set(passed) == set(POLICY_OPTIONS)
    for name, value in passed.items():
        assert re.search(r"\b%s%s\b" % (policy.PREFIX, name), value), (name, value)


@pytest.mark.skipif(not SPEC.exists(), reason="the shared public spec is not beside this checkout")
def test_every_variable_of_the_public_contract_is_there():
    named = set(re.findall(r"^\| `(killswitch_\w+)`", SPEC.read_text(), re.MULTILINE))
    assert named and named <= set(argument_specs())
