# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The firewalls the policy can be rendered for, what each can express, and its renderer.

Adding a backend means one renderer (rule list to payload) here, one applier in module_utils
(``module_utils/firewall.py`` documents the interface) and an entry in ``BACKENDS``.  A policy that
asks for something a host's backend cannot enforce fails on the controller, naming the variable, the
host and the backend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, FrozenSet, List, Optional, Pattern

from ansible_collections.netlock.killswitch.plugins.plugin_utils import render_iptables, render_nftables, render_windows
from ansible_collections.netlock.killswitch.plugins.plugin_utils.nft_keywords import NFT_KEYWORDS
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import PREFIX, Policy, PolicyError, Problem

# Linux interface names (IFNAMSIZ - 1 characters), no '/', whitespace, quotes or ':' (aliases); a wildcard
# is a trailing '*' after a non-empty prefix, and counts in the 15.
LINUX_IFNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,15}\*?")
MAX_LINUX_IFNAME = 15
OWNER_VARIABLES = {"mark": PREFIX + "endpoint_mark", "user": PREFIX + "endpoint_user",
                   "program": PREFIX + "endpoint_program"}
WINDOWS_PROGRAM = re.compile(r"[A-Za-z]:\\[^\x00-\x1f\x7f\"*?<>|]*")


def linux_interface_problem(name: str) -> Optional[str]:
    # The kernel and both nft and iptables count a wildcard's '*' (iptables: '+') in the 15 characters.
    if not LINUX_IFNAME.fullmatch(name) or len(name) > MAX_LINUX_IFNAME or name.strip("*") in (".", ".."):
        return "is not a Linux interface name or wildcard (letters, digits, '_.@+-', at most %d characters, " \
               "an optional trailing '*' included)" % MAX_LINUX_IFNAME
    if name == "lo" or (name.endswith("*") and "lo".startswith(name[:-1])):
        return "matches the loopback interface, not a tunnel"
    return None


@dataclass(frozen=True)
class Backend:
    """A firewall: what it can enforce, and how a policy becomes its payload."""

    name: str
    owners: FrozenSet[str]              # endpoint owner kinds it can enforce (Owner.KINDS)
    render: Callable[[Policy], str]
    max_table: int                      # longest table (or chain prefix, or rule group) name
    table_words: FrozenSet[str] = frozenset()   # names its syntax refuses
    payload_suffix: str = ""            # the persisted file's extension
    plus_wildcard: bool = False         # a trailing '+' in an interface name is its wildcard (iptables)
    interface_problem: Callable[[str], Optional[str]] = linux_interface_problem
    program_path: Optional[Pattern] = None   # what an endpoint_program must look like, when it takes one
    cgroups: bool = False               # matches a socket's cgroup v2 through a set the host fills (app exceptions)
    carriers: bool = True               # enforces an endpoint's via (the carrier tunnel of a nested one)
    bridged_frames: bool = True         # filters what a Linux bridge forwards (bridged guests) itself, or has no bridges

    def problems(self, policy: Policy) -> List[Problem]:
        found = []
        for kind in policy.endpoint_owner.kinds():
            if kind not in self.owners:
                found.append(Problem(OWNER_VARIABLES[kind], getattr(policy.endpoint_owner, kind),
                                     "cannot be enforced by the %s backend (it can match: %s)"
                                     % (self.name, ", ".join(sorted(self.owners)) or "no owner")))
        program = policy.endpoint_owner.program
        if program is not None and "program" in self.owners and self.program_path and not self.program_path.fullmatch(program):
            found.append(Problem(OWNER_VARIABLES["program"], program, "is not a program path the %s backend can match "
                                 "(a full path with a drive letter, C:\\Program Files\\...)" % self.name))
        # The policy holds the names sorted and deduplicated: an index into it is not the one the user wrote,
        # so the problem names the variable and shows the name.
        for name in policy.tunnel_interfaces:
            problem = self.interface_problem(name)
            if problem is None and self.plus_wildcard and name.endswith("+"):
                # "-o wg+" matches every interface whose name starts with "wg": not the one interface named.
                problem = "ends in '+', which iptables reads as a wildcard ('wg+' would match wg0)"
            if problem:
                found.append(Problem(PREFIX + "tunnel_interfaces", name, "%s (%s backend)" % (problem, self.name)))
        if policy.app_exceptions and not self.cgroups:
            found.append(Problem(PREFIX + "app_exceptions", sorted({e.cgroup for e in policy.app_exceptions}),
                                 "cannot be enforced by the %s backend (per-app exceptions need nftables: a cgroup "
                                 "match that %s resolves when it loads would fail the boot load)" % (self.name, self.name)
                                 if self.name != "windows" else
                                 "cannot be enforced by the windows backend (no cgroups; use killswitch_extra_outbound)"))
        if not self.carriers:
            found += [Problem(PREFIX + "endpoints", {"via": via}, "names a carrier tunnel, which the %s backend does not "
                              "enforce (nested tunnels need nftables or iptables)" % self.name) for via in policy.carriers]
        if len(policy.table) > self.max_table:
            found.append(Problem(PREFIX + "table", policy.table, "is longer than %d characters, the most the %s "
                                 "backend allows" % (self.max_table, self.name)))
        if policy.table.lower() in self.table_words:
            found.append(Problem(PREFIX + "table", policy.table, "is a keyword of the %s backend's syntax"
                                 % self.name))
        return found


BACKENDS = {
    "nftables": Backend("nftables", frozenset(("mark", "user")), render_nftables.render, 32, NFT_KEYWORDS, ".nft",
                        cgroups=True),
    # iptables chain names hold at most 28 characters; ours are the table name plus "-out" and the like.
    "iptables": Backend("iptables", frozenset(("mark", "user")), render_iptables.render,
                        28 - len(render_iptables.LONGEST_SUFFIX), frozenset(), ".sh", plus_wildcard=True,
                        bridged_frames=False),
    # Windows Firewall: allow rules in one group (netlock.killswitch <table>) under default-block profiles; it
    # matches programs, not marks or users, and takes interface aliases with '*' anywhere.
    "windows": Backend("windows", frozenset(("program",)), render_windows.render, 32, frozenset(), ".json",
                       interface_problem=render_windows.interface_problem, program_path=WINDOWS_PROGRAM, carriers=False),
}
# The backends of Linux hosts (killswitch_firewall, killswitch_status and the guard take only these).
LINUX_BACKENDS = ("nftables", "iptables")


def backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise PolicyError([Problem(PREFIX + "backend", name, "is not one of %s" % ", ".join(sorted(BACKENDS)))])


def render_for(policy: Policy, name: str, host: str = "the host") -> str:
    """The payload for one host's backend, or PolicyError naming the variable, the host and the backend."""
    chosen = backend(name)
    problems = chosen.problems(policy)
    if problems:
        raise PolicyError([Problem(p.variable, p.value, "%s, on %s" % (p.reason, host)) for p in problems])
    return chosen.render(policy)


def warnings_for(policy: Policy, name: str, host: str = "the host") -> List[str]:
    """What one host's backend leaves unenforced, for the operator (not an error: the routed traffic is covered)."""
    if backend(name).bridged_frames or policy.forward == "off":
        return []
    return ["%s: %sforward: %r covers routed traffic only with the %s backend: frames a Linux bridge forwards (a "
            "bridged VM's) meet its rules only while br_netfilter's net.bridge.bridge-nf-call-iptables is 1; the "
            "nftables backend filters them in a bridge table" % (host, PREFIX, policy.forward, name)]


def fence_for(policy: Policy, host: str = "the host") -> str:
    """The fence payload (docs/design/drift.md): the policy as an owned nftables table, whatever the backend.

    PolicyError when nftables cannot express the policy (the caller decides whether that is fatal)."""
    problems = BACKENDS["nftables"].problems(policy)
    if problems:
        raise PolicyError([Problem(p.variable, p.value, "%s, on %s (the fence is an nftables table)" % (p.reason, host))
                           for p in problems])
    return render_nftables.render(policy, fence=True)
