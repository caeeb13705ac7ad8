# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Figures, their targets, and the results files (bench/results.json, bench/results.md) made from them.

Pure: no measurement here.  ``results.md`` is generated from the JSON document only, so the two never disagree.
"""

from __future__ import annotations

import datetime
import json
import operator
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

OPERATORS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}


@dataclass(frozen=True)
class Target:
    operator: str   # one of OPERATORS
    limit: float

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise ValueError("unknown target operator %r" % self.operator)

    def met(self, value: Optional[float]) -> Optional[bool]:
        """None when nothing was measured: a missing figure is neither met nor missed."""
        return None if value is None else bool(OPERATORS[self.operator](value, self.limit))

    def __str__(self) -> str:
        return "%s %s" % (self.operator, _number(self.limit))


@dataclass(frozen=True)
class Figure:
    """One measured number.  ``value`` None means not measured, and ``note`` says why."""

    benchmark: str       # "B7"
    name: str            # "render ms per host (nftables)"
    value: Optional[float]
    unit: str
    target: Optional[Target] = None
    note: str = ""

    @property
    def met(self) -> Optional[bool]:
        return self.target.met(self.value) if self.target else None

    def as_dict(self) -> Dict[str, Any]:
        return {"benchmark": self.benchmark, "name": self.name, "value": self.value, "unit": self.unit,
                "target": str(self.target) if self.target else None, "met": self.met, "note": self.note}


@dataclass
class Outcome:
    """What one benchmark produced: its figures and the paragraphs that explain them (setup, stand-ins, gaps)."""

    benchmark: str
    title: str
    figures: List[Figure] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def figure(self, name: str, value: Optional[float], unit: str, target: Optional[Target] = None,
               note: str = "") -> Figure:
        made = Figure(self.benchmark, name, value, unit, target, note)
        self.figures.append(made)
        return made

    def as_dict(self) -> Dict[str, Any]:
        return {"benchmark": self.benchmark, "title": self.title, "seconds": round(self.seconds, 1),
                "figures": [f.as_dict() for f in self.figures], "notes": list(self.notes)}


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return ("%.4g" % value) if abs(value) < 1000 else "%.0f" % value
    return str(int(value)) if isinstance(value, float) else str(value)


def _command_line(argv: Sequence[str]) -> str:
    if not shutil.which(argv[0]):
        return "missing"
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "unknown (%s)" % exc
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            found = re.search(r"^model name\s*:\s*(.+)$", handle.read(), re.M)
    except OSError:
        found = None
    return found.group(1).strip() if found else platform.processor() or "unknown"


def _memory_mib() -> Optional[int]:
    try:
        with open("/proc/meminfo") as handle:
            found = re.search(r"^MemTotal:\s+(\d+) kB", handle.read(), re.M)
    except OSError:
        return None
    return int(found.group(1)) // 1024 if found else None


def python_speed_ms(rounds: int = 5) -> float:
    """CPU milliseconds of a fixed pure-Python workload (best of ``rounds``): the yardstick for comparing the
    controller-side figures (B7, the guard's check) measured on different machines."""
    best = None
    for _round in range(rounds):
        started = time.process_time()
        table: Dict[str, int] = {}
        for number in range(200_000):
            key = "k%d" % (number % 1000)
            table[key] = table.get(key, 0) + number * number % 7
        spent = (time.process_time() - started) * 1000
        best = spent if best is None else min(best, spent)
    return round(best or 0.0, 1)


def machine() -> Dict[str, Any]:
    """The machine and the versions every figure depends on."""
    try:
        from ansible.release import __version__ as ansible_core
    except ImportError:
        ansible_core = "missing"
    return {
        "cpu_model": _cpu_model(), "cpu_cores": os.cpu_count(), "memory_mib": _memory_mib(),
        "kernel": platform.release(), "python": platform.python_version(), "ansible_core": ansible_core,
        "nft": _command_line(["nft", "--version"]), "iptables": _command_line(["iptables", "--version"]),
        "iperf3": _command_line(["iperf3", "--version"]),
        # Other work on the machine skews every figure: the load when the results were written says how much.
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "python_speed_ms": python_speed_ms(),
    }


def document(outcomes: Sequence[Outcome], host: Dict[str, Any], selected: Sequence[str],
             now: Optional[datetime.datetime] = None) -> Dict[str, Any]:
    """The results.json document."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    figures = [f for outcome in outcomes for f in outcome.figures]
    return {
        "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": host, "selected": list(selected),
        "summary": summarize(figures), "benchmarks": [outcome.as_dict() for outcome in outcomes],
    }


def summarize(figures: Sequence[Figure]) -> Dict[str, int]:
    return _summary([f.as_dict() for f in figures])


def _summary(figures: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    with_target = [f for f in figures if f["target"] is not None]
    return {"figures": len(figures), "with_target": len(with_target),
            "met": sum(1 for f in with_target if f["met"] is True), "missed": sum(1 for f in with_target if f["met"] is False),
            "not_measured": sum(1 for f in figures if f["value"] is None)}


class MergeError(Exception):
    pass


def merged(previous: Dict[str, Any], current: Dict[str, Any], order: Sequence[str]) -> Dict[str, Any]:
    """``current`` plus the benchmarks it did not run, kept from ``previous`` (``--merge``: some benchmarks measured
    again after a fix, the others as they were).  Every benchmark carries the date it was measured; both runs must
    be on the same machine."""
    same = ("cpu_model", "cpu_cores", "memory_mib", "kernel")
    if any(previous["machine"].get(key) != current["machine"].get(key) for key in same):
        raise MergeError("the previous results were measured on another machine (%s): run every benchmark" % ", ".join(
            "%s %s" % (key, previous["machine"].get(key)) for key in same))
    ran = {bench["benchmark"] for bench in current["benchmarks"]}
    benchmarks = [dict(bench, date=bench.get("date", previous["date"])) for bench in previous["benchmarks"]
                  if bench["benchmark"] not in ran]
    benchmarks += [dict(bench, date=bench.get("date", current["date"])) for bench in current["benchmarks"]]
    benchmarks.sort(key=lambda bench: order.index(bench["benchmark"]) if bench["benchmark"] in order else len(order))
    return dict(current, selected=[bench["benchmark"] for bench in benchmarks], benchmarks=benchmarks,
                summary=_summary([fig for bench in benchmarks for fig in bench["figures"]]))


def verdict(met: Optional[bool]) -> str:
    return {True: "met", False: "**missed**", None: "-"}[met]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(doc: Dict[str, Any]) -> str:
    """results.md from the results.json document: machine, summary, then one table per benchmark and its notes."""
    host = doc["machine"]
    summary = doc["summary"]
    out = ["# Benchmark results", "",
           "Generated by `make bench` (`python -m bench`) from `bench/results.json`; do not edit by hand.", "",
           "- date: %s" % doc["date"],
           "- machine: %s, %s cores, %s MiB, kernel %s" % tuple(
               host.get(key) for key in ("cpu_model", "cpu_cores", "memory_mib", "kernel")),
           "- versions: Python %s, ansible-core %s, %s, %s, %s" % tuple(
               host.get(key) for key in ("python", "ansible_core", "nft", "iptables", "iperf3")),
           "- load average (1, 5, 15 min) when written: %s" % ", ".join(str(v) for v in host.get("load_average") or ["unknown"]),
           "- Python speed: %s ms of CPU for a fixed pure-Python loop (bench/report.py `python_speed_ms`, best of 5; "
           "lower is faster, measured when the results were written): a yardstick of the machine's speed, to read beside the "
           "controller-side figures (B7, B8's check) of another machine"
           % host.get("python_speed_ms", "not measured"),
           "- benchmarks run: %s" % ", ".join(doc["selected"]),
           "- figures: %(figures)d, with a target: %(with_target)d, met: %(met)d, missed: %(missed)d, "
           "not measured: %(not_measured)d" % summary, ""]
    for bench in doc["benchmarks"]:
        out += ["## %s %s" % (bench["benchmark"], bench["title"]), ""]
        if bench["figures"]:
            out += ["| figure | value | unit | target | verdict | note |", "|---|---:|---|---|---|---|"]
            for fig in bench["figures"]:
                value = "not measured" if fig["value"] is None else _number(fig["value"])
                out.append("| %s | %s | %s | %s | %s | %s |" % (
                    _cell(fig["name"]), value, _cell(fig["unit"]), _cell(fig["target"] or "-"),
                    verdict(fig["met"]), _cell(fig["note"])))
            out.append("")
        for note in bench["notes"]:
            out += [note, ""]
        measured = bench.get("date", doc["date"])
        out += ["(%s s%s)" % (bench["seconds"], "" if measured == doc["date"] else ", measured %s" % measured), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def write(doc: Dict[str, Any], directory: str) -> None:
    with open(os.path.join(directory, "results.json"), "w") as handle:
        json.dump(doc, handle, indent=1, sort_keys=False)
        handle.write("\n")
    with open(os.path.join(directory, "results.md"), "w") as handle:
        handle.write(markdown(doc))


def console(doc: Dict[str, Any], stream: Any = None) -> None:
    """The figures as a rich table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="netlock.killswitch benchmarks (%s)" % doc["date"])
    for column in ("bench", "figure", "value", "unit", "target", "verdict"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for bench in doc["benchmarks"]:
        for fig in bench["figures"]:
            colour = {True: "green", False: "red", None: "white"}[fig["met"]]
            table.add_row(bench["benchmark"], fig["name"], "not measured" if fig["value"] is None else _number(fig["value"]),
                          fig["unit"], fig["target"] or "-", "[%s]%s[/%s]" % (colour, verdict(fig["met"]).strip("*"), colour))
    Console(file=stream or sys.stdout, width=160).print(table)
