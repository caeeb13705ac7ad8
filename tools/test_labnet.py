"""Unit tests for tools/labnet.py range checks (fake host facts, no root)."""
import ipaddress
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import labnet  # noqa: E402

FACTS = {
    "routes": [
        {"dst": "default", "dev": "eth0"},
        {"dst": "192.0.2.0/24", "dev": "eth0"},
        {"dst": "198.18.50.0/24", "dev": "tun0"},   # foreign route inside lab range
        {"dst": "198.18.255.0/24", "dev": "docker0"},  # ours: ignored
        {"dst": "198.19.128.0/24", "dev": "br-0123abcd"},  # ours: ignored
        {"dst": "fd00::/64", "dev": "eth0"},
        {"dst": "2001:db8:bad::/48", "dev": "eth1"},
    ],
    "gateways": ["192.0.2.1", "fd00::1"],
    "resolvers": ["198.18.53.53", "2001:db8:53::53"],
    "sources": [
        {"host": "mirror.example", "addr": "198.19.0.80"},
        {"host": "mirror.example", "addr": "2001:db8:80::80"},
    ],
}


@pytest.mark.parametrize("cidr", [
    "198.18.10.0/24", "198.19.200.0/24", "2001:db8:10::/64", "198.18.255.0/24",
])
def test_ok(cidr):
    assert labnet.check_cidr(cidr, FACTS) == []


@pytest.mark.parametrize("cidr,needle", [
    ("10.0.0.0/24", "outside the allowed lab range 198.18.0.0/15"),
    ("192.0.2.0/25", "host route 192.0.2.0/24 dev eth0"),
    ("198.18.50.128/25", "host route 198.18.50.0/24 dev tun0"),
    ("198.18.53.0/24", "resolver 198.18.53.53"),
    ("198.19.0.0/16", "package source mirror.example (198.19.0.80)"),
    ("fd00::/64", "outside the allowed lab range 2001:db8::/32"),
    ("2001:db8:bad:1::/64", "host route 2001:db8:bad::/48 dev eth1"),
    ("2001:db8:53::/64", "resolver 2001:db8:53::53"),
    ("2001:db8:80::/64", "package source mirror.example"),
    ("not-a-cidr", "not a valid network CIDR"),
    ("198.18.10.1/24", "not a valid network CIDR"),
])
def test_collisions(cidr, needle):
    problems = labnet.check_cidr(cidr, FACTS)
    assert problems, cidr
    assert all(p.startswith(cidr) for p in problems)
    assert any(needle in p for p in problems), problems


def test_gateway_collision_and_default_route_ignored():
    facts = {"routes": [{"dst": "default", "dev": "eth0"}], "gateways": ["198.18.1.1"]}
    assert labnet.overlaps_host("198.18.1.0/24", facts) == ["gateway 198.18.1.1"]
    assert labnet.overlaps_host("198.18.2.0/24", facts) == []


def test_own_docker_ifaces_skipped():
    assert labnet.is_own_iface("docker0")
    assert labnet.is_own_iface("br-0123abcd")
    assert not labnet.is_own_iface("eth0")
    assert not labnet.is_own_iface("br0")


def test_in_lab_range():
    assert labnet.in_lab_range(ipaddress.ip_network("198.19.128.0/17"))
    assert not labnet.in_lab_range(ipaddress.ip_network("198.16.0.0/12"))
    assert labnet.in_lab_range(ipaddress.ip_network("2001:db8:10::/64"))


def test_parsers():
    deb822 = "Types: deb\nURIs: http://a.example/debian http://b.example/x\nSuites: bookworm\n"
    assert labnet.parse_apt_sources(deb822, deb822=True) == [
        "http://a.example/debian", "http://b.example/x"]
    one_line = "deb [signed-by=/k.gpg arch=amd64] http://c.example/debian bookworm main\n# c\n"
    assert labnet.parse_apt_sources(one_line, deb822=False) == ["http://c.example/debian"]
    pip_out = ("global.index-url='https://idx.example/simple'\n"
               "global.extra-index-url='file:///opt/x https://extra.example/s'\n"
               "global.cert='/etc/ssl/x.crt'\n")
    opts = labnet.parse_pip_config(pip_out)
    assert opts["index-url"] == ["https://idx.example/simple"]
    assert [labnet.url_host(u) for u in opts["extra-index-url"]] == [None, "extra.example"]
    assert labnet.parse_resolv_conf("nameserver 1.2.3.4\nnameserver fe80::1%eth0\nsearch x\n") == [
        "1.2.3.4", "fe80::1"]
