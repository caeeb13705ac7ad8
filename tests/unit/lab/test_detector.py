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
from lab.probe import leak_filter  # noqa: E402

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


def ipv4(destination: str, protocol: int, source_port: int, port: int) -> bytes:
    transport = struct.pack("!HH", source_port, port) + bytes(16 if protocol == 6 else 4)
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(transport), 0, 0, 64, protocol, 0)
    header += ipaddress.IPv4Address(CLIENT_V4).packed + ipaddress.IPv4Address(destination).packed
    return ethernet(0x0800, header + transport)


def tcp6(destination: str, port: int) -> bytes:
    return ethernet(0x86DD, ipv6(destination, 6, struct.pack("!HH", 40000, port) + bytes(16), 64, CLIENT_V6))


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
    Packet("WireGuard to the endpoint", ipv4("198.18.2.10", 17, 51820, 51820), False, False),
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
