# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""nft_live: normalize() and the Nft wrapper (fake runner; plus real nft in a netns when root)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ansible_collections.netlock.killswitch.plugins.module_utils.firewall import Rejected
from ansible_collections.netlock.killswitch.plugins.module_utils.nft_live import Nft, normalize, plain_text
from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_nftables import render
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy

COLLECTIONS = str(Path(__file__).resolve().parents[4] / ".collections")
POLICY = parse_policy({
    "killswitch_tunnel_interfaces": ["wg0"],
    "killswitch_endpoints": [{"address": "198.51.100.7", "port": 51820}],
    "killswitch_management_cidrs": ["192.0.2.10"],
    "killswitch_allow_lan": True,
})


def listing(handle_base=0, packets=0, nbytes=0, version="1.0.6"):
    """A small ``nft -j list table`` document, shaped like nft 1.0.6 prints it."""
    return {"nftables": [
        {"metainfo": {"version": version, "release_name": "Lester Gooch #5", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "killswitch", "handle": handle_base + 1}},
        {"set": {"family": "inet", "name": "lan_v4", "table": "killswitch", "type": "ipv4_addr",
                 "handle": handle_base + 5, "flags": ["interval"],
                 "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}]}},
        {"chain": {"family": "inet", "table": "killswitch", "name": "output", "handle": handle_base + 2,
                   "type": "filter", "hook": "output", "prio": 0, "policy": "drop"}},
        {"rule": {"family": "inet", "table": "killswitch", "chain": "output", "handle": handle_base + 9,
                  "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "lo"}},
                           {"accept": None}]}},
        {"rule": {"family": "inet", "table": "killswitch", "chain": "output", "handle": handle_base + 10,
                  "expr": [{"counter": {"packets": packets, "bytes": nbytes}},
                           {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}]}},
    ]}


# --------------------------------------------------------------------------- normalize


def test_normalize_drops_metainfo_handles_and_counter_values():
    items = normalize(listing(handle_base=3, packets=12, nbytes=3456))
    assert not [i for i in items if "metainfo" in i]
    assert len(items) == 5
    assert "handle" not in json.dumps(items)
    assert items[0] == {"table": {"family": "inet", "name": "killswitch"}}
    assert items[4]["rule"]["expr"][0] == {"counter": None}
    assert items[4]["rule"]["expr"][1] == {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}
    assert items[2]["chain"] == {"family": "inet", "table": "killswitch", "name": "output", "type": "filter",
                                 "hook": "output", "prio": 0, "policy": "drop"}


def test_normalize_equal_across_reloads_and_counter_values():
    assert normalize(listing(0, 0, 0)) == normalize(listing(40, 999, 123456, version="1.1.1"))


def test_normalize_still_sees_real_changes():
    changed = listing()
    changed["nftables"][3]["chain"]["policy"] = "accept"
    assert normalize(changed) != normalize(listing())
    extra = listing()
    extra["nftables"].append(copy.deepcopy(extra["nftables"][4]))
    assert normalize(extra) != normalize(listing())
    other_set = listing()
    other_set["nftables"][2]["set"]["elem"] = [{"prefix": {"addr": "0.0.0.0", "len": 0}}]
    assert normalize(other_set) != normalize(listing())
    reordered = listing()
    reordered["nftables"][4], reordered["nftables"][5] = reordered["nftables"][5], reordered["nftables"][4]
    assert normalize(reordered) != normalize(listing()), "rule order matters to a firewall"


def test_normalize_keeps_a_counter_that_is_not_a_statement():
    """Only the ``{"counter": {...}}`` statement loses its values; other dicts are kept whole."""
    document = {"nftables": [{"rule": {"expr": [{"counter": {"packets": 1, "bytes": 2}, "extra": 1}]}}]}
    assert normalize(document) == [{"rule": {"expr": [{"counter": {"packets": 1, "bytes": 2}, "extra": 1}]}}]


def test_normalize_does_not_modify_its_input():
    document = listing(handle_base=7, packets=5)
    before = copy.deepcopy(document)
    normalize(document)
    assert document == before


def test_normalize_empty():
    assert normalize({}) == []
    assert normalize({"nftables": []}) == []


def test_plain_text_drops_counter_values():
    text = "\t\tmeta l4proto tcp counter packets 12 bytes 3456 reject with tcp reset\n\t\tcounter packets 0 bytes 0 drop\n"
    assert plain_text(text) == "\t\tmeta l4proto tcp counter reject with tcp reset\n\t\tcounter drop\n"
    assert plain_text("ip daddr 10.0.0.0/8 accept") == "ip daddr 10.0.0.0/8 accept"


# --------------------------------------------------------------------------- Nft with a fake runner


class FakeRunner:
    """Answers commands from a script of (rc, out, err) and records every argv."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, argv):
        self.calls.append(list(argv))
        assert self.answers, "unexpected command %r" % (argv,)
        return self.answers.pop(0)


def test_check_ok():
    run = FakeRunner((0, "", ""))
    assert Nft(run, nft="/usr/sbin/nft").check("/tmp/r.nft") is None
    assert run.calls == [["/usr/sbin/nft", "-c", "-f", "/tmp/r.nft"]]


def test_check_returns_nft_error_text():
    run = FakeRunner((1, "", "/tmp/r.nft:3:1-5: Error: syntax error\n"))
    assert Nft(run).check("/tmp/r.nft") == "/tmp/r.nft:3:1-5: Error: syntax error"


def test_check_falls_back_to_stdout():
    assert Nft(FakeRunner((1, "  out text \n", ""))).check("f") == "out text"


def ruleset(*documents):
    """``nft -j list ruleset``: the documents' items after one metainfo, as nft prints a whole ruleset."""
    items = [item for document in documents for item in document["nftables"] if "metainfo" not in item]
    return json.dumps({"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}] + items})


def foreign_listing():
    """Someone else's table, with a chain of the same name as ours: never listed as ours."""
    return {"nftables": [{"table": {"family": "inet", "name": "filter", "handle": 7}},
                         {"chain": {"family": "inet", "table": "filter", "name": "output", "handle": 1,
                                    "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}}]}


FOREIGN_TEXT = "table inet filter {\n\tchain output {\n\t}\n}\n"


def test_live_missing_table_is_none():
    run = FakeRunner((0, ruleset(foreign_listing()), ""))
    assert Nft(run).live("killswitch") is None
    assert run.calls == [["nft", "-j", "list", "ruleset"]]


def test_live_listing_failure_raises():
    with pytest.raises(RuntimeError, match="boom"):
        Nft(FakeRunner((1, "", "boom"))).live("killswitch")


def test_live_lists_a_bridge_table_left_without_the_inet_table():
    run = FakeRunner((0, ruleset(bridge_listing()), ""), (0, BRIDGE_TEXT, ""))
    document, _text = Nft(run).live("killswitch")
    assert document == normalize(bridge_listing())  # not None: it is replaced, or removed with state=absent


def test_live_returns_normalized_json_and_plain_text():
    text = "table inet killswitch {\n\tchain output {\n\t\tcounter packets 5 bytes 300 drop\n\t}\n}\n"
    run = FakeRunner((0, ruleset(foreign_listing(), listing(handle_base=9, packets=5)), ""),
                     (0, FOREIGN_TEXT + text, ""))
    document, plain = Nft(run, nft="nft").live("killswitch")
    assert document == normalize(listing())
    assert plain == "table inet killswitch {\n\tchain output {\n\t\tcounter drop\n\t}\n}\n"
    assert run.calls == [["nft", "-j", "list", "ruleset"], ["nft", "list", "ruleset"]]


def bridge_listing():
    return {"nftables": [{"table": {"family": "bridge", "name": "killswitch", "handle": 4}},
                         {"chain": {"family": "bridge", "table": "killswitch", "name": "forward", "handle": 1,
                                    "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}]}


BRIDGE_TEXT = "table bridge killswitch {\n\tchain forward {\n\t\tether type ip counter packets 2 bytes 84 drop\n\t}\n}\n"


def test_live_covers_the_bridge_table_of_the_same_name_inet_first():
    """Listed in FAMILIES order whatever order the ruleset has them in (``desired`` lists inet, then bridge)."""
    text = "table inet killswitch {\n}\n"
    run = FakeRunner((0, ruleset(bridge_listing(), foreign_listing(), listing()), ""),
                     (0, BRIDGE_TEXT + FOREIGN_TEXT + text, ""))
    document, plain = Nft(run).live("killswitch")
    assert document == normalize(listing()) + normalize(bridge_listing())
    assert plain == text + "table bridge killswitch {\n\tchain forward {\n\t\tether type ip counter drop\n\t}\n}\n"


def test_live_text_listing_failure_raises():
    run = FakeRunner((0, ruleset(listing()), ""), (1, "", "boom"))
    with pytest.raises(RuntimeError, match="boom"):
        Nft(run).live("killswitch")


def test_desired_runs_in_a_private_network_namespace():
    out = json.dumps(listing(packets=3)) + "\n#--\n" + "table inet killswitch {\n\tcounter packets 3 bytes 9\n}\n#--\n"
    run = FakeRunner((0, out, ""))
    document, text = Nft(run, nft="/usr/sbin/nft", unshare="/usr/bin/unshare").desired("/etc/x y/r.nft", "killswitch")
    assert document == normalize(listing())
    assert text == "table inet killswitch {\n\tcounter\n}\n"
    argv = run.calls[0]
    assert argv[:3] == ["/usr/bin/unshare", "--net", "--"]
    assert argv[3:5] == ["sh", "-c"]
    # path and table are passed as positional parameters, never spliced into the script
    assert argv[-3:] == ["sh", "/etc/x y/r.nft", "killswitch"]
    assert "/etc/x y" not in argv[5] and "killswitch" not in argv[5]
    assert argv[5].startswith('/usr/sbin/nft -f "$1" || exit 65; ')


def test_desired_lists_the_bridge_table_after_the_inet_table():
    parts = [json.dumps(listing()), "table inet killswitch {\n}", json.dumps(bridge_listing()), BRIDGE_TEXT]
    out = "\n#--\n".join(parts) + "#--\n"  # as the script prints it: each listing followed by a separator
    document, text = Nft(FakeRunner((0, out, ""))).desired("r.nft", "killswitch")
    assert document == normalize(listing()) + normalize(bridge_listing())
    assert text == "table inet killswitch {\n}\n" + BRIDGE_TEXT.replace(" packets 2 bytes 84", "")


def test_desired_failure_raises_with_nft_message():
    run = FakeRunner((1, "", "Error: Could not process rule"))
    with pytest.raises(RuntimeError, match="private network namespace.*Could not process rule"):
        Nft(run).desired("r.nft", "killswitch")


def test_desired_tells_a_refused_file_from_a_namespace_failure():
    """The module skips ``nft -c`` for nftables: the load in the namespace must say when nft refused the file."""
    with pytest.raises(Rejected, match="syntax error"):
        Nft(FakeRunner((65, "", "r.nft:1:1: Error: syntax error\n"))).desired("r.nft", "killswitch")
    with pytest.raises(RuntimeError) as info:
        Nft(FakeRunner((1, "", "unshare: unshare failed: Operation not permitted"))).desired("r.nft", "killswitch")
    assert not isinstance(info.value, Rejected)


def test_listing_runs_the_guards_list_command():
    run = FakeRunner((0, "table inet killswitch {\n}\n", ""), (2, "", "sh: boom"))
    nft = Nft(run, nft="/usr/sbin/nft")
    assert nft.listing("killswitch") == "table inet killswitch {\n}\n"
    assert run.calls[0] == ["/bin/sh", "-c", nft.list_command("killswitch")]
    with pytest.raises(RuntimeError, match="boom"):
        nft.listing("killswitch")


def test_apply_and_delete():
    missing, listed = (1, "", "Error: No such file or directory\n"), (0, "table ...", "")
    run = FakeRunner((0, "", ""), (1, "", "Error: busy\n"),
                     listed, missing, (0, "", ""),             # the inet table only
                     missing, missing, (1, "", "Error: No such table\n"),  # none
                     listed, listed, (0, "", ""),              # both: one transaction
                     missing, listed, (0, "", ""))             # a bridge table left alone
    nft = Nft(run, nft="nft")
    assert nft.apply("/etc/r.nft") is None
    assert nft.apply("/etc/r.nft") == "Error: busy"
    assert nft.delete("killswitch") is None
    assert nft.delete("killswitch") == "Error: No such table"
    assert nft.delete("killswitch") is None
    assert nft.delete("killswitch") is None
    lists = [["nft", "list", "table", family, "killswitch"] for family in ("inet", "bridge")]
    assert run.calls == [["nft", "-f", "/etc/r.nft"], ["nft", "-f", "/etc/r.nft"],
                         *lists, ["nft", "delete", "table", "inet", "killswitch"],
                         *lists, ["nft", "delete", "table", "inet", "killswitch"],
                         *lists, ["nft", "delete table inet killswitch; delete table bridge killswitch"],
                         *lists, ["nft", "delete", "table", "bridge", "killswitch"]]


# --------------------------------------------------------------------------- real nft (root, netns)


def subprocess_runner(argv):
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def test_desired_with_real_nft(nft_binary, unshare_binary, tmp_path):
    """desired() loads the file in a throwaway netns; a path with shell metacharacters is safe."""
    directory = tmp_path / "dir with space $(touch pwned) ;"
    directory.mkdir()
    path = directory / "ruleset.nft"
    path.write_text(render(POLICY))
    nft = Nft(subprocess_runner, nft=nft_binary, unshare=unshare_binary)
    document, text = nft.desired(str(path), "killswitch")
    chains = {i["chain"]["name"]: i["chain"] for i in document if "chain" in i}
    assert set(chains) == {"input", "output", "forward"}
    assert chains["output"]["policy"] == "drop"
    assert "table inet killswitch {" in text
    assert "packets" not in text
    assert "handle" not in json.dumps(document)
    assert not (Path.cwd() / "pwned").exists() and not (directory / "pwned").exists()


def test_desired_twice_is_equal_with_real_nft(nft_binary, unshare_binary, tmp_path):
    path = tmp_path / "ruleset.nft"
    path.write_text(render(POLICY))
    nft = Nft(subprocess_runner, nft=nft_binary, unshare=unshare_binary)
    assert nft.desired(str(path), "killswitch") == nft.desired(str(path), "killswitch")


def test_desired_of_a_bad_file_raises_with_real_nft(nft_binary, unshare_binary, tmp_path):
    path = tmp_path / "bad.nft"
    path.write_text("table inet killswitch {\n\tchain output { bogus }\n}\n")
    with pytest.raises(Rejected, match="Error"):
        Nft(subprocess_runner, nft=nft_binary, unshare=unshare_binary).desired(str(path), "killswitch")


LIVE_SCRIPT = textwrap.dedent('''
    import json, subprocess, sys
    from ansible_collections.netlock.killswitch.plugins.module_utils.nft_live import Nft
    nft_bin, unshare_bin, path, other = sys.argv[1:5]
    def run(argv):
        p = subprocess.run(list(argv), capture_output=True, text=True, check=False)
        return p.returncode, p.stdout, p.stderr
    nft = Nft(run, nft=nft_bin, unshare=unshare_bin)
    out = {"missing": nft.live("killswitch") is None}
    # shift the handles: another table first, then ours, then traffic through a counter
    subprocess.run([nft_bin, "-f", other], check=True)
    out["apply"] = nft.apply(path)
    # traffic through the reject counter, so the live counters are not zero
    subprocess.run("ip link add up0 type veth peer name up0p && ip link set up0 up && ip link set up0p up && "
                   "ip addr add 192.0.2.2/24 dev up0", shell=True, check=True)
    import socket
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(b"x", ("192.0.2.9", 443))
    except PermissionError:
        out["rejected"] = True
    listing = subprocess.run([nft_bin, "list", "chain", "inet", "killswitch", "output"], capture_output=True,
                             text=True, check=False).stdout
    final = [line for line in listing.splitlines() if "nfproto ipv4" in line and "reject with icmp" in line][-1]
    out["counted"] = "packets 0 bytes 0" not in final
    live = nft.live("killswitch")
    desired = nft.desired(path, "killswitch")
    out["same_json"] = live[0] == desired[0]
    out["same_text"] = live[1] == desired[1]
    out["bridge_compared"] = any(item.get("table", {}).get("family") == "bridge" for item in live[0])
    # what the guard lists is what the module recorded
    guard = subprocess.run(["sh", "-c", nft.list_command("killswitch")], capture_output=True, text=True, check=True)
    out["guard_listing_same"] = guard.stdout == desired[1]
    subprocess.run([nft_bin, "add", "rule", "bridge", "killswitch", "forward", "accept"], check=True)
    out["bridge_edited_differs"] = nft.live("killswitch")[0] != desired[0]
    subprocess.run([nft_bin, "add", "rule", "inet", "killswitch", "output", "accept"], check=True)
    out["edited_differs"] = nft.live("killswitch")[0] != desired[0]
    out["delete"] = nft.delete("killswitch")
    out["gone"] = nft.live("killswitch") is None
    out["bridge_gone"] = subprocess.run([nft_bin, "list", "table", "bridge", "killswitch"], capture_output=True,
                                        check=False).returncode != 0
    out["delete_again"] = nft.delete("killswitch") is not None
    print(json.dumps(out))
''')


def test_live_matches_desired_after_apply_in_a_netns(nft_binary, unshare_binary, tmp_path):
    """The heart of changed=false: the live table, loaded for real, compares equal to desired()."""
    path = tmp_path / "ruleset.nft"
    path.write_text(render(POLICY))
    other = tmp_path / "other.nft"
    other.write_text("table inet other {\n\tchain c {\n\t\ttype filter hook output priority 10; policy accept;\n"
                     "\t\tcounter\n\t}\n}\n")
    proc = subprocess.run([unshare_binary, "--net", "--", sys.executable, "-c", LIVE_SCRIPT, nft_binary,
                           unshare_binary, str(path), str(other)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=COLLECTIONS), timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"missing": True, "apply": None, "rejected": True, "counted": True,
                                       "same_json": True, "same_text": True, "bridge_compared": True,
                                       "guard_listing_same": True, "bridge_edited_differs": True,
                                       "edited_differs": True, "delete": None, "gone": True, "bridge_gone": True,
                                       "delete_again": True}


def test_guard_listing_is_empty_without_the_inet_table_whatever_else_is_left(nft_binary, unshare_binary, tmp_path):
    """The inet table is the kill switch: gone, the guard sees our rules missing even if the bridge table stays;
    the bridge table gone, it sees them changed."""
    path = tmp_path / "ruleset.nft"
    path.write_text(render(POLICY))
    listing = Nft(subprocess_runner, nft=nft_binary).list_command("killswitch")
    script = ('nft -f "$1"; %s | grep -c "^table" || true; nft delete table bridge killswitch; %s | grep "^table"; '
              'nft -f "$1"; nft delete table inet killswitch; %s | wc -c') % (listing, listing, listing)
    proc = subprocess.run([unshare_binary, "--net", "--", "sh", "-c", script, "sh", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.stdout.split("\n") == ["2", "table inet killswitch {", "0", ""], proc.stdout + proc.stderr
