# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""module_utils/status.py: the read-only status of the kill switch, against scripted commands and a fake sysfs."""

from __future__ import annotations

import subprocess

import pytest

from ansible_collections.netlock.killswitch.plugins.module_utils import status as st
from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_nftables import render
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy

DIGEST = "3f2a9c0d11b4e7a8" + "0" * 48
OTHER_DIGEST = "ffffffffffffffff" + "0" * 48


def table_text(comment="netlock.killswitch " + DIGEST[:16], table="killswitch"):
    """What ``nft list table`` prints: the table's comment first, then sets and chains (which may have their own)."""
    lines = ["table inet %s {" % table]
    if comment is not None:
        lines.append('\tcomment "%s"' % comment)
    lines += ["\tset dns_v4 {", "\t\ttype ipv4_addr", '\t\tcomment "netlock.killswitch 0000000000000000"',
              "\t\tflags interval", "\t\telements = { 198.18.100.1 }", "\t}", "",
              "\tchain output {", "\t\ttype filter hook output priority filter; policy drop;",
              '\t\tcomment "netlock.killswitch 1111111111111111"', '\t\toifname "lo" accept', "\t}", "}", ""]
    return "\n".join(lines)


class Runner:
    """Scripted command results, keyed by the command's first words; records every command."""

    def __init__(self, table=None, enabled=True, active=True, ping_ok=True, bridge=None):
        self.table = table_text() if table is None else table
        self.bridge = bridge
        self.enabled = enabled
        self.active = active
        self.ping_ok = ping_ok
        self.calls = []

    def __call__(self, argv):
        argv = list(argv)
        self.calls.append(argv)
        name = argv[0].rsplit("/", 1)[-1]
        if name == "nft" and argv[1:] == ["list", "table", "bridge", "killswitch"]:
            return (0, self.bridge, "") if self.bridge else (1, "", "Error: No such file or directory")
        if name == "nft":
            assert argv[1:] == ["list", "table", "inet", "killswitch"], argv
            return (0, self.table, "") if self.table else (1, "", "Error: No such file or directory")
        if name == "systemctl" and argv[1] == "is-enabled":
            return (0, "enabled\n", "") if self.enabled else (1, "disabled\n", "")
        if name == "systemctl" and argv[1] == "is-active":
            return (0, "active\n", "") if self.active else (3, "inactive\n", "")
        if name == "ping":
            return (0, "3 packets transmitted, 3 received", "") if self.ping_ok else (1, "100% packet loss", "")
        raise AssertionError("unexpected command %r" % argv)

    def pings(self):
        return [argv for argv in self.calls if argv[0].endswith("ping")]


@pytest.fixture
def sysfs(tmp_path):
    """A fake /sys/class/net: add(name, flags, operstate)."""
    root = tmp_path / "class-net"
    root.mkdir()

    def add(name, flags="0x1091", operstate="up"):
        directory = root / name
        directory.mkdir()
        (directory / "flags").write_text(flags + "\n")
        (directory / "operstate").write_text(operstate + "\n")
    add.root = str(root)
    return add


def run_status(runner, sysfs_root, **kwargs):
    kwargs.setdefault("digest", DIGEST)
    return st.status(runner, nft="/usr/sbin/nft", systemctl="/bin/systemctl", ping="/bin/ping",
                     sys_class_net=sysfs_root, **kwargs)


# --------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("comment,expected", [
    ("netlock.killswitch 3f2a9c0d11b4e7a8", "3f2a9c0d11b4e7a8"),
    (" netlock.killswitch 3f2a9c0d11b4e7a8 ", "3f2a9c0d11b4e7a8"),
    ("netlock.killswitch 3F2A9C0D11B4E7A8", None),  # the renderer writes lowercase hex
    ("netlock.killswitch 3f2a9c0d", None),
    ("something else", None),
    ("", None),
    (None, None),
])
def test_digest_from_comment(comment, expected):
    assert st.digest_from_comment(comment) == expected


def test_the_renderer_writes_the_comment_the_status_reads():
    """The shape the status reads is the one the renderer writes (first 16 hex digits of the digest)."""
    policy = parse_policy({"killswitch_tunnel_interfaces": ["wg0"],
                           "killswitch_endpoints": [{"address": "198.51.100.7", "port": 51820}],
                           "killswitch_management_cidrs": []}, resolve=lambda name: [])
    ruleset = render(policy)
    comments = [line.strip() for line in ruleset.splitlines() if line.strip().startswith("comment ")]
    assert len(comments) == 2  # the inet table's and the bridge table's
    for comment in comments:
        assert st.digest_from_comment(comment[len("comment "):].strip('"')) == policy.digest()[:16]


def test_table_status_matching_digest():
    assert st.table_status(Runner(), "nft", "killswitch", DIGEST) == dict(present=True, digest=DIGEST[:16], matches=True)


def test_table_status_accepts_the_short_digest_and_uppercase():
    assert st.table_status(Runner(), "nft", "killswitch", DIGEST[:16].upper())["matches"] is True


def test_table_status_other_digest():
    assert st.table_status(Runner(), "nft", "killswitch", OTHER_DIGEST) == dict(present=True, digest=DIGEST[:16], matches=False)


def test_table_status_without_comment():
    runner = Runner(table=table_text(comment=None))
    assert st.table_status(runner, "nft", "killswitch", DIGEST) == dict(present=True, digest=None, matches=False)


def test_table_status_no_digest_expected():
    assert st.table_status(Runner(), "nft", "killswitch", None)["matches"] is None


def test_table_status_absent():
    runner = Runner(table="")
    assert st.table_status(runner, "nft", "killswitch", DIGEST) == dict(present=False, digest=None, matches=False)
    assert st.table_status(runner, "nft", "killswitch", None) == dict(present=False, digest=None, matches=None)
    assert runner.calls[0] == ["nft", "list", "table", "inet", "killswitch"]


def test_table_status_garbage_raises():
    with pytest.raises(RuntimeError, match="unexpected listing"):
        st.table_status(Runner(table="not a listing"), "nft", "killswitch", DIGEST)


def test_table_comment_is_the_tables_own():
    """Set and chain comments do not count, wherever they are."""
    assert st.table_comment(table_text()) == "netlock.killswitch " + DIGEST[:16]
    assert st.table_comment(table_text(comment=None)) is None
    assert st.table_comment("table inet killswitch {\n\tchain output {\n\t}\n\tcomment \"late\"\n}\n") == "late"
    assert st.table_comment("") is None


def test_the_status_reads_what_nft_lists_for_the_rendered_ruleset(tmp_path, nft_binary, unshare_binary):
    """End to end with the real nft: render, load in a private network namespace, list, read the digest."""
    policy = parse_policy({"killswitch_tunnel_interfaces": ["wg0"],
                           "killswitch_endpoints": [{"address": "198.51.100.7", "port": 51820}],
                           "killswitch_dns_servers": ["10.64.0.1"],
                           "killswitch_management_cidrs": []}, resolve=lambda name: [])
    path = tmp_path / "ruleset.nft"
    path.write_text(render(policy))

    def run_in_netns(argv):
        proc = subprocess.run([unshare_binary, "--net", "--", "sh", "-c", '"$1" -f "$2" && shift 2 && exec "$@"', "sh",
                               nft_binary, str(path)] + list(argv), capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    result = st.table_status(run_in_netns, nft_binary, "killswitch", policy.digest())
    assert result == dict(present=True, digest=policy.digest()[:16], matches=True)
    assert st.table_status(run_in_netns, nft_binary, "other", policy.digest())["present"] is False


@pytest.mark.parametrize("name,pattern,expected", [
    ("wg0", "wg0", True), ("wg01", "wg0", False), ("tun3", "tun*", True), ("tun", "tun*", True),
    ("eth0", "tun*", False), ("wg0", "*", True),
])
def test_matches_pattern(name, pattern, expected):
    assert st.matches_pattern(name, pattern) is expected


@pytest.mark.parametrize("flags,operstate,expected", [
    ("0x91", "unknown", True),      # WireGuard: UP|POINTOPOINT|NOARP, no operstate
    ("0x1003", "up", True),
    ("0x90", "unknown", False),     # administratively down
    ("0x1003", "down", False),      # no carrier
    ("0x1003", "lowerlayerdown", False),
    ("nonsense", "up", False),
])
def test_interface_up(sysfs, flags, operstate, expected):
    sysfs("wg0", flags, operstate)
    assert st.interface_up(sysfs.root, "wg0") is expected


def test_interface_up_missing(sysfs):
    assert st.interface_up(sysfs.root, "wg0") is False


def test_tunnel_names_expands_wildcards_and_keeps_absent_names(sysfs):
    for name in ("eth0", "tun0", "tun1", "wg0"):
        sysfs(name)
    assert st.tunnel_names(sysfs.root, ["tun*", "wg0", "wg1"]) == ["tun0", "tun1", "wg0", "wg1"]
    assert st.tunnel_names(sysfs.root, ["ppp*"]) == []
    assert st.tunnel_names(sysfs.root + "/missing", ["wg0"]) == ["wg0"]


def test_traffic_binds_ping_to_the_interface():
    runner = Runner()
    assert st.traffic(runner, "/bin/ping", "wg0", "198.18.100.1") == st.TRAFFIC_OK
    argv = runner.pings()[0]
    assert argv[argv.index("-I") + 1] == "wg0" and argv[-1] == "198.18.100.1"


def test_traffic_no_reply():
    assert st.traffic(Runner(ping_ok=False), "/bin/ping", "wg0", "198.18.100.1") == st.TRAFFIC_FAILED


@pytest.mark.parametrize("ping,target", [(None, "198.18.100.1"), ("/bin/ping", None), ("/bin/ping", "")])
def test_traffic_not_checked(ping, target):
    runner = Runner()
    assert st.traffic(runner, ping, "wg0", target) == st.TRAFFIC_NOT_CHECKED
    assert runner.calls == []


# --------------------------------------------------------------------------- status()


def test_in_force(sysfs):
    sysfs("wg0", "0x91", "unknown")
    result = run_status(Runner(), sysfs.root, tunnel_interfaces=["wg0"], traffic_target="198.18.100.1")
    assert result["ok"] is True and result["problems"] == []
    assert result["table"] == dict(present=True, digest=DIGEST[:16], matches=True)
    assert result["boot_unit"] == dict(name="netlock-killswitch.service", enabled=True)
    assert result["guard"] == dict(name="netlock-killswitch-guard.timer", active=True)
    assert result["tunnels"] == [dict(name="wg0", up=True, traffic="ok", target="198.18.100.1")]
    assert result["msg"] == "kill switch in force"


def test_the_shape_is_always_the_same(sysfs):
    keys = {"table", "bridge_table", "boot_unit", "guard", "tunnels", "ok", "problems", "msg"}
    assert set(run_status(Runner(), sysfs.root)) == keys
    assert set(run_status(Runner(table="", enabled=False, active=False), sysfs.root)) == keys
    assert set(run_status(Runner(), sysfs.root, state="absent")) == keys


def test_the_bridge_table_is_judged_by_its_digest_and_must_go_with_the_kill_switch(sysfs):
    bridge = table_text().replace("table inet", "table bridge")
    assert run_status(Runner(bridge=bridge), sysfs.root)["ok"] is True
    assert run_status(Runner(), sysfs.root)["ok"] is True  # forward off: no bridge table
    stale = run_status(Runner(bridge=table_text(comment="netlock.killswitch " + "1" * 16).replace("inet", "bridge")), sysfs.root)
    assert stale["problems"] == ["table bridge killswitch carries policy digest %s, expected %s" % ("1" * 16, DIGEST[:16])]
    left = run_status(Runner(table="", enabled=False, active=False, bridge=bridge), sysfs.root, state="absent")
    assert left["problems"] == ["table bridge killswitch is still loaded"]


def test_every_problem_is_named(sysfs):
    sysfs("wg0", "0x91", "unknown")
    runner = Runner(table=table_text(comment="netlock.killswitch " + OTHER_DIGEST[:16]), enabled=False, active=False,
                    ping_ok=False)
    result = run_status(runner, sysfs.root, tunnel_interfaces=["wg0"], traffic_target="198.18.100.1")
    assert result["ok"] is False
    assert result["problems"] == [
        "table inet killswitch carries policy digest ffffffffffffffff, expected 3f2a9c0d11b4e7a8",
        "netlock-killswitch.service is not enabled",
        "netlock-killswitch-guard.timer is not active",
        "no reply from 198.18.100.1 through wg0: the tunnel is up but traffic does not flow",
    ]
    assert result["msg"] == "; ".join(result["problems"])
    assert result["tunnels"][0]["traffic"] == "failed"


def test_missing_table(sysfs):
    result = run_status(Runner(table=""), sysfs.root)
    assert result["ok"] is False
    assert result["problems"] == ["table inet killswitch is not loaded"]


def test_guard_not_required_when_disabled(sysfs):
    result = run_status(Runner(active=False), sysfs.root, guard=False)
    assert result["ok"] is True
    assert result["guard"]["active"] is False


def test_tunnel_down_is_not_a_problem_and_is_not_probed(sysfs):
    sysfs("wg0", "0x90", "down")
    runner = Runner(ping_ok=False)
    result = run_status(runner, sysfs.root, tunnel_interfaces=["wg0", "wg1"], traffic_target="198.18.100.1")
    assert result["ok"] is True
    assert result["tunnels"] == [dict(name="wg0", up=False, traffic="not checked", target=None),
                                 dict(name="wg1", up=False, traffic="not checked", target=None)]
    assert runner.pings() == []


def test_no_target_means_not_checked(sysfs):
    sysfs("wg0", "0x91", "unknown")
    runner = Runner(ping_ok=False)
    result = run_status(runner, sysfs.root, tunnel_interfaces=["wg0"])
    assert result["ok"] is True
    assert result["tunnels"] == [dict(name="wg0", up=True, traffic="not checked", target=None)]
    assert runner.pings() == []


def test_every_up_tunnel_is_probed(sysfs):
    sysfs("tun0")
    sysfs("tun1")
    runner = Runner()
    result = run_status(runner, sysfs.root, tunnel_interfaces=["tun*"], traffic_target="2001:db8:100::1")
    assert [t["name"] for t in result["tunnels"]] == ["tun0", "tun1"]
    assert [argv[argv.index("-I") + 1] for argv in runner.pings()] == ["tun0", "tun1"]


def test_without_expected_digest_only_presence_counts(sysfs):
    runner = Runner(table=table_text(comment=None))
    result = run_status(runner, sysfs.root, digest=None)
    assert result["ok"] is True
    assert result["table"]["matches"] is None


def test_absent_is_clean(sysfs):
    result = run_status(Runner(table="", enabled=False, active=False), sysfs.root, state="absent",
                        tunnel_interfaces=["wg0"], traffic_target="198.18.100.1")
    assert result["ok"] is True and result["msg"] == "kill switch removed"
    assert result["tunnels"] == []


def test_absent_with_leftovers(sysfs):
    result = run_status(Runner(), sysfs.root, state="absent")
    assert result["ok"] is False
    assert result["problems"] == ["table inet killswitch is still loaded", "netlock-killswitch.service is still enabled",
                                  "netlock-killswitch-guard.timer is still active"]


def test_read_only(sysfs):
    """Only listing and querying commands are ever run."""
    sysfs("wg0", "0x91", "unknown")
    runner = Runner()
    run_status(runner, sysfs.root, tunnel_interfaces=["wg0"], traffic_target="198.18.100.1")
    for argv in runner.calls:
        name = argv[0].rsplit("/", 1)[-1]
        assert (name == "nft" and argv[1] == "list") or \
            (name == "systemctl" and argv[1] in ("is-enabled", "is-active")) or name == "ping", argv
