"""The leak lab from the command line.

    python -m lab up        build the lab (networks, containers, tunnels), with progress
    python -m lab rollout   roll the kill switch out with playbooks/rollout.yml -i inventories/lab
    python -m lab cases     run every leak case and the flap stream, print and write the report
    python -m lab demo      all three; exits 1 if anything leaked
    python -m lab down      remove the lab
    python -m lab fleet-up    build the SSH fleet lab (managed hosts reached over SSH as operator; --fleet-count N)
    python -m lab fleet-down  remove the SSH fleet lab
    python -m lab drift-table print the drift scenario's measurements (reports/drift-measurements.json) as Markdown
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from lab import build, cases, doublevpn, fleet, flush, report, run, webrtc

console = Console()


def progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=console)


def up() -> None:
    steps = build.STEPS
    with progress() as display:
        task = display.add_task("building the lab", total=steps)

        def step(message: str) -> None:
            display.update(task, description=message, advance=1)
        build.up(step)
        display.update(task, description="lab ready", completed=steps)


def fleet_up(count: int = fleet.DEFAULT_COUNT) -> None:
    steps = fleet.steps(count)
    with progress() as display:
        task = display.add_task("building the SSH fleet lab", total=steps)

        def step(message: str) -> None:
            display.update(task, description=message, advance=1)
        fleet.up(step, count)
        display.update(task, description="fleet lab ready", completed=steps)


def rollout() -> None:
    console.rule("rolling the kill switch out to the lab fleet")
    subprocess.run(["ansible-playbook", "-i", cases.INVENTORY, cases.ROLLOUT], check=True)


def run_cases(names, flaps: int, outdir: str, concurrent: bool = True, with_standalone: bool = True) -> int:
    hosts = cases.clients()
    with progress() as display:
        tasks = {host.name: display.add_task(host.name, total=len(names) + 1) for host in hosts}

        def notify(host: str, what: str, done: int) -> None:
            display.update(tasks[host], description="%s: %s" % (host, what), advance=done)
        outcome = run.run_all(hosts, names, flaps, notify, concurrent=concurrent)
        if with_standalone:
            # Chromium gathering ICE candidates behind the kill switch, in a namespace lab of its own.
            task = display.add_task("%s: control, tunnel up, tunnel down" % webrtc.HOST, total=1)
            outcome.results.extend(webrtc.run_cases())
            display.update(task, advance=1)
            # The double-VPN chains, each in a namespace lab of its own (lab.doublevpn).
            task = display.add_task("double VPN chains", total=len(doublevpn.CHAINS))
            for chain in doublevpn.CHAINS:
                display.update(task, description="double VPN: %s" % doublevpn.chain_name(*chain))
                outcome.results.extend(doublevpn.run_cases((chain,)))
                display.update(task, advance=1)
    report.print_report(outcome.results, outcome.timelines, console, outcome.firewalls)
    paths = report.write_all(outcome.results, outcome.timelines, outdir, outcome.firewalls)
    console.print("%d clients in %s, %.0f s; report: %s, %s" % (
        len(hosts), "parallel" if concurrent else "turn", outcome.seconds, paths["json"], paths["png"]))
    return report.exit_code(outcome.results, outcome.timelines, outcome.firewalls)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("command", choices=["up", "rollout", "cases", "demo", "down", "fleet-up", "fleet-down", "drift-table"])
    parser.add_argument("--case", action="append", choices=sorted(cases.CASES), help="run only these cases")
    parser.add_argument("--flaps", type=int, default=20)
    parser.add_argument("--reports", default=os.path.join(build.ROOT, "reports"))
    parser.add_argument("--one-client-at-a-time", action="store_true", help="run the clients in turn, not side by side")
    parser.add_argument("--fleet-count", type=int, default=fleet.DEFAULT_COUNT, help="fleet-up: managed hosts (ks-fleet1..N)")
    args = parser.parse_args(argv)
    names = args.case or list(cases.CASES)
    if args.command == "down":
        build.down()
        return 0
    if args.command == "fleet-up":
        fleet_up(args.fleet_count)
        return 0
    if args.command == "drift-table":
        with open(os.path.join(args.reports, "drift-measurements.json"), encoding="utf-8") as handle:
            print(flush.markdown_report(json.load(handle)))
        return 0
    if args.command == "fleet-down":
        fleet.down()
        return 0
    if args.command in ("up", "demo"):
        up()
    if args.command in ("rollout", "demo"):
        rollout()
    if args.command in ("cases", "demo"):
        return run_cases(names, args.flaps, args.reports, concurrent=not args.one_client_at_a_time,
                         with_standalone=not args.case)
    return 0


if __name__ == "__main__":
    sys.exit(main())
