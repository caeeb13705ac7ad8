# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The simulated Windows Firewall itself, on small hand-made rule sets: each semantic it claims, and the packets
each rule must NOT match, so that a model that allowed (or blocked) too much fails here before it vouches for the
leak cases (test_windows_leak_cases.py)."""

from __future__ import annotations

import dataclasses

import pytest

from ansible_collections.netlock.killswitch.tests.unit.plugins.plugin_utils.windows_firewall_model import (
    ALLOW, ALLOWED, BLOCK, BLOCKED, INBOUND, KERNEL, NOT_FILTERED, OUTBOUND, Adapter, ModelError, Packet, Profile,
    WindowsHost, apply, document_rules, reply, third_party_rules)

ETHERNET = Adapter("Ethernet", "Private", ("198.18.1.11/24", "2001:db8:1::11/64"), "Wired", "guid-eth")
WIFI = Adapter("Wi-Fi", "Public", ("198.18.3.11/24",), "Wireless", "guid-wifi")
TUNNEL = Adapter("WireGuard Tunnel: office", "Public", ("198.18.100.11/24",), "RemoteAccess", "guid-wg-1")
ADAPTERS = (ETHERNET, WIFI, TUNNEL)
APP = "C:\\Program Files\\App\\app.exe"


def rule(name, action=ALLOW, **fields):
    entry = {"name": name, "direction": OUTBOUND, "action": action, "enabled": True}
    entry.update(fields)
    return entry


def host(*entries, default_outbound=BLOCK, default_inbound=BLOCK, enabled=True, adapters=ADAPTERS):
    profiles = {name: Profile(enabled, default_inbound, default_outbound) for name in ("Domain", "Private", "Public")}
    return WindowsHost(list(adapters), profiles, third_party_rules(entries, adapters))


def out(protocol="TCP", remote="203.0.113.5", port=443, interface="Ethernet", **fields):
    fields.setdefault("local_port", 50000 if protocol in ("TCP", "UDP") else None)
    return Packet(OUTBOUND, interface, protocol, remote, port if protocol in ("TCP", "UDP") else None, **fields)


def verdict(firewall, packet):
    return firewall.evaluate(packet).verdict


# --------------------------------------------------------------------------- precedence and defaults


@pytest.mark.parametrize("default,expected", [(BLOCK, BLOCKED), (ALLOW, ALLOWED)])
def test_without_a_matching_rule_the_profile_default_decides(default, expected):
    firewall = host(rule("other-port", protocol="TCP", remote_ports=["80"]), default_outbound=default)
    decision = firewall.evaluate(out(port=443))
    assert decision.verdict == expected and decision.reason == "default %s of the Private profile" % default


def test_an_enabled_allow_rule_beats_the_default_block():
    decision = host(rule("web", protocol="TCP", remote_ports=["443"])).evaluate(out())
    assert (decision.verdict, decision.rule) == (ALLOWED, "web")


@pytest.mark.parametrize("block_first", [True, False])
def test_a_block_rule_beats_every_allow_rule_whatever_the_order(block_first):
    allow = rule("all", protocol="Any")
    block = rule("no-dns", action=BLOCK, protocol="UDP", remote_ports=["53"])
    firewall = host(*((block, allow) if block_first else (allow, block)), default_outbound=ALLOW)
    assert (verdict(firewall, out("UDP", port=53)), firewall.evaluate(out("UDP", port=53)).rule) == (BLOCKED, "no-dns")
    assert verdict(firewall, out("UDP", port=54)) == ALLOWED  # the block must not match port 54
    assert verdict(firewall, out("TCP", port=53)) == ALLOWED  # nor TCP


def test_a_disabled_rule_matches_nothing():
    assert verdict(host(rule("off", enabled=False)), out()) == BLOCKED
    assert verdict(host(rule("off-number", enabled=2)), out()) == BLOCKED
    assert verdict(host(rule("block-off", action=BLOCK, enabled=False), default_outbound=ALLOW), out()) == ALLOWED


def test_a_profile_with_the_firewall_off_allows_everything_even_a_blocked_packet():
    firewall = host(rule("block-all", action=BLOCK), enabled=False)
    decision = firewall.evaluate(out())
    assert decision.verdict == ALLOWED and "off" in decision.reason


def test_rule_direction_and_numbers_as_powershell_serializes_them():
    firewall = host(rule("inbound-only", direction=INBOUND), rule("enum", direction=2, action=2, enabled=1,
                                                                  protocol="17"))
    assert verdict(firewall, out("TCP")) == BLOCKED
    assert verdict(firewall, out("UDP", port=9)) == ALLOWED
    assert firewall.evaluate(out("UDP", port=9)).rule == "enum"


def test_any_matches_every_protocol_address_port_interface_and_program():
    firewall = host(rule("any", protocol="Any", remote_addresses=["Any"], remote_ports=["Any"],
                         interface_aliases=["Any"], program="Any"))
    for packet in (out(), out("UDP", "2001:db8:2::20", 9), out("ICMPv4", icmp_type=8, interface="Wi-Fi"),
                   out("41", "192.0.2.1"), out(program=APP, interface="WireGuard Tunnel: office")):
        assert verdict(firewall, packet) == ALLOWED, packet


# --------------------------------------------------------------------------- conditions


@pytest.mark.parametrize("values,remote,expected", [
    (["203.0.113.0/24"], "203.0.113.200", ALLOWED), (["203.0.113.0/24"], "203.0.114.1", BLOCKED),
    (["203.0.113.5"], "203.0.113.5", ALLOWED), (["203.0.113.5"], "203.0.113.6", BLOCKED),
    (["203.0.113.0/255.255.255.0"], "203.0.113.9", ALLOWED),
    (["203.0.113.10-203.0.113.20"], "203.0.113.20", ALLOWED), (["203.0.113.10-203.0.113.20"], "203.0.113.21", BLOCKED),
    (["2001:db8:2::/64"], "2001:db8:2::20", ALLOWED), (["2001:db8:2::/64"], "2001:db8:3::20", BLOCKED),
    (["0.0.0.0-255.255.255.255"], "2001:db8:2::20", BLOCKED),  # an IPv4 range never matches IPv6
    (["192.0.2.1", "2001:db8::/32"], "2001:db8:ffff::1", ALLOWED),
])
def test_remote_addresses(values, remote, expected):
    assert verdict(host(rule("r", protocol="TCP", remote_addresses=values)), out(remote=remote)) == expected


@pytest.mark.parametrize("port,expected", [(52, ALLOWED), (53, BLOCKED), (54, ALLOWED), (852, ALLOWED), (853, BLOCKED),
                                           (854, ALLOWED), (65535, ALLOWED)])
def test_port_ranges_like_the_documents(port, expected):
    firewall = host(rule("no-dns-ports", protocol="UDP", remote_ports=["1-52", "54-852", "854-65535"]))
    assert verdict(firewall, out("UDP", port=port)) == expected


def test_local_ports_and_a_port_rule_never_match_another_protocol():
    firewall = host(rule("from-68", protocol="UDP", local_ports=["68"], remote_ports=["67"]))
    assert verdict(firewall, out("UDP", port=67, local_port=68)) == ALLOWED
    assert verdict(firewall, out("UDP", port=67, local_port=50000)) == BLOCKED
    assert verdict(firewall, out("TCP", port=67, local_port=68)) == BLOCKED


def test_protocols_by_name_and_number():
    firewall = host(rule("6in4", protocol="41"), rule("icmp", protocol="ICMPv4"))
    assert verdict(firewall, out("41", "192.0.2.1")) == ALLOWED
    assert verdict(firewall, out("ICMPv4", icmp_type=8)) == ALLOWED
    assert verdict(firewall, out("ICMPv6", "2001:db8:2::20", icmp_type=128)) == BLOCKED
    assert verdict(firewall, out("TCP")) == BLOCKED


def test_icmp_types():
    firewall = host(rule("nd", protocol="ICMPv6", icmp_types=["133", "135:*"]))
    assert verdict(firewall, out("ICMPv6", "fe80::1", icmp_type=133)) == ALLOWED
    assert verdict(firewall, out("ICMPv6", "fe80::1", icmp_type=135)) == ALLOWED
    assert verdict(firewall, out("ICMPv6", "fe80::1", icmp_type=128)) == BLOCKED


def test_program_matches_the_full_path_case_insensitively_with_variables_expanded():
    firewall = host(rule("app", program=APP), rule("dns-client", program="%SystemRoot%\\system32\\svchost.exe"),
                    rule("kernel", protocol="TCP", remote_ports=["443"], program=KERNEL))
    assert verdict(firewall, out(program=APP.upper())) == ALLOWED
    assert verdict(firewall, out(program="C:\\WINDOWS\\System32\\svchost.exe")) == ALLOWED
    assert verdict(firewall, out(program="C:\\Program Files\\App\\app2.exe", port=80)) == BLOCKED
    assert verdict(firewall, out(program="D:\\Program Files\\App\\app.exe", port=80)) == BLOCKED
    assert verdict(firewall, out(program=None, port=80)) == BLOCKED  # a rule with a program never matches none
    assert verdict(firewall, out(program="System", port=443)) == ALLOWED


def test_interface_aliases_wildcards_types_and_profiles():
    firewall = host(rule("tunnels", interface_aliases=["WireGuard*"]), rule("wireless", interface_type="Wireless"),
                    rule("domain-only", profiles=["Domain"]))
    assert verdict(firewall, out(interface="WireGuard Tunnel: office")) == ALLOWED
    assert firewall.evaluate(out(interface="Wi-Fi")).rule == "wireless"
    assert verdict(firewall, out(interface="Ethernet")) == BLOCKED  # not a tunnel, wired, Private: nothing matches


def test_local_subnet_is_the_subnet_of_the_packets_interface():
    firewall = host(rule("intranet", remote_addresses=["LocalSubnet"]))
    assert verdict(firewall, out(remote="198.18.1.5")) == ALLOWED
    assert verdict(firewall, out(remote="198.18.3.5")) == BLOCKED  # Wi-Fi's subnet, not Ethernet's
    assert verdict(firewall, out(remote="198.18.3.5", interface="Wi-Fi")) == ALLOWED


# --------------------------------------------------------------------------- state


def test_replies_to_an_allowed_outbound_flow_pass_and_nothing_else_does():
    firewall = host(rule("web", protocol="TCP", remote_ports=["443"]), rule("ping", protocol="ICMPv4"))
    request = out()
    assert verdict(firewall, reply(request)) == BLOCKED  # not yet: no flow
    assert firewall.send(request).verdict == ALLOWED
    assert firewall.evaluate(reply(request)).reason == "part of a flow already authorized"
    assert verdict(firewall, reply(out(local_port=50001))) == BLOCKED  # another local port: another flow
    assert verdict(firewall, reply(out(remote="203.0.113.6"))) == BLOCKED
    echo = out("ICMPv4", icmp_type=8)
    assert firewall.send(echo).verdict == ALLOWED
    assert reply(echo).icmp_type == 0 and verdict(firewall, reply(echo)) == ALLOWED
    assert verdict(firewall.change(), reply(request)) == BLOCKED  # a policy change re-authorizes: no flow kept


def test_a_blocked_packet_makes_no_flow():
    firewall = host()
    request = out()
    assert firewall.send(request).verdict == BLOCKED
    assert verdict(firewall, reply(request)) == BLOCKED and not firewall.flows


def test_outbound_replies_to_an_allowed_inbound_flow_pass():
    firewall = host(rule("winrm", direction=INBOUND, protocol="TCP", local_ports=["5986"],
                         remote_addresses=["198.18.1.2"]))
    inbound = Packet(INBOUND, "Ethernet", "TCP", "198.18.1.2", 40000, 5986)
    assert firewall.send(inbound).verdict == ALLOWED
    assert verdict(firewall, reply(inbound)) == ALLOWED
    other = Packet(INBOUND, "Ethernet", "TCP", "198.18.1.3", 40000, 5986)
    assert firewall.send(other).verdict == BLOCKED and verdict(firewall, reply(other)) == BLOCKED


# --------------------------------------------------------------------------- what Windows Firewall never sees


def test_forwarded_and_loopback_traffic_are_not_filtered_not_allowed_by_a_rule():
    firewall = host(rule("block-all", action=BLOCK))
    assert verdict(firewall, out(forwarded=True)) == NOT_FILTERED
    assert verdict(firewall, out(remote="127.0.0.1", interface="Loopback Pseudo-Interface 1")) == NOT_FILTERED
    assert firewall.evaluate(out(forwarded=True)).passes and not firewall.evaluate(out()).passes


def test_what_the_model_cannot_read_is_an_error_not_a_guess():
    with pytest.raises(ModelError, match="Internet"):
        host(rule("keyword", remote_addresses=["Internet"])).evaluate(out())
    with pytest.raises(ModelError, match="RPC"):
        host(rule("rpc", protocol="TCP", remote_ports=["RPC"]))
    with pytest.raises(ModelError, match="no adapter"):
        host().evaluate(out(interface="Ethernet 2"))
    with pytest.raises(ModelError, match="strong host"):  # the tunnel's source address never leaves by Ethernet
        host().evaluate(out(local="198.18.100.11"))


# --------------------------------------------------------------------------- rules made from a document


def test_document_rules_are_bound_to_the_adapters_present_and_disabled_without_one():
    document = {"profiles": {"names": ["Domain", "Private", "Public"], "enabled": True, "default_inbound": BLOCK,
                             "default_outbound": BLOCK},
                "group": "g", "tunnel_patterns": ["WireGuard*"],
                "rules": [{"name": "tunnel", "direction": OUTBOUND, "action": ALLOW, "protocol": "Any",
                           "local_ports": [], "remote_ports": [], "remote_addresses": [], "icmp_types": [],
                           "interface_aliases": ["WireGuard*"], "program": None}]}
    up = apply(document, ADAPTERS)
    assert verdict(up, out(interface="WireGuard Tunnel: office")) == ALLOWED
    assert verdict(up, out(interface="Ethernet")) == BLOCKED
    # no tunnel adapter when the rule is made: it is disabled, so it does not match every interface
    absent = document_rules(document, (ETHERNET,))
    assert [r.enabled for r in absent] == [False]
    assert verdict(apply(document, (ETHERNET,)), out()) == BLOCKED
    # the adapter re-created (another GUID): bound to nothing until the next run or guard pass binds it again
    again = dataclasses.replace(TUNNEL, guid="guid-wg-2")
    stale = apply(document, ADAPTERS, now=(ETHERNET, WIFI, again))
    assert verdict(stale, out(interface=again.alias)) == BLOCKED
    assert verdict(apply(document, (ETHERNET, WIFI, again)), out(interface=again.alias)) == ALLOWED
