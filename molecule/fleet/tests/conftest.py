"""Fixtures for the SSH fleet scenario (lab/fleet.py).

The tests run as molecule's verifier, after converge: the fleet is up and every managed host carries
the kill switch, applied over SSH as ``operator`` with sudo by the collection installed from its
tarball.  Outside molecule, run them with the same environment::

    ANSIBLE_COLLECTIONS_PATH=$PWD/.cache/fleet/galaxy/collections ANSIBLE_PIPELINING=true \\
        .venv/bin/python -m pytest -p no:cacheprovider molecule/fleet/tests

Fixtures (all plain values or functions, session scoped):

``fleet_hosts``       the managed hosts, ``lab.topology.Host`` objects (``.name`` is the container and
                      the inventory name, ``.v4(fleet.FLEET)`` the address Ansible connects to)
``inventory``         the path of inventories/fleet (its group_vars find the key and known_hosts)
``collections_path``  the scenario's ANSIBLE_COLLECTIONS_PATH: the tarball's install directory only
``playbook``          ``playbook(name, *args, timeout=900) -> Run``: ansible-playbook against the fleet
                      inventory; ``name`` is a collection playbook (``netlock.killswitch.rollout``) or a
                      path; ``Run`` has ``returncode``, ``output`` (stdout + stderr), ``recap``
                      (``{host: {"ok": n, "changed": n, "unreachable": n, "failed": n, ...}}``) and
                      ``seconds``
``ssh``               ``ssh(host, *command) -> CompletedProcess``: a new SSH connection as the operator
                      (no ControlMaster), known_hosts checked

``lab.probe`` (Capture, canary, sh, nft_table, killswitch_off, wait_for) and ``lab.cases.host_link``
work on these hosts as on the leak lab's.  ``docker exec`` (``sh``) is for observing and tampering
only: everything Ansible does here goes over SSH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lab import fleet  # noqa: E402  pylint: disable=wrong-import-position

ROLLOUT = "netlock.killswitch.rollout"
APPLY = os.path.join(os.path.dirname(__file__), "..", "apply.yml")  # the role alone, from the installed collection
RECAP = re.compile(r"^(\S+)\s*:\s*((?:\w+=\d+\s*)+)$", re.M)


def parse_recap(output: str) -> Dict[str, Dict[str, int]]:
    """The PLAY RECAP of an ansible-playbook run: {host: {"ok": 3, "changed": 0, ...}}."""
    return {m.group(1): {k: int(v) for k, v in (pair.split("=") for pair in m.group(2).split())}
            for m in RECAP.finditer(output)}


@dataclass
class Run:
    argv: List[str]
    returncode: int
    output: str
    seconds: float
    recap: Dict[str, Dict[str, int]] = field(default_factory=dict)

    def tail(self, chars: int = 4000) -> str:
        return "%s\n...\n%s" % (" ".join(self.argv), self.output[-chars:])


def ansible_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ANSIBLE_PIPELINING", "true")
    env["ANSIBLE_FORCE_COLOR"] = "0"
    return env


def run_playbook(name: str, *args: str, timeout: float = 900) -> Run:
    argv = ["ansible-playbook", "-i", fleet.INVENTORY, name, *args]
    started = time.monotonic()
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                            env=ansible_env(), cwd=ROOT, check=False)
    return Run(argv, result.returncode, result.stdout, time.monotonic() - started, parse_recap(result.stdout))


@pytest.fixture(scope="session")
def fleet_hosts():
    return list(fleet.MANAGED)


@pytest.fixture(scope="session")
def inventory():
    return fleet.INVENTORY


@pytest.fixture(scope="session")
def collections_path():
    path = os.environ.get("ANSIBLE_COLLECTIONS_PATH", "")
    assert path, "ANSIBLE_COLLECTIONS_PATH is not set: run through molecule (see molecule/fleet/molecule.yml)"
    return path


@pytest.fixture(scope="session")
def playbook():
    return run_playbook


@pytest.fixture(scope="session")
def ssh():
    return fleet.ssh
