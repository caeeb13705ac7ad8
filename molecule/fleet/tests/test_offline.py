"""No package mirror: the role converges, repairs and removes with the tools already there.

The role runs alone here (molecule/fleet/apply.yml, from the installed collection), over SSH.

ks-fleet2 loses python3-apt (what Ansible's package/apt modules need, and would try to install from a
mirror).  The fleet network is internal and the kill switch blocks everything outside the tunnel, so
the host reaches no mirror at all.  Then a host whose nft is missing must fail with a message that
names the missing tool and says that installing it failed.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import APPLY

from lab import fleet
from lab.probe import nft_table, sh

HOST = fleet.managed("ks-fleet2")
LIMIT = ("-l", HOST.name)
NFT = "/usr/sbin/nft"


def run(playbook, *args):
    result = playbook(APPLY, *LIMIT, *args)
    counts = result.recap.get(HOST.name, {})
    return result, counts


def has_python_apt() -> bool:
    return sh(HOST.name, "python3 -c 'import apt_pkg'").returncode == 0


@pytest.fixture(scope="module")
def offline_host():
    """ks-fleet2 without python3-apt (apt-get remove works offline); it stays removed."""
    if has_python_apt():
        removed = sh(HOST.name, "DEBIAN_FRONTEND=noninteractive apt-get remove -y -q python3-apt", timeout=180)
        assert removed.returncode == 0, removed.stdout[-2000:] + removed.stderr[-2000:]
    assert not has_python_apt()
    # No mirror is reachable: the one in the host's apt sources does not answer (bounded: 10 s).
    probe = sh(HOST.name, "timeout 10 apt-get -q -o Acquire::Retries=0 -o Acquire::http::Timeout=5 update", timeout=30)
    assert probe.returncode != 0 or "Err:" in probe.stdout or "W:" in probe.stderr, \
        "the host reached a package mirror:\n" + probe.stdout[-1500:]
    return HOST


def test_converges_without_a_mirror(offline_host, playbook):
    result, counts = run(playbook)
    assert result.returncode == 0 and counts.get("failed") == 0, result.tail()
    assert nft_table(offline_host.name) is not None
    assert not has_python_apt(), "the run installed python3-apt: it must not need a mirror"


def test_repairs_a_deleted_table(offline_host, playbook):
    assert sh(offline_host.name, "systemctl stop netlock-killswitch-guard.timer netlock-killswitch-guard.service netlock-killswitch-watch.service && "
                                 "nft delete table inet killswitch").returncode == 0
    assert nft_table(offline_host.name) is None
    result, counts = run(playbook)
    assert result.returncode == 0 and counts.get("changed", 0) >= 1, result.tail()
    assert nft_table(offline_host.name) is not None, "the run did not put the table back"
    assert sh(offline_host.name, "systemctl is-active -q netlock-killswitch-guard.timer").returncode == 0


def test_removes_and_converges_again(offline_host, playbook, ssh):
    result, counts = run(playbook, "-e", "killswitch_state=absent")
    assert result.returncode == 0 and counts.get("failed") == 0, result.tail()
    assert nft_table(offline_host.name) is None, "state absent left the table loaded"
    result, counts = run(playbook)
    assert result.returncode == 0 and counts.get("changed", 0) >= 1, result.tail()
    assert nft_table(offline_host.name) is not None
    assert ssh(offline_host, "true").returncode == 0
    assert not has_python_apt()


def listing(script: str) -> str:
    """The kill switch table as listed, counters left out."""
    return sh(HOST.name, script + " list table inet killswitch | sed -E 's/counter packets [0-9]+ bytes [0-9]+/counter/'").stdout


def failure_messages(output: str) -> list:
    """The "msg" of every failed task in a run's output."""
    messages = []
    for line in output.splitlines():
        if line.startswith("fatal: ") and "=> {" in line:
            try:
                messages.append(json.loads(line.split("=> ", 1)[1]).get("msg", ""))
            except ValueError:
                messages.append(line)
    return messages


def test_missing_nft_fails_clearly(offline_host, playbook):
    """killswitch_backend: nftables without nft and without a mirror cannot work: it must say so, and change
    nothing."""
    before = listing(NFT)
    assert "policy drop" in before, "the kill switch must be loaded before this test"
    moved = sh(offline_host.name, "mv %s %s.netlock-test" % (NFT, NFT))
    assert moved.returncode == 0, moved.stderr
    try:
        result, counts = run(playbook, "-e", "killswitch_backend=nftables")
        after = listing(NFT + ".netlock-test")  # the table, read with the moved binary
    finally:
        restored = sh(offline_host.name, "mv %s.netlock-test %s" % (NFT, NFT))
    assert restored.returncode == 0, restored.stderr
    assert result.returncode != 0 and counts.get("failed", 0) >= 1, result.tail()
    clear = [m for m in failure_messages(result.output)
             if re.search(r"\bnft\b", m) and re.search(r"install", m, re.I) and re.search(r"fail", m, re.I)]
    assert clear, "no failure names the missing tool and says that installing it failed: %s\n%s" % (
        failure_messages(result.output), result.tail())
    assert result.seconds < 120, "failing took %.0f s" % result.seconds
    assert after == before, "the failed run changed the table"
    result, counts = run(playbook)
    assert result.returncode == 0 and counts.get("failed") == 0, result.tail()


def iptables_chains(host) -> str:
    return sh(host.name, "iptables-save -t filter | grep -E '^(:killswitch-|-A OUTPUT -j killswitch)'").stdout


def test_auto_falls_back_to_iptables_without_nft_and_back(offline_host, playbook):
    """killswitch_backend: auto on a host where nft does not work: the iptables backend, from the same
    variables and without a mirror; once nft works again the next run moves back and removes the chains."""
    assert iptables_chains(offline_host) == ""
    moved = sh(offline_host.name, "mv %s %s.netlock-test" % (NFT, NFT))
    assert moved.returncode == 0, moved.stderr
    try:
        result, counts = run(playbook)
        chains = iptables_chains(offline_host)
    finally:
        restored = sh(offline_host.name, "mv %s.netlock-test %s" % (NFT, NFT))
    assert restored.returncode == 0, restored.stderr
    assert result.returncode == 0 and counts.get("failed") == 0, result.tail()
    assert "Load and persist the kill switch rules (iptables)" in result.output
    assert ":killswitch-out" in chains and "-A OUTPUT -j killswitch-out" in chains
    assert not has_python_apt(), "the fallback must not need a mirror"
    result, counts = run(playbook)
    assert result.returncode == 0 and counts.get("failed") == 0, result.tail()
    assert "Load and persist the kill switch rules (nftables)" in result.output
    assert iptables_chains(offline_host) == "", "the iptables chains stayed after the move back to nftables"
    assert "policy drop" in listing(NFT)
