"""The leak cases, each against one lab client; lab/run.py runs them on every client side by side.

The detector captures on the host side of the client's veth, so it sees exactly what the client put
on the LAN wire and the client cannot hide from it.  A packet from the client's MAC counts as a leak
unless the policy allows it: the client's VPN protocol (WireGuard or OpenVPN) to the endpoint, neighbour
discovery to link-local or multicast destinations, and the LAN (not DNS) when allow_lan is on; neighbour
discovery to any other destination always counts; so does any packet to the endpoint that is not a message of
the client's VPN protocol.  Every case first runs its probes with the kill switch removed (the positive
control), then with it in place; the control must see each probe (protocol, destination, port), or the case
proves nothing for the unseen ones and fails.

A case changes only its own client, except where it says otherwise: EXCLUSIVE cases change what every
client depends on and run while no other case does; ROUTER_PROXY guards the router's proxy ND entry.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional

from lab import firewall
from lab.build import AGENT, ROOT, setup_client_network, setup_openvpn_client
from lab.probe import Capture, canary, docker, leak_expression, sh, unseen, wait_booted, wait_for
from lab.results import CaseResult, FlapTimeline, HostFirewall
from lab.topology import (CLIENTS, ENDPOINT, FWMARK, INET, INVENTORY_DIR, LAN, LANPEER, OPENVPN_TCP, ROUTER, SINK, VPN,
                          WIREGUARD, Host, Vpn)

SINK_TARGETS = [SINK.v4(INET), SINK.v6(INET)]
INVENTORY = os.path.join(ROOT, INVENTORY_DIR)
ROLLOUT = os.path.join(ROOT, "playbooks", "rollout.yml")


# --- observation -------------------------------------------------------------------------------

def host_link(host: Host) -> str:
    """The host-side end of the client's eth0 veth."""
    index = sh(host.name, "cat /sys/class/net/eth0/iflink").stdout.strip()
    for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout.splitlines():
        number, name = line.split(":", 2)[:2]
        if number.strip() == index:
            return name.strip().split("@")[0]
    raise RuntimeError("%s: no host interface with index %s" % (host.name, index))


def leak_bpf_for(mac: str, allow_lan: bool = False, vpn: Vpn = WIREGUARD, openvpn_tcp_source: int = 0) -> str:
    """BPF for every packet from this MAC that the policy does not allow (lab.probe.leak_expression)."""
    allowed = ["dst host %s and %s" % (ENDPOINT[0], endpoint_message_bpf(vpn, openvpn_tcp_source))]
    if allow_lan:
        allowed.append("(dst net %s or dst net %s) and not port 53 and not port 853" % (LAN.v4, LAN.v6))
    return "ether src %s and (ip or ip6) and (%s)" % (mac, leak_expression(allowed))


def wireguard_message_bpf(port: int) -> str:
    """A WireGuard message to the endpoint port: type 1-4, then three reserved zero bytes (the protocol's
    signature; a probe's datagram to the same port does not carry it), at least 32 bytes long.  The length
    test comes first: a load past the end of a short datagram would make BPF drop the packet, leak or not."""
    return ("udp dst port %d and udp[4:2] >= 40 and udp[8] >= 1 and udp[8] <= 4 and udp[9:2] = 0 and udp[11] = 0"
            % port)


# OpenVPN opcodes (the byte's high 5 bits; the low 3 are the key id) a client sends: P_CONTROL_SOFT_RESET_V1,
# P_CONTROL_V1, P_ACK_V1, P_CONTROL_HARD_RESET_CLIENT_V2 and _V3.  P_DATA_V1 (6) is left out: 2.6 peers send
# P_DATA_V2 (9), whose first three bytes a probe's payload would have to match as well.
OPENVPN_CONTROL_OPCODES = (3, 4, 5, 7, 10)
OPENVPN_DATA_V2 = 9
OPENVPN_ACKS_MAX = 8  # the control packets' ACK array length (the byte after the 8-byte session id)


def openvpn_signature_bpf(byte: Callable[[int], str]) -> str:
    """OpenVPN's packet header without tls-auth/tls-crypt, byte(k) being the k-th byte of the packet: P_DATA_V2
    with a peer id below 256 (the lab server's few clients), or a control opcode followed by the 8-byte session
    id and an ACK array length of at most 8."""
    control = " or ".join("%s >> 3 = %d" % (byte(0), opcode) for opcode in OPENVPN_CONTROL_OPCODES)
    return "((%s >> 3 = %d and %s = 0 and %s = 0) or ((%s) and %s <= %d))" % (
        byte(0), OPENVPN_DATA_V2, byte(1), byte(2), control, byte(9), OPENVPN_ACKS_MAX)


def openvpn_message_bpf(port: int, protocol: str = "udp", tcp_source: int = 0) -> str:
    """An OpenVPN packet to the endpoint port (openvpn_signature_bpf).  Over TCP each packet is prefixed by its
    2-byte length and the connection has segments without payload (SYN, ACK, FIN): only the connection from
    tcp_source (openvpn's own, lab.cases.openvpn_tcp_source) passes, its payload segments only with the signature.
    Length tests come first: a load past the end of the packet would make BPF drop it, leak or not."""
    if protocol == "udp":
        return "udp dst port %d and udp[4:2] >= 18 and %s" % (
            port, openvpn_signature_bpf(lambda k: "udp[%d]" % (8 + k)))
    payload = "(ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2))"
    return "tcp dst port %d and tcp src port %d and (%s = 0 or (%s >= 12 and %s))" % (
        port, tcp_source, payload, payload,
        openvpn_signature_bpf(lambda k: "tcp[((tcp[12] & 0xf0) >> 2) + %d]" % (2 + k)))


def endpoint_message_bpf(vpn: Vpn, openvpn_tcp_source: int = 0) -> str:
    """The packets the VPN client itself sends to its endpoint port."""
    if vpn.kind == "openvpn":
        return openvpn_message_bpf(vpn.port, vpn.protocol, openvpn_tcp_source)
    return wireguard_message_bpf(vpn.port)


def openvpn_tcp_source(host: Host) -> int:
    """The local port of openvpn's TCP connection to the endpoint (0: none, every TCP segment to it counts)."""
    listed = sh(host.name, "ss -tnpH state established dst %s dport = :%d" % (ENDPOINT[0], host.vpn.port)).stdout
    for line in listed.splitlines():
        if '"openvpn"' in line:
            return int(line.split()[2].rsplit(":", 1)[1])
    return 0


def leak_bpf(host: Host, allow_lan: bool = False) -> str:
    tcp_source = openvpn_tcp_source(host) if host.vpn.kind == "openvpn" and host.vpn.protocol == "tcp" else 0
    mac = sh(host.name, "cat /sys/class/net/eth0/address").stdout.strip()
    return leak_bpf_for(mac, allow_lan, host.vpn, tcp_source)


def agent(host: Host, *args: str, netns: str = "", user: Optional[int] = None, timeout: float = 120) -> dict:
    prefix = "ip netns exec %s " % netns if netns else ""
    if user is not None:
        prefix += "setpriv --reuid=%d --regid=%d --clear-groups " % (user, user)
    result = sh(host.name, "%spython3 %s %s" % (prefix, AGENT, " ".join(shlex.quote(a) for a in args)), timeout)
    if result.returncode != 0:
        raise RuntimeError("agent on %s failed: %s" % (host.name, result.stderr[-1500:]))
    return json.loads(result.stdout)


Probe = Callable[[str], dict]


def everything(host: Host, targets=None, dns=None, netns: str = "") -> Probe:
    """TCP, UDP, ICMP and DNS (UDP, TCP, DoT port) over IPv4 and IPv6."""
    targets = targets if targets is not None else SINK_TARGETS
    dns = dns if dns is not None else [SINK.v4(INET), LANPEER.v4(LAN), LANPEER.v6(LAN)]

    def run(marker: str) -> dict:
        args = ["probe", "--canary", marker]
        for target in targets:
            args += ["--target", target]
        for resolver in dns:
            args += ["--dns", resolver]
        return agent(host, *args, netns=netns)
    return run


def measure(host: Host, probe: Probe, allow_lan: bool = False):
    with Capture(None, leak_bpf(host, allow_lan), interface=host_link(host)) as capture:
        outcome = probe(canary())
    return outcome, capture


def leak_case(host: Host, case: str, probe: Probe, allow_lan: bool = False) -> CaseResult:
    """First the positive control (kill switch off: each probe must be seen), then the probe with it on."""
    details = []
    # The control only proves the probes can be seen, each of them (a control that saw the IPv4 probes
    # vouches for nothing about IPv6); a broken probe fails both attempts. The leak verdict is never retried.
    for attempt in (1, 2):
        with firewall.killswitch_off(host):
            control_outcome, control = measure(host, probe, allow_lan)
        missing = unseen(control_outcome["probes"], control.packets)
        details.append("control %d: %d packets seen, %d of %d probes, reached %s%s" % (
            attempt, len(control.packets), len(control_outcome["probes"]) - len(missing), len(control_outcome["probes"]),
            ", ".join(control_outcome["reached"]) or "nothing", "; NOT SEEN: " + ", ".join(missing) if missing else ""))
        if not missing:
            break
    outcome, capture = measure(host, probe, allow_lan)
    details = capture.packets[:20] + ["reached: %s" % (", ".join(outcome["reached"]) or "nothing")] + details
    return CaseResult(host.name, case, outcome["sent"], len(capture.packets), not missing, details=details)


# --- tunnel control ------------------------------------------------------------------------------

CLEAN_RULES = """
for v in -4 -6; do
  while ip $v rule del table %d 2>/dev/null; do :; done
  while ip $v rule del table main suppress_prefixlength 0 2>/dev/null; do :; done
done
ip link del wg0 2>/dev/null || true
""" % FWMARK


def tunnel_down(host: Host, how: str) -> None:
    vpn = host.vpn
    command = {"kill": "pkill -9 -x %s" % vpn.process, "link": "ip link del %s" % vpn.interface,
               "stop": "systemctl stop %s" % vpn.unit}[how]
    sh(host.name, command)
    if not wait_for(lambda: sh(host.name, "ip link show %s" % vpn.interface).returncode != 0, 10, 0.05):
        raise RuntimeError("%s: %s is still there after '%s'" % (host.name, vpn.interface, command))


def tunnel_works(host: Host) -> bool:
    return sh(host.name, "ping -n -c 1 -W 1 %s" % host.vpn.gateway).returncode == 0


def tunnel_up(host: Host, wait: bool = True) -> None:
    unit = host.vpn.unit
    clean = CLEAN_RULES if host.vpn.kind == "wireguard" else ""
    sh(host.name, "systemctl stop %s; %s systemctl reset-failed %s; systemctl start %s" % (unit, clean, unit, unit),
       timeout=60)
    if wait and not wait_for(lambda: tunnel_works(host), 30):
        raise RuntimeError("%s: the tunnel did not come back" % host.name)


def rollout(host: Host, *extra: str) -> None:
    # A report per client: rollouts to other clients may run at the same time.
    report = os.path.join(tempfile.gettempdir(), "netlock-lab-rollout-%s.json" % host.name)
    cmd = ["ansible-playbook", "-i", INVENTORY, ROLLOUT, "-l", host.name, "-e", "killswitch_rollout_report=" + report,
           *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise RuntimeError("rollout to %s failed:\n%s" % (host.name, result.stdout[-3000:]))


# --- cases ---------------------------------------------------------------------------------------

def through_tunnel(host: Host, case: str = "tunnel up") -> CaseResult:
    """Traffic flows, and the sink sees the VPN server's address, never the client's."""
    marker = canary()
    with Capture(SINK.name, "(dst host %s or dst host %s) and (tcp port 8080 or udp port 9999)" % tuple(SINK_TARGETS),
                 interface="eth0") as sink, \
            Capture(None, leak_bpf(host), interface=host_link(host)) as lan:
        outcome = agent(host, "probe", "--canary", marker, "--target", SINK.v4(INET), "--target", SINK.v6(INET))
    seen_from = {line.split()[2].rsplit(".", 1)[0] for line in sink.packets if " > " in line}
    client_seen = {a for a in seen_from if a in (host.v4(), host.v6())}
    # Other clients' traffic reaches the sink too: only the probe's own packets show where it came from.
    marker_from = sink.sources(marker)
    details = ["the probe reached the sink from: %s" % (", ".join(sorted(marker_from)) or "nowhere"),
               "reached: %s" % ", ".join(outcome["reached"])]
    reached = any(r.startswith("tcp %s" % SINK.v4(INET)) for r in outcome["reached"])
    return CaseResult(host.name, case, outcome["sent"], len(lan.packets) + len(client_seen),
                      control_seen=reached and VPN.v4(INET) in marker_from, details=details + lan.packets[:20])


def killed(how: str) -> Callable[[Host], CaseResult]:
    def run(host: Host) -> CaseResult:
        tunnel_down(host, how)
        try:
            return leak_case(host, "tunnel killed (%s)" % how, everything(host))
        finally:
            tunnel_up(host)
    return run


def endpoint_unreachable(host: Host) -> CaseResult:
    """The router blackholes the VPN server; the client gives up and tears its tunnel down.

    Every client loses its tunnel meanwhile (EXCLUSIVE): the case ends once all of them are back.
    """
    sh(ROUTER.name, "nft add table inet lab_block && nft add chain inet lab_block fwd "
       "'{ type filter hook forward priority -10; policy accept; }' && "
       "nft add rule inet lab_block fwd ip daddr %s drop" % VPN.v4(INET))
    try:
        time.sleep(2)
        tunnel_down(host, "stop")
        return leak_case(host, "endpoint unreachable", everything(host))
    finally:
        sh(ROUTER.name, "nft delete table inet lab_block")
        tunnel_up(host)
        for other in CLIENTS:
            if not wait_for(lambda c=other: tunnel_works(c), 30):
                raise RuntimeError("%s: the tunnel did not come back after the VPN server was reachable again"
                                   % other.name)


def restored(host: Host) -> CaseResult:
    tunnel_down(host, "kill")
    tunnel_up(host)  # the VPN client comes back; no Ansible run
    return through_tunnel(host, "tunnel restored")


def tunnel_vision(host: Host) -> CaseResult:
    """DHCP option 121 style: more-specific routes to the sink via the LAN gateway, tunnel up."""
    routes = "ip route %%s %s/32 via %s dev eth0; ip -6 route %%s %s/128 via %s dev eth0" % (
        SINK.v4(INET), ROUTER.v4(LAN), SINK.v6(INET), ROUTER.v6(LAN))
    sh(host.name, routes % ("replace", "replace"))
    try:
        return leak_case(host, "TunnelVision", everything(host, dns=[SINK.v4(INET)]))
    finally:
        sh(host.name, routes % ("del", "del"))


def server_ip(host: Host, case: str = "ServerIP") -> CaseResult:
    """An unprivileged process sends to the endpoint address and ports without the mark.

    The endpoint is routed outside the tunnel, as clients that pin a host route to their server do (OpenVPN
    does: its own route then stays).
    """
    route = "ip route %%s %s/32 via %s dev eth0" % (VPN.v4(INET), ROUTER.v4(LAN))
    pinned = bool(sh(host.name, "ip route show exact %s/32" % VPN.v4(INET)).stdout.strip())
    sh(host.name, route % "replace")
    mac = sh(host.name, "cat /sys/class/net/eth0/address").stdout.strip()
    # Every packet to the endpoint counts unless it is a message of the VPN client's own protocol, not only
    # those that carry the canary: a ping or a SYN carries none.
    tcp_source = openvpn_tcp_source(host) if host.vpn.kind == "openvpn" and host.vpn.protocol == "tcp" else 0
    bpf = "ether src %s and dst host %s and not (%s)" % (mac, VPN.v4(INET), endpoint_message_bpf(host.vpn, tcp_source))
    port = str(host.vpn.port)

    def attempt() -> tuple:
        with Capture(None, bpf, interface=host_link(host)) as capture:
            outcome = agent(host, "probe", "--canary", canary(), "--target", ENDPOINT[0], "--tcp-port",
                            port, "--tcp-port", "8080", "--udp-port", port, "--udp-count", "5", user=65534)
        return outcome, capture.packets
    try:
        with firewall.killswitch_off(host):
            control_outcome, control = attempt()
        outcome, leaked = attempt()
    finally:
        if not pinned:
            sh(host.name, route % "del")
    missing = unseen(control_outcome["probes"], control)
    details = leaked[:20] + ["control: %d packets seen, %d of %d probes%s" % (
        len(control), len(control_outcome["probes"]) - len(missing), len(control_outcome["probes"]),
        "; NOT SEEN: " + ", ".join(missing) if missing else "")]
    return CaseResult(host.name, case, outcome["sent"], len(leaked), not missing, details=details)


def forwarded(host: Host) -> CaseResult:
    """A guest network namespace behind the client, NATed: nothing it sends may leave outside the tunnel."""
    tunnel_down(host, "stop")
    try:
        probe = everything(host, targets=[SINK.v4(INET)], dns=[SINK.v4(INET), LANPEER.v4(LAN)], netns="guest")
        return leak_case(host, "forwarded guest", probe)
    finally:
        tunnel_up(host)


def allow_lan_cases(host: Host) -> List[CaseResult]:
    """With killswitch_allow_lan on: the LAN is reachable, LAN DNS is not, and LocalNet still leaks nothing."""
    rollout(host, "-e", "killswitch_allow_lan=true")
    results = []
    try:
        tunnel_down(host, "stop")
        try:
            marker = canary()
            reached = agent(host, "probe", "--canary", marker, "--target", LANPEER.v4(LAN), "--target",
                            LANPEER.v6(LAN), "--no-icmp")["reached"]
            lan_ok = all(any(r.startswith("tcp %s:8080" % a) for r in reached) for a in (LANPEER.v4(LAN), LANPEER.v6(LAN)))
            result = leak_case(host, "allow_lan: LAN DNS refused",
                               everything(host, targets=[], dns=[LANPEER.v4(LAN), LANPEER.v6(LAN)]), allow_lan=True)
            result.details.insert(0, "LAN peer reachable over TCP: %s" % lan_ok)
            if not lan_ok:
                result.control_seen = False  # the LAN must work with allow_lan on
            results.append(result)
        finally:
            tunnel_up(host)
        results.append(local_net(host))
    finally:
        rollout(host)
    return results


ROUTER_PROXY = threading.Lock()  # one client at a time has the router answer ND for the sink


def local_net(host: Host) -> CaseResult:
    """TunnelCrack LocalNet: the LAN claims the sink's public range as on-link (the router answers ARP/ND)."""
    claim = "ip route %%s %s dev eth0; ip -6 route %%s %s dev eth0" % (INET.v4, INET.v6)
    with ROUTER_PROXY:
        sh(ROUTER.name, "ip -6 neigh replace proxy %s dev eth0" % SINK.v6(INET))
        sh(host.name, claim % ("replace", "replace"))
        try:
            return leak_case(host, "LocalNet (allow_lan on)", everything(host, dns=[SINK.v4(INET)]), allow_lan=True)
        finally:
            sh(host.name, claim % ("del", "del"))
            sh(ROUTER.name, "ip -6 neigh del proxy %s dev eth0" % SINK.v6(INET))


def reboot_without_vpn(host: Host) -> CaseResult:
    """Reboot with the VPN client disabled: the boot unit loads the kill switch as it was, nothing leaks."""
    client_firewall = firewall.intended(host)
    before = firewall.killswitch_rules(host, client_firewall)
    sh(host.name, "systemctl disable -q %s" % host.vpn.unit)
    try:
        docker("restart", "-t", "10", host.name, timeout=120)
        wait_booted(host.name)
        setup_client_network(host)  # what DHCP would give back: addresses and the default route
        loaded = before is not None and firewall.killswitch_rules(host, client_firewall) == before
        result = leak_case(host, "reboot, VPN client disabled", everything(host))
        result.details.insert(0, "kill switch (%s) loaded at boot as before: %s" % (client_firewall.label(), loaded))
        if not loaded:
            result.leaked = max(result.leaked, 1)
        return result
    finally:
        sh(host.name, "systemctl enable -q %s" % host.vpn.unit)
        tunnel_up(host)


def over_openvpn_tcp(host: Host) -> List[CaseResult]:
    """The OpenVPN client switched to its TCP server for tunnel up and ServerIP, then back to UDP."""
    setup_openvpn_client(host, OPENVPN_TCP)
    tcp_host = replace(host, vpn=OPENVPN_TCP)
    try:
        if not wait_for(lambda: tunnel_works(tcp_host), 30):
            raise RuntimeError("%s: no tunnel over TCP" % host.name)
        return [through_tunnel(tcp_host, "tunnel up (OpenVPN over TCP)"),
                server_ip(tcp_host, "ServerIP (OpenVPN over TCP)")]
    finally:
        setup_openvpn_client(host)
        if not wait_for(lambda: tunnel_works(host), 30):
            raise RuntimeError("%s: the UDP tunnel did not come back" % host.name)


def tunnel_up_case(host: Host) -> List[CaseResult]:
    """Tunnel up on the client's VPN; an OpenVPN client proves it over its TCP transport as well."""
    results = [through_tunnel(host)]
    if host.vpn.kind == "openvpn":
        results += over_openvpn_tcp(host)
    return results


CASES: Dict[str, Callable[[Host], object]] = {
    "tunnel-up": tunnel_up_case,
    "killed-kill9": killed("kill"),
    "killed-link-deleted": killed("link"),
    "endpoint-unreachable": endpoint_unreachable,
    "restored": restored,
    "tunnelvision": tunnel_vision,
    "serverip": server_ip,
    "forwarded": forwarded,
    "allow-lan": allow_lan_cases,
    "reboot": reboot_without_vpn,
}


# Cases that change what every client depends on: they run while no other case runs on any client.
EXCLUSIVE = {"endpoint-unreachable"}


def run_case(name: str, host: Host) -> List[CaseResult]:
    outcome = CASES[name](host)
    return outcome if isinstance(outcome, list) else [outcome]


def host_firewall(host: Host) -> HostFirewall:
    """The client's firewall as the inventory sets it, checked against the container and what is in force."""
    intended = firewall.intended(host)
    versions, recorded = firewall.tool_versions(host)
    found, problems = firewall.in_force(host, intended)
    problems = firewall.variant_problems(intended, versions, recorded) + problems
    return HostFirewall(host.name, intended.backend, intended.alternative, versions["iptables"], found, problems,
                        vpn=host.vpn.label())


# --- flap stream ---------------------------------------------------------------------------------

GUEST_PORT_OFFSET = 100  # the guest's UDP stream port: the client's plus this


def stream_port(host: Host) -> int:
    """A UDP port per client, so that each sink capture sees its own client's stream only."""
    return 9990 + CLIENTS.index(host)


def flap_stream(host: Host, flaps: int = 20, rate: int = 600, down_for: float = 0.5, up_for: float = 0.7) -> FlapTimeline:
    """A continuous mixed stream to the sink across tunnel flaps (UDP, TCP SYNs and DNS over IPv4 and IPv6
    from the client, and over IPv4 from its forwarded guest); every packet outside the tunnel is a leak."""
    marker = canary()
    port = stream_port(host)
    stop_file = "/tmp/%s.stop" % marker
    bound = flaps * (down_for + up_for + 5) + 10  # the stream's upper bound; it stops at stop_file
    guest_port = port + GUEST_PORT_OFFSET
    common = ["stream", "--mix", "--canary", marker, "--seconds", str(bound), "--stop-file", stop_file]
    # The guest is NATed to the client's IPv4 address only. Its kinds (ports, resolver) differ from the host's,
    # so the control must see the guest's own packets, not the host's standing in for them.
    streams = {"host": (common + ["--rate", str(rate), "--udp-port", str(port), "--tcp-port", "8080",
                                  "--target", SINK.v4(INET), "--target", SINK.v6(INET),
                                  "--dns", SINK.v4(INET), "--dns", SINK.v6(INET)], ""),
               "guest": (common + ["--rate", str(rate // 3), "--udp-port", str(guest_port), "--tcp-port", "8081",
                                   "--target", SINK.v4(INET), "--dns", LANPEER.v4(LAN)], "guest")}
    sent: Dict[str, dict] = {}

    def stream(name: str) -> None:
        args, netns = streams[name]
        try:
            sent[name] = agent(host, *args, netns=netns, timeout=bound + 60)
        except Exception as exc:  # re-raised below: a dead stream must not read as "0 leaked"
            sent[name] = {"error": exc}
    with Capture(SINK.name, "udp dst port %d or udp dst port %d" % (port, guest_port), interface="eth0",
                 max_seconds=int(bound) + 90) as sink, \
            Capture(None, leak_bpf(host), interface=host_link(host), max_seconds=int(bound) + 90) as lan:
        senders = [threading.Thread(target=stream, args=(name,)) for name in streams]
        start = time.time()
        for sender in senders:
            sender.start()
        events = [(0.0, True)]
        time.sleep(1.5)
        for i in range(flaps):
            tunnel_down(host, ("kill", "stop", "link")[i % 3])
            events.append((time.time() - start, False))
            time.sleep(down_for)
            tunnel_up(host, wait=False)
            events.append((time.time() - start, True))
            time.sleep(up_for)
        time.sleep(2)  # the last up period, long enough to see traffic flow again
        sh(host.name, "touch %s" % stop_file)
        for sender in senders:
            sender.join()
    for name, outcome in sent.items():
        if "error" in outcome:
            raise RuntimeError("the %s's probe stream on %s failed" % (name, host.name)) from outcome["error"]
    duration = time.time() - start
    probes = [probe for outcome in sent.values() for probe in outcome["probes"]]
    missing = set(unseen(probes, lan.packets))
    leaked_kinds = [kind for kind in unseen(probes, []) if kind not in missing]
    return FlapTimeline(host.name, duration, events, [t - start for t in sink.times(marker)],
                        [t - start for t in lan.times()], sum(outcome["sent"] for outcome in sent.values()), flaps,
                        probes, leaked_kinds)


def clients(names: Optional[List[str]] = None) -> List[Host]:
    return [c for c in CLIENTS if not names or c.name in names]
