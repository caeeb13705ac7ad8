"""The SSH fleet lab: managed hosts that Ansible reaches over real SSH, as an operator with sudo.

    controller (this machine: 198.18.30.1 on the ks-fleet bridge)
        |  ssh operator@ (key auth only, known_hosts checked), sudo without password
    ks-fleet1..3   198.18.30.11-13   managed hosts, WireGuard client wg0 (fwmark 51820, full tunnel)
    ks-fleet-vpn   198.18.30.20      WireGuard server udp/51820, tunnel 198.18.130.0/24 (server .1):
                                     dnsmasq and listeners (tcp 8080, udp 9999) inside the tunnel only
    ks-fleet-sink  198.18.30.30      listeners outside the tunnel (tcp 8080, udp 9999): the policy never
                                     allows it, so anything a managed host sends there is a leak

One --internal network, ks-fleet (198.18.30.0/24, 2001:db8:30::/64), created by tools/labnet.py.
The controller's SSH key and known_hosts live in .cache/fleet/ (gitignored); inventories/fleet points
there.  ``up`` is idempotent; ``down`` removes only the fleet's containers and network.  The kill
switch itself is not applied here.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Callable, Dict, List, Optional, Sequence

from lab import build
from lab.topology import FWMARK, WG_PORT, Host, Net

FLEET = Net("ks-fleet", "198.18.30.0/24", "2001:db8:30::/64")
NETWORKS = (FLEET,)
LABEL = "netlock.lab=fleet"
CONTROLLER = "198.18.30.1"  # docker gives the host the bridge's .1: the address the managed hosts see
TUNNEL_V4 = "198.18.130.0/24"

VPN = Host("ks-fleet-vpn", {FLEET.name: ("198.18.30.20", "2001:db8:30::20")}, "vpn", tunnel=("198.18.130.1",))
SINK = Host("ks-fleet-sink", {FLEET.name: ("198.18.30.30", "2001:db8:30::30")}, "sink")
# ks-fleet1..N at 198.18.30.11..(10+N): at most 19 managed hosts below the VPN server's .20, the rest from .31 up.
MAX_MANAGED = 200


def managed_address(index: int) -> int:
    """The last octet of managed host ``index`` (1-based): .11-.19, then .31 on (.20 and .30 are taken)."""
    if not 1 <= index <= MAX_MANAGED:
        raise ValueError("fleet host count: %d is not between 1 and %d" % (index, MAX_MANAGED))
    return 10 + index if index < 10 else 21 + index


def managed_hosts(count: int) -> tuple:
    """ks-fleet1..``count``; the first three are the default lab the molecule fleet scenario and its tests use."""
    return tuple(
        Host("ks-fleet%d" % i, {FLEET.name: ("198.18.30.%d" % managed_address(i), "2001:db8:30::%d" % managed_address(i))},
             "managed", tunnel=("198.18.130.%d" % managed_address(i),), sysctls=("net.ipv4.conf.all.src_valid_mark=1",))
        for i in range(1, count + 1))


DEFAULT_COUNT = 3
MANAGED = managed_hosts(DEFAULT_COUNT)
HOSTS: List[Host] = [VPN, SINK, *MANAGED]
ENDPOINT = (VPN.v4(FLEET), WG_PORT)
DNS = VPN.tunnel[0]
TCP_PORT, UDP_PORT = 8080, 9999

OPERATOR = "operator"
CACHE = os.path.join(build.ROOT, ".cache", "fleet")
KEY = os.path.join(CACHE, "id_ed25519")
KNOWN_HOSTS = os.path.join(CACHE, "known_hosts")
INVENTORY = os.path.join(build.ROOT, "inventories", "fleet")
SSH_TIMEOUT = 10  # seconds for any single ssh, ssh-keyscan or connect

Step = Callable[[str], None]


def managed(name: str) -> Host:
    for host in MANAGED:
        if host.name == name:
            return host
    raise KeyError("no managed fleet host named %r" % name)


# --- the controller's side ------------------------------------------------------------------------

def controller_key() -> str:
    """The operator key pair in .cache/fleet (created once, mode 600); returns the public key."""
    os.makedirs(CACHE, mode=0o700, exist_ok=True)
    if not os.path.exists(KEY):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "netlock-fleet-operator", "-f", KEY],
                       check=True, capture_output=True, timeout=30)
    os.chmod(KEY, 0o600)
    with open(KEY + ".pub", encoding="ascii") as handle:
        return handle.read().strip()


def ssh_argv(host: Host, *command: str, master: bool = False) -> List[str]:
    """A fresh ssh as the operator, strict host key checking, no agent, no password, bounded connect.

    ``master=False`` (the default) never uses or starts a ControlMaster, so the connection is new.
    """
    argv = ["ssh", "-i", KEY, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=" + KNOWN_HOSTS,
            "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=%d" % SSH_TIMEOUT,
            "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3"]
    if not master:
        argv += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    return argv + ["%s@%s" % (OPERATOR, host.v4(FLEET)), *command]


def ssh(host: Host, *command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command on a managed host over a new SSH connection; never raises on a non-zero exit."""
    return subprocess.run(ssh_argv(host, *command), capture_output=True, text=True, timeout=timeout, check=False)


def scan_known_hosts(hosts: Sequence[Host] = MANAGED) -> None:
    """known_hosts from ssh-keyscan, each key checked against the one the container holds."""
    addresses = [h.v4(FLEET) for h in hosts]
    scanned = subprocess.run(["ssh-keyscan", "-T", str(SSH_TIMEOUT), "-t", "ed25519", *addresses],
                             capture_output=True, text=True, timeout=60, check=False).stdout
    lines = sorted(line for line in scanned.splitlines() if line and not line.startswith("#"))
    for host in hosts:
        key = build.run_script(host.name, "cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub", "reading the host key")
        if "%s %s" % (host.v4(FLEET), key.strip()) not in lines:
            raise RuntimeError("ssh-keyscan of %s did not return the key %s holds: %s"
                               % (host.v4(FLEET), host.name, scanned or "nothing"))
    with tempfile.NamedTemporaryFile("w", dir=CACHE, delete=False) as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(handle.name, KNOWN_HOSTS)


# --- the containers -------------------------------------------------------------------------------

def setup_operator(host: Host, public_key: str) -> None:
    """The operator account: key auth only, passwordless sudo; sshd refuses passwords and root."""
    build.run_script(host.name, """
getent group {user} >/dev/null || groupadd {user}
id -u {user} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --gid {user} {user}
usermod -p '*' {user}   # no password, yet not a locked account
install -d -m 700 -o {user} -g {user} /home/{user}/.ssh
printf '%s\\n' '{key}' > /home/{user}/.ssh/authorized_keys
chown {user}:{user} /home/{user}/.ssh/authorized_keys && chmod 600 /home/{user}/.ssh/authorized_keys
printf '%s\\n' '{user} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/{user}
chmod 440 /etc/sudoers.d/{user} && visudo -cq -f /etc/sudoers.d/{user}
cat > /etc/ssh/sshd_config.d/netlock-lab.conf.new <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AuthenticationMethods publickey
EOF
if cmp -s /etc/ssh/sshd_config.d/netlock-lab.conf.new /etc/ssh/sshd_config.d/netlock-lab.conf; then
  rm -f /etc/ssh/sshd_config.d/netlock-lab.conf.new
else
  mv -f /etc/ssh/sshd_config.d/netlock-lab.conf.new /etc/ssh/sshd_config.d/netlock-lab.conf
  /usr/sbin/sshd -t
  ! systemctl is-active -q ssh || systemctl reload ssh
fi
systemctl is-enabled -q ssh
systemctl is-active -q ssh || systemctl start ssh
""".format(user=OPERATOR, key=public_key), "setting up the operator account and sshd")


def listeners(host: Host, bind: str = "") -> None:
    """tcp 8080 answers "pong", udp 9999 swallows datagrams; on every address, or only on ``bind``."""
    tcp = "TCP-LISTEN:%d,fork,reuseaddr,bind=%s" % (TCP_PORT, bind) if bind else \
        "TCP6-LISTEN:%d,fork,reuseaddr,ipv6only=0" % TCP_PORT
    udp = "UDP-RECV:%d,bind=%s" % (UDP_PORT, bind) if bind else "UDP6-RECV:%d,ipv6only=0" % UDP_PORT
    build.service(host.name, "lab-tcp", "socat %s SYSTEM:'echo pong'" % tcp)
    build.service(host.name, "lab-udp", "socat -u %s OPEN:/dev/null" % udp)


def setup_vpn(client_keys: Dict[str, str], clients: Sequence[Host] = MANAGED) -> None:
    """The WireGuard server; its resolver and listeners answer only inside the tunnel."""
    build.run_script(VPN.name, build.wg_quick_unit(build.wg_server_config(VPN, clients, client_keys)),
                     "setting up the VPN server")
    # No upstream: names outside fleet.test are refused at once (the fleet reaches no mirror).
    build.service(VPN.name, "lab-dns", "dnsmasq -k --no-resolv --no-hosts --listen-address=%s --bind-dynamic "
                  "--address=/fleet.test/%s" % (DNS, DNS))
    listeners(VPN, bind=VPN.tunnel[0])


def setup_client(host: Host, server_key: str) -> None:
    """wg0, and the VPN's resolver as the host's only one (Docker's own, on loopback, would sit out
    every lookup for 20 s instead of failing at once as a real host's resolver behind the kill switch does)."""
    config = build.wg_client_config(host, server_key, ENDPOINT, FWMARK, allowed="0.0.0.0/0")
    build.run_script(host.name, build.wg_quick_unit(config) + "printf 'nameserver %s\\n' > /etc/resolv.conf\n" % DNS,
                     "starting %s's WireGuard client" % host.name)


def check_ssh(hosts: Sequence[Host] = MANAGED) -> None:
    """Every managed host answers a new SSH connection as the operator, and sudo needs no password."""
    for host in hosts:
        result = ssh(host, "sudo", "-n", "true")
        if result.returncode != 0:
            raise RuntimeError("ssh %s@%s with sudo failed: %s" % (OPERATOR, host.v4(FLEET), result.stderr[-800:]))


def up(step: Optional[Step] = None, count: int = DEFAULT_COUNT) -> None:
    """Create the network and containers and configure every role; safe to run again.

    ``count`` managed hosts (ks-fleet1..count); the benchmarks ask for more than the default three.
    """
    step = step or (lambda _message: None)
    clients = managed_hosts(count)
    step("fleet network (overlap-checked)")
    build.create_networks(NETWORKS)
    for host in (VPN, SINK, *clients):
        step("container %s" % host.name)
        build.start_container(host, LABEL)
    step("operator key and accounts")
    public_key = controller_key()
    for host in clients:
        setup_operator(host, public_key)
    step("sink listeners")
    listeners(SINK)
    step("WireGuard server, resolver and listeners in the tunnel")
    client_keys = {h.name: build.wg_key(h.name) for h in clients}
    server_key = build.wg_key(VPN.name)
    setup_vpn(client_keys, clients)
    for host in clients:
        step("WireGuard client %s" % host.name)
        setup_client(host, server_key)
    step("tunnels up")
    build.wait_tunnel(clients, VPN.tunnel[0])
    step("known_hosts and SSH as %s" % OPERATOR)
    scan_known_hosts(clients)
    check_ssh(clients)


def steps(count: int = DEFAULT_COUNT) -> int:
    """How many times ``up`` calls its step function."""
    return 1 + 2 + count + 1 + 1 + 1 + count + 1 + 1


STEPS = steps()


def down() -> None:
    build.down(LABEL, NETWORKS)
