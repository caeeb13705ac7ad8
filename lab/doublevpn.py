"""Double VPN by traffic: a WireGuard tunnel inside another (or inside OpenVPN), in throwaway network namespaces.

    client ──phys── isp ── outer server ── inner server      (the inner server is reached only through
                     └──── sink (the internet)                 the outer tunnel: the isp has no route to it)

The client runs two tunnels, both with the endpoint fwmark: the outer one (endpoint on the physical link; wireguard-go,
or OpenVPN p2p with a static key generated here) and the inner one (wireguard-go, endpoint reached through the outer
tunnel).  The kill switch is the nftables ruleset (or iptables payload) rendered from a policy whose inner endpoint is
``via`` the outer tunnel, loaded in the client's netns by the real applier (``nft_live.Nft``, ``iptables.Iptables``).
Detectors capture on the client's physical link (the isp's side), inside the outer tunnel (its decapsulated traffic,
on the outer server's device) and at the sink.

One harness for the unit test (tests/unit/plugins/module_utils/test_double_vpn.py, which asserts every case, with its
controls and broken-rules mutations) and the leak report (``run_cases``: one table per chain, ``python -m lab demo``;
alone: ``python -m lab.doublevpn``).  Built on lab.netns.NetnsLab.

Both tunnels carry IPv6 too (2001:db8::/32; the endpoints stay IPv4, the policy's killswitch_ipv6 is 'tunnel'):
every probe goes over IPv4 and IPv6, each with its own predicate, so a control vouches for each family.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from lab.cases import wireguard_message_bpf
from lab.netns import WIREGUARD_ENV, NetnsLab
from lab.probe import leak_expression
from lab.results import CHAIN_CASE_PREFIX, CaseResult

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = 0x5158
PHYS_CLIENT, PHYS_ISP = "198.18.1.2", "198.18.1.1"
OUTER_SERVER, ISP_OUTER = "198.18.2.2", "198.18.2.1"
SINK, ISP_SINK = "198.18.3.2", "198.18.3.1"
INNER_SERVER, OUTER_INNER = "198.18.4.2", "198.18.4.1"
OUTER_TUNNEL = ("198.18.10.1", "198.18.10.2")   # server, client
INNER_TUNNEL = ("198.18.11.1", "198.18.11.2")
# IPv6, carried by the tunnels (the endpoints are IPv4): the same places, 2001:db8:d<subnet>::/64
PHYS_CLIENT6, PHYS_ISP6 = "2001:db8:d1::2", "2001:db8:d1::1"
OUTER_SERVER6, ISP_OUTER6 = "2001:db8:d2::2", "2001:db8:d2::1"
SINK6, ISP_SINK6 = "2001:db8:d3::2", "2001:db8:d3::1"
INNER_SERVER6, OUTER_INNER6 = "2001:db8:d4::2", "2001:db8:d4::1"
OUTER_TUNNEL6 = ("2001:db8:d10::1", "2001:db8:d10::2")
INNER_TUNNEL6 = ("2001:db8:d11::1", "2001:db8:d11::2")
OUTER_PORT, INNER_PORT = 51820, 51821
OPENVPN_PORT = 1194
OPENVPN_CRYPTO = ["--cipher", "AES-256-CBC", "--auth", "SHA256"]
PROBE_UDP, PROBE_TCP = 40001, 40002
TIMEOUT = 10        # every command
LINGER = 1.0        # seconds the detectors keep listening after the probes (the inner device's keepalives: 1 s)
TOOLS = ("ip", "nft", "iptables-restore", "wg", "wireguard-go", "tcpdump", "openvpn")
ROLES = ("client", "isp", "outer", "inner", "sink")


def unavailable() -> Optional[str]:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the double VPN lab needs root (network namespaces)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return "missing %s (make host-deps installs them)" % ", ".join(missing)
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun for wireguard-go"
    return None


def _collection():
    """The collection's policy, renderers and appliers (from .collections in a plain checkout)."""
    collections = os.path.join(ROOT, ".collections")
    if collections not in sys.path:
        sys.path.insert(0, collections)
    # pylint: disable=import-outside-toplevel
    from ansible_collections.netlock.killswitch.plugins.module_utils.iptables import Iptables
    from ansible_collections.netlock.killswitch.plugins.module_utils.nft_live import Nft
    from ansible_collections.netlock.killswitch.plugins.plugin_utils import render_iptables, render_nftables
    from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy
    return {"nftables": (render_nftables.render, Nft), "iptables": (render_iptables.render, Iptables)}, parse_policy


def policy_variables(tag: str, nested: bool = True, outer_port: int = OUTER_PORT) -> Dict:
    inner = {"address": INNER_SERVER, "port": INNER_PORT}
    if nested:
        inner["via"] = "wo" + tag
    return {"killswitch_tunnel_interfaces": ["wo" + tag, "wi" + tag],
            "killswitch_endpoints": [{"address": OUTER_SERVER, "port": outer_port}, inner],
            "killswitch_endpoint_mark": MARK, "killswitch_management_cidrs": [], "killswitch_ipv6": "tunnel"}


# --------------------------------------------------------------------------- pcap, just enough of it

def packets_of(path: str) -> List[Dict]:
    """IPv4 and IPv6 packets of a pcap file: ``{src, dst, proto, dport, payload}`` (IPv6: no extension headers, as
    the probes send them; proto is the next header)."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        return []
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    skip = {1: 14, 12: 0, 14: 0, 101: 0, 113: 16, 276: 20}[linktype]
    found, offset = [], 24
    while offset + 16 <= len(data):
        captured = struct.unpack(endian + "I", data[offset + 8:offset + 12])[0]
        frame = data[offset + 16:offset + 16 + captured]
        offset += 16 + captured
        packet = frame[skip:]
        if len(packet) >= 20 and packet[0] >> 4 == 4:
            proto, body = packet[9], packet[(packet[0] & 15) * 4:]
            src, dst = str(ipaddress.IPv4Address(packet[12:16])), str(ipaddress.IPv4Address(packet[16:20]))
        elif len(packet) >= 40 and packet[0] >> 4 == 6:
            proto, body = packet[6], packet[40:]
            src, dst = str(ipaddress.IPv6Address(packet[8:24])), str(ipaddress.IPv6Address(packet[24:40]))
        else:
            continue
        dport = struct.unpack("!H", body[2:4])[0] if proto in (6, 17) and len(body) >= 4 else None
        payload = (body[8:] if proto in (1, 17, 58) else body[(body[12] >> 4) * 4:] if proto == 6 and len(body) > 12
                   else b"")
        found.append(dict(src=src, dst=dst, proto=proto, dport=dport, payload=payload))
    return found


# --------------------------------------------------------------------------- the lab

class ChainLab(NetnsLab):
    """Namespaces, veths, wireguard-go and OpenVPN processes, all named with a random tag; a context manager
    (NetnsLab: everything goes on exit)."""

    def __init__(self, workdir: Path, outer_kind: str = "wireguard", backend: str = "nftables"):
        self.tag = secrets.token_hex(2)
        super().__init__("ksdv" + self.tag)
        self.workdir = Path(workdir)
        self.backend = backend
        self.openvpn = outer_kind == "openvpn"   # the outer tunnel: OpenVPN (p2p, static key) or WireGuard
        self.outer_port = OPENVPN_PORT if self.openvpn else OUTER_PORT
        # what the physical link may carry: the outer tunnel's own messages to its endpoint
        self.outer_messages = "udp dst port %d" % OPENVPN_PORT if self.openvpn else wireguard_message_bpf(OUTER_PORT)
        self.devices: Dict[str, subprocess.Popen] = {}
        self.keys: Dict[str, Tuple[str, str]] = {}

    # commands
    def run(self, role: str, *argv: str, check: bool = True, stdin: Optional[str] = None) -> str:
        return self.exec(role, *argv, timeout=TIMEOUT, check=check, stdin=stdin).stdout

    def sh(self, role: str, script: str) -> None:
        self.run(role, "sh", "-ec", script)

    def key(self, name: str) -> Tuple[str, str]:
        if name not in self.keys:
            private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout.strip()
            public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, timeout=TIMEOUT,
                                    check=True).stdout.strip()
            self.keys[name] = (private, public)
        return self.keys[name]

    # building
    def build(self) -> None:
        self.add(*ROLES, forwarding=True)
        for role in ROLES:
            # no router solicitations: only the probes and the tunnels' own traffic on the wires
            self.exec(role, "sysctl", "-qw", "net.ipv6.conf.all.router_solicitations=0",
                      "net.ipv6.conf.default.router_solicitations=0")
        self.link("client", "phys", [PHYS_CLIENT + "/24", PHYS_CLIENT6 + "/64"], "isp", "cl", [PHYS_ISP + "/24", PHYS_ISP6 + "/64"])
        self.link("isp", "os", [ISP_OUTER + "/24", ISP_OUTER6 + "/64"], "outer", "isp", [OUTER_SERVER + "/24", OUTER_SERVER6 + "/64"])
        self.link("isp", "sk", [ISP_SINK + "/24", ISP_SINK6 + "/64"], "sink", "isp", [SINK + "/24", SINK6 + "/64"])
        self.link("outer", "in", [OUTER_INNER + "/24", OUTER_INNER6 + "/64"], "inner", "out",
                  [INNER_SERVER + "/24", INNER_SERVER6 + "/64"])
        for role, gateways in (("outer", (ISP_OUTER, ISP_OUTER6)), ("inner", (OUTER_INNER, OUTER_INNER6)),
                               ("sink", (ISP_SINK, ISP_SINK6))):
            for gateway in gateways:
                self.route(role, "default", "via", gateway)
        # the inner server is the client's way to the internet: its traffic leaves with the server's address
        self.run("inner", "nft", "-f", "-", stdin="table inet ksdv_nat {\n chain post {\n  type nat hook postrouting "
                 "priority srcnat; policy accept;\n  oifname \"out\" masquerade\n }\n}\n")
        # the fallbacks when a tunnel is gone, which the kill switch must close: the physical link
        self.sh("client", "ip route add default via %s dev phys metric 300 && ip route add %s/32 via %s dev phys && "
                "ip route add %s/32 via %s dev phys metric 300 && ip -6 route add default via %s dev phys metric 300"
                % (PHYS_ISP, OUTER_SERVER, PHYS_ISP, INNER_SERVER, PHYS_ISP, PHYS_ISP6))
        if self.openvpn:
            subprocess.run(["openvpn", "--genkey", "secret", str(self.workdir / "static.key")], capture_output=True,
                           timeout=TIMEOUT, check=True)
            self.tun("outer", "so", ["--lport", str(OPENVPN_PORT), "--ifconfig", OUTER_TUNNEL[0], OUTER_TUNNEL[1],
                                     "--ifconfig-ipv6", OUTER_TUNNEL6[0] + "/64", OUTER_TUNNEL6[1]])
        else:
            self.server("outer", "so", OUTER_TUNNEL[0], OUTER_PORT)
        self.server("inner", "si", INNER_TUNNEL[0], INNER_PORT)
        self.outer_up()
        self.inner_up()

    def device(self, role: str, name: str, private: str, wg_args: List[str], address: str, address6: str) -> None:
        name += self.tag
        self.devices[name] = self.spawn(role, "wireguard-go", "-f", name, env=WIREGUARD_ENV,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT
        while not self.run(role, "ip", "link", "show", name, check=False):
            if time.monotonic() > deadline or self.devices[name].poll() is not None:
                raise RuntimeError("wireguard-go did not create %s" % name)
            time.sleep(0.05)
        keyfile = self.workdir / ("%s.key" % name)
        with open(os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.write(private + "\n")
        self.run(role, "wg", "set", name, "private-key", str(keyfile), *wg_args)
        self.sh(role, "ip addr add %s/24 dev %s && ip addr add %s/64 dev %s nodad && ip link set %s up"
                % (address, name, address6, name, name))

    def tun(self, role: str, name: str, args: List[str]) -> None:
        """An OpenVPN peer (p2p, static key) on tun device ``name``, which it configures itself."""
        name += self.tag
        log = self.workdir / ("%s.log" % name)
        self.devices[name] = self.spawn(
            role, "openvpn", "--dev", name, "--dev-type", "tun", "--proto", "udp",
            "--secret", str(self.workdir / "static.key"), *OPENVPN_CRYPTO, "--verb", "3", "--log", str(log), *args,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT
        while ",UP" not in self.run(role, "ip", "link", "show", name, check=False):
            if time.monotonic() > deadline or self.devices[name].poll() is not None:
                raise RuntimeError("openvpn did not bring up %s: %s" % (name, log.read_text()[-800:] if log.exists() else ""))
            time.sleep(0.05)

    def server(self, role: str, name: str, address: str, port: int) -> None:
        client = self.key("client-" + role)[1]
        peer, peer6 = (OUTER_TUNNEL[1], OUTER_TUNNEL6[1]) if role == "outer" else (INNER_TUNNEL[1], INNER_TUNNEL6[1])
        address6 = OUTER_TUNNEL6[0] if role == "outer" else INNER_TUNNEL6[0]
        self.device(role, name, self.key(role)[0], ["listen-port", str(port), "peer", client, "allowed-ips",
                                                    "%s/32,%s/128" % (peer, peer6)], address, address6)

    def outer_up(self) -> None:
        if self.openvpn:
            self.tun("client", "wo", ["--remote", OUTER_SERVER, str(OPENVPN_PORT), "--nobind", "--mark", str(MARK),
                                      "--ping", "1", "--ifconfig", OUTER_TUNNEL[1], OUTER_TUNNEL[0],
                                      "--ifconfig-ipv6", OUTER_TUNNEL6[1] + "/64", OUTER_TUNNEL6[0]])
        else:
            self.device("client", "wo", self.key("client-outer")[0],
                        ["fwmark", str(MARK), "peer", self.key("outer")[1], "endpoint",
                         "%s:%d" % (OUTER_SERVER, OUTER_PORT), "allowed-ips", "0.0.0.0/0,::/0"], OUTER_TUNNEL[1],
                        OUTER_TUNNEL6[1])
        self.sh("client", "ip route add default dev wo%s metric 200 && ip route add %s/32 dev wo%s && "
                "ip -6 route add default dev wo%s metric 200" % (self.tag, INNER_SERVER, self.tag, self.tag))

    def inner_up(self) -> None:
        self.device("client", "wi", self.key("client-inner")[0],
                    ["fwmark", str(MARK), "peer", self.key("inner")[1], "endpoint", "%s:%d" % (INNER_SERVER, INNER_PORT),
                     "allowed-ips", "0.0.0.0/0,::/0", "persistent-keepalive", "1"], INNER_TUNNEL[1], INNER_TUNNEL6[1])
        self.sh("client", "ip route add default dev wi%s metric 100 && ip -6 route add default dev wi%s metric 100"
                % (self.tag, self.tag))

    def tunnels(self, outer: bool, inner: bool) -> None:
        """Bring each client tunnel up (with a handshake) or down, as asked; the kill switch is removed first."""
        self.kill_switch(None)
        for name, wanted, up in (("wo", outer, self.outer_up), ("wi", inner, self.inner_up)):
            if wanted and name + self.tag not in self.devices:
                up()
                if not self.handshaken(name):
                    raise AssertionError("%s did not come up" % name)
        for name, wanted in (("wi", inner), ("wo", outer)):
            if not wanted and name + self.tag in self.devices:
                self.delete(name)
                if name == "wo" and inner:
                    # wireguard-go keeps sending from the source it cached (the outer tunnel's address) and fails;
                    # setting the endpoint again drops it, so the inner device really heads for the physical link
                    self.run("client", "wg", "set", "wi" + self.tag, "peer", self.key("inner")[1], "endpoint",
                             "%s:%d" % (INNER_SERVER, INNER_PORT))

    def delete(self, name: str) -> None:
        """A tunnel goes down: its device is deleted (wireguard-go exits with it; OpenVPN is stopped, and its
        device goes with it)."""
        name += self.tag
        process = self.devices.pop(name)
        if self.openvpn and name.startswith("wo"):
            process.terminate()
        else:
            self.run("client", "ip", "link", "del", name)
        try:
            process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while self.run("client", "ip", "link", "show", name, check=False) and time.monotonic() < deadline:
            time.sleep(0.05)

    def handshaken(self, name: str) -> bool:
        """Wait (bounded) until the client device has a handshake, pinging through it to start one."""
        deadline = time.monotonic() + TIMEOUT
        server = OUTER_TUNNEL[0] if name == "wo" else INNER_TUNNEL[0]
        while time.monotonic() < deadline:
            self.run("client", sys.executable, "-c", NUDGE, server)
            time.sleep(0.2)
            if self.openvpn and name == "wo":
                if "Initialization Sequence Completed" in (self.workdir / ("wo%s.log" % self.tag)).read_text():
                    return True
            elif self.run("client", "wg", "show", name + self.tag, "latest-handshakes",
                          check=False).split("\t")[-1].strip() not in ("", "0"):
                return True
        return False

    def __enter__(self) -> "ChainLab":
        try:
            self.build()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        for name in self.devices:
            Path("/var/run/wireguard/%s.sock" % name).unlink(missing_ok=True)

    # the kill switch, through the real applier
    def firewall(self):
        def run(argv):
            proc = self.exec("client", *argv, timeout=TIMEOUT, check=False)
            return proc.returncode, proc.stdout, proc.stderr
        return _collection()[0][self.backend][1](run)

    def kill_switch(self, nested: Optional[bool]) -> None:
        """Load the kill switch (nested: the right policy; False: the inner endpoint flat) or remove it (None)."""
        firewall = self.firewall()
        firewall.delete("killswitch")
        if nested is None:
            return
        backends, parse_policy = _collection()
        path = self.workdir / "ruleset"
        path.write_text(backends[self.backend][0](parse_policy(policy_variables(self.tag, nested, self.outer_port))))
        error = firewall.apply(str(path))
        if error is not None:
            raise RuntimeError("the kill switch did not load: %s" % error)


# --------------------------------------------------------------------------- detectors and probes

class Detector:
    """tcpdump in a namespace, on one interface, packets arriving from the client's side only."""

    def __init__(self, lab: ChainLab, role: str, interface: str, bpf: str):
        self.path = str(lab.workdir / ("%s-%s-%s.pcap" % (role, interface, secrets.token_hex(3))))
        self.process = subprocess.Popen(["ip", "netns", "exec", lab.ns(role), "tcpdump", "-n", "-U", "-Q", "in", "-i",
                                         interface, "-w", self.path, bpf], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        self.where = "%s in %s" % (interface, role)

    def listening(self) -> "Detector":
        """Wait (bounded) until tcpdump listens; started first, all the detectors of a case get ready together."""
        deadline, said = time.monotonic() + TIMEOUT, b""
        while b"listening on" not in said:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.process.stderr], [], [], remaining)[0]:
                raise RuntimeError("tcpdump did not start on %s: %r" % (self.where, said))
            chunk = os.read(self.process.stderr.fileno(), 4096)
            if not chunk:
                raise RuntimeError("tcpdump exited on %s: %r" % (self.where, said))
            said += chunk
        return self

    def stop(self) -> List[Dict]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=TIMEOUT)
        self.process.stderr.close()
        return packets_of(self.path) if os.path.exists(self.path) else []


# any datagram into a WireGuard device starts its handshake
NUDGE = "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hello', (sys.argv[1], 9))"

PROBE_SCRIPT = textwrap.dedent('''
    import socket, struct, sys
    marker, sink, udp_port, tcp_port, inner, inner_port = sys.argv[1:7]
    family = socket.AF_INET6 if ":" in sink else socket.AF_INET
    for n in range(3):
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            s.sendto(("%s udp %d" % (marker, n)).encode(), (sink, int(udp_port)))
        except OSError:
            pass
        s.close()
    if inner:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.sendto(("%s other" % marker).encode(), (inner, int(inner_port)))
        except OSError:
            pass
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect((sink, int(tcp_port)))
    except OSError:
        pass
    # an ICMP echo request carrying the marker (a raw socket: root in the lab); ICMPv6: the kernel sums it
    if family == socket.AF_INET6:
        body = struct.pack("!BBHHH", 128, 0, 0, 0x4b53, 1) + marker.encode()
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    else:
        body = struct.pack("!BBHHH", 8, 0, 0, 0x4b53, 1) + marker.encode()
        words = sum(struct.unpack("!%dH" % ((len(body) + 1) // 2), body + bytes(len(body) % 2)))
        words = (words >> 16) + (words & 0xFFFF)
        body = body[:2] + struct.pack("!H", ~(words + (words >> 16)) & 0xFFFF) + body[4:]
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        s.sendto(body, (sink, 0))
    except OSError:
        pass
''')
# packets PROBE_SCRIPT tries to send: over IPv4 three UDP, one to the inner endpoint, a TCP SYN, an echo; over IPv6
# the same but the inner endpoint's (an IPv4 endpoint)
PROBES_SENT = 6 + 5


def probe(lab: ChainLab, case: str) -> Dict[str, Callable[[Dict], bool]]:
    """Send the probes from the client, over IPv4 then IPv6; returns a predicate per probe over captured packets."""
    marker = "ks%s%s" % (case, secrets.token_hex(3))
    marker6 = marker + "v6"
    tcp_port = PROBE_TCP + ord(case)
    lab.run("client", sys.executable, "-c", PROBE_SCRIPT, marker, SINK, str(PROBE_UDP), str(tcp_port),
            INNER_SERVER, str(INNER_PORT))
    lab.run("client", sys.executable, "-c", PROBE_SCRIPT, marker6, SINK6, str(PROBE_UDP), str(tcp_port), "", "")
    tag, tag6 = marker.encode(), marker6.encode()
    return {
        "udp to the sink": lambda p: p["proto"] == 17 and p["dport"] == PROBE_UDP and tag in p["payload"]
        and tag6 not in p["payload"],
        "tcp to the sink": lambda p: p["proto"] == 6 and p["dport"] == tcp_port and ":" not in p["dst"],
        "icmp to the sink": lambda p: p["proto"] == 1 and p["dst"] == SINK and tag in p["payload"],
        "plain udp to the inner endpoint (no mark)": lambda p: p["proto"] == 17 and p["dst"] == INNER_SERVER
        and tag in p["payload"],
        "udp to the sink over IPv6": lambda p: p["proto"] == 17 and p["dport"] == PROBE_UDP and tag6 in p["payload"],
        "tcp to the sink over IPv6": lambda p: p["proto"] == 6 and p["dport"] == tcp_port and p["dst"] == SINK6,
        # an echo request's data starts with the marker; an ICMPv6 error quoting a probe (the isp's unreachable for
        # the sink's unreachable: IPv6 quotes up to 1280 bytes) carries it further in
        "icmp to the sink over IPv6": lambda p: p["proto"] == 58 and p["dst"] == SINK6 and p["payload"].startswith(tag6),
    }


SINK_PROBES = ("udp to the sink", "tcp to the sink", "icmp to the sink")
SINK_PROBES6 = tuple("%s over IPv6" % name for name in SINK_PROBES)
OTHER = "plain udp to the inner endpoint (no mark)"


def leaks_but(allowed: str) -> str:
    """BPF for what leaks from the client (IPv4 or IPv6): anything but on-link neighbour discovery and ``allowed``."""
    return "(ip or ip6) and (%s)" % leak_expression([allowed])


# leaks: anything from the client but the tunnel messages an interface may carry
PHYS_ALLOWED = "dst host %s and %s"   # % (outer server, the outer tunnel's messages)
OUTER_LEAKS = leaks_but("dst host %s and %s" % (INNER_SERVER, wireguard_message_bpf(INNER_PORT)))


def measure(lab: ChainLab, case: str, kill_switch: Optional[bool], outer_up: bool) -> Dict[str, List[Dict]]:
    """Load (or remove) the kill switch, listen, probe; the packets each detector saw, and the probe predicates."""
    lab.kill_switch(kill_switch)
    detectors = {"phys": Detector(lab, "isp", "cl", leaks_but(PHYS_ALLOWED % (OUTER_SERVER, lab.outer_messages)))}
    if outer_up:
        detectors["outer tunnel"] = Detector(lab, "outer", "so" + lab.tag, OUTER_LEAKS)
    detectors["sink"] = Detector(lab, "sink", "isp", "(ip and dst host %s) or (ip6 and dst host %s)" % (SINK, SINK6))
    for detector in detectors.values():
        detector.listening()
    predicates = probe(lab, case)
    time.sleep(LINGER)
    seen = {name: detector.stop() for name, detector in detectors.items()}
    seen["probes"] = predicates  # type: ignore[assignment]
    return seen


def describe(packets: List[Dict]) -> List[str]:
    return ["%s > %s proto %d dport %s %r" % (p["src"], p["dst"], p["proto"], p["dport"], p["payload"][:24])
            for p in packets]


def is_inner_wireguard(packet: Dict) -> bool:
    payload = packet["payload"]
    return (packet["proto"] == 17 and packet["dst"] == INNER_SERVER and packet["dport"] == INNER_PORT
            and len(payload) >= 32 and 1 <= payload[0] <= 4 and payload[1:4] == bytes(3))


# --------------------------------------------------------------------------- the leak report's cases

CHAINS = (("wireguard", "nftables"), ("openvpn", "nftables"), ("wireguard", "iptables"))
# state, outer up, inner up, the wire a probe would leak on without the kill switch, the probes the control vouches
# for there, and whether the inner device's own WireGuard would leak there too
STATES = (("both up", True, True, "outer tunnel", (OTHER,), False),
          ("inner down", True, False, "outer tunnel", SINK_PROBES + SINK_PROBES6 + (OTHER,), False),
          ("outer down", False, True, "phys", (OTHER,), True),
          ("both down", False, False, "phys", SINK_PROBES + SINK_PROBES6 + (OTHER,), False))
# where the report counts probe packets: arrivals at the sink from the inner server (the exit), leaks on each wire
WHERE = ("inner server", "outer tunnel", "physical")


def chain_name(outer_kind: str, backend: str) -> str:
    return "double VPN: WireGuard in %s (%s)" % ("OpenVPN" if outer_kind == "openvpn" else "WireGuard", backend)


def chain_case_id(outer_kind: str, backend: str) -> str:
    return "%s%s-%s" % (CHAIN_CASE_PREFIX, outer_kind, backend)


def judge_state(host: str, case_id: str, state: tuple, control: Dict, guarded: Dict) -> CaseResult:
    """A state's control and guarded runs as a leak report case: where the guarded probes were seen, what leaked,
    whether the control saw each probe it vouches for on the wire it would leak on."""
    name, _outer, _inner, wire, vouched, inner_wireguard = state
    missing = [probe_name for probe_name in vouched if not [p for p in control[wire] if control["probes"][probe_name](p)]]
    if inner_wireguard and not [p for p in control[wire] if is_inner_wireguard(p)]:
        missing.append("inner WireGuard")
    arrived = [p for p in guarded["sink"] if any(guarded["probes"][n](p) for n in SINK_PROBES + SINK_PROBES6)]
    exits = [p for p in arrived if p["src"] in (INNER_SERVER, INNER_SERVER6)]
    wires = {"outer tunnel": guarded.get("outer tunnel", []), "physical": guarded["phys"]}
    # A leak on a wire counts there once; the sink's sightings (not from the inner server) count only when no wire
    # saw one: nothing counted twice, nothing the wires missed lost.
    leaks = wires["outer tunnel"] + wires["physical"] or [p for p in arrived if p not in exits]
    seen = {"inner server": len(exits), "outer tunnel": len(wires["outer tunnel"]), "physical": len(wires["physical"])}
    details = describe(leaks)[:20]
    error = ""
    exited = {":" in p["src"] for p in exits}
    if name == "both up" and exited != {False, True}:
        error = "not every family exited through the inner server: %s" % sorted("IPv6" if v6 else "IPv4" for v6 in exited)
    if missing:
        details.append("control did not see on the %s: %s" % (wire, ", ".join(missing)))
    return CaseResult(host=host, case=name, sent=PROBES_SENT, leaked=len(leaks), control_seen=not missing,
                      details=details, error=error, case_id=case_id, seen=seen)


def run_chain(outer_kind: str, backend: str, states: Tuple[tuple, ...] = STATES) -> List[CaseResult]:
    """Every state on one chain: control (no kill switch) then guarded; one CaseResult per state."""
    host, case_id = chain_name(outer_kind, backend), chain_case_id(outer_kind, backend)
    results = []
    with tempfile.TemporaryDirectory(prefix="netlock-doublevpn-") as workdir, \
            ChainLab(Path(workdir), outer_kind, backend) as lab:
        for letter, state in zip("bcde", states):
            try:
                lab.tunnels(outer=state[1], inner=state[2])
                control = measure(lab, letter.upper(), kill_switch=None, outer_up=state[1])
                guarded = measure(lab, letter, kill_switch=True, outer_up=state[1])
                results.append(judge_state(host, case_id, state, control, guarded))
            except (AssertionError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                results.append(CaseResult(host, state[0], 0, 0, error="%s: %s" % (type(exc).__name__, exc),
                                          case_id=case_id))
    return results


def run_cases(chains: Tuple[Tuple[str, str], ...] = CHAINS) -> List[CaseResult]:
    """The double-VPN cases for the leak report, every chain in turn (the lab's names are random: no clash)."""
    reason = unavailable()
    if reason:
        return [CaseResult(chain_name(*chain), "lab", 0, 0, error=reason, case_id=chain_case_id(*chain))
                for chain in chains]
    results: List[CaseResult] = []
    for chain in chains:
        results.extend(run_chain(*chain))
    return results


def main(argv: Optional[List[str]] = None) -> int:
    """Run the chains alone, print their tables and, with --reports, write the report's JSON and picture (no docker):
    ``python -m lab.doublevpn [--reports DIR]``."""
    import argparse  # pylint: disable=import-outside-toplevel
    from lab import report  # pylint: disable=import-outside-toplevel
    parser = argparse.ArgumentParser(prog="python -m lab.doublevpn")
    parser.add_argument("--reports", help="write leak-report.json and leak-timeline.png here")
    args = parser.parse_args(argv)
    results = run_cases()
    report.print_report(results, [])
    if args.reports:
        paths = report.write_all(results, [], args.reports)
        print("report: %s, %s" % (paths["json"], paths["png"]))
    return report.exit_code(results, [])


if __name__ == "__main__":
    sys.exit(main())
