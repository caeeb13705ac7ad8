# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""B4: what the kill switch costs the datapath: iperf3 with the ruleset loaded against without, side by side.

Two paths, each a veth pair between two namespaces with the ruleset loaded in the sender's: "tunnel" (the
sender's end is named ``wg0``, the policy's tunnel interface: a veth stands in for it, so this measures the rules,
not encryption) and "exception" (the sender's end is ``eth1``, the receiver's address a member of the big
``extra_outbound`` set).  Per path: TCP throughput and 64-byte UDP packets per second, IPv4 and IPv6, without the
kill switch, with connection tracking alone (a table whose only rules read the conntrack state), with a 10-entry and
with a 100,000-entry allowlist, and without again (the A/A control); runs alternate between them, median taken.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Dict, List

from ansible_collections.netlock.killswitch.plugins.plugin_utils.backends import render_for
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy

from bench import netns, workload
from bench.report import Outcome, Target

RATIO = Target(">=", 0.97)
SIZES = (10, 100_000)
ROUNDS = 3
IPERF_SECONDS = 3
UDP_LENGTH = 64
PATHS = {"tunnel": workload.TUNNEL, "exception": "eth1"}


def chain_rules(payload: str, chain: str) -> List[str]:
    """The rule lines of one base chain of a rendered nftables payload, in order."""
    found = re.search(r"\n\tchain %s \{\n\t\ttype [^\n]*\n(.*?)\n\t\}" % chain, payload, re.S)
    if not found:
        raise ValueError("no chain %s in the payload" % chain)
    return [line.strip() for line in found.group(1).splitlines() if line.strip()]


def rules_traversed(rules: List[str], marker: str) -> int:
    """How many rules a packet evaluates up to and including the first one containing ``marker`` (first match wins)."""
    for index, rule in enumerate(rules):
        if marker in rule:
            return index + 1
    raise ValueError("no rule matches %r" % marker)


# Connection tracking alone, no kill switch rules: a table whose only rules read the conntrack state (as ours do
# for replies and management), so the kernel tracks every packet. It tells the cost of conntrack from that of the rules.
CONNTRACK_ONLY = """table inet netlock_bench_ct {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tct state established,related accept
\t}
\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t\tct state established,related accept
\t}
}
"""


def write_payloads(work: str) -> Dict[str, str]:
    paths = {"conntrack": os.path.join(work, "conntrack-only.nft")}
    with open(paths["conntrack"], "w") as handle:
        handle.write(CONNTRACK_ONLY)
    for entries in SIZES:
        policy = parse_policy(workload.big_policy(entries, extra=[netns.RECEIVER_V4, netns.RECEIVER_V6]))
        paths[str(entries)] = os.path.join(work, "ruleset-%d.nft" % entries)
        with open(paths[str(entries)], "w") as handle:
            handle.write(render_for(policy, "nftables"))
    return paths


def measure_path(link: str, payloads: Dict[str, str]) -> Dict[str, Dict[str, float]]:
    """{metric: {config: median}} for one path; config "none" or the allowlist size."""
    # "none-again": a second run without the kill switch in every round, the A/A control that shows the noise
    configs = ["none", "conntrack"] + [str(size) for size in SIZES] + ["none-again"]
    runs: Dict[str, Dict[str, List[float]]] = {}
    with netns.Pair("b4" + link[:2], sender_link=link) as pair:
        iperf = netns.Iperf(pair, IPERF_SECONDS)
        for attempt in range(ROUNDS):
            for config in configs:
                pair.flush()
                if config not in ("none", "none-again"):
                    pair.load(payloads[config])
                for family, address in (("IPv4", netns.RECEIVER_V4), ("IPv6", netns.RECEIVER_V6)):
                    tcp = iperf.client(address)["bps"]
                    udp = iperf.client(address, udp_length=UDP_LENGTH)["pps"]
                    runs.setdefault("TCP %s" % family, {}).setdefault(config, []).append(tcp)
                    runs.setdefault("UDP 64B %s" % family, {}).setdefault(config, []).append(udp)
    return {metric: {config: netns.median(values) for config, values in by_config.items()} for metric, by_config in runs.items()}


def run(outcome: Outcome) -> None:
    outcome.notes.append(__doc__.split("\n\n", 1)[1].replace("\n", " ").replace("``", "`") + " iperf3: %d s per run, %d rounds; UDP "
                         "with `-u -b 0 -l %d` (64-byte payload, unlimited rate), packets/s received." % (
                             IPERF_SECONDS, ROUNDS, UDP_LENGTH))
    work = tempfile.mkdtemp(prefix="netlock-bench-b4-")
    payloads = write_payloads(work)
    with open(payloads[str(SIZES[-1])]) as handle:
        payload = handle.read()
    output, incoming = chain_rules(payload, "output"), chain_rules(payload, "input")
    per_packet = {"tunnel": rules_traversed(output, 'oifname "%s"' % workload.TUNNEL),
                  "exception": rules_traversed(output, "@extra_")}
    for path, count in per_packet.items():
        outcome.figure("rules an outgoing %s packet evaluates (output chain, first match)" % path, count, "rules")
    reply_rules = rules_traversed(incoming, "ct state established")
    outcome.figure("rules a reply packet evaluates (input chain)", reply_rules, "rules")
    reason = netns.needs_root()
    if reason:
        outcome.figure("datapath ratios", None, "x", RATIO, note=reason)
        return
    noise = []
    missed, conntrack_explains = 0, 0
    for path, link in PATHS.items():
        medians = measure_path(link, payloads)
        for metric, by_config in medians.items():
            unit = "Gbit/s" if metric.startswith("TCP") else "kpps"
            scale = 1e9 if unit == "Gbit/s" else 1e3
            outcome.figure("%s, %s path, without kill switch" % (metric, path), round(by_config["none"] / scale, 2), unit)
            control = by_config["none-again"] / by_config["none"]
            outcome.figure("%s, %s path, A/A control: without / without" % (metric, path), round(control, 3), "x")
            noise.append(abs(1 - control))
            outcome.figure("%s, %s path, conntrack alone (no kill switch rules) / without" % (metric, path),
                           round(by_config["conntrack"] / by_config["none"], 3), "x")
            for size in SIZES:
                ratio = by_config[str(size)] / by_config["none"]
                outcome.figure("%s, %s path, ratio with %d-entry allowlist / without" % (metric, path, size),
                               round(ratio, 3), "x", RATIO)
                if not RATIO.met(ratio):
                    missed += 1
                    conntrack_explains += by_config["conntrack"] / by_config["none"] <= ratio + 0.03
    if missed:
        outcome.notes.append(
            "Of the %d ratios under 0.97, in %d connection tracking alone (no kill switch rule, only a `ct state` match) "
            "costs as much or more, within 3 points: there the cost is conntrack, which the rules use to let replies in "
            "(input chain) and management replies out, not the rules' count or the set's size. Keeping tunnel traffic "
            "off conntrack (a `notrack` rule at raw priority for the tunnel interfaces, and stateless reply rules for "
            "them) is the change to try; it is a change to the rule list, not made in this run. In the others, the rules "
            "themselves (%d rules evaluated on the tunnel path, %d and an interval-set lookup on the exception path) and "
            "the noise the A/A control shows both play a part, and this run cannot separate them." % (
                missed, conntrack_explains, per_packet["tunnel"], per_packet["exception"]))
    worst = max(noise)
    if worst > 1 - RATIO.limit:
        outcome.notes.append(
            "Noise: the A/A control (two runs without the kill switch, same rounds) differs from 1 by up to %.0f%%, more "
            "than the 3%% the target allows, so on this machine in this run a ratio below 0.97 does not by itself show a "
            "cost of the rules (ratios above 1 show the same noise the other way). Measure on an idle machine, or with "
            "more rounds, before reading the gap as the ruleset's. The per-packet rule counts above are exact: a tunnel "
            "packet is accepted by rule %d of the output chain, an exception packet by rule %d (one set lookup), a reply "
            "by rule %d of the input chain." % (worst * 100, per_packet["tunnel"], per_packet["exception"], reply_rules))
