# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compare a live nftables table with a ruleset file through ``nft -j`` JSON.

What the kernel holds is the truth, so the desired side is also read back from the kernel: the
file is loaded into a private network namespace (``unshare --net``) and listed there.  No Python
nftables bindings are needed on the host.

Our tables are the ``inet`` table and, with bridged frames under the forward policy, the ``bridge`` table of the
same name (``render_nftables``): each comparison and listing covers both, inet first, and the removal is one
transaction.

The members of a set of cgroup ids (a per-app exception's, ``typeof socket cgroupv2``) are host state that the
guard keeps filled while the cgroup exists: both sides are compared without them.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.netlock.killswitch.plugins.module_utils.firewall import Firewall, Rejected, Runner

_COUNTER_TEXT = re.compile(r"counter packets \d+ bytes \d+")
_VOLATILE_KEYS = ("handle", "metainfo")
REJECTED_RC = 65  # desired(): the private namespace's ``nft -f`` refused the file
FAMILIES = ("inet", "bridge")  # the inet table is the kill switch; the bridge table is optional
_SEPARATOR = "\n#--\n"
CGROUP_SET_TYPE = "cgroupsv2"
# In ``nft list`` text: the elements of a set whose key is a socket's cgroup (they may span lines, never hold '}').
_CGROUP_ELEMENTS = re.compile(r"(\tset [^\n]*\{\n\t\ttypeof socket cgroupv2 [^\n]*\n(?:\t\t(?!elements = )[^\n]*\n)*)"
                              r"\t\telements = \{[^}]*\}\n")
# The same for the guard's shell listing (same result as plain_text, line by line).
_CGROUP_ELEMENTS_AWK = ("awk '/^\\tset /{cg=0} /^\\t\\ttypeof socket cgroupv2 /{cg=1} cg && /^\\t\\telements = /{skip=1} "
                        "skip{if(/}$/)skip=0; next} {print}'")


def normalize(document: Dict[str, Any]) -> List[Dict[str, Any]]:
    """``nft -j`` output without what changes on every load (handles, counter values, metainfo)."""
    items = []
    for item in document.get("nftables", []):
        if "metainfo" in item:
            continue
        if item.get("set", {}).get("type") == CGROUP_SET_TYPE:
            item = {"set": {k: v for k, v in item["set"].items() if k != "elem"}}
        items.append(_strip(item))
    return items


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"counter"} and isinstance(value["counter"], dict):
            return {"counter": None}
        return {k: _strip(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def plain_text(listing: str) -> str:
    """``nft list table`` text without counter values nor cgroup set members, for a readable diff."""
    return _CGROUP_ELEMENTS.sub(r"\1", _COUNTER_TEXT.sub("counter", listing))


def _our_tables_awk(table: str) -> str:
    """Shell: our tables' blocks out of ``nft list ruleset``, in FAMILIES order (as ``live`` concatenates them);
    nothing without the inet table, which is then missing for the guard (``live`` is None) whatever else is left.
    The inet table (100k set elements, maybe) streams through; only the small others wait for the end."""
    first, rest = FAMILIES[0], FAMILIES[1:]
    starts = " ".join('$0 == "table %s " t " {" {f = "%s"}' % (family, family) for family in FAMILIES)
    return ("awk -v t=%s '%s f == \"%s\" {seen = 1; print} f != \"\" && f != \"%s\" {b[f] = b[f] $0 \"\\n\"} "
            "f != \"\" && $0 == \"}\" {f = \"\"} END {if (seen) printf \"%%s\", %s}'") % (
        shlex.quote(table), starts, first, first, " ".join('b["%s"]' % family for family in rest))


def _family_of_ours(item: Dict[str, Any], table: str) -> Optional[str]:
    """The family of an ``nft -j list ruleset`` item that belongs to one of our tables, else None."""
    kind, body = next(iter(item.items()))
    if not isinstance(body, dict) or body.get("family") not in FAMILIES:
        return None
    return body["family"] if body.get("name" if kind == "table" else "table") == table else None


def _our_blocks(listing: str, table: str) -> str:
    """Our tables' blocks out of ``nft list ruleset`` text, in FAMILIES order (Python's ``_our_tables_awk``)."""
    heads = {"table %s %s {" % (family, table): family for family in FAMILIES}
    blocks: Dict[str, List[str]] = {family: [] for family in FAMILIES}
    family = None
    for line in listing.splitlines(keepends=True):
        family = family or heads.get(line.rstrip("\n"))
        if family:
            blocks[family].append(line)  # a list: joining 100k lines once, not copying the text per line
            if line.rstrip("\n") == "}":
                family = None
    return "".join(line for family in FAMILIES for line in blocks[family])


class Nft(Firewall):
    name = "nftables"
    desired_checks = True  # desired() runs the full ``nft -f``: whatever ``nft -c`` refuses, it refuses too

    def __init__(self, run: Runner, nft: str = "nft", unshare: str = "unshare"):
        super().__init__(run, unshare)
        self.nft = nft

    def check(self, path: str) -> Optional[str]:
        """``nft -c``: None when the file is valid, else nft's error text."""
        rc, out, err = self.run([self.nft, "-c", "-f", path])
        return None if rc == 0 else (err or out).strip()

    def live(self, table: str) -> Optional[Tuple[List[Dict[str, Any]], str]]:
        """Our live tables as normalized JSON and as text, or None when neither is loaded (a bridge table left
        alone is listed, so that it is replaced or removed like the rest). Two listings of the ruleset, whatever
        the number of our tables: inet first, then bridge, as ``desired`` lists them."""
        rc, out, err = self.run([self.nft, "-j", "list", "ruleset"])
        if rc != 0:
            raise RuntimeError("nft -j list ruleset failed: %s" % (err or out).strip())
        ours = [item for item in json.loads(out).get("nftables", []) if _family_of_ours(item, table)]
        if not ours:
            return None
        ours.sort(key=lambda item: FAMILIES.index(_family_of_ours(item, table)))
        rc, listing, err = self.run([self.nft, "list", "ruleset"])
        if rc != 0:
            raise RuntimeError("nft list ruleset failed: %s" % (err or listing).strip())
        return normalize({"nftables": ours}), plain_text(_our_blocks(listing, table))

    def desired(self, path: str, table: str) -> Tuple[List[Dict[str, Any]], str]:
        """Load the file in a throwaway network namespace and list what the kernel made of it."""
        listing = '{0} -j list table {1} "$2" && echo "#--" && {0} list table {1} "$2" && echo "#--"'
        script = '%s -f "$1" || exit %d; %s && { %s 2>/dev/null || true; }' % (
            self.nft, REJECTED_RC, listing.format(self.nft, "inet"), listing.format(self.nft, "bridge"))
        rc, out, err = self.run([self.unshare, "--net", "--", "sh", "-c", script, "sh", path, table])
        if rc == REJECTED_RC:
            raise Rejected((err or out).strip())
        if rc != 0:
            raise RuntimeError("loading the ruleset in a private network namespace failed: %s" % (err or out).strip())
        parts = out.split(_SEPARATOR)
        documents, texts = parts[0::2], parts[1::2]
        document = [item for part in documents if part.strip() for item in normalize(json.loads(part))]
        return document, plain_text("".join(text + "\n" for text in texts))

    def apply(self, path: str) -> Optional[str]:
        rc, out, err = self.run([self.nft, "-f", path])
        return None if rc == 0 else (err or out).strip()

    def delete(self, table: str) -> Optional[str]:
        """Our loaded tables in one transaction; with none loaded, nft's error for the inet table."""
        loaded = [family for family in FAMILIES if self.run([self.nft, "list", "table", family, table])[0] == 0]
        commands = "; ".join("delete table %s %s" % (family, table) for family in loaded or FAMILIES[:1])
        rc, out, err = self.run([self.nft, commands] if len(loaded) > 1 else [self.nft] + commands.split())
        return None if rc == 0 else (err or out).strip()

    def load_argv(self, path: str) -> List[str]:
        return [self.nft, "-f", path]

    def list_command(self, table: str) -> str:
        # One listing of the ruleset is one consistent snapshot (nft retries when the generation changes):
        # two `nft list table` calls could catch one table before and the other after a reload.
        return "%s list ruleset 2>/dev/null | %s | sed -E 's/counter packets [0-9]+ bytes [0-9]+/counter/' | %s" % (
            shlex.quote(self.nft), _our_tables_awk(table), _CGROUP_ELEMENTS_AWK)

    def previous_payload(self, table: str, live: Optional[Tuple[Any, str]]) -> str:
        """Restores the listed tables atomically, or removes them if there were none."""
        return "".join("table %s %s\ndelete table %s %s\n" % (family, table, family, table) for family in FAMILIES) + (
            live[1] if live else "")
