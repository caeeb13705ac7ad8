# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kill switch policy: role variables in, one validated and normalized policy out.

Pure Python with no I/O, run on the controller: hostname resolution is injected by the caller (the
action plugin resolves there).  Every rejection names the role variable and the bad value.  The policy
states intent only; what a firewall can express (interface-name rules, table names, which endpoint
owners it can enforce) is checked per backend in ``backends.py``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from copy import deepcopy
from dataclasses import dataclass, field, fields, is_dataclass
from collections.abc import Mapping  # isinstance against it is faster than against typing.Mapping
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from ansible_collections.netlock.killswitch.plugins.plugin_utils.addresses import (
    canonical_network, collapse_family, network_text)

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Resolver = Callable[[str], Sequence[str]]

PREFIX = "killswitch_"

DEFAULT_LAN_CIDRS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "fe80::/10",
    "fc00::/7",
)
DNS_PORTS = (53, 853)
ENDPOINT_PROTOCOLS = ("udp", "tcp")
EXTRA_PROTOCOLS = ("tcp", "udp", "icmp", "any")
IPV6_MODES = ("block", "tunnel")
FORWARD_MODES = ("block", "tunnel", "off")
STATES = ("present", "absent")
BACKENDS = ("auto", "nftables", "iptables", "windows")
FENCES = ("auto", "required", "off")
MAX_MARK = 0xFFFFFFFF
MIN_SAFE_APPLY_TIMEOUT = 10  # seconds: the rules change after 1 s, then the controller must reconnect

# The role's defaults, by variable name without the prefix.  roles/killswitch/meta/argument_specs.yml is
# the documented source; tests/unit/test_contract.py fails when this, defaults/main.yml, the module
# documentation or the action plugin's options disagree with it.
DEFAULTS: Dict[str, Any] = {
    "state": "present",
    "backend": "auto",
    "tunnel_interfaces": [],
    "endpoints": [],
    "endpoint_mark": None,
    "endpoint_user": None,
    "endpoint_program": None,
    "allow_lan": False,
    "lan_cidrs": list(DEFAULT_LAN_CIDRS),
    "management_cidrs": None,  # the controller's address as the host sees it (the action plugin finds it)
    "management_ports": [22],
    "dns_servers": [],
    "allow_dhcp": True,
    "ipv6": "block",
    "forward": "tunnel",
    "extra_outbound": [],
    "app_exceptions": [],
    "log_drops": False,
    "safe_apply_timeout": 60,
    "guard_enabled": True,
    "guard_interval": 30,
    "fence": "auto",
    "metrics_path": "/var/lib/prometheus/node-exporter/netlock_killswitch.prom",
    "table": "killswitch",
    "allow_lockout": False,
    "windows_exclusive": False,
    "windows_state_dir": "C:\\ProgramData\\netlock-killswitch",
}

# Interface names or aliases on any OS ("wg0", "tun*", "Wintun Userspace Tunnel", "ProtonVPN*"): printable, no
# quotes or backslashes, no leading or trailing blanks.  A '*' is a wildcard (Linux: only a trailing one, Windows:
# anywhere); each backend checks its own rules.
_INTERFACE_RE = re.compile(r"[^\x00-\x1f\x7f\"'\\`$;|&<>]{1,256}")
_PROGRAM_RE = re.compile(r"(/|[A-Za-z]:\\)[^\x00-\x1f\x7f\"]{0,4095}")
_METRICS_PATH_RE = re.compile(r"/[A-Za-z0-9_.@+/-]{0,4094}\.prom")
_WINDOWS_DIR_RE = re.compile(r"[A-Za-z]:\\[^\x00-\x1f\x7f\"*?<>|/:]{1,200}")
# Directories of the system and of everyone (on any drive): the module restricts its state directory's ACL to SYSTEM
# and Administrators and absent removes it, so it must be one of the kill switch's own.  Compared lower-case, with
# the trailing dots and blanks Windows ignores removed.
_WINDOWS_SHARED_DIRS = frozenset(("windows", "users", "programdata", "program files", "program files (x86)"))
_WINDOWS_SHORT_NAME_RE = re.compile(r".{1,6}~[0-9]+")  # PROGRA~3 may be ProgramData
_TABLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_HOST_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# Per-app exceptions (split tunnel): a systemd service, or a cgroup v2 path below the cgroup root.  Escaped unit
# names (\x2d) and template instances live elsewhere in the tree: those take a cgroup path.
_SERVICE_RE = re.compile(r"[A-Za-z0-9:_.-]{1,247}\.service")
_CGROUP_PART_RE = re.compile(r"[A-Za-z0-9:_.@+=,~-]{1,255}")
SERVICE_SLICE = "system.slice/"  # where systemd puts a system service's cgroup
MAX_CGROUP_PATH = 200  # it rides in an nft set comment (at most 255 bytes)
MAX_CGROUP_LEVEL = 32
_TRUE = frozenset(("true", "yes", "on", "y", "t", "1"))
_FALSE = frozenset(("false", "no", "off", "n", "f", "0"))


@dataclass(frozen=True)
class Problem:
    variable: str
    value: Any
    reason: str

    def __str__(self) -> str:
        return "%s: %r %s" % (self.variable, self.value, self.reason)


class PolicyError(ValueError):
    """All the problems found in one set of role variables."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        super().__init__("invalid kill switch policy:\n  " + "\n  ".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class AddressRule:
    """Destinations reachable outside the tunnel for one protocol and port (port None: any)."""

    networks: Tuple[Network, ...]
    protocol: str
    port: Optional[int] = None
    via: Optional[str] = None   # endpoints only: the carrier tunnel it is reached through (a nested tunnel's server)


@dataclass(frozen=True)
class Owner:
    """Who may send endpoint traffic outside the tunnel: a firewall mark, a user, a program, or anyone."""

    mark: Optional[int] = None
    user: Optional[str] = None
    program: Optional[str] = None

    KINDS = ("mark", "user", "program")

    def kinds(self) -> Tuple[str, ...]:
        return tuple(kind for kind in self.KINDS if getattr(self, kind) is not None)


@dataclass(frozen=True)
class AppException:
    """Destinations that the processes of one cgroup v2 (path below the root, and its children) reach outside the tunnel."""

    cgroup: str
    rule: AddressRule


@dataclass(frozen=True)
class Policy:
    tunnel_interfaces: Tuple[str, ...]
    endpoints: Tuple[AddressRule, ...]
    endpoint_owner: Owner = Owner()
    allow_lan: bool = False
    lan_networks: Tuple[Network, ...] = ()
    management_networks: Tuple[Network, ...] = ()
    management_ports: Tuple[int, ...] = (22,)
    dns_servers: Tuple[Address, ...] = ()
    allow_dhcp: bool = True
    ipv6: str = "block"
    forward: str = "tunnel"
    extra_outbound: Tuple[AddressRule, ...] = ()
    app_exceptions: Tuple[AppException, ...] = ()
    log_drops: bool = False
    table: str = "killswitch"
    warnings: Tuple[str, ...] = field(default=(), compare=False)

    @property
    def endpoint_mark(self) -> Optional[int]:
        return self.endpoint_owner.mark

    @property
    def endpoint_user(self) -> Optional[str]:
        return self.endpoint_owner.user

    @property
    def app_services(self) -> Tuple[str, ...]:
        """The systemd services whose cgroups have app exceptions (the role gives each one an ExecStartPre that fills
        the set with its new cgroup before it starts)."""
        # A system.slice below the root too: systemd in a container or nested cgroup keeps its tree under its own
        # cgroup (docker/<id>/system.slice/x.service), which the cgroup path must name for the match's level.
        services = set()
        for exception in self.app_exceptions:
            slice_path, _sep, service = ("/" + exception.cgroup).rpartition("/")
            if slice_path.endswith("/" + SERVICE_SLICE.rstrip("/")) and _SERVICE_RE.fullmatch(service):
                services.add(service)
        return tuple(sorted(services))

    @property
    def carriers(self) -> Tuple[str, ...]:
        """Tunnel interfaces an endpoint is ``via``: they carry only those endpoints' traffic, never a general exit."""
        return tuple(sorted({rule.via for rule in self.endpoints if rule.via is not None}))

    @property
    def exit_interfaces(self) -> Tuple[str, ...]:
        """The tunnel interfaces traffic may leave through: every one but the carriers."""
        carriers = self.carriers
        return tuple(name for name in self.tunnel_interfaces if name not in carriers)

    def admits_management(self, source: str, port: int) -> bool:
        """Whether the rendered rules let ``source`` open (and keep) a TCP connection to ``port``."""
        address = ipaddress.ip_address(source)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return port in self.management_ports and any(address in net for net in self.management_networks)

    def data(self) -> Dict[str, Any]:
        """The policy as plain data (``asdict``); an unset ``via`` and no ``app_exceptions`` are left out, so that a
        policy without nested tunnels or per-app exceptions keeps its shape and its fingerprint."""
        data = _plain(self)
        for rule in [*data["endpoints"], *data["extra_outbound"], *(e["rule"] for e in data["app_exceptions"])]:
            if rule["via"] is None:
                del rule["via"]
        if not data["app_exceptions"]:
            del data["app_exceptions"]
        return data

    def digest(self) -> str:
        """Stable fingerprint of everything that shapes the ruleset.

        Computed once per policy (frozen, so it cannot change): each render and the action ask for it."""
        cached = self.__dict__.get("_digest")
        if cached is None:
            data = self.data()
            data.pop("warnings")
            cached = hashlib.sha256(json.dumps(data, sort_keys=True, default=_json_text).encode()).hexdigest()
            object.__setattr__(self, "_digest", cached)
        return cached


# What asdict copies and _plain shares: immutable leaves.
_LEAVES = frozenset((str, int, bool, float, type(None), ipaddress.IPv4Network, ipaddress.IPv6Network,
                     ipaddress.IPv4Address, ipaddress.IPv6Address))
_FIELD_NAMES: Dict[type, Tuple[str, ...]] = {}


def _plain(value: Any) -> Any:
    """``asdict(value)`` without its deep copy of every leaf: addresses and networks are immutable, so the result
    shares them (a deep copy of 100,000 networks prints and parses each one again)."""
    kind = type(value)
    names = _FIELD_NAMES.get(kind)
    if names is None and is_dataclass(kind):
        names = _FIELD_NAMES[kind] = tuple(f.name for f in fields(kind))
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if kind is tuple or kind is list:
        if all(type(item) in _LEAVES for item in value):
            return kind(value)
        return kind(_plain(item) for item in value)
    if kind is dict:
        return {_plain(key): _plain(item) for key, item in value.items()}
    if kind in _LEAVES:
        return value
    return deepcopy(value)


def _json_text(value: Any) -> str:
    """json.dumps' default for the digest: ``str()``, networks printed the fast way."""
    if type(value) in (ipaddress.IPv4Network, ipaddress.IPv6Network):
        return network_text(value)
    return str(value)


class _Checker:
    """Collects problems so that one run reports every bad value at once."""

    def __init__(self) -> None:
        self.problems: List[Problem] = []
        self.warnings: List[str] = []

    def fail(self, variable: str, value: Any, reason: str) -> None:
        self.problems.append(Problem(variable, value, reason))

    def boolean(self, variable: str, value: Any) -> bool:
        # Ansible's spellings: `-e killswitch_allow_lan=true` arrives as the string 'true'.
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, (str, int)) else None
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        self.fail(variable, value, "is not a boolean")
        return False

    def choice(self, variable: str, value: Any, choices: Sequence[str]) -> str:
        if value in choices:
            return value
        self.fail(variable, value, "is not one of %s" % ", ".join(choices))
        return choices[0]

    def integer(self, variable: str, value: Any, low: int, high: int) -> Optional[int]:
        if isinstance(value, bool) or not isinstance(value, int):
            if _is_decimal(value):
                value = int(value)
            else:
                self.fail(variable, value, "is not an integer")
                return None
        if not low <= value <= high:
            self.fail(variable, value, "is out of range %d-%d" % (low, high))
            return None
        return value

    def port(self, variable: str, value: Any) -> Optional[int]:
        return self.integer(variable, value, 1, 65535)

    def items(self, variable: str, value: Any, allow_empty: bool = True) -> List[Any]:
        if value is None:
            value = []
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            self.fail(variable, value, "is not a list")
            return []
        if not value and not allow_empty:
            self.fail(variable, value, "must not be empty")
        return list(value)

    def network(self, variable: str, value: Any) -> Optional[Network]:
        if not isinstance(value, str) or "%" in value:
            self.fail(variable, value, "is not an IP address or CIDR")
            return None
        text = value.strip()
        network = canonical_network(text)  # the usual spellings without ipaddress's slow parse
        if network is not None:
            return network
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            self.fail(variable, value, "is not an IP address or CIDR")
            return None

    def address(self, variable: str, value: Any) -> Optional[Address]:
        if isinstance(value, str) and "%" not in value:
            try:
                return ipaddress.ip_address(value.strip())
            except ValueError:
                pass
        self.fail(variable, value, "is not an IP address (without a %scope)")
        return None

    def networks(self, variable: str, value: Any) -> Tuple[Network, ...]:
        nets = (self.network("%s[%d]" % (variable, i), v) for i, v in enumerate(self.items(variable, value)))
        return collapse([n for n in nets if n is not None])


def _is_decimal(value: Any) -> bool:
    return isinstance(value, str) and value.strip().isascii() and value.strip().isdigit()


def collapse(networks: Sequence[Network]) -> Tuple[Network, ...]:
    """Merge overlaps per family (nft interval sets refuse them); IPv4 first, sorted."""
    v4 = [n for n in networks if n.version == 4]
    v6 = [n for n in networks if n.version == 6]
    return collapse_family(v4) + collapse_family(v6)


# Ranges that every Python's ipaddress calls private or link-local (the usual LANs): no need to ask it, which is slow.
_SURELY_PRIVATE = tuple((net.version, int(net.network_address), int(net.broadcast_address)) for net in map(
    ipaddress.ip_network, ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "fc00::/7", "fe80::/10")))


def _private_or_link_local(network: Network) -> bool:
    first = int(network.network_address)
    last = first | ((1 << (network.max_prefixlen - network.prefixlen)) - 1)
    if any(version == network.version and low <= first and last <= high for version, low, high in _SURELY_PRIVATE):
        return True
    return network.is_private or network.is_link_local


def is_hostname(value: str) -> bool:
    labels = value.rstrip(".").split(".")
    return len(value) <= 253 and all(_HOST_LABEL_RE.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def _interfaces(check: _Checker, variable: str, value: Any) -> Tuple[str, ...]:
    names = []
    for i, name in enumerate(check.items(variable, value, allow_empty=False)):
        item = "%s[%d]" % (variable, i)
        if (not isinstance(name, str) or not _INTERFACE_RE.fullmatch(name) or name != name.strip()
                or name.replace("*", "") in ("", ".", "..")):
            check.fail(item, name, "is not an interface name or wildcard (printable, no quotes, shell or nft "
                                   "metacharacters, not only '*' and dots)")
        else:
            names.append(name)
    return tuple(sorted(set(names)))


def _or_default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _entries(check: _Checker, variable: str, value: Any, keys: Sequence[str],
             allow_empty: bool = True) -> Iterator[Tuple[str, Mapping]]:
    """(name, entry) for each mapping in a list variable; other items and unknown keys are problems."""
    known = frozenset(keys)
    for i, entry in enumerate(check.items(variable, value, allow_empty=allow_empty)):
        item = "%s[%d]" % (variable, i)
        if not isinstance(entry, Mapping):
            check.fail(item, entry, "is not a mapping with %s" % ", ".join(keys))
            continue
        if not known.issuperset(entry):
            check.fail(item, entry, "has unknown keys %s" % ", ".join(sorted(str(key) for key in entry if key not in keys)))
        yield item, entry


def _endpoints(check: _Checker, value: Any, ipv6: str, resolve: Optional[Resolver],
               tunnels: Sequence[str] = ()) -> Tuple[AddressRule, ...]:
    grouped: Dict[Tuple[str, int, str], List[Network]] = {}
    carried: List[Tuple[str, str]] = []
    keys = ("address", "port", "protocol", "via")
    for item, entry in _entries(check, PREFIX + "endpoints", value, keys, allow_empty=False):
        protocol = check.choice(item + ".protocol", _or_default(entry.get("protocol"), "udp"), ENDPOINT_PROTOCOLS)
        port = check.port(item + ".port", entry.get("port"))
        networks = _endpoint_networks(check, item + ".address", entry.get("address"), ipv6, resolve)
        via = _via(check, item + ".via", entry.get("via"), tunnels)
        if via:
            carried.append((item + ".via", via))
        if port is not None and networks:
            grouped.setdefault((protocol, port, via), []).extend(networks)
    _check_carriers(check, carried, tunnels)
    return tuple(AddressRule(collapse(nets), proto, port, via or None) for (proto, port, via), nets in sorted(grouped.items()))


def _via(check: _Checker, variable: str, value: Any, tunnels: Sequence[str]) -> str:
    """The carrier tunnel an endpoint names, or '' (reached on the physical interfaces)."""
    if value is None:
        return ""
    if not isinstance(value, str) or value not in tunnels:
        check.fail(variable, value, "is not one of %stunnel_interfaces (%s)" % (PREFIX, ", ".join(tunnels)))
        return ""
    return value


def interfaces_overlap(first: str, second: str) -> bool:
    """Whether some interface name matches both names or trailing-'*' wildcards."""
    def prefix(name: str) -> str:
        return name[:-1] if name.endswith("*") else name
    if first.endswith("*") and second.endswith("*"):
        return prefix(first).startswith(prefix(second)) or prefix(second).startswith(prefix(first))
    if first.endswith("*") or second.endswith("*"):
        wildcard, name = (first, second) if first.endswith("*") else (second, first)
        return name.startswith(prefix(wildcard))
    return first == second


def _check_carriers(check: _Checker, carried: Sequence[Tuple[str, str]], tunnels: Sequence[str]) -> None:
    """A carrier must not also match an exit tunnel, and some tunnel must remain an exit."""
    carriers = {via for _variable, via in carried}
    exits = [name for name in tunnels if name not in carriers]
    for variable, via in carried:
        clash = [name for name in exits if interfaces_overlap(via, name)]
        if clash:
            check.fail(variable, via, "also matches the exit tunnel %s: a carrier tunnel must not match an interface "
                       "general traffic leaves through" % ", ".join(clash))
    if carriers and not exits:
        check.fail(PREFIX + "tunnel_interfaces", list(tunnels), "has no exit tunnel left: every one is the via of an "
                   "endpoint (a carrier of nested endpoint traffic only)")


def _endpoint_networks(check: _Checker, variable: str, value: Any, ipv6: str, resolve: Optional[Resolver]) -> List[Network]:
    if isinstance(value, str) and is_hostname(value.strip()):
        name = value.strip()
        if resolve is None:
            check.fail(variable, value, "is a hostname, and no resolver was given to pin it")
            return []
        try:
            answers = [ipaddress.ip_address(a) for a in resolve(name)]
        except Exception as exc:  # the resolver's own error text explains it best
            check.fail(variable, value, "does not resolve: %s" % exc)
            return []
        if ipv6 == "block":
            answers = [a for a in answers if a.version == 4]
        if not answers:
            check.fail(variable, value, "resolves to no usable address (IPv6 answers are dropped when killswitch_ipv6 is 'block')")
        return [ipaddress.ip_network(a) for a in answers]
    network = check.network(variable, value)
    if network is None:
        return []
    if network.version == 6 and ipv6 == "block":
        check.fail(variable, value, "is IPv6, and killswitch_ipv6 is 'block' (set it to 'tunnel')")
        return []
    if network.prefixlen == 0:
        check.fail(variable, value, "matches every address: an endpoint must name the VPN servers")
        return []
    return [network]


def _extra_outbound(check: _Checker, value: Any, ipv6: str) -> Tuple[AddressRule, ...]:
    return _grouped(destination[2:] for destination in _destinations(check, PREFIX + "extra_outbound", value, ipv6, ()))


def _destinations(check: _Checker, variable: str, value: Any, ipv6: str,
                  more_keys: Sequence[str]) -> Iterator[Tuple[str, Mapping, str, Optional[int], Network]]:
    """(item, entry, protocol, port, network) for each valid {cidr, protocol, port} entry of a list variable.

    Run once per allowlist entry (100,000 of them in bench B3): the checks' variable names are built only for a
    value that needs the checker."""
    for item, entry in _entries(check, variable, value, ("cidr", "port", "protocol") + tuple(more_keys)):
        protocol = entry.get("protocol")
        if protocol is None:
            protocol = "any"
        elif protocol not in EXTRA_PROTOCOLS:
            protocol = check.choice(item + ".protocol", protocol, EXTRA_PROTOCOLS)
        port = entry.get("port")
        if port is not None:
            if protocol not in ("tcp", "udp"):
                check.fail(item + ".port", port, "needs protocol tcp or udp")
            port = check.port(item + ".port", port)
        cidr = entry.get("cidr")
        network = canonical_network(cidr.strip()) if isinstance(cidr, str) and "%" not in cidr else None
        if network is None:
            network = check.network(item + ".cidr", cidr)
        if network is not None and network.version == 6 and ipv6 == "block":
            check.fail(item + ".cidr", cidr, "is IPv6, and killswitch_ipv6 is 'block' (set it to 'tunnel')")
        elif network is not None:
            yield item, entry, protocol, port, network


def _grouped(destinations: Iterable[Tuple[str, Optional[int], Network]]) -> Tuple[AddressRule, ...]:
    """One rule per (protocol, port), its networks merged."""
    grouped: Dict[Tuple[str, Optional[int]], List[Network]] = {}
    for protocol, port, network in destinations:
        key = (protocol, port)
        networks = grouped.get(key)
        if networks is None:
            networks = grouped[key] = []
        networks.append(network)
    ordered = sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))
    return tuple(AddressRule(collapse(nets), proto, port) for (proto, port), nets in ordered)


def _cgroup_of(check: _Checker, item: str, entry: Mapping) -> Optional[str]:
    """The cgroup v2 path (below the root, no leading '/') an app exception names by ``service`` or ``cgroup``."""
    service, cgroup = entry.get("service"), entry.get("cgroup")
    if (service is None) == (cgroup is None):
        check.fail(item, dict(entry), "needs exactly one of service (a systemd unit, backup.service) or cgroup "
                                      "(a cgroup v2 path, system.slice/backup.service)")
        return None
    if service is not None:
        if not (isinstance(service, str) and _SERVICE_RE.fullmatch(service)):
            check.fail(item + ".service", service, "is not a systemd service name (letters, digits, ':_.-', ending "
                                                   "in .service; for an instance@ or escaped name give its cgroup)")
            return None
        return SERVICE_SLICE + service
    parts = cgroup.strip("/").split("/") if isinstance(cgroup, str) else []
    if (not parts or len(cgroup) > MAX_CGROUP_PATH or len(parts) > MAX_CGROUP_LEVEL
            or not all(_CGROUP_PART_RE.fullmatch(part) and part not in (".", "..") for part in parts)):
        check.fail(item + ".cgroup", cgroup, "is not a cgroup v2 path below the root (names of letters, digits and "
                                             "':_.@+=,~-' separated by '/', no '.' or '..', at most %d characters "
                                             "and %d levels)" % (MAX_CGROUP_PATH, MAX_CGROUP_LEVEL))
        return None
    return "/".join(parts)


def _app_exceptions(check: _Checker, value: Any, ipv6: str) -> Tuple[AppException, ...]:
    variable = PREFIX + "app_exceptions"
    by_cgroup: Dict[str, List[Tuple[str, Optional[int], Network]]] = {}
    for item, entry, protocol, port, network in _destinations(check, variable, value, ipv6, ("service", "cgroup")):
        cgroup = _cgroup_of(check, item, entry)
        if port in DNS_PORTS:
            # The DNS refusal comes first in the rule list: such an exception would never match.
            check.fail(item + ".port", port, "is a DNS port: DNS never leaves outside the tunnel, not for an "
                                             "app either (%sdns_servers are reached through it)" % PREFIX)
        elif cgroup is not None:
            by_cgroup.setdefault(cgroup, []).append((protocol, port, network))
            if network.prefixlen == 0:
                check.warnings.append("%s: %s may reach every %s address outside the tunnel (%s)"
                                      % (item, cgroup, "IPv%d" % network.version, network))
    return tuple(AppException(cgroup, rule) for cgroup in sorted(by_cgroup) for rule in _grouped(by_cgroup[cgroup]))


def parse_policy(variables: Mapping[str, Any], resolve: Optional[Resolver] = None) -> Policy:
    """Validate role variables (named with the ``killswitch_`` prefix) into a Policy.

    Missing variables take the role defaults.  Raises PolicyError naming every bad value.
    """
    check = _Checker()

    def var(name: str) -> Tuple[str, Any]:
        value = variables.get(PREFIX + name)
        return PREFIX + name, DEFAULTS[name] if value is None else value

    check.choice(*var("backend"), choices=BACKENDS)
    ipv6 = check.choice(*var("ipv6"), choices=IPV6_MODES)
    forward = check.choice(*var("forward"), choices=FORWARD_MODES)
    allow_lan = check.boolean(*var("allow_lan"))
    tunnels = _interfaces(check, *var("tunnel_interfaces"))
    endpoints = _endpoints(check, var("endpoints")[1], ipv6, resolve, tunnels)

    mark_name, mark = var("endpoint_mark")
    endpoint_mark = None if mark is None else check.integer(mark_name, mark, 1, MAX_MARK)
    program_name, program = var("endpoint_program")
    if program is not None and not (isinstance(program, str) and _PROGRAM_RE.fullmatch(program)):
        check.fail(program_name, program, "is not an absolute program path")
        program = None
    user_name, user = var("endpoint_user")
    endpoint_user = None
    if user is not None:
        if _is_decimal(user):
            user = int(user)
        if isinstance(user, int) and not isinstance(user, bool) and 0 <= user < MAX_MARK:
            endpoint_user = str(user)
        elif isinstance(user, str) and _USER_RE.fullmatch(user):
            endpoint_user = user
        else:
            check.fail(user_name, user, "is not a user name or uid")

    lan_name, lan_value = var("lan_cidrs")
    lan = check.networks(lan_name, lan_value)
    if allow_lan:
        for net in lan:
            if not _private_or_link_local(net):
                check.warnings.append("%s: %s is a public range; with %sallow_lan on, traffic to it leaves outside "
                                      "the tunnel (the TunnelCrack LocalNet attack relies on this)" % (lan_name, net, PREFIX))

    ports_name, ports_value = var("management_ports")
    ports = [check.port("%s[%d]" % (ports_name, i), p) for i, p in enumerate(check.items(ports_name, ports_value))]
    dns_name, dns_value = var("dns_servers")
    dns = [check.address("%s[%d]" % (dns_name, i), a) for i, a in enumerate(check.items(dns_name, dns_value))]
    dns_servers = tuple(sorted({a for a in dns if a is not None}, key=lambda a: (a.version, int(a))))
    if ipv6 == "block" and any(a.version == 6 for a in dns_servers):
        check.warnings.append("%s: IPv6 resolvers are unreachable while %sipv6 is 'block'" % (dns_name, PREFIX))

    policy = Policy(
        tunnel_interfaces=tunnels,
        endpoints=endpoints,
        endpoint_owner=Owner(endpoint_mark, endpoint_user, program),
        allow_lan=allow_lan,
        lan_networks=lan,
        management_networks=check.networks(*var("management_cidrs")),
        management_ports=tuple(sorted({p for p in ports if p is not None})),
        dns_servers=dns_servers,
        allow_dhcp=check.boolean(*var("allow_dhcp")),
        ipv6=ipv6,
        forward=forward,
        extra_outbound=_extra_outbound(check, var("extra_outbound")[1], ipv6),
        app_exceptions=_app_exceptions(check, var("app_exceptions")[1], ipv6),
        log_drops=check.boolean(*var("log_drops")),
        table=_table(check, *var("table")),
    )
    check_settings(check, variables)
    guard_name, guard = var("guard_enabled")
    if policy.app_exceptions and str(guard).strip().lower() in _FALSE:
        check.fail(guard_name, guard, "is off, and %sapp_exceptions need the guard: it fills their cgroup sets"
                   % PREFIX)
    if check.problems:
        raise PolicyError(check.problems)
    # Warnings come from the checks that built the fields; the policy is new and unseen, so set them in place
    # (replace() would build it all again).
    object.__setattr__(policy, "warnings", tuple(check.warnings))
    return policy


def _table(check: _Checker, variable: str, value: Any) -> str:
    if isinstance(value, str) and _TABLE_RE.fullmatch(value):
        return value
    check.fail(variable, value, "is not a valid table name (a letter, then letters, digits or '_', at most 32)")
    return "killswitch"


def check_settings(check: _Checker, variables: Mapping[str, Any]) -> None:
    """Variables that shape the apply and the guard, not the ruleset."""
    state = variables.get(PREFIX + "state")
    if state is not None:
        check.choice(PREFIX + "state", state, STATES)
    checked = {}
    for name, low, high in (("safe_apply_timeout", 0, 86400), ("guard_interval", 5, 86400)):
        value = variables.get(PREFIX + name)
        if value is not None:
            checked[name] = check.integer(PREFIX + name, value, low, high)
    if checked.get("safe_apply_timeout") and checked["safe_apply_timeout"] < MIN_SAFE_APPLY_TIMEOUT:
        check.fail(PREFIX + "safe_apply_timeout", variables[PREFIX + "safe_apply_timeout"],
                   "is too short to reconnect and confirm (0 disables, else %d or more)" % MIN_SAFE_APPLY_TIMEOUT)
    for name in ("guard_enabled", "allow_lockout", "windows_exclusive"):
        if variables.get(PREFIX + name) is not None:
            check.boolean(PREFIX + name, variables[PREFIX + name])
    if variables.get(PREFIX + "fence") is not None:
        check.choice(PREFIX + "fence", variables[PREFIX + "fence"], FENCES)
    metrics = variables.get(PREFIX + "metrics_path")
    if metrics not in (None, "") and not (isinstance(metrics, str) and _METRICS_PATH_RE.fullmatch(metrics)
                                          and "/../" not in metrics + "/"):
        check.fail(PREFIX + "metrics_path", metrics, "is not an absolute path ending in .prom (node_exporter's "
                   "textfile collector reads only those), nor '' to write no metrics")
    state_dir = variables.get(PREFIX + "windows_state_dir")
    if state_dir is not None:
        reason = windows_state_dir_problem(state_dir)
        if reason:
            check.fail(PREFIX + "windows_state_dir", state_dir, reason)


def windows_state_dir_problem(value: Any) -> Optional[str]:
    """Why ``value`` cannot be the Windows state directory, or None."""
    drive_root = isinstance(value, str) and len(value) == 3 and _WINDOWS_DIR_RE.fullmatch(value + "x")
    if not drive_root and not (isinstance(value, str) and _WINDOWS_DIR_RE.fullmatch(value)
                               and ".." not in value.split("\\")):
        return "is not an absolute Windows directory (C:\\...)"
    names = [part.rstrip(" .").lower() for part in value[3:].split("\\")]
    names = [name for name in names if name]
    if (not names or (names[0] in _WINDOWS_SHARED_DIRS and (len(names) == 1 or names[0] == "windows"))
            or _WINDOWS_SHORT_NAME_RE.fullmatch(names[0])):
        return ("is a drive root, a well-known Windows directory (Windows and all under it, Users, ProgramData, "
                "Program Files, Program Files (x86)) or a short name that may be one; the module restricts the state "
                "directory's ACL to SYSTEM and Administrators and removes its files there on absent: use a directory of "
                "its own, such as %s" % DEFAULTS["windows_state_dir"])
    return None


def validate_settings(variables: Mapping[str, Any]) -> None:
    """Check only the non-ruleset variables (used when the state is absent)."""
    check = _Checker()
    check_settings(check, variables)
    if check.problems:
        raise PolicyError(check.problems)
