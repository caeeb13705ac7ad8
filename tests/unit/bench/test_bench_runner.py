# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The benchmark runner's pure parts (bench/report.py, bench/run.py): target checks, the results document and
the Markdown table made from it, the BENCH_ONLY selection.  No benchmark runs here."""

from __future__ import annotations

import datetime
import json
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if REPO_ROOT not in sys.path:  # bench/ is a top-level package of the checkout, not of the collection
    sys.path.insert(0, REPO_ROOT)

from bench import report, run  # noqa: E402

NOW = datetime.datetime(2026, 12, 4, 12, 0, 0, tzinfo=datetime.timezone.utc)
HOST = {"cpu_model": "Test CPU", "cpu_cores": 2, "memory_mib": 4096, "kernel": "6.1", "python": "3.11.7",
        "ansible_core": "2.19.0", "nft": "nftables v1.0.6", "iptables": "iptables v1.8.9", "iperf3": "iperf 3.12",
        "load_average": [0.5, 0.25, 0.1]}


@pytest.mark.parametrize("operator, limit, value, met", [
    ("<=", 1.0, 1.0, True), ("<=", 1.0, 1.0001, False), (">=", 0.95, 0.95, True), (">=", 0.95, 0.9499, False),
    ("==", 10, 10, True), ("==", 10, 9, False), ("<=", 1.0, None, None),
])
def test_target_met(operator, limit, value, met):
    assert report.Target(operator, limit).met(value) is met


def test_unknown_operator_is_refused():
    with pytest.raises(ValueError, match="operator"):
        report.Target("<", 1)


def test_figure_without_target_is_neither_met_nor_missed():
    figure = report.Figure("B7", "peak memory", 90.5, "MiB")
    assert figure.met is None and figure.as_dict()["target"] is None


def _outcomes():
    b7 = report.Outcome("B7", "controller render")
    b7.figure("ms per host", 1.24, "ms", report.Target("<=", 1.0))
    b7.figure("peak memory", 90.3, "MiB")
    b7.notes.append("Profile: parse | render")
    b3 = report.Outcome("B3", "ruleset scale", seconds=12.34)
    b3.figure("throughput ratio", 0.991, "x", report.Target(">=", 0.95))
    b3.figure("apply 100000 entries", None, "s", note="needs root (network namespaces)")
    b1 = report.Outcome("B1", "apply cost", notes=["not measured yet: needs the SSH lab hosts"])
    return [b7, b3, b1]


def test_document_counts_and_keeps_every_figure():
    doc = report.document(_outcomes(), HOST, ["B7", "B3", "B1"], now=NOW)
    assert doc["date"] == "2026-12-04T12:00:00Z"
    assert doc["summary"] == {"figures": 4, "with_target": 2, "met": 1, "missed": 1, "not_measured": 1}
    figures = {f["name"]: f for bench in doc["benchmarks"] for f in bench["figures"]}
    assert figures["ms per host"] == {"benchmark": "B7", "name": "ms per host", "value": 1.24, "unit": "ms",
                                      "target": "<= 1", "met": False, "note": ""}
    assert figures["throughput ratio"]["met"] is True and figures["throughput ratio"]["target"] == ">= 0.95"
    assert figures["apply 100000 entries"]["value"] is None
    json.dumps(doc)  # the document is plain JSON


def test_markdown_table_rows_verdicts_and_notes():
    text = report.markdown(report.document(_outcomes(), HOST, ["B7", "B3", "B1"], now=NOW))
    lines = text.splitlines()
    assert "- machine: Test CPU, 2 cores, 4096 MiB, kernel 6.1" in lines
    assert "- load average (1, 5, 15 min) when written: 0.5, 0.25, 0.1" in lines
    assert "- figures: 4, with a target: 2, met: 1, missed: 1, not measured: 1" in lines
    assert "| ms per host | 1.24 | ms | <= 1 | **missed** |  |" in lines
    assert "| throughput ratio | 0.991 | x | >= 0.95 | met |  |" in lines
    assert "| apply 100000 entries | not measured | s | - | - | needs root (network namespaces) |" in lines
    # a '|' inside a cell would split the row; notes stay paragraphs, in order, under their benchmark
    assert "Profile: parse | render" in lines
    assert lines.index("## B7 controller render") < lines.index("Profile: parse | render") < lines.index("## B3 ruleset scale")
    assert "## B1 apply cost" in lines and "not measured yet: needs the SSH lab hosts" in lines
    # B1 has no figures: no empty table header under it
    assert lines[lines.index("## B1 apply cost") + 2] == "not measured yet: needs the SSH lab hosts"


def test_markdown_escapes_pipes_in_cells():
    outcome = report.Outcome("B9", "escape")
    outcome.figure("a | b", 1, "x")
    text = report.markdown(report.document([outcome], HOST, ["B9"], now=NOW))
    assert "| a \\| b | 1 | x | - | - |  |" in text.splitlines()


def test_write_produces_json_and_the_markdown_made_from_it(tmp_path):
    doc = report.document(_outcomes(), HOST, ["B7"], now=NOW)
    report.write(doc, str(tmp_path))
    assert json.loads((tmp_path / "results.json").read_text()) == doc
    assert (tmp_path / "results.md").read_text() == report.markdown(doc)


def test_console_table_shows_the_verdicts():
    class Sink:
        text = ""

        def write(self, data):
            self.text += data

        def flush(self):
            pass

    sink = Sink()
    report.console(report.document(_outcomes(), HOST, ["B7"], now=NOW), sink)
    assert "ms per host" in sink.text and "missed" in sink.text and "not measured" in sink.text


@pytest.mark.parametrize("text, names", [
    ("", list(run.ORDER)), (None, list(run.ORDER)), ("B3,B7", ["B7", "B3"]), (" b7 , B3 ,", ["B7", "B3"]),
])
def test_selection_follows_the_run_order(text, names):
    assert run.selection(text) == names


def test_selection_refuses_unknown_names():
    with pytest.raises(run.SelectionError, match="B9"):
        run.selection("B3,B9")


def test_every_benchmark_is_ordered_once():
    assert sorted(run.ORDER) == sorted(run.BENCHMARKS)


def test_unmeasured_benchmark_reports_why(monkeypatch):
    monkeypatch.setitem(run.BENCHMARKS, "B1", ("apply cost", None, "not measured yet: needs the SSH lab hosts"))
    outcome = run.run_one("B1")
    assert outcome.figures == [] and outcome.notes and outcome.notes[0].startswith("not measured yet")


def test_a_failing_benchmark_is_reported_not_fatal(monkeypatch):
    def broken(outcome):
        outcome.figure("partial", 1.0, "s")
        raise RuntimeError("boom")

    monkeypatch.setitem(run.BENCHMARKS, "B7", ("render", "bench.report", ""))
    monkeypatch.setattr(report, "run", broken, raising=False)
    outcome = run.run_one("B7")
    assert [f.name for f in outcome.figures] == ["partial"]
    assert outcome.notes[0].startswith("**error**: the benchmark stopped: RuntimeError: boom")


PAYLOAD = """table inet killswitch {
\tset extra_any_all_v4 {
\t\ttype ipv4_addr
\t}

\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tiifname "lo" accept
\t\tct state established,related accept
\t\tcounter drop
\t}

\tchain output {
\t\ttype filter hook output priority filter; policy drop;
\t\toifname "lo" accept
\t\toifname "wg0" accept
\t\tip daddr @extra_any_all_v4 accept
\t\tcounter reject with icmpx admin-prohibited
\t}
}
"""


def test_rules_a_packet_evaluates_count_up_to_the_first_match():
    from bench import b4_datapath

    output = b4_datapath.chain_rules(PAYLOAD, "output")
    assert output == ['oifname "lo" accept', 'oifname "wg0" accept', "ip daddr @extra_any_all_v4 accept",
                      "counter reject with icmpx admin-prohibited"]
    assert b4_datapath.rules_traversed(output, 'oifname "wg0"') == 2
    assert b4_datapath.rules_traversed(output, "@extra_") == 3
    assert b4_datapath.rules_traversed(b4_datapath.chain_rules(PAYLOAD, "input"), "ct state established") == 2
    with pytest.raises(ValueError, match="forward"):
        b4_datapath.chain_rules(PAYLOAD, "forward")
    with pytest.raises(ValueError, match="no rule"):
        b4_datapath.rules_traversed(output, "tun9")


PERF_REPORT = """\
# Samples: 1K of event 'cpu-clock:ppp'
#
    14.42%  [k] _raw_spin_unlock_irqrestore
     4.28%  [k] nft_do_chain
     0.85%  [k] nft_lookup_eval
     1.12%  [k] nf_conntrack_in
     0.62%  [k] nf_confirm
     0.30%  [k] ipv4_conntrack_local
     1.12%  [k] nf_hook_slow
     1.74%  [.] __GI___libc_write
"""


def test_perf_samples_are_shared_out_by_where_the_cost_lies():
    from bench import b4_datapath

    shares = b4_datapath.cost_shares(PERF_REPORT)
    assert {kind: round(value, 2) for kind, value in shares.items()} == {
        "nftables rule evaluation": 5.13, "connection tracking": 2.04, "netfilter hooks": 1.12}
    assert set(b4_datapath.cost_shares("").values()) == {0.0}


def test_main_writes_both_files_and_leaves_no_scratch(tmp_path, monkeypatch):
    """A run of benchmarks that are not measured only: results written, its temporary directory gone, TMPDIR as before."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(report, "machine", lambda: dict(HOST))
    scratch_dirs = []
    real_run_one = run.run_one

    def recording_run_one(name):
        scratch_dirs.append(os.environ["TMPDIR"])
        return real_run_one(name)

    monkeypatch.setattr(run, "run_one", recording_run_one)
    # B1 and B6 measure on the SSH fleet lab: here they stand for benchmarks that are not run
    for name in ("B1", "B6"):
        monkeypatch.setitem(run.BENCHMARKS, name, (run.BENCHMARKS[name][0], None, "not measured in this test"))
    out = tmp_path / "out"
    assert run.main(["--only", "B1,B6", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["selected"] == ["B1", "B6"] and [b["benchmark"] for b in doc["benchmarks"]] == ["B1", "B6"]
    assert (out / "results.md").read_text() == report.markdown(doc)
    assert len(set(scratch_dirs)) == 1 and scratch_dirs[0] != str(tmp_path)
    assert not os.path.exists(scratch_dirs[0])
    assert os.environ["TMPDIR"] == str(tmp_path)


def test_merge_keeps_what_was_not_run_with_its_date():
    before = report.document(_outcomes(), HOST, ["B7", "B3", "B1"], now=NOW)
    again = report.Outcome("B3", "ruleset scale", seconds=3.0)
    again.figure("throughput ratio", 0.90, "x", report.Target(">=", 0.95))
    later = report.document([again], HOST, ["B3"], now=NOW + datetime.timedelta(hours=1))
    doc = report.merged(before, later, run.ORDER)
    assert [b["benchmark"] for b in doc["benchmarks"]] == ["B7", "B3", "B1"] == doc["selected"]
    assert {b["benchmark"]: b["date"] for b in doc["benchmarks"]} == {
        "B7": "2026-12-04T12:00:00Z", "B3": "2026-12-04T13:00:00Z", "B1": "2026-12-04T12:00:00Z"}
    assert [f["value"] for f in doc["benchmarks"][1]["figures"]] == [0.90]  # B3 replaced whole, not mixed
    assert doc["summary"] == {"figures": 3, "with_target": 2, "met": 0, "missed": 2, "not_measured": 0}
    text = report.markdown(doc)
    assert "(12.34 s" not in text and "(3.0 s)" in text and "measured 2026-12-04T12:00:00Z" in text


def test_merge_refuses_results_of_another_machine():
    before = report.document(_outcomes(), dict(HOST, cpu_cores=64), ["B7"], now=NOW)
    with pytest.raises(report.MergeError, match="another machine"):
        report.merged(before, report.document([], HOST, [], now=NOW), run.ORDER)
