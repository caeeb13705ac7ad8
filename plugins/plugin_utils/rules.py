# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The seam between the policy and the firewalls: one ordered list of typed, backend-neutral rules.

The threat-model order is written down here once, per direction, and every renderer prints this list
and nothing else (first match wins):

output   loopback, endpoints (scoped to address, protocol, port and owner; a nested tunnel's endpoint also to
         its carrier tunnel), management replies,
         DHCP and neighbour discovery (on-link destinations only), DNS refused outside the tunnel,
         tunnel interfaces (the exits: never a carrier), LAN, extra exceptions (addresses, then per-app: cgroup and
         address), reject
input    loopback, replies to allowed flows, management, DHCP and neighbour discovery, drop
forward  DNS refused outside the tunnel, tunnel interfaces, LAN, drop
bridged  (frames a Linux bridge forwards between its ports, ``bridge_rules``; not in ``rule_list``)
         DHCP and neighbour discovery, ARP, DNS dropped outside the tunnel, tunnel ports, LAN, drop

Output without ``killswitch_dns_servers``: nothing before the tunnel interfaces can refuse a packet leaving through
one (DNS through the tunnel goes anywhere), so they move up to right after loopback (``TUNNEL_FIRST``) and the DNS
group's tunnel accept, which they would shadow, goes: the same verdict for every packet, and a tunnel packet, most of
the traffic, meets two rules instead of up to ten (bench B4).  With resolvers, DNS through the tunnel to another
address is refused before the tunnel accept, so the order above stays (and forward keeps it: there the replies
from the tunnel come after the DNS refusal).

A rule with ``family`` None applies to IPv4 and IPv6; rules with addresses carry their family, so a
renderer never has to split or re-derive anything.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

from ansible_collections.netlock.killswitch.plugins.plugin_utils.addresses import host_network
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import (
    DNS_PORTS, AddressRule, Network, Owner, Policy, collapse)

INPUT, OUTPUT, FORWARD = "input", "output", "forward"
# Layer-2 forwarding between the ports of a Linux bridge: never meets the inet hooks without br_netfilter.
BRIDGED = "bridged"
DIRECTIONS = (INPUT, OUTPUT, FORWARD)
ACCEPT, DROP, REJECT, LOG = "accept", "drop", "reject", "log"
FAMILIES = (4, 6)
# The groups in threat-model order; every rule belongs to one, and each direction's rules follow this order
# (or, for output without pinned resolvers, TUNNEL_FIRST: group_order).
GROUPS = ("loopback", "established", "endpoint", "management", "dhcp", "neighbour", "dns", "tunnel", "lan",
          "extra", "final")
# The same with the exit tunnels right after loopback: the order without pinned DNS resolvers (see above).
TUNNEL_FIRST = ("loopback", "established", "tunnel", "endpoint", "management", "dhcp", "neighbour", "dns", "lan",
                "extra", "final")

LOOPBACK = "lo"
BROADCAST_V4 = ipaddress.ip_network("255.255.255.255/32")
# Where on-link control traffic may go: a neighbour-discovery message to any other address could carry
# data off-link (RFC 4861 messages are only ever sent to link-local or multicast addresses).
ON_LINK_V6 = (ipaddress.ip_network("fe80::/10"), ipaddress.ip_network("ff00::/8"))
DHCP6_SERVERS = (ipaddress.ip_network("ff02::1:2/128"),)
MLD_ROUTERS = (ipaddress.ip_network("ff02::16/128"),)
LINK_LOCAL_V6 = (ipaddress.ip_network("fe80::/10"),)
# ICMPv6 types by their nftables names (neutral enough; each renderer maps them).
ND_OUT = ("nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert")
ND_IN = ("nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert")
MLD_REPORT = ("mld2-listener-report",)
ND_HOP_LIMIT = 255  # RFC 4861: proves the packet never crossed a router


@dataclass(frozen=True)
class Rule:
    """One firewall rule: every field that is set must match (an empty tuple matches anything)."""

    direction: str
    group: str
    verdict: str
    name: str = ""                    # stable name of what the rule allows, for address sets and comments
    family: Optional[int] = None      # 4 or 6; None for both
    out_interface: Optional[str] = None   # name, or prefix with a trailing '*'
    in_interface: Optional[str] = None
    sources: Tuple[Network, ...] = ()
    destinations: Tuple[Network, ...] = ()
    protocols: Tuple[str, ...] = ()   # "tcp", "udp", "icmp" (ICMPv4 or ICMPv6 by family)
    source_ports: Tuple[int, ...] = ()
    destination_ports: Tuple[int, ...] = ()
    icmp_types: Tuple[str, ...] = ()  # ICMPv6 types (family 6), by their nftables names
    hop_limit: Optional[int] = None
    owner: Owner = Owner()
    states: Tuple[str, ...] = ()      # conntrack states: "established", "related", "invalid"
    reply: bool = False               # conntrack direction: reply packets of the flow only
    log_prefix: str = ""              # for verdict LOG: the rule logs (rate-limited) and matching goes on
    cgroup: Optional[str] = None      # the sending socket's cgroup v2 (path below the root) or one of its children
    ether_type: Optional[str] = None  # bridged frames only: a link-layer protocol that is not IP ("arp")


def group_order(policy: Policy, direction: str) -> Tuple[str, ...]:
    """The threat-model order of a direction's groups: TUNNEL_FIRST for output unless DNS resolvers are pinned."""
    return TUNNEL_FIRST if direction == OUTPUT and not policy.dns_servers else GROUPS


def _families(policy: Policy) -> Tuple[int, ...]:
    return (4,) if policy.ipv6 == "block" else (4, 6)


def _by_family(networks: Sequence[Network], family: int) -> Tuple[Network, ...]:
    return tuple(n for n in networks if n.version == family)


def _address_rules(direction: str, group: str, prefix: str, rules: Sequence[AddressRule],
                   owner: Owner = Owner(), cgroup: Optional[str] = None) -> List[Rule]:
    """One rule per destination group (protocol and port) and family."""
    out = []
    for rule in rules:
        carried = "_carried" if rule.via else ""  # a nested endpoint, out through its carrier tunnel only
        name = "%s%s_%s_%s" % (prefix, carried, rule.protocol, rule.port if rule.port is not None else "all")
        protocols = () if rule.protocol == "any" else (rule.protocol,)
        ports = (rule.port,) if rule.port is not None else ()
        for family in (4, 6):
            networks = _by_family(rule.networks, family)
            if networks:
                out.append(Rule(direction, group, ACCEPT, name, family, out_interface=rule.via, destinations=networks,
                                protocols=protocols, destination_ports=ports, owner=owner, cgroup=cgroup))
    return out


def _app_exceptions(policy: Policy) -> List[Rule]:
    return [rule for index, exception in enumerate(policy.app_exceptions)
            for rule in _address_rules(OUTPUT, "extra", "app%d" % index, (exception.rule,), cgroup=exception.cgroup)]


def _tunnels(policy: Policy, direction: str, verdict: str = ACCEPT, incoming: bool = False,
             **match) -> List[Rule]:
    """One rule per exit tunnel interface (carriers are none); with IPv6 blocked, IPv4 only."""
    family = 4 if policy.ipv6 == "block" else None
    side = "in_interface" if incoming else "out_interface"
    group = match.pop("group", "tunnel")  # once: popped inside the loop, only the first rule got the group
    return [Rule(direction, group, verdict, "tunnel", family, **{side: name}, **match)
            for name in policy.exit_interfaces]


def _dns(policy: Policy, direction: str) -> List[Rule]:
    """DNS and DNS-over-TLS leave only through the tunnel (to the configured resolvers if any); refused elsewhere."""
    rules = []
    resolvers = [host_network(a) for a in policy.dns_servers]
    match = dict(protocols=("tcp", "udp"), destination_ports=DNS_PORTS)
    # In TUNNEL_FIRST order the tunnel accepts came before and let DNS through them already.
    if not resolvers and group_order(policy, direction) != TUNNEL_FIRST:
        rules += _tunnels(policy, direction, group="dns", **match)
    for family in _families(policy):
        networks = _by_family(resolvers, family)
        if networks:
            rules += [Rule(direction, "dns", ACCEPT, "dns", family, out_interface=name, destinations=networks, **match)
                      for name in policy.exit_interfaces]
    rules += _log(policy, direction, "dns", "dns", **match)
    rules += [Rule(direction, "dns", REJECT, "dns", protocols=(protocol,), destination_ports=DNS_PORTS)
              for protocol in ("tcp", "udp")]
    return rules


def _log(policy: Policy, direction: str, group: str, what: str, **match) -> List[Rule]:
    if not policy.log_drops:
        return []
    return [Rule(direction, group, LOG, what, log_prefix="killswitch %s drop: " % what, **match)]


def _lan(policy: Policy, direction: str, towards: bool = True, **match) -> List[Rule]:
    if not policy.allow_lan:
        return []
    rules = []
    for family in _families(policy):
        networks = _by_family(policy.lan_networks, family)
        if networks:
            side = "destinations" if towards else "sources"
            rules.append(Rule(direction, "lan", ACCEPT, "lan", family, **{side: networks}, **match))
    return rules


def _management(policy: Policy, direction: str) -> List[Rule]:
    if not policy.management_ports:
        return []
    rules = []
    for family in (4, 6):
        networks = _by_family(policy.management_networks, family)
        if not networks:
            continue
        if direction == INPUT:
            rules.append(Rule(INPUT, "management", ACCEPT, "management", family, sources=networks,
                              protocols=("tcp",), destination_ports=policy.management_ports))
        else:  # only the replies of connections the management sources opened
            rules.append(Rule(OUTPUT, "management", ACCEPT, "management", family, destinations=networks,
                              protocols=("tcp",), source_ports=policy.management_ports, states=("established",),
                              reply=True))
    return rules


def _dhcp_and_neighbours_out(policy: Policy) -> List[Rule]:
    if not policy.allow_dhcp:
        return []
    # A DHCPv4 client broadcasts, and renews by unicast to its server, which is on the LAN: the LAN ranges
    # stand in for "the server it got its lease from", which only the host's DHCP client knows.
    # Collapsed: a LAN range may hold the broadcast address, and nft interval sets refuse overlaps.
    dhcp_servers = collapse((BROADCAST_V4,) + _by_family(policy.lan_networks, 4))
    rules = [Rule(OUTPUT, "dhcp", ACCEPT, "dhcp", 4, destinations=dhcp_servers, protocols=("udp",),
                  source_ports=(68,), destination_ports=(67,))]
    if policy.ipv6 == "tunnel":
        rules.append(Rule(OUTPUT, "dhcp", ACCEPT, "dhcp6", 6, destinations=DHCP6_SERVERS, protocols=("udp",),
                          source_ports=(546,), destination_ports=(547,)))
    return rules + [
        Rule(OUTPUT, "neighbour", ACCEPT, "onlink", 6, destinations=ON_LINK_V6, icmp_types=ND_OUT,
             hop_limit=ND_HOP_LIMIT),
        Rule(OUTPUT, "neighbour", ACCEPT, "mld", 6, destinations=MLD_ROUTERS, icmp_types=MLD_REPORT),
    ]


def _dhcp_and_neighbours_in(policy: Policy) -> List[Rule]:
    if not policy.allow_dhcp:
        return []
    rules = [Rule(INPUT, "dhcp", ACCEPT, "dhcp", 4, protocols=("udp",), source_ports=(67,), destination_ports=(68,))]
    if policy.ipv6 == "tunnel":
        rules.append(Rule(INPUT, "dhcp", ACCEPT, "dhcp6_server", 6, sources=LINK_LOCAL_V6, protocols=("udp",),
                          source_ports=(547,), destination_ports=(546,)))
    return rules + [Rule(INPUT, "neighbour", ACCEPT, "onlink", 6, icmp_types=ND_IN, hop_limit=ND_HOP_LIMIT)]


def _refuse(policy: Policy, direction: str) -> List[Rule]:
    """Reject locally generated traffic so programs fail at once instead of timing out."""
    return _log(policy, direction, "final", direction) + [
        Rule(direction, "final", REJECT, "final", family, protocols=protocols)
        for family in FAMILIES for protocols in (("tcp",), ())]


def _final_drop(direction: str) -> List[Rule]:
    """One final rule per family, so that the counters tell dropped IPv4 from IPv6 (the guard's metrics)."""
    return [Rule(direction, "final", DROP, "final", family) for family in FAMILIES]


def output_rules(policy: Policy) -> List[Rule]:
    first = group_order(policy, OUTPUT) == TUNNEL_FIRST
    return (
        [Rule(OUTPUT, "loopback", ACCEPT, "loopback", out_interface=LOOPBACK)]
        + (_tunnels(policy, OUTPUT) if first else [])
        + _address_rules(OUTPUT, "endpoint", "endpoint", policy.endpoints, policy.endpoint_owner)
        + _management(policy, OUTPUT)
        + _dhcp_and_neighbours_out(policy)
        + _dns(policy, OUTPUT)
        + ([] if first else _tunnels(policy, OUTPUT))
        + _lan(policy, OUTPUT)
        + _address_rules(OUTPUT, "extra", "extra", policy.extra_outbound)
        + _app_exceptions(policy)
        + _refuse(policy, OUTPUT)
    )


def input_rules(policy: Policy) -> List[Rule]:
    # Inbound packets cannot leak; replies to flows the output chain allowed are fine.
    return (
        [Rule(INPUT, "loopback", ACCEPT, "loopback", in_interface=LOOPBACK),
         Rule(INPUT, "established", ACCEPT, "established", states=("established", "related")),
         Rule(INPUT, "established", DROP, "invalid", states=("invalid",))]
        + _management(policy, INPUT)
        + _dhcp_and_neighbours_in(policy)
        + _log(policy, INPUT, "final", INPUT)
        + _final_drop(INPUT)
    )


def forward_rules(policy: Policy) -> List[Rule]:
    if policy.forward == "off":
        return []
    rules: List[Rule] = []
    if policy.forward == "tunnel":
        # Conntrack state is not interface-scoped: a flow that began in the tunnel may be re-routed to the
        # LAN when the tunnel drops, so replies are accepted per interface.
        rules += _dns(policy, FORWARD)
        rules += _tunnels(policy, FORWARD)
        rules += _tunnels(policy, FORWARD, incoming=True, states=("established", "related"))
        rules += _lan(policy, FORWARD)
        rules += _lan(policy, FORWARD, towards=False, states=("established", "related"))
    return rules + _log(policy, FORWARD, "final", FORWARD) + _final_drop(FORWARD)


def _bridged_dhcp_and_neighbours(policy: Policy) -> List[Rule]:
    """A bridged guest's own DHCP and neighbour discovery, both ways (no conntrack on a bridge: matched by
    destination, which for these is the broadcast, the LAN, or on-link addresses only)."""
    if not policy.allow_dhcp:
        return []
    dhcp_v4 = collapse((BROADCAST_V4,) + _by_family(policy.lan_networks, 4))
    rules = [Rule(BRIDGED, "dhcp", ACCEPT, "dhcp", 4, destinations=dhcp_v4, protocols=("udp",),
                  source_ports=(ports[0],), destination_ports=(ports[1],)) for ports in ((68, 67), (67, 68))]
    if policy.ipv6 == "tunnel":
        rules += [Rule(BRIDGED, "dhcp", ACCEPT, "dhcp6", 6, destinations=DHCP6_SERVERS, protocols=("udp",),
                       source_ports=(546,), destination_ports=(547,)),
                  Rule(BRIDGED, "dhcp", ACCEPT, "dhcp6_client", 6, destinations=LINK_LOCAL_V6, protocols=("udp",),
                       source_ports=(547,), destination_ports=(546,))]
    return rules + [
        Rule(BRIDGED, "neighbour", ACCEPT, "onlink", 6, destinations=ON_LINK_V6,
             icmp_types=tuple(sorted(set(ND_OUT + ND_IN))), hop_limit=ND_HOP_LIMIT),
        Rule(BRIDGED, "neighbour", ACCEPT, "mld", 6, destinations=MLD_ROUTERS, icmp_types=MLD_REPORT),
    ]


def bridge_rules(policy: Policy) -> List[Rule]:
    """What a Linux bridge may forward between its ports (a bridged guest's frames), by ``policy.forward``.

    ``off``: nothing (no bridge rules at all).  ``block``: every bridged frame is dropped, as every routed one is.
    ``tunnel``: the forward policy at layer 2.  A bridged frame never reaches a layer-3 tunnel (a guest reaches
    the tunnel through the host, which routes it: the inet forward chain), so what may cross a bridge is: the
    guest's DHCP and neighbour discovery (with ``allow_dhcp``), ARP (never leaves the link), DNS only into a
    tunnel port, a tunnel that is itself a bridge port (an OpenVPN tap) both ways, and frames to the LAN
    (with ``allow_lan``; both ways, and guest to guest, since replies are addressed to the guest's LAN address).
    Nothing is rejected: reject is not allowed in a bridge's forward hook, so refused DNS is dropped.
    The host's own traffic through a bridge (management included) takes the bridge's input and output hooks,
    never this one: the inet table alone decides it.
    """
    if policy.forward == "off":
        return []
    rules: List[Rule] = []
    if policy.forward == "tunnel":
        rules += _bridged_dhcp_and_neighbours(policy)
        rules.append(Rule(BRIDGED, "neighbour", ACCEPT, "arp", ether_type="arp"))
        rules += [replace(rule, verdict=DROP) if rule.verdict == REJECT else rule for rule in _dns(policy, BRIDGED)]
        rules += _tunnels(policy, BRIDGED)
        rules += _tunnels(policy, BRIDGED, incoming=True)
        rules += _lan(policy, BRIDGED)
    return rules + _log(policy, BRIDGED, "final", BRIDGED) + _final_drop(BRIDGED)


def rule_list(policy: Policy) -> List[Rule]:
    """Every rule of the policy: input, output, forward, each in threat-model order."""
    return input_rules(policy) + output_rules(policy) + forward_rules(policy)


def policy_rules(policy: Policy) -> Tuple[Rule, ...]:
    """``rule_list``, built once per policy (frozen, so it cannot change): a host's ruleset and fence share it."""
    cached = policy.__dict__.get("_rules")
    if cached is None:
        cached = tuple(rule_list(policy))
        object.__setattr__(policy, "_rules", cached)
    return cached


def in_order(rules: Sequence[Rule], policy: Optional[Policy] = None) -> bool:
    """Whether each direction's rules follow the policy's ``group_order`` (GROUPS without a policy; used by tests
    and renderers' self-checks)."""
    for direction in DIRECTIONS:
        groups = group_order(policy, direction) if policy is not None else GROUPS
        ranks = [groups.index(r.group) for r in rules if r.direction == direction]
        if ranks != sorted(ranks):
            return False
    return True
