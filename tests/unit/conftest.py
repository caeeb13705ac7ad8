# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared setup for the unit tests.

* Makes ``ansible_collections.netlock.killswitch`` importable from a plain checkout: the
  repository root is the collection root, so ``.collections/ansible_collections/netlock/killswitch``
  (gitignored) is a symlink to ``../../..``; it is created here when missing (fresh clone, CI).
* ``nft_accepts``: runs ``nft -c -f`` inside a throwaway network namespace, so checking a
  ruleset never touches the host's tables.  Skips (with the reason) when not root or when
  ``unshare``/``nft`` are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO_ROOT / ".collections"
LINK = COLLECTIONS / "ansible_collections" / "netlock" / "killswitch"


def _ensure_collection_link() -> None:
    if not LINK.exists():
        LINK.parent.mkdir(parents=True, exist_ok=True)
        if LINK.is_symlink():  # dangling
            LINK.unlink()
        LINK.symlink_to(Path("..", "..", ".."), target_is_directory=True)
    assert (LINK / "galaxy.yml").is_file(), "%s does not point at the collection root" % LINK
    if str(COLLECTIONS) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS))


_ensure_collection_link()


# --------------------------------------------------------------------------- nft in a netns

NFT = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
UNSHARE = shutil.which("unshare")


def netns_unavailable_reason():
    """Why rulesets cannot be checked here, or None when they can."""
    if os.geteuid() != 0:
        return "nft -c in a network namespace needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    if NFT is None:
        return "the nft command is not installed"
    if UNSHARE is None:
        return "the unshare command (util-linux) is not installed"
    probe = subprocess.run([UNSHARE, "--net", NFT, "list", "ruleset"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return "cannot run nft in a new network namespace: %s" % (probe.stderr.strip() or probe.stdout.strip())
    return None


_REASON = netns_unavailable_reason()
# Wall time of every nft -c run, for the curious (pytest -s prints the slow ones).
NFT_TIMINGS = []


def run_in_netns(args, input_text=None, timeout=120):
    """Run argv inside a fresh, private network namespace."""
    return subprocess.run([UNSHARE, "--net", "--"] + list(args), capture_output=True, text=True, check=False,
                          input=input_text, timeout=timeout)


def nft_check_text(text):
    """(returncode, stderr, seconds) of ``nft -c -f`` on text, in a throwaway network namespace."""
    with tempfile.NamedTemporaryFile("w", prefix="killswitch-", suffix=".nft", delete=False) as handle:
        handle.write(text)
        path = handle.name
    try:
        start = time.monotonic()
        proc = run_in_netns([NFT, "-c", "-f", path])
        elapsed = time.monotonic() - start
    finally:
        os.unlink(path)
    NFT_TIMINGS.append(elapsed)
    return proc.returncode, (proc.stderr or proc.stdout).strip(), elapsed


def assert_nft_accepts(text):
    """Fail with nft's own error when it refuses the ruleset; returns the nft -c wall time."""
    if _REASON:
        pytest.skip(_REASON)
    rc, err, elapsed = nft_check_text(text)
    assert rc == 0, "nft -c rejected the rendered ruleset:\n%s\n--- ruleset (first 4000 chars) ---\n%s" % (err, text[:4000])
    return elapsed


def load_and_list(text, table="killswitch"):
    """Load text for real in a private network namespace and return ``nft -j list table`` as JSON."""
    if _REASON:
        pytest.skip(_REASON)
    with tempfile.NamedTemporaryFile("w", prefix="killswitch-", suffix=".nft", delete=False) as handle:
        handle.write(text)
        path = handle.name
    try:
        proc = run_in_netns(["sh", "-c", '"$1" -f "$2" && "$1" -j list table inet "$3"', "sh", NFT, path, table])
    finally:
        os.unlink(path)
    assert proc.returncode == 0, "loading the ruleset in a network namespace failed: %s" % proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def nft_accepts():
    """The ``assert_nft_accepts(text)`` helper; skips the test when nft cannot run in a netns.

    Session-scoped so that hypothesis ``@given`` tests may use it.
    """
    if _REASON:
        pytest.skip(_REASON)
    return assert_nft_accepts


@pytest.fixture(scope="session")
def netns_reason():
    return _REASON


@pytest.fixture(scope="session")
def nft_binary():
    if _REASON:
        pytest.skip(_REASON)
    return NFT


@pytest.fixture(scope="session")
def unshare_binary():
    if _REASON:
        pytest.skip(_REASON)
    return UNSHARE


def pytest_terminal_summary(terminalreporter):
    if NFT_TIMINGS:
        terminalreporter.write_line("nft -c in a netns: %d runs, %.2f s in total, slowest %.2f s"
                                    % (len(NFT_TIMINGS), sum(NFT_TIMINGS), max(NFT_TIMINGS)))


@pytest.fixture(scope="session")
def nft_load():
    """The ``load_and_list(text, table)`` helper: real load in a netns, returns ``nft -j`` JSON."""
    if _REASON:
        pytest.skip(_REASON)
    return load_and_list


@pytest.fixture(scope="session")
def nft_accepts_or_none():
    """``assert_nft_accepts`` when nft can run in a netns here, else None (for tests that still have
    pure-Python checks to make without root)."""
    return None if _REASON else assert_nft_accepts


# --------------------------------------------------------------------------- iptables variants in a netns

IPTABLES_VARIANTS = ("nft", "legacy")
_IPTABLES_TOOLS = tuple("%s%s" % (family, suffix) for family in ("iptables", "ip6tables")
                        for suffix in ("", "-save", "-restore"))


def iptables_unavailable_reason(variant):
    """Why the iptables-<variant> tools cannot run in a network namespace here, or None."""
    if os.geteuid() != 0:
        return "iptables in a network namespace needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    if UNSHARE is None:
        return "the unshare command (util-linux) is not installed"
    for tool in _IPTABLES_TOOLS:
        name = tool.replace("tables", "tables-" + variant, 1)
        if not os.path.exists("/usr/sbin/" + name):
            return "/usr/sbin/%s is not installed" % name
    probe = subprocess.run([UNSHARE, "--net", "/usr/sbin/iptables-%s-restore" % variant, "--test"],
                           input="*filter\nCOMMIT\n", capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return "iptables-%s-restore does not work in a network namespace: %s" % (variant, probe.stderr.strip())
    return None


_NETNS_REASON = (None if os.geteuid() == 0 and UNSHARE else
                 "network namespaces need root and the unshare command (util-linux)")
_IPTABLES_REASONS = {variant: iptables_unavailable_reason(variant) for variant in IPTABLES_VARIANTS}


@pytest.fixture(scope="session")
def iptables_path(tmp_path_factory):
    """``path(variant)``: a PATH with that variant's iptables, ip6tables (-save, -restore) first, as the host's
    alternatives would select them; skips the test (with the reason) when the variant cannot run here.

    The payload script keeps PATH's order (it only appends /usr/sbin and friends), so ``sh PAYLOAD`` under
    this PATH uses the variant under test; ``test_render_iptables.py`` proves it.
    """
    root = tmp_path_factory.mktemp("iptables-variants")

    def path(variant):
        if _IPTABLES_REASONS[variant]:
            pytest.skip(_IPTABLES_REASONS[variant])
        directory = root / variant
        if not directory.exists():
            directory.mkdir()
            for tool in _IPTABLES_TOOLS:
                (directory / tool).symlink_to("/usr/sbin/" + tool.replace("tables", "tables-" + variant, 1))
        return "%s:%s" % (directory, os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
    return path


# --------------------------------------------------------------------------- real packets in a netns

PACKET_PROBE = r'''
import errno, json, socket, struct, sys
results = {}
for probe in json.loads(sys.argv[1]):
    name, family, sport, host, port = probe[:5]
    kind = probe[5] if len(probe) > 5 else "udp"
    scope = 0
    if "%" in host:
        host, device = host.split("%")
        scope = socket.if_nametoindex(device)
    if kind == "udp":
        s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if sport:
            s.bind(("::" if family == 6 else "0.0.0.0", sport))
        data = b"probe"
    else:  # "nd": an ICMPv6 neighbour solicitation for host, hop limit 255; "nd64": the same with hop limit 64
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        hops = 255 if kind == "nd" else 64
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, hops)
        data = struct.pack("!BBHI", 135, 0, 0, 0) + socket.inet_pton(socket.AF_INET6, host)
        port = 0
    try:
        s.sendto(data, (host, port, 0, scope) if family == 6 else (host, port))
        results[name] = "sent"
    except OSError as exc:
        results[name] = "refused" if exc.errno == errno.EPERM else "error %s" % exc
    s.close()
print(json.dumps(results))
'''
# uplink "up0" (default routes) and a stand-in tunnel "wg0" (10.99.0.0/16), both veth pairs; "$@" loads the
# payload (nothing for the positive control); the probes run with the tunnel up, then after it is deleted.
PACKET_SETUP = r'''
set -e
ip link set lo up
ip link add up0 type veth peer name up0p
ip link add wg0 type veth peer name wg0p
for dev in up0 up0p wg0 wg0p; do ip link set "$dev" up; done
ip addr add 192.0.2.2/24 dev up0
ip -6 addr add 2001:db8:1::2/64 dev up0 nodad
ip route add default via 192.0.2.1 dev up0
ip -6 route add default via 2001:db8:1::1 dev up0
ip addr add 10.99.0.2/16 dev wg0
if [ $# -gt 0 ]; then "$@"; fi
"$PY" -c "$PROBE" "$PROBES"
ip link del wg0
"$PY" -c "$PROBE" "$PROBES"
'''


def probe_packets(load, probes, path=None):
    """Send one packet per probe ``(name, family, source port, destination, port[, kind])`` in a fresh
    network namespace after running ``load`` (an argv; empty for the positive control).

    Returns ({name: "sent"|"refused"} with the tunnel up, the same after the tunnel is deleted).
    """
    if _NETNS_REASON:
        pytest.skip(_NETNS_REASON)
    env = dict(os.environ, PY=sys.executable, PROBE=PACKET_PROBE, PROBES=json.dumps(probes))
    if path:
        env["PATH"] = path
    proc = subprocess.run([UNSHARE, "--net", "--", "sh", "-c", PACKET_SETUP, "sh"] + list(load), capture_output=True,
                          text=True, check=False, env=env, timeout=60)
    if proc.returncode != 0 and "veth" in proc.stderr:
        pytest.skip("cannot create veth interfaces here: %s" % proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr
    up, down = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return up, down


def probe_with_control(load, probes, path=None):
    """``probe_packets`` with the payload, after the positive control: the same probes with no payload
    must all get out (so a "refused" below is the kill switch's doing, not the lab's)."""
    control_up, control_down = probe_packets([], probes, path)
    expected = {probe[0]: "sent" for probe in probes}
    assert control_up == expected and control_down == expected, "positive control failed: %s %s" % (
        control_up, control_down)
    return probe_packets(load, probes, path)


@pytest.fixture(scope="session")
def packets():
    """The ``probe_with_control(load_argv, probes, path=None)`` helper; skips when netns tests cannot run."""
    if _NETNS_REASON:
        pytest.skip(_NETNS_REASON)
    return probe_with_control
