# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The iptables applier: our own chains, loaded per family by ``iptables-restore --noflush``.

The payload is a small POSIX shell script (``sh FILE load|check|delete|list``) holding the rules of both
families.  A load is one restore transaction per family (IPv4, then IPv6): it declares our chains (which
creates them, or flushes only them), deletes every jump to them wherever other tools moved them, inserts
one jump at the top of INPUT, OUTPUT and FORWARD and fills the chains.  Each chain ends in reject or
drop, so nothing falls through to the rules of other tools.  Rules of other tools are left alone.
``iptables`` is whatever the host's alternatives select: iptables-nft or iptables-legacy.

The listing the module and the guard compare is the kernel's own ``iptables-save`` of our chains without
counters, plus the position of each jump, so a rule inserted above ours is drift.
"""

from __future__ import annotations

import shlex
from typing import Dict, List, Optional, Sequence, Tuple

from ansible_collections.netlock.killswitch.plugins.module_utils.firewall import Firewall, Runner

HOOKS = (("input", "INPUT", "-in"), ("output", "OUTPUT", "-out"), ("forward", "FORWARD", "-fwd"))
FAMILIES = ((4, "iptables"), (6, "ip6tables"))
PATH = "PATH=$PATH:/usr/sbin:/sbin:/usr/bin:/bin"  # boot units and cron have a short PATH
WAIT = "-w 10"  # the xtables lock: wait for another tool's restore rather than fail


def chain_names(table: str) -> Dict[str, str]:
    """Our chain for each direction: ``killswitch-in``, ``killswitch-out``, ``killswitch-fwd``."""
    return {direction: table + suffix for direction, _hook, suffix in HOOKS}


def _pattern(table: str) -> str:
    return "|".join(chain_names(table).values())


def list_command(table: str) -> str:
    """Shell: our chains in both families as ``iptables-save`` prints them, without counters, and the
    position of every jump to them in INPUT, OUTPUT and FORWARD."""
    chains = _pattern(table)
    awk = ('$1 == "-A" && ($2 == "INPUT" || $2 == "OUTPUT" || $2 == "FORWARD") '
           '{ n[$2]++; if ($0 ~ / -j (%s)$/) print "jump", $2, n[$2], $NF }' % chains)
    return (
        "for family in iptables ip6tables; do echo \"# $family\"; "
        "saved=$(\"$family-save\" -t filter 2>/dev/null) || true; "
        "printf '%%s\\n' \"$saved\" | grep -E '^(:(%(chains)s) |-A (%(chains)s) )' | sed -E 's/ \\[[0-9]+:[0-9]+\\]$//'; "
        "printf '%%s\\n' \"$saved\" | awk %(awk)s; "
        "done" % dict(chains=chains, awk=shlex.quote(awk))
    )


def delete_lines(table: str) -> str:
    """Shell function body printing the restore lines that remove our jumps and chains (save command in $1)."""
    chains = _pattern(table)
    return (
        "\"$1\" -t filter 2>/dev/null | grep -E '^-A (INPUT|OUTPUT|FORWARD) -j (%(chains)s)$' | sed 's/^-A /-D /'\n"
        "  for chain in $(\"$1\" -t filter 2>/dev/null | grep -E '^:(%(chains)s) ' | cut -d' ' -f1 | cut -c2-); do\n"
        "    echo \"-F $chain\"; echo \"-X $chain\"\n"
        "  done" % dict(chains=chains)
    )


def script(table: str, rules: Dict[int, Sequence[str]], directions: Sequence[str], header: str = "",
           present: bool = True) -> str:
    """The payload: ``rules`` maps a family to its ``-A`` lines, ``directions`` names the chains to hook."""
    chains = chain_names(table)
    hooked = [(hook, chains[direction]) for direction, hook, _suffix in HOOKS if direction in directions]
    parts = [
        "#!/bin/sh\n",
        header,
        "# Usage: sh THIS_FILE [load|check|delete|list]\n"
        "# load: one iptables-restore --noflush transaction per family replaces our chains and jumps to them\n"
        "# first from INPUT, OUTPUT and FORWARD; the rules of other tools are left alone.\n",
        "set -u\n%s\n" % PATH,
        "action=${1:-load}\n",
        "[ %s = 1 ] || [ \"$action\" != load ] || action=delete  # the saved state had no kill switch\n"
        % (1 if present else 0),
        "unhook() {\n  %s\n}\n" % delete_lines(table),
    ]
    for family, _command in FAMILIES:
        body = ["*filter"]
        body += [":%s - [0:0]" % chain for _hook, chain in hooked]
        parts.append("declare_v%d() {\ncat <<'NETLOCK_EOF'\n%s\nNETLOCK_EOF\n}\n" % (family, "\n".join(body)))
        body = ["-I %s 1 -j %s" % (hook, chain) for hook, chain in hooked] + list(rules.get(family, ()))
        parts.append("rules_v%d() {\ncat <<'NETLOCK_EOF'\n%s\nNETLOCK_EOF\n}\n" % (family, "\n".join(body)))
    parts.append(
        "transaction() {  # $1: the save command, $2: the family\n"
        "  if [ \"$action\" = delete ]; then\n"
        "    echo '*filter'; unhook \"$1\"\n"
        "  else\n"
        "    \"declare_v$2\"; unhook \"$1\" | grep '^-D '; \"rules_v$2\"\n"
        "  fi\n"
        "  echo COMMIT\n"
        "}\n"
        "case $action in\n"
        "  list) %(list)s ;;\n"
        "  load|delete)\n"
        "    transaction iptables-save 4 | iptables-restore %(wait)s --noflush &&\n"
        "      transaction ip6tables-save 6 | ip6tables-restore %(wait)s --noflush ;;\n"
        "  check)\n"
        "    transaction iptables-save 4 | iptables-restore %(wait)s --noflush --test &&\n"
        "      transaction ip6tables-save 6 | ip6tables-restore %(wait)s --noflush --test ;;\n"
        "  *) echo \"usage: $0 [load|check|delete|list]\" >&2; exit 2 ;;\n"
        "esac\n" % dict(list=list_command(table), wait=WAIT)
    )
    return "".join(parts)


def parse_listing(text: str) -> Dict[int, Tuple[List[str], List[str]]]:
    """From ``list_command`` output: per family, (declared chains, ``-A`` lines of our chains)."""
    families = {"# iptables": 4, "# ip6tables": 6}
    parsed: Dict[int, Tuple[List[str], List[str]]] = {4: ([], []), 6: ([], [])}
    family = 4
    for line in text.splitlines():
        if line in families:
            family = families[line]
        elif line.startswith(":"):
            parsed[family][0].append(line[1:].split()[0])
        elif line.startswith("-A "):
            parsed[family][1].append(line)
    return parsed


class Iptables(Firewall):
    name = "iptables"

    def __init__(self, run: Runner, sh: str = "/bin/sh", unshare: str = "unshare"):
        super().__init__(run, unshare)
        self.sh = sh

    def load_argv(self, path: str) -> List[str]:
        return [self.sh, path, "load"]

    def list_command(self, table: str) -> str:
        return list_command(table)

    def check(self, path: str) -> Optional[str]:
        rc, out, err = self.run([self.sh, path, "check"])
        return None if rc == 0 else (err or out).strip() or "iptables-restore --test failed"

    def _listing(self, text: str) -> Optional[Tuple[str, str]]:
        if not any(line.startswith(":") for line in text.splitlines()):
            return None
        return text, text

    def live(self, table: str) -> Optional[Tuple[str, str]]:
        rc, out, err = self.run([self.sh, "-c", list_command(table)])
        if rc != 0:
            raise RuntimeError("listing the iptables chains failed: %s" % (err or out).strip())
        return self._listing(out)

    def desired(self, path: str, table: str) -> Tuple[str, str]:
        script_text = '%s "$1" load && %s' % (shlex.quote(self.sh), list_command(table))
        rc, out, err = self.run([self.unshare, "--net", "--", self.sh, "-c", script_text, "sh", path])
        listing = self._listing(out) if rc == 0 else None
        if listing is None:
            raise RuntimeError("loading the ruleset in a private network namespace failed: %s"
                               % ((err or out).strip() or "no chain was created"))
        return listing

    def apply(self, path: str) -> Optional[str]:
        rc, out, err = self.run(self.load_argv(path))
        return None if rc == 0 else (err or out).strip() or "iptables-restore failed"

    def delete(self, table: str) -> Optional[str]:
        text = script(table, {}, (), present=False)
        rc, out, err = self.run([self.sh, "-c", text, "sh", "delete"])
        return None if rc == 0 else (err or out).strip() or "iptables-restore failed"

    def previous_payload(self, table: str, live: Optional[Tuple[str, str]]) -> str:
        """A payload that puts the listed chains back as they were (or removes ours when there were none)."""
        if live is None:
            return script(table, {}, (), "# netlock.killswitch: there was no kill switch before\n", present=False)
        parsed = parse_listing(live[1])
        chains = chain_names(table)
        declared = set(parsed[4][0]) | set(parsed[6][0])
        directions = [d for d in chains if chains[d] in declared]
        return script(table, {family: lines for family, (_declared, lines) in parsed.items()}, directions,
                      "# netlock.killswitch: the chains as they were before the last apply\n")
