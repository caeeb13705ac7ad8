# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runner: picks the benchmarks, runs each in turn (one machine, one run, ratios side by side), writes results.

    make bench                       # every benchmark, about 20 min on 2 cores
    BENCH_ONLY=B3,B7 make bench      # a subset
    python -m bench --only B7 --out /tmp/results   # results elsewhere (the committed ones stay untouched)
    BENCH_ONLY=B3 BENCH_MERGE=1 make bench       # B3 measured again, the others kept with their dates
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from typing import Dict, List, Optional, Sequence, Tuple

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
# The repository root is the collection root; `make collection` links it under .collections.
COLLECTIONS = os.path.join(REPO_ROOT, ".collections")
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)

from bench import report  # noqa: E402  (after the path set-up above)

# Name: (title, module under bench/ with run(outcome), or None with the reason it is not measured).
BENCHMARKS: Dict[str, Tuple[str, Optional[str], str]] = {
    "B1": ("apply cost against a per-rule baseline", "bench.b1_apply", ""),
    "B2": ("no-op converge against ansible -m ping", "bench.b2_noop", ""),
    "B3": ("ruleset scale", "bench.b3_scale", ""),
    "B4": ("datapath overhead", "bench.b4_datapath", ""),
    "B5": ("leak window against a reactive baseline", "bench.b5_leak", ""),
    "B6": ("fleet fan-out", "bench.b6_fanout", ""),
    "B7": ("controller render of a 10,000-host inventory", "bench.b7_render", ""),
    "B8": ("guard drift check and restore", "bench.b8_guard", ""),
}
# Run order: cheapest and most basic first.
ORDER = ("B7", "B3", "B8", "B5", "B4", "B1", "B2", "B6")


class SelectionError(ValueError):
    pass


def selection(text: Optional[str]) -> List[str]:
    """The benchmarks to run, in ORDER, from "B3,B7" (case and blanks forgiven); all of them when empty."""
    if not text or not text.strip():
        return list(ORDER)
    wanted = {part.strip().upper() for part in text.split(",") if part.strip()}
    unknown = sorted(wanted - set(BENCHMARKS))
    if unknown:
        raise SelectionError("BENCH_ONLY: %s not a benchmark (choose from %s)" % (", ".join(unknown), ", ".join(ORDER)))
    return [name for name in ORDER if name in wanted]


def run_one(name: str) -> report.Outcome:
    title, module_name, reason = BENCHMARKS[name]
    outcome = report.Outcome(name, title)
    if module_name is None:
        outcome.notes.append(reason)
        return outcome
    started = time.monotonic()
    try:
        importlib.import_module(module_name).run(outcome)
    except Exception as exc:  # one broken benchmark must not lose the others' figures; the error is reported
        outcome.notes.append("**error**: the benchmark stopped: %s: %s\n\n```\n%s```" % (
            type(exc).__name__, exc, traceback.format_exc()[-3000:]))
        print("%s failed: %s" % (name, exc), file=sys.stderr)
    outcome.seconds = time.monotonic() - started
    return outcome


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""), help="e.g. B3,B7 (default: $BENCH_ONLY, else all)")
    parser.add_argument("--out", default=BENCH_DIR, help="directory for results.json and results.md")
    parser.add_argument("--merge", action="store_true", default=os.environ.get("BENCH_MERGE") == "1",
                        help="keep the benchmarks not run from the results already in --out (each keeps its date)")
    args = parser.parse_args(argv)
    try:
        names = selection(args.only)
    except SelectionError as exc:
        parser.error(str(exc))
    if os.geteuid() != 0:
        print("note: not root: the benchmarks that need network namespaces (B3 apply, B4, B5, B8) report why they did "
              "not measure", file=sys.stderr)
    outcomes = []
    # Every payload, capture and host directory of the run (and of the processes it starts) goes under one
    # temporary directory, removed at the end: the 100k-entry files are megabytes each.
    scratch = tempfile.mkdtemp(prefix="netlock-bench-")
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = scratch
    try:
        for name in names:
            print("== %s %s" % (name, BENCHMARKS[name][0]), flush=True)
            outcome = run_one(name)
            outcomes.append(outcome)
            for fig in outcome.figures:
                print("   %s: %s %s (%s)" % (fig.name, fig.value, fig.unit, report.verdict(fig.met)), flush=True)
    finally:
        tempfile.tempdir = saved[1]
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]
        shutil.rmtree(scratch, ignore_errors=True)
    doc = report.document(outcomes, report.machine(), names)
    previous_path = os.path.join(args.out, "results.json")
    if args.merge and os.path.exists(previous_path):
        with open(previous_path, encoding="utf-8") as handle:
            try:
                doc = report.merged(json.load(handle), doc, ORDER)
            except report.MergeError as exc:
                print("not merged: %s" % exc, file=sys.stderr)
                return 2
    os.makedirs(args.out, exist_ok=True)
    report.write(doc, args.out)
    report.console(doc)
    print("wrote %s and %s" % (os.path.join(args.out, "results.json"), os.path.join(args.out, "results.md")))
    return 0
