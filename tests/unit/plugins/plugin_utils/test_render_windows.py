# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""render_windows: the rule list as a Windows Firewall document, and what the windows backend refuses.

No PowerShell runs here: the document is data, so these tests read it.  The properties that matter for a
kill switch are checked over generated policies: every allow of the rule list has a Windows allow, and no
Windows allow lets DNS out other than through the tunnel patterns (or to the endpoints and loopback, as on
Linux).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.netlock.killswitch.plugins.plugin_utils import render_windows
from ansible_collections.netlock.killswitch.plugins.plugin_utils.backends import BACKENDS, LINUX_BACKENDS, render_for
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import DNS_PORTS, PolicyError, parse_policy
from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_windows import (
    IMPLICIT, WARN_DNS_PORT, WARN_FORWARD, WARN_HOP_LIMIT, WARN_LOG, WARN_NARROWED, WARN_REJECT, document, like, plan,
    render)
from ansible_collections.netlock.killswitch.plugins.plugin_utils.rules import ACCEPT, FORWARD, GROUPS, rule_list

SPLIT = ["1-52", "54-852", "854-65535"]
ALL_V4 = "0.0.0.0-255.255.255.255"
PROGRAM = "C:\\Program Files\\WireGuard\\wireguard.exe"
BASE = {"killswitch_tunnel_interfaces": ["Wintun Userspace Tunnel"],
        "killswitch_endpoints": [{"address": "198.51.100.7", "port": 51820}]}


def doc(**overrides):
    variables = dict(BASE, **{"killswitch_" + k: v for k, v in overrides.items()})
    return document(parse_policy(variables, resolve=lambda name: ["203.0.113.9"]))


def rules_of(document_, kind):
    """The rules whose name says they come from the rule-list entry ``kind`` (out-endpoint_udp_51820, in-dhcp...)."""
    return [r for r in document_["rules"] if r["name"].split(".", 4)[4].startswith((kind + "-", kind + "_"))]


def only(document_, kind):
    found = rules_of(document_, kind)
    assert len(found) == 1, (kind, [r["name"] for r in document_["rules"]])
    return found[0]


def canonical_sha(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --------------------------------------------------------------------------- the document's shape


def test_the_plainest_policy_gives_this_document():
    """Default variables, one tunnel, one endpoint: every rule pinned, so that a change of shape is seen."""
    result = doc()
    assert set(result) == {"version", "group", "profiles", "rules", "tunnel_patterns", "warnings", "digest"}
    assert result["version"] == 1
    assert result["group"] == "netlock.killswitch killswitch"
    assert result["profiles"] == {"names": ["Domain", "Private", "Public"], "enabled": True,
                                  "default_inbound": "Block", "default_outbound": "Block"}
    assert result["tunnel_patterns"] == ["Wintun Userspace Tunnel"]
    shapes = [(r["name"], r["direction"], r["protocol"], r["local_ports"], r["remote_ports"], r["remote_addresses"],
               r["icmp_types"], r["interface_aliases"], r["program"]) for r in result["rules"]]
    tunnel = ["Wintun Userspace Tunnel"]
    assert shapes == [
        ("netlock.killswitch.killswitch.01.in-dhcp-v4-udp", "Inbound", "UDP", ["68"], ["67"], [ALL_V4], [], [], None),
        ("netlock.killswitch.killswitch.02.in-neighbour_onlink-v6-icmpv6", "Inbound", "ICMPv6", [], [], [], ["134", "135", "136"],
         [], None),
        ("netlock.killswitch.killswitch.03.out-loopback-any", "Outbound", "Any", [], [], ["127.0.0.0/8", "::1"], [], [],
         None),
        # without killswitch_dns_servers the tunnel comes right after loopback (rules.TUNNEL_FIRST) and lets DNS
        # through it, so there is no DNS rule of its own
        ("netlock.killswitch.killswitch.04.out-tunnel-v4-any", "Outbound", "Any", [], [], [ALL_V4], [], tunnel, None),
        ("netlock.killswitch.killswitch.05.out-endpoint_udp_51820-v4-udp", "Outbound", "UDP", [], ["51820"],
         ["198.51.100.7"], [], [], None),
        ("netlock.killswitch.killswitch.06.out-dhcp-v4-udp", "Outbound", "UDP", ["68"], ["67"],
         ["10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16", "255.255.255.255"], [], [], None),
        ("netlock.killswitch.killswitch.07.out-neighbour_onlink-v6-icmpv6", "Outbound", "ICMPv6", [], [], ["fe80::/10", "ff00::/8"],
         ["133", "135", "136"], [], None),
        ("netlock.killswitch.killswitch.08.out-neighbour_mld-v6-icmpv6", "Outbound", "ICMPv6", [], [], ["ff02::16"], ["143"], [],
         None),
    ]
    assert all(r["action"] == "Allow" for r in result["rules"])
    assert result["rules"][4]["display_name"] == "netlock.killswitch: endpoint outbound UDP port 51820 to 198.51.100.7"
    assert result["warnings"] == [WARN_REJECT, WARN_HOP_LIMIT, WARN_FORWARD]


def test_rule_and_document_digests_are_the_canonical_json_without_themselves():
    result = doc(allow_lan=True)
    for rule in result["rules"]:
        rest = {k: v for k, v in rule.items() if k not in ("name", "digest")}
        assert rule["digest"] == canonical_sha(rest)
    assert result["digest"] == canonical_sha({k: v for k, v in result.items() if k != "digest"})
    assert len({r["name"] for r in result["rules"]}) == len(result["rules"])


def test_render_is_the_document_as_sorted_json_and_stable_bytes():
    policy = parse_policy(dict(BASE, killswitch_allow_lan=True, killswitch_dns_servers=["10.64.0.1"]))
    text = render(policy)
    assert json.loads(text) == document(policy)
    assert text == render(policy) == render_for(policy, "windows")
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=1) + "\n"
    reordered = parse_policy({"killswitch_dns_servers": ["10.64.0.1"], "killswitch_allow_lan": True,
                              "killswitch_endpoints": BASE["killswitch_endpoints"],
                              "killswitch_tunnel_interfaces": ["Wintun Userspace Tunnel", "Wintun Userspace Tunnel"]})
    assert render(reordered) == text


def test_a_different_policy_gives_a_different_digest_and_table_names_the_group():
    assert doc()["digest"] != doc(allow_lan=True)["digest"]
    other = doc(table="office")
    assert other["group"] == "netlock.killswitch office"
    assert all(r["name"].startswith("netlock.killswitch.office.") for r in other["rules"])


# --------------------------------------------------------------------------- representative policies


def test_endpoints_with_and_without_a_program():
    assert only(doc(), "out-endpoint_udp_51820")["program"] is None
    owned = doc(endpoint_program=PROGRAM)
    endpoint = only(owned, "out-endpoint_udp_51820")
    assert endpoint["program"] == PROGRAM and endpoint["display_name"].endswith("by " + PROGRAM)
    # only the endpoint carries the program: the tunnel is for every program
    assert [r["name"] for r in owned["rules"] if r["program"]] == [endpoint["name"]]


def test_tcp_and_hostname_endpoints_keep_their_protocol_port_and_pinned_address():
    result = doc(endpoints=[{"address": "vpn.example.com", "port": 443, "protocol": "tcp"},
                            {"address": "198.51.100.0/28", "port": 1194}])
    assert only(result, "out-endpoint_tcp_443")["protocol"] == "TCP"
    assert only(result, "out-endpoint_tcp_443")["remote_addresses"] == ["203.0.113.9"]
    assert only(result, "out-endpoint_udp_1194")["remote_addresses"] == ["198.51.100.0/28"]


def test_allow_lan_never_opens_dns_on_the_lan():
    result = doc(allow_lan=True, ipv6="tunnel")
    lan = rules_of(result, "out-lan")
    by_protocol = {(r["name"].rsplit("-", 2)[-2], r["protocol"]): r for r in lan}
    assert sorted(by_protocol) == [("v4", "ICMPv4"), ("v4", "TCP"), ("v4", "UDP"),
                                   ("v6", "ICMPv6"), ("v6", "TCP"), ("v6", "UDP")]
    for (family, protocol), rule in by_protocol.items():
        assert rule["remote_ports"] == (SPLIT if protocol in ("TCP", "UDP") else []), rule
        assert rule["interface_aliases"] == []
    lan_v4 = ["10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"]
    assert by_protocol[("v4", "TCP")]["remote_addresses"] == lan_v4
    assert by_protocol[("v6", "UDP")]["remote_addresses"] == ["fc00::/7", "fe80::/10"]
    assert WARN_NARROWED % "killswitch_allow_lan" in result["warnings"]
    assert not rules_of(doc(), "out-lan")


def test_ipv6_block_limits_the_tunnel_to_ipv4_and_tunnel_lets_both_through():
    blocked = only(doc(), "out-tunnel")
    assert blocked["remote_addresses"] == [ALL_V4] and blocked["protocol"] == "Any"
    opened = only(doc(ipv6="tunnel"), "out-tunnel")
    assert opened["remote_addresses"] == [] and opened["protocol"] == "Any"
    # the DNS through the tunnel follows the family too
    pinned = ["10.64.0.1", "2001:db8::53"]
    assert {r["remote_addresses"][0] for r in rules_of(doc(dns_servers=pinned), "out-dns")} == {"10.64.0.1"}
    assert {tuple(r["remote_addresses"]) for r in rules_of(doc(dns_servers=pinned, ipv6="tunnel"), "out-dns")} == {
        ("10.64.0.1",), ("2001:db8::53",)}
    assert not rules_of(doc(), "out-dhcp6") and rules_of(doc(ipv6="tunnel"), "out-dhcp6")


def test_dns_servers_are_the_only_dns_through_the_tunnel():
    result = doc(dns_servers=["10.64.0.1", "2001:db8::53"], ipv6="tunnel")
    dns = rules_of(result, "out-dns")
    assert sorted((r["protocol"], tuple(r["remote_addresses"])) for r in dns) == [
        ("TCP", ("10.64.0.1",)), ("TCP", ("2001:db8::53",)), ("UDP", ("10.64.0.1",)), ("UDP", ("2001:db8::53",))]
    assert all(r["remote_ports"] == ["53", "853"] and r["interface_aliases"] == ["Wintun Userspace Tunnel"] for r in dns)
    # the tunnel allow can no longer be "Any": DNS to other resolvers through the tunnel stays refused
    tunnel = rules_of(result, "out-tunnel")
    assert sorted(r["protocol"] for r in tunnel) == ["ICMPv4", "ICMPv6", "TCP", "UDP"]
    assert all(r["remote_ports"] == SPLIT for r in tunnel if r["protocol"] in ("TCP", "UDP"))
    assert WARN_NARROWED % "killswitch_dns_servers (through the tunnel)" in result["warnings"]


def test_ipv6_resolvers_give_no_rule_while_ipv6_is_blocked():
    dns = rules_of(doc(dns_servers=["10.64.0.1", "2001:db8::53"]), "out-dns")
    assert {r["remote_addresses"][0] for r in dns} == {"10.64.0.1"}


def test_management_is_an_inbound_tcp_allow_from_the_management_sources():
    result = doc(management_cidrs=["192.0.2.10", "2001:db8:ffff::/48"], management_ports=[5986, 5985, 22])
    inbound = rules_of(result, "in-management")
    assert [(r["direction"], r["protocol"], r["local_ports"], r["remote_ports"], r["remote_addresses"])
            for r in inbound] == [("Inbound", "TCP", ["22", "5985-5986"], [], ["192.0.2.10"]),
                                  ("Inbound", "TCP", ["22", "5985-5986"], [], ["2001:db8:ffff::/48"])]
    assert not rules_of(result, "out-management"), "replies pass: Windows Firewall is stateful"
    assert not rules_of(doc(management_ports=[]), "in-management")


def test_dhcp_on_and_off():
    on = doc(ipv6="tunnel", lan_cidrs=["192.168.0.0/16"])
    assert only(on, "out-dhcp")["remote_addresses"] == ["192.168.0.0/16", "255.255.255.255"]
    assert only(on, "out-dhcp6")["remote_addresses"] == ["ff02::1:2"]
    assert only(on, "out-dhcp6")["local_ports"] == ["546"] and only(on, "out-dhcp6")["remote_ports"] == ["547"]
    assert only(on, "in-dhcp6_server")["remote_addresses"] == ["fe80::/10"]
    assert only(on, "in-neighbour_onlink")["icmp_types"] == ["134", "135", "136"]
    off = doc(allow_dhcp=False, ipv6="tunnel")
    assert not [r for r in off["rules"] if "dhcp" in r["name"] or "neighbour" in r["name"]]
    assert WARN_HOP_LIMIT not in off["warnings"]


def test_extra_outbound():
    result = doc(extra_outbound=[{"cidr": "203.0.113.0/24", "protocol": "tcp", "port": 443},
                                 {"cidr": "203.0.113.53", "protocol": "udp", "port": 53},
                                 {"cidr": "192.0.2.0/24", "protocol": "icmp"},
                                 {"cidr": "198.18.0.0/15"},
                                 {"cidr": "198.19.1.0/24", "protocol": "udp"}])
    assert only(result, "out-extra_tcp_443")["remote_ports"] == ["443"]
    assert only(result, "out-extra_tcp_443")["remote_addresses"] == ["203.0.113.0/24"]
    assert not rules_of(result, "out-extra_udp_53"), "DNS leaves only through the tunnel"
    assert WARN_DNS_PORT % ("udp", 53, "203.0.113.53") in result["warnings"]
    icmp = only(result, "out-extra_icmp_all")
    assert (icmp["protocol"], icmp["remote_addresses"]) == ("ICMPv4", ["192.0.2.0/24"])
    assert sorted((r["protocol"], tuple(r["remote_ports"])) for r in rules_of(result, "out-extra_any_all")) == [
        ("ICMPv4", ()), ("TCP", tuple(SPLIT)), ("UDP", tuple(SPLIT))]
    assert only(result, "out-extra_udp_all")["remote_ports"] == SPLIT
    assert all(r["interface_aliases"] == [] for r in rules_of(result, "out-extra"))


def test_log_drops_is_ignored_with_a_warning():
    logged, plain = doc(log_drops=True), doc()
    assert WARN_LOG in logged["warnings"] and WARN_LOG not in plain["warnings"]
    assert logged["rules"] == plain["rules"]


def test_forward_has_no_rules_and_a_warning_unless_off():
    assert WARN_FORWARD in doc(forward="block")["warnings"]
    assert WARN_FORWARD not in doc(forward="off")["warnings"]
    assert doc(forward="block")["rules"] == doc(forward="off")["rules"]
    assert all(rule.direction != FORWARD for rule, _windows in plan(parse_policy(BASE))[0])


def test_tunnel_patterns_are_every_pattern_any_rule_uses():
    result = doc(tunnel_interfaces=["ProtonVPN*", "NordLynx", "OpenVPN Data Channel Offload"])
    assert result["tunnel_patterns"] == ["NordLynx", "OpenVPN Data Channel Offload", "ProtonVPN*"]
    used = {alias for r in result["rules"] for alias in r["interface_aliases"]}
    assert used == set(result["tunnel_patterns"])


def test_no_block_rule_ever():
    """A block beats every allow in Windows Firewall: the design is default-block plus allows."""
    result = doc(allow_lan=True, dns_servers=["10.64.0.1"], log_drops=True, ipv6="tunnel",
                 extra_outbound=[{"cidr": "192.0.2.0/24"}], management_cidrs=["192.0.2.1"])
    assert {r["action"] for r in result["rules"]} == {"Allow"}


# --------------------------------------------------------------------------- order


def test_rules_follow_the_rule_list_in_threat_model_order():
    policy = parse_policy(dict(BASE, killswitch_allow_lan=True, killswitch_dns_servers=["10.64.0.1"],
                               killswitch_management_cidrs=["192.0.2.1"], killswitch_ipv6="tunnel",
                               killswitch_extra_outbound=[{"cidr": "192.0.2.0/24"}]))
    pairs, _warnings = plan(policy)
    for direction in ("input", "output"):
        ranks = [GROUPS.index(rule.group) for rule, _windows in pairs if rule.direction == direction]
        assert ranks == sorted(ranks) and ranks, direction
    numbers = [int(r["name"].split(".")[3]) for r in document(policy)["rules"]]
    assert numbers == list(range(1, len(numbers) + 1))
    assert [r["name"].split(".")[3] for r in document(policy)["rules"]][:2] == ["01", "02"]


# --------------------------------------------------------------------------- properties over generated policies

ALIASES = st.one_of(st.sampled_from(["Wintun Userspace Tunnel", "NordLynx", "OpenVPN Data Channel Offload",
                                     "ProtonVPN*", "*WireGuard*", "tap-windows*", "Mullvad"]),
                    st.from_regex(r"[A-Za-z][A-Za-z0-9 _.-]{0,20}\*?", fullmatch=True).map(str.strip))


def _networks(version):
    bits = 32 if version == 4 else 128
    return st.builds(lambda a, p: str(ipaddress.ip_network("%s/%d" % (a, p), strict=False)),
                     st.ip_addresses(v=version), st.integers(min_value=1, max_value=bits))


def _windows_variables(ipv6):
    versions = (4,) if ipv6 == "block" else (4, 6)
    cidr = st.one_of(*[_networks(v) for v in versions])
    ports = st.one_of(st.integers(min_value=1, max_value=65535), st.sampled_from(list(DNS_PORTS)))
    extra = st.one_of(
        st.fixed_dictionaries({"cidr": cidr}, optional={"protocol": st.sampled_from(["any", "icmp", "tcp", "udp"])}),
        st.fixed_dictionaries({"cidr": cidr, "protocol": st.sampled_from(["tcp", "udp"]), "port": ports}))
    return st.fixed_dictionaries({
        "killswitch_ipv6": st.just(ipv6),
        "killswitch_tunnel_interfaces": st.lists(ALIASES.filter(lambda a: not render_windows.interface_problem(a)),
                                                 min_size=1, max_size=3),
        "killswitch_endpoints": st.lists(st.fixed_dictionaries({"address": cidr, "port": ports},
                                                               optional={"protocol": st.sampled_from(["udp", "tcp"])}),
                                         min_size=1, max_size=3),
        "killswitch_endpoint_program": st.none() | st.just(PROGRAM),
        "killswitch_allow_lan": st.booleans(),
        "killswitch_lan_cidrs": st.none() | st.lists(cidr, max_size=4),
        "killswitch_management_cidrs": st.lists(cidr, max_size=3),
        "killswitch_management_ports": st.none() | st.lists(ports, max_size=4),
        "killswitch_dns_servers": st.lists(st.one_of(*[st.ip_addresses(v=v).map(str) for v in versions]), max_size=3),
        "killswitch_allow_dhcp": st.booleans(),
        "killswitch_forward": st.sampled_from(["block", "tunnel", "off"]),
        "killswitch_extra_outbound": st.lists(extra, max_size=4),
        "killswitch_log_drops": st.booleans(),
    })


WINDOWS_POLICIES = st.one_of(_windows_variables("block"), _windows_variables("tunnel"))


def _carries_dns(rule):
    """Whether a Windows allow can carry TCP or UDP to port 53 or 853."""
    if rule["protocol"] not in ("TCP", "UDP", "Any"):
        return False
    if not rule["remote_ports"]:
        return True
    for text in rule["remote_ports"]:
        low, _sep, high = text.partition("-")
        if any(int(low) <= port <= int(high or low) for port in DNS_PORTS):
            return True
    return False


def _needs_counterpart(rule):
    """ACCEPT rules of the rule list that Windows must have an allow for (not forward, not implicit, not DNS the
    Linux order refuses before the allow is reached)."""
    if rule.verdict != ACCEPT or rule.direction == FORWARD or (rule.direction, rule.group) in IMPLICIT:
        return False
    if rule.group in ("lan", "extra") and rule.destination_ports and set(rule.destination_ports) <= set(DNS_PORTS):
        return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(variables=WINDOWS_POLICIES)
def test_every_allow_has_a_windows_allow_and_no_dns_leaves_outside_the_tunnel(variables):
    policy = parse_policy(variables)
    text = render_for(policy, "windows", "win9")
    result = json.loads(text)
    pairs, _warnings = plan(policy)
    translated = [rule for rule, _windows in pairs]
    for rule in rule_list(policy):
        if _needs_counterpart(rule):
            assert rule in translated, rule
    endpoints = {(str(net), r.protocol.upper(), str(r.port)) for r in policy.endpoints for net in r.networks}
    for (rule, _windows), windows in zip(pairs, result["rules"]):
        assert windows["action"] == "Allow"
        if windows["direction"] != "Outbound" or not _carries_dns(windows):
            continue
        if windows["interface_aliases"]:
            assert set(windows["interface_aliases"]) <= set(policy.tunnel_interfaces), windows
        elif rule.group == "loopback":
            assert windows["remote_addresses"] == ["127.0.0.0/8", "::1"]
        else:  # the endpoint exception, as on Linux: exactly an endpoint's address, protocol and port
            assert rule.group == "endpoint", windows
            assert windows["remote_ports"] and all(
                (str(ipaddress.ip_network(a)), windows["protocol"], p) in endpoints
                for a in windows["remote_addresses"] for p in windows["remote_ports"]), windows
    assert result["tunnel_patterns"] == sorted(set(policy.tunnel_interfaces))
    assert render_for(policy, "windows", "win9") == text


# --------------------------------------------------------------------------- what the windows backend refuses


def policy_with(**overrides):
    return parse_policy(dict(BASE, **{"killswitch_" + k: v for k, v in overrides.items()}))


def refused(policy, variable, value, *words):
    with pytest.raises(PolicyError) as info:
        render_for(policy, "windows", "win7.example")
    problems = [p for p in info.value.problems if p.variable == variable and p.value == value]
    assert problems, info.value
    for word in ("win7.example", "windows") + words:
        assert word in problems[0].reason, problems[0]
    assert variable in str(info.value)
    return problems[0]


@pytest.mark.parametrize("owner,value", [("endpoint_mark", 51820), ("endpoint_user", "nobody")])
def test_mark_and_user_are_refused_naming_variable_host_and_backend(owner, value):
    refused(policy_with(**{owner: value}), "killswitch_" + owner, value, "cannot be enforced", "program")


def test_a_program_is_enforced_on_windows_and_refused_on_linux():
    policy = policy_with(endpoint_program=PROGRAM)
    assert PROGRAM in render_for(policy, "windows").replace("\\\\", "\\")
    for backend in LINUX_BACKENDS:
        with pytest.raises(PolicyError) as info:
            render_for(policy, backend, "lin1")
        assert "killswitch_endpoint_program" in str(info.value) and backend in str(info.value)


@pytest.mark.parametrize("program", ["/usr/bin/wireguard-go", "/opt/vpn/client"])
def test_a_linux_program_path_is_refused_on_windows(program):
    refused(policy_with(endpoint_program=program), "killswitch_endpoint_program", program, "drive letter")


@pytest.mark.parametrize("name", ["Wintun Userspace Tunnel", "OpenVPN Data Channel Offload", "NordLynx", "ProtonVPN*",
                                  "*WireGuard*", "Ethernet 2", "wg0", "tun*", "VPN #1", "a" * 256])
def test_windows_aliases_are_accepted(name):
    result = json.loads(render_for(policy_with(tunnel_interfaces=[name]), "windows"))
    assert result["tunnel_patterns"] == [name]


@pytest.mark.parametrize("name", ["Wintun Userspace Tunnel", "OpenVPN Data Channel Offload", "ProtonVPN*x", "*VPN*",
                                  "Ethernet 2"])
def test_windows_aliases_are_refused_by_the_linux_backends(name):
    policy = policy_with(tunnel_interfaces=["wg0", name])
    for backend in LINUX_BACKENDS:
        with pytest.raises(PolicyError) as info:
            render_for(policy, backend, "lin1")
        assert [(p.variable, p.value) for p in info.value.problems] == [("killswitch_tunnel_interfaces", name)]


@pytest.mark.parametrize("name", ["wg0", "tun*", "wg-office"])
def test_linux_names_are_taken_by_every_backend(name):
    policy = policy_with(tunnel_interfaces=[name])
    for backend in BACKENDS:
        render_for(policy, backend)


@pytest.mark.parametrize("name", ["Loopback Pseudo-Interface 1", "loopback pseudo-interface 1", "Loopback*", "*1",
                                  "*Pseudo*", "L*", "*back Pseudo-Interface*", "*-*"])
def test_patterns_matching_the_loopback_alias_are_refused(name):
    refused(policy_with(tunnel_interfaces=["NordLynx", name]), "killswitch_tunnel_interfaces", name, "loopback")


@pytest.mark.parametrize("name", ["VPN?", "tap[0-9]", "Ethernet]"])
def test_other_powershell_wildcards_are_refused(name):
    refused(policy_with(tunnel_interfaces=[name]), "killswitch_tunnel_interfaces", name, "wildcard")


def test_a_non_printable_alias_is_refused():
    name = "VPN\u200b"  # zero-width space: the parser takes it (not a control character), Windows must not
    refused(policy_with(tunnel_interfaces=[name]), "killswitch_tunnel_interfaces", name, "printable")


@pytest.mark.parametrize("name,pattern,matches", [
    ("Wintun Userspace Tunnel", "Wintun*", True), ("wintun userspace tunnel", "WINTUN*", True),
    ("ProtonVPN TUN", "ProtonVPN*", True), ("Ethernet", "ProtonVPN*", False), ("NordLynx", "NordLynx", True),
    ("NordLynx 2", "NordLynx", False), ("a.b", "a*b", True), ("ab", "a*b", True), ("a(b", "a(b", True),
    ("Loopback Pseudo-Interface 1", "*1", True), ("x", "*", True), ("Wi-Fi", "*VPN*", False)])
def test_like_is_powershells_like_for_star_patterns(name, pattern, matches):
    assert like(name, pattern) is matches


@pytest.mark.parametrize("variable,value", [("windows_state_dir", "/var/lib/x"), ("windows_state_dir", "C:relative"),
                                            ("windows_state_dir", "C:\\a\\..\\b"), ("windows_state_dir", "C:\\a|b"),
                                            ("windows_exclusive", "maybe")])
def test_the_windows_settings_are_validated(variable, value):
    with pytest.raises(PolicyError) as info:
        parse_policy(dict(BASE, **{"killswitch_" + variable: value}))
    assert [(p.variable, p.value) for p in info.value.problems] == [("killswitch_" + variable, value)]


def test_the_windows_settings_do_not_shape_the_rules():
    assert policy_with(windows_exclusive=True, windows_state_dir="D:\\ks") == policy_with()
