"""The leak lab's detector: which packets from a client count as leaks, judged by the real BPF.

Crafted packets go into a pcap file and through tcpdump with the exact filter the lab captures with
(lab.cases.leak_bpf_for), so the test checks the classification libpcap makes, not a re-implementation.
"""

from __future__ import annotations

import ipaddress
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lab.cases import leak_bpf_for  # noqa: E402
from lab.probe import leak_filter, packet_kind, unseen  # noqa: E402
from lab.topology import OPENVPN_TCP, OPENVPN_UDP  # noqa: E402

CLIENT_MAC = "02:42:c6:12:01:0b"
OTHER_MAC = "02:42:c6:12:01:0c"
CLIENT_V4, CLIENT_V6, CLIENT_LL = "198.18.1.11", "2001:db8:1::11", "fe80::42:c6ff:fe12:10b"
RS, RA, NS, NA, REDIRECT, ECHO, MLD2_REPORT = 133, 134, 135, 136, 137, 128, 143

pytestmark = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed (make host-deps)")


def mac(text: str) -> bytes:
    return bytes(int(octet, 16) for octet in text.split(":"))


def ethernet(ethertype: int, payload: bytes, source: str = CLIENT_MAC) -> bytes:
    return mac("02:42:c6:12:01:fe") + mac(source) + struct.pack("!H", ethertype) + payload


def ipv6(destination: str, next_header: int, payload: bytes, hop_limit: int = 255, source: str = CLIENT_LL) -> bytes:
    header = struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit)
    return header + ipaddress.IPv6Address(source).packed + ipaddress.IPv6Address(destination).packed + payload


def icmp6(kind: int, destination: str, hop_limit: int = 255, source: str = CLIENT_LL, mac_source: str = CLIENT_MAC):
    body = struct.pack("!BBHI", kind, 0, 0, 0) + ipaddress.IPv6Address("2001:db8:1::254").packed
    return ethernet(0x86DD, ipv6(destination, 58, body, hop_limit, source), mac_source)


def mld2_report() -> bytes:
    """An MLDv2 report behind a hop-by-hop header with the router alert option, as the kernel sends it."""
    hop_by_hop = struct.pack("!BB", 58, 0) + bytes([5, 2, 0, 0, 1, 0])
    return ethernet(0x86DD, ipv6("ff02::16", 0, hop_by_hop + struct.pack("!BBHHH", MLD2_REPORT, 0, 0, 0, 0), 1))


def ipv4(destination: str, protocol: int, source_port: int, port: int, payload: bytes = b"") -> bytes:
    if protocol == 6:  # a SYN: data offset 5, flags S
        transport = struct.pack("!HHIIBBHHH", source_port, port, 1, 0, 0x50, 0x02, 64240, 0, 0) + payload
    else:
        transport = struct.pack("!HHHH", source_port, port, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(transport), 0, 0, 64, protocol, 0)
    header += ipaddress.IPv4Address(CLIENT_V4).packed + ipaddress.IPv4Address(destination).packed
    return ethernet(0x0800, header + transport)


def tcp6(destination: str, port: int) -> bytes:
    syn = struct.pack("!HHIIBBHHH", 40000, port, 1, 0, 0x50, 0x02, 64240, 0, 0)
    return ethernet(0x86DD, ipv6(destination, 6, syn, 64, CLIENT_V6))


def udp6(destination: str, port: int, payload: bytes = b"probe") -> bytes:
    return ethernet(0x86DD, ipv6(destination, 17, struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload,
                                 64, CLIENT_V6))


def echo6(destination: str) -> bytes:
    return ethernet(0x86DD, ipv6(destination, 58, struct.pack("!BBHHH", ECHO, 0, 0, 1, 1), 64, CLIENT_V6))


def echo4(destination: str) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, 1, 1)
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0)
    header += ipaddress.IPv4Address(CLIENT_V4).packed + ipaddress.IPv4Address(destination).packed
    return ethernet(0x0800, header + icmp)


WG_HANDSHAKE = bytes([1, 0, 0, 0]) + bytes(144)  # message type 1 and three reserved zero bytes
WG_DATA = bytes([4, 0, 0, 0]) + bytes(28)
NOT_WG = bytes([1, 0, 1, 0]) + bytes(144)  # a handshake's type and length, but a reserved byte set


def arp() -> bytes:
    return ethernet(0x0806, struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + bytes(20))


class Packet(NamedTuple):
    what: str
    frame: bytes
    leak: bool  # with allow_lan off
    leak_with_lan: bool  # with allow_lan on (the LAN is 198.18.1.0/24 and 2001:db8:1::/64)


PACKETS: List[Packet] = [
    # Neighbour discovery to link-local or multicast destinations: what the contract allows.
    Packet("NS to the solicited-node multicast address", icmp6(NS, "ff02::1:ff00:254"), False, False),
    Packet("NS to a link-local address (NUD)", icmp6(NS, "fe80::1"), False, False),
    Packet("NA to a link-local address", icmp6(NA, "fe80::5"), False, False),
    Packet("RS to all routers", icmp6(RS, "ff02::2"), False, False),
    Packet("RA to all nodes", icmp6(RA, "ff02::1"), False, False),
    Packet("MLDv2 report", mld2_report(), False, False),
    # Neighbour discovery to any other destination: a leak, unless the LAN is allowed and it goes there
    # (allow_lan lets any traffic but DNS reach the LAN, so ND there carries nothing new off the link).
    Packet("NS to the router's global address", icmp6(NS, "2001:db8:1::254", source=CLIENT_V6), True, False),
    Packet("NA to the LAN peer's global address", icmp6(NA, "2001:db8:1::5", source=CLIENT_V6), True, False),
    Packet("RS to a global address", icmp6(RS, "2001:db8:2::20"), True, True),
    Packet("RA to a global address", icmp6(RA, "2001:db8:1::5"), True, False),
    Packet("redirect to the sink", icmp6(REDIRECT, "2001:db8:2::20", source=CLIENT_V6), True, True),
    Packet("NS to a unique local address", icmp6(NS, "fd00::1"), True, True),
    # Not neighbour discovery, even when it looks on-link.
    Packet("NS to a link-local address with hop limit 64", icmp6(NS, "fe80::1", hop_limit=64), True, True),
    Packet("echo request to a link-local address, hop limit 255", icmp6(ECHO, "fe80::1"), True, True),
    Packet("echo request to the LAN peer", icmp6(ECHO, "2001:db8:1::5", 64, CLIENT_V6), True, False),
    # Everything else.
    Packet("WireGuard handshake to the endpoint", ipv4("198.18.2.10", 17, 51820, 51820, WG_HANDSHAKE), False, False),
    Packet("WireGuard data to the endpoint", ipv4("198.18.2.10", 17, 51820, 51820, WG_DATA), False, False),
    # The endpoint's address and port, but not the tunnel's own protocol: another process (ServerIP).
    Packet("a canary datagram to the endpoint port", ipv4("198.18.2.10", 17, 40000, 51820, b"NETLOCK-0123"), True, True),
    Packet("an empty datagram to the endpoint port", ipv4("198.18.2.10", 17, 40000, 51820), True, True),
    Packet("a reserved byte set, to the endpoint port", ipv4("198.18.2.10", 17, 40000, 51820, NOT_WG), True, True),
    Packet("TCP to the endpoint port", ipv4("198.18.2.10", 6, 40000, 51820), True, True),
    Packet("UDP to the endpoint's address, another port", ipv4("198.18.2.10", 17, 40000, 51821), True, True),
    Packet("TCP to the sink", ipv4("198.18.2.20", 6, 40000, 8080), True, True),
    Packet("TCP to the LAN peer", ipv4("198.18.1.5", 6, 40000, 8080), True, False),
    Packet("TCP over IPv6 to the LAN peer", tcp6("2001:db8:1::5", 8080), True, False),
    Packet("DNS to the LAN peer", ipv4("198.18.1.5", 17, 40000, 53), True, True),
    Packet("DNS over TLS to the LAN peer", ipv4("198.18.1.5", 6, 40000, 853), True, True),
    # Not this client's, or not IP: never counted.
    Packet("another host's NS to a global address", icmp6(NS, "2001:db8:1::254", source="2001:db8:1::12",
                                                          mac_source=OTHER_MAC), False, False),
    Packet("ARP", arp(), False, False),
]


def write_pcap(path: Path, frames: List[bytes]) -> None:
    """Ethernet frames, frame i stamped at second i + 1, so tcpdump's -tt output names each one."""
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for second, frame in enumerate(frames, start=1):
        data += struct.pack("<IIII", second, 0, len(frame), len(frame)) + frame
    path.write_bytes(data)


def matched(path: Path, bpf: str) -> List[str]:
    """The names of the packets in the pcap that the filter selects."""
    result = subprocess.run(["tcpdump", "-n", "-tt", "-r", str(path), bpf], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    seconds = [int(line.split(".", 1)[0]) for line in result.stdout.splitlines() if line[:1].isdigit()]
    return [PACKETS[second - 1].what for second in seconds]


@pytest.fixture(scope="module")
def pcap(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("detector") / "packets.pcap"
    write_pcap(path, [p.frame for p in PACKETS])
    return path


def test_every_crafted_packet_is_read(pcap: Path) -> None:
    assert matched(pcap, "") == [p.what for p in PACKETS]


@pytest.mark.parametrize("allow_lan", [False, True], ids=["allow_lan off", "allow_lan on"])
def test_leaks_as_the_contract_says(pcap: Path, allow_lan: bool) -> None:
    expected = [p.what for p in PACKETS if (p.leak_with_lan if allow_lan else p.leak)]
    assert matched(pcap, leak_bpf_for(CLIENT_MAC, allow_lan)) == expected


def test_off_link_neighbour_discovery_is_a_leak_unless_its_destination_is_allowed(pcap: Path) -> None:
    """An exception for other traffic (here: all UDP) does not cover neighbour discovery off the link."""
    bpf = leak_filter([CLIENT_LL, CLIENT_V6], allowed=["udp"])
    off_link = ["NS to the router's global address", "NA to the LAN peer's global address", "RS to a global address",
                "RA to a global address", "redirect to the sink", "NS to a unique local address"]
    assert set(off_link) <= set(matched(pcap, bpf))


# --------------------------------------------------------------------------- positive controls, per probe

PROBE_PACKETS = [
    (ipv4("198.18.2.20", 6, 40000, 8080), ("tcp", "198.18.2.20", 8080)),
    (ipv4("198.18.2.20", 17, 40000, 9999, b"NETLOCK-0123"), ("udp", "198.18.2.20", 9999)),
    (echo4("198.18.2.20"), ("icmp", "198.18.2.20", 0)),
    (tcp6("2001:db8:2::20", 8080), ("tcp", "2001:db8:2::20", 8080)),
    (udp6("2001:db8:2::20", 9999), ("udp", "2001:db8:2::20", 9999)),
    (echo6("2001:db8:2::20"), ("icmp", "2001:db8:2::20", 0)),
    (ipv4("198.18.1.5", 17, 40000, 53, b"\x4e\x4c\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03abc\x00\x00\x01\x00\x01"),
     ("udp", "198.18.1.5", 53)),
    (ipv4("198.18.1.5", 6, 40000, 853), ("tcp", "198.18.1.5", 853)),
    (icmp6(NS, "ff02::1:ff00:254"), None),   # neighbour discovery is no probe
    (arp(), None),
]


def headers(path: Path) -> List[str]:
    result = subprocess.run(["tcpdump", "-n", "-tt", "-r", str(path)], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line[:1].isdigit()]


@pytest.fixture(scope="module")
def probe_pcap(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("controls") / "probes.pcap"
    write_pcap(path, [frame for frame, _kind in PROBE_PACKETS])
    return path


def test_tcpdump_headers_name_each_probe(probe_pcap: Path) -> None:
    """Real tcpdump output of each probe kind reads as the (protocol, destination, port) the agent names."""
    lines = headers(probe_pcap)
    assert len(lines) == len(PROBE_PACKETS)
    assert [packet_kind(line) for line in lines] == [kind for _frame, kind in PROBE_PACKETS]


def test_a_control_vouches_only_for_the_probes_it_saw(probe_pcap: Path) -> None:
    probes = [list(kind) for _frame, kind in PROBE_PACKETS if kind]
    lines = headers(probe_pcap)
    assert unseen(probes, lines) == []
    # The IPv6 probes went unseen (say, no IPv6 route in the control): the control fails, naming them.
    ipv4_only = [line for line in lines if " IP6 " not in line]
    assert unseen(probes, ipv4_only) == ["tcp 2001:db8:2::20:8080", "udp 2001:db8:2::20:9999", "icmp 2001:db8:2::20"]
    # A control that saw one packet of each but to another port vouches for nothing on this one.
    assert unseen([["tcp", "198.18.2.20", 443]], lines) == ["tcp 198.18.2.20:443"]
    # Addresses compare as addresses, not as text.
    assert unseen([["udp", "2001:db8:2:0:0:0:0:20", 9999]], lines) == []
    assert unseen([], []) == []


# --------------------------------------------------------------------------- an OpenVPN client's endpoint

OPENVPN_SESSION = bytes(range(1, 9))  # an 8-byte session id


def openvpn_packet(opcode: int, acks: int = 0, key_id: int = 0) -> bytes:
    """A control packet without tls-auth: opcode/key id, session id, ACK array (and the remote session id),
    packet id, then payload."""
    body = bytes([opcode << 3 | key_id]) + OPENVPN_SESSION + bytes([acks]) + bytes(4 * acks)
    return body + (OPENVPN_SESSION if acks else b"") + struct.pack("!I", 1) + b"\x16\x03\x01"


def openvpn_data(peer_id: int = 0) -> bytes:
    return bytes([9 << 3]) + peer_id.to_bytes(3, "big") + struct.pack("!I", 7) + bytes(16) + bytes(40)


def tcp4(source_port: int, port: int, payload: bytes = b"", flags: int = 0x18) -> bytes:
    """An IPv4 TCP segment to the endpoint (PSH ACK unless told), its payload as given."""
    transport = struct.pack("!HHIIBBHHH", source_port, port, 1, 1, 0x50, flags, 64240, 0, 0) + payload
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(transport), 0, 0, 64, 6, 0)
    header += ipaddress.IPv4Address(CLIENT_V4).packed + ipaddress.IPv4Address("198.18.2.10").packed
    return ethernet(0x0800, header + transport)


def framed(packet: bytes) -> bytes:
    """OpenVPN over TCP: each packet behind its 2-byte length."""
    return struct.pack("!H", len(packet)) + packet


OPENVPN_TCP_SOURCE = 40001  # the port of openvpn's own connection (lab.cases.openvpn_tcp_source)
ENDPOINT_V4 = "198.18.2.10"
# (what, frame, leak from an OpenVPN client over UDP, leak over TCP)
OPENVPN_PACKETS = [
    ("hard reset client v2", ipv4(ENDPOINT_V4, 17, 40000, 1194, openvpn_packet(7)), False, True),
    ("hard reset client v3", ipv4(ENDPOINT_V4, 17, 40000, 1194, openvpn_packet(10)), False, True),
    ("control v1 with one ACK", ipv4(ENDPOINT_V4, 17, 40000, 1194, openvpn_packet(4, acks=1)), False, True),
    ("ACK v1", ipv4(ENDPOINT_V4, 17, 40000, 1194, openvpn_packet(5, acks=2, key_id=1)), False, True),
    ("soft reset", ipv4(ENDPOINT_V4, 17, 40000, 1194, openvpn_packet(3, key_id=1)), False, True),
    ("data v2, peer id 0", ipv4(ENDPOINT_V4, 17, 40000, 1194, openvpn_data()), False, True),
    # The endpoint's port, not an OpenVPN client's packet.
    ("a canary datagram ('N' reads as opcode 9)", ipv4(ENDPOINT_V4, 17, 40000, 1194, b"NETLOCK-0123456789"),
     True, True),
    ("an empty datagram", ipv4(ENDPOINT_V4, 17, 40000, 1194), True, True),
    ("data v2 with a peer id past 255", ipv4(ENDPOINT_V4, 17, 40000, 1194, openvpn_data(0x10000)), True, True),
    ("a control opcode with 200 ACKs", ipv4(ENDPOINT_V4, 17, 40000, 1194, openvpn_packet(4)[:9] + b"\xc8" + bytes(12)),
     True, True),
    ("the server's hard reset", ipv4(ENDPOINT_V4, 17, 40000, 1194, openvpn_packet(8)), True, True),
    ("data v1 (2.6 peers send v2)", ipv4(ENDPOINT_V4, 17, 40000, 1194, bytes([6 << 3]) + bytes(30)), True, True),
    ("a WireGuard handshake", ipv4(ENDPOINT_V4, 17, 40000, 1194, WG_HANDSHAKE), True, True),
    ("a short control packet", ipv4(ENDPOINT_V4, 17, 40000, 1194, openvpn_packet(7)[:6]), True, True),
    # TCP: openvpn's connection passes (segments without payload, or framed packets), nothing else does.
    ("openvpn's SYN", tcp4(OPENVPN_TCP_SOURCE, 1194, flags=0x02), True, False),
    ("openvpn's ACK", tcp4(OPENVPN_TCP_SOURCE, 1194, flags=0x10), True, False),
    ("openvpn's framed hard reset", tcp4(OPENVPN_TCP_SOURCE, 1194, framed(openvpn_packet(7))), True, False),
    ("openvpn's framed data", tcp4(OPENVPN_TCP_SOURCE, 1194, framed(openvpn_data())), True, False),
    ("a canary on openvpn's connection", tcp4(OPENVPN_TCP_SOURCE, 1194, b"NETLOCK-0123456789"), True, True),
    ("another process's SYN to the endpoint", tcp4(40002, 1194, flags=0x02), True, True),
    ("another process's framed packet", tcp4(40002, 1194, framed(openvpn_data())), True, True),
]


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_an_openvpn_clients_own_packets_pass_and_nothing_else(tmp_path: Path, protocol: str) -> None:
    path = tmp_path / "openvpn.pcap"
    write_pcap(path, [frame for _what, frame, _udp, _tcp in OPENVPN_PACKETS])
    vpn = OPENVPN_UDP if protocol == "udp" else OPENVPN_TCP
    result = subprocess.run(["tcpdump", "-n", "-tt", "-r", str(path), leak_bpf_for(CLIENT_MAC, vpn=vpn,
                            openvpn_tcp_source=OPENVPN_TCP_SOURCE)], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stderr
    leaked = [OPENVPN_PACKETS[int(line.split(".", 1)[0]) - 1][0]
              for line in result.stdout.splitlines() if line[:1].isdigit()]
    expected = [what for what, _frame, udp_leak, tcp_leak in OPENVPN_PACKETS if (udp_leak if protocol == "udp" else tcp_leak)]
    assert leaked == expected


def test_wireguard_packets_do_not_pass_an_openvpn_clients_detector(pcap: Path) -> None:
    """The endpoint exception follows the client's VPN: WireGuard messages leak from an OpenVPN client."""
    leaked = matched(pcap, leak_bpf_for(CLIENT_MAC, vpn=OPENVPN_UDP))
    assert {"WireGuard handshake to the endpoint", "WireGuard data to the endpoint"} <= set(leaked)
