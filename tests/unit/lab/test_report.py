"""lab.report: rich tables, JSON, timeline PNG and exit code from synthetic leak runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from rich.console import Console  # noqa: E402

from lab.report import exit_code, print_report, write_all, write_json, write_timeline_png  # noqa: E402
from lab.results import CaseResult, FlapTimeline  # noqa: E402

HOSTS = ("client-debian", "client-alma")
CASES = ("dns-udp53", "icmp-echo", "tcp-443")


def make_results(fail: bool = False) -> List[CaseResult]:
    results = [CaseResult(host=h, case=c, sent=10, leaked=0, control_seen=True if c != "icmp-echo" else None)
               for h in HOSTS for c in CASES]
    if fail:
        results[1] = CaseResult(host=HOSTS[0], case="icmp-echo", sent=10, leaked=3, control_seen=True,
                                details=["eth0 10.0.0.2 > 1.1.1.1: ICMP echo request"])
    return results


def make_timeline(host: str, duration: float = 10.0, flaps: int = 6, rate: float = 300.0,
                  leaked: Tuple[float, ...] = ()) -> FlapTimeline:
    period = duration / flaps
    tunnel = [(round(i * period / 2, 4), i % 2 == 0) for i in range(2 * flaps)]
    sink = [k / rate for k in range(int(duration * rate))
            if int((k / rate) // (period / 2)) % 2 == 0]
    return FlapTimeline(host=host, duration=duration, tunnel=tunnel, sink_seen=sink, leaked=list(leaked),
                        sent=int(duration * rate), flaps=flaps)


def make_timelines(leak: bool = False) -> List[FlapTimeline]:
    return [make_timeline(HOSTS[0], leaked=(2.3456, 4.5) if leak else ()), make_timeline(HOSTS[1])]


def test_json_content(tmp_path: Path) -> None:
    path = write_json(make_results(fail=True), make_timelines(), tmp_path / "r.json")
    assert path == tmp_path / "r.json"
    doc = json.loads(path.read_text())
    assert doc["summary"] == {"cases": 6, "leaked": 3, "passed": False}
    assert [(c["host"], c["case"]) for c in doc["cases"]] == sorted((h, c) for h in HOSTS for c in CASES)
    bad = [c for c in doc["cases"] if not c["passed"]]
    assert bad == [{"host": HOSTS[0], "case": "icmp-echo", "sent": 10, "leaked": 3, "control_seen": True,
                    "passed": False, "details": ["eth0 10.0.0.2 > 1.1.1.1: ICMP echo request"]}]
    assert [f["host"] for f in doc["flap"]] == sorted(HOSTS)
    flap = doc["flap"][0]
    assert set(flap) == {"host", "duration", "flaps", "sent", "leaked", "sink_seen", "tunnel"}
    assert flap["leaked"] == 0 and flap["flaps"] == 6 and flap["sink_seen"] > 0
    assert flap["tunnel"][0] == [0.0, True] and flap["tunnel"][1] == [0.833, False]  # rounded to 3 places


def test_json_is_stable(tmp_path: Path) -> None:
    a = write_json(make_results(), make_timelines(), tmp_path / "a.json").read_text()
    b = write_json(list(reversed(make_results())), list(reversed(make_timelines())), tmp_path / "b.json").read_text()
    assert a == b
    assert json.loads(a)["summary"] == {"cases": 6, "leaked": 0, "passed": True}


def test_flap_leak_counts_in_summary(tmp_path: Path) -> None:
    doc = json.loads(write_json(make_results(), make_timelines(leak=True), tmp_path / "r.json").read_text())
    assert doc["summary"] == {"cases": 6, "leaked": 2, "passed": False}


@pytest.mark.parametrize("leak", [False, True])
def test_png(tmp_path: Path, leak: bool) -> None:
    path = write_timeline_png(make_timelines(leak=leak), tmp_path / "t.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


def test_png_without_timelines(tmp_path: Path) -> None:
    assert write_timeline_png([], tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"


def test_write_all(tmp_path: Path) -> None:
    out = write_all(make_results(), make_timelines(), tmp_path / "a" / "b")
    assert out == {"json": tmp_path / "a" / "b" / "leak-report.json", "png": tmp_path / "a" / "b" / "leak-timeline.png"}
    assert all(p.is_file() for p in out.values())


def test_exit_code() -> None:
    assert exit_code(make_results(), make_timelines()) == 0
    assert exit_code([], []) == 0
    assert exit_code(make_results(fail=True), make_timelines()) == 1
    assert exit_code(make_results(), make_timelines(leak=True)) == 1
    no_control = make_results() + [CaseResult("client-alma", "control-missing", sent=5, leaked=0, control_seen=False)]
    assert exit_code(no_control, make_timelines()) == 1


def render(results: List[CaseResult], timelines: List[FlapTimeline]) -> str:
    console = Console(record=True, width=120)
    print_report(results, timelines, console=console)
    return console.export_text()


def test_print_report_pass() -> None:
    text = render(make_results(), make_timelines())
    for name in HOSTS + CASES + ("flap stream", "PASS", "seen", "n/a"):
        assert name in text
    assert "FAIL" not in text
    assert "6 cases, 0 leaked packets in total" in text


def test_print_report_fail() -> None:
    results = make_results(fail=True) + [CaseResult("client-alma", "control-missing", sent=5, leaked=0,
                                                    control_seen=False)]
    text = render(results, make_timelines(leak=True))
    assert "FAIL" in text and "PASS" in text and "NOT SEEN" in text
    assert "ICMP echo request" in text  # details of a failing case
    assert "7 cases, 5 leaked packets in total, 3 failed" in text
