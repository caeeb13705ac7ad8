"""Lab network helper for the netlock.killswitch test lab (stdlib only).

Every lab network must stay inside the documentation/benchmark ranges and
must never overlap anything the host needs to reach (routes, gateways,
resolvers, package mirrors); otherwise a docker bridge hijacks the host's
routes and apt/pip break.

Usage:
    python3 tools/labnet.py check CIDR [CIDR...]
    python3 tools/labnet.py create NAME --subnet V4CIDR [--subnet6 V6CIDR]
    python3 tools/labnet.py remove NAME [NAME...]
    python3 tools/labnet.py facts            # print collected host facts (JSON)

The pure functions (check_cidr, overlaps_host, in_lab_range, ...) take a
``host_facts`` dict so they can be unit-tested with fake data:

    {
      "routes":    [{"dst": "192.0.2.0/24", "dev": "eth0"}, ...],
      "gateways":  ["192.0.2.1", ...],
      "resolvers": ["10.255.255.53", ...],
      "sources":   [{"host": "deb.example", "addr": "203.0.113.80"}, ...],
    }
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from urllib.parse import urlsplit

LAB_V4 = ipaddress.ip_network("198.18.0.0/15")
LAB_V6 = ipaddress.ip_network("2001:db8::/32")

# Interfaces whose routes belong to docker networks we created ourselves.
OWN_IFACE_RE = re.compile(r"^(docker0|br-[0-9a-f]+)$")

APT_SOURCES_FILES = ("/etc/apt/sources.list",)
APT_SOURCES_DIR = "/etc/apt/sources.list.d"
RESOLV_CONF = "/etc/resolv.conf"
DEFAULT_PYPI_HOSTS = ("pypi.org", "files.pythonhosted.org")


class LabNetError(Exception):
    pass


def warn(msg: str) -> None:
    print(f"labnet: warning: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------
# Pure functions (no I/O) -- unit tested in tools/test_labnet.py
# --------------------------------------------------------------------------

def parse_network(cidr: str) -> ipaddress._BaseNetwork:
    try:
        return ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise LabNetError(f"{cidr}: not a valid network CIDR ({exc})") from None


def in_lab_range(net) -> bool:
    lab = LAB_V4 if net.version == 4 else LAB_V6
    return net.subnet_of(lab)


def is_own_iface(dev: str | None) -> bool:
    return bool(dev) and bool(OWN_IFACE_RE.match(dev))


def _as_network(value: str):
    """Route dst / address -> network object, or None for 'default' etc."""
    if not value or value in ("default", "unreachable", "prohibit", "blackhole"):
        return None
    value = value.split("%", 1)[0]  # strip IPv6 zone id
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None


def overlaps_host(cidr, host_facts: dict) -> list[str]:
    """Return human-readable collisions of ``cidr`` with the host's facts.

    Routes on our own docker interfaces (docker0, br-*) and default routes
    are ignored (a default route "overlaps" everything by definition; its
    gateway is checked instead).
    """
    net = cidr if isinstance(cidr, ipaddress._BaseNetwork) else parse_network(cidr)
    hits: list[str] = []
    for route in host_facts.get("routes", []):
        if is_own_iface(route.get("dev")):
            continue
        rnet = _as_network(route.get("dst", ""))
        if rnet is None or rnet.version != net.version:
            continue
        if rnet.prefixlen == 0:
            continue
        if net.overlaps(rnet):
            hits.append(f"host route {rnet} dev {route.get('dev', '?')}")
    for kind, key in (("gateway", "gateways"), ("resolver", "resolvers")):
        for addr in host_facts.get(key, []):
            a = _as_network(addr)
            if a is not None and a.version == net.version and net.overlaps(a):
                hits.append(f"{kind} {a.network_address}")
    for src in host_facts.get("sources", []):
        a = _as_network(src.get("addr", ""))
        if a is not None and a.version == net.version and net.overlaps(a):
            hits.append(f"package source {src.get('host', '?')} ({a.network_address})")
    return list(dict.fromkeys(hits))  # de-duplicate, keep order


def check_cidr(cidr: str, host_facts: dict) -> list[str]:
    """All problems with ``cidr`` (empty list == OK)."""
    try:
        net = parse_network(cidr)
    except LabNetError as exc:
        return [str(exc)]
    problems = []
    if not in_lab_range(net):
        lab = LAB_V4 if net.version == 4 else LAB_V6
        problems.append(f"{cidr}: outside the allowed lab range {lab}")
    for hit in overlaps_host(net, host_facts):
        problems.append(f"{cidr}: collides with {hit}")
    return problems


def parse_resolv_conf(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            out.append(parts[1].split("%", 1)[0])
    return out


def parse_apt_sources(text: str, deb822: bool) -> list[str]:
    """Return the URIs from a deb822 .sources or one-line .list file."""
    uris = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if deb822:
            if line.lower().startswith("uris:"):
                uris.extend(line.split(":", 1)[1].split())
        else:
            parts = line.split()
            if parts[0] not in ("deb", "deb-src"):
                continue
            parts = parts[1:]
            if parts and parts[0].startswith("["):  # [options]
                while parts and not parts[0].endswith("]"):
                    parts = parts[1:]
                parts = parts[1:]
            if parts:
                uris.append(parts[0])
    return uris


def parse_pip_config(text: str) -> dict[str, list[str]]:
    """Option -> URLs from ``pip config list`` output.

    Only index-url, extra-index-url and proxy are kept, e.g.
    ``global.index-url='https://x/simple'`` -> {"index-url": ["https://x/simple"]}.
    """
    opts: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        opt = key.rsplit(".", 1)[-1].strip()
        if opt in ("index-url", "extra-index-url", "proxy"):
            opts.setdefault(opt, []).extend(value.strip().strip("'\"").split())
    return opts


def url_host(url: str) -> str | None:
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
    except ValueError:
        return None
    if parts.scheme in ("file", "cdrom", "copy"):
        return None
    return parts.hostname


# --------------------------------------------------------------------------
# Host fact collection (I/O)
# --------------------------------------------------------------------------

def _run_json(cmd: list[str]):
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        warn(f"{' '.join(cmd)} failed: {exc}")
        return []
    return json.loads(out or "[]")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def source_hostnames() -> list[str]:
    hosts: list[str] = []
    uris: list[str] = []
    for path in APT_SOURCES_FILES:
        uris += parse_apt_sources(_read(path), deb822=False)
    if os.path.isdir(APT_SOURCES_DIR):
        for name in sorted(os.listdir(APT_SOURCES_DIR)):
            path = os.path.join(APT_SOURCES_DIR, name)
            if name.endswith(".sources"):
                uris += parse_apt_sources(_read(path), deb822=True)
            elif name.endswith(".list"):
                uris += parse_apt_sources(_read(path), deb822=False)

    pip_opts: dict[str, list[str]] = {}
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                             capture_output=True, text=True, timeout=60, check=False).stdout
        pip_opts = parse_pip_config(out)
    except (OSError, subprocess.SubprocessError) as exc:
        warn(f"pip config list failed: {exc}")
    for var, opt in (("PIP_INDEX_URL", "index-url"),
                     ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
                     ("PIP_PROXY", "proxy")):
        if os.environ.get(var):
            pip_opts.setdefault(opt, []).extend(os.environ[var].split())
    # pip falls back to PyPI when no index-url is configured.
    if not pip_opts.get("index-url"):
        hosts += list(DEFAULT_PYPI_HOSTS)
    pip_urls = [u for urls in pip_opts.values() for u in urls]
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        if os.environ.get(var):
            uris.append(os.environ[var])

    for url in uris + pip_urls:
        h = url_host(url)
        if h:
            hosts.append(h)
    seen, result = set(), []
    for h in hosts:
        if h not in seen:
            seen.add(h)
            result.append(h)
    return result


def resolve(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, OSError) as exc:
        warn(f"cannot resolve package source {host!r} ({exc}); not checked")
        return []
    return sorted({i[4][0].split("%", 1)[0] for i in infos})


def collect_host_facts() -> dict:
    routes, gateways = [], []
    for cmd in (["ip", "-j", "route"], ["ip", "-j", "-6", "route"]):
        for r in _run_json(cmd):
            if is_own_iface(r.get("dev")):
                continue
            routes.append({"dst": r.get("dst", ""), "dev": r.get("dev")})
            if r.get("gateway"):
                gateways.append(r["gateway"])
            for nh in r.get("nexthops", []) or []:
                if nh.get("gateway"):
                    gateways.append(nh["gateway"])
    # Addresses configured on (non-docker) interfaces count as routes too.
    for link in _run_json(["ip", "-j", "addr"]):
        dev = link.get("ifname")
        if is_own_iface(dev):
            continue
        for a in link.get("addr_info", []):
            if a.get("local"):
                addr_net = ipaddress.ip_network(
                    f"{a['local']}/{a.get('prefixlen', 32)}", strict=False)
                routes.append({"dst": str(addr_net), "dev": dev})
    resolvers = parse_resolv_conf(_read(RESOLV_CONF))
    sources = []
    for host in source_hostnames():
        for addr in resolve(host):
            sources.append({"host": host, "addr": addr})
    return {"routes": routes, "gateways": sorted(set(gateways)),
            "resolvers": resolvers, "sources": sources}


# --------------------------------------------------------------------------
# Docker
# --------------------------------------------------------------------------

def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not shutil.which("docker"):
        raise LabNetError("docker CLI not found (run tools/docker-engine.sh)")
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        raise LabNetError(f"docker {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def network_subnets(name: str) -> set[str] | None:
    """Subnets of an existing docker network, None if it does not exist."""
    proc = docker("network", "inspect", name, check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)[0]
    cfg = (data.get("IPAM") or {}).get("Config") or []
    return {str(ipaddress.ip_network(c["Subnet"], strict=False)) for c in cfg if c.get("Subnet")}


def cmd_check(cidrs: list[str], facts: dict | None = None) -> int:
    facts = facts if facts is not None else collect_host_facts()
    problems = [p for c in cidrs for p in check_cidr(c, facts)]
    for p in problems:
        print(f"labnet: ERROR: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"labnet: ok: {' '.join(cidrs)} inside lab range, no collision with host")
    return 0


def cmd_create(name: str, subnet: str, subnet6: str | None) -> int:
    wanted = {str(parse_network(subnet))}
    if parse_network(subnet).version != 4:
        raise LabNetError(f"--subnet {subnet} must be IPv4")
    if subnet6:
        if parse_network(subnet6).version != 6:
            raise LabNetError(f"--subnet6 {subnet6} must be IPv6")
        wanted.add(str(parse_network(subnet6)))
    existing = network_subnets(name)
    if existing is not None:
        if existing == wanted:
            print(f"labnet: network {name} already exists with {' '.join(sorted(wanted))}")
            return 0
        raise LabNetError(f"network {name} exists with different subnets "
                          f"{sorted(existing)} (wanted {sorted(wanted)}); remove it first")
    rc = cmd_check([subnet] + ([subnet6] if subnet6 else []))
    if rc:
        return rc
    args = ["network", "create", "--internal", "--subnet", subnet]
    if subnet6:
        args += ["--ipv6", "--subnet", subnet6]
    docker(*args, name)
    print(f"labnet: created internal network {name} ({' '.join(sorted(wanted))})")
    return 0


def cmd_remove(names: list[str]) -> int:
    for name in names:
        if network_subnets(name) is None:
            print(f"labnet: network {name} not present")
            continue
        docker("network", "rm", name)
        print(f"labnet: removed network {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="labnet.py", description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("check", help="validate CIDRs against lab ranges and host facts")
    p.add_argument("cidrs", nargs="+", metavar="CIDR")
    p = sub.add_parser("create", help="create an --internal docker network (idempotent)")
    p.add_argument("name")
    p.add_argument("--subnet", required=True)
    p.add_argument("--subnet6")
    p = sub.add_parser("remove", help="remove docker networks if present")
    p.add_argument("names", nargs="+", metavar="NAME")
    sub.add_parser("facts", help="print collected host facts as JSON")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "check":
            return cmd_check(args.cidrs)
        if args.cmd == "create":
            return cmd_create(args.name, args.subnet, args.subnet6)
        if args.cmd == "remove":
            return cmd_remove(args.names)
        if args.cmd == "facts":
            print(json.dumps(collect_host_facts(), indent=2))
            return 0
    except LabNetError as exc:
        print(f"labnet: ERROR: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
