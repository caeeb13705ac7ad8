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


# Role variables that are not policy options (how the role runs, not what it enforces), with their defaults.
ROLE_ONLY = {"killswitch_in_force_check": True}


def test_argument_specs_and_policy_name_the_same_variables():
    assert set(argument_specs()) == {policy.PREFIX + name for name in policy.DEFAULTS} | set(ROLE_ONLY)


@pytest.mark.parametrize("name", sorted(ROLE_ONLY))
def test_role_only_variables_have_one_default(name):
    assert argument_specs()[name]["default"] == ROLE_ONLY[name] == role_defaults()[name]


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
    assert "windows" in backends.BACKENDS and set(backends.LINUX_BACKENDS) == set(backends.BACKENDS) - {"windows"}


WINDOWS_MODULE = ROOT / "plugins" / "modules" / "killswitch_windows_firewall.py"
# The Windows module's options that carry a role variable's default (the role passes the variable to it).
WINDOWS_OPTIONS = {"state_dir": "windows_state_dir", "guard_enabled": "guard_enabled", "guard_interval": "guard_interval"}


def test_the_windows_variables_are_role_variables_with_windows_defaults():
    assert policy.DEFAULTS["windows_exclusive"] is False
    assert policy.DEFAULTS["windows_state_dir"] == "C:\\ProgramData\\netlock-killswitch"
    assert role_defaults()["killswitch_windows_state_dir"] == "C:\\ProgramData\\netlock-killswitch"


@pytest.mark.skipif(not WINDOWS_MODULE.exists(), reason="killswitch_windows_firewall's documentation is not written yet")
def test_the_windows_module_documents_the_role_defaults():
    """killswitch_windows_firewall (PowerShell, documented in its .py) defaults to what the role variables do."""
    namespace = {}
    exec(compile(WINDOWS_MODULE.read_text(), str(WINDOWS_MODULE), "exec"), namespace)
    options = yaml.safe_load(namespace["DOCUMENTATION"])["options"]
    for option, variable in WINDOWS_OPTIONS.items():
        assert options[option].get("default") == policy.DEFAULTS[variable], (option, variable)


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


@pytest.mark.may_skip_in_ci
@pytest.mark.skipif(not SPEC.exists(), reason="the shared public spec is not beside this checkout")
def test_every_variable_of_the_public_contract_is_there():
    named = set(re.findall(r"^\| `(killswitch_\w+)`", SPEC.read_text(), re.MULTILINE))
    assert named and named <= set(argument_specs())


# --------------------------------------------------------------------------- killswitch_status and killswitch_verify

def _host_modules():
    from ansible_collections.netlock.killswitch.plugins.module_utils import status, verify
    from ansible_collections.netlock.killswitch.plugins.modules import killswitch_status, killswitch_verify
    return {"killswitch_status": (killswitch_status, status.ARGUMENT_SPEC),
            "killswitch_verify": (killswitch_verify, verify.ARGUMENT_SPEC)}


@pytest.mark.parametrize("name", ["killswitch_status", "killswitch_verify"])
def test_the_host_modules_document_their_argument_spec(name):
    """Each module's argument spec lives in its module_utils; its DOCUMENTATION must say the same."""
    module, spec = _host_modules()[name]
    assert module.main.__module__ == module.__name__
    options = yaml.safe_load(module.DOCUMENTATION)["options"]
    assert set(options) == set(spec), name
    for option, wanted in spec.items():
        doc = options[option]
        for key in ("type", "default", "choices", "elements"):
            assert doc.get(key) == wanted.get(key), (name, option, key)
        assert doc.get("required", False) == wanted.get("required", False), (name, option)


def test_verify_shares_the_status_options_and_the_roles_defaults():
    from ansible_collections.netlock.killswitch.plugins.module_utils import status, verify
    for name in verify.SHARED_OPTIONS:
        assert verify.ARGUMENT_SPEC[name] == status.ARGUMENT_SPEC[name], name
    assert tuple(verify.ARGUMENT_SPEC["fence"]["choices"]) == policy.FENCES
    assert verify.ARGUMENT_SPEC["fence"]["default"] == policy.DEFAULTS["fence"]
    assert verify.ARGUMENT_SPEC["guard"]["default"] == policy.DEFAULTS["guard_enabled"]
    assert status.ARGUMENT_SPEC["table"]["default"] == policy.DEFAULTS["table"]
    assert set(status.ARGUMENT_SPEC["backend"]["choices"]) == set(backends.LINUX_BACKENDS)
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    assert verify.ARGUMENT_SPEC["boot_unit"]["default"] == role_vars["killswitch_unit_name"]
    assert verify.ARGUMENT_SPEC["guard_unit"]["default"] == role_vars["killswitch_guard_config"]["timer_unit"]
    assert verify.ARGUMENT_SPEC["watch_unit"]["default"] == role_vars["killswitch_watch_unit"]
    assert verify.ARGUMENT_SPEC["guard_state_path"]["default"] == role_vars["killswitch_guard_config"]["state_path"].replace(
        "{{ killswitch_state_dir }}", role_vars["killswitch_state_dir"])


def test_the_roles_verify_task_passes_options_the_module_takes():
    from ansible_collections.netlock.killswitch.plugins.module_utils import verify
    tasks = yaml.safe_load((ROLE / "tasks" / "verify.yml").read_text())
    task = next(t for t in tasks if "netlock.killswitch.killswitch_verify" in t)
    passed = task["netlock.killswitch.killswitch_verify"]
    assert set(passed) <= set(verify.ARGUMENT_SPEC)
    assert {"policy", "backend", "guard", "fence"} <= set(passed)
    assert "killswitch_rendered.policy" in passed["policy"]
