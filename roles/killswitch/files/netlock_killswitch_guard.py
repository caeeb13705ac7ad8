# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""netlock.killswitch guard: puts the kill switch back when anything changed it, holds the fence.

Two sub-commands (see docs/design/drift.md), configuration in a JSON file (``--config``):

``check [--from timer|watch]``
    Under the rollback lock: compares the persisted ruleset file, the live main rules, the boot unit, the
    fence and the watcher/timer with what the expected listing says is in force, repairs what drifted
    (never deleting anything), logs one line per drift event, counts it in the state file and writes the
    textfile metrics.  Exit 0 when everything is (now) in sync, 1 when a restore failed.

``cgroups``
    Fills the sets of cgroup ids of per-app exceptions in the main table now (a service's ExecStartPre runs it, so
    its new cgroup is in the set before it starts); ``check`` and ``watch`` do it too, the watcher for the fence.

``watch``
    Holds the fence: a table with ``flags owner`` loaded through libnftables over one netlink socket for
    the life of the process, so no other process can flush or delete it; reloads it when the policy in
    force changes, follows ``nft monitor`` and runs the check within milliseconds of a ruleset change (and
    every ``watch_interval`` seconds); SIGTERM/SIGINT delete the fence and exit 0.

Standard library only, Python 3.6+.  Log lines go to stdout (the journal).
"""

from __future__ import absolute_import, division, print_function

import errno
import fcntl
import json
import os
import re
import select
import signal
import subprocess
import sys
import time

__metaclass__ = type

DEFAULT_CONFIG = "/etc/netlock-killswitch/guard.json"
DEFAULTS = {
    "backend": "nftables",
    "table": "killswitch",
    "fence_table": "",
    "fence": "auto",
    "policy_dir": "/etc/netlock-killswitch/policies",
    "ruleset_path": "/etc/netlock-killswitch/ruleset.nft",
    "expected_path": "/etc/netlock-killswitch/expected-table.txt",
    "list_command": "",
    "load_command": "",
    "lock_path": "/run/netlock-killswitch/rollback/lock",
    "lock_timeout": 30,
    "boot_unit": "netlock-killswitch.service",
    "watch_unit": "netlock-killswitch-watch.service",
    "timer_unit": "netlock-killswitch-guard.timer",
    "metrics_path": "/var/lib/prometheus/node-exporter/netlock_killswitch.prom",
    "state_path": "/var/lib/netlock-killswitch/guard-state.json",
    "watch_interval": 5,
}
FENCE_MODES = ("auto", "required", "off")
BACKENDS = ("nftables", "iptables")
KINDS = ("table_missing", "rules_changed", "file_changed", "boot_unit", "fence_missing", "watcher_stopped",
         "timer_stopped")
DIGEST = re.compile(r"netlock\.killswitch ([0-9a-f]{16})(?![0-9a-f])")
CHAINS = {"in": "input", "out": "output", "fwd": "forward"}
ACTIVE = ("active", "activating", "reloading")
SUMMARY_LIMIT = 300
DEBOUNCE = 0.02      # seconds between the first nft monitor line of a burst and the check
POLL = 0.2           # seconds between two looks at the expected listing
LIBNFTABLES = "libnftables.so.1"
# Per-app exceptions (docs/design/app-exceptions.md): a set of cgroup ids, named by its comment, filled by us
# with the id of that cgroup while it exists.  nft names a cgroup by its path below NFT_CGROUP_DIR.
CGROUP_COMMENT = "cgroup "
NFT_CGROUP_DIR = "/sys/fs/cgroup"
CGROUP_TYPEOF = "typeof socket cgroupv2"  # how such a set shows in the listing
MOUNTINFO = "/proc/self/mountinfo"
FENCE_CGROUP_WAIT = 5  # seconds the cgroups command waits for the watcher to fill the fence's sets (its interval)


class ConfigError(Exception):
    pass


class LockBusy(Exception):
    pass


# --------------------------------------------------------------------------- configuration

def parse_config(text):
    """The configuration from guard.json text, with the defaults filled in; ConfigError when invalid."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError("not JSON: %s" % exc) from exc
    if not isinstance(raw, dict):
        raise ConfigError("not a JSON object")
    config = dict(DEFAULTS)
    # Unknown keys are left out, not refused: a newer role's extra key must not leave the host unguarded.
    config.update((key, value) for key, value in raw.items() if key in DEFAULTS)
    if config["backend"] not in BACKENDS:
        raise ConfigError("backend must be one of %s, not %r" % ("/".join(BACKENDS), config["backend"]))
    if config["fence"] not in FENCE_MODES:
        raise ConfigError("fence must be one of %s, not %r" % ("/".join(FENCE_MODES), config["fence"]))
    if not config["fence_table"]:
        config["fence_table"] = "%s_fence" % config["table"]
    for key in ("list_command", "load_command"):
        if not isinstance(config[key], str) or not config[key].strip():
            raise ConfigError("%s is required" % key)
    for key in ("watch_interval", "lock_timeout"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError("%s must be a positive number, not %r" % (key, value))
    for key in DEFAULTS:
        if key not in ("watch_interval", "lock_timeout") and not isinstance(config[key], str):
            raise ConfigError("%s must be a string" % key)
    return config


def load_config(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_config(handle.read())
    except (IOError, OSError) as exc:
        raise ConfigError("cannot read %s: %s" % (path, exc.strerror or exc)) from exc


# --------------------------------------------------------------------------- pure helpers

def find_digest(listing):
    """The policy digest (16 hex) carried by a listing (``netlock.killswitch <digest>``), or None."""
    match = DIGEST.search(listing or "")
    return match.group(1) if match else None


def same_listing(live, expected):
    """Compared like the old shell guard's ``[ "$live" = "$expected" ]`` (command substitution strips
    trailing newlines)."""
    return live.rstrip("\n") == expected.rstrip("\n")


def listing_empty(listing):
    """True when a listing holds nothing but blank and comment lines (the iptables listing's ``# iptables``
    headers stay when the chains are gone)."""
    return all(not line.strip() or line.lstrip().startswith("#") for line in listing.splitlines())


def cgroup2_mount(mountinfo):
    """The mount point of the cgroup v2 hierarchy in /proc/self/mountinfo text, or None."""
    for line in mountinfo.splitlines():
        fields, _sep, rest = line.partition(" - ")
        if rest.split(" ")[:1] == ["cgroup2"] and len(fields.split(" ")) > 4:
            return fields.split(" ")[4].replace("\\040", " ")
    return None


def cgroup_sets(document, table):
    """{set name: (cgroup path, [members as nft lists them])} of the cgroup sets in ``nft -j list table`` JSON."""
    sets = {}
    for item in (document or {}).get("nftables", []):
        found = item.get("set") if isinstance(item, dict) else None
        if (isinstance(found, dict) and found.get("table") == table and found.get("type") == "cgroupsv2"
                and str(found.get("comment", "")).startswith(CGROUP_COMMENT)):
            sets[found["name"]] = (found["comment"][len(CGROUP_COMMENT):], [str(e) for e in found.get("elem", [])])
    return sets


def cgroup_id(member, nft_dir=NFT_CGROUP_DIR):
    """The cgroup id of a set member as nft lists it: a number (a cgroup that is gone) or a path, or None."""
    if member.isdigit():
        return int(member)
    try:
        return os.stat(os.path.join(nft_dir, member)).st_ino  # a cgroup v2 directory's inode is its id
    except OSError:
        return None


def cgroup_commands(document, table, mount, nft_dir=NFT_CGROUP_DIR):
    """{set name: nft commands} that make each cgroup set hold exactly the id of its cgroup while that exists
    (and nothing when it does not): sets already right are left out, so a refresh makes no netlink event."""
    commands = {}
    for name, (path, members) in sorted(cgroup_sets(document, table).items()):
        wanted = []
        if mount and os.path.isdir(os.path.join(mount, path)):
            wanted = [os.path.relpath(os.path.join(mount, path), nft_dir)]
        # A member whose id cannot be told (-1) never counts as the wanted one (-2): it is flushed.
        have = sorted(cgroup_id(member, nft_dir) or -1 for member in members)
        if have == sorted(cgroup_id(member, nft_dir) or -2 for member in wanted):
            continue
        text = "flush set inet %s %s\n" % (table, name)
        if wanted:
            text += 'add element inet %s %s { "%s" }\n' % (table, name, wanted[0])
        commands[name] = text
    return commands


def table_json(nft, table, terse=False):
    """``nft -j list table`` as a document, or None; ``terse`` leaves set elements out (cheap with a big set)."""
    rc, out, _err = run([nft, "-j"] + (["-t"] if terse else []) + ["list", "table", "inet", table])
    if rc != 0:
        return None
    try:
        return json.loads(out)
    except ValueError:
        return None


def cgroup_plan(nft, table, document=None):
    """cgroup_commands for ``table`` as it is live (listed with the nft program unless ``document`` is that
    listing, with its set elements), or None without the table."""
    document = document or table_json(nft, table)
    if document is None:
        return None
    try:
        with open(MOUNTINFO, encoding="utf-8") as handle:
            mount = cgroup2_mount(handle.read())
    except (IOError, OSError):
        mount = None
    return cgroup_commands(document, table, mount)


def wait_for_cgroups(plan, timeout=FENCE_CGROUP_WAIT, interval=0.05, clock=time.monotonic, sleep=time.sleep):
    """Wait until ``plan()`` (cgroup_plan of the fence) has nothing left to do: only the watcher may fill the fence's
    sets, and a packet must pass both tables, so a service's ExecStartPre returns once the fence admits its new
    cgroup too.  True when it does or there is no fence; False after ``timeout`` seconds."""
    deadline = clock() + timeout
    while True:
        if not plan():
            return True
        if clock() >= deadline:
            return False
        sleep(interval)


def refresh_cgroups(nft, table, apply, document=None):
    """Fill the cgroup sets of ``table`` (listed with the nft program unless ``document`` is that listing);
    ``apply(text)`` loads a command, returns None or the error.  Returns the errors (a cgroup that vanished
    meanwhile: the next check tries again)."""
    errors = []
    for name, text in (cgroup_plan(nft, table, document) or {}).items():
        error = apply(text)
        if error:
            errors.append("%s %s: %s" % (table, name, one_line(error)))
    return errors


def nft_file_applier(nft):
    def apply(text):
        import tempfile  # only when a cgroup set needs filling

        with tempfile.NamedTemporaryFile("w", suffix=".nft") as handle:
            handle.write(text)
            handle.flush()
            rc, out, err = run([nft, "-f", handle.name])
        return None if rc == 0 else (err or out or "nft returned %d" % rc)
    return apply


def one_line(text, limit=SUMMARY_LIMIT):
    """Whitespace collapsed to single spaces, at most ``limit`` characters."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit - 3].rstrip() + "..."
    return text


def diff_summary(expected, live, limit=SUMMARY_LIMIT, strip=True):
    """The changed lines of a unified diff (expected -> live), ' | '-separated, on one bounded line; ``strip``
    leaves trailing newlines out (as the listing comparison does)."""
    import difflib  # only when something drifted: not on every check's start-up

    changed = []
    if strip:
        expected, live = expected.rstrip("\n"), live.rstrip("\n")
    for line in difflib.unified_diff(expected.splitlines(), live.splitlines(), lineterm="", n=0):
        if line.startswith(("---", "+++", "@@")):
            continue
        changed.append(line[0] + " " + " ".join(line[1:].split()))
    return one_line(" | ".join(changed) or "no line differs (whitespace only)", limit)


def drift_line(kind, config, what, restored, why):
    """The journal line of one drift event (docs/design/drift.md)."""
    return "netlock-killswitch drift kind=%s table=%s backend=%s: %s; %s: %s" % (
        kind, config["table"], config["backend"], one_line(what, 400), "restored" if restored else "not restored",
        one_line(why, 400))


def _nfproto(expr):
    """'ipv4'/'ipv6' when the expression is a ``meta nfproto`` match, else None."""
    match = expr.get("match") if isinstance(expr, dict) else None
    if not isinstance(match, dict) or match.get("op", "==") != "==":
        return None
    left = match.get("left")
    if isinstance(left, dict) and isinstance(left.get("meta"), dict) and left["meta"].get("key") == "nfproto":
        right = match.get("right")
        return right if right in ("ipv4", "ipv6") else None
    return None


def nft_drops(document, table):
    """{(chain, family): packets} of the counters on reject/drop rules in ``nft -j list table`` JSON.

    family is the rule's ``meta nfproto`` match (ipv4/ipv6), or ``inet`` for a rule without one.
    """
    drops = {}
    for item in (document or {}).get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict) or rule.get("table") != table:
            continue
        exprs = rule.get("expr") or []
        verdicts = [expr for expr in exprs if isinstance(expr, dict) and ("reject" in expr or "drop" in expr)]
        counters = [expr["counter"] for expr in exprs if isinstance(expr, dict) and isinstance(expr.get("counter"), dict)]
        if not verdicts or not counters:
            continue
        family = "inet"
        for expr in exprs:
            family = _nfproto(expr) or family
        key = (rule.get("chain", ""), family)
        drops[key] = drops.get(key, 0) + sum(int(counter.get("packets", 0)) for counter in counters)
    return drops


def iptables_drops(listing, table, family):
    """{(chain, family): packets} of the REJECT/DROP rules of our chains in ``iptables -L -v -x -n`` text
    (one chain or the whole table); chain is input/output/forward."""
    drops = {}
    chain = None
    for line in listing.splitlines():
        fields = line.split()
        if line.startswith("Chain "):
            name = fields[1] if len(fields) > 1 else ""
            prefix, dash, suffix = name.rpartition("-")
            chain = CHAINS.get(suffix) if dash and prefix == table else None
            continue
        if chain is None or len(fields) < 3 or not fields[0].isdigit():
            continue
        if fields[2] in ("REJECT", "DROP"):
            key = (chain, family)
            drops[key] = drops.get(key, 0) + int(fields[0])
    return drops


def _label(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels):
    return "{%s}" % ",".join('%s="%s"' % (name, _label(labels[name])) for name in sorted(labels))


def render_metrics(config, state, now, table_present, in_sync, fence_present, drops, digest):
    """The node_exporter textfile (Prometheus text format 0.0.4)."""
    lines = []

    def family(name, kind, text, samples):
        lines.append("# HELP %s %s" % (name, text))
        lines.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            lines.append("%s%s %s" % (name, labels, value))

    backend, table = config["backend"], config["table"]
    family("netlock_killswitch_last_check_timestamp_seconds", "gauge", "Unix time of the last guard check.",
           [("", "%.3f" % now)])
    family("netlock_killswitch_table_present", "gauge", "1 when the kill switch rules are loaded.",
           [(_labels(backend=backend, table=table), int(bool(table_present)))])
    family("netlock_killswitch_in_sync", "gauge", "1 when the main rules equal the expected listing.",
           [("", int(bool(in_sync)))])
    family("netlock_killswitch_fence_present", "gauge", "1 when the owned fence table is loaded.",
           [("", int(bool(fence_present)))])
    events = state.get("drift_events", {})
    family("netlock_killswitch_drift_events_total", "counter", "Drift events seen by the guard, by kind.",
           [(_labels(kind=kind), int(events.get(kind, 0))) for kind in KINDS])
    family("netlock_killswitch_restores_total", "counter", "Drift events the guard repaired.",
           [("", int(state.get("restores", 0)))])
    family("netlock_killswitch_dropped_packets_total", "counter",
           "Packets refused by the kill switch's final reject/drop rules.",
           [(_labels(chain=chain, family=fam), drops[(chain, fam)]) for chain, fam in sorted(drops)])
    family("netlock_killswitch_policy_info", "gauge", "The policy in force.",
           [(_labels(digest=digest or "", backend=backend), 1)])
    return "\n".join(lines) + "\n"


def new_state():
    return {"drift_events": dict((kind, 0) for kind in KINDS), "restores": 0}


def parse_state(text):
    """The counters from the state file text; a damaged file starts from zero."""
    state = new_state()
    try:
        raw = json.loads(text)
    except ValueError:
        return state
    if isinstance(raw, dict):
        for kind, count in (raw.get("drift_events") or {}).items():
            if isinstance(count, int) and count >= 0:
                state["drift_events"][kind] = count
        if isinstance(raw.get("restores"), int) and raw["restores"] >= 0:
            state["restores"] = raw["restores"]
        for key, value in raw.items():
            if key not in state:
                state[key] = value
    return state


def count_event(state, kind, restored):
    state["drift_events"][kind] = state["drift_events"].get(kind, 0) + 1
    if restored:
        state["restores"] = state.get("restores", 0) + 1
    return state


# --------------------------------------------------------------------------- I/O helpers

def log(message):
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def atomic_write(path, data, mode=None):
    """Replace path with data (bytes): a temporary file beside it, then os.replace.  Keeps the existing
    mode unless ``mode`` is given (0600 for a new file)."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except OSError:
            mode = 0o600
    # Not tempfile.mkstemp: importing tempfile costs every check more CPU than the write itself.
    temp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    try:
        os.unlink(temp)  # left by a process of the same pid that died mid-write
    except OSError:
        pass
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def read_bytes(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except (IOError, OSError):
        return None


def run(argv, timeout=60):
    """(returncode, stdout, stderr) as text; 127 when the program is missing."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except OSError as exc:
        return 127, "", "%s: %s" % (argv[0], exc.strerror)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return 124, out.decode("utf-8", "replace"), "timed out after %ss" % timeout
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def shell(command):
    return run(["/bin/sh", "-c", command])


def which(name):
    """The program on PATH, then in the sbin and bin directories (a unit's PATH may lack sbin)."""
    path = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    for directory in path + ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


class Lock:
    """flock on the rollback protocol's lock file, waiting up to ``timeout`` seconds (stop() aborts)."""

    def __init__(self, path, timeout, stop=None):
        self.path, self.timeout, self.stop, self.fd = path, timeout, stop, None

    def __enter__(self):
        directory = os.path.dirname(self.path)
        if directory and not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except (IOError, OSError) as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline or (self.stop and self.stop()):
                os.close(self.fd)
                self.fd = None
                raise LockBusy("%s is held by another process" % self.path)
            time.sleep(0.02)

    def __exit__(self, *exc_info):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def read_state(path):
    data = read_bytes(path)
    return parse_state(data.decode("utf-8", "replace")) if data is not None else new_state()


def write_state(path, state):
    atomic_write(path, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode(), 0o644)


# --------------------------------------------------------------------------- check

class Checker:
    """One guard check.  ``source`` is 'timer' or 'watch'; ``reload_fence(digest)`` (watch only) loads the
    fence in-process and returns None or the error; ``fence_unavailable`` (watch only) is why there is none."""

    def __init__(self, config, source="timer", reload_fence=None, fence_unavailable=None, stop=None):
        self.config = config
        self.source = source
        self.reload_fence = reload_fence
        self.fence_unavailable = fence_unavailable
        self.stop = stop
        self.events = []      # (kind, restored)
        self.failed = False
        self.nft = which("nft")

    # ---------------------------------------------------------------- helpers

    def event(self, kind, what, restored, why):
        log(drift_line(kind, self.config, what, restored, why))
        self.events.append((kind, restored))
        if not restored:
            self.failed = True

    def systemctl(self, *args):
        return run(["systemctl"] + list(args))

    def policy_file(self, digest, name):
        return os.path.join(self.config["policy_dir"], digest, name)

    def fence_present(self):
        if not self.nft:
            return False
        return run([self.nft, "list", "table", "inet", self.config["fence_table"]])[0] == 0

    # ---------------------------------------------------------------- parts

    def check_file(self, digest):
        stored = read_bytes(self.policy_file(digest, "ruleset"))
        if stored is None:
            return
        path = self.config["ruleset_path"]
        current = read_bytes(path)
        if current == stored:
            return
        if current is None:
            what = "%s is missing" % path
        else:
            what = "%s differs from policy %s: %s" % (path, digest, diff_summary(
                stored.decode("utf-8", "replace"), current.decode("utf-8", "replace"), 200, strip=False))
        try:
            atomic_write(path, stored, None if current is not None else 0o600)
        except (IOError, OSError) as exc:
            self.event("file_changed", what, False, "cannot write %s: %s" % (path, exc))
            return
        self.event("file_changed", what, True, "rewrote %s from %s" % (path, self.policy_file(digest, "ruleset")))

    def check_table(self, expected):
        """Returns (present, in_sync) after any repair."""
        rc, live, err = shell(self.config["list_command"])
        if rc == 0 and same_listing(live, expected):
            return True, True
        if rc != 0 or listing_empty(live):
            kind = "table_missing"
            what = "%s rules %s are missing" % (self.config["backend"], self.config["table"])
            if rc != 0:
                what += " (list command exited %d%s)" % (rc, ": " + err.strip() if err.strip() else "")
        else:
            kind = "rules_changed"
            what = "%s rules %s changed: %s" % (self.config["backend"], self.config["table"], diff_summary(expected, live))
        load_rc, out, load_err = shell(self.config["load_command"])
        if load_rc != 0:
            self.event(kind, what, False, "load command exited %d: %s" % (load_rc, (load_err or out).strip()))
        else:
            rc, live, err = shell(self.config["list_command"])
            if rc == 0 and same_listing(live, expected):
                self.event(kind, what, True, "reloaded %s" % self.config["ruleset_path"])
                return True, True
            self.event(kind, what, False, "reloaded %s but the rules still differ: %s" % (
                self.config["ruleset_path"], diff_summary(expected, live)))
        rc, live, err = shell(self.config["list_command"])
        return rc == 0 and not listing_empty(live), rc == 0 and same_listing(live, expected)

    def check_boot_unit(self):
        unit = self.config["boot_unit"]
        rc, out, err = self.systemctl("is-enabled", unit)
        state = out.strip() or err.strip() or "rc %d" % rc
        if state == "enabled":
            return
        what = "%s is %s" % (unit, state)
        rc, out, err = self.systemctl("enable", unit)
        if rc != 0:
            self.event("boot_unit", what, False, "systemctl enable failed: %s" % (err or out).strip())
            return
        rc, out, err = self.systemctl("start", unit)
        if rc != 0:
            self.event("boot_unit", what, False, "enabled, but systemctl start failed: %s" % (err or out).strip())
            return
        self.event("boot_unit", what, True, "enabled and started %s" % unit)

    def check_fence(self, digest):
        """Returns whether the fence is present (after any repair)."""
        config = self.config
        if config["fence"] == "off":
            return self.fence_present()
        if self.source == "watch" and self.fence_unavailable:
            return False
        if self.source == "timer" and config["fence"] == "auto" and self.fence_unavailable:
            return self.fence_present()  # the watcher said why (once, in its log); auto does without
        payload = self.policy_file(digest, "fence.nft")
        if not os.path.exists(payload):
            return self.fence_present()
        if not self.nft:
            if config["fence"] == "required":
                self.event("fence_missing", "fence %s: nft is not installed" % config["fence_table"], False,
                           "cannot list the fence without nft")
            return False
        if self.fence_present():
            return True
        what = "fence table inet %s is missing" % config["fence_table"]
        required = config["fence"] == "required"
        if self.source == "watch" and self.reload_fence:
            error = self.reload_fence(digest)
            if error:
                self.event_soft("fence_missing", what, "load failed: %s" % error, required)
                return False
            self.event("fence_missing", what, True, "loaded %s" % payload)
            return True
        # --no-block: never wait on a job that a stop of the guard's own units may hold up (a deadlock until timeout).
        rc, out, err = self.systemctl("start", config["watch_unit"], "--no-block")
        if rc != 0:
            self.event_soft("fence_missing", what, "systemctl start %s failed: %s" % (
                config["watch_unit"], (err or out).strip()), required)
            return False
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if self.fence_present():
                self.event("fence_missing", what, True, "started %s, it loaded the fence" % config["watch_unit"])
                return True
            time.sleep(0.1)
        self.event_soft("fence_missing", what, "%s is running but did not load the fence (see its log)"
                        % config["watch_unit"], required)
        return False

    def event_soft(self, kind, what, why, required):
        """A failed repair that only fails the check when the fence is required."""
        failed = self.failed
        self.event(kind, what, False, why)
        if not required:
            self.failed = failed

    def check_peer(self):
        """The timer checks the watcher, the watcher checks the timer."""
        if self.source == "timer":
            unit, kind = self.config["watch_unit"], "watcher_stopped"
        else:
            unit, kind = self.config["timer_unit"], "timer_stopped"
        rc, out, err = self.systemctl("is-active", unit)
        state = out.strip() or "rc %d" % rc
        if state in ACTIVE:
            return
        # --no-block: the peer may be stopping this very unit; waiting on its start job would deadlock the stop.
        rc, out, err = self.systemctl("start", unit, "--no-block")
        if rc != 0:
            self.event(kind, "%s is %s" % (unit, state), False, "systemctl start failed: %s" % (err or out).strip())
        else:
            self.event(kind, "%s is %s" % (unit, state), True, "started %s" % unit)

    def dropped(self, document=None):
        config = self.config
        if config["backend"] == "nftables":
            if not self.nft:
                return {}
            document = document or table_json(self.nft, config["table"], terse=True)
            return nft_drops(document, config["table"]) if document else {}
        drops = {}
        for family, program in (("ipv4", "iptables"), ("ipv6", "ip6tables")):
            binary = which(program)
            if not binary:
                continue
            rc, out = run([binary, "-w", "-L", "-v", "-x", "-n"])[:2]
            if rc == 0:
                drops.update(iptables_drops(out, config["table"], family))
        return drops

    # ---------------------------------------------------------------- the whole check

    def run(self):
        """Exit status: 0 in sync (now), 1 when a restore failed."""
        config = self.config
        try:
            with Lock(config["lock_path"], config["lock_timeout"], self.stop):
                status = self.locked()
        except LockBusy as exc:
            log("netlock-killswitch guard: check skipped: %s" % exc)
            return 0
        return status

    def locked(self):
        config = self.config
        expected_bytes = read_bytes(config["expected_path"])
        if expected_bytes is None:
            self.write_metrics(False, False, self.fence_present(), {}, None)
            return 0
        expected = expected_bytes.decode("utf-8", "replace")
        digest = find_digest(expected)
        if self.source == "timer":
            self.fence_unavailable = read_state(config["state_path"]).get("fence_unavailable")
        if digest:
            self.check_file(digest)
        present, in_sync = self.check_table(expected)
        document = None
        if present and config["backend"] == "nftables" and self.nft:
            # One JSON listing serves the cgroup sets and the drop counters (a set's change leaves counters
            # alone); without set elements when the rules in force have no cgroup set to fill.
            document = table_json(self.nft, config["table"], terse=in_sync and CGROUP_TYPEOF not in expected)
            if document is not None:
                for error in refresh_cgroups(self.nft, config["table"], nft_file_applier(self.nft), document):
                    log("netlock-killswitch guard: cannot fill the cgroup set %s" % error)
        self.check_boot_unit()
        fence = self.check_fence(digest) if digest else self.fence_present()
        self.check_peer()
        if self.events:
            state = read_state(config["state_path"])
            for kind, restored in self.events:
                count_event(state, kind, restored)
            try:
                write_state(config["state_path"], state)
            except (IOError, OSError) as exc:
                log("netlock-killswitch guard: cannot write %s: %s" % (config["state_path"], exc))
        self.write_metrics(present, in_sync, fence, self.dropped(document) if present else {}, digest)
        return 1 if self.failed else 0

    def write_metrics(self, present, in_sync, fence, drops, digest):
        path = self.config["metrics_path"]
        if not path:
            return
        text = render_metrics(self.config, read_state(self.config["state_path"]), time.time(), present, in_sync,
                              fence, drops, digest)
        try:
            atomic_write(path, text.encode(), 0o644)
        except (IOError, OSError) as exc:
            log("netlock-killswitch guard: cannot write %s: %s" % (path, exc))


# --------------------------------------------------------------------------- the fence (libnftables)

def find_library(name):
    import ctypes.util

    return ctypes.util.find_library(name)


class Nft:
    """One libnftables context, kept for the life of the process: its netlink socket owns the fence."""

    def __init__(self, library=None):
        import ctypes  # only the watcher holds the fence: the timer's check never pays for ctypes

        library = library or LIBNFTABLES
        try:
            lib = ctypes.CDLL(library)
        except OSError as exc:
            found = find_library("nftables")
            if not found:
                raise RuntimeError("cannot load %s: %s" % (library, exc)) from exc
            lib = ctypes.CDLL(found)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        for name in ("nft_ctx_get_error_buffer", "nft_ctx_get_output_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        if not self.ctx:
            raise RuntimeError("nft_ctx_new failed")
        if lib.nft_ctx_buffer_output(self.ctx) != 0 or lib.nft_ctx_buffer_error(self.ctx) != 0:
            raise RuntimeError("cannot buffer libnftables output")

    def cmd(self, text):
        """None, or nft's error text."""
        rc = self.lib.nft_run_cmd_from_buffer(self.ctx, text.encode())
        self.lib.nft_ctx_get_output_buffer(self.ctx)  # drain, so the buffers do not grow
        error = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode("utf-8", "replace").strip()
        if rc != 0:
            return one_line(error or "nft returned %d" % rc, 500)
        return None


class Watcher:

    def __init__(self, config_path, config):
        self.config_path = config_path
        self.config = config
        self.nft = None
        self.unavailable = None
        self.loaded = None          # digest of the fence in force
        self.stopping = False
        self.monitor = None
        self.monitor_buffer = b""
        self.monitor_restart_at = 0.0
        self.expected_stat = None
        self.wanted = None          # digest of the policy in force (expected listing)
        self.refused = None         # (digest, fence file identity) nft refused last time
        self.pending = None         # when the debounced check is due
        self.next_check = 0.0       # when the fallback check is due

    def stop(self, signum, frame):  # pylint: disable=unused-argument
        self.stopping = True

    def should_stop(self):
        return self.stopping

    def open_fence(self):
        """None, or why there can be no fence here."""
        try:
            self.nft = Nft()
        except (RuntimeError, AttributeError, OSError) as exc:
            return str(exc)
        error = self.nft.cmd("list tables")
        if error:
            self.nft = None
            return "nf_tables: %s" % error
        probe = "%s_probe" % self.config["fence_table"]
        error = self.nft.cmd("add table inet %s { flags owner; }" % probe)
        if error:
            self.nft = None
            return "owned tables (flags owner: Linux 5.12+, nft 0.9.9+) refused: %s" % error
        self.nft.cmd("delete table inet %s" % probe)
        return None

    def record_unavailable(self):
        """Tell the timer's check why there is no fence (so fence: auto does not report it every run).  Read
        first without the lock: the timer's check may hold it while it waits for this process's fence."""
        if read_state(self.config["state_path"]).get("fence_unavailable") == self.unavailable:
            return
        try:
            with Lock(self.config["lock_path"], self.config["lock_timeout"], self.should_stop):
                state = read_state(self.config["state_path"])
                if state.get("fence_unavailable") != self.unavailable:
                    state["fence_unavailable"] = self.unavailable
                    write_state(self.config["state_path"], state)
        except (LockBusy, IOError, OSError) as exc:
            log("netlock-killswitch watch: cannot record the fence state: %s" % exc)

    def load_fence(self, digest):
        """None, or the error; the old fence stays on error."""
        if self.nft is None:
            return "no libnftables context"
        path = os.path.join(self.config["policy_dir"], digest, "fence.nft")
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (IOError, OSError) as exc:
            return "cannot read %s: %s" % (path, exc.strerror)
        error = self.nft.cmd(text)
        if error:
            return error
        if self.loaded != digest:
            log("netlock-killswitch watch: fence %s loaded for policy %s" % (self.config["fence_table"], digest))
        self.loaded = digest
        return None

    def follow_policy(self):
        """Load the fence of the policy in force (the digest in the expected listing, looked at when the file
        changed) once its fence file is there; a payload nft refused is retried only when its file changes."""
        try:
            stat = os.stat(self.config["expected_path"])
            key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = None
        if key != self.expected_stat:
            self.expected_stat = key
            data = read_bytes(self.config["expected_path"]) if key is not None else None
            self.wanted = find_digest(data.decode("utf-8", "replace")) if data else None
        if self.nft is None or not self.wanted or self.wanted == self.loaded:
            return
        try:
            stat = os.stat(os.path.join(self.config["policy_dir"], self.wanted, "fence.nft"))
        except OSError:
            return  # not in the store (yet): keep the fence in force
        attempt = (self.wanted, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if attempt == self.refused:
            return
        error = self.load_fence(self.wanted)
        if error:
            self.refused = attempt
            log("netlock-killswitch watch: cannot load the fence of policy %s, keeping %s: %s"
                % (self.wanted, self.loaded or "none", error))

    def remove_fence(self):
        if self.nft is None:
            return
        error = self.nft.cmd("delete table inet %s" % self.config["fence_table"])
        if error and "No such file" not in error:
            log("netlock-killswitch watch: cannot delete the fence: %s" % error)
        elif not error:
            log("netlock-killswitch watch: fence %s removed" % self.config["fence_table"])

    def ensure_monitor(self, now):
        if self.monitor is not None and self.monitor.poll() is None:
            return
        if self.monitor is not None:
            log("netlock-killswitch watch: nft monitor exited (%s), restarting" % self.monitor.returncode)
            self.monitor = None
            self.monitor_restart_at = now + 1.0
        if now < self.monitor_restart_at:
            return
        nft = which("nft")
        if not nft:
            return
        try:
            self.monitor = subprocess.Popen([nft, "monitor"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                            stdin=subprocess.DEVNULL)
        except OSError as exc:
            log("netlock-killswitch watch: cannot start nft monitor: %s" % exc)
            self.monitor_restart_at = now + 5.0
            return
        fcntl.fcntl(self.monitor.stdout, fcntl.F_SETFL,
                    fcntl.fcntl(self.monitor.stdout, fcntl.F_GETFL) | os.O_NONBLOCK)

    def read_monitor(self):
        """True when nft monitor printed at least one whole line."""
        try:
            data = os.read(self.monitor.stdout.fileno(), 65536)
        except (IOError, OSError) as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return False
            data = b""
        if not data:
            self.monitor.stdout.close()
            self.monitor.wait()
            return False
        self.monitor_buffer += data
        if b"\n" not in self.monitor_buffer:
            return False
        self.monitor_buffer = self.monitor_buffer.rsplit(b"\n", 1)[1]
        return True

    def check(self):
        try:
            self.config = load_config(self.config_path)
        except ConfigError as exc:
            log("netlock-killswitch watch: keeping the previous configuration: %s" % exc)
        checker = Checker(self.config, "watch", self.load_fence if self.nft else None, self.unavailable,
                          self.should_stop)
        status = checker.run()
        if self.nft and self.loaded and checker.nft:  # the fence's cgroup sets: only its owner may fill them
            for error in refresh_cgroups(checker.nft, self.config["fence_table"], self.nft.cmd):
                log("netlock-killswitch watch: cannot fill the cgroup set %s" % error)
        return status

    def step(self):
        """One turn of the loop: follow the policy, keep nft monitor, wait for it (at most POLL), check when due
        (DEBOUNCE after the first monitor line of a burst, or every watch_interval seconds)."""
        now = time.monotonic()
        self.follow_policy()
        self.ensure_monitor(now)
        timeout = min(POLL, max(0.0, self.next_check - now))
        if self.pending is not None:
            timeout = min(timeout, max(0.0, self.pending - now))
        readers = [self.monitor.stdout] if self.monitor is not None and not self.monitor.stdout.closed else []
        try:
            ready = select.select(readers, [], [], timeout)[0]
        except (IOError, OSError, select.error):
            ready = []
        if ready and self.read_monitor() and self.pending is None:
            self.pending = time.monotonic() + DEBOUNCE
        now = time.monotonic()
        if self.stopping:
            return
        if (self.pending is not None and now >= self.pending) or now >= self.next_check:
            self.pending = None
            self.check()
            self.next_check = time.monotonic() + float(self.config["watch_interval"])

    def run(self):
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        if self.config["fence"] != "off":
            self.unavailable = self.open_fence()
            self.record_unavailable()
            if self.unavailable:
                log("netlock-killswitch watch: fence unavailable: %s" % self.unavailable)
                if self.config["fence"] == "required":
                    return 1
        log("netlock-killswitch watch: started (fence %s, table %s, backend %s)" % (
            self.config["fence_table"] if self.nft else "none", self.config["table"], self.config["backend"]))
        self.next_check = time.monotonic()
        try:
            while not self.stopping:
                try:
                    self.step()
                except Exception as exc:  # pylint: disable=broad-except
                    # Never die on a surprise: the fence goes with this process.  Log it and go on.
                    log("netlock-killswitch watch: unexpected error, going on: %s: %s" % (type(exc).__name__, exc))
                    time.sleep(POLL)
        finally:
            if self.monitor is not None and self.monitor.poll() is None:
                self.monitor.terminate()
                try:
                    self.monitor.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.monitor.kill()
            self.remove_fence()
        log("netlock-killswitch watch: stopped")
        return 0


# --------------------------------------------------------------------------- command line

def unit_args(argv):
    """(config, command, source) of the command lines the units run, or None for anything else (--help, a
    mistake), which goes to argparse: importing it costs more CPU than a whole in-sync check of a small table."""
    config = DEFAULT_CONFIG
    if argv[:1] == ["--config"] and len(argv) > 1 and not argv[1].startswith("-"):
        config, argv = argv[1], argv[2:]
    if argv in (["watch"], ["cgroups"], ["check"]):
        return config, argv[0], "timer"
    if argv[:2] == ["check", "--from"] and len(argv) == 3 and argv[2] in ("timer", "watch"):
        return config, "check", argv[2]
    return None


def parse_args(argv):
    import argparse

    parser = argparse.ArgumentParser(prog="netlock-killswitch-guard", description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="guard.json (default %(default)s)")
    commands = parser.add_subparsers(dest="command")
    check = commands.add_parser("check", help="repair drift once")
    check.add_argument("--from", dest="source", choices=("timer", "watch"), default="timer",
                       help="who runs the check: the timer checks the watcher, the watcher the timer")
    commands.add_parser("watch", help="hold the fence and react to ruleset changes")
    commands.add_parser("cgroups", help="fill the main table's cgroup sets of per-app exceptions now")
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("a sub-command is required: check, watch or cgroups")
    return args.config, args.command, getattr(args, "source", "timer")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    config_path, command, source = unit_args(argv) or parse_args(argv)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        log("netlock-killswitch guard: bad configuration %s: %s" % (config_path, exc))
        return 2
    if command == "watch":
        with open(config_path, encoding="utf-8") as handle:
            unknown = sorted(set(json.loads(handle.read())) - set(DEFAULTS))
        if unknown:
            log("netlock-killswitch watch: ignoring unknown keys in %s: %s" % (config_path, ", ".join(unknown)))
    if command == "check":
        return Checker(config, source).run()
    if command == "cgroups":
        nft = which("nft")
        errors = refresh_cgroups(nft, config["table"], nft_file_applier(nft)) if nft else ["nft is not installed"]
        if not errors and not wait_for_cgroups(lambda: cgroup_plan(nft, config["fence_table"])):
            errors = ["%s: the watcher did not fill it within %d s" % (config["fence_table"], FENCE_CGROUP_WAIT)]
        for error in errors:
            log("netlock-killswitch guard: cannot fill the cgroup set %s" % error)
        return 1 if errors else 0
    return Watcher(config_path, config).run()


if __name__ == "__main__":
    sys.exit(main())
