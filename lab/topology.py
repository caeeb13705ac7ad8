"""The leak lab: who is where.  Every address is in 198.18.0.0/15 or 2001:db8::/32.

    clients (kill switch) --- ks-lan --- router --- ks-inet --- vpn (WireGuard and OpenVPN server, NAT, DNS)
    lanpeer (DNS resolver)                                  \\-- sink (records every packet)

Three WireGuard clients, one per Linux firewall the kill switch drives, and an OpenVPN client (ks-client4,
nftables); each client's backend and iptables variant are set in inventories/lab/host_vars/ (see
lab/firewall.py).  The drift lab (lab/instance.py) copies the WireGuard clients only.

Docker gives the host the .1 address of each internal network, so lab hosts avoid .1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List

IMAGE_ENV = "NETLOCK_LAB_IMAGE"
DEFAULT_IMAGE = "netlock-lab:latest"
LABEL = "netlock.lab=leak"


@dataclass(frozen=True)
class Net:
    name: str
    v4: str
    v6: str


LAN = Net("ks-lan", "198.18.1.0/24", "2001:db8:1::/64")
INET = Net("ks-inet", "198.18.2.0/24", "2001:db8:2::/64")
NETWORKS = (LAN, INET)

TUNNEL_V4 = "198.18.100.0/24"
TUNNEL_V6 = "2001:db8:100::/64"
GUEST_V4 = "198.18.50.0/24"  # a network namespace behind each client, for forwarded traffic
WG_PORT = 51820
FWMARK = 51820  # wg-quick's default mark for a full tunnel
OPENVPN_PORT = 1194  # one server per transport on the VPN server, both on this port (UDP and TCP)
OPENVPN_MARK = 1194  # the client's `mark` directive: the fwmark on its own sockets


@dataclass(frozen=True)
class Vpn:
    """The VPN client a lab client runs, as the cases need it: how to take it down and bring it back, what its
    endpoint packets look like (lab.cases.endpoint_bpf), where to ping through the tunnel."""

    kind: str  # "wireguard" or "openvpn"
    interface: str
    unit: str  # the systemd unit that runs it, enabled at boot
    process: str  # the process `kill -9` ends
    port: int  # on the VPN server's ks-inet address
    protocol: str  # "udp" or "tcp"
    gateway: str  # the server's IPv4 address inside the tunnel
    tunnel_v4: str  # the tunnel network (the server NATs it)
    tunnel_v6: str

    def label(self) -> str:
        """"WireGuard" or "OpenVPN (udp)": what the report names a client's VPN by."""
        return "WireGuard" if self.kind == "wireguard" else "OpenVPN (%s)" % self.protocol


WIREGUARD = Vpn("wireguard", "wg0", "wg-quick@wg0", "wireguard-go", WG_PORT, "udp", "198.18.100.1",
                TUNNEL_V4, TUNNEL_V6)
OPENVPN_UDP = Vpn("openvpn", "tun0", "lab-openvpn", "openvpn", OPENVPN_PORT, "udp", "198.18.101.1",
                  "198.18.101.0/24", "2001:db8:101::/64")
OPENVPN_TCP = Vpn("openvpn", "tun0", "lab-openvpn", "openvpn", OPENVPN_PORT, "tcp", "198.18.102.1",
                  "198.18.102.0/24", "2001:db8:102::/64")
OPENVPN_SERVERS = (OPENVPN_UDP, OPENVPN_TCP)


@dataclass(frozen=True)
class Host:
    name: str
    addresses: Dict[str, tuple]  # network name -> (ipv4, ipv6)
    role: str
    tunnel: tuple = ()  # (ipv4, ipv6) inside the tunnel, for clients
    sysctls: tuple = field(default=())
    vpn: Vpn = WIREGUARD  # the VPN client, for clients

    def v4(self, net: Net = LAN) -> str:
        return self.addresses[net.name][0]

    def v6(self, net: Net = LAN) -> str:
        return self.addresses[net.name][1]


FORWARDING = ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
ROUTER = Host("ks-router", {LAN.name: ("198.18.1.254", "2001:db8:1::254"),
                            INET.name: ("198.18.2.254", "2001:db8:2::254")}, "router",
              # Proxy ARP/ND let the LocalNet case make a public range look on-link from the LAN.
              sysctls=FORWARDING + ("net.ipv4.conf.all.proxy_arp=1", "net.ipv6.conf.all.proxy_ndp=1"))
VPN = Host("ks-vpn", {INET.name: ("198.18.2.10", "2001:db8:2::10")}, "vpn",
           tunnel=("198.18.100.1", "2001:db8:100::1"), sysctls=FORWARDING)
SINK = Host("ks-sink", {INET.name: ("198.18.2.20", "2001:db8:2::20")}, "sink")
LANPEER = Host("ks-lanpeer", {LAN.name: ("198.18.1.5", "2001:db8:1::5")}, "lanpeer")
CLIENTS = tuple(
    Host("ks-client%d" % i, {LAN.name: ("198.18.1.%d" % (10 + i), "2001:db8:1::%d" % (10 + i))}, "client",
         tunnel=("198.18.100.%d" % (10 + i), "2001:db8:100::%d" % (10 + i)),
         sysctls=FORWARDING + ("net.ipv4.conf.all.src_valid_mark=1",))
    for i in (1, 2, 3)
) + (Host("ks-client4", {LAN.name: ("198.18.1.14", "2001:db8:1::14")}, "client",
          sysctls=FORWARDING + ("net.ipv4.conf.all.src_valid_mark=1",), vpn=OPENVPN_UDP),)
HOSTS: List[Host] = [ROUTER, VPN, SINK, LANPEER, *CLIENTS]
ENDPOINT = (VPN.v4(INET), WG_PORT)


INVENTORY_DIR = "inventories/lab"  # the lab's Ansible inventory, relative to the repository root

# NETLOCK_LAB=drift (molecule/drift): the same lab under other names, label and networks, beside this one
# (lab/instance.py).  Every lab module takes its names from here, so they all follow.
if os.environ.get("NETLOCK_LAB", "leak") != "leak":
    from lab import instance as _instance
    _NETS, _HOSTS, _INSTANCE = _instance.move(os.environ["NETLOCK_LAB"], NETWORKS,
                                              [h for h in HOSTS if h.vpn.kind == "wireguard"])
    LAN, INET = _NETS
    NETWORKS = (LAN, INET)
    ROUTER, VPN, SINK, LANPEER, *_CLIENTS = _HOSTS
    CLIENTS = tuple(_CLIENTS)
    HOSTS = [ROUTER, VPN, SINK, LANPEER, *CLIENTS]
    ENDPOINT = (VPN.v4(INET), WG_PORT)
    LABEL, INVENTORY_DIR = _INSTANCE.label, _INSTANCE.inventory


def client(name: str) -> Host:
    for host in CLIENTS:
        if host.name == name:
            return host
    raise KeyError("no lab client named %r" % name)
