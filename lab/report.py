"""Report a leak run: a rich table per host, a case-by-client matrix, a stable JSON file and a flap timeline PNG.

``print_report`` for the terminal, ``write_all`` for the artefacts (``leak-report.json``,
``leak-timeline.png``), ``exit_code`` for the process status (0: no leak, every control seen, every
case run on every client, every client's firewall as the inventory set it).  Each host is shown with
the firewall it ran (``HostFirewall``: kill switch backend and iptables variant).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # no display; must precede the pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from lab.results import CHAIN_CASE_PREFIX, CaseResult, FlapTimeline, HostFirewall  # noqa: E402

TITLE = "netlock.killswitch: tunnel flaps vs packets at the sink"
BIN = 0.1  # seconds per histogram bin
JSON_NAME = "leak-report.json"
PNG_NAME = "leak-timeline.png"


FLAP = "flap stream"


def _hosts(results: Iterable[CaseResult], timelines: Iterable[FlapTimeline],
           firewalls: Iterable[HostFirewall] = ()) -> List[str]:
    return sorted({r.host for r in results} | {t.host for t in timelines} | {f.host for f in firewalls})


def _total_leaked(results: List[CaseResult], timelines: List[FlapTimeline]) -> int:
    return sum(r.leaked for r in results) + sum(len(t.leaked) for t in timelines)


def _ran(host: str, results: List[CaseResult], timelines: List[FlapTimeline]) -> set:
    """The cases the host ran, by their lab.cases.CASES entry when known: an entry may give a client results that
    others have no counterpart for (OpenVPN over TCP under "tunnel-up")."""
    return ({r.case_id or r.case for r in results if r.host == host}
            | ({FLAP} if any(t.host == host for t in timelines) else set()))


# Cases with a lab of their own (lab.webrtc: a browser in network namespaces; lab.doublevpn: the chains, case_id
# CHAIN_CASE_PREFIX...), not run on every client.
STANDALONE_CASE_IDS = {"webrtc"}
# Where a chain's probes were seen (lab.doublevpn.WHERE): the columns of its table and its bars in the picture.
CHAIN_PLACES = ("inner server", "outer tunnel", "physical")


def standalone(result: CaseResult) -> bool:
    return result.case_id in STANDALONE_CASE_IDS or result.case_id.startswith(CHAIN_CASE_PREFIX)


def is_chain(result: CaseResult) -> bool:
    return result.case_id.startswith(CHAIN_CASE_PREFIX)


def not_run(results: List[CaseResult], timelines: List[FlapTimeline],
            firewalls: Sequence[HostFirewall] = ()) -> Dict[str, List[str]]:
    """host -> the cases some other host ran and this one did not: every case must run on every client."""
    results = [r for r in results if not standalone(r)]
    hosts = _hosts(results, timelines, firewalls)
    ran = {host: _ran(host, results, timelines) for host in hosts}
    every = set().union(*ran.values()) if ran else set()
    return {host: sorted(every - ran[host]) for host in hosts if every - ran[host]}


def exit_code(results: List[CaseResult], timelines: List[FlapTimeline], firewalls: Sequence[HostFirewall] = ()) -> int:
    """0 when every case passed on every host, no flap stream leaked and every firewall was as intended, else 1."""
    ok = (all(r.passed for r in results) and not any(t.leaked for t in timelines)
          and all(f.ok for f in firewalls) and not not_run(results, timelines, firewalls))
    return 0 if ok else 1


def _verdict(passed: bool) -> str:
    return "[bold green]PASS[/]" if passed else "[bold red]FAIL[/]"


def _outcome(result: CaseResult) -> str:
    return "[bold red]ERROR[/]" if result.error else _verdict(result.passed)


def _control(seen: Optional[bool]) -> str:
    return {None: "[dim]n/a[/]", True: "[green]seen[/]", False: "[bold red]NOT SEEN[/]"}[seen]


def _title(host: str, firewall: Optional[HostFirewall]) -> str:
    title = "[bold]%s[/]" % escape(host)
    if firewall:
        vpn = "VPN [bold]%s[/]; " % escape(firewall.vpn) if firewall.vpn else ""
        title += ": %skill switch backend [bold]%s[/]; iptables alternative %s: %s" % (
            vpn, escape(firewall.backend), escape(firewall.alternative), escape(firewall.iptables_version or "?"))
    return title


def _caption(firewall: Optional[HostFirewall]) -> Optional[str]:
    if not firewall:
        return None
    lines = ["in force: %s" % escape(firewall.in_force or "nothing found")]
    lines += ["[bold red]FIREWALL NOT AS INTENDED:[/] %s" % escape(p) for p in firewall.problems]
    return "\n".join(lines)


def print_report(results: List[CaseResult], timelines: List[FlapTimeline],
                 console: Optional[Console] = None, firewalls: Sequence[HostFirewall] = ()) -> None:
    """One table per host (its firewall, cases, then the flap stream), a case-by-host matrix, a summary line."""
    console = console or Console()
    by_host = {f.host: f for f in firewalls}
    for host in _hosts(results, timelines, firewalls):
        chain = [r for r in results if r.host == host and is_chain(r)]
        if chain:
            console.print(chain_table(host, chain))
            continue
        # The heading on a line of its own: a table title would wrap at the table's width.
        console.print(_title(host, by_host.get(host)))
        table = Table(caption=_caption(by_host.get(host)), caption_justify="left")
        table.add_column("case")
        table.add_column("sent", justify="right")
        table.add_column("leaked", justify="right")
        table.add_column("positive control", justify="center")
        table.add_column("verdict", justify="center")
        for r in sorted((r for r in results if r.host == host), key=lambda r: r.case):
            label = escape(r.case)
            if r.error:
                label += "\n[red]  ↳ error: %s[/]" % escape(r.error)
            elif not r.passed and r.details:
                label += "".join("\n[dim]  ↳ %s[/]" % escape(d) for d in r.details[:3])
            leaked = "[red]%d[/]" % r.leaked if r.leaked else "0"
            table.add_row(label, str(r.sent), leaked, _control(r.control_seen), _outcome(r))
        if table.rows:
            table.rows[-1].end_section = True
        for t in (t for t in timelines if t.host == host):
            label = "flap stream [dim](%d flaps in %.1f s, %d at sink)[/]" % (t.flaps, t.duration, len(t.sink_seen))
            leaked = "[red]%d[/]" % len(t.leaked) if t.leaked else "0"
            table.add_row(label, str(t.sent), leaked, _control(None), _verdict(not t.leaked))
        console.print(table)
    if len(_hosts([r for r in results if not standalone(r)], timelines, firewalls)) > 1:
        console.print(matrix(results, timelines, firewalls))
    failed = sum(not r.passed for r in results) + sum(bool(t.leaked) for t in timelines)
    line = "%d cases, %d leaked packets in total" % (len(results), _total_leaked(results, timelines))
    if failed:
        line += ", %d failed" % failed
    missing = not_run(results, timelines, firewalls)
    if missing:
        line += ", not run: %s" % "; ".join("%s on %s" % (", ".join(cases), host) for host, cases in missing.items())
    wrong = [f.host for f in firewalls if not f.ok]
    if wrong:
        line += ", firewall not as intended on %s" % ", ".join(wrong)
    console.print("[bold %s]%s[/]" % ("green" if exit_code(results, timelines, firewalls) == 0 else "red",
                                      escape(line)))


def chain_table(host: str, results: List[CaseResult]) -> Table:
    """A double-VPN chain (lab.doublevpn), a row per state in the order run: the guarded probes seen where (arrived
    at the sink from the inner server: the exit; on the outer tunnel and the physical link: leaks), leaked in all,
    whether the control (no kill switch) saw each probe on the wire it would leak on."""
    table = Table(title="[bold]%s[/]" % escape(host), title_justify="left")
    table.add_column("state")
    for place in CHAIN_PLACES:
        table.add_column("seen: %s" % place, justify="right")
    table.add_column("leaked", justify="right")
    table.add_column("positive control", justify="center")
    table.add_column("verdict", justify="center")
    for r in results:
        label = escape(r.case)
        if r.error:
            label += "\n[red]  ↳ error: %s[/]" % escape(r.error)
        elif not r.passed and r.details:
            label += "".join("\n[dim]  ↳ %s[/]" % escape(d) for d in r.details[:3])
        cells = [str(r.seen[place]) if place in r.seen else "[dim]-[/]" for place in CHAIN_PLACES]
        leaked = "[red]%d[/]" % r.leaked if r.leaked else "0"
        table.add_row(label, *cells, leaked, _control(r.control_seen), _outcome(r))
    return table


def matrix(results: List[CaseResult], timelines: List[FlapTimeline], firewalls: Sequence[HostFirewall] = ()) -> Table:
    """Every case (rows) on every host (columns): a case must pass on each, whatever its firewall.  Standalone
    cases (STANDALONE_CASE_IDS) have their own table in print_report."""
    results = [r for r in results if not standalone(r)]
    hosts = _hosts(results, timelines, firewalls)
    by_host = {f.host: f for f in firewalls}
    table = Table(title="[bold]every case on every client[/]", title_justify="left")
    table.add_column("case")
    for host in hosts:
        firewall = by_host.get(host)
        table.add_column("%s\n%s" % (host, _host_label(firewall)), justify="center")
    cells: Dict[Tuple[str, str], List[str]] = {}
    for r in results:
        cells.setdefault((r.case, r.host), []).append("ERROR" if r.error else "PASS" if r.passed else "FAIL")
    for t in timelines:
        cells.setdefault((FLAP, t.host), []).append("FAIL" if t.leaked else "PASS")
    # A result of a CASES entry that other hosts ran without giving it (OpenVPN over TCP) is "n/a" there.
    entry = {r.case: r.case_id for r in results if r.case_id}
    ran = {host: _ran(host, results, timelines) for host in hosts}
    for case in sorted({case for case, _host in cells}):
        verdicts = [sorted(set(cells.get((case, host), ["n/a" if entry.get(case) in ran[host] else "not run"])))
                    for host in hosts]
        label = escape(case) + (" [red](differs)[/]" if len({tuple(v) for v in verdicts if v != ["n/a"]}) > 1 else "")
        table.add_row(label, *(" ".join(_style(v) for v in vs) for vs in verdicts))
    return table


def _host_label(firewall: Optional[HostFirewall]) -> str:
    """"nftables, OpenVPN (udp)": the host's firewall and VPN."""
    if not firewall:
        return ""
    return ", ".join(part for part in (firewall.label(), firewall.vpn) if part)


def _style(verdict: str) -> str:
    return {"PASS": "[green]PASS[/]", "FAIL": "[bold red]FAIL[/]", "ERROR": "[bold red]ERROR[/]",
            "n/a": "[dim]n/a[/]"}.get(
        verdict, "[bold red]%s[/]" % verdict.upper())


def _r(x: float) -> float:
    return round(float(x), 3)


def report_dict(results: List[CaseResult], timelines: List[FlapTimeline],
                firewalls: Sequence[HostFirewall] = ()) -> Dict[str, Any]:
    """The JSON document as a dict (hosts, cases sorted by host and case, flap streams by host)."""
    hosts = [
        {"host": f.host, "backend": f.backend, "iptables_alternative": f.alternative,
         "iptables_version": f.iptables_version, "in_force": f.in_force, "problems": list(f.problems), "ok": f.ok,
         "vpn": f.vpn}
        for f in sorted(firewalls, key=lambda f: f.host)
    ]
    cases = [
        {"host": r.host, "case": r.case, "case_id": r.case_id, "sent": r.sent, "leaked": r.leaked,
         "control_seen": r.control_seen, "passed": r.passed, "error": r.error, "details": list(r.details),
         "seen": dict(r.seen)}
        for r in sorted(results, key=lambda r: (r.host, r.case))
    ]
    flap = [
        {"host": t.host, "duration": _r(t.duration), "flaps": t.flaps, "sent": t.sent,
         "leaked": len(t.leaked), "sink_seen": len(t.sink_seen),
         "probes": ["%s %s:%s" % tuple(p) for p in t.probes], "leaked_kinds": list(t.leaked_kinds),
         "tunnel": [[_r(ts), bool(up)] for ts, up in t.tunnel]}
        for t in sorted(timelines, key=lambda t: t.host)
    ]
    summary = {"cases": len(results), "leaked": _total_leaked(results, timelines),
               "not_run": not_run(results, timelines, firewalls),
               "passed": exit_code(results, timelines, firewalls) == 0}
    return {"summary": summary, "hosts": hosts, "cases": cases, "flap": flap}


def write_json(results: List[CaseResult], timelines: List[FlapTimeline], path: Path | str,
               firewalls: Sequence[HostFirewall] = ()) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report_dict(results, timelines, firewalls), indent=2, sort_keys=True) + "\n")
    return path


def _segments(t: FlapTimeline) -> List[Tuple[float, float, bool]]:
    """(start, end, up) for every tunnel state, the last one running to the end of the stream."""
    changes = sorted(t.tunnel) or [(0.0, False)]
    ends = [change[0] for change in changes[1:]] + [max(t.duration, changes[-1][0])]
    return [(ts, end, up) for (ts, up), end in zip(changes, ends)]


def _plot_host(ax: Any, t: FlapTimeline, xmax: float, firewall: Optional[HostFirewall] = None) -> None:
    segments = _segments(t)
    for start, end, up in segments:
        if up:
            ax.axvspan(start, end, color="tab:green", alpha=0.12, linewidth=0)
    edges = np.arange(0.0, xmax + BIN, BIN)
    counts = np.histogram(t.sink_seen, bins=edges)[0]
    ax.stairs(counts / BIN, edges, fill=True, color="tab:blue", alpha=0.75)
    peak = max(float(counts.max(initial=0)) / BIN, 1.0)
    ax.set_ylim(0, peak * 1.45)  # the top quarter is left to the tunnel state line
    ax.set_yticks([v for v in ax.get_yticks() if 0 <= v <= peak * 1.05])
    ax.set_ylabel("packets/s at sink")
    for ts in t.leaked:
        ax.axvline(ts, color="red", alpha=0.5, linewidth=1)
    if t.leaked:
        ax.plot(t.leaked, [peak * 0.5] * len(t.leaked), "x", color="red", markersize=9, mew=2, zorder=5)

    state = ax.twinx()  # up/down drawn in a band above the bars: down at 75 %, up at 95 % of the height
    xs = [seg[0] for seg in segments] + [segments[-1][1]]
    ys = [int(seg[2]) for seg in segments] + [int(segments[-1][2])]
    state.step(xs, ys, where="post", color="tab:green", linewidth=1.2)
    state.set_ylim(-3.75, 1.25)
    state.set_yticks([0, 1], ["down", "up"])
    state.set_ylabel("tunnel", loc="top")

    handles = [
        Patch(color="tab:green", alpha=0.25, label="tunnel up"),
        Patch(color="tab:blue", alpha=0.75, label="through the tunnel (%d pkts)" % len(t.sink_seen)),
        Line2D([], [], marker="x", color="red", linestyle="none", mew=2,
               label="%d leaked" % len(t.leaked)) if t.leaked
        else Line2D([], [], linestyle="none", label="0 leaked"),
    ]
    legend = state.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3,
                          fontsize="small", frameon=False, borderaxespad=0.2)
    if not t.leaked:
        legend.get_texts()[-1].set_color("tab:green")
    host = "%s, %s" % (t.host, _host_label(firewall)) if firewall else t.host
    ax.set_title("%s: %d flaps, %d sent, %d leaked" % (host, t.flaps, t.sent, len(t.leaked)),
                 loc="left", fontsize="medium")


def _plot_standalone(ax: Any, results: List[CaseResult]) -> None:
    """The standalone cases (a double-VPN chain's states, WebRTC), one group of bars each: where a chain's guarded
    probes were seen (CHAIN_PLACES) and what leaked; a case without places shows its leaks only."""
    places = CHAIN_PLACES + ("leaked",)
    colors = {"inner server": "tab:blue", "outer tunnel": "tab:orange", "physical": "tab:purple", "leaked": "red"}
    width = 1.0 / (len(places) + 1)
    labels = []
    for index, r in enumerate(results):
        values = {place: r.seen[place] for place in CHAIN_PLACES if place in r.seen}
        values["leaked"] = r.leaked
        for offset, place in enumerate(places):
            if place in values:
                x = index + (offset - (len(places) - 1) / 2) * width
                ax.bar(x, values[place], width, color=colors[place])
                ax.text(x, values[place], str(values[place]), ha="center", va="bottom", fontsize="x-small")
        verdict = "ERROR" if r.error else "PASS" if r.passed else "FAIL"
        labels.append("%s\n%s: %s" % (r.host.replace("double VPN: ", ""), r.case, verdict))
    ax.set_xticks(range(len(results)), labels, fontsize="x-small", rotation=30, ha="right")
    handles = [Patch(color=colors[place], label=place) for place in places]
    ax.legend(handles=handles, loc="upper right", ncol=len(places), fontsize="small", frameon=False)
    ax.set_ylabel("probe packets")
    ax.set_title("standalone cases: where the guarded probes were seen (inner server: the exit; elsewhere: leaks)",
                 loc="left", fontsize="medium")
    top = max([1] + [r.leaked for r in results] + [v for r in results for v in r.seen.values()])
    ax.set_ylim(0, top * 1.4)


def write_timeline_png(timelines: List[FlapTimeline], path: Path | str,
                       firewalls: Sequence[HostFirewall] = (), results: Sequence[CaseResult] = ()) -> Path:
    """One subplot per flap timeline (sorted by host, titled with its firewall and VPN), x axis shared, in seconds;
    below them the standalone cases (double-VPN chains, WebRTC), if any."""
    path = Path(path)
    by_host = {f.host: f for f in firewalls}
    ordered = sorted(timelines, key=lambda t: t.host)
    extra = [r for r in results if standalone(r)]
    rows = max(len(ordered), 1)
    fig = plt.figure(figsize=(12, 3 * rows + (4 if extra else 0)), dpi=100)
    grid = fig.add_gridspec(rows + bool(extra), 1, height_ratios=[3] * rows + ([4] if extra else []))
    axes = [fig.add_subplot(grid[0, 0])]
    axes += [fig.add_subplot(grid[i, 0], sharex=axes[0]) for i in range(1, rows)]
    try:
        xmax = max([t.duration for t in ordered] + [change[0] for t in ordered for change in t.tunnel] + [1.0])
        for ax, t in zip(axes, ordered):
            _plot_host(ax, t, xmax, by_host.get(t.host))
        if not ordered:
            axes[0].text(0.5, 0.5, "no flap timeline", ha="center", va="center", transform=axes[0].transAxes)
        for ax in axes[:-1]:
            ax.tick_params(labelbottom=False)
        axes[-1].set_xlim(0, xmax)
        axes[-1].set_xlabel("seconds")
        if extra:
            _plot_standalone(fig.add_subplot(grid[rows, 0]), extra)
        fig.suptitle(TITLE)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def write_all(results: List[CaseResult], timelines: List[FlapTimeline], outdir: Path | str,
              firewalls: Sequence[HostFirewall] = ()) -> Dict[str, Path]:
    """Write leak-report.json and leak-timeline.png under outdir; {"json": path, "png": path}."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    return {"json": write_json(results, timelines, outdir / JSON_NAME, firewalls),
            "png": write_timeline_png(timelines, outdir / PNG_NAME, firewalls, results)}
