# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""parse_policy: role variables in, one validated and normalized Policy out.

The policy is backend-neutral: what a Linux firewall cannot express (interface names, loopback, table words,
owners) is refused by ``backends.render_for``, checked here where the neutral parser lets a value through.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ansible_collections.netlock.killswitch.plugins.plugin_utils.backends import render_for
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import (
    BACKENDS,
    DEFAULT_LAN_CIDRS,
    DEFAULTS,
    PREFIX,
    AddressRule,
    Owner,
    Policy,
    PolicyError,
    Problem,
    collapse,
    is_hostname,
    parse_policy,
    validate_settings,
)

N = ipaddress.ip_network
A = ipaddress.ip_address

BASE = {
    "killswitch_tunnel_interfaces": ["wg0"],
    "killswitch_endpoints": [{"address": "198.51.100.7", "port": 51820}],
}


def variables(**overrides):
    """BASE with ``killswitch_<name>`` overrides (a value of ... removes the variable)."""
    result = dict(BASE)
    for name, value in overrides.items():
        key = "killswitch_" + name
        if value is ...:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def parse(resolve=None, **overrides):
    return parse_policy(variables(**overrides), resolve=resolve)


def rejected(resolve=None, **overrides):
    with pytest.raises(PolicyError) as info:
        parse(resolve=resolve, **overrides)
    return info.value


def assert_problem(error, variable, value, reason=None):
    """The error names the variable (with its index) and shows the bad value."""
    message = str(error)
    matching = [p for p in error.problems if p.variable == variable]
    assert matching, "no problem for %s in: %s" % (variable, message)
    assert any(p.value == value or (p.value is value) for p in matching), (variable, value, matching)
    line = [line for line in message.splitlines() if line.strip().startswith(variable + ":")]
    assert line, "the message does not name %s: %s" % (variable, message)
    assert any(repr(value) in text for text in line), "the message does not show %r: %s" % (value, message)
    if reason:
        assert any(reason in p.reason for p in matching), (reason, matching)


def never_resolve(name):
    raise AssertionError("the resolver must not be called for %r" % name)


LINUX_BACKENDS = ("nftables", "iptables")


def refused_by_linux(policy, variable, value, reason):
    """Every Linux backend refuses the policy, naming the variable, the value, the host and itself."""
    for backend in LINUX_BACKENDS:
        with pytest.raises(PolicyError) as info:
            render_for(policy, backend, "host7.example")
        assert_problem(info.value, variable, value, reason)
        line = [p for p in info.value.problems if p.variable == variable and p.value == value][0]
        assert "host7.example" in line.reason and backend in line.reason, line


# --------------------------------------------------------------------------- defaults


def test_defaults_match_the_contract():
    policy = parse()
    assert isinstance(policy, Policy)
    assert policy.tunnel_interfaces == ("wg0",)
    assert policy.endpoints == (AddressRule((N("198.51.100.7/32"),), "udp", 51820),)
    assert policy.endpoint_mark is None
    assert policy.endpoint_user is None
    assert policy.allow_lan is False
    assert policy.lan_networks == (
        N("10.0.0.0/8"), N("169.254.0.0/16"), N("172.16.0.0/12"), N("192.168.0.0/16"),
        N("fc00::/7"), N("fe80::/10"),
    )
    assert set(policy.lan_networks) == {N(c) for c in DEFAULT_LAN_CIDRS}
    assert policy.management_networks == ()
    assert policy.management_ports == (22,)
    assert policy.dns_servers == ()
    assert policy.allow_dhcp is True
    assert policy.ipv6 == "block"
    assert policy.forward == "tunnel"
    assert policy.extra_outbound == ()
    assert policy.log_drops is False
    assert policy.table == "killswitch"
    assert policy.endpoint_owner == Owner() and policy.endpoint_owner.kinds() == ()
    assert policy.warnings == ()


def test_null_values_take_the_defaults():
    """YAML ``~`` for an optional variable means "use the default"."""
    nulls = {name: None for name in (
        "endpoint_mark", "endpoint_user", "endpoint_program", "allow_lan", "lan_cidrs", "management_cidrs",
        "management_ports", "dns_servers", "allow_dhcp", "ipv6", "forward", "extra_outbound", "log_drops", "state",
        "safe_apply_timeout", "guard_enabled", "guard_interval", "backend", "table", "allow_lockout")}
    assert parse(**nulls) == parse()


def test_the_defaults_spelled_out_change_nothing():
    """DEFAULTS is what a missing variable means: writing every default out gives the same policy."""
    spelled = {PREFIX + name: value for name, value in DEFAULTS.items() if value is not None}
    spelled.update(BASE)
    assert parse_policy(spelled) == parse()
    assert set(DEFAULTS) >= {"backend", "endpoint_program", "tunnel_interfaces", "endpoints", "table"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_choices(backend):
    assert parse(backend=backend) == parse()


@pytest.mark.parametrize("backend", ["pf", "NFTABLES", "nft", "", True, ["nftables"]])
def test_bad_backend(backend):
    assert_problem(rejected(backend=backend), "killswitch_backend", backend, "is not one of auto, nftables, iptables")


@pytest.mark.parametrize("program", ["/usr/bin/wireguard-go", "/opt/VPN client/bin/vpn",
                                     "C:\\Program Files\\WireGuard\\wireguard.exe", "/"])
def test_endpoint_program_is_an_owner(program):
    policy = parse(endpoint_program=program, endpoint_mark=7)
    assert policy.endpoint_owner == Owner(mark=7, program=program)
    assert policy.endpoint_owner.kinds() == ("mark", "program")
    assert policy != parse(endpoint_mark=7) and policy.digest() != parse(endpoint_mark=7).digest()


@pytest.mark.parametrize("program", ["wireguard", "bin/wg", "", "/usr/bin/wg\n", '/usr/bin/"wg"', "C:relative",
                                     7, True, ["/usr/bin/wg"], "/" + "a" * 4096])
def test_bad_endpoint_program(program):
    assert_problem(rejected(endpoint_program=program), "killswitch_endpoint_program", program,
                   "is not an absolute program path")


def test_policy_is_frozen():
    policy = parse()
    with pytest.raises(Exception):
        policy.allow_lan = True  # type: ignore[misc]


def test_non_prefixed_variables_are_ignored():
    """Only ``killswitch_*`` variables shape the policy (a plain ``ipv6`` is someone else's)."""
    extra = dict(BASE, ipv6="tunnel", allow_lan=True, tunnel_interfaces=["eth0"])
    assert parse_policy(extra) == parse()


# --------------------------------------------------------------------------- normalization


def test_tunnel_interfaces_deduplicated_and_sorted():
    policy = parse(tunnel_interfaces=["wg1", "wg0", "tun*", "wg0", "wg1"])
    assert policy.tunnel_interfaces == ("tun*", "wg0", "wg1")


@pytest.mark.parametrize("name", ["wg0", "tun*", "a", "abcdefghijklmno", "wg.vpn", "wg-a_b", "veth@1", "x+y",
                                  "abcdefghijklmn*"])
def test_valid_interface_names(name):
    policy = parse(tunnel_interfaces=[name])
    assert policy.tunnel_interfaces == (name,)
    for backend in LINUX_BACKENDS:
        render_for(policy, backend)


def test_lan_cidrs_deduplicated_sorted_collapsed():
    policy = parse(lan_cidrs=[
        "192.168.1.0/24", "10.0.0.0/8", "10.20.0.0/16", "192.168.0.0/24", "fe80::/10",
        "10.0.0.0/8", " 172.16.0.0/12 ", "fe80::1/64",
    ])
    # overlaps merged into the wider range, adjacent ranges into one, duplicates gone
    assert policy.lan_networks == (N("10.0.0.0/8"), N("172.16.0.0/12"), N("192.168.0.0/23"), N("fe80::/10"))


def test_host_bits_are_cleared():
    assert parse(lan_cidrs=["10.1.2.3/8", "2001:db8::1/32"]).lan_networks == (N("10.0.0.0/8"), N("2001:db8::/32"))


def test_ipv4_listed_before_ipv6_whatever_the_input_order():
    policy = parse(ipv6="tunnel", lan_cidrs=["fc00::/7", "10.0.0.0/8", "fe80::/10", "192.168.0.0/16"],
                   management_cidrs=["2001:db8::5", "192.0.2.5"],
                   dns_servers=["2001:db8::53", "10.8.0.1"])
    assert [n.version for n in policy.lan_networks] == [4, 4, 6, 6]
    assert policy.lan_networks == (N("10.0.0.0/8"), N("192.168.0.0/16"), N("fc00::/7"), N("fe80::/10"))
    assert policy.management_networks == (N("192.0.2.5/32"), N("2001:db8::5/128"))
    assert policy.dns_servers == (A("10.8.0.1"), A("2001:db8::53"))


def test_collapse_keeps_families_apart_and_v4_first():
    assert collapse([N("fe80::/10"), N("10.0.0.0/9"), N("10.128.0.0/9"), N("fe80::/64")]) == (
        N("10.0.0.0/8"), N("fe80::/10"))


def test_endpoints_grouped_by_protocol_and_port():
    policy = parse(ipv6="tunnel", endpoints=[
        {"address": "198.51.100.7", "port": 51820},
        {"address": "203.0.113.5", "port": 443, "protocol": "tcp"},
        {"address": "198.51.100.8", "port": 51820, "protocol": "udp"},
        {"address": "2001:db8::7", "port": 51820},
        {"address": "198.51.100.7", "port": "51820"},  # duplicate, port as a string
        {"address": "198.51.100.9", "port": 1194, "protocol": "udp"},
        {"address": "203.0.113.0/25", "port": 443, "protocol": "tcp"},
    ])
    assert policy.endpoints == (
        AddressRule((N("203.0.113.0/25"),), "tcp", 443),
        AddressRule((N("198.51.100.9/32"),), "udp", 1194),
        AddressRule((N("198.51.100.7/32"), N("198.51.100.8/32"), N("2001:db8::7/128")), "udp", 51820),
    )


def test_endpoint_protocol_defaults_to_udp():
    assert parse(endpoints=[{"address": "198.51.100.7", "port": 1}]).endpoints[0].protocol == "udp"


def test_endpoint_cidr_accepted():
    assert parse(endpoints=[{"address": "198.51.100.0/28", "port": 1}]).endpoints[0].networks == (N("198.51.100.0/28"),)


def test_management_ports_deduplicated_sorted():
    assert parse(management_ports=[2222, 22, "22", 443]).management_ports == (22, 443, 2222)


def test_empty_management_ports_allowed():
    assert parse(management_ports=[]).management_ports == ()


def test_dns_servers_deduplicated_and_sorted_numerically():
    policy = parse(ipv6="tunnel", dns_servers=["10.8.0.10", "2001:db8::53", "10.8.0.9", "10.8.0.10", "9.9.9.9"])
    assert policy.dns_servers == (A("9.9.9.9"), A("10.8.0.9"), A("10.8.0.10"), A("2001:db8::53"))


def test_extra_outbound_grouped_and_defaults_to_any_protocol():
    policy = parse(extra_outbound=[
        {"cidr": "203.0.113.10"},
        {"cidr": "203.0.113.0/24", "protocol": "tcp", "port": 443},
        {"cidr": "198.51.100.0/24", "protocol": "tcp", "port": 443},
        {"cidr": "203.0.113.11", "protocol": "any"},
        {"cidr": "192.0.2.1", "protocol": "icmp"},
        {"cidr": "192.0.2.2", "protocol": "udp"},
        {"cidr": "192.0.2.3", "protocol": "tcp", "port": 25},
    ])
    assert policy.extra_outbound == (
        AddressRule((N("203.0.113.10/31"),), "any", None),
        AddressRule((N("192.0.2.1/32"),), "icmp", None),
        AddressRule((N("192.0.2.3/32"),), "tcp", 25),
        AddressRule((N("198.51.100.0/24"), N("203.0.113.0/24")), "tcp", 443),
        AddressRule((N("192.0.2.2/32"),), "udp", None),
    )


def test_endpoint_mark_and_user_normalized():
    policy = parse(endpoint_mark="51820", endpoint_user=1000)
    assert policy.endpoint_mark == 51820
    assert policy.endpoint_user == "1000"
    assert parse(endpoint_user="wg-client").endpoint_user == "wg-client"
    assert parse(endpoint_mark=0xFFFFFFFF).endpoint_mark == 0xFFFFFFFF
    assert parse(endpoint_user="0").endpoint_user == "0"


def test_input_order_does_not_change_the_policy():
    one = parse(ipv6="tunnel", tunnel_interfaces=["wg0", "tun*"], lan_cidrs=["10.0.0.0/8", "fc00::/7"],
                endpoints=[{"address": "198.51.100.7", "port": 1}, {"address": "2001:db8::1", "port": 1}],
                management_ports=[22, 2222], dns_servers=["10.8.0.1", "10.8.0.2"])
    two = parse(ipv6="tunnel", tunnel_interfaces=["tun*", "wg0", "wg0"], lan_cidrs=["fc00::/7", "10.0.0.0/8"],
                endpoints=[{"address": "2001:db8::1", "port": 1}, {"address": "198.51.100.7", "port": 1}],
                management_ports=[2222, 22], dns_servers=["10.8.0.2", "10.8.0.1"])
    assert one == two
    assert one.digest() == two.digest()


def test_is_hostname():
    assert is_hostname("vpn.example.com")
    assert is_hostname("vpn.example.com.")
    assert is_hostname("localhost")
    assert not is_hostname("198.51.100.7")
    assert not is_hostname("300.1.2.3")
    assert not is_hostname("2001:db8::1")
    assert not is_hostname("-bad.example.com")
    assert not is_hostname("bad_label.example.com")
    assert not is_hostname("a" * 64 + ".example.com")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("variable,overrides,value", [
    # invalid IP or CIDR, wherever one is expected
    ("killswitch_endpoints[0].address", {"endpoints": [{"address": "300.1.2.3", "port": 1}]}, "300.1.2.3"),
    ("killswitch_endpoints[0].address", {"endpoints": [{"address": "198.51.100.0/33", "port": 1}]}, "198.51.100.0/33"),
    ("killswitch_endpoints[0].address", {"endpoints": [{"address": "2001:db8:::1", "port": 1}]}, "2001:db8:::1"),
    ("killswitch_endpoints[0].address", {"endpoints": [{"port": 1}]}, None),
    ("killswitch_endpoints[0].address", {"endpoints": [{"address": 12, "port": 1}]}, 12),
    ("killswitch_endpoints[1].address",
     {"endpoints": [{"address": "198.51.100.7", "port": 1}, {"address": "1.2.3.4/x", "port": 1}]}, "1.2.3.4/x"),
    ("killswitch_lan_cidrs[1]", {"lan_cidrs": ["10.0.0.0/8", "10.0.0.0/40"]}, "10.0.0.0/40"),
    ("killswitch_lan_cidrs[0]", {"lan_cidrs": ["192.168.1"]}, "192.168.1"),
    ("killswitch_management_cidrs[0]", {"management_cidrs": ["not a cidr"]}, "not a cidr"),
    ("killswitch_management_cidrs[2]", {"management_cidrs": ["192.0.2.1", "192.0.2.2", "192.0.2.256"]}, "192.0.2.256"),
    ("killswitch_dns_servers[0]", {"dns_servers": ["1.2.3"]}, "1.2.3"),
    ("killswitch_dns_servers[1]", {"dns_servers": ["10.8.0.1", "10.8.0.0/24"]}, "10.8.0.0/24"),
    # a non-string resolver is reported, never silently dropped
    ("killswitch_dns_servers[0]", {"dns_servers": [53]}, 53),
    ("killswitch_dns_servers[1]", {"dns_servers": ["10.8.0.1", {"ip": "10.8.0.2"}]}, {"ip": "10.8.0.2"}),
    # scoped IPv6 (a %zone) wherever an address or CIDR is expected
    ("killswitch_dns_servers[0]", {"ipv6": "tunnel", "dns_servers": ["fe80::1%eth0"]}, "fe80::1%eth0"),
    ("killswitch_lan_cidrs[0]", {"ipv6": "tunnel", "lan_cidrs": ["fe80::%eth0/64"]}, "fe80::%eth0/64"),
    ("killswitch_management_cidrs[0]", {"ipv6": "tunnel", "management_cidrs": ["fe80::1%2"]}, "fe80::1%2"),
    ("killswitch_endpoints[0].address", {"ipv6": "tunnel", "endpoints": [{"address": "fe80::1%eth0", "port": 1}]},
     "fe80::1%eth0"),
    ("killswitch_extra_outbound[0].cidr", {"ipv6": "tunnel", "extra_outbound": [{"cidr": "fe80::1%eth0/128"}]},
     "fe80::1%eth0/128"),
    ("killswitch_extra_outbound[0].cidr", {"extra_outbound": [{"cidr": "999.0.0.0/8"}]}, "999.0.0.0/8"),
    ("killswitch_extra_outbound[0].cidr", {"extra_outbound": [{"protocol": "tcp"}]}, None),
])
def test_invalid_address_or_cidr(variable, overrides, value):
    assert_problem(rejected(**overrides), variable, value, "is not an IP address")


# (input, value the message shows, reason): a numeric string is converted before the range check.
PORT_CASES = [(0, 0, "out of range"), (65536, 65536, "out of range"), ("abc", "abc", "not an integer"),
              (-1, -1, "out of range"), ("0", 0, "out of range"), ("65536", 65536, "out of range"),
              ("-1", "-1", "not an integer"), (1.5, 1.5, "not an integer"), (True, True, "not an integer"),
              ([22], [22], "not an integer"), ("", "", "not an integer"), (10 ** 6, 10 ** 6, "out of range"),
              ("\u00b2", "\u00b2", "not an integer"), ("\u0663", "\u0663", "not an integer")]


@pytest.mark.parametrize("port,shown,reason", PORT_CASES)
def test_endpoint_port_out_of_range(port, shown, reason):
    error = rejected(endpoints=[{"address": "198.51.100.7", "port": 51820},
                                {"address": "198.51.100.8", "port": port}])
    assert_problem(error, "killswitch_endpoints[1].port", shown, reason)


def test_endpoint_port_missing():
    assert_problem(rejected(endpoints=[{"address": "198.51.100.7"}]), "killswitch_endpoints[0].port", None)


@pytest.mark.parametrize("port,shown,reason", PORT_CASES)
def test_management_port_out_of_range(port, shown, reason):
    assert_problem(rejected(management_ports=[22, port]), "killswitch_management_ports[1]", shown, reason)


@pytest.mark.parametrize("port,shown,reason", PORT_CASES)
def test_extra_outbound_port_out_of_range(port, shown, reason):
    error = rejected(extra_outbound=[{"cidr": "192.0.2.1", "protocol": "tcp", "port": port}])
    assert_problem(error, "killswitch_extra_outbound[0].port", shown, reason)


def test_boundary_ports_accepted():
    policy = parse(endpoints=[{"address": "198.51.100.7", "port": 1}, {"address": "198.51.100.8", "port": 65535}],
                   management_ports=[1, 65535])
    assert [r.port for r in policy.endpoints] == [1, 65535]
    assert policy.management_ports == (1, 65535)


@pytest.mark.parametrize("protocol", ["icmp", "sctp", "UDP", "any", "", 17])
def test_endpoint_unknown_protocol(protocol):
    entry = {"address": "198.51.100.7", "port": 1, "protocol": protocol}
    assert_problem(rejected(endpoints=[entry]), "killswitch_endpoints[0].protocol", protocol, "is not one of udp, tcp")


def test_null_protocol_takes_the_default():
    """YAML ``protocol: ~`` means the default: udp for an endpoint, any for an explicit exception."""
    policy = parse(endpoints=[{"address": "198.51.100.7", "port": 1, "protocol": None}],
                   extra_outbound=[{"cidr": "192.0.2.1", "protocol": None}])
    assert policy.endpoints == (AddressRule((N("198.51.100.7/32"),), "udp", 1),)
    assert policy.extra_outbound == (AddressRule((N("192.0.2.1/32"),), "any", None),)
    assert policy == parse(endpoints=[{"address": "198.51.100.7", "port": 1}], extra_outbound=[{"cidr": "192.0.2.1"}])


def test_null_protocol_with_a_port_is_any_and_refused():
    error = rejected(extra_outbound=[{"cidr": "192.0.2.1", "protocol": None, "port": 80}])
    assert_problem(error, "killswitch_extra_outbound[0].port", 80, "needs protocol tcp or udp")


@pytest.mark.parametrize("protocol", ["gre", "TCP", "esp", 6, ""])
def test_extra_outbound_unknown_protocol(protocol):
    error = rejected(extra_outbound=[{"cidr": "192.0.2.1", "protocol": protocol}])
    assert_problem(error, "killswitch_extra_outbound[0].protocol", protocol, "is not one of")


@pytest.mark.parametrize("protocol", ["any", "icmp"])
def test_extra_outbound_port_needs_tcp_or_udp(protocol):
    error = rejected(extra_outbound=[{"cidr": "192.0.2.1", "protocol": protocol, "port": 80}])
    assert_problem(error, "killswitch_extra_outbound[0].port", 80, "needs protocol tcp or udp")


@pytest.mark.parametrize("value", [[], ..., None])
def test_empty_tunnel_list(value):
    error = rejected(tunnel_interfaces=value)
    assert_problem(error, "killswitch_tunnel_interfaces", [], "must not be empty")


@pytest.mark.parametrize("value", [[], ..., None])
def test_empty_endpoint_list(value):
    assert_problem(rejected(endpoints=value), "killswitch_endpoints", [], "must not be empty")


@pytest.mark.parametrize("value", ["wg0", {"wg0": 1}, 5, b"wg0"])
def test_tunnel_interfaces_not_a_list(value):
    assert_problem(rejected(tunnel_interfaces=value), "killswitch_tunnel_interfaces", value, "is not a list")


@pytest.mark.parametrize("variable,value", [
    ("endpoints", "198.51.100.7"), ("lan_cidrs", "10.0.0.0/8"), ("management_cidrs", "192.0.2.1"),
    ("management_ports", 22), ("dns_servers", "10.8.0.1"), ("extra_outbound", {"cidr": "192.0.2.1"}),
])
def test_list_variables_refuse_scalars(variable, value):
    assert_problem(rejected(**{variable: value}), "killswitch_" + variable, value, "is not a list")


@pytest.mark.parametrize("name", ["abcdefghijklmnop", "wireguard-tunnel0", "a" * 40, "abcdefghijklmnop*",
                                  "abcdefghijklmno*"])
def test_interface_name_too_long_for_linux(name):
    """The kernel (and nft, and iptables) limit the whole name, a trailing '*' included, to 15 characters: the
    neutral parser lets such a name through, the Linux backends refuse it."""
    policy = parse(tunnel_interfaces=["wg0", name])
    refused_by_linux(policy, "killswitch_tunnel_interfaces", name, "at most 15 characters")


def test_interface_name_longest_alias():
    assert parse(tunnel_interfaces=["a" * 256]).tunnel_interfaces == ("a" * 256,)
    assert_problem(rejected(tunnel_interfaces=["wg0", "a" * 257]), "killswitch_tunnel_interfaces[1]", "a" * 257,
                   "is not an interface name")


# No interface name on any system: quotes, shell and nft metacharacters, control characters, blanks around it,
# only wildcards and dots, non-strings.
ILLEGAL_NAMES = ['wg"0', "wg0;", "**", "*.*", "", ".", "..", ".*", "wg0 ", " wg0", "wg\t0", "wg$0",
                 "tun\\0", "wg0'", "wg0`", "wg0|x", "a&b", "<wg0>", 0, None, ["wg0"], {"name": "wg0"}]
# Names of other systems (aliases with blanks, ':' labels, Unicode, Windows' '*' anywhere): accepted by the parser,
# refused on Linux.
NOT_LINUX_NAMES = ["wg 0", "eth0:1", "wg/0", "wg0}", "{", "wg0#", "é0", "Wintun Userspace Tunnel", "Ethernet 2",
                   "wg0,wg1", "w*g", "wg0**", "*VPN*"]


@pytest.mark.parametrize("name", ILLEGAL_NAMES)
def test_interface_name_illegal_characters(name):
    error = rejected(tunnel_interfaces=["wg0", name])
    assert_problem(error, "killswitch_tunnel_interfaces[1]", name, "is not an interface name")


@pytest.mark.parametrize("name", NOT_LINUX_NAMES)
def test_interface_names_of_other_systems_refused_on_linux(name):
    policy = parse(tunnel_interfaces=["wg0", name])
    assert name in policy.tunnel_interfaces
    refused_by_linux(policy, "killswitch_tunnel_interfaces", name, "is not a Linux interface name")


def test_wildcard_of_fifteen_characters_accepted():
    assert parse(tunnel_interfaces=["abcdefghijklmn*"]).tunnel_interfaces == ("abcdefghijklmn*",)


def test_interface_name_with_trailing_newline_refused():
    """The whole name must match: a trailing newline is not a valid interface name."""
    assert_problem(rejected(tunnel_interfaces=["wg0\n"]), "killswitch_tunnel_interfaces[0]", "wg0\n")


def test_bare_wildcard_refused():
    """``*`` alone would make every interface a "tunnel": the kill switch would be off."""
    error = rejected(tunnel_interfaces=["*"])
    assert_problem(error, "killswitch_tunnel_interfaces[0]", "*", "is not an interface name")


@pytest.mark.parametrize("name", ["lo", "lo*", "l*"])
def test_loopback_refused(name):
    """``lo``, and any wildcard that matches it, would count loopback as a tunnel (on Linux)."""
    refused_by_linux(parse(tunnel_interfaces=["wg0", name]), "killswitch_tunnel_interfaces", name, "loopback")


def test_the_backend_names_each_bad_interface_once():
    """The policy holds the names sorted: the problem names the variable and shows the name, never an index
    into the sorted list (which would point at another entry than the one the user wrote)."""
    policy = parse(tunnel_interfaces=["wg0", "zz:1", "lo", "wg1", "Wintun Userspace Tunnel"])
    with pytest.raises(PolicyError) as info:
        render_for(policy, "nftables", "h1")
    assert sorted((p.variable, p.value) for p in info.value.problems) == [
        ("killswitch_tunnel_interfaces", "Wintun Userspace Tunnel"), ("killswitch_tunnel_interfaces", "lo"),
        ("killswitch_tunnel_interfaces", "zz:1")]


def test_unresolvable_hostname():
    def resolver(name):
        raise LookupError("Name or service not known")

    error = rejected(resolve=resolver, endpoints=[{"address": "vpn.example.invalid", "port": 51820}])
    assert_problem(error, "killswitch_endpoints[0].address", "vpn.example.invalid", "does not resolve")
    assert "Name or service not known" in str(error)


@pytest.mark.parametrize("answers", [[], ["not-an-address"], None])
def test_resolver_returning_nothing_usable(answers):
    error = rejected(resolve=lambda name: answers, endpoints=[{"address": "vpn.example.com", "port": 51820}])
    assert_problem(error, "killswitch_endpoints[0].address", "vpn.example.com")


def test_hostname_without_resolver():
    error = rejected(endpoints=[{"address": "vpn.example.com", "port": 51820}])
    assert_problem(error, "killswitch_endpoints[0].address", "vpn.example.com", "no resolver")


def test_ipv6_endpoint_with_ipv6_block():
    error = rejected(endpoints=[{"address": "2001:db8::7", "port": 51820}])
    assert_problem(error, "killswitch_endpoints[0].address", "2001:db8::7", "killswitch_ipv6 is 'block'")
    assert parse(ipv6="tunnel", endpoints=[{"address": "2001:db8::7", "port": 51820}]).endpoints


def test_ipv6_extra_outbound_with_ipv6_block():
    error = rejected(extra_outbound=[{"cidr": "2001:db8::/32"}])
    assert_problem(error, "killswitch_extra_outbound[0].cidr", "2001:db8::/32", "killswitch_ipv6 is 'block'")


@pytest.mark.parametrize("ipv6,address", [
    ("block", "0.0.0.0/0"), ("tunnel", "0.0.0.0/0"), ("tunnel", "::/0"), ("block", " 0.0.0.0/0 "), ("tunnel", "192.0.2.1/0"),
])
def test_endpoint_matching_every_address_refused(ipv6, address):
    """An endpoint of prefix length 0 would let the VPN port out to anywhere, outside the tunnel."""
    error = rejected(ipv6=ipv6, endpoints=[{"address": "198.51.100.7", "port": 1}, {"address": address, "port": 1}])
    assert_problem(error, "killswitch_endpoints[1].address", address, "matches every address")
    assert len(error.problems) == 1


def test_short_endpoint_prefix_still_accepted():
    assert parse(endpoints=[{"address": "0.0.0.0/1", "port": 1}]).endpoints[0].networks == (N("0.0.0.0/1"),)


def test_hostname_resolving_only_to_ipv6_with_ipv6_block():
    error = rejected(resolve=lambda name: ["2001:db8::7"], endpoints=[{"address": "vpn.example.com", "port": 1}])
    assert_problem(error, "killswitch_endpoints[0].address", "vpn.example.com", "no usable address")


@pytest.mark.parametrize("mark,reason", [(0, "out of range"), (-1, "out of range"), ("-1", "not an integer"), (2 ** 32, "out of range"),
                                         ("abc", "not an integer"), (True, "not an integer"),
                                         (1.5, "not an integer"), ("0x10", "not an integer"), ([1], "not an integer")])
def test_bad_endpoint_mark(mark, reason):
    assert_problem(rejected(endpoint_mark=mark), "killswitch_endpoint_mark", mark, reason)


@pytest.mark.parametrize("user", ["Root", "bad user", "-x", "wg;client", "a" * 33, -1, True, False, 1.5, ["root"],
                                  {"name": "root"}, 2 ** 32, 2 ** 32 - 1, "", "nobody\n"])
def test_bad_endpoint_user(user):
    assert_problem(rejected(endpoint_user=user), "killswitch_endpoint_user", user, "is not a user name or uid")


@pytest.mark.parametrize("user", ["4294967295", "99999999999", "\u00b2", "\u0663", "-1", "1e3"])
def test_bad_endpoint_uid_string(user):
    """A uid string is ASCII digits below 2**32-1; other Unicode digits are refused."""
    error = rejected(endpoint_user=user)
    assert [p.variable for p in error.problems] == ["killswitch_endpoint_user"]
    assert "is not a user name or uid" in error.problems[0].reason


def test_largest_uid_string_accepted():
    assert parse(endpoint_user="4294967294").endpoint_user == "4294967294"


@pytest.mark.parametrize("variable,value", [
    ("state", "running"), ("state", True), ("ipv6", "allow"), ("ipv6", "Block"), ("ipv6", False),
    ("forward", "on"), ("forward", True), ("forward", ["off"]),
])
def test_bad_choices(variable, value):
    assert_problem(rejected(**{variable: value}), "killswitch_" + variable, value, "is not one of")


@pytest.mark.parametrize("variable", ["allow_lan", "allow_dhcp", "log_drops", "guard_enabled"])
@pytest.mark.parametrize("value", ["maybe", "enabled", "", "2", 2, -1, 1.0, 0.0, [True], {"on": True}, b"yes"])
def test_non_bool_booleans(variable, value):
    assert_problem(rejected(**{variable: value}), "killswitch_" + variable, value, "is not a boolean")


@pytest.mark.parametrize("variable", ["allow_lan", "allow_dhcp", "log_drops"])
@pytest.mark.parametrize("value,expected", [
    (True, True), (False, False), ("true", True), ("false", False), ("yes", True), ("no", False), ("on", True),
    ("off", False), ("y", True), ("n", False), ("t", True), ("f", False), ("1", True), ("0", False), (1, True),
    (0, False), (" True ", True), ("FALSE", False),
])
def test_ansible_boolean_spellings(variable, value, expected):
    """``-e killswitch_allow_lan=true`` arrives as a string: Ansible's boolean spellings are accepted."""
    assert getattr(parse(**{variable: value}), variable) is expected


@pytest.mark.parametrize("value", ["yes", "no", "true", 0, 1])
def test_guard_enabled_spellings_accepted(value):
    assert parse(guard_enabled=value) == parse()


@pytest.mark.parametrize("variable,value,reason", [
    ("safe_apply_timeout", -1, "out of range"), ("safe_apply_timeout", 86401, "out of range"),
    ("safe_apply_timeout", "soon", "not an integer"), ("guard_interval", 1, "out of range"),
    ("guard_interval", 0, "out of range"), ("guard_interval", True, "not an integer"),
])
def test_bad_settings(variable, value, reason):
    assert_problem(rejected(**{variable: value}), "killswitch_" + variable, value, reason)


@pytest.mark.parametrize("table", ["1table", "kill-switch", "", "a" * 33, "kill switch", 7, "_ks", "ks\n"])
def test_bad_table_name(table):
    assert_problem(rejected(table=table), "killswitch_table", table, "is not a valid table name")


WELL_KNOWN = "is a drive root, a well-known Windows directory"


@pytest.mark.parametrize("state_dir", [
    "C:\\", "D:\\", "C:\\\\", "C:\\.", "C:\\Windows", "c:\\windows\\", "C:\\WINDOWS. ", "C:\\Windows\\Temp\\netlock",
    "C:\\Windows\\System32", "C:\\Users", "C:\\users\\", "C:\\ProgramData", "C:\\ProgramData\\", "C:\\Program Files",
    "C:\\Program Files (x86)", "E:\\Program Files\\", "D:\\Windows\\x", "C:\\PROGRA~3", "C:\\.\\ProgramData",
])
def test_the_windows_state_dir_cannot_be_a_well_known_directory(state_dir):
    """The module sets the state directory's ACL and removes its files there: never a shared root."""
    assert_problem(rejected(windows_state_dir=state_dir), "killswitch_windows_state_dir", state_dir, WELL_KNOWN)
    with pytest.raises(PolicyError) as info:
        validate_settings({"killswitch_state": "absent", "killswitch_windows_state_dir": state_dir})
    assert_problem(info.value, "killswitch_windows_state_dir", state_dir, WELL_KNOWN)


@pytest.mark.parametrize("state_dir", [
    "C:\\ProgramData\\netlock-killswitch", "D:\\killswitch", "C:\\Program Files\\netlock", "C:\\Users\\Public\\ks",
    "C:\\ProgramData\\Windows", "C:\\netlock\\Windows",
])
def test_a_windows_state_dir_of_its_own_is_accepted(state_dir):
    assert parse(windows_state_dir=state_dir) == parse()


@pytest.mark.parametrize("state_dir", ["/var/lib/netlock", "C:", "C:relative", "C:\\a\\..\\b", "\\\\server\\share", 7])
def test_a_windows_state_dir_that_is_not_absolute_is_refused(state_dir):
    assert_problem(rejected(windows_state_dir=state_dir), "killswitch_windows_state_dir", state_dir,
                   "is not an absolute Windows directory")


def test_endpoint_entry_not_a_mapping():
    error = rejected(endpoints=["198.51.100.7:51820"])
    assert_problem(error, "killswitch_endpoints[0]", "198.51.100.7:51820", "is not a mapping")


def test_endpoint_unknown_keys():
    entry = {"address": "198.51.100.7", "port": 1, "proto": "udp"}
    assert_problem(rejected(endpoints=[entry]), "killswitch_endpoints[0]", entry, "unknown keys proto")


def test_extra_outbound_entry_problems():
    entry = {"cidr": "192.0.2.1", "dport": 80}
    error = rejected(extra_outbound=["192.0.2.1", entry])
    assert_problem(error, "killswitch_extra_outbound[0]", "192.0.2.1", "is not a mapping")
    assert_problem(error, "killswitch_extra_outbound[1]", entry, "unknown keys dport")


def test_multiple_problems_reported_at_once():
    error = rejected(
        tunnel_interfaces=["wg0", "*", "wg$0"],
        backend="pf",
        endpoint_program="wireguard",
        endpoints=[{"address": "300.1.2.3", "port": 0, "protocol": "icmp"}],
        endpoint_mark=-5,
        lan_cidrs=["10.0.0.0/8", "nope"],
        management_ports=[70000],
        allow_lan="maybe",
        ipv6="maybe",
        forward="sideways",
        state="gone",
    )
    expected = {
        "killswitch_tunnel_interfaces[1]": "*",
        "killswitch_tunnel_interfaces[2]": "wg$0",
        "killswitch_backend": "pf",
        "killswitch_endpoint_program": "wireguard",
        "killswitch_endpoints[0].address": "300.1.2.3",
        "killswitch_endpoints[0].port": 0,
        "killswitch_endpoints[0].protocol": "icmp",
        "killswitch_endpoint_mark": -5,
        "killswitch_lan_cidrs[1]": "nope",
        "killswitch_management_ports[0]": 70000,
        "killswitch_allow_lan": "maybe",
        "killswitch_ipv6": "maybe",
        "killswitch_forward": "sideways",
        "killswitch_state": "gone",
    }
    for variable, value in expected.items():
        assert_problem(error, variable, value)
    assert len(error.problems) == len(expected)
    assert all(isinstance(p, Problem) for p in error.problems)
    assert str(error).startswith("invalid kill switch policy:")


def test_policy_error_is_a_value_error():
    assert issubclass(PolicyError, ValueError)


def test_problem_str():
    assert str(Problem("killswitch_endpoints[0].port", 65536, "is out of range 1-65535")) == \
        "killswitch_endpoints[0].port: 65536 is out of range 1-65535"


def test_validate_settings():
    validate_settings({"killswitch_state": "absent", "killswitch_guard_interval": 30})
    validate_settings({})
    with pytest.raises(PolicyError) as info:
        validate_settings({"killswitch_state": "absent", "killswitch_guard_interval": 2,
                           "killswitch_guard_enabled": "sometimes"})
    assert_problem(info.value, "killswitch_guard_interval", 2, "out of range")
    assert_problem(info.value, "killswitch_guard_enabled", "sometimes", "not a boolean")


def test_valid_settings_do_not_change_the_policy():
    settings = dict(state="present", safe_apply_timeout=0, guard_enabled=False, guard_interval=5)
    assert parse(**settings) == parse()
    assert parse(safe_apply_timeout="120").digest() == parse().digest()


# --------------------------------------------------------------------------- warnings


def test_public_lan_range_warns_when_allow_lan_is_on():
    policy = parse(allow_lan=True, lan_cidrs=["10.0.0.0/8", "8.8.8.0/24", "192.168.0.0/16"])
    assert len(policy.warnings) == 1
    assert "killswitch_lan_cidrs" in policy.warnings[0]
    assert "8.8.8.0/24" in policy.warnings[0]
    assert "public" in policy.warnings[0]


def test_every_public_range_gets_a_warning():
    policy = parse(allow_lan=True, ipv6="tunnel", lan_cidrs=["1.0.0.0/8", "2606:4700::/32", "10.0.0.0/8"])
    assert len(policy.warnings) == 2
    assert any("1.0.0.0/8" in w for w in policy.warnings)
    assert any("2606:4700::/32" in w for w in policy.warnings)


def test_public_lan_range_silent_when_allow_lan_is_off():
    assert parse(allow_lan=False, lan_cidrs=["8.8.8.0/24"]).warnings == ()


def test_default_lan_ranges_do_not_warn():
    assert parse(allow_lan=True).warnings == ()


def test_ipv6_resolver_with_ipv6_block_warns():
    policy = parse(dns_servers=["2001:db8::53"])
    assert any("killswitch_dns_servers" in w and "IPv6" in w for w in policy.warnings)
    assert parse(ipv6="tunnel", dns_servers=["2001:db8::53"]).warnings == ()


def test_warnings_do_not_change_equality_or_digest():
    policy = parse(allow_lan=True, lan_cidrs=["8.8.8.0/24"])
    assert policy.warnings
    assert replace(policy, warnings=()) == policy
    assert replace(policy, warnings=()).digest() == policy.digest()


# --------------------------------------------------------------------------- hostname pinning


class Recorder:
    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, name):
        self.calls.append(name)
        return self.answers[name]


def test_hostname_pinned_to_resolved_ipv4_addresses_aaaa_dropped_with_ipv6_block():
    resolver = Recorder({"vpn.example.com": ["198.51.100.9", "2001:db8::9", "198.51.100.20"]})
    policy = parse(resolve=resolver, endpoints=[{"address": " vpn.example.com ", "port": 51820}])
    assert resolver.calls == ["vpn.example.com"]
    assert policy.endpoints == (AddressRule((N("198.51.100.9/32"), N("198.51.100.20/32")), "udp", 51820),)


def test_hostname_pinned_to_both_families_with_ipv6_tunnel():
    resolver = Recorder({"vpn.example.com": ["2001:db8::9", "198.51.100.9"]})
    policy = parse(resolve=resolver, ipv6="tunnel", endpoints=[{"address": "vpn.example.com", "port": 443,
                                                                "protocol": "tcp"}])
    assert policy.endpoints == (AddressRule((N("198.51.100.9/32"), N("2001:db8::9/128")), "tcp", 443),)


def test_hostname_and_literal_merge_into_one_group():
    resolver = Recorder({"vpn.example.com.": ["198.51.100.9"]})
    policy = parse(resolve=resolver, endpoints=[{"address": "vpn.example.com.", "port": 51820},
                                                {"address": "198.51.100.8", "port": 51820}])
    assert policy.endpoints == (AddressRule((N("198.51.100.8/31"),), "udp", 51820),)


def test_resolver_not_called_for_literals():
    policy = parse(resolve=never_resolve, ipv6="tunnel", endpoints=[
        {"address": "198.51.100.7", "port": 1}, {"address": "2001:db8::1", "port": 1},
        {"address": "198.51.100.0/24", "port": 2}])
    assert len(policy.endpoints) == 2


def test_every_unresolvable_name_is_reported():
    def resolver(name):
        if name == "good.example.com":
            return ["198.51.100.1"]
        raise LookupError("NXDOMAIN for %s" % name)

    error = rejected(resolve=resolver, endpoints=[
        {"address": "bad1.example.com", "port": 1}, {"address": "good.example.com", "port": 1},
        {"address": "bad2.example.com", "port": 1}])
    assert_problem(error, "killswitch_endpoints[0].address", "bad1.example.com", "NXDOMAIN for bad1.example.com")
    assert_problem(error, "killswitch_endpoints[2].address", "bad2.example.com", "NXDOMAIN for bad2.example.com")
    assert len(error.problems) == 2


# --------------------------------------------------------------------------- digest


def test_digest_is_stable():
    one, two = parse(), parse()
    assert one.digest() == two.digest()
    assert len(one.digest()) == 64
    int(one.digest(), 16)


def test_digest_is_stable_across_processes():
    """Sets are used while normalizing: hash randomization must not leak into the digest."""
    code = (
        "from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy\n"
        "print(parse_policy({'killswitch_tunnel_interfaces': ['wg3', 'wg1', 'tun*', 'wg2'],"
        " 'killswitch_endpoints': [{'address': '198.51.100.7', 'port': 1}, {'address': '203.0.113.1', 'port': 2}],"
        " 'killswitch_management_ports': [22, 2222, 443], 'killswitch_dns_servers': ['10.0.0.3', '10.0.0.1']}).digest())"
    )
    collections = str(Path(__file__).resolve().parents[4] / ".collections")
    digests = set()
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=collections)
        digests.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   check=True).stdout.strip())
    assert len(digests) == 1
    assert len(digests.pop()) == 64


@pytest.mark.parametrize("overrides", [
    {"tunnel_interfaces": ["wg1"]},
    {"tunnel_interfaces": ["wg0", "tun*"]},
    {"endpoints": [{"address": "198.51.100.8", "port": 51820}]},
    {"endpoints": [{"address": "198.51.100.7", "port": 51821}]},
    {"endpoints": [{"address": "198.51.100.7", "port": 51820, "protocol": "tcp"}]},
    {"endpoint_mark": 1},
    {"endpoint_user": "nobody"},
    {"endpoint_program": "/usr/bin/wireguard-go"},
    {"allow_lan": True},
    {"lan_cidrs": ["10.0.0.0/8"]},
    {"management_cidrs": ["192.0.2.10"]},
    {"management_ports": [2222]},
    {"dns_servers": ["10.8.0.1"]},
    {"allow_dhcp": False},
    {"ipv6": "tunnel"},
    {"forward": "off"},
    {"forward": "block"},
    {"extra_outbound": [{"cidr": "192.0.2.1"}]},
    {"log_drops": True},
    {"table": "other"},
])
def test_digest_differs_when_the_policy_differs(overrides):
    base = parse()
    other = parse(**overrides)
    assert other != base
    assert other.digest() != base.digest()


# --------------------------------------------------------------------------- the live management path


@pytest.mark.parametrize("source,port,admitted", [
    ("198.18.30.1", 22, True), ("198.18.30.200", 22, True), ("::ffff:198.18.30.1", 22, True),
    ("198.18.31.1", 22, False), ("198.18.30.1", 2222, False), ("2001:db8:30::1", 22, True), ("2001:db8:31::1", 22, False),
])
def test_admits_management(source, port, admitted):
    policy = parse_policy({"killswitch_tunnel_interfaces": ["wg0"],
                           "killswitch_endpoints": [{"address": "198.51.100.7", "port": 1}],
                           "killswitch_management_cidrs": ["198.18.30.0/24", "2001:db8:30::/64"]})
    assert policy.admits_management(source, port) is admitted


@pytest.mark.parametrize("value", [1, 9, "5"])
def test_a_safe_apply_timeout_too_short_to_confirm_is_refused(value):
    with pytest.raises(PolicyError, match="killswitch_safe_apply_timeout: .* too short"):
        parse_policy({"killswitch_tunnel_interfaces": ["wg0"],
                      "killswitch_endpoints": [{"address": "198.51.100.7", "port": 1}],
                      "killswitch_safe_apply_timeout": value})


def test_allow_lockout_must_be_a_boolean():
    with pytest.raises(PolicyError, match="killswitch_allow_lockout"):
        parse_policy({"killswitch_tunnel_interfaces": ["wg0"],
                      "killswitch_endpoints": [{"address": "198.51.100.7", "port": 1}],
                      "killswitch_allow_lockout": "maybe"})
