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

from lab.report import exit_code, not_run, print_report, write_all, write_json, write_timeline_png  # noqa: E402
from lab.doublevpn import STATES, WHERE, chain_case_id, chain_name  # noqa: E402
from lab.results import CaseResult, FlapTimeline, HostFirewall  # noqa: E402
from lab.topology import CLIENTS, client  # noqa: E402

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
    assert doc["summary"] == {"cases": 6, "leaked": 3, "not_run": {}, "passed": False}
    assert [(c["host"], c["case"]) for c in doc["cases"]] == sorted((h, c) for h in HOSTS for c in CASES)
    bad = [c for c in doc["cases"] if not c["passed"]]
    assert bad == [{"host": HOSTS[0], "case": "icmp-echo", "case_id": "", "sent": 10, "leaked": 3, "control_seen": True,
                    "passed": False, "error": "", "details": ["eth0 10.0.0.2 > 1.1.1.1: ICMP echo request"],
                    "seen": {}}]
    assert [f["host"] for f in doc["flap"]] == sorted(HOSTS)
    flap = doc["flap"][0]
    assert set(flap) == {"host", "duration", "flaps", "sent", "leaked", "sink_seen", "probes", "leaked_kinds", "tunnel"}
    assert flap["leaked"] == 0 and flap["flaps"] == 6 and flap["sink_seen"] > 0
    assert flap["tunnel"][0] == [0.0, True] and flap["tunnel"][1] == [0.833, False]  # rounded to 3 places


def test_json_is_stable(tmp_path: Path) -> None:
    a = write_json(make_results(), make_timelines(), tmp_path / "a.json").read_text()
    b = write_json(list(reversed(make_results())), list(reversed(make_timelines())), tmp_path / "b.json").read_text()
    assert a == b
    assert json.loads(a)["summary"] == {"cases": 6, "leaked": 0, "not_run": {}, "passed": True}


def test_flap_leak_counts_in_summary(tmp_path: Path) -> None:
    doc = json.loads(write_json(make_results(), make_timelines(leak=True), tmp_path / "r.json").read_text())
    assert doc["summary"] == {"cases": 6, "leaked": 2, "not_run": {}, "passed": False}


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
    assert "7 cases, 5 leaked packets in total, 3 failed, not run: control-missing on client-debian" in text


# --- several clients, each with its own firewall ------------------------------------------------------

def make_firewalls(problem: str = "") -> List[HostFirewall]:
    return [HostFirewall(HOSTS[0], "nftables", "iptables-nft", "iptables v1.8.9 (nf_tables)", "table inet killswitch"),
            HostFirewall(HOSTS[1], "iptables", "iptables-legacy", "iptables v1.8.9 (legacy)",
                         "iptables: 30 rules, ip6tables: 28 rules (iptables-legacy)", [problem] if problem else [])]


def render_with_firewalls(results, timelines, firewalls) -> str:
    console = Console(record=True, width=160)
    print_report(results, timelines, console=console, firewalls=firewalls)
    return console.export_text()


def test_each_host_shows_its_backend_and_variant(tmp_path: Path) -> None:
    text = render_with_firewalls(make_results(), make_timelines(), make_firewalls())
    assert "client-debian: kill switch backend nftables; iptables alternative iptables-nft: iptables v1.8.9 " \
        "(nf_tables)" in text
    assert "client-alma: kill switch backend iptables; iptables alternative iptables-legacy: iptables v1.8.9 " \
        "(legacy)" in text
    assert "iptables (legacy)" in text  # the matrix's column
    assert "in force: iptables: 30 rules, ip6tables: 28 rules (iptables-legacy)" in text
    assert "every case on every client" in text and "differs" not in text
    doc = json.loads(write_json(make_results(), make_timelines(), tmp_path / "r.json", make_firewalls()).read_text())
    assert doc["hosts"] == [
        {"host": "client-alma", "backend": "iptables", "iptables_alternative": "iptables-legacy",
         "iptables_version": "iptables v1.8.9 (legacy)", "in_force": "iptables: 30 rules, ip6tables: 28 rules "
         "(iptables-legacy)", "problems": [], "ok": True, "vpn": ""},
        {"host": "client-debian", "backend": "nftables", "iptables_alternative": "iptables-nft",
         "iptables_version": "iptables v1.8.9 (nf_tables)", "in_force": "table inet killswitch", "problems": [],
         "ok": True, "vpn": ""}]
    assert doc["summary"]["passed"] is True
    assert exit_code(make_results(), make_timelines(), make_firewalls()) == 0


def test_a_firewall_not_as_intended_fails_the_run() -> None:
    firewalls = make_firewalls("iptables -V says 'iptables v1.8.9 (nf_tables)', iptables-legacy intended")
    assert exit_code(make_results(), make_timelines(), firewalls) == 1
    text = render_with_firewalls(make_results(), make_timelines(), firewalls)
    assert "FIREWALL NOT AS INTENDED" in text and "firewall not as intended on client-alma" in text


def test_a_case_that_fails_on_one_client_only_fails_the_run() -> None:
    results = make_results()
    results[-1] = CaseResult(HOSTS[1], CASES[-1], sent=10, leaked=1, control_seen=True)
    assert exit_code(results, make_timelines(), make_firewalls()) == 1
    text = render_with_firewalls(results, make_timelines(), make_firewalls())
    assert "tcp-443 (differs)" in text


def test_every_case_must_run_on_every_client() -> None:
    results = [r for r in make_results() if not (r.host == HOSTS[1] and r.case == CASES[0])]
    timelines = make_timelines()[:1]
    assert not_run(results, timelines) == {HOSTS[1]: [CASES[0], "flap stream"]}
    assert exit_code(results, timelines) == 1
    # A host that ran nothing at all, known from its firewall check, misses everything.
    silent = HostFirewall("client-third", "iptables", "iptables-nft", "", "")
    assert not_run(make_results(), make_timelines(), [silent]) == {"client-third": sorted(CASES + ("flap stream",))}


def test_a_result_only_one_client_gives_is_judged_by_its_case_entry() -> None:
    """One CASES entry may give a client an extra result (OpenVPN over TCP under "tunnel-up"): the others ran the
    entry all the same, so nothing is "not run"; the matrix shows n/a there, and no "(differs)"."""
    results = make_results() + [CaseResult(h, "tunnel up", 5, 0, control_seen=True, case_id="tunnel-up") for h in HOSTS]
    results.append(CaseResult(HOSTS[0], "tunnel up over TCP", 5, 0, control_seen=True, case_id="tunnel-up"))
    assert not_run(results, make_timelines()) == {}
    assert exit_code(results, make_timelines()) == 0
    text = render_with_firewalls(results, make_timelines(), make_firewalls())
    assert "n/a" in text and "differs" not in text and "not run" not in text.lower()
    # Without the entry's own result, the client did not run it.
    missing = [r for r in results if not (r.host == HOSTS[1] and r.case_id == "tunnel-up")]
    assert not_run(missing, make_timelines()) == {HOSTS[1]: ["tunnel-up"]}


def test_an_error_is_a_failure() -> None:
    results = make_results() + [CaseResult(HOSTS[0], "reboot", 0, 0, error="RuntimeError: no boot", case_id="reboot")]
    results.append(CaseResult(HOSTS[1], "reboot", 5, 0, control_seen=True, case_id="reboot"))
    assert exit_code(results, make_timelines()) == 1
    text = render_with_firewalls(results, make_timelines(), make_firewalls())
    assert "ERROR" in text and "error: RuntimeError: no boot" in text


def test_standalone_cases_are_judged_but_not_asked_of_every_client() -> None:
    """The WebRTC cases run in a lab of their own: a client without them is not 'not run', while a WebRTC
    leak or a blind control still fails the report."""
    clients = [CaseResult("ks-client1", "tunnel up", 10, 0, True), CaseResult("ks-client2", "tunnel up", 10, 0, True)]
    webrtc_ok = CaseResult("webrtc (chromium)", "webrtc tunnel up", 4, 0, True, case_id="webrtc")
    assert not_run(clients + [webrtc_ok], []) == {}
    assert exit_code(clients + [webrtc_ok], []) == 0
    leaked = CaseResult("webrtc (chromium)", "webrtc tunnel down", 4, 2, True, case_id="webrtc")
    blind = CaseResult("webrtc (chromium)", "webrtc tunnel down", 4, 0, False, case_id="webrtc")
    assert exit_code(clients + [webrtc_ok, leaked], []) == 1
    assert exit_code(clients + [webrtc_ok, blind], []) == 1
    assert exit_code([CaseResult("ks-client1", "tunnel up", 10, 0, True), webrtc_ok], []) == 0
    assert not_run(clients + [CaseResult("ks-client1", "dns", 4, 0, True)], []) == {"ks-client2": ["dns"]}


# --- which VPN each client runs; case_id in the JSON ------------------------------------------------------------

def test_each_client_is_shown_with_the_vpn_it_runs(tmp_path: Path) -> None:
    """ks-client4 runs OpenVPN, the others WireGuard (lab.topology): the host's title, the matrix column, the
    picture's title and the JSON report say so."""
    assert client("ks-client4").vpn.label() == "OpenVPN (udp)"
    assert {host.vpn.label() for host in CLIENTS if host.name != "ks-client4"} == {"WireGuard"}
    firewalls = [HostFirewall(HOSTS[0], "nftables", "iptables-nft", "iptables v1.8.9 (nf_tables)", "table inet killswitch",
                              vpn=client("ks-client1").vpn.label()),
                 HostFirewall(HOSTS[1], "nftables", "iptables-nft", "iptables v1.8.9 (nf_tables)", "table inet killswitch",
                              vpn=client("ks-client4").vpn.label())]
    text = render_with_firewalls(make_results(), make_timelines(), firewalls)
    assert "client-debian: VPN WireGuard; kill switch backend nftables" in text
    assert "client-alma: VPN OpenVPN (udp); kill switch backend nftables" in text
    assert "nftables, OpenVPN (udp)" in text and "nftables, WireGuard" in text  # the matrix's columns
    doc = json.loads(write_json(make_results(), make_timelines(), tmp_path / "r.json", firewalls).read_text())
    assert {h["host"]: h["vpn"] for h in doc["hosts"]} == {HOSTS[0]: "WireGuard", HOSTS[1]: "OpenVPN (udp)"}
    # without a VPN known, the title is as before (no empty "VPN" in it)
    bare = render_with_firewalls(make_results(), make_timelines(), make_firewalls())
    assert "VPN" not in bare


def test_json_stores_the_case_id(tmp_path: Path) -> None:
    results = [CaseResult(h, "tunnel up", 5, 0, control_seen=True, case_id="tunnel-up") for h in HOSTS]
    results.append(CaseResult(HOSTS[0], "tunnel up over TCP", 5, 0, control_seen=True, case_id="tunnel-up"))
    doc = json.loads(write_json(results, [], tmp_path / "r.json").read_text())
    assert [(c["host"], c["case"], c["case_id"]) for c in doc["cases"]] == [
        (HOSTS[1], "tunnel up", "tunnel-up"), (HOSTS[0], "tunnel up", "tunnel-up"),
        (HOSTS[0], "tunnel up over TCP", "tunnel-up")]


# --- the double-VPN chains (lab.doublevpn): a table each, in the JSON and the picture ------------------------------

def chain_results(leak: bool = False) -> List[CaseResult]:
    results = []
    for chain in (("wireguard", "nftables"), ("openvpn", "nftables")):
        for state in STATES:
            seen = {"inner server": 5 if state[0] == "both up" else 0, "outer tunnel": 0, "physical": 0}
            leaked = 0
            if leak and chain[0] == "openvpn" and state[0] == "outer down":
                seen["physical"], leaked = 2, 2
            results.append(CaseResult(chain_name(*chain), state[0], 6, leaked, control_seen=True,
                                      case_id=chain_case_id(*chain), seen=seen))
    return results


def test_a_chain_has_a_table_of_its_own(tmp_path: Path) -> None:
    results = make_results() + chain_results()
    text = render_with_firewalls(results, make_timelines(), make_firewalls())
    for chain in ("double VPN: WireGuard in WireGuard (nftables)", "double VPN: WireGuard in OpenVPN (nftables)"):
        assert chain in text
    for column in ("seen: %s" % place for place in WHERE):
        assert column in text
    both_up = [line.split("│") for line in text.splitlines() if "both up" in line]
    assert len(both_up) == 2 and [cell.strip() for cell in both_up[0][2:6]] == ["5", "0", "0", "0"]
    # standalone: not in the every-client matrix, never "not run" on the clients
    matrix = text[text.index("every case on every client"):]
    assert "both up" not in matrix and "WireGuard in" not in matrix
    assert not_run(results, make_timelines()) == {}
    assert exit_code(results, make_timelines()) == 0
    doc = json.loads(write_json(results, make_timelines(), tmp_path / "r.json").read_text())
    chain = [c for c in doc["cases"] if c["case_id"] == "doublevpn-openvpn-nftables"]
    assert sorted(c["case"] for c in chain) == sorted(state[0] for state in STATES)
    assert {c["case"]: c["seen"]["inner server"] for c in chain}["both up"] == 5


def test_a_chain_leak_fails_the_run_and_shows(tmp_path: Path) -> None:
    results = make_results() + chain_results(leak=True)
    assert exit_code(results, make_timelines()) == 1
    text = render_with_firewalls(results, make_timelines(), make_firewalls())
    openvpn = text[text.index("WireGuard in OpenVPN"):text.index("WireGuard in WireGuard")]
    wireguard = text[text.index("WireGuard in WireGuard"):]
    [leaking] = [line for line in openvpn.splitlines() if "outer down" in line]
    assert [cell.strip() for cell in leaking.split("│")[2:8]] == ["0", "0", "2", "2", "seen", "FAIL"]
    assert "PASS" in [line for line in wireguard.splitlines() if "outer down" in line][0]
    blind = chain_results()
    blind[0].control_seen = False
    assert exit_code(make_results() + blind, make_timelines()) == 1


def test_png_shows_the_standalone_cases(tmp_path: Path) -> None:
    webrtc = CaseResult("webrtc (chromium)", "webrtc tunnel up", 4, 0, True, case_id="webrtc")
    plain = write_timeline_png(make_timelines(), tmp_path / "plain.png").read_bytes()
    path = write_all(make_results() + chain_results(leak=True) + [webrtc], make_timelines(), tmp_path)["png"]
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # the standalone panel adds height: the PNG's IHDR height grows
    assert int.from_bytes(data[20:24], "big") > int.from_bytes(plain[20:24], "big")
