"""Build and tear down the leak lab with docker: networks (checked by tools/labnet.py), containers, roles.

Each step is idempotent: running ``up`` twice leaves one lab.  The kill switch itself is not applied
here; ``playbooks/rollout.yml`` does that against ``inventories/lab``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

from lab import firewall
from lab.probe import docker, sh, wait_booted, wait_for
from lab.topology import (CLIENTS, DEFAULT_IMAGE, ENDPOINT, FWMARK, GUEST_V4, HOSTS, IMAGE_ENV, INET, LABEL, LAN,
                          LANPEER, NETWORKS, OPENVPN_MARK, OPENVPN_SERVERS, ROUTER, SINK, VPN, WG_PORT, WIREGUARD,
                          Host, Net, Vpn)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT = "/usr/local/bin/netlock-agent.py"
Step = Callable[[str], None]
STEPS = 3 + len(HOSTS) + len(CLIENTS)  # the step() calls of up()


def image() -> str:
    return os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)


def run_script(container: str, script: str, what: str) -> str:
    result = sh(container, "set -e\n" + script, timeout=120)
    if result.returncode != 0:
        output = result.stdout[-1500:] + result.stderr[-1500:]
        raise RuntimeError("%s on %s failed (%d): %s" % (what, container, result.returncode, output))
    return result.stdout


def exists(container: str) -> bool:
    return docker("container", "inspect", container, check=False).returncode == 0


def create_networks(networks: Iterable[Net] = NETWORKS) -> None:
    for net in networks:
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "labnet.py"), "create", net.name,
                        "--subnet", net.v4, "--subnet6", net.v6], check=True, timeout=120)
        bridge_rule("-I", net.name)


def bridge_rule(action: str, network: str) -> None:
    """Let frames that stay on one lab bridge through the host's FORWARD chain.

    With br_netfilter, bridged frames traverse the host's iptables, where Docker's isolation rules
    drop any whose destination lies outside the bridge's subnet: exactly the routed traffic from
    the clients to their router.  The exception covers only traffic in and out of the same bridge.
    """
    inspected = docker("network", "inspect", "-f", "{{.Id}}", network, check=False)
    if inspected.returncode != 0:
        return
    bridge = "br-" + inspected.stdout.strip()[:12]
    rule = ["DOCKER-USER", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
    present = subprocess.run(["iptables", "-C", *rule], capture_output=True, check=False).returncode == 0
    if (action == "-I") != present:
        subprocess.run(["iptables", action, *rule], check=True, capture_output=True, timeout=30)


def start_container(host: Host, label: str = LABEL) -> None:
    if exists(host.name):
        docker("start", host.name)
    else:
        (first, (v4, v6)), *others = host.addresses.items()
        argv = ["run", "-d", "--name", host.name, "--hostname", host.name, "--label", label,
                "--network", first, "--ip", v4, "--ip6", v6,
                "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", "--cap-add", "SYS_ADMIN",
                "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
                "--device", "/dev/net/tun", "-e", "container=docker"]
        # Docker disables IPv6 on interfaces created later (wg0, veths); the lab runs IPv6 end to end.
        for sysctl in ("net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0") + host.sysctls:
            argv += ["--sysctl", sysctl]
        docker(*argv, image(), "/lib/systemd/systemd")
        for name, (v4, v6) in others:
            docker("network", "connect", "--ip", v4, "--ip6", v6, name, host.name)
    wait_booted(host.name)
    docker("cp", os.path.join(ROOT, "lab", "agent.py"), "%s:%s" % (host.name, AGENT))


def service(container: str, unit: str, command: str) -> None:
    """A transient systemd service, so it survives the docker exec that started it; a changed command restarts it."""
    run_script(container, """
mkdir -p /run/netlock-lab
if [ "$(cat /run/netlock-lab/{unit}.cmd 2>/dev/null)" != {quoted} ]; then
  systemctl stop {unit} 2>/dev/null || true
  systemctl reset-failed {unit} 2>/dev/null || true
fi
systemctl is-active -q {unit} || systemd-run --unit={unit} --property=Restart=always {command}
printf '%s' {quoted} > /run/netlock-lab/{unit}.cmd
""".format(unit=unit, command=command, quoted=shlex.quote(command)), "starting %s" % unit)


def routes_via_router(net) -> str:
    gw4, gw6 = ROUTER.v4(net), ROUTER.v6(net)
    return "ip route replace default via %s\nip -6 route replace default via %s\n" % (gw4, gw6)


def wg_key(container: str) -> str:
    return run_script(container, "mkdir -p /etc/wireguard && cd /etc/wireguard && umask 077 && "
                      "{ [ -s private.key ] || wg genkey > private.key; } && wg pubkey < private.key",
                      "generating a WireGuard key").strip()


def _prefixed(addresses: Sequence[str], v4: int, v6: int) -> str:
    return ", ".join("%s/%d" % (a, v6 if ":" in a else v4) for a in addresses)


def wg_server_config(server: Host, clients: Sequence[Host], client_keys: Dict[str, str], port: int = WG_PORT) -> str:
    """wg-quick configuration of a server: one peer per client, each owning its tunnel addresses."""
    peers = "".join("[Peer]\nPublicKey = %s\nAllowedIPs = %s\n\n" % (client_keys[c.name], _prefixed(c.tunnel, 32, 128))
                    for c in clients)
    return ("[Interface]\nAddress = %s\nListenPort = %d\nPostUp = wg set %%i private-key "
            "/etc/wireguard/private.key\n\n%s" % (_prefixed(server.tunnel, 24, 64), port, peers))


def wg_client_config(host: Host, server_key: str, endpoint: Tuple[str, int], fwmark: int = FWMARK,
                     allowed: str = "0.0.0.0/0, ::/0") -> str:
    """wg-quick configuration of a full-tunnel client: wg-quick marks its own packets with fwmark."""
    return ("[Interface]\nAddress = %s\nFwMark = %d\nPostUp = wg set %%i private-key "
            "/etc/wireguard/private.key\n\n[Peer]\nPublicKey = %s\nEndpoint = %s:%d\n"
            "AllowedIPs = %s\nPersistentKeepalive = 1\n"
            % (_prefixed(host.tunnel, 32, 128), fwmark, server_key, endpoint[0], endpoint[1], allowed))


def wait_tunnel(hosts: Iterable[Host], address: str, timeout: float = 30) -> None:
    for host in hosts:
        if not wait_for(lambda h=host: sh(h.name, "ping -n -c 1 -W 1 %s" % address).returncode == 0, timeout):
            raise RuntimeError("%s: no traffic through the tunnel to %s" % (host.name, address))


def wireguard_clients() -> list:
    return [c for c in CLIENTS if c.vpn.kind == "wireguard"]


def openvpn_clients() -> list:
    return [c for c in CLIENTS if c.vpn.kind == "openvpn"]


def setup_vpn(client_keys: dict) -> None:
    config = wg_server_config(VPN, wireguard_clients(), client_keys)
    tunnels = (WIREGUARD,) + OPENVPN_SERVERS
    nat = ("table inet lab_nat {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n"
           "  ip saddr { %s } oifname \"eth0\" masquerade\n  ip6 saddr { %s } oifname \"eth0\" masquerade\n }\n}\n"
           % (", ".join(t.tunnel_v4 for t in tunnels), ", ".join(t.tunnel_v6 for t in tunnels)))
    run_script(VPN.name, routes_via_router(INET) + wg_quick_unit(config) + """
printf '%%s\\n' 'table inet lab_nat' 'delete table inet lab_nat' > /etc/lab-nat.nft
cat >> /etc/lab-nat.nft <<'NFT'
%s
NFT
nft -f /etc/lab-nat.nft
""" % nat, "setting up the VPN server")
    service(VPN.name, "lab-dns", "dnsmasq -k --no-resolv --no-hosts --listen-address=%s --bind-dynamic "
            "--address=/leak.test/%s --log-queries" % (VPN.tunnel[0], SINK.v4(INET)))


def wg_quick_unit(config: str) -> str:
    """wg-quick@wg0 with wireguard-go (no kernel module in the lab), enabled at boot."""
    return """
umask 077
cat > /etc/wireguard/wg0.conf.new <<'EOF'
%s
EOF
# A changed configuration (a peer's new key after its container was recreated) restarts the tunnel.
if cmp -s /etc/wireguard/wg0.conf.new /etc/wireguard/wg0.conf; then
  rm -f /etc/wireguard/wg0.conf.new
else
  mv -f /etc/wireguard/wg0.conf.new /etc/wireguard/wg0.conf
  ! systemctl is-active -q wg-quick@wg0 || systemctl stop wg-quick@wg0
fi
umask 022
mkdir -p /etc/systemd/system/wg-quick@wg0.service.d /usr/local/lib/netlock-lab
# Docker mounts /proc/sys read-only and the lab presets (docker run --sysctl) what wg-quick sets:
# accept a write of an unchanged value, pass everything else to the real sysctl.
cat > /usr/local/lib/netlock-lab/sysctl <<'EOF'
#!/bin/sh
for arg; do
  case $arg in *=*) [ "$(/sbin/sysctl -n "${arg%%=*}")" = "${arg#*=}" ] || exec /sbin/sysctl "$@"; unchanged=1;; esac
done
[ -n "${unchanged:-}" ] || exec /sbin/sysctl "$@"
EOF
chmod 755 /usr/local/lib/netlock-lab/sysctl
cat > /etc/systemd/system/wg-quick@wg0.service.d/userspace.conf <<'EOF'
[Service]
Environment=WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go
Environment=WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1
Environment=PATH=/usr/local/lib/netlock-lab:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
systemctl daemon-reload
systemctl enable -q wg-quick@wg0
systemctl is-active -q wg-quick@wg0 || systemctl start wg-quick@wg0
""" % config


# --- OpenVPN: a lab CA on the VPN server (ECDSA P-256, quick to make), one server per transport ------------

PKI = "/etc/openvpn/lab-pki"
OPENVPN_CONFIG = "/etc/openvpn/client/lab.conf"


def openvpn_pki(clients: Sequence[Host]) -> None:
    """The CA, the server's certificate and one per client, made once on the VPN server with openssl."""
    issue = """
[ -s {name}.crt ] || {{
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {name}.key -out {name}.csr \\
    -subj /CN={name} 2>/dev/null
  printf 'basicConstraints=CA:FALSE\\nkeyUsage=digitalSignature,keyAgreement\\nextendedKeyUsage={usage}\\n' > {name}.ext
  openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -sha256 \\
    -extfile {name}.ext -out {name}.crt 2>/dev/null
}}
"""
    script = """
mkdir -p {pki} && cd {pki} && umask 077
[ -s ca.crt ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \\
  -out ca.crt -days 30 -sha256 -subj /CN=netlock-lab-ca 2>/dev/null
""".format(pki=PKI) + issue.format(name="server", usage="serverAuth")
    script += "".join(issue.format(name=c.name, usage="clientAuth") for c in clients)
    run_script(VPN.name, script, "making the OpenVPN lab CA and certificates")


def openvpn_server_config(server: Vpn) -> str:
    """One OpenVPN server: a full tunnel for IPv4 and IPv6 pushed to each client, no tls-auth (so that every
    packet starts with the opcode byte lab.cases.openvpn_message_bpf reads)."""
    network = server.tunnel_v4.split("/")[0]
    return "\n".join([
        "dev ovpn-%s" % server.protocol, "dev-type tun",
        "proto %s" % ("udp4" if server.protocol == "udp" else "tcp4-server"),
        "port %d" % server.port, "topology subnet", "server %s 255.255.255.0" % network,
        "server-ipv6 %s" % server.tunnel_v6, 'push "redirect-gateway def1 ipv6"', "keepalive 1 10",
        "ca %s/ca.crt" % PKI, "cert %s/server.crt" % PKI, "key %s/server.key" % PKI, "dh none", "verb 3", ""])


def setup_openvpn_servers() -> None:
    for server in OPENVPN_SERVERS:
        path = "/etc/openvpn/server/lab-%s.conf" % server.protocol
        run_script(VPN.name, "mkdir -p /etc/openvpn/server\ncat > %s <<'CONF'\n%sCONF\n"
                   % (path, openvpn_server_config(server)), "writing the OpenVPN %s server's configuration" % server.protocol)
        service(VPN.name, "lab-openvpn-%s" % server.protocol, "openvpn --config %s" % path)


def openvpn_client_config(host: Host, server: Vpn) -> str:
    """The client's configuration with its credentials inline; `mark` puts the fwmark on its own sockets."""
    pem = run_script(VPN.name, "cd %s && for f in ca.crt %s.crt %s.key; do echo \"--- $f\"; cat $f; done"
                     % (PKI, host.name, host.name), "reading %s's OpenVPN credentials" % host.name)
    parts = dict(chunk.split("\n", 1) for chunk in pem.split("--- ")[1:])
    return "\n".join([
        "client", "dev %s" % server.interface, "dev-type tun",
        "proto %s" % ("udp4" if server.protocol == "udp" else "tcp4-client"),
        "remote %s %d" % (ENDPOINT[0], server.port), "nobind", "mark %d" % OPENVPN_MARK, "remote-cert-tls server",
        "connect-retry 1 1", "verb 3",
        "<ca>\n%s</ca>" % parts["ca.crt"], "<cert>\n%s</cert>" % parts[host.name + ".crt"],
        "<key>\n%s</key>" % parts[host.name + ".key"], ""])


def openvpn_unit(config: str, unit: str) -> str:
    """The OpenVPN client as a systemd service enabled at boot; a changed configuration restarts it."""
    return """
umask 077
mkdir -p /etc/openvpn/client
cat > {path}.new <<'CONF'
{config}CONF
if cmp -s {path}.new {path}; then
  rm -f {path}.new
else
  mv -f {path}.new {path}
  ! systemctl is-active -q {unit} || systemctl stop {unit}
fi
umask 022
cat > /etc/systemd/system/{unit}.service <<'UNIT'
[Unit]
Description=lab OpenVPN client
After=network.target

[Service]
ExecStart=/usr/sbin/openvpn --config {path}

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable -q {unit}
systemctl is-active -q {unit} || systemctl start {unit}
""".format(path=OPENVPN_CONFIG, config=config, unit=unit)


def setup_openvpn_client(host: Host, server: Optional[Vpn] = None) -> None:
    """Start the client's OpenVPN service, or switch it to another transport's server."""
    server = server or host.vpn
    run_script(host.name, openvpn_unit(openvpn_client_config(host, server), server.unit),
               "starting %s's OpenVPN client (%s)" % (host.name, server.protocol))


def setup_sink() -> None:
    run_script(SINK.name, routes_via_router(INET), "routing the sink")
    service(SINK.name, "lab-tcp", "socat TCP6-LISTEN:8080,fork,reuseaddr,ipv6only=0 SYSTEM:'echo pong'")
    service(SINK.name, "lab-dns", "dnsmasq -k --no-resolv --no-hosts --address=/#/%s" % SINK.v4(INET))


def setup_lanpeer() -> None:
    run_script(LANPEER.name, routes_via_router(LAN), "routing the LAN peer")
    service(LANPEER.name, "lab-tcp", "socat TCP6-LISTEN:8080,fork,reuseaddr,ipv6only=0 SYSTEM:'echo pong'")
    service(LANPEER.name, "lab-dns", "dnsmasq -k --no-resolv --no-hosts --address=/#/%s" % LANPEER.v4(LAN))


def setup_client_network(host: Host) -> None:
    """Routes, a guest namespace behind the client and its NAT: what a reboot takes away."""
    guest_gw = GUEST_V4.replace(".0/24", ".1")
    guest_ip = GUEST_V4.replace(".0/24", ".2")
    nat = ("table ip lab_nat {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n"
           "  ip saddr %s masquerade\n }\n}\n" % GUEST_V4)
    run_script(host.name, routes_via_router(LAN) + """
if ! ip netns list | grep -qw guest; then
  ip netns add guest
  ip link add guest0 type veth peer name eth0 netns guest
  ip address add {gw}/24 dev guest0 && ip link set guest0 up
  ip netns exec guest ip address add {ip}/24 dev eth0
  ip netns exec guest ip link set eth0 up && ip netns exec guest ip link set lo up
  ip netns exec guest ip route add default via {gw}
fi
printf '%s\n' 'table ip lab_nat' 'delete table ip lab_nat' > /etc/lab-nat.nft
cat >> /etc/lab-nat.nft <<'NFT'
{nat}
NFT
nft -f /etc/lab-nat.nft
""".format(gw=guest_gw, ip=guest_ip, nat=nat), "setting up %s's network" % host.name)


def setup_client(host: Host, server_key: str) -> None:
    setup_client_network(host)
    if host.vpn.kind == "openvpn":
        setup_openvpn_client(host)
        return
    config = wg_client_config(host, server_key, ENDPOINT)
    run_script(host.name, wg_quick_unit(config), "starting %s's WireGuard client" % host.name)


def up(step: Optional[Step] = None) -> None:
    """Create the networks and containers and configure every role; safe to run again."""
    step = step or (lambda _message: None)
    step("lab networks (overlap-checked)")
    create_networks()
    for host in HOSTS:
        step("container %s" % host.name)
        start_container(host)
    step("iptables alternatives on the clients (inventories/lab/host_vars)")
    for host in CLIENTS:
        firewall.select(host)
    step("sink and LAN resolver")
    setup_sink()
    setup_lanpeer()
    step("WireGuard and OpenVPN servers with NAT and DNS")
    client_keys = {c.name: wg_key(c.name) for c in wireguard_clients()}
    server_key = wg_key(VPN.name)
    setup_vpn(client_keys)
    if openvpn_clients():
        openvpn_pki(openvpn_clients())
        setup_openvpn_servers()
    for host in CLIENTS:
        step("%s client %s" % ("OpenVPN" if host.vpn.kind == "openvpn" else "WireGuard", host.name))
        setup_client(host, server_key)
    step("tunnels up")
    for host in CLIENTS:
        wait_tunnel([host], host.vpn.gateway)


def down(label: str = LABEL, networks: Iterable[Net] = NETWORKS) -> None:
    """Remove the containers that carry this label and these networks, nothing else."""
    listed = docker("ps", "-aq", "--filter", "label=" + label, check=False).stdout.split()
    if listed:
        docker("rm", "-f", *listed, timeout=180)
    for net in networks:
        bridge_rule("-D", net.name)
        docker("network", "rm", net.name, check=False)
