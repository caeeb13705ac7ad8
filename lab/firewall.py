"""Each lab client's firewall: the kill switch backend the role is told to use and the iptables variant
that the container's alternatives select; how the lab sets, checks, snapshots and lifts them.

inventories/lab/host_vars/<client>.yml is the one place that says what a client runs:

    killswitch_backend: nftables | iptables      (the role's variable)
    lab_iptables_alternative: iptables-nft | iptables-legacy

``python -m lab up`` selects the alternative inside the container (iptables and ip6tables, with their
-save and -restore) and records it in /etc/netlock-lab/; every run checks the variant again and that
the kill switch in force is the one the inventory asked for, so a client cannot quietly test the
wrong firewall.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import yaml

from lab.probe import PAUSE_GUARD, RESUME_GUARD, sh
from lab.topology import INVENTORY_DIR, Host

HOST_VARS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), INVENTORY_DIR, "host_vars")
BACKENDS = ("nftables", "iptables")
# The alternative's name, and what its tools print in parentheses after `-V`.
VARIANTS = {"iptables-nft": "nf_tables", "iptables-legacy": "legacy"}
XTABLES_TOOLS = ("iptables", "ip6tables")
VERSIONED_TOOLS = tuple("%s%s" % (tool, suffix) for tool in XTABLES_TOOLS for suffix in ("", "-save", "-restore"))
RECORD = "/etc/netlock-lab/iptables-alternative"
NFT_TABLE = "inet killswitch"
# Tables that can hold the kill switch. nat is left alone: Docker keeps its embedded DNS rules there.
FILTERING_TABLES = ("filter", "mangle", "raw", "security")
BOOT_UNIT = "netlock-killswitch.service"
FENCE_TABLE = "inet killswitch_fence"


@dataclass(frozen=True)
class Firewall:
    """What one client runs: the kill switch backend and the iptables alternative of its container."""

    backend: str
    alternative: str

    @property
    def variant(self) -> str:
        """``nf_tables`` or ``legacy``, as `iptables -V` says it."""
        return VARIANTS[self.alternative]

    def label(self) -> str:
        return "nftables" if self.backend == "nftables" else "iptables via %s" % self.alternative


def parse_host_vars(name: str, document: dict) -> Firewall:
    backend = document.get("killswitch_backend")
    alternative = document.get("lab_iptables_alternative")
    if backend not in BACKENDS:
        raise ValueError("%s: killswitch_backend must be one of %s for a lab client, not %r"
                         % (name, ", ".join(BACKENDS), backend))
    if alternative not in VARIANTS:
        raise ValueError("%s: lab_iptables_alternative must be one of %s, not %r"
                         % (name, ", ".join(VARIANTS), alternative))
    return Firewall(backend, alternative)


def intended(host: Host, host_vars: str = HOST_VARS) -> Firewall:
    """The client's firewall as the lab inventory sets it."""
    path = os.path.join(host_vars, host.name + ".yml")
    with open(path, encoding="utf-8") as handle:
        return parse_host_vars(host.name, yaml.safe_load(handle) or {})


# --- the iptables variant ------------------------------------------------------------------------------

def select_script(firewall: Firewall) -> str:
    """Shell that selects the alternative for iptables and ip6tables (their -save/-restore follow) and records it."""
    suffix = firewall.alternative[len("iptables"):]
    lines = ["update-alternatives --quiet --set %s /usr/sbin/%s%s" % (tool, tool, suffix) for tool in XTABLES_TOOLS]
    lines += ["mkdir -p %s" % os.path.dirname(RECORD), "printf '%%s\\n' %s > %s" % (firewall.alternative, RECORD)]
    return "\n".join(lines) + "\n"


def variant_problems(firewall: Firewall, versions: Dict[str, str], recorded: str) -> List[str]:
    """Every tool the role may call must be the intended variant, and the lab must have recorded that one."""
    problems = []
    for tool in VERSIONED_TOOLS:
        said = versions.get(tool, "")
        if "(%s)" % firewall.variant not in said:
            problems.append("%s -V says %r inside the container, %s intended (%s)"
                            % (tool, said or "nothing", firewall.alternative, firewall.variant))
    if recorded != firewall.alternative:
        problems.append("the lab recorded %r in %s, %s intended" % (recorded, RECORD, firewall.alternative))
    return problems


def tool_versions(host: Host) -> Tuple[Dict[str, str], str]:
    """`-V` of every xtables tool inside the container, and the alternative the lab recorded there."""
    script = "".join("printf '%%s\\t%%s\\n' %s \"$(%s -V 2>&1 | head -n 1)\"\n" % (tool, tool)
                     for tool in VERSIONED_TOOLS)
    result = sh(host.name, script + "printf 'recorded\\t%%s\\n' \"$(cat %s 2>/dev/null)\"\n" % RECORD)
    said = dict(line.split("\t", 1) for line in result.stdout.splitlines() if "\t" in line)
    return {tool: said.get(tool, "") for tool in VERSIONED_TOOLS}, said.get("recorded", "")


def select(host: Host, firewall: Optional[Firewall] = None) -> Firewall:
    """Select and record the client's iptables alternative; raises unless the container then runs it."""
    firewall = firewall or intended(host)
    result = sh(host.name, "set -e\n" + select_script(firewall))
    if result.returncode != 0:
        raise RuntimeError("%s: update-alternatives failed: %s" % (host.name, result.stderr[-800:]))
    problems = variant_problems(firewall, *tool_versions(host))
    if problems:
        raise RuntimeError("%s: %s" % (host.name, "; ".join(problems)))
    return firewall


# --- what is in force ----------------------------------------------------------------------------------

_COUNTERS = re.compile(r"\s*\[\d+:\d+\]$")
_NFT_COUNTERS = re.compile(r"counter packets \d+ bytes \d+")


def xtables_rules(save_output: str) -> str:
    """The filtering tables of an iptables-save output, without comments and counters; "" when they let
    everything through (no rule, every built-in policy ACCEPT)."""
    kept, table, filtering = [], None, False
    for line in save_output.splitlines():
        line = line.rstrip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:]
        if table in FILTERING_TABLES:
            kept.append(_COUNTERS.sub("", line))
            filtering = filtering or line.startswith("-A ") or (line.startswith(":") and line.split()[1] not in
                                                                ("ACCEPT", "-"))
        if line == "COMMIT":
            table = None
    return "\n".join(kept) if filtering else ""


def reset_payload(save_output: str) -> str:
    """An iptables-restore input that empties every filtering table in save_output: its built-in chains
    accept, its rules and its own chains are gone (restore without --noflush replaces whole tables)."""
    lines, table = [], None
    for line in save_output.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            if table in FILTERING_TABLES:
                lines.append(line.strip())
        elif table in FILTERING_TABLES and line.startswith(":") and line.split()[1] != "-":
            lines.append(":%s ACCEPT [0:0]" % line[1:].split()[0])
        elif table in FILTERING_TABLES and line.strip() == "COMMIT":
            lines.append("COMMIT")
            table = None
    return "\n".join(lines) + "\n" if lines else ""


def _save(host: Host, command: str) -> str:
    return sh(host.name, "%s 2>/dev/null" % command).stdout


def killswitch_rules(host: Host, firewall: Firewall) -> Optional[str]:
    """The kill switch in force on the client through its backend, normalized (no counters); None when
    that backend holds no kill switch."""
    if firewall.backend == "nftables":
        result = sh(host.name, "nft list table %s" % NFT_TABLE)
        return _NFT_COUNTERS.sub("counter", result.stdout).strip() if result.returncode == 0 else None
    # The alternatives-selected tools, as the role uses them.
    parts = ["%s:\n%s" % (tool, rules) for tool in XTABLES_TOOLS
             for rules in [xtables_rules(_save(host, tool + "-save"))] if rules]
    return "\n".join(parts) if parts else None


def in_force(host: Host, firewall: Firewall) -> Tuple[str, List[str]]:
    """What holds the kill switch on the client, and why that is not what the inventory asked for (if so).

    nftables: the inet table is loaded and no xtables variant holds filtering rules.  iptables: both
    families' rules are in the intended variant, none in the other, and no inet table shadows them.
    """
    nft_loaded = sh(host.name, "nft list table %s" % NFT_TABLE).returncode == 0
    counts = {}
    for alternative in VARIANTS:
        suffix = alternative[len("iptables"):]
        for tool in XTABLES_TOOLS:
            rules = xtables_rules(_save(host, "%s%s-save" % (tool, suffix)))
            counts[(alternative, tool)] = sum(line.startswith("-A ") for line in rules.splitlines()) if rules else 0
    filled = sorted("%s (%s)" % (tool, alternative) for (alternative, tool), n in counts.items() if n)
    problems = []
    if firewall.backend == "nftables":
        found = "table %s" % NFT_TABLE if nft_loaded else "no table %s" % NFT_TABLE
        if not nft_loaded:
            problems.append("the nftables backend is asked for but table %s is not loaded" % NFT_TABLE)
        if filled:
            problems.append("the nftables backend is asked for but xtables holds rules: %s" % ", ".join(filled))
        return found, problems
    found = ", ".join("%s: %d rules" % (tool, counts[(firewall.alternative, tool)]) for tool in XTABLES_TOOLS)
    found = "%s (%s)" % (found, firewall.alternative)
    for tool in XTABLES_TOOLS:
        if not counts[(firewall.alternative, tool)]:
            problems.append("no %s rules in %s" % (tool, firewall.alternative))
    other = ["%s (%s)" % (tool, alternative) for (alternative, tool), rules in counts.items()
             if rules and alternative != firewall.alternative]
    if other:
        problems.append("rules in the other variant too: %s" % ", ".join(other))
    if nft_loaded:
        problems.append("table %s is loaded too: it, not iptables, would be what blocks" % NFT_TABLE)
    return found, problems


# --- positive controls ----------------------------------------------------------------------------------

def _lift(host: Host, firewall: Firewall) -> None:
    if firewall.backend == "nftables":
        sh(host.name, "nft delete table %s" % NFT_TABLE)
        return
    for tool in XTABLES_TOOLS:
        payload = reset_payload(_save(host, tool + "-save"))
        if payload:
            result = sh(host.name, "printf '%%s' %s | %s-restore" % (shlex.quote(payload), tool))
            assert result.returncode == 0, "%s-restore on %s: %s" % (tool, host.name, result.stderr)


@contextlib.contextmanager
def killswitch_off(host: Host, firewall: Optional[Firewall] = None):
    """Positive controls: the kill switch lifted for the block, then loaded again by its boot unit, exactly
    as it was.  The guard is paused meanwhile, or it would put the rules back in the middle of the control.
    """
    firewall = firewall or intended(host)
    # Stopping the service too waits for a guard run already under way, which could reload the rules.
    assert sh(host.name, PAUSE_GUARD).returncode == 0, "%s: the guard did not stay stopped" % host.name
    before = killswitch_rules(host, firewall)
    assert before is not None, "%s: no kill switch (%s) in force before the control" % (host.name, firewall.label())
    _lift(host, firewall)
    left = killswitch_rules(host, firewall)
    assert left is None, "%s: the kill switch is still in force:\n%s" % (host.name, left)
    fence = sh(host.name, "nft list table %s" % FENCE_TABLE)
    assert fence.returncode != 0, "%s: the fence is still in force:\n%s" % (host.name, fence.stdout)
    try:
        yield
    finally:
        result = sh(host.name, "systemctl restart %s && %s" % (BOOT_UNIT, RESUME_GUARD))
        after = killswitch_rules(host, firewall)
        assert result.returncode == 0 and after == before, "%s: the boot unit did not restore the kill switch: %s" % (
            host.name, result.stderr or after)
