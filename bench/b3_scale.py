# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""B3: allowlists of 10 to 100,000 entries: controller render, host apply and no-op converge, ``nft -f`` alone,
and datapath throughput with the biggest allowlist against the smallest.

The apply runs the real module in a throwaway network namespace (``host_apply``); the throughput is iperf3
between two namespaces over a veth pair, the kill switch loaded in the sender's, the receiver's address one
member of the big set, so that every packet is looked up in it.
"""

from __future__ import annotations

import os
import tempfile
import time

from ansible_collections.netlock.killswitch.plugins.plugin_utils.backends import render_for
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy

from bench import host_apply, netns, workload
from bench.profiling import top_entries
from bench.report import Outcome, Target

SIZES = (10, 1_000, 10_000, 100_000)
BIGGEST = SIZES[-1]
RATIO_TO_NFT = Target("<=", 2.0)
NOOP_SECONDS = Target("<=", 1.5)
THROUGHPUT_RATIO = Target(">=", 0.95)
ROUNDS = 5          # iperf3 runs per ruleset, alternating, median taken
IPERF_SECONDS = 3


def datapath_policy(entries: int) -> dict:
    return workload.big_policy(entries, extra=[netns.RECEIVER_V4, netns.RECEIVER_V6])


def render_timed(entries: int, backend: str = "nftables"):
    started = time.perf_counter()
    policy = parse_policy(datapath_policy(entries))
    parsed = time.perf_counter()
    payload = render_for(policy, backend)
    done = time.perf_counter()
    return payload, parsed - started, done - parsed


def run(outcome: Outcome) -> None:
    outcome.notes.append("Allowlist: N `killswitch_extra_outbound` entries, half IPv4 /32s and half IPv6 /128s, none "
                         "adjacent (bench/workload.py). Render = parse_policy + render_for on the controller. Apply = the "
                         "real module (plugins/modules/killswitch_firewall.py) run as a host runs it, in a throwaway network "
                         "namespace with a private /run: desired (load and list in a nested private namespace, which is "
                         "also the check), live (JSON and text), compare, load, and a record of the ruleset's and the "
                         "listing's digests. No-op = the same module again with the table loaded: the record, the "
                         "persisted file and the expected listing match, so one listing of the live table (the guard's "
                         "list command) compared with the expected listing. nft -f = `nft -f` of the same file into the "
                         "emptied namespace, best of 2.")
    reason = netns.needs_root()
    work = tempfile.mkdtemp(prefix="netlock-bench-b3-")
    payloads = {}
    for entries in SIZES:
        payload, parse_s, render_s = render_timed(entries)
        iptables_s = sum(render_timed(entries, "iptables")[1:])
        payloads[entries] = os.path.join(work, "ruleset-%d.nft" % entries)
        with open(payloads[entries], "w") as handle:
            handle.write(payload)
        controller = parse_s + render_s
        outcome.figure("render %d entries (nftables): parse + render" % entries, round(controller, 3), "s")
        outcome.figure("render %d entries (iptables): parse + render" % entries, round(iptables_s, 3), "s")
        if reason:
            outcome.figure("apply %d entries" % entries, None, "s", note=reason)
            continue
        host = host_apply.in_namespace(payloads[entries], repeats=2)
        ratio = (controller + host["apply"]) / host["nft_f"]
        last = entries == BIGGEST
        outcome.figure("apply %d entries (module: check and compare, load)" % entries, round(host["apply"], 3), "s")
        outcome.figure("no-op converge %d entries (module: one live listing)" % entries, round(host["noop"], 3), "s",
                       NOOP_SECONDS if last else None)
        outcome.figure("nft -f alone, %d entries" % entries, round(host["nft_f"], 3), "s")
        outcome.figure("(render + apply) / nft -f, %d entries" % entries, round(ratio, 2), "x",
                       RATIO_TO_NFT if last else None)
        if last:
            parts = ", ".join("%s %.3f s" % (name, seconds) for name, seconds in host["parts"].items())
            outcome.notes.append("Parts of a converge at %d entries (each once, through the Nft applier): %s; "
                                 "parse %.3f s and render %.3f s on the controller." % (entries, parts, parse_s, render_s))
            if host["noop"] > NOOP_SECONDS.limit:
                outcome.notes.append(
                    "No-op converge over target at %d entries: the module lists the live table once (nft list, then "
                    "the counter and cgroup filters of the guard's list command) and reads and hashes the ruleset, the "
                    "persisted file and the expected listing; `nft -f` alone takes %.2f s here, and listing a "
                    "100k-element set costs nft about as much as loading it, plus the module's start-up (Python, "
                    "Ansible's module boilerplate)." % (entries, host["nft_f"]))
            if ratio > RATIO_TO_NFT.limit:
                outcome.notes.append(
                    "(render + apply) / nft -f over target at %d entries: the controller's parse + render is %.1f "
                    "times `nft -f`: addresses are already parsed, collapsed and printed as integers "
                    "(plugins/plugin_utils/addresses.py), and what remains is building the 100k ipaddress network "
                    "objects the Policy holds, checking each entry and printing (profile below); the module's apply is "
                    "%.1f times `nft -f`: nft's load and listings in the private namespace (the desired side, which is "
                    "also the check), the live listing and the load itself (parts above), passes over the table where "
                    "`nft -f` makes one. Profile of parse_policy + render_for at %d entries (by own time):\n\n%s" % (
                        entries, controller / host["nft_f"], host["apply"] / host["nft_f"], entries,
                        top_entries(lambda: render_for(parse_policy(datapath_policy(entries)), "nftables"), 15)))
    if reason:
        outcome.figure("throughput ratio %d / 10 entries" % BIGGEST, None, "x", THROUGHPUT_RATIO, note=reason)
        return
    throughput(outcome, payloads)


def throughput(outcome: Outcome, payloads: dict) -> None:
    """TCP throughput to a member of the big set, with the 100k ruleset loaded against the 10-entry one."""
    with netns.Pair("b3") as pair:
        iperf = netns.Iperf(pair, IPERF_SECONDS)
        # "10 again": a second 10-entry run in every round, the A/A control that shows the run-to-run noise
        results = {"10": [], str(BIGGEST): [], "10 again": []}
        for attempt in range(ROUNDS):
            for config in results:
                pair.load(payloads[int(config.split()[0])])
                results[config].append(iperf.client(netns.RECEIVER_V4)["bps"])
    small, big, again = (netns.median(results[config]) for config in ("10", str(BIGGEST), "10 again"))
    outcome.figure("TCP throughput, 10 entries (IPv4, to a set member)", round(small / 1e9, 2), "Gbit/s")
    outcome.figure("TCP throughput, %d entries" % BIGGEST, round(big / 1e9, 2), "Gbit/s")
    outcome.figure("A/A control: 10 entries again / 10 entries", round(again / small, 3), "x")
    ratio = outcome.figure("throughput ratio %d / 10 entries" % BIGGEST, round(big / small, 3), "x", THROUGHPUT_RATIO)
    if ratio.met is False:
        outcome.notes.append(
            "Throughput ratio under target: the A/A control (the same 10-entry ruleset measured twice in the same rounds) "
            "is %.3f, so run-to-run noise on this shared machine is %.0f%%%s." % (
                again / small, abs(1 - again / small) * 100,
                ", as large as the gap: this run cannot tell the set's cost from noise" if abs(1 - again / small) >= 1 - ratio.value
                else ", smaller than the gap, so part of it is the lookup in the bigger set"))
    outcome.notes.append("Throughput: iperf3 TCP, %d s per run, %d runs per ruleset alternating, median; sender and "
                         "receiver in two namespaces over a veth pair (198.19.254.1 -> .2), the kill switch loaded in the "
                         "sender's, the receiver's address added to the big exception set: the output chain has no "
                         "early accept of established flows, so every packet is looked up in it. Runs (Gbit/s): %s." % (
                             IPERF_SECONDS, ROUNDS, "; ".join("%s: %s" % (config, [round(v / 1e9, 2) for v in values])
                                                              for config, values in results.items())))
