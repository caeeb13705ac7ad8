"""Management access is never cut, and a cut one is undone: proven over real SSH, not docker exec.

docker exec (the lab's `sh`) only observes here; every change goes over SSH as the operator with sudo,
ControlPersist on as Ansible's default, from the collection installed from its tarball.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from lab import fleet
from lab.probe import sh, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
APPLY = os.path.join(ROOT, "molecule", "fleet", "apply.yml")
HOST = fleet.MANAGED[0]
TIMEOUT = 12  # killswitch_safe_apply_timeout for the lockout cases (10 is the least the policy accepts)
# Cuts only new connections: the controller stays an outbound exception, so an established session (a
# ControlPersist master) keeps working while a new SSH connection is dropped.
NEW_CONNECTIONS_CUT = {"killswitch_management_cidrs": ["198.18.31.0/24"], "killswitch_allow_lockout": True,
                       "killswitch_extra_outbound": [{"cidr": fleet.CONTROLLER}]}
EVERYTHING_CUT = {"killswitch_management_cidrs": ["198.18.31.0/24"], "killswitch_allow_lockout": True}


def playbook(extra=None, env=None, timeout=240, *args):
    """The role alone on HOST over SSH with sudo; returns (process, seconds)."""
    argv = ["ansible-playbook", "-i", fleet.INVENTORY, APPLY, "-l", HOST.name,
            "-e", json.dumps(dict({"killswitch_safe_apply_timeout": TIMEOUT}, **(extra or {}))), *args]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          env=dict(os.environ, **(env or {})), cwd=ROOT)
    return proc, time.monotonic() - started


def management_sources():
    out = sh(HOST.name, "nft -j list set inet killswitch management_v4").stdout
    if not out:
        return []
    elements = [i["set"].get("elem", []) for i in json.loads(out)["nftables"] if "set" in i]
    return sorted(str(e.get("prefix", {}).get("addr", e)) if isinstance(e, dict) else e for e in sum(elements, []))


def fresh_ssh_works():
    return fleet.ssh(HOST, "true", timeout=fleet.SSH_TIMEOUT + 5).returncode == 0


@pytest.fixture(scope="module", autouse=True)
def converged():
    proc, _seconds = playbook()
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.fixture(autouse=True)
def next_run_works(converged):
    """Every case ends with the host reachable over a new SSH connection and the next run applying."""
    yield
    assert wait_for(fresh_ssh_works, TIMEOUT + 10), "the host is still unreachable over SSH after the case"
    proc, _seconds = playbook()
    assert proc.returncode == 0, "the next run after the case failed:\n" + proc.stdout[-3000:]


def test_the_default_management_source_is_the_controller():
    assert management_sources() == [fleet.CONTROLLER]
    assert fresh_ssh_works()


def test_a_policy_that_cuts_ssh_is_refused_before_the_host_changes():
    before = sh(HOST.name, "nft list table inet killswitch").stdout
    proc, _seconds = playbook({"killswitch_management_cidrs": ["198.18.31.0/24"]})
    assert proc.returncode != 0
    assert "would cut the live management connection from %s to port 22" % fleet.CONTROLLER in proc.stdout
    assert "killswitch_allow_lockout" in proc.stdout
    assert sh(HOST.name, "nft list table inet killswitch").stdout == before


def test_a_management_port_the_policy_does_not_open_is_refused():
    proc, _seconds = playbook({"killswitch_management_ports": [2222]})
    assert proc.returncode != 0 and "to port 22" in proc.stdout


@pytest.mark.parametrize("cut,ssh_args", [
    (EVERYTHING_CUT, None),
    (EVERYTHING_CUT, "-o ControlMaster=no -o ControlPath=none"),
    (NEW_CONNECTIONS_CUT, None),  # ControlPersist's master survives this cut: it must not fake the confirmation
], ids=["cut-controlpersist", "cut-no-controlpersist", "new-connections-cut-controlpersist"])
def test_a_forced_cut_fails_in_time_and_the_host_restores_itself(cut, ssh_args):
    noop, noop_seconds = playbook()
    assert noop.returncode == 0 and "changed=0" in noop.stdout, noop.stdout[-2000:]
    before = sh(HOST.name, "nft list table inet killswitch").stdout
    env = {"ANSIBLE_SSH_ARGS": ssh_args} if ssh_args else {}
    proc, seconds = playbook(cut, env)
    assert proc.returncode != 0, "a policy that cuts SSH was confirmed:\n" + proc.stdout[-3000:]
    assert "could not be reached over a new connection" in proc.stdout, proc.stdout[-3000:]
    # The apply itself may take the timeout plus a few seconds; the rest is the run's fixed cost.
    assert seconds - noop_seconds <= TIMEOUT + 8, "the run took %.1fs (a no-op run %.1fs)" % (seconds, noop_seconds)
    assert wait_for(lambda: sh(HOST.name, "nft list table inet killswitch").stdout == before, 10), \
        "the host did not restore its previous ruleset"
    assert sh(HOST.name, "cat /run/netlock-killswitch/rollback/status").stdout.strip() == "rolled back"
    assert fresh_ssh_works()


def test_the_controller_is_found_without_become():
    """The policy task alone, without sudo: the same management path as with it."""
    proc = subprocess.run(["ansible", "-i", fleet.INVENTORY, HOST.name, "-m", "netlock.killswitch.killswitch_policy",
                           "-a", json.dumps({"tunnel_interfaces": ["wg0"],
                                             "endpoints": [{"address": fleet.ENDPOINT[0], "port": fleet.ENDPOINT[1]}]})],
                          capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert '"source": "%s"' % fleet.CONTROLLER in proc.stdout


def test_the_controller_is_found_over_paramiko_with_su():
    """paramiko instead of OpenSSH, su instead of sudo: su resets the environment too."""
    sh(HOST.name, "echo root:netlock-lab | chpasswd")
    try:
        proc, _seconds = playbook({"ansible_connection": "ansible.builtin.paramiko_ssh", "ansible_become_method": "su",
                                   "ansible_become_password": "netlock-lab", "ansible_paramiko_host_key_checking": False})
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert management_sources() == [fleet.CONTROLLER]
    finally:
        sh(HOST.name, "passwd -l root >/dev/null")
