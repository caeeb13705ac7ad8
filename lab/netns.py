"""A throwaway lab of network namespaces for traffic tests that need no container: namespaces joined by
veths, WireGuard (wireguard-go) between two of them, and a clean teardown.

Only lab addresses (198.18.0.0/15, 2001:db8::/32) are ever assigned, and only inside namespaces this
module created; the host's own network configuration is never touched.  Every command is bounded in time.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import time
from typing import Dict, Iterable, List, Optional

LAB_V4 = ipaddress.ip_network("198.18.0.0/15")
LAB_V6 = ipaddress.ip_network("2001:db8::/32")
WIREGUARD_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}


def run(argv: List[str], timeout: float = 20, check: bool = True, env: Optional[Dict[str, str]] = None,
        stdin: Optional[str] = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **env) if env else None
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env, input=stdin,
                            check=False)
    if check and result.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), result.returncode, result.stderr.strip()[-800:]))
    return result


def lab_address(interface: str) -> ipaddress._BaseAddress:
    """The address of an interface spec (``198.18.90.2/24``), refused outside the lab ranges."""
    address = ipaddress.ip_interface(interface)
    if address.ip not in (LAB_V4 if address.version == 4 else LAB_V6):
        raise ValueError("%s is outside the lab ranges %s and %s" % (interface, LAB_V4, LAB_V6))
    return address.ip


def missing_tools(*tools: str) -> List[str]:
    return [tool for tool in ("ip",) + tools if shutil.which(tool) is None]


class NetnsLab:
    """Namespaces named ``<prefix>-<role>``; use as a context manager, everything goes on exit."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.namespaces: List[str] = []
        self.processes: List[subprocess.Popen] = []
        self.wireguard: List[tuple] = []

    def ns(self, role: str) -> str:
        return "%s-%s" % (self.prefix, role)

    def exec(self, role: str, *argv: str, timeout: float = 20, check: bool = True,
             env: Optional[Dict[str, str]] = None, stdin: Optional[str] = None) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", self.ns(role), *argv], timeout=timeout, check=check, env=env, stdin=stdin)

    def spawn(self, role: str, *argv: str, env: Optional[Dict[str, str]] = None, **popen) -> subprocess.Popen:
        """A background process in a namespace, killed on exit."""
        full_env = dict(os.environ, **env) if env else None
        process = subprocess.Popen(["ip", "netns", "exec", self.ns(role), *argv], env=full_env, **popen)
        self.processes.append(process)
        return process

    def add(self, *roles: str, forwarding: bool = False, resolver: str = "198.18.0.53") -> None:
        """Namespaces with loopback up, no DAD and, for programs that resolve names (a browser does),
        their own resolv.conf naming a lab resolver: ``ip netns exec`` mounts /etc/netns/<name>/ over
        /etc, so the host's resolver is never asked from inside."""
        lab_address(resolver)
        for role in roles:
            name = self.ns(role)
            run(["ip", "netns", "del", name], check=False)
            os.makedirs("/etc/netns/%s" % name, exist_ok=True)
            with open("/etc/netns/%s/resolv.conf" % name, "w") as handle:
                handle.write("nameserver %s\n" % resolver)
            run(["ip", "netns", "add", name])
            self.namespaces.append(name)
            self.exec(role, "ip", "link", "set", "lo", "up")
            self.exec(role, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
            if forwarding:
                self.exec(role, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

    def link(self, left: str, left_if: str, left_addresses: List[str],
             right: str, right_if: str, right_addresses: List[str]) -> None:
        """A veth pair between two namespaces, with lab addresses (no DAD: usable at once)."""
        for spec in left_addresses + right_addresses:
            lab_address(spec)
        # Created inside the left namespace, the peer moved straight into the right one: no name in the
        # host's namespace is ever used.
        run(["ip", "-n", self.ns(left), "link", "add", left_if, "type", "veth", "peer", "name", right_if,
             "netns", self.ns(right)])
        for role, name, addresses in ((left, left_if, left_addresses), (right, right_if, right_addresses)):
            for spec in addresses:
                self.exec(role, "ip", "addr", "add", spec, "dev", name, *(["nodad"] if ":" in spec else []))
            self.exec(role, "ip", "link", "set", name, "up")

    def route(self, role: str, destination: str, *via: str) -> None:
        family = "-6" if any(":" in word for word in (destination,) + via) else "-4"
        self.exec(role, "ip", family, "route", "replace", destination, *via)

    def mac(self, role: str, interface: str) -> str:
        return self.exec(role, "cat", "/sys/class/net/%s/address" % interface).stdout.strip()

    # ------------------------------------------------------------------- WireGuard (userspace)

    def wireguard_device(self, role: str, name: str, private_key: str, addresses: List[str],
                         listen_port: Optional[int] = None, peer: Optional[dict] = None,
                         fwmark: Optional[int] = None) -> None:
        """A wireguard-go device in a namespace (its UAPI socket is host-wide: the name must be unique)."""
        for spec in addresses:
            lab_address(spec)
        self.exec(role, "wireguard-go", name, env=WIREGUARD_ENV)
        self.wireguard.append((role, name))
        key_file = "/run/%s-%s.key" % (self.prefix, name)
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.write(private_key + "\n")
        try:
            argv = ["wg", "set", name, "private-key", key_file]
            if listen_port:
                argv += ["listen-port", str(listen_port)]
            if fwmark:
                argv += ["fwmark", str(fwmark)]
            if peer:
                argv += ["peer", peer["public_key"], "allowed-ips", ",".join(peer["allowed_ips"])]
                if peer.get("endpoint"):
                    argv += ["endpoint", peer["endpoint"], "persistent-keepalive", "1"]
            self.exec(role, *argv)
        finally:
            os.unlink(key_file)
        for spec in addresses:
            self.exec(role, "ip", "addr", "add", spec, "dev", name, *(["nodad"] if ":" in spec else []))
        self.exec(role, "ip", "link", "set", name, "up")

    def delete_link(self, role: str, name: str) -> None:
        self.exec(role, "ip", "link", "del", name, check=False)

    def handshake_done(self, role: str, name: str) -> bool:
        result = self.exec(role, "wg", "show", name, "latest-handshakes", check=False)
        return any(line.split()[-1] not in ("0", "") for line in result.stdout.splitlines() if line.split())

    def __enter__(self) -> "NetnsLab":
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for role, name in self.wireguard:
            self.delete_link(role, name)
        for name in reversed(self.namespaces):
            # wireguard-go and anything else still in the namespace go with it.
            pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            run(["ip", "netns", "del", name], check=False)
            shutil.rmtree("/etc/netns/%s" % name, ignore_errors=True)
        time.sleep(0.1)


PHYSICAL = ("198.18.90.2", "2001:db8:90::2")
VPN_PUBLIC = ("198.18.91.2", "2001:db8:91::2")
SINK = ("198.18.92.2", "2001:db8:92::2")
TUNNEL_CLIENT = ("198.18.93.2", "2001:db8:93::2")
GUEST = ("198.18.94.2", "2001:db8:94::2")
ENDPOINT_PORT = 51820
MASQUERADE = """table inet netlock_lab_nat {
  chain postrouting { type nat hook postrouting priority 100; oifname "%s" masquerade; }
}
"""


class TunnelLab(NetnsLab):
    """A kill-switched client and what it talks to, as namespaces:

        guest ─ client ─eth0── router ──v0─ vpn (WireGuard server, masquerading)
                                      └─s0─ sink

    The client reaches the sink through its tunnel (``<prefix>c0``); its physical link leads to the same
    sink through the router, so a tunnel that goes away is a failover onto the physical link, as on a real
    host.  The guest (``with_guest``) is routed by the client: forwarded traffic.  The detector's place is
    the router's end of the client's link (``c0``)."""

    def __init__(self, prefix: str, with_guest: bool = False) -> None:
        super().__init__(prefix)
        self.with_guest = with_guest
        self.client_wg, self.server_wg = prefix + "c0", prefix + "s0"  # unique host-wide (UAPI socket)
        self.keys: Dict[str, Dict[str, str]] = {}
        self.client_mac = ""

    def __enter__(self) -> "TunnelLab":
        try:
            self.add("client", "sink", *(["guest"] if self.with_guest else []))
            self.add("vpn", forwarding=True)
            # The router doubles as the controller's view of the lab: its resolver is the sink (lab.labdns).
            self.add("router", forwarding=True, resolver=SINK[0])
            self.link("client", "eth0", ["%s/24" % PHYSICAL[0], "%s/64" % PHYSICAL[1]],
                      "router", "c0", ["198.18.90.1/24", "2001:db8:90::1/64"])
            self.link("vpn", "eth0", ["%s/24" % VPN_PUBLIC[0], "%s/64" % VPN_PUBLIC[1]],
                      "router", "v0", ["198.18.91.1/24", "2001:db8:91::1/64"])
            self.link("sink", "eth0", ["%s/24" % SINK[0], "%s/64" % SINK[1]],
                      "router", "s0", ["198.18.92.1/24", "2001:db8:92::1/64"])
            for role, subnet in (("client", "90"), ("vpn", "91"), ("sink", "92")):
                self.route(role, "default", "via", "198.18.%s.1" % subnet)
                self.route(role, "default", "via", "2001:db8:%s::1" % subnet)
            if self.with_guest:
                self.exec("client", "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
                self.link("guest", "eth0", ["%s/24" % GUEST[0], "%s/64" % GUEST[1]],
                          "client", "g0", ["198.18.94.1/24", "2001:db8:94::1/64"])
                self.route("guest", "default", "via", "198.18.94.1")
                self.route("guest", "default", "via", "2001:db8:94::1")
                # The router knows the guest's subnet through the client (routed, not masqueraded: the
                # detector tells the guest's packets by their source).
                self.route("router", "198.18.94.0/24", "via", PHYSICAL[0])
                self.route("router", "2001:db8:94::/64", "via", PHYSICAL[1])
            self.exec("vpn", "nft", "-f", "-", stdin=MASQUERADE % "eth0")
            self.keys = {"client": keypair(), "server": keypair()}
            guest = ["198.18.94.0/24", "2001:db8:94::/64"] if self.with_guest else []
            allowed = ["198.18.93.2/32", "2001:db8:93::2/128"] + guest
            self.wireguard_device("vpn", self.server_wg, self.keys["server"]["private"],
                                  ["198.18.93.1/24", "2001:db8:93::1/64"], listen_port=ENDPOINT_PORT,
                                  peer={"public_key": self.keys["client"]["public"], "allowed_ips": allowed})
            if self.with_guest:
                self.route("vpn", "198.18.94.0/24", "dev", self.server_wg)
                self.route("vpn", "2001:db8:94::/64", "dev", self.server_wg)
            self.client_mac = self.mac("client", "eth0")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def tunnel_up(self, fwmark: Optional[int] = None, name: str = "") -> None:
        """The client's tunnel (again), routing the sink's subnets into it, once the handshake is done."""
        name = name or self.client_wg
        self.delete_link("client", name)
        self.wireguard_device("client", name, self.keys["client"]["private"],
                              ["%s/24" % TUNNEL_CLIENT[0], "%s/64" % TUNNEL_CLIENT[1]],
                              peer={"public_key": self.keys["server"]["public"], "allowed_ips": ["0.0.0.0/0", "::/0"],
                                    "endpoint": "%s:%d" % (VPN_PUBLIC[0], ENDPOINT_PORT)}, fwmark=fwmark)
        # Only the sink goes into the tunnel (the rest keeps the physical default route): when the tunnel goes,
        # its routes go with it and the sink is reached over the physical link.
        self.route("client", "198.18.92.0/24", "dev", name)
        self.route("client", "2001:db8:92::/64", "dev", name)
        deadline = time.monotonic() + 15
        while not self.handshake_done("client", name):
            if time.monotonic() > deadline:
                raise RuntimeError("no WireGuard handshake within 15 s on %s" % name)
            time.sleep(0.3)

    def tunnel_down(self, name: str = "") -> None:
        self.delete_link("client", name or self.client_wg)

    def leak_bpf(self, allowed: Iterable[str] = ()) -> str:
        """BPF for what leaks from the client's physical link (lab.probe.leak_expression): anything but
        WireGuard messages to the endpoint, on-link neighbour discovery and the ``allowed`` expressions."""
        from lab.cases import wireguard_message_bpf  # pylint: disable=import-outside-toplevel
        from lab.probe import leak_expression  # pylint: disable=import-outside-toplevel
        endpoint = "dst host %s and %s" % (VPN_PUBLIC[0], wireguard_message_bpf(ENDPOINT_PORT))
        return "ether src %s and (ip or ip6) and (%s)" % (self.client_mac, leak_expression([endpoint] + list(allowed)))

    def load(self, ruleset: Optional[str], table: str = "killswitch") -> None:
        """The client's kill switch: this ruleset (``nft -f``), or none."""
        for family in ("inet", "bridge"):  # render_nftables makes both
            self.exec("client", "nft", "delete", "table", family, table, check=False)
        if ruleset:
            self.exec("client", "nft", "-f", "-", stdin=ruleset)


def keypair() -> Dict[str, str]:
    private = run(["wg", "genkey"]).stdout.strip()
    return {"private": private, "public": run(["wg", "pubkey"], stdin=private + "\n").stdout.strip()}
