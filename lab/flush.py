"""Drift under load: foreign tools flush or bypass the kill switch while a probe stream runs (issue 9).

On each client of the drift lab (NETLOCK_LAB=drift, lab/instance.py) the lab's own mixed probe stream
(lab/agent.py ``stream --mix``: UDP, one TCP SYN per packet and DNS queries over IPv4 and IPv6, from the
client and from the forwarded guest namespace behind it) runs while a foreign action happens ``rounds``
times; the lab's detector (lab.cases.leak_bpf on the host side of the client's veth) counts every packet
that leaves outside the tunnel.  lab/flush_agent.py runs the action on the client and polls the main rules
there every 10 ms until they equal the expected listing again (the guard's own comparison).

The stream is aimed where only the firewall stands between it and the wire: TCP and UDP at the sink over
routes via the LAN router that a rogue DHCP server could push (TunnelVision, option 121), DNS at the LAN
resolver (on-link).  With the tunnel up and the rules in place every one of these packets is refused
on the client; the moment no rule holds, they leave on eth0.

The pure parts (what each action does on which firewall, what a captured packet is, the summaries, the
table) are tested in tests/unit/lab/test_flush.py; the rest drives containers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from lab import firewall
from lab.build import ROOT, run_script
from lab.cases import agent, host_link, leak_bpf
from lab.firewall import Firewall
from lab.probe import PAUSE_GUARD, Capture, canary, docker, sh, wait_for
from lab.topology import INET, LAN, LANPEER, ROUTER, SINK, Host

FLUSH_AGENT = "/usr/local/bin/netlock-flush-agent.py"
GUARD_CONFIG = "/etc/netlock-killswitch/guard.json"
TABLE = "killswitch"  # the lab inventory keeps the role's default killswitch_table
FENCE_TABLE = TABLE + "_fence"
STATE_DIR = "/etc/netlock-drift"
GUEST_V6 = "2001:db8:50::/64"  # inside each client only, like lab.topology.GUEST_V4
GUEST_V6_GW, GUEST_V6_ADDRESS = "2001:db8:50::1", "2001:db8:50::2"
ORIGINS = ("host", "guest")
FAMILIES = ("ipv4", "ipv6")
PROTOS = ("tcp", "udp", "dns")
# Destination ports by origin: a TCP SYN carries no payload, so the port tells whose it is.
PORTS = {"host": {"tcp": 8080, "udp": 9999}, "guest": {"tcp": 8081, "udp": 9998}}
STREAM_RATE = 600  # packets/s per origin: two origins, 1200 packets/s per client
WATCH_UNIT = "netlock-killswitch-watch.service"
GUARD_UNITS = ("netlock-killswitch-guard.timer", "netlock-killswitch-guard.service")
BOOT_UNIT = "netlock-killswitch.service"
KINDS = ("table_missing", "rules_changed", "file_changed", "boot_unit", "fence_missing", "watcher_stopped",
         "timer_stopped")
XTABLES = ("iptables", "ip6tables")


# --- what each action is ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Action:
    """A foreign action (part 2) or a tamper (part 7) and what it needs on one firewall."""

    name: str
    label: str
    command: str  # shell text run on the client ({T} loops over iptables and ip6tables where needed)
    backends: Tuple[str, ...] = ("nftables", "iptables")
    variants: Tuple[str, ...] = ("iptables-nft", "iptables-legacy")  # iptables alternatives it applies to
    kinds: Tuple[str, ...] = ()  # drift kinds the guard must log and count (tampers)
    part: str = ""  # the killswitch_status part the fleet report must name (tampers)
    until: str = ""  # shell text that must hold too for "restored" (besides the main rules)
    repair: str = ""  # shell text after each round: what the lab needs back that the guard does not keep

    def applies(self, fw: Firewall) -> bool:
        return fw.backend in self.backends and (fw.backend == "nftables" or fw.alternative in self.variants)


def each_xtables(script: str) -> str:
    """The script once for iptables and once for ip6tables ($T)."""
    return "for T in %s; do %s; done" % (" ".join(XTABLES), script)


# What Docker's daemon does to the filter table when it starts (iptables driver, daemon.json defaults,
# ip6tables on): its chains, FORWARD policy DROP, jumps to DOCKER-USER and DOCKER-ISOLATION-STAGE-1 at the
# top of FORWARD, the nat chains.  No Docker daemon runs inside the lab clients (a Docker-in-Docker daemon
# would need a privileged container and would bring its own bridge into the lab): this runs the same
# iptables commands it runs, through the client's iptables variant.  On top, unconditional ACCEPT rules
# at the top of FORWARD and OUTPUT: the shape of every -I rule Docker and the tools around it insert
# first ("-I FORWARD 1 -j ACCEPT style"), made to match our probes.  The FORWARD policy is saved first
# and put back by DOCKER_REPAIR.
DOCKER_START = each_xtables(
    "$T -w -S FORWARD | awk '$1 == \"-P\" {print $3}' > %s/forward-policy-$T; "
    "for c in DOCKER DOCKER-ISOLATION-STAGE-1 DOCKER-ISOLATION-STAGE-2 DOCKER-USER; do $T -w -N $c 2>/dev/null; done; "
    "$T -w -A DOCKER-USER -j RETURN; $T -w -A DOCKER-ISOLATION-STAGE-1 -j RETURN; "
    "$T -w -A DOCKER-ISOLATION-STAGE-2 -j RETURN; "
    "$T -w -P FORWARD DROP; "
    "$T -w -I FORWARD 1 -j DOCKER-ISOLATION-STAGE-1; $T -w -I FORWARD 1 -j DOCKER-USER; "
    "$T -w -I FORWARD 1 -j ACCEPT; $T -w -I OUTPUT 1 -j ACCEPT; "
    "$T -w -t nat -N DOCKER 2>/dev/null; $T -w -t nat -I PREROUTING -m addrtype --dst-type LOCAL -j DOCKER; "
    "$T -w -t nat -I OUTPUT -m addrtype --dst-type LOCAL -j DOCKER" % STATE_DIR)
DOCKER_REPAIR = each_xtables(
    "for rule in 'FORWARD -j ACCEPT' 'OUTPUT -j ACCEPT' 'FORWARD -j DOCKER-USER' "
    "'FORWARD -j DOCKER-ISOLATION-STAGE-1'; do while $T -w -D $rule 2>/dev/null; do :; done; done; "
    "for c in DOCKER-USER DOCKER-ISOLATION-STAGE-1 DOCKER-ISOLATION-STAGE-2 DOCKER; do "
    "$T -w -F $c 2>/dev/null; $T -w -X $c 2>/dev/null; done; "
    "$T -w -P FORWARD $(cat %s/forward-policy-$T 2>/dev/null || echo ACCEPT); "
    "while $T -w -t nat -D PREROUTING -m addrtype --dst-type LOCAL -j DOCKER 2>/dev/null; do :; done; "
    "while $T -w -t nat -D OUTPUT -m addrtype --dst-type LOCAL -j DOCKER 2>/dev/null; do :; done; "
    "$T -w -t nat -F DOCKER 2>/dev/null; $T -w -t nat -X DOCKER 2>/dev/null; true" % STATE_DIR)
# /etc/nftables.conf (Debian) leaves an accept-all table inet filter behind.
NFTABLES_CONF_REPAIR = "nft delete table inet filter 2>/dev/null; true"

FOREIGN_ACTIONS: Tuple[Action, ...] = (
    Action("flush-ruleset", "nft flush ruleset", "nft flush ruleset"),
    Action("delete-table", "nft delete table inet %s" % TABLE, "nft delete table inet %s" % TABLE,
           backends=("nftables",)),
    Action("iptables-flush", "iptables -F; ip6tables -F", each_xtables("$T -w -F"), backends=("iptables",)),
    Action("restart-nftables", "systemctl restart nftables", "systemctl restart nftables.service",
           repair=NFTABLES_CONF_REPAIR),
    Action("docker-start", "Docker daemon start (imitated)", DOCKER_START, repair=DOCKER_REPAIR),
)
# The foreign actions whose control must leak: they take the kill switch away (flush ruleset: not on
# iptables-legacy, whose rules are not in nftables).
MUST_LEAK_WITHOUT_FENCE = ("flush-ruleset", "delete-table", "iptables-flush")


def must_leak_without_fence(action: str, fw: Firewall) -> bool:
    if action == "flush-ruleset":
        return fw.backend == "nftables" or fw.alternative != "iptables-legacy"
    return action in MUST_LEAK_WITHOUT_FENCE


def opens_without_fence(action: str, fw: Firewall) -> bool:
    """The action takes the kill switch away or opens it in front of its rules, so without the fence the
    stream leaks until the guard is back: every flush where the rules are in nftables, Docker's ACCEPT
    rules where the rules are iptables chains (on the nftables backend they are another table's)."""
    if action in ("flush-ruleset", "restart-nftables"):
        return fw.backend == "nftables" or fw.alternative != "iptables-legacy"
    if action == "docker-start":
        return fw.backend == "iptables"
    return action in MUST_LEAK_WITHOUT_FENCE


LAST_NFT_RULE = ("h=$(nft -a list chain inet %s output | sed -n 's/.* # handle \\([0-9]*\\)$/\\1/p' | tail -n 1) && "
                 "nft delete rule inet %s output handle $h" % (TABLE, TABLE))
LAST_XT_RULE = "n=$(iptables -w -S %s-out | grep -c '^-A') && iptables -w -D %s-out $n" % (TABLE, TABLE)
TIMER_ACTIVE = "systemctl is-active -q %s" % GUARD_UNITS[0]
WATCHER_ACTIVE = "systemctl is-active -q %s && nft list table inet %s >/dev/null 2>&1" % (WATCH_UNIT, FENCE_TABLE)
BOOT_ENABLED = "systemctl is-enabled -q %s" % BOOT_UNIT  # what the guard checks (and starts it when it enables it)
INTRUDER = ("nft add table inet intruder && nft add chain inet intruder out "
            "'{ type filter hook output priority -10; policy accept; }' && nft add rule inet intruder out accept && "
            "nft add chain inet intruder forward_in '{ type filter hook forward priority -10; policy accept; }' && "
            "nft add rule inet intruder forward_in accept")  # ("fwd" is an nft keyword)


def file_until(config: dict) -> str:
    """The persisted ruleset file equals the policy store's copy of the policy in force."""
    return ("d=$(grep -o 'netlock.killswitch [0-9a-f]\\{16\\}' %s | head -n 1 | cut -d' ' -f2) && "
            "cmp -s %s %s/$d/ruleset" % (shlex.quote(config["expected_path"]), shlex.quote(config["ruleset_path"]),
                                         shlex.quote(config["policy_dir"])))


def tampers(config: dict) -> Tuple[Action, ...]:
    """Part 7's tamper matrix; config is the client's guard.json (paths)."""
    ruleset = shlex.quote(config["ruleset_path"])
    return (
        Action("flush-ruleset", "nft flush ruleset", "nft flush ruleset", variants=("iptables-nft",),
               kinds=("table_missing", "rules_changed"), part="table"),
        Action("delete-table", "delete the table (iptables: -F, -X)",
               "nft delete table inet %s" % TABLE if config["backend"] == "nftables" else each_xtables("$T -w -F && $T -w -X"),
               kinds=("table_missing", "rules_changed"), part="table"),
        Action("delete-rule", "delete one rule (last of output)",
               LAST_NFT_RULE if config["backend"] == "nftables" else LAST_XT_RULE,
               kinds=("rules_changed",), part="table"),
        Action("intruder-accept", "accept in another table, same hooks", INTRUDER,
               repair="nft delete table inet intruder 2>/dev/null; true"),
        Action("boot-unit", "stop and disable the boot unit", "systemctl disable --now -q %s" % BOOT_UNIT,
               kinds=("boot_unit",), part="boot_unit", until=BOOT_ENABLED),
        Action("file-edit", "edit the persisted ruleset file",
               "printf '%%s\\n' '# edited by the drift scenario' >> %s" % ruleset,
               kinds=("file_changed",), part="file", until=file_until(config)),
        Action("timer-stop", "stop the guard timer", "systemctl stop %s" % GUARD_UNITS[0],
               kinds=("timer_stopped",), part="guard", until=TIMER_ACTIVE),
        Action("watcher-stop", "stop the watcher (removes the fence)", "systemctl stop %s" % WATCH_UNIT,
               kinds=("fence_missing", "watcher_stopped"), part="watcher", until=WATCHER_ACTIVE),
    )


# Which tampers each client holds while the guard is paused for the fleet report (one drift.yml run):
# every table tamper on one client, the file and the boot unit on every client.
REPORT_ROUND = {
    0: ("delete-table", "file-edit", "boot-unit", "intruder-accept"),
    1: ("flush-ruleset", "file-edit", "boot-unit"),
    2: ("delete-rule", "file-edit", "boot-unit"),
}


# --- what the detector saw -------------------------------------------------------------------------------

_LINE = re.compile(r"^\d+\.\d+ (?:\S+ )?(?:In |Out |P |B |M )?(IP6?) (\S+) > (\S+?):? (.*)$")


def classify(line: str, markers: Dict[str, str]) -> Optional[Tuple[str, str, str]]:
    """(origin, family, proto) of a tcpdump header line of our stream, None for anything else.

    markers: origin -> the canary of its stream (DNS queries ask for <canary>.leak.test).
    """
    match = _LINE.match(line)
    if not match:
        return None
    ip, _src, dst, rest = match.groups()
    family = "ipv6" if ip == "IP6" else "ipv4"
    port_text = dst.rsplit(".", 1)[-1]
    if not port_text.isdigit():
        return None
    port = int(port_text)
    if port == 53:
        lowered = rest.lower()
        for origin, marker in markers.items():
            if marker.lower() in lowered:
                return origin, family, "dns"
        return None
    proto = "tcp" if rest.startswith("Flags") else "udp" if rest.startswith("UDP") else None
    for origin in ORIGINS:
        if proto and PORTS[origin][proto] == port:
            return origin, family, proto
    return None


def family_key(origin: str, family: str, proto: str) -> str:
    return "%s %s %s" % (origin, family, proto)


ALL_FAMILIES = tuple(family_key(o, f, p) for o in ORIGINS for f in FAMILIES for p in PROTOS)


def count_families(lines: Iterable[str], markers: Dict[str, str]) -> Dict[str, int]:
    """Packets per stream family in header lines; other leaking packets under 'other'."""
    counts: Dict[str, int] = {}
    for line in lines:
        found = classify(line, markers)
        key = family_key(*found) if found else "other"
        counts[key] = counts.get(key, 0) + 1
    return counts


# --- results ---------------------------------------------------------------------------------------------

@dataclass
class Round:
    start: float
    end: float
    seconds: Optional[float]  # from the action until in sync again; None when it never was
    changed: bool  # a poll saw the rules differ (False: the action left them alone, or was undone in <1 poll)
    restored: bool
    in_sync_before: bool
    action_rc: int
    action_error: str = ""
    polls: int = 0


@dataclass
class Measurement:
    host: str
    firewall: str  # label
    action: str
    label: str
    fence: bool  # the fence was on (killswitch_fence auto with the fence table loaded)
    rounds: List[Round] = field(default_factory=list)
    leaked: int = 0
    by_family: Dict[str, int] = field(default_factory=dict)
    leak_samples: List[str] = field(default_factory=list)
    sent: int = 0
    stream_seconds: float = 0.0
    stream_kinds: int = 0
    error: str = ""
    # tampers only
    kinds_logged: List[str] = field(default_factory=list)
    kinds_counted: Dict[str, int] = field(default_factory=dict)
    journal: List[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.stream_seconds if self.stream_seconds else 0.0

    @property
    def restore_times(self) -> List[float]:
        return [r.seconds for r in self.rounds if r.seconds is not None and r.changed]

    @property
    def all_restored(self) -> bool:
        return bool(self.rounds) and all(r.restored for r in self.rounds)

    def families_seen(self) -> List[str]:
        return [key for key in ALL_FAMILIES if self.by_family.get(key)]


def restore_summary(times: Sequence[float]) -> Dict[str, Optional[float]]:
    """Median and maximum in milliseconds (None without any)."""
    if not times:
        return {"median_ms": None, "max_ms": None}
    return {"median_ms": round(statistics.median(times) * 1000, 1), "max_ms": round(max(times) * 1000, 1)}


def as_document(measurement: Measurement) -> dict:
    document = asdict(measurement)
    document.update(restore_summary(measurement.restore_times))
    document["rate_pps"] = round(measurement.rate, 1)
    document["rounds_changed"] = sum(r.changed for r in measurement.rounds)
    document["rounds_restored"] = sum(r.restored for r in measurement.rounds)
    return document


def from_document(document: dict) -> Measurement:
    """A Measurement back from as_document's output (the tables of reports/drift-measurements.json)."""
    names = {f.name for f in fields(Measurement)}
    measurement = Measurement(**{k: v for k, v in document.items() if k in names and k != "rounds"})
    measurement.rounds = [Round(**r) for r in document.get("rounds", [])]
    return measurement


def markdown_report(document: dict) -> str:
    """The README's tables from a written reports/drift-measurements.json."""
    parts = []
    for key, title in (("foreign_actions", "Fence on"), ("control_fence_off", "Control: `killswitch_fence: off`")):
        if document.get(key):
            parts.append("%s:\n\n%s" % (title, markdown_table([from_document(d) for d in document[key]])))
    return "\n\n".join(parts)


def ms(value: Optional[float]) -> str:
    return "-" if value is None else ("%.0f" % value if value >= 10 else "%.1f" % value)


def table_rows(measurements: Sequence[Measurement]) -> List[Tuple[str, ...]]:
    """Rows of the measurement table: client, firewall, action, fence, rounds, leaked, restore median/max, pps."""
    rows = []
    for m in measurements:
        summary = restore_summary(m.restore_times)
        changed = sum(r.changed for r in m.rounds)
        restored = "%d/%d" % (sum(r.restored for r in m.rounds), len(m.rounds))
        rows.append((m.host, m.firewall, m.label, "on" if m.fence else "OFF", restored, str(changed), str(m.leaked),
                     ms(summary["median_ms"]), ms(summary["max_ms"]), "%.0f" % m.rate,
                     m.error[:60] if m.error else ""))
    return rows


TABLE_HEADER = ("client", "firewall", "action", "fence", "restored", "rules changed", "leaked",
                "restore median ms", "restore max ms", "stream pps", "error")


def rich_table(title: str, measurements: Sequence[Measurement]):
    from rich.table import Table  # the controller's venv has rich; the containers never import this
    table = Table(title=title)
    for name in TABLE_HEADER:
        table.add_column(name, justify="right" if name in ("leaked", "restore median ms", "restore max ms",
                                                           "stream pps", "rounds changed") else "left")
    for row in table_rows(measurements):
        table.add_row(*row)
    return table


def markdown_table(measurements: Sequence[Measurement]) -> str:
    """The same table for the README."""
    header = TABLE_HEADER[:-1]
    lines = ["| %s |" % " | ".join(header), "|" + "---|" * len(header)]
    lines += ["| %s |" % " | ".join(row[:-1]) for row in table_rows(measurements)]
    return "\n".join(lines)


def parse_metrics(text: str) -> Dict[str, int]:
    """netlock_killswitch_drift_events_total by kind from the textfile."""
    found = {}
    for match in re.finditer(r'^netlock_killswitch_drift_events_total\{kind="(\w+)"\} (\d+)', text, re.M):
        found[match.group(1)] = int(match.group(2))
    return found


def logged_kinds(journal: str) -> List[str]:
    return re.findall(r"netlock-killswitch drift kind=(\w+)", journal)


def report_parts(report: dict, host: str) -> Optional[List[str]]:
    """The drifted parts the fleet report (reports/drift.json) names for host; None when it does not name it."""
    for entry in report.get("hosts", []):
        if entry.get("host") == host:
            parts = entry.get("drifted_parts")
            if parts is None:
                parts = [name for name, part in (entry.get("parts") or {}).items() if not part.get("in_sync", True)]
            return list(parts)
    return None


# --- the client ------------------------------------------------------------------------------------------

def prepare(host: Host) -> None:
    """What the drift scenario adds to a leak lab client; idempotent.

    The flush agent; IPv6 for the guest namespace (NAT66 like its IPv4 NAT); TunnelVision routes to the
    sink via the LAN router; Debian's nftables.service enabled with its stock /etc/nftables.conf (it
    begins with ``flush ruleset``); a copy of wg-quick's own tables, which a flush takes too.
    """
    docker("cp", os.path.join(ROOT, "lab", "flush_agent.py"), "%s:%s" % (host.name, FLUSH_AGENT))
    nat6 = ("table ip6 lab_nat6 {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n"
            "  ip6 saddr %s masquerade\n }\n}\n" % GUEST_V6)
    run_script(host.name, """
mkdir -p {state}
ip -6 address replace {gw}/64 dev guest0 nodad
ip netns exec guest ip -6 address replace {ip}/64 dev eth0 nodad
ip netns exec guest ip -6 route replace default via {gw}
printf '%s\\n' 'table ip6 lab_nat6' 'delete table ip6 lab_nat6' > /etc/lab-nat6.nft
cat >> /etc/lab-nat6.nft <<'NFT'
{nat6}
NFT
nft -f /etc/lab-nat6.nft
ip route replace {sink4}/32 via {router4} dev eth0
ip -6 route replace {sink6}/128 via {router6} dev eth0
[ -s /etc/nftables.conf ] || printf '%s\n' '#!/usr/sbin/nft -f' '' 'flush ruleset' '' 'table inet filter {{' \
  '	chain input {{' '		type filter hook input priority filter;' '	}}' \
  '	chain forward {{' '		type filter hook forward priority filter;' '	}}' \
  '	chain output {{' '		type filter hook output priority filter;' '	}}' '}}' > /etc/nftables.conf
grep -qx 'flush ruleset' /etc/nftables.conf
systemctl enable -q nftables.service
# Only a complete copy replaces the last one (a run after a flush finds wg-quick's tables gone).
: > {state}/wg-quick.new
for f in ip ip6; do
  nft list table $f wg-quick-wg0 >/dev/null 2>&1 || continue
  {{ echo "table $f wg-quick-wg0"; echo "delete table $f wg-quick-wg0"; nft list table $f wg-quick-wg0; }} >> {state}/wg-quick.new
done
if [ "$(grep -c '^table .* wg-quick-wg0 {{' {state}/wg-quick.new)" = 2 ] || ! [ -s {state}/wg-quick.nft ]; then
  mv -f {state}/wg-quick.new {state}/wg-quick.nft
fi
""".format(state=STATE_DIR, gw=GUEST_V6_GW, ip=GUEST_V6_ADDRESS, nat6=nat6, sink4=SINK.v4(INET),
           router4=ROUTER.v4(LAN), sink6=SINK.v6(INET), router6=ROUTER.v6(LAN)), "preparing %s for drift" % host.name)


def lab_repair() -> str:
    """Shell: the lab's own tables back when a flush took them (guest NAT, wg-quick's marks)."""
    return ("nft list table ip lab_nat >/dev/null 2>&1 || nft -f /etc/lab-nat.nft; "
            "nft list table ip6 lab_nat6 >/dev/null 2>&1 || nft -f /etc/lab-nat6.nft; "
            "{ nft list table ip wg-quick-wg0 >/dev/null 2>&1 && nft list table ip6 wg-quick-wg0 >/dev/null 2>&1; } || "
            "{ ! [ -s %s/wg-quick.nft ] || nft -f %s/wg-quick.nft; }; true" % (STATE_DIR, STATE_DIR))


def guard_config(host: Host) -> dict:
    result = sh(host.name, "cat %s" % GUARD_CONFIG)
    if result.returncode != 0:
        raise RuntimeError("%s: no %s (is the role's guard in place?): %s" % (host.name, GUARD_CONFIG, result.stderr))
    return json.loads(result.stdout)


def fence_loaded(host: Host) -> bool:
    return sh(host.name, "nft list table inet %s" % FENCE_TABLE).returncode == 0


def guard_pause(host: Host) -> None:
    """The guard and the watcher stopped (the watcher's stop removes the fence)."""
    assert sh(host.name, PAUSE_GUARD).returncode == 0, "%s: the guard did not stay stopped" % host.name


def guard_resume(host: Host) -> None:
    sh(host.name, "systemctl start %s %s; systemctl start %s" % (WATCH_UNIT, GUARD_UNITS[0], GUARD_UNITS[1]))


def metrics(host: Host, config: dict) -> Dict[str, int]:
    if not config.get("metrics_path"):
        return {}
    return parse_metrics(sh(host.name, "cat %s" % shlex.quote(config["metrics_path"])).stdout)


def journal_since(host: Host, epoch: float) -> str:
    return sh(host.name, "journalctl --no-pager -o cat -u %s -u netlock-killswitch-guard.service --since @%d" % (
        WATCH_UNIT, int(epoch) - 1)).stdout


# --- the stream and the detector -------------------------------------------------------------------------

class Stream:
    """The lab's mixed probe stream from the client and from its guest, and the lab's detector on the
    client's link, for the duration of a ``with`` block."""

    def __init__(self, host: Host, bound: float):
        self.host = host
        self.bound = bound
        self.markers = {origin: canary() for origin in ORIGINS}
        self.outcomes: Dict[str, dict] = {}
        self.threads: List[threading.Thread] = []
        self.capture: Optional[Capture] = None

    def _run(self, origin: str) -> None:
        marker = self.markers[origin]
        args = ["stream", "--mix", "--canary", marker, "--rate", str(STREAM_RATE), "--seconds", str(self.bound),
                "--stop-file", "/tmp/%s.stop" % marker, "--tcp-port", str(PORTS[origin]["tcp"]),
                "--udp-port", str(PORTS[origin]["udp"])]
        for target in (SINK.v4(INET), SINK.v6(INET)):
            args += ["--target", target]
        for resolver in (LANPEER.v4(LAN), LANPEER.v6(LAN)):
            args += ["--dns", resolver]
        try:
            self.outcomes[origin] = agent(self.host, *args, netns="guest" if origin == "guest" else "",
                                          timeout=self.bound + 60)
        except Exception as exc:  # noqa: BLE001 -- re-raised in __exit__: a dead stream is no "0 leaked"
            self.outcomes[origin] = {"error": exc}

    def __enter__(self) -> "Stream":
        self.capture = Capture(None, leak_bpf(self.host), interface=host_link(self.host),
                               max_seconds=int(self.bound) + 90)
        self.capture.__enter__()
        self.threads = [threading.Thread(target=self._run, args=(origin,), daemon=True) for origin in ORIGINS]
        for thread in self.threads:
            thread.start()
        time.sleep(1.0)  # both streams running before anything happens
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)
        sh(self.host.name, "touch %s" % " ".join("/tmp/%s.stop" % m for m in self.markers.values()))
        for thread in self.threads:
            thread.join(timeout=self.bound + 90)
        self.capture.__exit__(*exc)
        for origin, outcome in self.outcomes.items():
            if "error" in outcome:
                raise RuntimeError("the %s stream on %s failed" % (origin, self.host.name)) from outcome["error"]

    def fill(self, measurement: Measurement) -> None:
        packets = self.capture.packets
        measurement.leaked = len(packets)
        measurement.by_family = count_families(packets, self.markers)
        measurement.leak_samples = packets[:10]
        measurement.sent = sum(o.get("sent", 0) for o in self.outcomes.values())
        measurement.stream_seconds = max((o.get("seconds", 0.0) for o in self.outcomes.values()), default=0.0)
        measurement.stream_kinds = sum(o.get("kinds", 0) for o in self.outcomes.values())


def act(host: Host, action: Action, rounds: int, timeout: float = 20, interval: float = 0.01) -> List[Round]:
    repair = "; ".join(part for part in (action.repair, lab_repair()) if part)
    args = ["act", "--action", action.command, "--repeat", str(rounds), "--timeout", str(timeout),
            "--interval", str(interval), "--repair", repair]
    if action.until:
        args += ["--until", action.until]
    result = sh(host.name, "python3 %s %s" % (FLUSH_AGENT, " ".join(shlex.quote(a) for a in args)),
                timeout=rounds * (timeout * 2 + 10) + 30)
    if result.returncode != 0:
        raise RuntimeError("flush agent on %s failed: %s" % (host.name, result.stderr[-1500:]))
    return [Round(**r) for r in json.loads(result.stdout)["rounds"]]


def measure(host: Host, fw: Firewall, action: Action, rounds: int, fence: bool, timeout: float = 20) -> Measurement:
    """One action, ``rounds`` times in a row, under the stream; every leaked packet counts for it."""
    measurement = Measurement(host.name, fw.label(), action.name, action.label, fence)
    bound = rounds * (timeout + 3) + 20
    try:
        with Stream(host, bound) as stream:
            measurement.rounds = act(host, action, rounds, timeout)
        stream.fill(measurement)
    except Exception as exc:  # noqa: BLE001 -- recorded: a measurement that could not run fails its test
        measurement.error = "%s: %s" % (type(exc).__name__, exc)
    return measurement


def foreign_actions(host: Host, rounds: int, fence: bool, names: Optional[Sequence[str]] = None,
                    notify: Optional[Callable[[str], None]] = None) -> List[Measurement]:
    fw = firewall.intended(host)
    out = []
    for action in FOREIGN_ACTIONS:
        if action.applies(fw) and (names is None or action.name in names):
            if notify:
                notify("%s: %s (fence %s)" % (host.name, action.name, "on" if fence else "off"))
            out.append(measure(host, fw, action, rounds, fence))
    return out


def tamper_matrix(host: Host, notify: Optional[Callable[[str], None]] = None) -> List[Measurement]:
    """Each tamper once, guard running, under the stream: restored, leaked, logged, counted."""
    fw = firewall.intended(host)
    config = guard_config(host)
    out = []
    for action in tampers(config):
        if not action.applies(fw):
            continue
        if notify:
            notify("%s: tamper %s" % (host.name, action.name))
        before = metrics(host, config)
        started = time.time()
        # The timer fallback (and a stopped watcher) take up to killswitch_guard_interval plus a check.
        measurement = measure(host, fw, action, 1, bool(fence_loaded(host)), timeout=30)
        expected = set(action.kinds)
        if expected:
            # The journal and the metrics file are written right after the repair: give them a moment.
            wait_for(lambda: expected & set(logged_kinds(journal_since(host, started))), 10, 0.5)
            wait_for(lambda: any(metrics(host, config).get(k, 0) > before.get(k, 0) for k in expected), 10, 0.5)
        journal = journal_since(host, started)
        after = metrics(host, config)
        measurement.journal = [line for line in journal.splitlines() if "drift kind=" in line][:10]
        measurement.kinds_logged = sorted(set(logged_kinds(journal)))
        measurement.kinds_counted = {k: after.get(k, 0) - before.get(k, 0) for k in KINDS
                                     if after.get(k, 0) != before.get(k, 0)}
        out.append(measurement)
    return out


# --- the fleet report, the control, the whole run ----------------------------------------------------------

INVENTORY = os.path.join(ROOT, "molecule", "drift", "inventory")
REPORTS = os.path.join(ROOT, "reports")


def playbook(name: str, *extra: str) -> "subprocess.CompletedProcess":
    """ansible-playbook against molecule's inventory of the scenario (or the drift inventory outside it)."""
    import shutil
    import subprocess
    import sys
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE") or INVENTORY
    program = shutil.which("ansible-playbook") or os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    cmd = [program, "-i", inventory, os.path.join(ROOT, "playbooks", name), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, cwd=ROOT)


def in_sync(host: Host, config: dict) -> bool:
    script = ("[ \"$(%s)\" = \"$(cat %s)\" ]" % (config["list_command"], shlex.quote(config["expected_path"])))
    return sh(host.name, script).returncode == 0


@dataclass
class ReportRound:
    rc: int = 0
    report: dict = field(default_factory=dict)
    held: Dict[str, List[str]] = field(default_factory=dict)  # host -> tampers held during the run
    expected: Dict[str, List[str]] = field(default_factory=dict)  # host -> parts the report must name
    named: Dict[str, Optional[List[str]]] = field(default_factory=dict)  # host -> parts it named
    restored: Dict[str, bool] = field(default_factory=dict)  # host -> all back after the guard resumed
    stdout_tail: str = ""
    error: str = ""


def report_round(hosts: Sequence[Host], path: str) -> ReportRound:
    """Guard paused on every client, each holding the tampers of REPORT_ROUND, one drift.yml run in report
    mode; then the guard resumes and puts everything back."""
    outcome = ReportRound()
    configs = {h.name: guard_config(h) for h in hosts}
    try:
        for index, host in enumerate(hosts):
            guard_pause(host)
            by_name = {a.name: a for a in tampers(configs[host.name])}
            fw = firewall.intended(host)
            held = [by_name[name] for name in REPORT_ROUND[index % len(REPORT_ROUND)] if by_name[name].applies(fw)]
            for action in held:
                result = sh(host.name, action.command)
                if result.returncode != 0:
                    raise RuntimeError("%s: %s failed: %s" % (host.name, action.name, result.stderr[-500:]))
            outcome.held[host.name] = [a.name for a in held]
            # Pausing stops the timer and the watcher: the report must name those parts too.
            outcome.expected[host.name] = sorted({a.part for a in held if a.part} | {"guard", "watcher"})
        if os.path.exists(path):
            os.remove(path)
        result = playbook("drift.yml", "-e", "killswitch_drift_report=%s" % path)
        outcome.rc = result.returncode
        outcome.stdout_tail = result.stdout[-4000:]
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                outcome.report = json.load(handle)
        for host in hosts:
            outcome.named[host.name] = report_parts(outcome.report, host.name)
    except Exception as exc:  # noqa: BLE001 -- recorded; the guard resumes below either way
        outcome.error = "%s: %s" % (type(exc).__name__, exc)
    finally:
        for host in hosts:
            guard_resume(host)
            sh(host.name, "nft delete table inet intruder 2>/dev/null; " + lab_repair())
        for host in hosts:
            config = configs[host.name]
            outcome.restored[host.name] = wait_for(
                lambda h=host, c=config: in_sync(h, c) and sh(h.name, "%s && %s && %s && %s" % (
                    BOOT_ENABLED, file_until(c), TIMER_ACTIVE, WATCHER_ACTIVE)).returncode == 0, 40, 0.5)
    return outcome


@dataclass
class DriftRun:
    fenced: List[Measurement] = field(default_factory=list)  # foreign actions, fence on
    control: List[Measurement] = field(default_factory=list)  # the same, killswitch_fence: off
    tampers: List[Measurement] = field(default_factory=list)
    report: ReportRound = field(default_factory=ReportRound)
    fence_loaded: Dict[str, bool] = field(default_factory=dict)  # before the fenced actions
    control_fence_loaded: Dict[str, bool] = field(default_factory=dict)  # before the control (must be False)
    rollouts: Dict[str, int] = field(default_factory=dict)  # name -> ansible-playbook exit status
    rollout_tails: Dict[str, str] = field(default_factory=dict)
    phases: Dict[str, float] = field(default_factory=dict)  # seconds per phase
    errors: List[str] = field(default_factory=list)
    seconds: float = 0.0


def _parallel(hosts: Sequence[Host], work: Callable[[Host], List[Measurement]]) -> List[Measurement]:
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=len(hosts), thread_name_prefix="drift") as pool:
        futures = [pool.submit(work, host) for host in hosts]
        return [m for future in futures for m in future.result()]


def run_drift(hosts: Sequence[Host], rounds: int = 10, control: bool = True, restore_fence: bool = True,
              notify: Optional[Callable[[str], None]] = None, control_rounds: Optional[int] = None) -> DriftRun:
    """Fenced foreign actions, the tamper matrix and the fleet report, then the control (fence off)."""
    notify = notify or (lambda _what: None)
    run = DriftRun()
    start = time.monotonic()

    def phase(name: str, since: float) -> float:
        now = time.monotonic()
        run.phases[name] = round(now - since, 1)
        return now

    for host in hosts:
        prepare(host)
    mark = phase("prepare", start)
    run.fence_loaded = {h.name: fence_loaded(h) for h in hosts}
    run.fenced = _parallel(hosts, lambda h: foreign_actions(h, rounds, True, notify=notify))
    mark = phase("foreign actions, fence on", mark)
    run.tampers = _parallel(hosts, lambda h: tamper_matrix(h, notify))
    mark = phase("tamper matrix", mark)
    notify("fleet report with the guard paused")
    run.report = report_round(hosts, os.path.join(REPORTS, "drift-scenario-report.json"))
    mark = phase("fleet report", mark)
    if control:
        notify("rollout with killswitch_fence: off (control)")
        result = playbook("rollout.yml", "-e", "killswitch_fence=off",
                          "-e", "killswitch_rollout_report=%s" % os.path.join(REPORTS, "drift-control-rollout.json"))
        run.rollouts["fence off"] = result.returncode
        run.rollout_tails["fence off"] = result.stdout[-3000:]
        mark = phase("rollout, fence off", mark)
        if result.returncode == 0:
            run.control_fence_loaded = {h.name: fence_loaded(h) for h in hosts}
            for host in hosts:
                prepare(host)  # the rollout's handlers may have reloaded tables
            run.control = _parallel(hosts, lambda h: foreign_actions(h, control_rounds or rounds, False, notify=notify))
        else:
            run.errors.append("the control rollout (killswitch_fence: off) failed")
        mark = phase("foreign actions, fence off (control)", mark)
        if restore_fence:
            notify("rollout with the fence back on")
            result = playbook("rollout.yml",
                              "-e", "killswitch_rollout_report=%s" % os.path.join(REPORTS, "drift-rollout.json"))
            run.rollouts["fence back"] = result.returncode
            run.rollout_tails["fence back"] = result.stdout[-3000:]
            phase("rollout, fence back", mark)
    run.seconds = round(time.monotonic() - start, 1)
    return run


def write_measurements(run: DriftRun, path: str, wall_seconds: Optional[float] = None) -> str:
    document = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stream": {"rate_per_origin_pps": STREAM_RATE, "origins": list(ORIGINS), "families": list(ALL_FAMILIES),
                   "targets": {"tcp/udp": [SINK.v4(INET), SINK.v6(INET)], "dns": [LANPEER.v4(LAN), LANPEER.v6(LAN)]}},
        "foreign_actions": [as_document(m) for m in run.fenced],
        "control_fence_off": [as_document(m) for m in run.control],
        "tampers": [as_document(m) for m in run.tampers],
        "fleet_report": asdict(run.report),
        "fence_loaded": run.fence_loaded,
        "control_fence_loaded": run.control_fence_loaded,
        "rollouts": run.rollouts,
        "phases_seconds": run.phases,
        "errors": run.errors,
        "seconds": run.seconds,
        "scenario_wall_seconds": wall_seconds,
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=1, sort_keys=True)
        handle.write("\n")
    return path


def print_run(run: DriftRun, console=None) -> None:
    from rich.console import Console
    console = console or Console(width=200)
    console.print(rich_table("foreign actions, fence on (%s)" % ", ".join(
        "%s fence %s" % (h, "loaded" if v else "MISSING") for h, v in run.fence_loaded.items()), run.fenced))
    if run.control:
        console.print(rich_table("the same, killswitch_fence: off (control)", run.control))
    console.print(rich_table("tamper matrix (one each, guard running)", run.tampers))
    for m in run.tampers:
        console.print("%s %s: logged %s, counted %s" % (m.host, m.action, ",".join(m.kinds_logged) or "-",
                                                        ",".join("%s+%d" % kv for kv in m.kinds_counted.items()) or "-"))
    console.print("fleet report (drift.yml exit %d): %s" % (run.report.rc, json.dumps(run.report.named)))
    console.print("phases: %s; %.0f s" % (json.dumps(run.phases), run.seconds))
