# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared setup for the unit tests.

* Makes ``ansible_collections.netlock.killswitch`` importable from a plain checkout: the
  repository root is the collection root, so ``.collections/ansible_collections/netlock/killswitch``
  (gitignored) is a symlink to ``../../..``; it is created here when missing (fresh clone, CI).
* ``nft_accepts``: runs ``nft -c -f`` inside a throwaway network namespace, so checking a
  ruleset never touches the host's tables.  Skips (with the reason) when not root or when
  ``unshare``/``nft`` are missing; under ``CI=true`` that skip is a failure (``strict_ci.py``).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
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

# Hooks: under CI=true a skipped test fails (imported by the collection's name, as ansible-test units loads it too).
from ansible_collections.netlock.killswitch.tests.unit.strict_ci import (  # noqa: E402,F401 pylint: disable=wrong-import-position,unused-import
    pytest_configure, pytest_make_collect_report, pytest_runtest_makereport)


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


# --------------------------------------------------------------------------- many payloads, checked in batches

def _split_failures(check, fragments):
    """Bisect a failed batch down to the fragments that fail on their own: [(label, error)]."""
    ok, error = check([text for _label, text in fragments])
    if ok:
        return []
    if len(fragments) == 1:
        return [(fragments[0][0], error)]
    middle = len(fragments) // 2
    return _split_failures(check, fragments[:middle]) + _split_failures(check, fragments[middle:])


_NFT_TABLE = re.compile(r"(?m)^table inet (\S+)$")
_IPTABLES_BODY = re.compile(r"(declare|rules)_v([46])\(\) \{\ncat <<'NETLOCK_EOF'\n(.*?)\nNETLOCK_EOF\n\}", re.S)


class PayloadBatches:
    """Checks many rendered payloads with their backend's own checker, in batches, in throwaway network
    namespaces, while the caller goes on producing them (one background worker per checker).

    nftables: many tables in one ``nft -c -f`` (each payload's table renamed, but the first payload of every
    table name keeps its name, so every name is checked as written).  iptables: the declarations and rules of
    many payloads in one ``iptables-restore --test`` and ``ip6tables-restore --test`` per variant (chains
    renamed the same way), and ``sh PAYLOAD check`` for the first payloads of each variant, so the script
    itself is run too.  A failed batch is bisected down to the payloads that fail on their own.
    """

    NFT_BATCH = 25        # nft -c grows worse than linearly with the number of base chains in one batch
    IPTABLES_BATCH = 400
    SCRIPT_CHECKS = 12    # payload scripts run whole (``sh PAYLOAD check``) per variant

    def __init__(self, workdir, variant_paths):
        from concurrent.futures import ThreadPoolExecutor

        self.workdir = Path(workdir)
        self.variant_paths = variant_paths  # iptables variant -> PATH with its tools first
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.pending = {"nftables": [], "iptables": []}
        self.futures = []
        self.names = {"nftables": set(), "iptables": set()}
        self.counter = itertools.count()
        self.scripts = []
        self.checked = {"nftables": 0, "iptables": 0}
        self.seconds = {"nftables": 0.0, "iptables": 0.0}

    # ------------------------------------------------------------ adding

    def add(self, backend, label, payload):
        """Queue one payload (``label`` says where it came from, for the failure report)."""
        if backend == "nftables":
            self.pending[backend].append((label, self._nft_fragment(payload)))
            size = self.NFT_BATCH
        else:
            self.pending[backend].append((label, self._iptables_fragment(payload)))
            if len(self.scripts) < self.SCRIPT_CHECKS:
                self.scripts.append((label, payload))
            size = self.IPTABLES_BATCH
        self.checked[backend] += 1
        if len(self.pending[backend]) >= size:
            self._submit(backend)

    def _rename(self, backend, name):
        """The name to check this payload's table under: its own the first time, else a fresh one."""
        if name not in self.names[backend]:
            self.names[backend].add(name)
            return name
        return "zzbatch%d" % next(self.counter)

    def _nft_fragment(self, payload):
        name = _NFT_TABLE.search(payload).group(1)
        new = self._rename("nftables", name)
        if new == name:
            return payload
        return re.sub(r"(?m)^((?:delete )?table inet )%s( \{)?$" % re.escape(name), r"\g<1>%s\g<2>" % new, payload)

    def _iptables_fragment(self, payload):
        bodies = {(kind, int(family)): text for kind, family, text in _IPTABLES_BODY.findall(payload)}
        declared = bodies[("declare", 4)].splitlines()[1:]
        name = declared[0][1:].split()[0].rsplit("-", 1)[0] if declared else None
        new = self._rename("iptables", name) if name else name
        fragment = {}
        for family in (4, 6):
            declare = "\n".join(bodies[("declare", family)].splitlines()[1:])  # without "*filter"
            rules = bodies[("rules", family)]
            if new != name:
                pattern = re.compile(r"(?m)(?<=[ :])%s-(in|out|fwd)(?= |$)" % re.escape(name))
                declare, rules = pattern.sub(new + r"-\1", declare), pattern.sub(new + r"-\1", rules)
            fragment[family] = (declare, rules)
        return fragment

    # ------------------------------------------------------------ checking

    def _submit(self, backend):
        batch, self.pending[backend] = self.pending[backend], []
        if batch:
            self.futures.append(self.pool.submit(self._check_batch, backend, batch))

    def _check_batch(self, backend, batch):
        start = time.monotonic()
        checks = [self._nft_check] if backend == "nftables" else [
            functools.partial(self._iptables_check, variant) for variant in sorted(self.variant_paths)]
        failures = []
        for check in checks:
            failures += _split_failures(check, batch)
        self.seconds[backend] += time.monotonic() - start
        return failures

    def _file(self, suffix, text):
        path = self.workdir / ("batch-%d%s" % (next(self.counter), suffix))
        path.write_text(text)
        return path

    def _nft_check(self, texts):
        path = self._file(".nft", "".join(texts))
        try:
            proc = run_in_netns([NFT, "-c", "-f", str(path)])
        finally:
            path.unlink()
        return proc.returncode == 0, "nft -c: " + (proc.stderr or proc.stdout)[-3000:]

    def _iptables_check(self, variant, fragments):
        paths = []
        for family in (4, 6):
            lines = ["*filter"] + [fragment[family][0] for fragment in fragments if fragment[family][0]]
            lines += [fragment[family][1] for fragment in fragments] + ["COMMIT", ""]
            paths.append(self._file(".v%d" % family, "\n".join(lines)))
        script = ('/usr/sbin/iptables-%s-restore -w 10 --test "$1" && /usr/sbin/ip6tables-%s-restore -w 10 --test "$2"'
                  % (variant, variant))
        try:
            proc = run_in_netns(["sh", "-c", script, "sh"] + [str(p) for p in paths])
        finally:
            for path in paths:
                path.unlink()
        return proc.returncode == 0, "iptables-%s-restore --test: %s" % (variant, (proc.stderr or proc.stdout)[-3000:])

    def _script_checks(self):
        failures = []
        for variant, path in sorted(self.variant_paths.items()):
            files = [self._file(".sh", payload) for _label, payload in self.scripts]
            loop = 'for f in "$@"; do sh "$f" check >/dev/null 2>&1 || echo "FAILED $f"; done'
            proc = subprocess.run([UNSHARE, "--net", "--", "sh", "-c", loop, "sh"] + [str(f) for f in files],
                                  capture_output=True, text=True, check=False, timeout=300, env=dict(os.environ, PATH=path))
            for (label, _payload), file in zip(self.scripts, files):
                if "FAILED %s" % file in proc.stdout or proc.returncode != 0:
                    failures.append((label, "sh PAYLOAD check failed on iptables-%s: %s" % (variant, proc.stderr)))
                file.unlink()
        return failures

    def finish(self):
        """Check what is left, wait for every batch; returns [(label, error)] for every payload refused."""
        for backend in self.pending:
            self._submit(backend)
        failures = []
        for future in self.futures:
            failures += future.result()
        self.pool.shutdown()
        if self.scripts:
            failures += self._script_checks()
        return failures


@pytest.fixture(scope="session")
def payload_batches(tmp_path_factory, iptables_path):
    """``PayloadBatches`` factory (both iptables variants); skips when nft or iptables cannot run in a netns."""
    if _REASON:
        pytest.skip(_REASON)
    paths = {variant: iptables_path(variant) for variant in IPTABLES_VARIANTS}
    return lambda: PayloadBatches(tmp_path_factory.mktemp("batches"), paths)
