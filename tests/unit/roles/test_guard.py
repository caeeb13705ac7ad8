# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host program ``roles/killswitch/files/netlock_killswitch_guard.py`` (issue 9, docs/design/drift.md).

Pure tests of its parsing and text, then real runs as root in throwaway network namespaces: ``check``
restores a flushed table, a changed rule and an edited ruleset file, counts and logs every event and writes
metrics Prometheus parses; ``watch`` holds an owned fence that ``nft flush ruleset`` and ``nft delete table``
from another process cannot remove, that SIGTERM removes, and that stops a real UDP datagram over a veth pair
while the main table is flushed (counted on the far side, with controls that see the datagrams when there
is no fence).  ``systemctl`` is a fake on PATH.  Under CI=true nothing here may skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.netlock.killswitch.plugins.module_utils.iptables import Iptables
from ansible_collections.netlock.killswitch.plugins.module_utils.nft_live import Nft
from ansible_collections.netlock.killswitch.plugins.plugin_utils.backends import render_for
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy

REPO_ROOT = Path(__file__).resolve().parents[3]
GUARD_PATH = REPO_ROOT / "roles" / "killswitch" / "files" / "netlock_killswitch_guard.py"


def _import_guard():
    spec = importlib.util.spec_from_file_location("netlock_killswitch_guard", str(GUARD_PATH))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


guard = _import_guard()

POLICY = dict(killswitch_tunnel_interfaces=["wg0"], killswitch_endpoints=[{"address": "198.51.100.7", "port": 51820}],
              killswitch_endpoint_mark=51820, killswitch_ipv6="tunnel")
FENCE = "killswitch_fence"


# =========================================================================== pure

def test_config_defaults_and_derived_fence_table():
    config = guard.parse_config(json.dumps({"list_command": "true", "load_command": "true", "table": "ks"}))
    assert config["fence_table"] == "ks_fence"
    assert config["fence"] == "auto" and config["backend"] == "nftables" and config["watch_interval"] == 5
    assert config["lock_path"] == "/run/netlock-killswitch/rollback/lock"


@pytest.mark.parametrize("raw, word", [
    ("[]", "object"),
    ("{", "JSON"),
    ('{"list_command": "true"}', "load_command"),
    ('{"list_command": "true", "load_command": "true", "fence": "maybe"}', "fence"),
    ('{"list_command": "true", "load_command": "true", "backend": "pf"}', "backend"),
    ('{"list_command": "true", "load_command": "true", "watch_interval": 0}', "watch_interval"),
    ('{"list_command": "true", "load_command": "true", "lock_timeout": true}', "lock_timeout"),
    ('{"list_command": "true", "load_command": "true", "table": 7}', "table"),
])
def test_config_refusals_name_the_key(raw, word):
    with pytest.raises(guard.ConfigError, match=word):
        guard.parse_config(raw)


def test_unknown_keys_are_left_out():
    """A key a newer role adds must not leave the host unguarded."""
    config = guard.parse_config('{"list_command": "true", "load_command": "true", "future_key": 1}')
    assert "future_key" not in config


def test_design_doc_config_is_accepted():
    """The guard.json example of docs/design/drift.md is a valid configuration."""
    doc = (REPO_ROOT / "docs" / "design" / "drift.md").read_text()
    example = re.search(r"## guard.json\n```json\n(.*?)```", doc, re.S).group(1)
    config = guard.parse_config(example)
    assert config["fence_table"] == "killswitch_fence"


def test_find_digest_and_listing_comparison():
    assert guard.find_digest('table inet killswitch {\n\tcomment "netlock.killswitch 0123456789abcdef"\n') == "0123456789abcdef"
    assert guard.find_digest("-A killswitch-out -m comment --comment \"netlock.killswitch 0123456789abcdef\" -j RETURN")
    assert guard.find_digest("netlock.killswitch 0123456789abcdef0") is None
    assert guard.find_digest("nothing") is None
    assert guard.same_listing("a\nb\n\n", "a\nb")
    assert not guard.same_listing("a\nb ", "a\nb")
    assert guard.listing_empty("# iptables\n# ip6tables\n") and guard.listing_empty("")
    assert not guard.listing_empty("# iptables\n:killswitch-out - [0:0]\n")


def test_diff_summary_is_one_bounded_line():
    expected = "table inet killswitch {\n\tchain output {\n\t\toifname \"wg0\" accept\n\t\tcounter reject\n\t}\n}\n"
    live = expected.replace("\t\tcounter reject\n", "\t\taccept\n")
    summary = guard.diff_summary(expected, live)
    assert summary == "- counter reject | + accept"
    long = guard.diff_summary("", "\n".join("rule %d accept" % number for number in range(500)))
    assert "\n" not in long and len(long) <= guard.SUMMARY_LIMIT and long.endswith("...")


def test_drift_line_format():
    config = guard.parse_config('{"list_command": "true", "load_command": "true"}')
    line = guard.drift_line("rules_changed", config, "rules\nchanged", True, "reloaded x")
    assert line == "netlock-killswitch drift kind=rules_changed table=killswitch backend=nftables: rules changed; restored: reloaded x"
    line = guard.drift_line("boot_unit", config, "disabled", False, "enable failed")
    assert re.fullmatch(r"netlock-killswitch drift kind=boot_unit table=killswitch backend=nftables: disabled; "
                        r"not restored: enable failed", line)


def _rule(chain, *exprs, table="killswitch"):
    return {"rule": {"family": "inet", "table": table, "chain": chain, "handle": 1, "expr": list(exprs)}}


def _nfproto(family):
    return {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": family}}


def _counter(packets):
    return {"counter": {"packets": packets, "bytes": packets * 60}}


def test_nft_drops_per_chain_and_family():
    document = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "killswitch"}},
        _rule("output", {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wg0"}}, {"accept": None}),
        _rule("output", _nfproto("ipv4"), _counter(7), {"reject": {"type": "icmp", "expr": "admin-prohibited"}}),
        _rule("output", _nfproto("ipv6"), _counter(5), {"reject": {"type": "icmpv6", "expr": "admin-prohibited"}}),
        _rule("output", _nfproto("ipv4"), {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
                                                     "right": 53}}, _counter(2), {"reject": None}),
        _rule("input", _counter(3), {"drop": None}),
        _rule("input", _counter(100), {"accept": None}),            # an accept with a counter: not a drop
        _rule("input", {"drop": None}),                             # no counter: nothing to count
        _rule("output", _counter(9), {"drop": None}, table="other"),  # another table
    ]}
    assert guard.nft_drops(document, "killswitch") == {
        ("output", "ipv4"): 9, ("output", "ipv6"): 5, ("input", "inet"): 3}
    assert guard.nft_drops({}, "killswitch") == {}


IPTABLES_V4 = """\
Chain INPUT (policy ACCEPT 0 packets, 0 bytes)
    pkts      bytes target     prot opt in     out     source               destination
      12      900 killswitch-in  0    --  *      *       0.0.0.0/0            0.0.0.0/0

Chain OUTPUT (policy ACCEPT 0 packets, 0 bytes)
    pkts      bytes target     prot opt in     out     source               destination
      44     3000 DROP       0    --  *      *       0.0.0.0/0            0.0.0.0/0

Chain killswitch-in (1 references)
    pkts      bytes target     prot opt in     out     source               destination
       5      300 ACCEPT     0    --  lo     *       0.0.0.0/0            0.0.0.0/0
       1       40 DROP       0    --  *      *       0.0.0.0/0            0.0.0.0/0            ctstate INVALID
       6      360 DROP       0    --  *      *       0.0.0.0/0            0.0.0.0/0

Chain killswitch-out (1 references)
    pkts      bytes target     prot opt in     out     source               destination
       3      180 REJECT     6    --  *      *       0.0.0.0/0            0.0.0.0/0            reject-with tcp-reset
      10      800 REJECT     0    --  *      *       0.0.0.0/0            0.0.0.0/0            reject-with icmp-admin-prohibited
       2      100            0    --  *      *       0.0.0.0/0            0.0.0.0/0

Chain otherkillswitch-out (0 references)
    pkts      bytes target     prot opt in     out     source               destination
      99     9999 DROP       0    --  *      *       0.0.0.0/0            0.0.0.0/0
"""
IPTABLES_V6 = """\
Chain killswitch-fwd (1 references)
    pkts      bytes target     prot opt in     out     source               destination
       4      320 DROP       0    --  *      *       ::/0                 ::/0
"""


def test_iptables_drops_reads_our_chains_only():
    assert guard.iptables_drops(IPTABLES_V4, "killswitch", "ipv4") == {("input", "ipv4"): 7, ("output", "ipv4"): 13}
    assert guard.iptables_drops(IPTABLES_V6, "killswitch", "ipv6") == {("forward", "ipv6"): 4}
    assert guard.iptables_drops("", "killswitch", "ipv4") == {}


def _families(text):
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_metrics_text_parses_and_prints_every_kind():
    config = guard.parse_config('{"list_command": "true", "load_command": "true", "table": "k\\"s"}')
    state = guard.count_event(guard.count_event(guard.new_state(), "rules_changed", True), "boot_unit", False)
    text = guard.render_metrics(config, state, 1700000000.5, True, False, True,
                                {("output", "ipv4"): 9, ("input", "inet"): 3}, "0123456789abcdef")
    families = _families(text)
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in families.values() for sample in family.samples}
    assert samples[("netlock_killswitch_last_check_timestamp_seconds", ())] == 1700000000.5
    assert samples[("netlock_killswitch_table_present", (("backend", "nftables"), ("table", 'k"s')))] == 1
    assert samples[("netlock_killswitch_in_sync", ())] == 0
    assert samples[("netlock_killswitch_fence_present", ())] == 1
    kinds = {dict(labels)["kind"]: value for (name, labels), value in samples.items()
             if name == "netlock_killswitch_drift_events_total"}
    assert kinds == dict(dict.fromkeys(guard.KINDS, 0), rules_changed=1, boot_unit=1)
    assert samples[("netlock_killswitch_restores_total", ())] == 1
    assert samples[("netlock_killswitch_dropped_packets_total", (("chain", "output"), ("family", "ipv4")))] == 9
    assert samples[("netlock_killswitch_policy_info", (("backend", "nftables"), ("digest", "0123456789abcdef")))] == 1
    assert families["netlock_killswitch_drift_events"].type == "counter"


def test_state_counters_survive_damage_and_keep_other_keys():
    assert guard.parse_state("{not json") == guard.new_state()
    state = guard.parse_state(json.dumps({"drift_events": {"table_missing": 2, "bogus": -1}, "restores": 2,
                                          "fence_unavailable": "no nf_tables"}))
    assert state["drift_events"]["table_missing"] == 2 and "bogus" not in state["drift_events"]
    guard.count_event(state, "table_missing", True)
    guard.count_event(state, "fence_missing", False)
    assert state["drift_events"]["table_missing"] == 3 and state["drift_events"]["fence_missing"] == 1
    assert state["restores"] == 3 and state["fence_unavailable"] == "no nf_tables"


def test_atomic_write_keeps_the_mode_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "file"
    guard.atomic_write(str(target), b"one")
    assert target.read_bytes() == b"one" and stat.S_IMODE(target.stat().st_mode) == 0o600
    target.chmod(0o640)
    guard.atomic_write(str(target), b"two")
    assert target.read_bytes() == b"two" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(os.listdir(str(target.parent))) == ["file"]


def test_program_is_stdlib_only_and_python36_syntax():
    source = GUARD_PATH.read_text()
    assert ":=" not in source and "dataclass" not in source
    imports = set(re.findall(r"(?m)^(?:import|from) (\w+)", source))
    assert imports <= {"__future__", "argparse", "ctypes", "difflib", "errno", "fcntl", "json", "os", "re", "select",
                       "shutil", "signal", "subprocess", "sys", "tempfile", "time"}
    assert not source.startswith("#!"), "run as python3 guard.py by its units: no shebang (ansible-test: non-module shebang)"


@pytest.mark.parametrize("argv", [
    ["--config", "/etc/g.json", "check", "--from", "timer"], ["--config", "/etc/g.json", "check", "--from", "watch"],
    ["--config", "/etc/g.json", "check"], ["--config", "/etc/g.json", "watch"], ["--config", "/etc/g.json", "cgroups"],
    ["check", "--from", "watch"], ["watch"]])
def test_unit_command_lines_parse_as_argparse_does(argv):
    assert guard.unit_args(argv) == guard.parse_args(argv)


@pytest.mark.parametrize("argv", [["--help"], ["--config=/x", "check"], ["check", "--from", "cron"], ["bogus"], []])
def test_other_command_lines_go_to_argparse(argv):
    assert guard.unit_args(argv) is None


def test_a_timer_check_starts_without_the_heavy_imports(tmp_path):
    """As its unit runs it (python3 -I -S): no argparse, ctypes, difflib, tempfile nor shutil for a check (they cost
    more CPU than a small table's whole check); the configuration missing, it exits 2 before any work."""
    probe = ("import runpy, sys\n"
             "sys.argv = [sys.argv[1], '--config', sys.argv[2], 'check', '--from', 'timer']\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             "heavy = sorted(m for m in ('argparse', 'ctypes', 'difflib', 'tempfile', 'shutil') if m in sys.modules)\n"
             "print(code, ','.join(heavy) or '-')\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", probe, str(GUARD_PATH), str(tmp_path / "missing.json")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.stdout.split()[-2:] == ["2", "-"], proc.stdout + proc.stderr


def test_which_finds_programs_not_directories(tmp_path, monkeypatch):
    (tmp_path / "bin" / "nft").mkdir(parents=True)
    (tmp_path / "sbin").mkdir()
    program = tmp_path / "sbin" / "nft"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (tmp_path / "bin", tmp_path / "sbin"))
    assert guard.which("nft") == str(program)


def test_check_without_expected_listing_does_nothing(tmp_path):
    config = guard.parse_config(json.dumps(dict(
        list_command="echo should-not-run >&2; exit 3", load_command="exit 3", expected_path=str(tmp_path / "none"),
        lock_path=str(tmp_path / "lock"), metrics_path="", state_path=str(tmp_path / "state.json"))))
    assert guard.Checker(config).run() == 0
    assert not (tmp_path / "state.json").exists()


# =========================================================================== real, in network namespaces

@pytest.fixture(scope="module", name="root_netns")
def root_netns_fixture(netns_reason, unshare_binary):
    """conftest's netns checks (under CI=true the skip is a failure: tests/unit/strict_ci.py)."""
    if netns_reason:
        pytest.skip(netns_reason)
    return unshare_binary


@pytest.fixture(scope="module", name="iptables_nft_path")
def iptables_nft_path_fixture(iptables_path):
    """conftest's PATH with the iptables-nft tools first (skips, or fails under CI=true, when it cannot run)."""
    return iptables_path("nft")


FAKE_SYSTEMCTL = """#!/bin/sh
# fake systemctl: answers from $SYSTEMCTL_DIR/<unit>.enabled|.active (default enabled/active), logs every call
echo "$*" >> "$SYSTEMCTL_DIR/calls"
verb=$1; unit=$2
case "$verb" in
  start) if [ "$unit" = netlock-killswitch-watch.service ] && [ -n "${WATCH_CMD:-}" ]; then sh -c "$WATCH_CMD"; fi ;;
esac
case "$verb" in
  is-enabled) cat "$SYSTEMCTL_DIR/$unit.enabled" 2>/dev/null || echo enabled ;;
  is-active) state=$(cat "$SYSTEMCTL_DIR/$unit.active" 2>/dev/null || echo active); echo "$state"; [ "$state" = active ] ;;
  enable) echo enabled > "$SYSTEMCTL_DIR/$unit.enabled" ;;
  start) echo active > "$SYSTEMCTL_DIR/$unit.active" ;;
esac
"""


class Host:
    """A fake host's files under tmp_path: policy store, ruleset, guard.json, fake systemctl."""

    def __init__(self, tmp_path, backend="nftables", fence="off", variant_path=None):
        self.root = tmp_path
        self.backend = backend
        self.payload = render_for(parse_policy(POLICY), backend)
        self.digest = guard.find_digest(self.payload)
        assert self.digest
        self.store = tmp_path / "policies" / self.digest
        self.store.mkdir(parents=True)
        self.ruleset = tmp_path / ("ruleset.nft" if backend == "nftables" else "ruleset.sh")
        self.ruleset.write_text(self.payload)
        self.ruleset.chmod(0o600)
        (self.store / "ruleset").write_text(self.payload)
        (self.store / "fence.nft").write_text(fence_payload(FENCE))
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        (self.bin / "systemctl").write_text(FAKE_SYSTEMCTL)
        (self.bin / "systemctl").chmod(0o755)
        self.units = tmp_path / "units"
        self.units.mkdir()
        self.expected = tmp_path / "expected-table.txt"
        if backend == "nftables":
            firewall = Nft(None)
        else:
            firewall = Iptables(None)
        self.config = dict(
            backend=backend, table="killswitch", fence_table=FENCE, fence=fence, policy_dir=str(tmp_path / "policies"),
            ruleset_path=str(self.ruleset), expected_path=str(self.expected),
            list_command=firewall.list_command("killswitch"),
            load_command=" ".join(shlex.quote(arg) for arg in firewall.load_argv(str(self.ruleset))),
            lock_path=str(tmp_path / "run" / "lock"), metrics_path=str(tmp_path / "metrics" / "netlock_killswitch.prom"),
            state_path=str(tmp_path / "state" / "guard-state.json"), watch_interval=5)
        self.config_path = tmp_path / "guard.json"
        self.write_config()
        path = "%s:%s" % (self.bin, variant_path or os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
        self.env = dict(os.environ, PATH=path, SYSTEMCTL_DIR=str(self.units), GUARD=str(GUARD_PATH), PY=sys.executable,
                        CONFIG=str(self.config_path), LIST=self.config["list_command"], LOAD=self.config["load_command"],
                        EXPECTED=str(self.expected), PYTHONUNBUFFERED="1")

    def write_config(self, **changes):
        self.config.update(changes)
        self.config_path.write_text(json.dumps(self.config, indent=1))

    def in_netns(self, script, timeout=120):
        """Run a shell script in a fresh network namespace, in tmp_path; the kill switch is loaded and listed first
        (``$LOAD``, then ``$LIST > $EXPECTED``), ``guard`` runs the program."""
        prelude = textwrap.dedent("""\
            set -u
            ip link set lo up
            guard() { "$PY" "$GUARD" --config "$CONFIG" "$@"; }  # in the background, call "$PY" itself (kill gets its pid)
            sh -c "$LOAD" >/dev/null
            sh -c "$LIST" > "$EXPECTED"
            """)
        return subprocess.run(["unshare", "--net", "--", "sh", "-c", prelude + textwrap.dedent(script)],
                              capture_output=True, text=True, env=self.env, timeout=timeout, check=False,
                              cwd=str(self.root))

    def calls(self):
        path = self.units / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def state(self):
        return json.loads(Path(self.config["state_path"]).read_text())

    def metrics(self):
        return _families(Path(self.config["metrics_path"]).read_text())


def fence_payload(table):
    """The fence payload shape the controller renders (docs: create-or-keep, delete, create, one transaction)."""
    return textwrap.dedent("""\
        table inet %(t)s { flags owner; }
        delete table inet %(t)s
        table inet %(t)s {
            flags owner
            chain output {
                type filter hook output priority filter; policy drop;
                oifname "lo" accept
                oifname "wg0" accept
                counter reject with icmpx admin-prohibited
            }
            chain forward {
                type filter hook forward priority filter; policy drop;
                oifname "wg0" accept
                counter drop
            }
        }
        """) % {"t": table}


def sample(families, name, **labels):
    for family in families.values():
        for item in family.samples:
            if item.name == name and all(item.labels.get(key) == value for key, value in labels.items()):
                return item.value
    raise AssertionError("no sample %s %s" % (name, labels))


def drift_lines(text):
    return [line for line in text.splitlines() if line.startswith("netlock-killswitch drift ")]


@pytest.mark.usefixtures("root_netns")
def test_check_in_sync_reports_nothing_and_writes_metrics(tmp_path):
    host = Host(tmp_path)
    proc = host.in_netns("""\
        start=$(date +%s%N); guard check --from timer; echo "rc=$?"; end=$(date +%s%N)
        echo "ms=$(( (end - start) / 1000000 ))"
        """)
    assert "rc=0" in proc.stdout, proc.stdout + proc.stderr
    assert drift_lines(proc.stdout) == []
    families = host.metrics()
    assert sample(families, "netlock_killswitch_in_sync") == 1
    assert sample(families, "netlock_killswitch_table_present", backend="nftables", table="killswitch") == 1
    assert sample(families, "netlock_killswitch_policy_info", digest=host.digest, backend="nftables") == 1
    assert sample(families, "netlock_killswitch_drift_events_total", kind="table_missing") == 0
    # the calls a check makes, and its wall time (printed with -s)
    assert host.calls() == ["is-enabled netlock-killswitch.service", "is-active netlock-killswitch-watch.service"]
    print("check in sync: %s" % re.search(r"ms=\d+", proc.stdout).group(0))


@pytest.mark.usefixtures("root_netns")
def test_check_restores_a_flushed_table_and_an_edited_file(tmp_path):
    host = Host(tmp_path)
    proc = host.in_netns("""\
        nft flush ruleset
        echo '# edited by hand' >> "$(dirname "$CONFIG")/ruleset.nft"
        guard check --from timer; echo "rc=$?"
        sh -c "$LIST" > after.txt; cmp -s after.txt "$EXPECTED" && echo "table=restored"
        guard check --from timer; echo "rc2=$?"
        """)
    out = proc.stdout
    assert "rc=0" in out and "rc2=0" in out and "table=restored" in out, out + proc.stderr
    lines = drift_lines(out)
    assert len(lines) == 2, lines  # the second check finds everything in sync
    assert lines[0].startswith("netlock-killswitch drift kind=file_changed table=killswitch backend=nftables: ")
    assert "+ # edited by hand" in lines[0] and "; restored: " in lines[0]
    assert lines[1].startswith("netlock-killswitch drift kind=table_missing table=killswitch backend=nftables: ")
    assert "; restored: reloaded" in lines[1]
    assert host.ruleset.read_text() == host.payload and stat.S_IMODE(host.ruleset.stat().st_mode) == 0o600
    state = host.state()
    assert state["drift_events"]["file_changed"] == 1 and state["drift_events"]["table_missing"] == 1
    assert state["restores"] == 2
    families = host.metrics()
    assert sample(families, "netlock_killswitch_drift_events_total", kind="table_missing") == 1
    assert sample(families, "netlock_killswitch_restores_total") == 2
    assert sample(families, "netlock_killswitch_in_sync") == 1


@pytest.mark.usefixtures("root_netns")
def test_check_restores_a_deleted_rule_and_names_it(tmp_path):
    host = Host(tmp_path)
    proc = host.in_netns("""\
        handle=$(nft -a list chain inet killswitch output | sed -n 's/.*oifname "wg0" accept # handle \\([0-9]*\\)$/\\1/p')
        nft delete rule inet killswitch output handle "$handle"
        guard check --from timer; echo "rc=$?"
        sh -c "$LIST" > after.txt; cmp -s after.txt "$EXPECTED" && echo "table=restored"
        """)
    assert "rc=0" in proc.stdout and "table=restored" in proc.stdout, proc.stdout + proc.stderr
    lines = drift_lines(proc.stdout)
    assert len(lines) == 1 and "kind=rules_changed" in lines[0], lines
    assert '- oifname "wg0" accept' in lines[0]


@pytest.mark.usefixtures("root_netns")
def test_check_counts_dropped_packets_from_the_table(tmp_path):
    host = Host(tmp_path)
    proc = host.in_netns("""\
        ip link add up0 type veth peer name up0p; ip link set up0 up; ip link set up0p up
        ip addr add 198.19.252.2/24 dev up0
        "$PY" -c 'import socket
        for n in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.sendto(b"x", ("198.19.252.1", 9))
            except OSError:
                pass'
        guard check --from timer; echo "rc=$?"
        """)
    assert "rc=0" in proc.stdout, proc.stdout + proc.stderr
    # the final rules are per family (meta nfproto) or, in older renderings, inet: the IPv4 datagrams count in either
    counted = {item.labels["family"]: item.value for family in host.metrics().values() for item in family.samples
               if item.name == "netlock_killswitch_dropped_packets_total" and item.labels["chain"] == "output"}
    assert counted.get("ipv4", 0) + counted.get("inet", 0) >= 3, counted
    assert counted.get("ipv6", 0) == 0, counted


@pytest.mark.usefixtures("root_netns")
def test_check_repairs_the_boot_unit_and_the_watcher(tmp_path):
    host = Host(tmp_path)
    (host.units / "netlock-killswitch.service.enabled").write_text("disabled\n")
    (host.units / "netlock-killswitch-watch.service.active").write_text("inactive\n")
    (host.units / "netlock-killswitch-guard.timer.active").write_text("inactive\n")
    proc = host.in_netns("""\
        guard check --from timer; echo "rc=$?"
        guard check --from watch; echo "rc2=$?"
        guard check --from watch; echo "rc3=$?"
        """)
    assert "rc=0" in proc.stdout and "rc2=0" in proc.stdout, proc.stdout + proc.stderr
    lines = drift_lines(proc.stdout)
    assert [re.search(r"kind=(\w+)", line).group(1) for line in lines] == ["boot_unit", "watcher_stopped", "timer_stopped"]
    assert "netlock-killswitch.service is disabled" in lines[0]
    calls = host.calls()
    assert "enable netlock-killswitch.service" in calls and "start netlock-killswitch.service" in calls
    assert "start netlock-killswitch-watch.service --no-block" in calls and "start netlock-killswitch-guard.timer --no-block" in calls
    assert host.state()["restores"] == 3


@pytest.mark.usefixtures("root_netns")
def test_check_fails_closed_when_the_load_fails(tmp_path):
    host = Host(tmp_path)
    host.write_config(load_command="echo 'Error: refused' >&2; exit 1")
    host.env["LOAD"] = "nft -f %s" % shlex.quote(str(host.ruleset))
    proc = host.in_netns("""\
        nft flush ruleset
        guard check --from timer; echo "rc=$?"
        test -e "$EXPECTED" && test -s "$(dirname "$CONFIG")/ruleset.nft" && echo "files=kept"
        """)
    assert "rc=1" in proc.stdout and "files=kept" in proc.stdout, proc.stdout + proc.stderr
    line, = drift_lines(proc.stdout)
    assert "kind=table_missing" in line and "not restored: load command exited 1: Error: refused" in line
    assert host.state()["restores"] == 0
    assert sample(host.metrics(), "netlock_killswitch_in_sync") == 0
    assert sample(host.metrics(), "netlock_killswitch_table_present", backend="nftables", table="killswitch") == 0


@pytest.mark.usefixtures("root_netns")
def test_check_waits_for_the_rollback_lock(tmp_path):
    """While the apply holds the lock, the check does not compare (it would put the previous ruleset back)."""
    host = Host(tmp_path)
    host.write_config(lock_timeout=1)
    proc = host.in_netns("""\
        mkdir -p "$(dirname "$CONFIG")/run"
        nft flush ruleset
        flock "$(dirname "$CONFIG")/run/lock" sh -c 'guard() { "$PY" "$GUARD" --config "$CONFIG" "$@"; }; guard check; echo "rc=$?"'
        nft list tables | grep -c killswitch || true
        """)
    assert "rc=0" in proc.stdout and "check skipped" in proc.stdout, proc.stdout + proc.stderr
    assert drift_lines(proc.stdout) == []


@pytest.mark.usefixtures("root_netns")
def test_check_restores_iptables_chains(tmp_path, iptables_nft_path):
    host = Host(tmp_path, backend="iptables", variant_path=iptables_nft_path)
    proc = host.in_netns("""\
        iptables -F killswitch-out
        guard check --from timer; echo "rc=$?"
        sh -c "$LIST" > after.txt; cmp -s after.txt "$EXPECTED" && echo "table=restored"
        for chain in INPUT OUTPUT FORWARD; do iptables -F "$chain"; ip6tables -F "$chain"; done
        for tool in iptables ip6tables; do for chain in in out fwd; do "$tool" -F "killswitch-$chain"; done
            for chain in in out fwd; do "$tool" -X "killswitch-$chain"; done; done
        guard check --from timer; echo "rc2=$?"
        sh -c "$LIST" > after.txt; cmp -s after.txt "$EXPECTED" && echo "table=restored2"
        """)
    out = proc.stdout
    assert "rc=0" in out and "rc2=0" in out and "table=restored" in out and "table=restored2" in out, out + proc.stderr
    lines = drift_lines(out)
    assert [re.search(r"kind=(\w+)", line).group(1) for line in lines] == ["rules_changed", "table_missing"], lines
    assert "backend=iptables" in lines[0] and "- -A killswitch-out" in lines[0]
    families = host.metrics()
    assert sample(families, "netlock_killswitch_table_present", backend="iptables", table="killswitch") == 1
    assert ("output", "ipv4") in {(s.labels["chain"], s.labels["family"]) for f in families.values() for s in f.samples
                                  if s.name == "netlock_killswitch_dropped_packets_total"}


# --------------------------------------------------------------------------- the fence and the watcher

WAIT_FENCE = """\
wait_for() {  # wait_for <shell test> : up to 5 s
    i=0; while ! sh -c "$1" >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 500 ] && return 1; sleep 0.01; done
}
"""


@pytest.mark.usefixtures("root_netns")
def test_timer_check_starts_the_watcher_when_the_fence_is_missing(tmp_path):
    host = Host(tmp_path, fence="auto")
    (host.units / "netlock-killswitch-watch.service.active").write_text("inactive\n")
    host.env["WATCH_CMD"] = '"$PY" "$GUARD" --config "$CONFIG" watch > watch.log 2>&1 & echo $! > watch.pid'
    proc = host.in_netns("""\
        cd "$(dirname "$CONFIG")"
        guard check --from timer; echo "rc=$?"
        nft list table inet %(fence)s >/dev/null && echo "fence=present"
        guard check --from timer; echo "rc2=$?"
        kill -TERM "$(cat watch.pid)"; while kill -0 "$(cat watch.pid)" 2>/dev/null; do sleep 0.05; done
        nft list table inet %(fence)s >/dev/null 2>&1 || echo "fence=gone"
        """ % {"fence": FENCE})
    out = proc.stdout
    assert "rc=0" in out and "rc2=0" in out and "fence=present" in out and "fence=gone" in out, out + proc.stderr
    lines = drift_lines(out)
    assert len(lines) == 1 and "kind=fence_missing" in lines[0] and "; restored: started netlock-killswitch-watch" in lines[0]
    assert sample(host.metrics(), "netlock_killswitch_fence_present") == 1
    assert host.state()["drift_events"]["fence_missing"] == 1


@pytest.mark.usefixtures("root_netns")
def test_fence_survives_flush_and_foreign_delete_and_goes_with_sigterm(tmp_path):
    host = Host(tmp_path, fence="required")
    proc = host.in_netns(WAIT_FENCE + """\
        "$PY" "$GUARD" --config "$CONFIG" watch > watch.log 2>&1 & watcher=$!
        wait_for "nft list table inet %(fence)s" && echo "fence=loaded"
        nft list table inet %(fence)s | grep -q 'flags owner' && echo "fence=owned"
        nft list tables | grep -q probe || echo "probe=gone"
        nft flush ruleset; nft list table inet %(fence)s >/dev/null 2>&1 && echo "after-flush=present"
        nft delete table inet %(fence)s 2> delete.err; echo "delete-rc=$?"
        grep -q 'Operation not permitted' delete.err && echo "delete=EPERM"
        nft add rule inet %(fence)s output accept 2>/dev/null || echo "add-rule=refused"
        wait_for "nft list table inet killswitch" && echo "main=restored"
        kill -TERM $watcher; wait $watcher; echo "watch-rc=$?"
        nft list table inet %(fence)s >/dev/null 2>&1 || echo "after-sigterm=gone"
        nft list table inet killswitch >/dev/null 2>&1 && echo "main=kept"
        cat watch.log
        """ % {"fence": FENCE})
    out = proc.stdout
    for word in ("fence=loaded", "fence=owned", "probe=gone", "after-flush=present", "delete-rc=1", "delete=EPERM",
                 "add-rule=refused", "main=restored", "watch-rc=0", "after-sigterm=gone", "main=kept"):
        assert word in out, "%s missing:\n%s\n%s" % (word, out, proc.stderr)
    assert "fence %s removed" % FENCE in out


@pytest.mark.usefixtures("root_netns")
def test_control_a_fence_without_owner_is_flushed(tmp_path):
    """The control for the test above: the same table without ``flags owner`` does not survive a flush."""
    host = Host(tmp_path)
    unowned = tmp_path / "unowned.nft"
    unowned.write_text(fence_payload(FENCE).replace("flags owner; ", "").replace("    flags owner\n", ""))
    proc = host.in_netns("""\
        nft -f %s && nft list table inet %s >/dev/null && echo "loaded"
        nft flush ruleset; nft list table inet %s >/dev/null 2>&1 || echo "flushed=gone"
        """ % (unowned, FENCE, FENCE))
    assert "loaded" in proc.stdout and "flushed=gone" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.usefixtures("root_netns")
def test_watch_follows_the_policy_and_keeps_the_old_fence_on_error(tmp_path):
    host = Host(tmp_path, fence="auto")
    other = "fedcba9876543210"
    bad = "0000000000000bad"
    for digest, payload in ((other, fence_payload(FENCE).replace("oifname \"wg0\" accept\n", "oifname \"wg1\" accept\n")),
                            (bad, "table inet %s { flags owner; chain output { bogus } }\n" % FENCE)):
        (tmp_path / "policies" / digest).mkdir()
        (tmp_path / "policies" / digest / "fence.nft").write_text(payload)
    proc = host.in_netns(WAIT_FENCE + """\
        "$PY" "$GUARD" --config "$CONFIG" watch > watch.log 2>&1 & watcher=$!
        wait_for "nft list table inet %(fence)s"
        sed "s/%(digest)s/%(other)s/" "$EXPECTED" > new.txt && mv new.txt "$EXPECTED"
        wait_for "nft list table inet %(fence)s | grep -q wg1" && echo "followed"
        sed "s/%(other)s/%(bad)s/" "$EXPECTED" > new.txt && mv new.txt "$EXPECTED"
        sleep 0.6
        nft list table inet %(fence)s | grep -q wg1 && echo "kept"
        kill -TERM $watcher; wait $watcher
        cat watch.log
        """ % dict(fence=FENCE, digest=host.digest, other=other, bad=bad))
    out = proc.stdout
    assert "followed" in out and "kept" in out, out + proc.stderr
    assert "cannot load the fence of policy %s, keeping %s" % (bad, other) in out


def test_watch_without_libnftables_required_exits_1(tmp_path, monkeypatch):
    host_config = dict(list_command="true", load_command="true", fence="required", lock_path=str(tmp_path / "lock"),
                       state_path=str(tmp_path / "state.json"), metrics_path="", expected_path=str(tmp_path / "none"))
    path = tmp_path / "guard.json"
    path.write_text(json.dumps(host_config))
    monkeypatch.setattr(guard, "LIBNFTABLES", "libnftables-missing.so.1")
    monkeypatch.setattr(guard, "find_library", lambda name: None)
    monkeypatch.setattr(guard.signal, "signal", lambda signum, handler: None)  # keep pytest's handlers
    watcher = guard.Watcher(str(path), guard.load_config(str(path)))
    assert watcher.run() == 1
    assert watcher.unavailable.startswith("cannot load libnftables-missing.so.1")
    assert json.loads((tmp_path / "state.json").read_text())["fence_unavailable"] == watcher.unavailable


@pytest.mark.usefixtures("root_netns")
def test_watch_restarts_nft_monitor_and_loads_a_fence_file_that_comes_late(tmp_path):
    """watch_interval 60: only nft monitor can make the restore below quick, so it must have been restarted.
    A policy whose fence file is not in the store yet keeps the old fence until the file arrives."""
    host = Host(tmp_path, fence="required")
    host.write_config(watch_interval=60)
    late = "fedcba9876543210"
    proc = host.in_netns(WAIT_FENCE + """\
        "$PY" "$GUARD" --config "$CONFIG" watch > watch.log 2>&1 & watcher=$!
        wait_for "nft list table inet %(fence)s"
        monitor=$(pgrep -P $watcher -f 'nft monitor'); kill "$monitor"
        while kill -0 "$monitor" 2>/dev/null; do sleep 0.01; done
        sleep 1.5
        pgrep -P $watcher -f 'nft monitor' >/dev/null && echo "monitor=restarted"
        nft flush ruleset
        wait_for "nft list table inet killswitch" && echo "main=restored"
        sed "s/%(digest)s/%(late)s/" "$EXPECTED" > new.txt && mv new.txt "$EXPECTED"
        sleep 0.5
        nft list table inet %(fence)s | grep -q wg1 || echo "old=kept"
        mkdir -p policies/%(late)s
        sed 's/oifname "wg0" accept/oifname "wg1" accept/' policies/%(digest)s/fence.nft > policies/%(late)s/fence.nft
        wait_for "nft list table inet %(fence)s | grep -q wg1" && echo "late=loaded"
        kill -TERM $watcher; wait $watcher
        cat watch.log
        """ % dict(fence=FENCE, digest=host.digest, late=late))
    out = proc.stdout
    for word in ("monitor=restarted", "main=restored", "old=kept", "late=loaded", "nft monitor exited"):
        assert word in out, "%s missing:\n%s\n%s" % (word, out, proc.stderr)


@pytest.mark.usefixtures("root_netns")
def test_watch_without_libnftables_auto_keeps_reacting(tmp_path):
    """fence: auto without libnftables: one 'fence unavailable' line, and nft monitor still drives the check."""
    host = Host(tmp_path, fence="auto")
    host.env["NO_LIB"] = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('g', sys.argv[1]); g = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(g); g.LIBNFTABLES = 'libnftables-missing.so.1'\n"
        "g.find_library = lambda name: None\n"
        "sys.exit(g.main(['--config', sys.argv[2], 'watch']))\n")
    proc = host.in_netns(WAIT_FENCE + """\
        cd "$(dirname "$CONFIG")"
        "$PY" -c "$NO_LIB" "$GUARD" "$CONFIG" > watch.log 2>&1 & watcher=$!
        wait_for "grep -q started watch.log"
        nft flush ruleset
        wait_for "nft list table inet killswitch" && echo "main=restored"
        kill -TERM $watcher; wait $watcher; echo "watch-rc=$?"
        cat watch.log
        """)
    out = proc.stdout
    assert "main=restored" in out and "watch-rc=0" in out, out + proc.stderr
    assert out.count("fence unavailable: cannot load libnftables-missing.so.1") == 1
    assert "kind=table_missing" in out and "kind=fence_missing" not in out


def test_fence_unavailable_is_recorded_for_the_timer(tmp_path):
    host_config = dict(list_command="true", load_command="true", lock_path=str(tmp_path / "lock"),
                       state_path=str(tmp_path / "state.json"), metrics_path="")
    path = tmp_path / "guard.json"
    path.write_text(json.dumps(host_config))
    watcher = guard.Watcher(str(path), guard.load_config(str(path)))
    watcher.unavailable = "nf_tables: Operation not supported"
    watcher.record_unavailable()
    assert json.loads((tmp_path / "state.json").read_text())["fence_unavailable"] == "nf_tables: Operation not supported"


# --------------------------------------------------------------------------- real packets over a veth pair

RECEIVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999))
print("ready", flush=True)
while True:
    data = s.recv(100)
    print(data.decode(), flush=True)
"""

SENDER = r"""
import errno, socket, subprocess, sys, time
tag, count = sys.argv[1], int(sys.argv[2])
if len(sys.argv) > 3:
    subprocess.run(sys.argv[3:], check=True)   # the foreign action, then send at once
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
refused = 0
for number in range(count):
    try:
        s.sendto(("%s %d" % (tag, number)).encode(), ("198.19.252.1", 9999))
    except OSError as exc:
        refused += exc.errno == errno.EPERM
    time.sleep(0.001)
print("sent %s refused=%d" % (tag, refused))
"""

# The receiver lives in a second network namespace at the far end of the veth pair; it prints every datagram.
VETH = WAIT_FENCE + """\
ip link add up0 type veth peer name up0p
unshare --net -- sh -c 'while ! ip link show up0p >/dev/null 2>&1; do sleep 0.01; done
    ip link set lo up; ip addr add 198.19.252.1/24 dev up0p; ip link set up0p up
    exec "$PY" -u -c "$RECEIVER"' > received.txt 2>&1 &
receiver=$!
here=$(readlink /proc/self/ns/net)
while [ "$(readlink /proc/$receiver/ns/net)" = "$here" ]; do sleep 0.01; done
ip link set up0p netns $receiver
ip addr add 198.19.252.2/24 dev up0; ip link set up0 up
wait_for "grep -q ready received.txt"
# the main table lets nothing out but the tunnel: open it for the test's uplink while it is in force
send() { "$PY" -c "$SENDER" "$@"; }
"""


def run_packets(host, script):
    host.env.update(RECEIVER=RECEIVER, SENDER=SENDER)
    proc = host.in_netns(VETH + textwrap.dedent(script) + '\nsleep 0.3; kill $receiver\n')
    received = (host.root / "received.txt").read_text().split() if (host.root / "received.txt").exists() else []
    counts = {}
    for word in received:
        if not word.isdigit() and word != "ready":
            counts[word] = counts.get(word, 0) + 1
    return proc, counts


@pytest.mark.usefixtures("root_netns")
def test_fence_blocks_datagrams_while_the_main_table_is_flushed(tmp_path):
    """200 datagrams sent right after ``nft flush ruleset``: none reach the far side with the fence; the
    controls: all arrive with no tables, none with the main table, and some leak when the watcher reacts
    without a fence (the window the fence closes)."""
    host = Host(tmp_path)
    proc, counts = run_packets(host, """\
        cd "$(dirname "$CONFIG")"
        nft flush ruleset
        send open 20
        sh -c "$LOAD"
        send main 20
        # reaction only (fence off): the flush leaks until the check has reloaded the table
        "$PY" -c 'import json,sys; c=json.load(open(sys.argv[1])); c["fence"]="off"; json.dump(c, open(sys.argv[1],"w"))' "$CONFIG"
        "$PY" "$GUARD" --config "$CONFIG" watch > watch-off.log 2>&1 & watcher=$!
        sleep 0.5
        send reaction 200 nft flush ruleset
        wait_for "nft list table inet killswitch"
        kill -TERM $watcher; wait $watcher
        # the fence
        "$PY" -c 'import json,sys; c=json.load(open(sys.argv[1])); c["fence"]="required"; json.dump(c, open(sys.argv[1],"w"))' "$CONFIG"
        "$PY" "$GUARD" --config "$CONFIG" watch > watch.log 2>&1 & watcher=$!
        wait_for "nft list table inet %(fence)s"
        start=$(date +%%s%%N)
        send fenced 200 nft flush ruleset
        wait_for "nft list table inet killswitch"; end=$(date +%%s%%N)
        echo "window ms=$(( (end - start) / 1000000 ))"
        kill -TERM $watcher; wait $watcher
        cat watch-off.log watch.log
        """ % {"fence": FENCE})
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert counts.get("open") == 20, "positive control: with no tables every datagram arrives: %s\n%s" % (counts, out)
    assert "main" not in counts, "the main table lets datagrams out: %s" % counts
    assert counts.get("reaction", 0) > 0, "control: a flush without the fence should leak: %s\n%s" % (counts, out)
    assert "fenced" not in counts, "the fence leaked %d datagrams:\n%s" % (counts["fenced"], out)
    assert "sent fenced refused=200" in out
    print("leaked without the fence: %d/200; with the fence: 0/200; %s" % (
        counts["reaction"], re.search(r"window ms=\d+", out).group(0)))
