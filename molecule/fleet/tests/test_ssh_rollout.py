"""The rollout over real SSH: as the operator with sudo, by the collection installed from its tarball.

The kill switch was applied by converge (netlock.killswitch.rollout) with killswitch_management_cidrs
unset: each host must have found the controller's address itself and kept SSH open to it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from conftest import ROLLOUT, ROOT, ansible_env

from lab import fleet
from lab.probe import nft_table, sh


def management_addresses(table: dict) -> set:
    """Every element of the table's management sets (management_v4, management_v6)."""
    found = set()
    for item in table["nftables"]:
        nft_set = item.get("set")
        if nft_set and nft_set["name"].startswith("management"):
            found.update(e for e in nft_set.get("elem", []) if isinstance(e, str))
    return found


def under(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory + os.sep)


@pytest.fixture(scope="module")
def rerun(playbook):
    """The rollout twice (earlier tests may have changed the hosts): the second one with task paths (-vv)."""
    first = playbook(ROLLOUT)
    assert first.returncode == 0, first.tail()
    return playbook(ROLLOUT, "-vv")


def test_every_management_set_holds_the_controller(fleet_hosts):
    for host in fleet_hosts:
        table = nft_table(host.name)
        assert table is not None, "%s: table inet killswitch is not loaded" % host.name
        addresses = management_addresses(table)
        assert fleet.CONTROLLER in addresses, "%s: management sets hold %s, not the controller's %s" % (
            host.name, sorted(addresses), fleet.CONTROLLER)


def test_the_rollout_came_over_ssh_as_the_operator_with_sudo(fleet_hosts):
    for host in fleet_hosts:
        journal = sh(host.name, "journalctl -q --no-pager -o cat _COMM=sshd _COMM=sudo").stdout
        assert re.search(r"Accepted publickey for %s from %s " % (fleet.OPERATOR, re.escape(fleet.CONTROLLER)), journal), \
            "%s: no SSH login as %s from %s in the journal" % (host.name, fleet.OPERATOR, fleet.CONTROLLER)
        assert re.search(r"%s : .*USER=root ; COMMAND=/bin/sh -c '?echo BECOME-SUCCESS-" % fleet.OPERATOR, journal), \
            "%s: no sudo to root by %s (Ansible's become) in the journal" % (host.name, fleet.OPERATOR)


def test_new_ssh_connections_still_get_in(fleet_hosts, ssh):
    """A fresh connection (no ControlMaster) from the controller, through the kill switch, with sudo."""
    for host in fleet_hosts:
        result = ssh(host, "sudo", "-n", "nft", "list", "table", "inet", "killswitch")
        assert result.returncode == 0, "%s: ssh failed: %s" % (host.name, result.stderr[-800:])
        assert "policy drop" in result.stdout, "%s: the kill switch is not in force" % host.name


def test_the_installed_collection_is_the_one_that_ran(collections_path, rerun):
    checkout = os.path.join(ROOT, ".collections")
    for path in collections_path.split(os.pathsep):
        assert not under(path, checkout) and os.path.realpath(path) != ROOT, \
            "ANSIBLE_COLLECTIONS_PATH reaches the checkout: %s" % path
    listed = subprocess.run(["ansible-galaxy", "collection", "list", "netlock.killswitch", "--format", "json"],
                            capture_output=True, text=True, timeout=120, env=ansible_env(), check=True)
    places = [place for place, found in json.loads(listed.stdout).items() if "netlock.killswitch" in found]
    assert len(places) == 1 and any(under(places[0], p) for p in collections_path.split(os.pathsep)), places
    installed = os.path.join(places[0], "netlock", "killswitch")
    assert os.path.isfile(os.path.join(installed, "MANIFEST.json")), "not installed from a collection artifact"
    assert not os.path.islink(installed) and not under(installed, ROOT + os.sep + "roles")

    task_paths = set(re.findall(r"^task path: (\S+):\d+$", rerun.output, re.M))
    role_tasks = {p for p in task_paths if "/roles/killswitch/" in p}
    assert role_tasks, "no role task paths in the -vv output:\n" + rerun.tail()
    from_checkout = sorted(p for p in task_paths if under(p, ROOT) and not under(p, installed))
    assert not from_checkout, "tasks ran from the checkout: %s" % from_checkout
    assert all(under(p, installed) for p in role_tasks), sorted(role_tasks)


def test_a_second_run_changes_nothing(fleet_hosts, rerun):
    assert rerun.returncode == 0, rerun.tail()
    for host in fleet_hosts:
        counts = rerun.recap.get(host.name)
        assert counts, "%s is missing from the recap:\n%s" % (host.name, rerun.tail())
        assert counts["changed"] == 0 and counts["failed"] == 0 and counts["unreachable"] == 0, \
            "%s: %s\n%s" % (host.name, counts, rerun.tail())
