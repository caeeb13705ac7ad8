# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""module_utils/verify.py without root: the policy's exceptions and the probe addresses, expectations, interfaces
from a fake sysfs, packets, verdicts, and ``verify()`` against scripted commands and a fake prober.

The real probes, in network namespaces with the rendered rulesets loaded, are in test_probe.py.

Here, not under tests/unit/plugins/module_utils (ansible-test's module_utils context, where controller code cannot
be imported), because its policies are the ones the controller's killswitch_policy action returns (``_plain`` of the
parsed policy).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import struct

import pytest

from ansible_collections.netlock.killswitch.plugins.action.killswitch_policy import _plain
from ansible_collections.netlock.killswitch.plugins.module_utils import verify as vf
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy

BASE = dict(killswitch_tunnel_interfaces=["wg0"], killswitch_endpoints=[{"address": "192.0.2.50", "port": 51820}],
            killswitch_management_cidrs=["192.0.2.1/32"])


def policy_of(**variables):
    """``killswitch_policy``'s ``policy`` result for these role variables (without the prefix)."""
    merged = dict(BASE, **{"killswitch_" + k: v for k, v in variables.items()})
    return _plain(parse_policy(merged, resolve=lambda name: []).data())


POLICY = policy_of()
DIGEST = vf.digest_of(POLICY)


# --------------------------------------------------------------------------- the policy

@pytest.mark.parametrize("variables", [
    {}, {"ipv6": "tunnel", "dns_servers": ["10.64.0.1", "fd00::53"], "endpoint_mark": 51820},
    {"allow_lan": True, "extra_outbound": [{"cidr": "203.0.113.0/24", "protocol": "tcp", "port": 443}],
     "tunnel_interfaces": ["tun*", "wg0"], "table": "ks"},
])
def test_digest_of_the_returned_policy_is_the_policys_digest(variables):
    merged = dict(BASE, **{"killswitch_" + k: v for k, v in variables.items()})
    policy = parse_policy(merged, resolve=lambda name: [])
    plain = _plain(policy.data())
    assert vf.digest_of(plain) == policy.digest()
    # the same after a round trip through JSON, as the module receives it
    assert vf.digest_of(json.loads(json.dumps(plain))) == policy.digest()


@pytest.mark.parametrize("bad,message", [
    ("wg0", "give the policy"),
    ({"table": "killswitch"}, "tunnel_interfaces, ipv6 missing"),
    ({"table": "killswitch", "ipv6": "block", "tunnel_interfaces": []}, "not a list of interfaces"),
])
def test_check_policy_refuses_what_is_not_a_policy(bad, message):
    with pytest.raises(vf.VerifyError, match=message):
        vf.check_policy(bad)


def test_exceptions_are_endpoints_extras_and_the_lan_only_when_allowed():
    assert [what for _net, what in vf.exceptions(POLICY)] == ["killswitch_endpoints 192.0.2.50/32 (udp/51820)"]
    policy = policy_of(allow_lan=True, extra_outbound=[{"cidr": "203.0.113.0/24", "protocol": "tcp", "port": 443},
                                                       {"cidr": "198.18.0.1"}])
    found = [what for _net, what in vf.exceptions(policy)]
    assert "killswitch_extra_outbound 203.0.113.0/24 (tcp/443)" in found
    assert "killswitch_extra_outbound 198.18.0.1/32 (any/all)" in found
    assert "killswitch_lan_cidrs 10.0.0.0/8 (killswitch_allow_lan is on)" in found


def test_allowed_by():
    policy = policy_of(allow_lan=True, ipv6="tunnel", lan_cidrs=["10.0.0.0/8", "2001:db8::/32"])
    assert vf.allowed_by(policy, "10.1.2.3") == "killswitch_lan_cidrs 10.0.0.0/8 (killswitch_allow_lan is on)"
    assert vf.allowed_by(policy, "2001:db8:ffff::1").startswith("killswitch_lan_cidrs 2001:db8::/32")
    assert vf.allowed_by(policy, "198.51.100.1") is None
    assert vf.allowed_by(POLICY, "10.1.2.3") is None  # the LAN is no exception without allow_lan


def test_bad_network_in_the_policy_is_named():
    with pytest.raises(vf.VerifyError, match=r"policy.endpoints\[0\].networks: 'nonsense'"):
        vf.exceptions(dict(POLICY, endpoints=[{"networks": ["nonsense"], "protocol": "udp", "port": 1}]))


def test_default_probe_addresses():
    assert vf.pick_probe_addresses(POLICY) == ({4: "198.51.100.1", 6: "2001:db8:ffff::1"}, [])


def test_a_default_the_policy_allows_is_passed_over_and_said():
    policy = policy_of(allow_lan=True, ipv6="tunnel", lan_cidrs=["198.51.100.0/24", "2001:db8::/32"])
    chosen, notes = vf.pick_probe_addresses(policy)
    assert chosen == {4: "203.0.113.1", 6: "3fff:ffff::1"}
    assert notes == ["198.51.100.1 is allowed by the policy (killswitch_lan_cidrs 198.51.100.0/24 (killswitch_allow_lan "
                     "is on)), not probed",
                     "2001:db8:ffff::1 is allowed by the policy (killswitch_lan_cidrs 2001:db8::/32 (killswitch_allow_lan "
                     "is on)), not probed"]


def test_every_default_allowed_asks_for_an_address():
    policy = policy_of(extra_outbound=[{"cidr": "0.0.0.0/1"}, {"cidr": "128.0.0.0/1"}])
    with pytest.raises(vf.VerifyError, match="every default IPv4 probe address .* set probe_addresses"):
        vf.pick_probe_addresses(policy)


def test_given_addresses_are_used_per_family():
    chosen, notes = vf.pick_probe_addresses(POLICY, ["203.0.113.9"])
    assert chosen == {4: "203.0.113.9", 6: "2001:db8:ffff::1"} and notes == []


def test_a_given_address_the_policy_allows_fails_naming_the_exception():
    policy = policy_of(extra_outbound=[{"cidr": "203.0.113.0/24", "protocol": "tcp", "port": 443}])
    with pytest.raises(vf.VerifyError) as info:
        vf.pick_probe_addresses(policy, ["203.0.113.9"])
    assert str(info.value) == ("probe_addresses: 203.0.113.9 is allowed by the policy (killswitch_extra_outbound "
                               "203.0.113.0/24 (tcp/443)): a probe to it proves nothing; give an address the policy "
                               "does not allow")


@pytest.mark.parametrize("given,message", [
    (["nonsense"], "'nonsense' is not an IP address"),
    (["203.0.113.1", "203.0.113.2"], "both IPv4"),
])
def test_bad_probe_addresses(given, message):
    with pytest.raises(vf.VerifyError, match=message):
        vf.pick_probe_addresses(POLICY, given)


def test_tunnel_target_is_the_resolver_for_dns():
    policy = policy_of(dns_servers=["10.64.0.1"])
    assert vf.tunnel_target(policy, 4, "dns", "198.51.100.1") == "10.64.0.1"
    assert vf.tunnel_target(policy, 4, "udp", "198.51.100.1") == "198.51.100.1"
    assert vf.tunnel_target(policy, 6, "dns", "2001:db8:ffff::1") == "2001:db8:ffff::1"
    assert vf.tunnel_target(POLICY, 4, "dns", "198.51.100.1") == "198.51.100.1"


@pytest.mark.parametrize("variables,tunnel,family,protocol,target,expected", [
    ({}, False, 4, "udp", "198.51.100.1", "refused"),
    ({}, False, 6, "tcp", "2001:db8:ffff::1", "refused"),
    ({}, True, 4, "tcp", "198.51.100.1", "passes"),
    ({}, True, 4, "dns", "198.51.100.1", "passes"),            # no resolvers: DNS through the tunnel to anybody
    ({}, True, 6, "udp", "2001:db8:ffff::1", "refused"),        # ipv6: block, through the tunnel too
    ({"ipv6": "tunnel"}, True, 6, "udp", "2001:db8:ffff::1", "passes"),
    ({"dns_servers": ["10.64.0.1"]}, True, 4, "dns", "10.64.0.1", "passes"),
    ({"dns_servers": ["10.64.0.1"]}, True, 6, "dns", "2001:db8:ffff::1", "refused"),  # not a resolver
    ({"dns_servers": ["10.64.0.1"]}, True, 4, "udp", "198.51.100.1", "passes"),
])
def test_expectation(variables, tunnel, family, protocol, target, expected):
    assert vf.expectation(policy_of(**variables), tunnel, family, protocol, target)[0] == expected


# --------------------------------------------------------------------------- interfaces

@pytest.fixture(name="sysfs")
def sysfs_fixture(tmp_path):
    """A fake /sys/class/net: add(name, flags, operstate, master=None)."""
    root = tmp_path / "class-net"
    root.mkdir()

    def add(name, flags="0x1003", operstate="up", master=None):
        directory = root / name
        directory.mkdir()
        (directory / "flags").write_text(flags + "\n")
        (directory / "operstate").write_text(operstate + "\n")
        if master:
            (directory / "master").symlink_to("../" + master)
    add.root = str(root)
    return add


def test_probe_interfaces(sysfs):
    sysfs("lo", "0x9")
    sysfs("eth0")
    sysfs("eth1", "0x1002", "down")                 # administratively down
    sysfs("eth2", "0x1003", "down")                 # up, no carrier: probed all the same
    sysfs("br0")
    sysfs("veth1", master="br0")
    sysfs("wg0", "0x91", "unknown")
    sysfs("tun0", "0x1090", "down")
    found = vf.probe_interfaces(sysfs.root, ["wg0", "tun*", "wg1"])
    assert found == [
        dict(name="br0", tunnel=False, skip=None),
        dict(name="eth0", tunnel=False, skip=None),
        dict(name="eth1", tunnel=False, skip="down"),
        dict(name="eth2", tunnel=False, skip=None),
        dict(name="veth1", tunnel=False, skip="a port of br0, which is probed itself"),
        dict(name="tun0", tunnel=True, skip="down (the kill switch is meant to hold then)"),
        dict(name="wg0", tunnel=True, skip=None),
        dict(name="wg1", tunnel=True, skip="absent (the kill switch is meant to hold then)"),
    ]


def test_probe_interfaces_narrowed(sysfs):
    for name in ("eth0", "eth1", "wlan0", "wg0"):
        sysfs(name)
    found = vf.probe_interfaces(sysfs.root, ["wg0"], ["eth*", "wg0"])
    assert [(i["name"], i["tunnel"]) for i in found] == [("eth0", False), ("eth1", False), ("wg0", True)]
    with pytest.raises(vf.VerifyError, match="interfaces: eth9 is not an interface of this host"):
        vf.probe_interfaces(sysfs.root, ["wg0"], ["eth9"])


# --------------------------------------------------------------------------- packets

def test_checksum():
    # RFC 1071's example words 0001 f203 f4f5 f6f7 sum to ddf2, so the checksum is 220d
    assert vf.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert vf.checksum(b"\x01") == vf.checksum(b"\x01\x00")


@pytest.mark.parametrize("source,target", [("192.0.2.2", "198.51.100.1"), ("2001:db8:1::2", "2001:db8:ffff::1")])
def test_tcp_syn_checksum_verifies(source, target):
    syn = vf.tcp_syn(source, target, 40000, 443, 0x01020304)
    sport, dport, seq, ack, offset, flags = struct.unpack("!HHIIBB", syn[:14])
    assert (sport, dport, seq, ack, offset >> 4, flags) == (40000, 443, 0x01020304, 0, 5, 0x02)
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(target)
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 6, len(syn))
    else:
        pseudo = src.packed + dst.packed + struct.pack("!IBBBB", len(syn), 0, 0, 0, 6)
    assert vf.checksum(pseudo + syn) == 0  # a correct checksum sums to zero with the data


def test_icmp_echo():
    echo = vf.icmp_echo(4, 0x4242, 1)
    assert echo[:1] == b"\x08" and vf.checksum(echo) == 0 and echo.endswith(vf.PAYLOAD)
    echo6 = vf.icmp_echo(6, 0x4242, 1)
    assert echo6[:1] == bytes([128]) and echo6[2:4] == b"\0\0"  # the kernel fills the ICMPv6 checksum in


def test_dns_query():
    query = vf.dns_query(0x1234)
    ident, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", query[:12])
    assert (ident, flags, qd, an, ns, ar) == (0x1234, 0x0100, 1, 0, 0, 0)
    assert query[12:-4] == b"\x19netlock-killswitch-verify\x07invalid\x00"
    assert struct.unpack("!HH", query[-4:]) == (1, 1)
    assert struct.unpack("!HH", vf.dns_query(1, family=6)[-4:]) == (28, 1)


# --------------------------------------------------------------------------- verdicts

@pytest.mark.parametrize("number,outcome", [
    (None, "sent"), (errno.EPERM, "refused"), (errno.EACCES, "refused"), (errno.ENETUNREACH, "unroutable"),
    (errno.EHOSTUNREACH, "unroutable"), (errno.ENODEV, "unroutable"), (errno.ENOBUFS, "sent"),
])
def test_send_outcome(number, outcome):
    assert vf.send_outcome(number) == outcome


def probe(**fields):
    base = dict(interface="eth0", tunnel=False, family=4, protocol="udp", target="198.51.100.1", port=443,
                expected="refused", why="outside the tunnel", outcome="refused", detail="sendto() got EPERM")
    base.update(fields)
    return base


@pytest.mark.parametrize("fields,name", [
    ({}, "eth0 IPv4 UDP to 198.51.100.1:443"),
    ({"protocol": "icmp", "port": None}, "eth0 IPv4 ICMP echo to 198.51.100.1"),
    ({"protocol": "dns", "port": 53, "family": 6, "target": "2001:db8:ffff::1"},
     "eth0 IPv6 DNS query to [2001:db8:ffff::1]:53"),
    ({"protocol": "tcp"}, "eth0 IPv4 TCP to 198.51.100.1:443"),
])
def test_path_name(fields, name):
    assert vf.path_name(probe(**fields)) == name


def test_judge_refused_outside_the_tunnel_is_ok():
    assert vf.judge(probe()) == dict(name="eth0 IPv4 UDP to 198.51.100.1:443", ok=True,
                                     detail="refused by the local firewall: sendto() got EPERM")


def test_judge_sent_outside_the_tunnel_is_an_open_path():
    check = vf.judge(probe(outcome="sent", detail="sendto() succeeded"))
    assert check == dict(name="eth0 IPv4 UDP to 198.51.100.1:443", ok=False,
                         detail="eth0 IPv4 UDP to 198.51.100.1:443 was sent: the kill switch does not block it "
                                "(sendto() succeeded)")
    assert "connected: the kill switch" in vf.judge(probe(protocol="tcp", outcome="connected", detail="x"))["detail"]


def test_judge_unroutable_is_not_probed():
    check = vf.judge(probe(outcome="unroutable", detail="sendto() got ENETUNREACH"))
    assert check["ok"] is True and check["detail"] == "not probed: sendto() got ENETUNREACH"


def test_judge_tunnel():
    passes = dict(tunnel=True, interface="wg0", expected="passes", why="the policy lets it through the tunnel")
    assert vf.judge(probe(outcome="sent", detail="sendto() succeeded", **passes)) == dict(
        name="wg0 IPv4 UDP to 198.51.100.1:443 (tunnel)", ok=True, detail="passed the local firewall: sendto() succeeded")
    refused = vf.judge(probe(**passes))
    assert refused["ok"] is False
    assert refused["detail"] == ("wg0 IPv4 UDP to 198.51.100.1:443 was refused by the local firewall (sendto() got EPERM), "
                                 "but the policy lets it through the tunnel")
    blocked = dict(tunnel=True, interface="wg0", family=6, target="2001:db8:ffff::1",
                   why="killswitch_ipv6: block allows no IPv6, through the tunnel neither")
    assert vf.judge(probe(**blocked))["ok"] is True
    leak = vf.judge(probe(outcome="sent", detail="sendto() succeeded", **blocked))
    assert leak["ok"] is False and leak["detail"].endswith("(sendto() succeeded; killswitch_ipv6: block allows no IPv6, "
                                                           "through the tunnel neither)")


@pytest.mark.parametrize("text,reason", [
    ('{"fence_unavailable": "owned tables refused: Operation not supported"}', "owned tables refused: Operation not supported"),
    ('{"fence_unavailable": null}', None), ("{}", None), ("not json", None), (None, None), ("[1]", None),
])
def test_fence_unavailable(text, reason):
    assert vf.fence_unavailable(text) == reason


LOADED = dict(present=True, digest=DIGEST[:16], matches=True)
MISSING = dict(present=False, digest=None, matches=False)


@pytest.mark.parametrize("found,fence,guard,unavailable,missing_nft,ok,detail", [
    (LOADED, "auto", True, None, False, True, "table inet killswitch_fence (the fence) is loaded with policy digest %s"
     % DIGEST[:16]),
    (None, "off", True, None, False, True, "table inet killswitch_fence (the fence) is not required (fence: off)"),
    (None, "required", False, None, False, True, "table inet killswitch_fence (the fence) is not required (guard off)"),
    (MISSING, "required", True, "old kernel", False, False, "table inet killswitch_fence (the fence) is not loaded "
     "(fence: required)"),
    (MISSING, "auto", True, None, False, False, "table inet killswitch_fence (the fence) is not loaded (fence: auto)"),
    (MISSING, "auto", True, "old kernel", False, True, "table inet killswitch_fence (the fence) is not loaded: the "
     "watcher found that this host cannot hold one (old kernel); fence: auto does without"),
    (dict(present=True, digest="ffffffffffffffff", matches=False), "auto", True, None, False, False,
     "table inet killswitch_fence (the fence) carries policy digest ffffffffffffffff, expected %s" % DIGEST[:16]),
    (None, "auto", True, None, True, True, "table inet killswitch_fence (the fence) cannot be listed: nft is not "
     "installed (fence: auto)"),
    (None, "required", True, None, True, False, "table inet killswitch_fence (the fence) cannot be listed: nft is not "
     "installed (fence: required)"),
])
def test_fence_check(found, fence, guard, unavailable, missing_nft, ok, detail):
    assert vf.fence_check(found, fence, guard, "killswitch_fence", DIGEST, unavailable, missing_nft) == dict(
        name="fence", ok=ok, detail=detail)


# --------------------------------------------------------------------------- verify() with fakes

TABLE = 'table inet killswitch {\n\tcomment "netlock.killswitch %s"\n\tchain output {\n\t}\n}\n'


class Runner:
    """Scripted nft and systemctl; records every command."""

    def __init__(self, table=True, fence=True, enabled=True, active=True, watching=True, digest=DIGEST, bridge=True):
        self.tables = {"killswitch": table, "killswitch_fence": fence}
        self.bridge = bridge
        self.enabled, self.active, self.watching, self.digest = enabled, active, watching, digest
        self.calls = []

    def __call__(self, argv):
        argv = list(argv)
        self.calls.append(argv)
        name = argv[0].rsplit("/", 1)[-1]
        if name == "nft" and argv[1:5] == ["list", "table", "bridge", "killswitch"]:
            if not self.bridge:
                return 1, "", "Error: No such file or directory"
            return 0, (TABLE % self.digest[:16]).replace("inet", "bridge"), ""
        if name == "nft":
            assert argv[1:4] == ["list", "table", "inet"], argv
            if not self.tables.get(argv[4]):
                return 1, "", "Error: No such file or directory"
            return 0, (TABLE % self.digest[:16]).replace("inet killswitch", "inet " + argv[4]), ""
        if name == "iptables-save":
            out = ':killswitch-out - [0:0]\n-A killswitch-out -m comment --comment "netlock.killswitch %s"\n' % (
                self.digest[:16]) if self.tables["killswitch"] else ":OUTPUT ACCEPT [0:0]\n"
            return 0, "*filter\n" + out + "COMMIT\n", ""
        if name == "systemctl" and argv[1] == "is-enabled":
            return (0, "enabled\n", "") if self.enabled else (1, "disabled\n", "")
        if name == "systemctl" and argv[1] == "is-active":
            up = self.watching if argv[2].endswith("-watch.service") else self.active
            return (0, "active\n", "") if up else (3, "inactive\n", "")
        raise AssertionError("unexpected command %r" % argv)


class Prober:
    """Answers like a host: ``outcomes`` maps (interface, family, protocol) to an outcome, default by role."""

    def __init__(self, outside="refused", tunnel="sent", routes=None, outcomes=None):
        self.outside, self.tunnel, self.outcomes = outside, tunnel, outcomes or {}
        self.routes = routes or {}
        self.sent = []

    def route(self, interface, family, target):
        if self.routes.get((interface, family), True):
            return ("192.0.2.2" if family == 4 else "2001:db8:1::2"), None
        return None, errno.ENETUNREACH

    def send(self, interface, family, protocol, target, port):
        self.sent.append((interface, family, protocol, target, port))
        # the policy blocks IPv6 (killswitch_ipv6: block), through the tunnel too
        default = self.tunnel if interface.startswith("wg") and family == 4 else self.outside
        outcome = self.outcomes.get((interface, family, protocol), default)
        number = {"refused": errno.EPERM, "unroutable": errno.ENETUNREACH}.get(outcome)
        return dict(outcome=outcome, errno=number, detail="sendto() %s" % (
            "got %s" % errno.errorcode[number] if number else "succeeded"))


@pytest.fixture(name="host")
def host_fixture(sysfs):
    sysfs("lo", "0x9")
    sysfs("eth0")
    sysfs("wg0", "0x91", "unknown")
    return sysfs.root


def run_verify(host, runner=None, prober=None, **kwargs):
    kwargs.setdefault("policy", POLICY)
    kwargs.setdefault("fence_nft", "/usr/sbin/nft")
    return vf.verify(runner or Runner(), Prober() if prober is None else prober, nft="/usr/sbin/nft",
                     systemctl="/bin/systemctl", sys_class_net=host, read=lambda path: None, **kwargs)


def test_in_force(host):
    prober = Prober()
    result = run_verify(host, prober=prober)
    assert result["ok"] is True, result["msg"]
    assert result["open_paths"] == [] and result["warnings"] == []
    assert result["msg"] == "kill switch in force; refused by the local firewall: eth0 IPv4, eth0 IPv6, wg0 IPv6; passed " \
                            "through the tunnel: wg0 IPv4"
    assert [c["name"] for c in result["checks"][:7]] == ["table", "boot_unit", "guard", "watcher", "fence",
                                                         "bridge_table", "probe_addresses"]
    assert result["probe_addresses"] == {"ipv4": "198.51.100.1", "ipv6": "2001:db8:ffff::1"}
    assert result["digest"] == DIGEST[:16] and result["table"]["matches"] is True
    # four probes per interface and family; IPv6 through the tunnel is refused by a policy that blocks IPv6
    assert len(prober.sent) == 16
    wg6 = [p for p in result["probes"] if p["interface"] == "wg0" and p["family"] == 6]
    assert {p["expected"] for p in wg6} == {"refused"}
    assert all(p["ok"] for p in result["probes"])


def test_an_open_path_fails_naming_it(host):
    prober = Prober(outcomes={("eth0", 4, "udp"): "sent", ("eth0", 6, "tcp"): "connected"})
    result = run_verify(host, prober=prober)
    assert result["ok"] is False
    assert [p["path"] for p in result["open_paths"]] == ["eth0 IPv4 UDP to 198.51.100.1:443",
                                                         "eth0 IPv6 TCP to [2001:db8:ffff::1]:443"]
    assert result["msg"] == ("eth0 IPv4 UDP to 198.51.100.1:443 was sent: the kill switch does not block it (sendto() "
                             "succeeded); eth0 IPv6 TCP to [2001:db8:ffff::1]:443 connected: the kill switch does not "
                             "block it (sendto() succeeded)")


def test_without_the_table_everything_is_named(host):
    result = run_verify(host, runner=Runner(table=False, fence=False, enabled=False, active=False, watching=False),
                        prober=Prober(outside="sent"))
    assert result["ok"] is False
    problems = [c["detail"] for c in result["checks"] if not c["ok"]]
    assert problems[:5] == ["table inet killswitch is not loaded", "netlock-killswitch.service is not enabled",
                            "netlock-killswitch-guard.timer is not active",
                            "netlock-killswitch-watch.service is not active",
                            "table inet killswitch_fence (the fence) is not loaded (fence: auto)"]
    assert len(result["open_paths"]) == 12  # eth0 both families, and IPv6 through the tunnel (ipv6: block)


def test_a_refused_tunnel_fails(host):
    result = run_verify(host, prober=Prober(tunnel="refused"))
    assert result["ok"] is False
    assert result["open_paths"] == []
    assert "wg0 IPv4 UDP to 198.51.100.1:443 was refused by the local firewall (sendto() got EPERM), but the policy " \
           "lets it through the tunnel" in result["msg"]


def test_unroutable_families_are_not_probed(host):
    prober = Prober(routes={("eth0", 6): False, ("wg0", 6): False})
    result = run_verify(host, prober=prober)
    assert result["ok"] is True
    assert {(i, f) for i, f, _p, _t, _port in prober.sent} == {("eth0", 4), ("wg0", 4)}
    assert dict(name="eth0 IPv6", ok=True, detail="not probed: no IPv6 route to 2001:db8:ffff::1 through eth0 "
                "(ENETUNREACH)") in result["checks"]


def test_nothing_outside_the_tunnel_to_probe_is_a_warning(sysfs):
    sysfs("wg0", "0x91", "unknown")
    sysfs("eth0", "0x1002", "down")
    result = run_verify(sysfs.root)
    assert result["ok"] is True
    assert result["warnings"] == ["no interface outside the tunnel could be probed (eth0: down): traffic was not tested"]


def test_traffic_off_sends_nothing(host):
    prober = Prober()
    result = run_verify(host, prober=prober, traffic=False)
    assert result["ok"] is True and prober.sent == [] and result["probes"] == []
    assert result["checks"][-1] == dict(name="traffic", ok=True, detail="not tested (traffic: false)")


def test_wrong_digest(host):
    result = run_verify(host, runner=Runner(digest="f" * 64))
    assert result["ok"] is False
    assert result["msg"].startswith("table inet killswitch carries policy digest ffffffffffffffff, expected %s"
                                    % DIGEST[:16])


def test_given_digest_wins(host):
    result = run_verify(host, runner=Runner(digest="a" * 64), digest="a" * 64)
    assert result["ok"] is True and result["digest"] == "a" * 16


def test_fence_auto_unavailable_reads_the_guard_state(host, tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"fence_unavailable": "owned tables refused"}))
    result = vf.verify(Runner(fence=False), Prober(), nft="nft", systemctl="systemctl", policy=POLICY, fence_nft="nft",
                       guard_state_path=str(state), sys_class_net=host)
    assert result["ok"] is True
    assert "cannot hold one (owned tables refused)" in next(c for c in result["checks"] if c["name"] == "fence")["detail"]


def test_guard_off_needs_no_timer_watcher_or_fence(host):
    result = run_verify(host, runner=Runner(fence=False, active=False, watching=False), guard=False)
    assert result["ok"] is True


def test_iptables_backend(host):
    runner = Runner()
    result = vf.verify(runner, Prober(), nft="/usr/sbin/iptables-save", systemctl="systemctl", policy=POLICY,
                       fence_nft="/usr/sbin/nft", backend="iptables", sys_class_net=host, read=lambda path: None)
    assert result["ok"] is True
    assert result["checks"][0]["detail"] == "iptables chain killswitch-out is loaded with policy digest %s" % DIGEST[:16]
    assert ["/usr/sbin/nft", "list", "table", "inet", "killswitch_fence"] in runner.calls


def test_read_only(host):
    runner = Runner()
    run_verify(host, runner=runner)
    for argv in runner.calls:
        name = argv[0].rsplit("/", 1)[-1]
        assert (name == "nft" and argv[1] == "list") or (name == "systemctl" and argv[1] in ("is-enabled", "is-active"))


def test_a_policy_that_allows_the_probe_address_fails_before_anything_runs(host):
    runner, prober = Runner(), Prober()
    policy = policy_of(extra_outbound=[{"cidr": "203.0.113.0/24"}])
    with pytest.raises(vf.VerifyError, match="203.0.113.5 is allowed by the policy"):
        run_verify(host, runner=runner, prober=prober, policy=policy, probe_addresses=["203.0.113.5"])
    assert runner.calls == [] and prober.sent == []


def test_a_carrier_tunnel_is_probed_as_outside_the_tunnel(host, sysfs):
    """Double VPN: the interface an endpoint is ``via`` is no exit, so its probes are expected refused."""
    sysfs("wgo", "0x91", "unknown")
    policy = policy_of(tunnel_interfaces=["wg0", "wgo"],
                       endpoints=[{"address": "192.0.2.50", "port": 51820},
                                  {"address": "192.0.2.60", "port": 51821, "via": "wgo"}])
    refused = {("wgo", family, protocol): "refused" for family in (4, 6) for protocol in vf.PROTOCOLS}
    result = run_verify(host, runner=Runner(digest=vf.digest_of(policy)), prober=Prober(outcomes=refused), policy=policy)
    assert result["ok"] is True, result["msg"]
    carried = [p for p in result["probes"] if p["interface"] == "wgo"]
    assert carried and {(p["tunnel"], p["expected"]) for p in carried} == {(False, "refused")}
    opened = Prober(outcomes={**refused, ("wgo", 4, "udp"): "sent"})
    result = run_verify(host, runner=Runner(digest=vf.digest_of(policy)), prober=opened, policy=policy)
    assert [p["path"] for p in result["open_paths"]] == ["wgo IPv4 UDP to 198.51.100.1:443"]


def test_a_missing_bridge_table_fails_the_verify(host):
    result = run_verify(host, runner=Runner(bridge=False))
    assert result["ok"] is False
    check = [c for c in result["checks"] if c["name"] == "bridge_table"][0]
    assert check == {"name": "bridge_table", "ok": False,
                     "detail": "table bridge killswitch is not loaded: bridged guests are not stopped"}


@pytest.mark.parametrize("present,ok", [(False, True), (True, False)])
def test_with_forward_off_no_bridge_table_is_expected(host, present, ok):
    policy = policy_of(forward="off")
    runner = Runner(bridge=present, digest=vf.digest_of(policy))
    check = [c for c in run_verify(host, runner=runner, policy=policy)["checks"] if c["name"] == "bridge_table"][0]
    assert check["ok"] is ok, check


def test_bridge_table_of_another_policy():
    found = {"present": True, "digest": "0" * 16, "matches": False}
    assert vf.bridge_table_check(found, "tunnel", "ks", DIGEST)["detail"] == \
        "table bridge ks carries policy digest %s, expected %s" % ("0" * 16, DIGEST[:16])
