# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a host has applied, as killswitch_firewall and killswitch_in_force both read it.

One definition of "this ruleset is in force" (the record beside the expected listing, the persisted file and one
live listing) and of "a backend left something", so that the in-force check can never be looser than the apply.
"""

from __future__ import annotations

import hashlib
import json
import os

from ansible_collections.netlock.killswitch.plugins.module_utils import rollback
from ansible_collections.netlock.killswitch.plugins.module_utils.iptables import Iptables
from ansible_collections.netlock.killswitch.plugins.module_utils.nft_live import Nft


def read_text(path):
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def sha256_text(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rollback_files():
    return rollback.paths(rollback.ROLLBACK_DIR)


def rollback_pending():
    """An earlier apply still waits for its confirmation (or its rollback)."""
    return os.path.exists(rollback_files()["armed"])


def applied_record_path(expected_path):
    """Beside the expected listing: the digests of a ruleset and of the listing the kernel made of it."""
    return expected_path + ".sha256"


def applied_record(ruleset_sha256, listing):
    return json.dumps({"ruleset": ruleset_sha256, "listing": sha256_text(listing)}, sort_keys=True) + "\n"


def in_force(firewall, table, path, ruleset_sha256, expected_path):
    """The live listing when the ruleset whose digest is ``ruleset_sha256`` is already in force, else None: one
    listing of the live rules instead of the check, the load in a private namespace and the live listings of a
    full comparison.

    In force means: a record says the kernel listed this very ruleset as the expected listing now on disk (written
    when a full comparison saw it, so it stays true whatever happens to the files), the persisted file is this
    ruleset, and the live rules list exactly as that.  Anything else (a hand edit, a flush, another file) is left
    to the full comparison.
    """
    if not expected_path:
        return None
    expected = read_text(expected_path)
    if expected is None or read_text(applied_record_path(expected_path)) != applied_record(ruleset_sha256, expected):
        return None
    if not os.path.isfile(path) or sha256_file(path) != ruleset_sha256:
        return None
    try:
        live = firewall.listing(table)
    except RuntimeError:  # the full comparison tells what is wrong
        return None
    return live if live == expected else None


def leftovers(firewall, table, path, expected_path=None):
    """What a backend's kill switch left on the host: (the live listing or None, the files that exist)."""
    live = firewall.live(table) if firewall else None
    record = applied_record_path(expected_path) if expected_path else None
    return live, [p for p in (path, expected_path, record) if p and os.path.exists(p)]


def firewall_for(module, backend, required=True):
    """The host's applier for a backend; None when its tools are missing and not required (nothing to remove)."""
    def run(argv):
        return module.run_command(list(argv))
    unshare = module.get_bin_path("unshare", required=required)
    if backend == "iptables":
        tool = module.get_bin_path("iptables-restore", required=required)
        return Iptables(run, sh=module.get_bin_path("sh", required=True), unshare=unshare) if tool else None
    nft = module.get_bin_path("nft", required=required)
    return Nft(run, nft=nft, unshare=unshare) if nft else None


def commands(firewall, table, path):
    """The shell commands the boot unit and the guard run: load the persisted payload, list the live rules."""
    return dict(load=rollback.command(firewall.load_argv(path)), list=firewall.list_command(table))
