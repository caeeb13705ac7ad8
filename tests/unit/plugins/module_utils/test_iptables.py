# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The iptables applier for real, in a private network namespace, on iptables-nft and iptables-legacy.

Each test runs one Python script inside ``unshare --net`` with the variant's binaries first in PATH, so
the payload script and the applier use the variant under test, as the host's alternatives would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.netlock.killswitch.plugins.module_utils import rollback
from ansible_collections.netlock.killswitch.plugins.module_utils.iptables import Iptables, list_command, parse_listing
from ansible_collections.netlock.killswitch.plugins.module_utils.status import iptables_status
from ansible_collections.netlock.killswitch.plugins.plugin_utils.backends import render_for
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy

COLLECTIONS = str(Path(__file__).resolve().parents[4] / ".collections")
VARIANTS = ("nft", "legacy")
POLICY = dict(killswitch_tunnel_interfaces=["wg0", "tun*"],
              killswitch_endpoints=[{"address": "198.51.100.7", "port": 51820}],
              killswitch_endpoint_mark=51820, killswitch_ipv6="tunnel", killswitch_management_cidrs=["198.18.0.1"])


def missing():
    if os.geteuid() != 0:
        return "needs root for a private network namespace"
    for tool in ("unshare", "iptables-nft-restore", "iptables-legacy-restore"):
        if not shutil.which(tool) and not os.path.exists("/usr/sbin/" + tool):
            return "%s is not installed" % tool
    return None


pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")


def payload(variant, tmp_path, **overrides):
    """The rendered payload, pointed at the variant's binaries."""
    variant_bin(variant, tmp_path)  # in_netns puts it first in PATH; the payload keeps PATH's order
    return render_for(parse_policy(dict(POLICY, **overrides)), "iptables")


def variant_bin(variant, tmp_path):
    directory = tmp_path / ("bin-" + variant)
    if not directory.exists():
        directory.mkdir()
        for family in ("iptables", "ip6tables"):
            for suffix in ("", "-save", "-restore"):
                (directory / (family + suffix)).symlink_to("/usr/sbin/%s-%s%s" % (family, variant, suffix))
    return directory


def in_netns(variant, tmp_path, body, *args):
    """Run ``body`` (Python; ``fw`` is an Iptables applier, ``sh(cmd)`` runs shell) in a fresh netns."""
    prelude = (
        "import json, subprocess, sys\n"
        "from ansible_collections.netlock.killswitch.plugins.module_utils.iptables import Iptables\n"
        "def run(argv):\n"
        "    p = subprocess.run(list(argv), capture_output=True, text=True, check=False)\n"
        "    return p.returncode, p.stdout, p.stderr\n"
        "def sh(cmd):\n"
        "    return subprocess.run(['sh', '-c', cmd], capture_output=True, text=True, check=False)\n"
        "fw = Iptables(run, sh='/bin/sh', unshare='unshare')\n"
        "out = {}\n"
    )
    env = dict(os.environ, PYTHONPATH=COLLECTIONS,
               PATH="%s:%s" % (variant_bin(variant, tmp_path), os.environ.get("PATH", "")))
    proc = subprocess.run(["unshare", "--net", "--", sys.executable, "-c",
                           prelude + body + "\nprint(json.dumps(out))\n"] + [str(a) for a in args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_apply_compare_repair_and_delete(variant, tmp_path):
    path = tmp_path / "ruleset.sh"
    path.write_text(payload(variant, tmp_path))
    out = in_netns(variant, tmp_path, """
path = sys.argv[1]
out["missing"] = fw.live("killswitch") is None
out["check"] = fw.check(path)
desired = fw.desired(path, "killswitch")
sh("iptables -A OUTPUT -o eth9 -j ACCEPT")      # another tool's rule, before we load
out["apply"] = fw.apply(path)
out["same"] = fw.live("killswitch") == desired
out["theirs_kept"] = "-A OUTPUT -o eth9 -j ACCEPT" in sh("iptables-save -t filter").stdout
sh("iptables -I OUTPUT 1 -o eth8 -j ACCEPT")    # inserted above our jump: drift
out["above_is_drift"] = fw.live("killswitch") != desired
out["reapply"] = fw.apply(path)
out["repaired"] = fw.live("killswitch") == desired
out["one_jump"] = sh("iptables-save -t filter").stdout.count("-j killswitch-out") == 1
sh("iptables -A killswitch-out -j ACCEPT")      # an injected rule in our chain
out["injected_is_drift"] = fw.live("killswitch") != desired
out["reloaded"] = fw.apply(path) is None and fw.live("killswitch") == desired
out["delete"] = fw.delete("killswitch")
out["gone"] = fw.live("killswitch") is None
saved = sh("iptables-save -t filter").stdout + sh("ip6tables-save -t filter").stdout
out["no_trace"] = "killswitch" not in saved
out["theirs_still_kept"] = "-A OUTPUT -o eth9 -j ACCEPT" in saved
""", path)
    assert out == {"missing": True, "check": None, "apply": None, "same": True, "theirs_kept": True,
                   "above_is_drift": True, "reapply": None, "repaired": True, "one_jump": True,
                   "injected_is_drift": True, "reloaded": True, "delete": None, "gone": True, "no_trace": True,
                   "theirs_still_kept": True}


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_payload_the_kernel_refuses_leaves_the_previous_chains(variant, tmp_path):
    good = tmp_path / "good.sh"
    good.write_text(payload(variant, tmp_path))
    bad = tmp_path / "bad.sh"
    bad.write_text(payload(variant, tmp_path).replace("-j DROP", "-j NO-SUCH-TARGET", 1))
    out = in_netns(variant, tmp_path, """
good, bad = sys.argv[1:3]
fw.apply(good)
before = fw.live("killswitch")
# iptables-nft's --test only parses (a jump to a missing chain passes it); the module also loads the
# payload in a throwaway namespace before touching the host, and that load refuses it.
try:
    fw.desired(bad, "killswitch")
    loads = True
except RuntimeError:
    loads = False
out["check_refuses"] = fw.check(bad) is not None or not loads
out["apply_fails"] = fw.apply(bad) is not None
out["unchanged"] = fw.live("killswitch") == before
""", good, bad)
    assert out == {"check_refuses": True, "apply_fails": True, "unchanged": True}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("had_rules", [True, False])
def test_previous_payload_restores_exactly(variant, had_rules, tmp_path):
    old = tmp_path / "old.sh"
    old.write_text(payload(variant, tmp_path, killswitch_allow_lan=True))
    new = tmp_path / "new.sh"
    new.write_text(payload(variant, tmp_path, killswitch_forward="off"))
    previous = tmp_path / "previous.sh"
    out = in_netns(variant, tmp_path, """
old, new, previous, had = sys.argv[1:5]
if had == "True":
    fw.apply(old)
before = fw.live("killswitch")
text = fw.previous_payload("killswitch", before)
open(previous, "w").write(text)
out["new"] = fw.apply(new)
out["changed"] = fw.live("killswitch") != before
out["restore"] = fw.apply(previous)
out["restored"] = fw.live("killswitch") == before
""", old, new, previous, had_rules, variant_bin(variant, tmp_path))
    assert out == {"new": None, "changed": True, "restore": None, "restored": True}


@pytest.mark.parametrize("variant", VARIANTS)
def test_unconfirmed_apply_rolls_back_to_the_previous_chains(variant, tmp_path):
    """The commit-confirmed scripts with the iptables payloads: apply, no confirm, rollback."""
    files = rollback.paths(str(tmp_path / "rollback"))
    os.makedirs(str(tmp_path / "rollback"))
    etc = tmp_path / "etc"
    etc.mkdir()
    ruleset, expected = str(etc / "ruleset.sh"), str(etc / "expected.txt")
    staged = rollback.staged_paths(ruleset, expected)
    fw = Iptables(None)
    old, new = payload(variant, tmp_path), payload(variant, tmp_path, killswitch_allow_lan=True)
    Path(ruleset).write_text(old)
    Path(expected).write_text("old listing\n")
    for name in ("had-file", "had-expected", "armed"):
        Path(files[name]).write_text("")
    Path(files["previous-file"]).write_text(old)
    Path(files["previous-expected.txt"]).write_text("old listing\n")
    Path(files["status"]).write_text(rollback.PENDING + "\n")
    Path(staged["ruleset"]).write_text(new)
    Path(staged["expected"]).write_text("new listing\n")
    Path(files["apply.sh"]).write_text(rollback.apply_script(rollback.command(fw.load_argv(staged["ruleset"])), files,
                                                             staged, ruleset, expected, True, True))
    Path(files["rollback.sh"]).write_text(rollback.script(rollback.command(fw.load_argv(files["previous-rules"])),
                                                          ruleset, expected, files, staged))
    systemctl = variant_bin(variant, tmp_path) / "systemctl"
    systemctl.write_text("#!/bin/sh\nexit 0\n")
    systemctl.chmod(0o755)
    out = in_netns(variant, tmp_path, """
ruleset, previous, apply_sh, rollback_sh, status, vbin = sys.argv[1:7]
fw.apply(ruleset)
before = fw.live("killswitch")
open(previous, "w").write(fw.previous_payload("killswitch", before))
out["apply"] = sh("/bin/sh " + apply_sh).returncode
out["applied"] = open(status).read().strip()
out["changed"] = fw.live("killswitch") != before
out["rollback"] = sh("/bin/sh " + rollback_sh).returncode
out["status"] = open(status).read().strip()
out["restored"] = fw.live("killswitch") == before
out["file"] = open(ruleset).read() == open(sys.argv[7]).read()
""", ruleset, files["previous-rules"], files["apply.sh"], files["rollback.sh"], files["status"],
                   variant_bin(variant, tmp_path), files["previous-file"])
    assert out == {"apply": 0, "applied": rollback.APPLIED, "changed": True, "rollback": 0,
                   "status": rollback.ROLLED_BACK, "restored": True, "file": True}


def test_parse_listing_splits_the_families():
    text = ("# iptables\n:ks-out -\n-A ks-out -j DROP\njump OUTPUT 1 ks-out\n"
            "# ip6tables\n:ks-out -\n-A ks-out -o wg0 -j ACCEPT\n")
    assert parse_listing(text) == {4: (["ks-out"], ["-A ks-out -j DROP"]), 6: (["ks-out"], ["-A ks-out -o wg0 -j ACCEPT"])}


def test_list_command_names_only_our_chains():
    command = list_command("ks")
    assert "ks-in|ks-out|ks-fwd" in command and "for family in iptables ip6tables" in command


@pytest.mark.parametrize("saved,digest,expected", [
    (':ks-out - [0:0]\n-A ks-out -m comment --comment "netlock.killswitch 0123456789abcdef"\n', "0123456789abcdef" * 4,
     dict(present=True, digest="0123456789abcdef", matches=True)),
    (':ks-out - [0:0]\n-A ks-out -m comment --comment "netlock.killswitch 0123456789abcdef"\n', "f" * 64,
     dict(present=True, digest="0123456789abcdef", matches=False)),
    (":INPUT ACCEPT [0:0]\n", "f" * 64, dict(present=False, digest=None, matches=False)),
    (":ks-out - [0:0]\n", None, dict(present=True, digest=None, matches=None)),
])
def test_iptables_status_reads_the_digest_comment(saved, digest, expected):
    assert iptables_status(lambda argv: (0, saved, ""), "iptables-save", "ks", digest) == expected
