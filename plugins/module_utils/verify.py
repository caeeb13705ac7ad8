# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is the kill switch in force?  Proven on the live host, without taking the tunnel down.

Three kinds of checks, each one ``{name, ok, detail}``:

    installed   the main rules with the policy digest, the boot unit, the guard timer (status.py's own
                checks), the watcher and the fence
    addresses   the probe addresses, which the policy must not allow (else a probe proves nothing)
    traffic     per interface and family, one probe per protocol (TCP, UDP, ICMP echo, DNS query) bound to
                the interface (SO_BINDTODEVICE): outside the tunnel each must be refused by the local firewall,
                through a tunnel that is up each must pass it (the positive control)

The verdict of a probe is the local firewall's own answer, never a reply from the network: a packet that
netfilter drops or rejects in the output hook makes the sending call fail with EPERM before anything leaves,
and a call that succeeds means the packet got past every local rule (probe.py has the socket code).

Everything here but ``verify`` is pure (no sockets, no commands) and unit-tested as such; ``verify`` runs the
checks through injected parts: a command runner (as in status.py) and a prober (``probe.Prober`` on a host,
a fake in the tests).
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import json
import os
import struct
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ansible_collections.netlock.killswitch.plugins.module_utils import status

# The options of killswitch_verify.  The ones it shares with killswitch_status come from status.py, and
# tests/unit/test_contract.py holds the module's DOCUMENTATION and the role's verify.yml to this spec.
SHARED_OPTIONS = ("backend", "boot_unit", "guard", "guard_unit")
ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = dict(
    policy=dict(type="dict", required=True),
    digest=dict(type="str"),
    watch_unit=dict(type="str", default="netlock-killswitch-watch.service"),
    fence=dict(type="str", choices=["auto", "required", "off"], default="auto"),
    fence_table=dict(type="str"),
    guard_state_path=dict(type="path", default="/var/lib/netlock-killswitch/guard-state.json"),
    traffic=dict(type="bool", default=True),
    probe_addresses=dict(type="list", elements="str"),
    interfaces=dict(type="list", elements="str", default=[]),
    probe_timeout=dict(type="float", default=0.5),
    **{name: dict(status.ARGUMENT_SPEC[name]) for name in SHARED_OPTIONS}
)
MAX_PROBE_TIMEOUT = 5.0

# Documentation ranges (RFC 5737, RFC 3849, RFC 9637): nothing answers there, and no sane policy allows them.
# The first one of each family that the policy does not allow is probed, unless probe_addresses names one.
PROBE_CANDIDATES = {4: ("198.51.100.1", "203.0.113.1", "192.0.2.1"),
                    6: ("2001:db8:ffff::1", "3fff:ffff::1", "2001:db8:fffe::1")}
FAMILIES = (4, 6)
PROTOCOLS = ("tcp", "udp", "icmp", "dns")
PORTS = {"tcp": 443, "udp": 443, "icmp": None, "dns": 53}
# RFC 6761: never resolves, so a query that leaks asks nothing of anybody.
DNS_NAME = "netlock-killswitch-verify.invalid"
PAYLOAD = b"netlock-killswitch-verify"

# What a probe met, and what it had to meet.
REFUSED, SENT, CONNECTED, UNROUTABLE = "refused", "sent", "connected", "unroutable"
EXPECT_REFUSED, EXPECT_PASSES = "refused", "passes"
# The errors a firewall gives a sender: netfilter's drop and reject (and a cgroup egress program) say EPERM.
REFUSING_ERRNOS = frozenset((errno.EPERM, errno.EACCES))
# No route to the target through the interface: the packet never reached the output hook.
UNROUTABLE_ERRNOS = frozenset((errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN,
                               errno.ENODEV, errno.ENXIO, errno.EAFNOSUPPORT))
IFF_LOOPBACK = 0x8


class VerifyError(ValueError):
    """The verify cannot run as asked (bad option, bad policy, a probe address the policy allows)."""


# --------------------------------------------------------------------------- the policy

def digest_of(policy: Dict[str, Any]) -> str:
    """The policy digest of ``killswitch_policy``'s ``policy`` result, computed as ``Policy.digest`` does."""
    data = {key: value for key, value in policy.items() if key != "warnings"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _network(where: str, value: Any):
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise VerifyError("policy.%s: %r is not an address or network" % (where, value))


def check_policy(policy: Any) -> Dict[str, Any]:
    """The policy as killswitch_policy returns it (``killswitch_rendered.policy``), its shape checked."""
    if not isinstance(policy, dict):
        raise VerifyError("policy: give the policy that netlock.killswitch.killswitch_policy returns "
                          "(killswitch_rendered.policy), not %r" % (policy,))
    missing = [key for key in ("tunnel_interfaces", "table", "ipv6") if key not in policy]
    if missing:
        raise VerifyError("policy: %s missing; give the policy that netlock.killswitch.killswitch_policy returns "
                          "(killswitch_rendered.policy)" % ", ".join(missing))
    if not isinstance(policy["tunnel_interfaces"], list) or not policy["tunnel_interfaces"]:
        raise VerifyError("policy.tunnel_interfaces: %r is not a list of interfaces" % (policy["tunnel_interfaces"],))
    return policy


def exceptions(policy: Dict[str, Any]) -> List[Tuple[Any, str]]:
    """Every destination the policy lets out of a non-tunnel interface, each with the variable that allows it."""
    found = []
    for key, variable in (("endpoints", "killswitch_endpoints"), ("extra_outbound", "killswitch_extra_outbound")):
        for index, rule in enumerate(policy.get(key) or []):
            what = "%s/%s" % (rule.get("protocol", "any"), rule["port"] if rule.get("port") is not None else "all")
            for net in rule.get("networks") or []:
                found.append((_network("%s[%d].networks" % (key, index), net), "%s %s (%s)" % (variable, net, what)))
    if policy.get("allow_lan"):
        for net in policy.get("lan_networks") or []:
            found.append((_network("lan_networks", net), "killswitch_lan_cidrs %s (killswitch_allow_lan is on)" % net))
    return found


def allowed_by(policy: Dict[str, Any], address: str) -> Optional[str]:
    """What in the policy lets ``address`` out outside the tunnel, or None."""
    target = ipaddress.ip_address(address)
    for net, what in exceptions(policy):
        if net.version == target.version and target in net:
            return what
    return None


def pick_probe_addresses(policy: Dict[str, Any], given: Optional[Sequence[str]] = None) -> Tuple[Dict[int, str], List[str]]:
    """``({family: address}, notes)``: the addresses the probes go to, one per family.

    A family named in ``given`` uses that address and fails when the policy allows it; the others take the
    first candidate the policy does not allow, and the notes say which candidates were passed over.
    """
    chosen: Dict[int, str] = {}
    for value in given or []:
        try:
            address = ipaddress.ip_address(str(value).strip())
        except ValueError:
            raise VerifyError("probe_addresses: %r is not an IP address" % (value,))
        if address.version in chosen:
            raise VerifyError("probe_addresses: %s and %s are both IPv%d; give at most one address per family"
                              % (chosen[address.version], address, address.version))
        what = allowed_by(policy, str(address))
        if what:
            raise VerifyError("probe_addresses: %s is allowed by the policy (%s): a probe to it proves nothing; give "
                              "an address the policy does not allow" % (address, what))
        chosen[address.version] = str(address)
    notes = []
    for family in FAMILIES:
        if family in chosen:
            continue
        for candidate in PROBE_CANDIDATES[family]:
            what = allowed_by(policy, candidate)
            if what is None:
                chosen[family] = candidate
                break
            notes.append("%s is allowed by the policy (%s), not probed" % (candidate, what))
        else:
            raise VerifyError("every default IPv%d probe address (%s) is allowed by the policy; set probe_addresses "
                              "to one it does not allow" % (family, ", ".join(PROBE_CANDIDATES[family])))
    return chosen, notes


def tunnel_target(policy: Dict[str, Any], family: int, protocol: str, default: str) -> str:
    """Where a tunnel probe goes: DNS to the policy's resolver of that family when it has one."""
    if protocol == "dns":
        for server in policy.get("dns_servers") or []:
            if ipaddress.ip_address(server).version == family:
                return str(server)
    return default


def expectation(policy: Dict[str, Any], tunnel: bool, family: int, protocol: str, target: str) -> Tuple[str, str]:
    """``(expected, why)`` for a probe: refused outside the tunnel; through it, passes unless the policy blocks
    IPv6 (``killswitch_ipv6: block``) or limits DNS to resolvers that the target is not one of."""
    if not tunnel:
        return EXPECT_REFUSED, "outside the tunnel"
    if family == 6 and policy.get("ipv6") != "tunnel":
        return EXPECT_REFUSED, "killswitch_ipv6: block allows no IPv6, through the tunnel neither"
    servers = [ipaddress.ip_address(a) for a in policy.get("dns_servers") or []]
    if protocol == "dns" and servers and ipaddress.ip_address(target) not in servers:
        return EXPECT_REFUSED, "DNS goes only to killswitch_dns_servers"
    return EXPECT_PASSES, "the policy lets it through the tunnel"


# --------------------------------------------------------------------------- interfaces

def probe_interfaces(sys_class_net: str, tunnel_patterns: Sequence[str], only: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Every interface to probe: ``{name, tunnel, skip}`` (``skip``: why it is not probed, or None).

    Non-tunnel interfaces (narrowed to ``only``, names or ``*`` wildcards, when given) are probed when
    administratively up, whatever their carrier: a packet the firewall lets through counts even when the link
    would lose it.  A port enslaved to a bridge or bond is left to its master.  Tunnel interfaces (the
    policy's, wildcards expanded, absent names kept) are probed when up, as killswitch_status sees them.
    """
    try:
        present = sorted(os.listdir(sys_class_net))
    except OSError:
        present = []
    for pattern in only:
        if not pattern.endswith("*") and pattern not in present:
            raise VerifyError("interfaces: %s is not an interface of this host (%s)" % (pattern, ", ".join(present)))
    found = []
    tunnels = status.tunnel_names(sys_class_net, tunnel_patterns)
    for name in present:
        if name in tunnels:
            continue
        if only and not any(status.matches_pattern(name, p) for p in only):
            continue
        flags = status.interface_flags(sys_class_net, name)
        if name == "lo" or (flags is not None and flags[0] & IFF_LOOPBACK):
            continue
        skip = None
        master = os.path.join(sys_class_net, name, "master")
        if flags is None:
            skip = "gone"
        elif not flags[0] & status.IFF_UP:
            skip = "down"
        elif os.path.islink(master):
            skip = "a port of %s, which is probed itself" % os.path.basename(os.readlink(master))
        found.append(dict(name=name, tunnel=False, skip=skip))
    for name in tunnels:
        if name not in present:
            skip = "absent (the kill switch is meant to hold then)"
        elif not status.interface_up(sys_class_net, name):
            skip = "down (the kill switch is meant to hold then)"
        else:
            skip = None
        found.append(dict(name=name, tunnel=True, skip=skip))
    return found


# --------------------------------------------------------------------------- packets

def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_syn(source: str, target: str, source_port: int, port: int, sequence: int) -> bytes:
    """A TCP SYN header (no options) with its checksum over the IPv4 or IPv6 pseudo-header."""
    header = struct.pack("!HHIIBBHHH", source_port, port, sequence, 0, 5 << 4, 0x02, 64240, 0, 0)
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(target)
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 6, len(header))
    else:
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(header), 6)
    return header[:16] + struct.pack("!H", checksum(pseudo + header)) + header[18:]


def icmp_echo(family: int, ident: int, sequence: int, payload: bytes = PAYLOAD) -> bytes:
    """An echo request; for ICMPv6 the kernel fills in the checksum (it covers the pseudo-header)."""
    message = struct.pack("!BBHHH", 8 if family == 4 else 128, 0, 0, ident, sequence) + payload
    if family == 4:
        message = message[:2] + struct.pack("!H", checksum(message)) + message[4:]
    return message


def dns_query(ident: int, name: str = DNS_NAME, family: int = 4) -> bytes:
    """A standard recursive query for the A (or AAAA) record of ``name``."""
    question = b"".join(struct.pack("!B", len(label)) + label.encode("ascii") for label in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", 1 if family == 4 else 28, 1)


# --------------------------------------------------------------------------- verdicts

def errno_name(number: Optional[int]) -> str:
    return errno.errorcode.get(number, str(number)) if number is not None else "no error"


def send_outcome(number: Optional[int]) -> str:
    """What a sending call's result says: refused by the firewall, not routable, or past the firewall."""
    if number is None:
        return SENT
    if number in REFUSING_ERRNOS:
        return REFUSED
    if number in UNROUTABLE_ERRNOS:
        return UNROUTABLE
    return SENT  # e.g. ENOBUFS, ENOKEY: the packet got past every local rule, then the device had no room or key


def path_name(probe: Dict[str, Any]) -> str:
    """``eth0 IPv4 UDP to 198.51.100.1:443``: how checks and messages name a probe."""
    protocol = probe["protocol"]
    what = {"tcp": "TCP", "udp": "UDP", "icmp": "ICMP echo", "dns": "DNS query"}[protocol]
    target = probe["target"]
    if probe.get("port") is not None:
        target = ("[%s]:%d" if ":" in target else "%s:%d") % (target, probe["port"])
    return "%s IPv%d %s to %s" % (probe["interface"], probe["family"], what, target)


def judge(probe: Dict[str, Any]) -> Dict[str, Any]:
    """The check for one probe that ran (``outcome`` and ``detail`` filled in by the prober)."""
    name = path_name(probe) + (" (tunnel)" if probe["tunnel"] else "")
    outcome, detail = probe["outcome"], probe["detail"]
    if outcome == UNROUTABLE:
        return status.check(name, True, "not probed: %s" % detail)
    if probe["expected"] == EXPECT_REFUSED:
        if outcome == REFUSED:
            return status.check(name, True, "refused by the local firewall: %s" % detail)
        return status.check(name, False, "%s %s: the kill switch does not block it (%s%s)" % (
            path_name(probe), "connected" if outcome == CONNECTED else "was sent", detail,
            "; %s" % probe["why"] if probe["tunnel"] else ""))
    if outcome == REFUSED:
        return status.check(name, False, "%s was refused by the local firewall (%s), but %s" % (
            path_name(probe), detail, probe["why"]))
    return status.check(name, True, "passed the local firewall: %s" % detail)


def open_path(probe: Dict[str, Any]) -> Dict[str, Any]:
    return dict(path=path_name(probe), interface=probe["interface"], family=probe["family"], protocol=probe["protocol"],
                target=probe["target"], port=probe.get("port"), outcome=probe["outcome"], detail=probe["detail"])


def fence_unavailable(text: Optional[str]) -> Optional[str]:
    """Why the watcher found that this host cannot hold a fence (its state file), or None."""
    try:
        state = json.loads(text or "{}")
    except ValueError:
        return None
    reason = state.get("fence_unavailable") if isinstance(state, dict) else None
    return str(reason) if reason else None


def fence_check(found: Optional[Dict[str, Any]], fence: str, guard: bool, fence_table: str, digest: Optional[str],
                unavailable: Optional[str], nft_missing: bool = False) -> Dict[str, Any]:
    """The fence judged: ``found`` is ``status.table_status`` of the fence table (None when not listed)."""
    what = "table inet %s (the fence)" % fence_table
    if not guard or fence == "off":
        return status.check("fence", True, "%s is not required (%s)" % (what, "guard off" if not guard else "fence: off"))
    if nft_missing:
        return status.check("fence", fence != "required", "%s cannot be listed: nft is not installed (fence: %s)"
                            % (what, fence))
    if found["present"]:
        if found["matches"] is False:
            return status.check("fence", False, "%s carries policy digest %s, expected %s" % (
                what, found["digest"] or "none", digest.lower()[:status.DIGEST_LENGTH]))
        return status.check("fence", True, "%s is loaded%s" % (
            what, " with policy digest %s" % found["digest"] if found["matches"] else ""))
    if fence == "auto" and unavailable:
        return status.check("fence", True, "%s is not loaded: the watcher found that this host cannot hold one (%s); "
                            "fence: auto does without" % (what, unavailable))
    return status.check("fence", False, "%s is not loaded (fence: %s)" % (what, fence))


def summary(checks: Sequence[Dict[str, Any]], probes: Sequence[Dict[str, Any]]) -> str:
    problems = [c["detail"] for c in checks if not c["ok"]]
    if problems:
        return "; ".join(problems)
    refused = sorted({"%s IPv%d" % (p["interface"], p["family"]) for p in probes
                      if p["expected"] == EXPECT_REFUSED and p["outcome"] == REFUSED})
    passed = sorted({"%s IPv%d" % (p["interface"], p["family"]) for p in probes
                     if p["expected"] == EXPECT_PASSES and p["outcome"] != UNROUTABLE})
    text = "kill switch in force"
    if refused:
        text += "; refused by the local firewall: %s" % ", ".join(refused)
    if passed:
        text += "; passed through the tunnel: %s" % ", ".join(passed)
    return text


# --------------------------------------------------------------------------- the whole verify

Prober = Any  # probe.Prober: route(interface, family, target), send(interface, family, protocol, target, port)


def traffic_probes(prober: Prober, policy: Dict[str, Any], addresses: Dict[int, str],
                   interfaces: Sequence[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """``(probes, checks)``: at most one probe per protocol, family and interface, each judged."""
    probes, checks = [], []
    for interface in interfaces:
        kind = "tunnel interface" if interface["tunnel"] else "interface"
        if interface["skip"]:
            checks.append(status.check(interface["name"], True, "%s %s is not probed: %s"
                                       % (kind, interface["name"], interface["skip"])))
            continue
        for family in FAMILIES:
            target = addresses[family]
            source, error = prober.route(interface["name"], family, target)
            if source is None:
                checks.append(status.check("%s IPv%d" % (interface["name"], family), True, "not probed: no IPv%d route "
                                           "to %s through %s (%s)" % (family, target, interface["name"],
                                                                      errno_name(error))))
                continue
            for protocol in PROTOCOLS:
                destination = tunnel_target(policy, family, protocol, target) if interface["tunnel"] else target
                expected, why = expectation(policy, interface["tunnel"], family, protocol, destination)
                probe = dict(interface=interface["name"], tunnel=interface["tunnel"], family=family, protocol=protocol,
                             target=destination, port=PORTS[protocol], expected=expected, why=why)
                probe.update(prober.send(interface["name"], family, protocol, destination, PORTS[protocol]))
                check = judge(probe)
                probe["ok"] = check["ok"]
                probes.append(probe)
                checks.append(check)
    return probes, checks


def bridge_table_check(found: Dict[str, Any], forward: str, table: str, digest: str) -> Dict[str, Any]:
    """The bridge table (bridged guests' frames): loaded with this policy's digest unless forward is off."""
    what = "table bridge %s" % table
    if forward == "off":
        return status.check("bridge_table", not found["present"], "%s is %s (killswitch_forward: off)" % (
            what, "still loaded" if found["present"] else "not loaded"))
    if not found["present"]:
        return status.check("bridge_table", False, "%s is not loaded: bridged guests are not stopped" % what)
    if found["matches"] is False:
        return status.check("bridge_table", False, "%s carries policy digest %s, expected %s"
                            % (what, found["digest"] or "none", digest.lower()[:status.DIGEST_LENGTH]))
    return status.check("bridge_table", True, "%s is loaded with policy digest %s" % (what, found["digest"]))


def verify(run: status.Runner, prober: Optional[Prober], nft: str, systemctl: str, policy: Dict[str, Any],
           fence_nft: Optional[str] = None, backend: str = "nftables", digest: Optional[str] = None,
           boot_unit: str = "netlock-killswitch.service", guard: bool = True,
           guard_unit: str = "netlock-killswitch-guard.timer", watch_unit: str = "netlock-killswitch-watch.service",
           fence: str = "auto", fence_table: Optional[str] = None,
           guard_state_path: str = "/var/lib/netlock-killswitch/guard-state.json", traffic: bool = True,
           probe_addresses: Optional[Sequence[str]] = None, interfaces: Sequence[str] = (),
           sys_class_net: str = "/sys/class/net", read: Optional[Callable[[str], Optional[str]]] = None) -> Dict[str, Any]:
    """Every check and the verdict: ``{ok, msg, checks, open_paths, probes, probe_addresses, digest, table}``.

    ``nft`` lists the main rules (iptables-save for the iptables backend), ``fence_nft`` the fence (None: nft is
    not installed).  Nothing is changed; with ``traffic`` off (or no prober) no packet is sent.
    """
    policy = check_policy(policy)
    table = str(policy["table"])
    digest = digest or digest_of(policy)
    fence_table = fence_table or table + "_fence"
    addresses, notes = pick_probe_addresses(policy, probe_addresses)
    found = status.installed(run, nft, systemctl, table, digest, boot_unit, guard_unit, backend)
    checks = status.installed_checks(found, "present", digest, guard, backend, table)
    if guard:
        active = status.unit_is(run, systemctl, "is-active", watch_unit)
        checks.append(status.check("watcher", active, "%s is %s" % (watch_unit, "active" if active else "not active")))
    else:
        checks.append(status.check("watcher", True, "%s is not required (guard off)" % watch_unit))
    fence_found, unavailable = None, None
    if guard and fence != "off" and fence_nft:
        fence_found = status.table_status(run, fence_nft, fence_table, digest)
        if not fence_found["present"] and fence == "auto":
            unavailable = fence_unavailable((read or _read)(guard_state_path))
    checks.append(fence_check(fence_found, fence, guard, fence_table, digest, unavailable, nft_missing=not fence_nft))
    if backend == "nftables":
        checks.append(bridge_table_check(status.table_status(run, nft, table, digest, family="bridge"),
                                         str(policy.get("forward", "tunnel")), table, digest))
    checks.append(status.check("probe_addresses", True, "; ".join(
        ["IPv%d %s, which the policy does not allow" % (f, addresses[f]) for f in FAMILIES] + notes)))
    probes: List[Dict[str, Any]] = []
    warnings = []
    if traffic and prober is not None:
        # a carrier (an endpoint's via) is no exit: probed as an interface outside the tunnel
        carriers = {rule.get("via") for rule in policy.get("endpoints") or []}
        exits = [name for name in policy["tunnel_interfaces"] if name not in carriers]
        chosen = probe_interfaces(sys_class_net, exits, interfaces)
        probes, traffic_checks = traffic_probes(prober, policy, addresses, chosen)
        checks += traffic_checks
        if not any(p["expected"] == EXPECT_REFUSED and p["outcome"] != UNROUTABLE and not p["tunnel"] for p in probes):
            warnings.append("no interface outside the tunnel could be probed (%s): traffic was not tested"
                            % (", ".join("%s: %s" % (i["name"], i["skip"]) for i in chosen if not i["tunnel"])
                               or "there is none"))
    else:
        checks.append(status.check("traffic", True, "not tested (traffic: false)"))
    opened = [open_path(p) for p in probes if p["expected"] == EXPECT_REFUSED and p["outcome"] in (SENT, CONNECTED)]
    ok = all(c["ok"] for c in checks)
    return dict(ok=ok, msg=summary(checks, probes), checks=checks, open_paths=opened, probes=probes,
                probe_addresses={"ipv4": addresses[4], "ipv6": addresses[6]}, digest=digest[:status.DIGEST_LENGTH],
                table=found["table"], warnings=warnings)


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return None
