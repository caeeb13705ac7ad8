# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NFT_KEYWORDS holds every word this machine's nft refuses as a table name (the policy refuses them on the
controller, so a host never meets ``nft -f`` failing on ``killswitch_table``)."""

from __future__ import annotations

import ctypes.util
import re
import subprocess
from pathlib import Path

import pytest

from ansible_collections.netlock.killswitch.plugins.plugin_utils.nft_keywords import NFT_KEYWORDS
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import _TABLE_RE as TABLE_NAME

OPERATORS = ("and", "or", "xor", "not", "lshift", "rshift")
KNOWN = ("table", "icmp", "or")  # refused for certain: the check must find them, or it is broken


def library_words():
    """Lower-case words stored as C strings in libnftables: its keywords are among them."""
    name = ctypes.util.find_library("nftables")  # "libnftables.so.1"; ldconfig knows where it lives
    listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout if name else ""
    path = next((Path(line.split("=>")[-1].strip()) for line in listing.splitlines() if name and name in line), None)
    if path is None or not path.exists():
        pytest.skip("libnftables is not installed")
    return {w.decode() for w in re.findall(rb"(?<=\0)([a-z][a-z0-9]{1,23})(?=\0)", path.read_bytes())}


def refused(words, netns):
    """The words nft -c refuses as an inet table's name, checked in one private network namespace."""
    script = 'for w in "$@"; do nft -c "table inet $w" >/dev/null 2>&1 || echo "$w"; done'
    proc = subprocess.run([netns, "--net", "--", "sh", "-c", script, "sh"] + sorted(words), capture_output=True,
                          text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_every_word_nft_refuses_as_a_table_name_is_a_keyword(netns_reason, unshare_binary):
    if netns_reason:
        pytest.skip(netns_reason)
    words = {w for w in library_words() | set(OPERATORS) | set(KNOWN) if TABLE_NAME.fullmatch(w)}
    assert len(words) > 300, "too few words read from libnftables to mean anything: %d" % len(words)
    refused_words = refused(words, unshare_binary)
    assert set(KNOWN) <= refused_words, "the check itself is broken: %s" % sorted(refused_words)[:20]
    assert sorted(refused_words - NFT_KEYWORDS) == []
