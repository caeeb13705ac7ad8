# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared setup for the unit tests.

* Makes ``ansible_collections.netlock.killswitch`` importable from a plain checkout: the
  repository root is the collection root, so ``.collections/ansible_collections/netlock/killswitch``
  (gitignored) is a symlink to ``../../..``; it is created here when missing (fresh clone, CI).
* ``nft_accepts``: runs ``nft -c -f`` inside a throwaway network namespace, so checking a
  ruleset never touches the host's tables.  Skips (with the reason) when not root or when
  ``unshare``/``nft`` are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO_ROOT / ".collections"
LINK = COLLECTIONS / "ansible_collections" / "netlock" / "killswitch"


def _ensure_collection_link() -> None:
    if not LINK.exists():
        LINK.parent.mkdir(parents=True, exist_ok=True)
        if LINK.is_symlink():  # dangling
            LINK.unlink()
        LINK.symlink_to(Path("..", "..", ".."), target_is_directory=True)
    assert (LINK / "galaxy.yml").is_file(), "%s does not point at the collection root" % LINK
    if str(COLLECTIONS) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS))


_ensure_collection_link()


# --------------------------------------------------------------------------- nft in a netns

NFT = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
UNSHARE = shutil.which("unshare")


def netns_unavailable_reason():
    """Why rulesets cannot be checked here, or None when they can."""
    if os.geteuid() != 0:
        return "nft -c in a network namespace needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    if NFT is None:
        return "the nft command is not installed"
    if UNSHARE is None:
        return "the unshare command (util-linux) is not installed"
    probe = subprocess.run([UNSHARE, "--net", NFT, "list", "ruleset"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return "cannot run nft in a new network namespace: %s" % (probe.stderr.strip() or probe.stdout.strip())
    return None


_REASON = netns_unavailable_reason()
# Wall time of every nft -c run, for the curious (pytest -s prints the slow ones).
NFT_TIMINGS = []


def run_in_netns(args, input_text=None, timeout=120):
    """Run argv inside a fresh, private network namespace."""
    return subprocess.run([UNSHARE, "--net", "--"] + list(args), capture_output=True, text=True, check=False,
                          input=input_text, timeout=timeout)


def nft_check_text(text):
    """(returncode, stderr, seconds) of ``nft -c -f`` on text, in a throwaway network namespace."""
    with tempfile.NamedTemporaryFile("w", prefix="killswitch-", suffix=".nft", delete=False) as handle:
        handle.write(text)
        path = handle.name
    try:
        start = time.monotonic()
        proc = run_in_netns([NFT, "-c", "-f", path])
        elapsed = time.monotonic() - start
    finally:
        os.unlink(path)
    NFT_TIMINGS.append(elapsed)
    return proc.returncode, (proc.stderr or proc.stdout).strip(), elapsed


def assert_nft_accepts(text):
    """Fail with nft's own error when it refuses the ruleset; returns the nft -c wall time."""
    if _REASON:
        pytest.skip(_REASON)
    rc, err, elapsed = nft_check_text(text)
    assert rc == 0, "nft -c rejected the rendered ruleset:\n%s\n--- ruleset (first 4000 chars) ---\n%s" % (err, text[:4000])
    return elapsed


def load_and_list(text, table="killswitch"):
    """Load text for real in a private network namespace and return ``nft -j list table`` as JSON."""
    if _REASON:
        pytest.skip(_REASON)
    with tempfile.NamedTemporaryFile("w", prefix="killswitch-", suffix=".nft", delete=False) as handle:
        handle.write(text)
        path = handle.name
    try:
        proc = run_in_netns(["sh", "-c", '"$1" -f "$2" && "$1" -j list table inet "$3"', "sh", NFT, path, table])
    finally:
        os.unlink(path)
    assert proc.returncode == 0, "loading the ruleset in a network namespace failed: %s" % proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def nft_accepts():
    """The ``assert_nft_accepts(text)`` helper; skips the test when nft cannot run in a netns.

    Session-scoped so that hypothesis ``@given`` tests may use it.
    """
    if _REASON:
        pytest.skip(_REASON)
    return assert_nft_accepts


@pytest.fixture(scope="session")
def netns_reason():
    return _REASON


@pytest.fixture(scope="session")
def nft_binary():
    if _REASON:
        pytest.skip(_REASON)
    return NFT


@pytest.fixture(scope="session")
def unshare_binary():
    if _REASON:
        pytest.skip(_REASON)
    return UNSHARE


def pytest_terminal_summary(terminalreporter):
    if NFT_TIMINGS:
        terminalreporter.write_line("nft -c in a netns: %d runs, %.2f s in total, slowest %.2f s"
                                    % (len(NFT_TIMINGS), sum(NFT_TIMINGS), max(NFT_TIMINGS)))


@pytest.fixture(scope="session")
def nft_load():
    """The ``load_and_list(text, table)`` helper: real load in a netns, returns ``nft -j`` JSON."""
    if _REASON:
        pytest.skip(_REASON)
    return load_and_list


@pytest.fixture(scope="session")
def nft_accepts_or_none():
    """``assert_nft_accepts`` when nft can run in a netns here, else None (for tests that still have
    pure-Python checks to make without root)."""
    return None if _REASON else assert_nft_accepts
