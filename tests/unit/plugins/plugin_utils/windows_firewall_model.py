# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A simulated Windows Firewall: which packets a host lets through, given its profiles and rules.

Nothing here has run on Windows.  It models the documented semantics, so that the rendered document
(``render_windows.document``) and the third-party rules the module reports (``windows_plan``) can be replayed
against the leak-lab cases without a Windows host (``test_windows_leak_cases.py``).  Modelled, with sources:

* **Precedence** ("Windows Firewall rules", learn.microsoft.com, *Rule precedence for inbound and outbound
  rules*; MS-FASP 2.2.34 FW_RULE_ACTION): an enabled matching Block rule beats any Allow rule, whatever their
  order; else an enabled matching Allow rule allows; else the profile's default action.  Allow-bypass
  (authenticated IPsec) rules are not modelled.
* **Profiles**: each interface has its network category (Domain, Private, Public); the profile of the
  interface a packet uses gives the default actions, and a profile whose firewall is off allows everything
  on its interfaces.  A rule limited to profiles applies only on interfaces of those profiles.
* **State** (WFP, *ALE Re-authorization*: "once an ALE flow is allowed, all traffic that is part of the ALE
  flow is allowed", in both directions): a flow is authorized once, by its first packet, outbound or
  inbound; its replies then pass.  A flow is its protocol, local and remote addresses and ports (ICMP: echo
  request and reply), not its interface.  Windows sends by the strong host model by default (The Cable Guy,
  "Strong and Weak Host Models", which the ALE page cites: a packet leaves only by the interface that holds its
  source address), so a flow authorized through the tunnel cannot carry packets out of another adapter: a packet
  whose local address is not on its interface is refused here as impossible.
  A policy change re-authorizes flows (same page): ``WindowsHost.change`` forgets them.
* **Matching**: ``Any`` (or no value) matches everything; protocols by name or number; remote addresses
  as addresses, CIDRs, masks (``10.0.0.0/255.0.0.0``) and ranges (``a-b``), IPv4 and IPv6, and the keyword
  ``LocalSubnet`` (the subnets of the packet's interface); ports and ranges (``54-852``), for TCP and UDP
  only, and the keyword ``IPHTTPS`` (TCP 443, the IP-HTTPS server's default); ICMP types (``135``,
  ``135:*``); the program, case-insensitively on its full path, environment variables expanded
  (``%SystemRoot%``), ``System`` for what the kernel sends; interface types (Wired, Wireless, RemoteAccess).
  A value the model cannot read raises ``ModelError``: it never guesses.
* **Interfaces**: a rule is bound to the adapters its aliases named when it was made (MS-FASP 2.2.18
  FW_INTERFACE_LUIDS: a rule holds interface GUIDs, not names).  The document's rules are made as
  ``killswitch_windows_firewall`` makes them: patterns resolved against the adapters present, and a rule
  whose patterns resolve to no adapter created **disabled** (enabled, without interfaces, it would match
  every interface).  An adapter deleted later leaves the rule bound to nothing; a new adapter with the same
  alias is another GUID, bound again only by the next run or guard pass (``apply`` again).
* **Loopback** is not filtered, and **forwarded** traffic (Hyper-V switch, WSL2, Windows Sandbox, ICS) never
  reaches Windows Firewall's filters: both are answered ``NOT_FILTERED``, never allowed or blocked by a rule.

Not modelled (docs/windows.md, "The evaluation model (simulated)"): other WFP providers and callout drivers
(WFP *Filter Arbitration*: a callout can veto or a hard permit can override), group policy stores, IPsec
and authenticated bypass, service, user and package (AppContainer) conditions of rules (a rule that sets them
is taken to match: more open, so a leak is never hidden), local address and port conditions' keywords, and
the weak host model.
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.netlock.killswitch.plugins.plugin_utils import windows_plan
from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_windows import LOOPBACK_ALIAS, PROFILES, like

OUTBOUND, INBOUND = "Outbound", "Inbound"
ALLOW, BLOCK = "Allow", "Block"
ALLOWED, BLOCKED, NOT_FILTERED = "allowed", "blocked", "not filtered by Windows Firewall"
ANY_WORDS = windows_plan.ANY_WORDS
PROTOCOLS = {"tcp": 6, "udp": 17, "icmpv4": 1, "icmpv6": 58}
PORT_PROTOCOLS = (6, 17)
ECHO = {1: (8, 0), 58: (128, 129)}  # ICMP echo request and reply types, by protocol
PORT_KEYWORDS = {"iphttps": [(443, 443)], "iphttpsout": [(443, 443)]}
# CIM enums when a rule came serialized unconverted (windows_plan reads the same numbers).
ACTION_NUMBERS = {2: ALLOW, 4: BLOCK}
ENVIRONMENT = {"%systemroot%": "c:\\windows", "%windir%": "c:\\windows", "%systemdrive%": "c:",
               "%programfiles%": "c:\\program files", "%programfiles(x86)%": "c:\\program files (x86)"}
KERNEL = "System"

Network = Any
PortSet = Optional[List[Tuple[int, int]]]  # None: any port


class ModelError(ValueError):
    """A rule value or packet the model cannot evaluate faithfully."""


# --------------------------------------------------------------------------- the host

@dataclass(frozen=True)
class Adapter:
    """A network adapter: its alias (``Get-NetAdapter``), network category, addresses with prefix, type."""

    alias: str
    profile: str = "Public"
    addresses: Tuple[str, ...] = ()   # "198.18.1.11/24", "2001:db8:1::11/64"
    kind: str = "Wired"               # Wired, Wireless or RemoteAccess (New-NetFirewallRule -InterfaceType)
    guid: str = ""                    # identity; a re-created adapter is another one

    @property
    def identity(self) -> str:
        return self.guid or self.alias.lower()

    def interfaces(self) -> List[Any]:
        return [ipaddress.ip_interface(a) for a in self.addresses]

    def address(self, family: int) -> Optional[str]:
        found = [str(i.ip) for i in self.interfaces() if i.version == family]
        return found[0] if found else None


@dataclass(frozen=True)
class Packet:
    """The first packet of a flow, or a reply.  ``local`` defaults to the interface's address of the family."""

    direction: str
    interface: str
    protocol: str                     # TCP, UDP, ICMPv4, ICMPv6 or an IP protocol number ("41")
    remote: str
    remote_port: Optional[int] = None
    local_port: Optional[int] = None
    icmp_type: Optional[int] = None
    program: Optional[str] = None     # full path, "System" for the kernel, None when no program owns it
    local: str = ""
    forwarded: bool = False           # a guest's packet routed through the host (Hyper-V, WSL2, Sandbox)
    label: str = ""

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.remote).version

    def describe(self) -> str:
        port = ":%s" % self.remote_port if self.remote_port is not None else ""
        icmp = " type %s" % self.icmp_type if self.icmp_type is not None else ""
        return "%s%s %s %s%s%s via %s by %s%s" % (
            self.label + ": " if self.label else "", self.direction, self.protocol, self.remote, port, icmp,
            self.interface, self.program or "no program", " (forwarded)" if self.forwarded else "")


@dataclass(frozen=True)
class Profile:
    enabled: bool = True
    default_inbound: str = BLOCK
    default_outbound: str = BLOCK


@dataclass(frozen=True)
class Rule:
    """A firewall rule as it lives on the host, its values read (None: any)."""

    name: str
    direction: str
    action: str
    enabled: bool
    protocol: Optional[int] = None
    remote_addresses: Optional[Tuple[str, ...]] = None   # raw values, read per packet (LocalSubnet needs it)
    local_ports: PortSet = None
    remote_ports: PortSet = None
    icmp_types: Optional[FrozenSet[int]] = None
    interfaces: Optional[FrozenSet[str]] = None          # adapter identities; None: every interface
    interface_types: Optional[FrozenSet[str]] = None
    program: Optional[str] = None                        # normalized path
    profiles: Optional[FrozenSet[str]] = None


@dataclass(frozen=True)
class Decision:
    verdict: str
    reason: str
    rule: str = ""

    @property
    def passes(self) -> bool:
        return self.verdict != BLOCKED


@dataclass
class WindowsHost:
    """Adapters present now, profiles, rules; and the flows authorized so far."""

    adapters: Sequence[Adapter]
    profiles: Mapping[str, Profile]
    rules: Sequence[Rule]
    flows: set = field(default_factory=set)

    def adapter(self, alias: str) -> Adapter:
        for adapter in self.adapters:
            if adapter.alias.lower() == alias.lower():
                return adapter
        raise ModelError("no adapter %r on this host: a packet cannot use it" % alias)

    def change(self, **changes: Any) -> "WindowsHost":
        """The host after a policy or adapter change: flows are re-authorized, so none is kept."""
        return replace(self, flows=set(), **changes)

    # ----------------------------------------------------------------------- evaluation

    def evaluate(self, packet: Packet) -> Decision:
        """What Windows Firewall does with ``packet``; changes nothing (``send`` records the flow)."""
        if packet.forwarded:
            return Decision(NOT_FILTERED, "forwarded traffic never passes Windows Firewall's filters")
        if packet.interface.lower() == LOOPBACK_ALIAS.lower():
            return Decision(NOT_FILTERED, "loopback is not filtered by Windows Firewall")
        adapter = self.adapter(packet.interface)
        local = _local(packet, adapter)
        key = _flow(packet, local)
        if key is not None and key in self.flows:
            return Decision(ALLOWED, "part of a flow already authorized")
        profile = self.profiles.get(adapter.profile)
        if profile is None:
            raise ModelError("no profile %r" % adapter.profile)
        if not profile.enabled:
            return Decision(ALLOWED, "the firewall is off on the %s profile" % adapter.profile)
        matching = [rule for rule in self.rules if _matches(rule, packet, adapter)]
        for action in (BLOCK, ALLOW):  # a block beats every allow, whatever the order
            for rule in matching:
                if rule.action == action:
                    return Decision(ALLOWED if action == ALLOW else BLOCKED, "%s rule" % action.lower(), rule.name)
        default = profile.default_outbound if packet.direction == OUTBOUND else profile.default_inbound
        return Decision(ALLOWED if default == ALLOW else BLOCKED,
                        "default %s of the %s profile" % (default, adapter.profile))

    def send(self, packet: Packet) -> Decision:
        """Evaluate the first packet of a flow; an allowed one authorizes the flow (its replies pass)."""
        decision = self.evaluate(packet)
        if decision.verdict == ALLOWED and not packet.forwarded:
            key = _flow(packet, _local(packet, self.adapter(packet.interface)))
            if key is not None:
                self.flows.add(key)
        return decision


def reply(packet: Packet) -> Packet:
    """The answer to ``packet``: the other direction (addresses and ports are the host's view, so they stay), an
    echo reply for an echo request."""
    icmp = packet.icmp_type
    for request, answer in ECHO.values():
        if icmp == request:
            icmp = answer
    return replace(packet, direction=INBOUND if packet.direction == OUTBOUND else OUTBOUND, icmp_type=icmp,
                   label="reply to " + (packet.label or packet.describe()))


def _local(packet: Packet, adapter: Adapter) -> str:
    addresses = {str(i.ip) for i in adapter.interfaces()}
    local = packet.local or adapter.address(packet.family) or ""
    if local not in addresses:
        raise ModelError("%s: %r has no address %s (strong host model: Windows sends a packet only by the interface "
                         "that holds its source address)" % (packet.describe(), adapter.alias, local or "of the family"))
    return local


def _flow(packet: Packet, local: str) -> Optional[tuple]:
    protocol = protocol_number(packet.protocol)
    if protocol in ECHO:
        if packet.icmp_type not in ECHO[protocol]:
            return None  # only echo request and reply make a flow here
        return (protocol, local, ipaddress.ip_address(packet.remote).exploded)
    if protocol in PORT_PROTOCOLS:
        return (protocol, local, packet.local_port, ipaddress.ip_address(packet.remote).exploded, packet.remote_port)
    return (protocol, local, ipaddress.ip_address(packet.remote).exploded)


# --------------------------------------------------------------------------- matching

def _matches(rule: Rule, packet: Packet, adapter: Adapter) -> bool:
    if not rule.enabled or rule.direction != packet.direction:
        return False
    if rule.profiles is not None and adapter.profile not in rule.profiles:
        return False
    if rule.interfaces is not None and adapter.identity not in rule.interfaces:
        return False
    if rule.interface_types is not None and adapter.kind.lower() not in rule.interface_types:
        return False
    protocol = protocol_number(packet.protocol)
    if rule.protocol is not None and rule.protocol != protocol:
        return False
    if rule.remote_addresses is not None and not _address_in(packet.remote, rule.remote_addresses, adapter):
        return False
    if rule.local_ports is not None or rule.remote_ports is not None:
        if rule.protocol not in PORT_PROTOCOLS:
            raise ModelError("%s: ports need protocol TCP or UDP (New-NetFirewallRule refuses them otherwise)" % rule.name)
        if not _port_in(packet.remote_port, rule.remote_ports) or not _port_in(packet.local_port, rule.local_ports):
            return False
    if rule.icmp_types is not None and (protocol not in ECHO or packet.icmp_type not in rule.icmp_types):
        return False
    if rule.program is not None and (packet.program is None or program_key(packet.program) != rule.program):
        return False
    return True


def _address_in(address: str, values: Sequence[str], adapter: Adapter) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in read_addresses(values, adapter) if network.version == ip.version)


def _port_in(port: Optional[int], ports: PortSet) -> bool:
    if ports is None:
        return True
    return port is not None and any(low <= port <= high for low, high in ports)


# --------------------------------------------------------------------------- reading Windows values

# A list field as the module reports it, and its "no restriction" values: read as windows_plan reads them.
_items, _is_any = windows_plan._items, windows_plan._is_any  # pylint: disable=protected-access


def protocol_number(value: Any) -> Optional[int]:
    """``TCP`` -> 6, ``"41"`` -> 41, ``Any`` -> None."""
    text = str(value if value is not None else "").strip().lower()
    if text in ANY_WORDS or text == "256":
        return None
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    if text.isdigit() and 0 <= int(text) <= 255:
        return int(text)
    raise ModelError("protocol %r" % value)


def read_addresses(values: Sequence[str], adapter: Optional[Adapter] = None) -> List[Network]:
    """Remote address values as networks; ``LocalSubnet`` needs the packet's adapter."""
    networks: List[Network] = []
    for value in values:
        if value.lower() == "localsubnet":
            if adapter is None:
                raise ModelError("LocalSubnet without an interface")
            networks += [i.network for i in adapter.interfaces()]
        elif "-" in value:
            low, high = (ipaddress.ip_address(part.strip()) for part in value.split("-", 1))
            networks += list(ipaddress.summarize_address_range(low, high))
        else:
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                raise ModelError("remote address %r (a keyword only the host can resolve)" % value) from None
    return networks


def read_ports(values: Sequence[str]) -> PortSet:
    if _is_any(values):
        return None
    pairs = []
    for value in values:
        if value.lower() in PORT_KEYWORDS:
            pairs += PORT_KEYWORDS[value.lower()]
            continue
        low, _sep, high = value.partition("-")
        if not low.strip().isdigit() or (high and not high.strip().isdigit()):
            raise ModelError("port %r" % value)
        pairs.append((int(low), int(high or low)))
    return pairs


def read_icmp_types(values: Sequence[str]) -> Optional[FrozenSet[int]]:
    if _is_any(values):
        return None
    # "135:*" or "135:0": the type; codes are not modelled (a code-limited rule is taken as the whole type: more open)
    return frozenset(int(value.split(":", 1)[0]) for value in values)


def program_key(value: str) -> str:
    """A program path as Windows compares it: case-insensitive, environment variables expanded."""
    text = value.strip().lower()
    for variable, expansion in ENVIRONMENT.items():
        if text.startswith(variable):
            text = expansion + text[len(variable):]
    return text


def _program(value: Any) -> Optional[str]:
    text = str(value or "").strip()
    return None if text.lower() in ANY_WORDS else program_key(text)


def _word(value: Any, numbers: Mapping[int, str]) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return numbers.get(value, str(value))
    text = str(value or "").strip()
    return numbers.get(int(text), text) if text.isdigit() else text


# --------------------------------------------------------------------------- rules as the host holds them

def resolve(patterns: Sequence[str], adapters: Iterable[Adapter]) -> List[Adapter]:
    """The adapters ``Get-NetAdapter -Name <pattern>`` finds for each pattern (PowerShell ``-like``)."""
    return [a for a in adapters if any(like(a.alias, p) for p in patterns)]


def document_rules(document: Mapping[str, Any], adapters: Sequence[Adapter]) -> List[Rule]:
    """The group's rules as ``killswitch_windows_firewall`` (and the guard) make them, with ``adapters`` present."""
    rules = []
    for entry in document["rules"]:
        patterns = list(entry.get("interface_aliases") or [])
        bound = resolve(patterns, adapters)
        rules.append(Rule(
            name=entry["name"], direction=entry["direction"], action=entry["action"],
            # a rule whose patterns match no adapter is made disabled, not without interfaces
            enabled=bool(bound) or not patterns,
            protocol=protocol_number(entry["protocol"]),
            remote_addresses=None if _is_any(entry["remote_addresses"]) else tuple(entry["remote_addresses"]),
            local_ports=read_ports(entry["local_ports"]), remote_ports=read_ports(entry["remote_ports"]),
            icmp_types=read_icmp_types(entry["icmp_types"]),
            interfaces=frozenset(a.identity for a in bound) if patterns else None,
            program=_program(entry.get("program"))))
    return rules


def third_party_rules(entries: Iterable[Mapping[str, Any]], adapters: Sequence[Adapter]) -> List[Rule]:
    """Rules in the shape the module lists them (``live.third_party``), bound to the adapters their aliases name."""
    rules = []
    for entry in entries:
        aliases = _items(entry.get("interface_aliases"))
        types = _items(entry.get("interface_type"))
        profiles = _items(entry.get("profiles"))
        addresses = _items(entry.get("remote_addresses"))
        rules.append(Rule(
            name=str(entry["name"]),
            direction=_word(entry.get("direction"), windows_plan.DIRECTION_NUMBERS),
            action=_word(entry.get("action"), ACTION_NUMBERS),
            enabled=windows_plan.is_enabled(entry.get("enabled")),
            protocol=protocol_number(entry.get("protocol")),
            remote_addresses=None if _is_any(addresses) else tuple(addresses),
            local_ports=read_ports(_items(entry.get("local_ports"))),
            remote_ports=read_ports(_items(entry.get("remote_ports"))),
            icmp_types=read_icmp_types(_items(entry.get("icmp_types"))),
            interfaces=None if _is_any(aliases) else frozenset(a.identity for a in resolve(aliases, adapters)),
            interface_types=None if _is_any(types) else frozenset(t.lower() for t in types),
            program=_program(entry.get("program")),
            profiles=None if _is_any(profiles) else frozenset(profiles)))
    return rules


def profiles_of(document: Mapping[str, Any]) -> Dict[str, Profile]:
    wanted = document["profiles"]
    return {name: Profile(bool(wanted["enabled"]), wanted["default_inbound"], wanted["default_outbound"])
            for name in wanted.get("names") or PROFILES}


def apply(document: Mapping[str, Any], adapters: Sequence[Adapter], third_party: Sequence[Mapping[str, Any]] = (),
          exclusive: bool = False, now: Optional[Sequence[Adapter]] = None) -> WindowsHost:
    """The host after a run of the role: the document's profiles and rules made with ``adapters`` present,
    the third-party rules as they are, those ``windows_plan.open_paths`` reports disabled with ``exclusive``
    (what the action plugin asks the module to disable), and ``now`` the adapters present afterwards."""
    disable = {path["name"] for path in windows_plan.open_paths(third_party, document)} if exclusive else set()
    others = [dict(rule, enabled=False) if rule.get("name") in disable else rule for rule in third_party]
    return WindowsHost(adapters=list(now if now is not None else adapters), profiles=profiles_of(document),
                       rules=document_rules(document, adapters) + third_party_rules(others, adapters))


def with_defaults(document: Mapping[str, Any], action: str = ALLOW) -> Dict[str, Any]:
    """The document with every profile's default inbound and outbound action ``action``: the positive control."""
    changed = copy.deepcopy(dict(document))
    changed["profiles"] = dict(changed["profiles"], default_inbound=action, default_outbound=action)
    return changed


# --------------------------------------------------------------------------- what Windows ships

def stock_rule(name: str, **fields: Any) -> Dict[str, Any]:
    """A third-party rule in the module's ``live.third_party`` shape, as a stock Windows host lists it."""
    rule = {"name": name, "display_name": name, "group": "@FirewallAPI.dll,-25000", "direction": OUTBOUND,
            "action": ALLOW, "enabled": True, "program": "Any", "protocol": "Any", "remote_addresses": ["Any"],
            "remote_ports": ["Any"], "interface_aliases": ["Any"], "interface_type": "Any"}
    rule.update(fields)
    return rule


SVCHOST = "%SystemRoot%\\system32\\svchost.exe"
# The enabled outbound allow rules of a stock host that open paths past the tunnel (test_windows_plan uses
# them): DNS to any resolver, and IPv6 carried over IPv4 (Teredo, 6in4 protocol 41, IP-HTTPS).
STOCK_OPEN_RULES = (
    stock_rule("CoreNet-DNS-Out-UDP", display_name="Core Networking - DNS (UDP-Out)", protocol="UDP",
               remote_ports=["53"], program=SVCHOST),
    stock_rule("CoreNet-Teredo-Out", display_name="Core Networking - Teredo (UDP-Out)", protocol="UDP",
               program=SVCHOST),
    stock_rule("CoreNet-IPv6-Out", display_name="Core Networking - IPv6 (IPv6-Out)", protocol="41"),
    stock_rule("CoreNet-IPHTTPS-Out", display_name="Core Networking - IPHTTPS (TCP-Out)", protocol="TCP",
               remote_ports=["IPHTTPS"], program=KERNEL),
)


def probes(interface: str, targets: Sequence[str], program: Optional[str] = "C:\\Users\\user\\app.exe",
           dns: Sequence[str] = (), dns_program: str = SVCHOST, tcp_port: int = 8080, udp_port: int = 9999,
           label: str = "") -> List[Packet]:
    """The lab's ``everything`` probe set: TCP, UDP and ICMP echo to each target, DNS (UDP and TCP 53, TCP 853)
    to each resolver, from ``program`` (DNS from the DNS client service, and from ``program`` too)."""
    found = []
    ports = itertools.count(50000)
    for target in targets:
        icmp = "ICMPv4" if ipaddress.ip_address(target).version == 4 else "ICMPv6"
        found += [Packet(OUTBOUND, interface, "TCP", target, tcp_port, next(ports), program=program, label=label),
                  Packet(OUTBOUND, interface, "UDP", target, udp_port, next(ports), program=program, label=label),
                  Packet(OUTBOUND, interface, icmp, target, icmp_type=ECHO[protocol_number(icmp)][0], program=program,
                         label=label)]
    for resolver in dns:
        for who in (dns_program, program):
            found += [Packet(OUTBOUND, interface, "UDP", resolver, 53, next(ports), program=who, label=label),
                      Packet(OUTBOUND, interface, "TCP", resolver, 53, next(ports), program=who, label=label),
                      Packet(OUTBOUND, interface, "TCP", resolver, 853, next(ports), program=who, label=label)]
    return found
