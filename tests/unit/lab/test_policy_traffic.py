"""The policy's variables, each exercised by traffic (issue 10, part 5): endpoint scoping by user and by
mark, tunnel wildcards, extra_outbound, IPv6 blocked while the tunnel offers it, and the forward modes with
a routed guest.

Each case runs in lab.netns.TunnelLab (namespaces: client, router, WireGuard server, sink, guest) with the
ruleset our renderer makes from the role's variables, loaded with ``nft -f`` on the client.  The detector
captures on the router's end of the client's physical link; probes come from the lab agent (lab/agent.py),
bounded in count and time.  Every case that says "nothing leaves" first runs the same probes without the
kill switch, and that control must see each probe on the wire (lab.probe.unseen); every case that says
"this gets through" checks each of its probes where it must arrive.
"""

from __future__ import annotations

import ipaddress
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Iterable, List, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lab import labdns, webrtc  # noqa: E402
from lab.netns import ENDPOINT_PORT, GUEST, PHYSICAL, SINK, TUNNEL_CLIENT, VPN_PUBLIC, TunnelLab, lab_address  # noqa: E402
from lab.probe import Capture, canary, unseen  # noqa: E402

from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy  # noqa: E402
from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_nftables import render  # noqa: E402

UNAVAILABLE = webrtc.unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))
AGENT = str(REPO_ROOT / "lab" / "agent.py")
NOBODY = 65534
MARK = 0x51820


@pytest.fixture(scope="module")
def lab():
    with TunnelLab("nlpt", with_guest=True) as net:
        yield net


def ruleset(lab: TunnelLab, **variables) -> str:
    """The kill switch for the client, from the role's variables (defaults: the lab's tunnel and endpoint)."""
    values = {"tunnel_interfaces": [lab.client_wg], "endpoints": [{"address": VPN_PUBLIC[0], "port": ENDPOINT_PORT}],
              "management_cidrs": [], "ipv6": "tunnel"}
    values.update(variables)
    return render(parse_policy({"killswitch_" + k: v for k, v in values.items()}))


def probe(lab: TunnelLab, role: str = "client", targets: Iterable[str] = SINK, tcp: Iterable[int] = (8080,),
          udp: Iterable[int] = (8080,), icmp: bool = True, user: Optional[int] = None) -> dict:
    argv = ["python3", AGENT, "probe", "--canary", canary(), "--udp-count", "2"]
    for target in targets:
        argv += ["--target", target]
    for kind, ports in (("tcp", tcp), ("udp", udp)):
        argv += ["--%s-port=%d" % (kind, port) for port in ports] or ["--no-%s" % kind]
    if not icmp:
        argv.append("--no-icmp")
    if user is not None:
        # the system interpreter: another user may not reach one kept under /root (pyenv, the venv)
        argv = ["setpriv", "--reuid=%d" % user, "--regid=%d" % user, "--clear-groups", "/usr/bin/python3"] + argv[1:]
    return json.loads(lab.exec(role, *argv, timeout=60).stdout)


def on_the_wire(lab: TunnelLab, bpf: str, at: str = "router", interface: str = "c0", **probe_args):
    """The probes' result and the headers of what the capture (in namespace ``at``) saw while they ran."""
    with Capture(None, bpf, interface=interface, netns=lab.ns(at), max_seconds=90) as capture:
        result = probe(lab, **probe_args)
    return result, capture.packets


def leak_case(lab: TunnelLab, rules: str, allowed: Iterable[str] = (), **probe_args) -> List[str]:
    """Control (no kill switch: each probe must be seen on the physical link), then the same probes with the
    kill switch: returns what leaked; fails the test when the control missed a probe."""
    lab.load(None)
    result, seen = on_the_wire(lab, "ether src %s and (ip or ip6)" % lab.client_mac, **probe_args)
    missing = unseen(result["probes"], seen)
    assert not missing, "the control did not see: %s" % missing
    lab.load(rules)
    _result, leaked = on_the_wire(lab, lab.leak_bpf(allowed), **probe_args)
    return leaked


def arrives(lab: TunnelLab, rules: str, source: str, **probe_args) -> List[str]:
    """The probes (named as lab.probe.unseen names them) that did NOT reach the sink from ``source``."""
    return reach(lab, rules, source, **probe_args)[0]


def reach(lab: TunnelLab, rules: str, source: str, **probe_args):
    """(the probes that did not reach the sink from ``source``, every probe sent), both named as
    lab.probe.unseen names them."""
    lab.load(rules)
    result, seen = on_the_wire(lab, "src host %s" % source, at="sink", interface="eth0", **probe_args)
    return unseen(result["probes"], seen), unseen(result["probes"], [])


# --------------------------------------------------------------------------- endpoint scoping


ENDPOINTS_V4_V6 = [{"address": VPN_PUBLIC[0], "port": ENDPOINT_PORT}, {"address": VPN_PUBLIC[1], "port": ENDPOINT_PORT}]
ENDPOINT_PROBES = {"targets": VPN_PUBLIC, "tcp": (ENDPOINT_PORT, 443), "udp": (ENDPOINT_PORT, ENDPOINT_PORT + 1),
                   "icmp": False}


def test_endpoint_user_another_user_reaches_no_endpoint_port_while_the_vpn_still_connects(lab):
    rules = ruleset(lab, endpoints=ENDPOINTS_V4_V6, endpoint_user="root")  # wireguard-go runs as root here
    lab.tunnel_down()
    leaked = leak_case(lab, rules, user=NOBODY, **ENDPOINT_PROBES)
    assert not leaked, "another user reached the endpoint outside the tunnel:\n%s" % "\n".join(leaked)
    lab.load(rules)
    lab.tunnel_up()  # the VPN client's own user still gets its handshake through the kill switch


def test_endpoint_mark_unmarked_traffic_reaches_no_endpoint_port_while_the_marked_vpn_connects(lab):
    rules = ruleset(lab, endpoints=ENDPOINTS_V4_V6, endpoint_mark=MARK)
    lab.tunnel_down()
    leaked = leak_case(lab, rules, **ENDPOINT_PROBES)  # root, but without the mark
    assert not leaked, "unmarked traffic reached the endpoint outside the tunnel:\n%s" % "\n".join(leaked)
    lab.load(rules)
    lab.tunnel_up(fwmark=MARK)
    lab.tunnel_down()
    with pytest.raises(RuntimeError, match="no WireGuard handshake"):
        lab.tunnel_up()  # the same client without its mark: the endpoint rule really is scoped by it


# --------------------------------------------------------------------------- hostname endpoints


RESOLVE_ON_THE_CONTROLLER = """
import json, sys
sys.path.insert(0, %r)
from ansible_collections.netlock.killswitch.plugins.action.killswitch_policy import resolve
print(json.dumps(resolve(sys.argv[1])))
"""


def test_a_hostname_endpoint_is_pinned_on_the_controller_through_a_lab_resolver(lab):
    """The action plugin's own resolver (getaddrinfo on the controller; here the router's namespace, whose
    resolver is lab.labdns on the sink) pins the name; the VPN connects to the pinned addresses and nothing
    else gets the endpoint's port."""
    dns = lab.spawn("sink", sys.executable, "-m", "lab.labdns", "--listen", SINK[0], "--seconds", "60",
                    "--record", "vpn.lab.test=%s" % VPN_PUBLIC[0], "--record", "vpn.lab.test=%s" % VPN_PUBLIC[1],
                    env={"PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.PIPE, text=True)
    assert dns.stdout.readline().strip() == "serving"
    answers = json.loads(lab.exec("router", sys.executable, "-c", RESOLVE_ON_THE_CONTROLLER % str(REPO_ROOT / ".collections"),
                                  "vpn.lab.test").stdout)
    dns.kill()
    assert sorted(answers) == sorted(VPN_PUBLIC), answers
    policy = parse_policy({"killswitch_tunnel_interfaces": [lab.client_wg], "killswitch_management_cidrs": [],
                           "killswitch_ipv6": "tunnel",
                           "killswitch_endpoints": [{"address": "vpn.lab.test", "port": ENDPOINT_PORT}]},
                          resolve=lambda name: answers)
    rules = render(policy)
    assert all(address in rules for address in VPN_PUBLIC), rules
    lab.load(rules)
    lab.tunnel_up()  # to the pinned address
    lab.tunnel_down()
    leaked = leak_case(lab, rules, targets=SINK, tcp=(ENDPOINT_PORT,), udp=(ENDPOINT_PORT,), icmp=False)
    assert not leaked, "the endpoint's port was open to another address:\n%s" % "\n".join(leaked)


# --------------------------------------------------------------------------- tunnel wildcards


def test_a_wildcard_tunnel_lets_the_tunnel_through_and_nothing_else_when_it_goes(lab):
    rules = ruleset(lab, tunnel_interfaces=[lab.prefix + "c*"])
    lab.load(rules)
    lab.tunnel_up()
    missing = arrives(lab, rules, VPN_PUBLIC[0], targets=SINK[:1])
    assert not missing, "through the wildcard tunnel, the sink did not get: %s" % missing
    lab.tunnel_down()
    leaked = leak_case(lab, rules)
    assert not leaked, "left on the physical link with the tunnel down:\n%s" % "\n".join(leaked)


# --------------------------------------------------------------------------- extra_outbound


def test_extra_outbound_opens_exactly_its_address_protocol_and_port(lab):
    rules = ruleset(lab, extra_outbound=[{"cidr": SINK[0] + "/32", "protocol": "tcp", "port": 8080}])
    lab.tunnel_down()
    missing = arrives(lab, rules, PHYSICAL[0], targets=SINK[:1], tcp=(8080,), udp=(), icmp=False)
    assert not missing, "the exception did not let through: %s" % missing
    exception = "dst host %s and tcp dst port 8080" % SINK[0]
    leaked = leak_case(lab, rules, allowed=[exception], tcp=(8080, 8081), udp=(8080,))
    assert not leaked, "beyond the exception, left on the physical link:\n%s" % "\n".join(leaked)


# --------------------------------------------------------------------------- IPv6


def test_ipv6_block_refuses_ipv6_even_through_a_tunnel_that_offers_it(lab):
    lab.load(None)
    lab.tunnel_up()
    missing = arrives(lab, ruleset(lab, ipv6="tunnel"), VPN_PUBLIC[1], targets=SINK[1:])
    assert not missing, "control: with ipv6 'tunnel' the sink did not get through the tunnel: %s" % missing
    blocked = ruleset(lab, ipv6="block")
    missing, sent = reach(lab, blocked, VPN_PUBLIC[1], targets=SINK[1:])
    assert missing == sent, "with ipv6 'block' IPv6 reached the sink through the tunnel: %s" % (
        sorted(set(sent) - set(missing)))
    assert not arrives(lab, blocked, VPN_PUBLIC[0], targets=SINK[:1]), "IPv4 through the tunnel must still pass"
    lab.tunnel_down()
    leaked = leak_case(lab, blocked, targets=SINK[1:])
    assert not leaked, "IPv6 left on the physical link:\n%s" % "\n".join(leaked)


# --------------------------------------------------------------------------- forwarded traffic (the guest)


def guest_reach(lab: TunnelLab, rules: str):
    return reach(lab, rules, VPN_PUBLIC[0], role="guest", targets=SINK[:1])


def guest_leaks(lab: TunnelLab, rules: str) -> List[str]:
    return leak_case(lab, rules, role="guest", targets=SINK[:1])


def test_forward_tunnel_lets_the_guest_through_the_tunnel_only(lab):
    rules = ruleset(lab, forward="tunnel")
    lab.load(rules)
    lab.tunnel_up()
    missing, _sent = guest_reach(lab, rules)
    assert not missing, "the guest did not get through the tunnel: %s" % missing
    lab.tunnel_down()
    leaked = guest_leaks(lab, rules)
    assert not leaked, "the guest left on the physical link:\n%s" % "\n".join(leaked)


def test_forward_block_stops_the_guest_even_through_the_tunnel(lab):
    rules = ruleset(lab, forward="block")
    lab.load(rules)
    lab.tunnel_up()
    missing, sent = guest_reach(lab, rules)
    assert missing == sent, "with forward 'block' the guest reached the sink: %s" % sorted(set(sent) - set(missing))
    lab.tunnel_down()
    leaked = guest_leaks(lab, rules)
    assert not leaked, "the guest left on the physical link:\n%s" % "\n".join(leaked)


def test_forward_off_leaves_forwarding_alone_as_documented(lab):
    """'off' is for hosts whose forwarding another firewall owns: the guest's traffic is not ours to stop,
    while the host's own traffic still is."""
    rules = ruleset(lab, forward="off")
    lab.tunnel_down()
    lab.load(rules)
    result, seen = on_the_wire(lab, "src host %s" % GUEST[0], role="guest", targets=SINK[:1])
    assert not unseen(result["probes"], seen), "forward 'off' stopped the guest: %s" % unseen(result["probes"], seen)
    leaked = leak_case(lab, rules, targets=SINK[:1])
    assert not leaked, "the host's own traffic left on the physical link:\n%s" % "\n".join(leaked)


def test_the_lab_refuses_addresses_outside_the_lab_ranges():
    for address in PHYSICAL + VPN_PUBLIC + SINK + TUNNEL_CLIENT + GUEST:
        lab_address(address + ("/64" if ":" in address else "/24"))
    for outside in ("192.0.2.1/24", "203.0.113.5/32", "10.0.0.1/8", "2001:db9::1/64"):
        with pytest.raises(ValueError, match="outside the lab ranges"):
            lab_address(outside)


def test_the_lab_resolver_answers_its_names_only():
    query = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x03vpn\x03lab\x04test\x00" + struct.pack("!HH", 1, 1)
    records = {"vpn.lab.test": ["198.18.91.2", "2001:db8:91::2"]}
    response = labdns.answer(query, records)
    assert struct.unpack_from("!HHHH", response) == (7, 0x8180, 1, 1)
    assert response.endswith(bytes([198, 18, 91, 2]))
    aaaa = query[:-4] + struct.pack("!HH", 28, 1)
    assert labdns.answer(aaaa, records).endswith(ipaddress.ip_address("2001:db8:91::2").packed)
    other = query.replace(b"\x03vpn", b"\x03web")
    assert struct.unpack_from("!HHHH", labdns.answer(other, records)) == (7, 0x8183, 1, 0)
    assert labdns.answer(b"\x00" * 5, records) is None


# --------------------------------------------------------------------------- a bridged guest

BRIDGED_GUEST = "198.18.90.7"


@pytest.fixture(scope="module")
def bridged():
    """A second lab whose client bridges a guest onto its physical link (br0 holds eth0 and the guest's
    port, the client's own address moves to br0), as a VM host with bridged networking does."""
    with TunnelLab("nlbr") as net:
        net.add("bguest")
        net.exec("client", "ip", "link", "add", "br0", "type", "bridge")
        net.exec("client", "ip", "addr", "flush", "dev", "eth0")
        net.exec("client", "ip", "link", "set", "eth0", "master", "br0")
        net.exec("client", "ip", "addr", "add", "%s/24" % PHYSICAL[0], "dev", "br0")
        net.exec("client", "ip", "link", "set", "br0", "up")
        net.route("client", "default", "via", "198.18.90.1")
        net.link("bguest", "eth0", ["%s/24" % BRIDGED_GUEST], "client", "vnet0", [])
        net.exec("client", "ip", "link", "set", "vnet0", "master", "br0")
        net.route("bguest", "default", "via", "198.18.90.1")
        net.guest_mac = net.mac("bguest", "eth0")
        yield net


def br_netfilter_loaded(net: TunnelLab) -> bool:
    return net.exec("client", "test", "-e", "/proc/sys/net/bridge/bridge-nf-call-iptables", check=False).returncode == 0


def bridged_guest_leaks(net: TunnelLab, bridge_netfilter: bool) -> List[str]:
    """What the bridged guest put on the physical link with the kill switch in place, after a control (no
    kill switch) that saw each of its probes there."""
    if br_netfilter_loaded(net):
        net.exec("client", "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=%d" % bridge_netfilter,
                 "net.bridge.bridge-nf-call-ip6tables=%d" % bridge_netfilter)
    elif bridge_netfilter:
        pytest.skip("the br_netfilter module is not loaded on this machine (dockerd loads it)")
    rules = ruleset(net)
    net.load(None)
    result, seen = on_the_wire(net, "ether src %s and ip" % net.guest_mac, role="bguest", targets=SINK[:1])
    missing = unseen(result["probes"], seen)
    assert not missing, "the control did not see: %s" % missing
    net.load(rules)
    _result, leaked = on_the_wire(net, "ether src %s and ip" % net.guest_mac, role="bguest", targets=SINK[:1])
    return leaked


@pytest.mark.may_skip_in_ci
def test_a_bridged_guest_is_stopped_where_bridged_traffic_meets_the_inet_hooks(bridged):
    """With br_netfilter's bridge-nf-call-iptables on (Docker turns it on; so does this machine), bridged IPv4
    frames pass the inet forward hook, where the kill switch drops them."""
    leaked = bridged_guest_leaks(bridged, bridge_netfilter=True)
    assert not leaked, "the bridged guest left on the physical link:\n%s" % "\n".join(leaked)


def test_a_bridged_guest_is_stopped_without_br_netfilter(bridged):
    """Without br_netfilter bridged frames never meet the inet hooks: the kill switch's bridge table drops them."""
    leaked = bridged_guest_leaks(bridged, bridge_netfilter=False)
    assert not leaked, "the bridged guest left on the physical link:\n%s" % "\n".join(leaked)


def test_a_bridged_guest_reaches_the_lan_when_allowed_and_nothing_else(bridged):
    """allow_lan: the bridged guest's frames to a LAN address (the router on its link) cross the bridge table,
    its frames to the sink still do not; ARP for the router has to cross too, or nothing would be sent."""
    if br_netfilter_loaded(bridged):
        bridged.exec("client", "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0", "net.bridge.bridge-nf-call-ip6tables=0")
    lan_peer = "198.18.90.1"
    bridged.load(ruleset(bridged, allow_lan=True, lan_cidrs=["198.18.90.0/24"]))
    result, seen = on_the_wire(bridged, "ether src %s and ip" % bridged.guest_mac, role="bguest", targets=[lan_peer, SINK[0]])
    missing = unseen(result["probes"], seen)
    sent = unseen(result["probes"], [])
    to_lan = [probe for probe in sent if lan_peer in probe]
    to_sink = [probe for probe in sent if SINK[0] in probe]
    assert to_lan and to_sink, sent
    assert not [probe for probe in to_lan if probe in missing], "LAN probes dropped: %s" % missing
    assert sorted(probe for probe in missing if SINK[0] in probe) == sorted(to_sink), "reached the wire: %s" % seen
