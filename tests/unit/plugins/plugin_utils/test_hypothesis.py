# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Property-based tests of the policy parser and the renderer.

1. Any role-variable dict, garbage included, gives a Policy or a PolicyError: never a traceback.
2. Any valid policy renders to a ruleset nft accepts (``nft -c`` in a throwaway netns), with the
   rule order the threat model needs, and the same bytes whatever the input order.
"""

from __future__ import annotations

import ipaddress
import pwd
import re

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_nftables import render
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import Policy, PolicyError, parse_policy

KEYS = ("state", "tunnel_interfaces", "endpoints", "endpoint_mark", "endpoint_user", "allow_lan", "lan_cidrs",
        "management_cidrs", "management_ports", "dns_servers", "allow_dhcp", "ipv6", "forward", "extra_outbound",
        "log_drops", "table", "safe_apply_timeout", "guard_enabled", "guard_interval")

# --------------------------------------------------------------------------- garbage in


scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2, max_value=70000)
           | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=8)
           | st.sampled_from(["", "*", "lo", "wg0", "tun*", "udp", "tcp", "icmp", "any", "block", "tunnel", "off",
                              "present", "absent", "yes", "true", "10.0.0.0/8", "198.51.100.7", "2001:db8::1",
                              "fe80::1%eth0", "vpn.example.com", "localhost", "0", "65536", "22", " 22 ", "-1",
                              "\u00b2", "\u0663", "wg0\n", "a" * 300, "1.2.3.4/33", "::/0"]))
garbage = st.recursive(
    scalars,
    lambda children: (st.lists(children, max_size=4) | st.tuples(children, children)
                      | st.dictionaries(st.sampled_from(["address", "port", "protocol", "cidr"]) | st.text(max_size=6),
                                        children, max_size=4)),
    max_leaves=12,
)


def mostly(plausible):
    """Plausible values three times in four, garbage otherwise."""
    return st.one_of(plausible, plausible, plausible, garbage)


def with_stray_keys(mapping):
    """Sometimes add a key nobody asked for: a typo, an int or a null (YAML allows both)."""
    stray = st.dictionaries(st.sampled_from(["proto", "dport", "", 1, 0, None, 2.5, True]), garbage, min_size=1, max_size=2)
    return st.builds(lambda m, extra: {**extra, **m}, mapping, st.one_of(st.just({}), st.just({}), st.just({}), stray))


NAMES = ["wg0", "wg1", "tun*", "*", "lo", "lo*", "eth0:1", "wg 0", "abcdefghijklmno", "abcdefghijklmnop", ".", "..",
         "x@y", "wg0\n", "w*g", ""]
ADDRESSES = ["198.51.100.7", "198.51.100.0/24", "10.0.0.0/8", "2001:db8::7", "2001:db8::/32", "0.0.0.0/0", "::/0",
             "300.1.2.3", "1.2.3.4/33", "vpn.example.com", "bad_name.example", "localhost", "fe80::1%eth0", " 192.0.2.1 "]
PORTS = st.one_of(st.integers(min_value=-5, max_value=70000),
                  st.sampled_from(["22", " 443 ", "0", "65536", "abc", "\u00b2", "\u0663", "-1", "1e3"]))
endpoint_entry = with_stray_keys(st.fixed_dictionaries({}, optional={
    "address": mostly(st.sampled_from(ADDRESSES)), "port": mostly(PORTS),
    "protocol": mostly(st.sampled_from(["udp", "tcp", "icmp", "UDP"]))}))
extra_entry = with_stray_keys(st.fixed_dictionaries({}, optional={
    "cidr": mostly(st.sampled_from(ADDRESSES)), "port": mostly(PORTS),
    "protocol": mostly(st.sampled_from(["any", "icmp", "tcp", "udp", "gre"]))}))
cidr_lists = st.lists(mostly(st.sampled_from(ADDRESSES)), max_size=4)
PLAUSIBLE = {
    "state": st.sampled_from(["present", "absent", "running"]),
    "tunnel_interfaces": st.lists(mostly(st.sampled_from(NAMES)), min_size=1, max_size=3),
    "endpoints": st.lists(mostly(endpoint_entry), min_size=1, max_size=3),
    "endpoint_mark": st.one_of(st.integers(min_value=-1, max_value=2 ** 33), st.sampled_from(["51820", "\u00b2", "0x1"])),
    "endpoint_user": st.one_of(st.integers(min_value=-1, max_value=2 ** 33),
                               st.sampled_from(["nobody", "root", "Root", "wg client", "1000", "\u00b2", "nobody\n"])),
    "allow_lan": st.booleans(), "allow_dhcp": st.booleans(), "log_drops": st.booleans(), "guard_enabled": st.booleans(),
    "lan_cidrs": cidr_lists, "management_cidrs": cidr_lists, "dns_servers": cidr_lists,
    "management_ports": st.lists(mostly(PORTS), max_size=3),
    "ipv6": st.sampled_from(["block", "tunnel", "allow"]),
    "forward": st.sampled_from(["block", "tunnel", "off", "on"]),
    "extra_outbound": st.lists(mostly(extra_entry), max_size=3),
    "table": st.sampled_from(["killswitch", "ks_2", "1bad", "kill-switch", "killswitch\n"]),
    "safe_apply_timeout": PORTS, "guard_interval": PORTS,
}
chaos = st.builds(
    lambda known, other: {**other, **known},
    st.fixed_dictionaries({}, optional={"killswitch_" + k: mostly(v) for k, v in PLAUSIBLE.items()}),
    st.dictionaries(st.text(max_size=12), garbage, max_size=3),
)
# A valid policy with one to three variables replaced: most parse, the rest fail on one value.
VALID_BASE = {"killswitch_tunnel_interfaces": ["wg0"], "killswitch_endpoints": [{"address": "198.51.100.7", "port": 1}]}
one_change = st.sampled_from(sorted(PLAUSIBLE)).flatmap(
    lambda k: st.tuples(st.just("killswitch_" + k), mostly(PLAUSIBLE[k])))
near_valid = st.lists(one_change, max_size=3).map(lambda changes: {**VALID_BASE, **dict(changes)})
role_variables = st.one_of(chaos, near_valid)


def garbage_resolver(answers):
    def resolve(name):
        if isinstance(answers, Exception):
            raise answers
        return answers
    return resolve


resolvers = st.none() | st.builds(garbage_resolver, st.one_of(
    st.just(LookupError("Name or service not known")), st.just(OSError("boom")), st.just(RuntimeError("odd")),
    st.lists(st.sampled_from(["198.51.100.1", "2001:db8::1", "not-an-ip", "", "10.0.0.1"]), max_size=3),
    st.none(), st.integers()))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(variables=role_variables, resolve=resolvers)
@example(variables={}, resolve=None)
@example(variables={"killswitch_endpoints": [{"address": None, "port": None, "protocol": None}]}, resolve=None)
@example(variables={"killswitch_tunnel_interfaces": [None, 1, [], {}], "killswitch_endpoint_user": []}, resolve=None)
def test_parse_never_raises_anything_but_policy_error(variables, resolve):
    try:
        policy = parse_policy(variables, resolve=resolve)
    except PolicyError as error:
        assert error.problems
        for problem in error.problems:
            assert problem.variable.startswith("killswitch_"), problem
            assert problem.variable in str(error)
        return
    assert isinstance(policy, Policy)
    assert policy.tunnel_interfaces and policy.endpoints
    render(policy)  # whatever parses, renders


@settings(max_examples=150, deadline=None)
@given(variables=role_variables)
def test_parse_is_deterministic(variables):
    def outcome():
        try:
            return parse_policy(variables).digest()
        except PolicyError as error:
            return [str(p) for p in error.problems]
        except Exception as error:  # pragma: no cover - reported by the test above
            assume(False)
            return error
    assert outcome() == outcome()


def test_regression_superscript_digit_port():
    """'\u00b2'.isdigit() is True but it is no port: a PolicyError naming the variable, not a ValueError."""
    with pytest.raises(PolicyError) as info:
        parse_policy({"killswitch_tunnel_interfaces": ["wg0"],
                      "killswitch_endpoints": [{"address": "198.51.100.7", "port": "\u00b2"}]})
    assert "killswitch_endpoints[0].port" in str(info.value)


@pytest.mark.parametrize("variables", [
    {"killswitch_endpoints": [{"address": "198.51.100.7", "port": 1, 1: "x"}]},
    {"killswitch_endpoints": [{"address": "198.51.100.7", "port": 1}],
     "killswitch_extra_outbound": [{"cidr": "192.0.2.1", None: "x", "z": 1}]},
])
def test_regression_non_string_entry_keys(variables):
    """A non-string key (YAML ``1: x``) is reported as an unknown key, not a TypeError."""
    variables = dict({"killswitch_tunnel_interfaces": ["wg0"]}, **variables)
    with pytest.raises(PolicyError) as info:
        parse_policy(variables)
    assert "unknown keys" in str(info.value)


# --------------------------------------------------------------------------- valid policies out


def networks(version, max_prefix=None):
    bits = 32 if version == 4 else 128
    return st.builds(lambda a, p: str(ipaddress.ip_network("%s/%d" % (a, p), strict=False)),
                     st.ip_addresses(v=version), st.integers(min_value=0 if max_prefix is None else max_prefix,
                                                             max_value=bits))


def addresses(version):
    return st.ip_addresses(v=version).map(str)


def matches_loopback(name):
    return name == "lo" or (name.endswith("*") and "lo".startswith(name[:-1]))


# nft takes at most 15 characters in all, a trailing '*' included; lo and wildcards matching it are refused.
interface_names = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.@+-]{1,15}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_.@+-]{1,14}\*", fullmatch=True),
).filter(lambda n: n.rstrip("*") not in ("", ".", "..") and not matches_loopback(n))
ports = st.integers(min_value=1, max_value=65535)
# nft resolves user names when it reads the file: only names this host has, or uids
USERS = sorted(p.pw_name for p in pwd.getpwall() if re.match(r"^[a-z_][a-z0-9_-]{0,31}$", p.pw_name))
users = st.none() | st.integers(min_value=0, max_value=2 ** 32 - 2) | st.sampled_from(USERS)
HOSTNAMES = ["vpn.example.com", "vpn2.example.net", "edge.example.org."]


@st.composite
def valid_variables(draw):
    ipv6 = draw(st.sampled_from(["block", "tunnel"]))
    versions = (4,) if ipv6 == "block" else (4, 6)
    family = st.sampled_from(versions)

    def cidr():
        return family.flatmap(networks)

    def endpoint_address():
        # an endpoint never has prefix length 0 (it would match every address)
        return st.one_of(family.flatmap(addresses), family.flatmap(lambda v: networks(v, 8 if v == 4 else 32)),
                         st.sampled_from(HOSTNAMES))

    endpoint = st.fixed_dictionaries({"address": endpoint_address(), "port": ports | ports.map(str)},
                                     optional={"protocol": st.sampled_from(["udp", "tcp", None])})
    extra = st.one_of(
        st.fixed_dictionaries({"cidr": cidr()},
                              optional={"protocol": st.sampled_from(["any", "icmp", "tcp", "udp", None])}),
        st.fixed_dictionaries({"cidr": cidr(), "protocol": st.sampled_from(["tcp", "udp"]), "port": ports}),
    )
    # IPv6 resolvers are allowed with ipv6=block too: they render no rule (and the parser warns)
    dns = st.lists(st.sampled_from((4, 6)).flatmap(addresses), max_size=4)
    variables = {
        "killswitch_state": draw(st.sampled_from(["present", None])),
        "killswitch_ipv6": ipv6,
        "killswitch_tunnel_interfaces": draw(st.lists(interface_names, min_size=1, max_size=4)),
        "killswitch_endpoints": draw(st.lists(endpoint, min_size=1, max_size=5)),
        "killswitch_endpoint_mark": draw(st.none() | st.integers(min_value=1, max_value=2 ** 32 - 1)),
        "killswitch_endpoint_user": draw(users),
        "killswitch_allow_lan": draw(st.booleans()),
        "killswitch_lan_cidrs": draw(st.none() | st.lists(cidr(), max_size=8)),
        "killswitch_management_cidrs": draw(st.lists(cidr(), max_size=4)),
        "killswitch_management_ports": draw(st.none() | st.lists(ports, max_size=4)),
        "killswitch_dns_servers": draw(dns),
        "killswitch_allow_dhcp": draw(st.booleans()),
        "killswitch_forward": draw(st.sampled_from(["block", "tunnel", "off"])),
        "killswitch_extra_outbound": draw(st.lists(extra, max_size=6)),
        "killswitch_log_drops": draw(st.booleans()),
        "killswitch_table": draw(st.none() | st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,31}", fullmatch=True)),
        "killswitch_safe_apply_timeout": draw(st.none() | st.just(0) | st.integers(min_value=10, max_value=86400)),
        "killswitch_guard_enabled": draw(st.none() | st.booleans()),
        "killswitch_guard_interval": draw(st.none() | st.integers(min_value=5, max_value=86400)),
    }
    answers = {name: draw(st.lists(st.one_of(addresses(4), addresses(6)), min_size=1, max_size=3)
                          .filter(lambda a: ipv6 == "tunnel" or any(":" not in x for x in a)))
               for name in HOSTNAMES}
    return variables, answers


def check_order(text):
    """The threat-model order in the output chain (see test_nft_render.py for the detailed checks)."""
    body = text.split("\tchain output {\n", 1)[1].split("\n\t}\n", 1)[0]
    rules = [line.strip() for line in body.splitlines()[1:]]
    jump = rules.index("meta l4proto { tcp, udp } th dport { 53, 853 } jump dns")
    assert all("@endpoint_" not in r for r in rules[jump:])
    assert all(not r.startswith('oifname "') or r == 'oifname "lo" accept' for r in rules[:jump])
    assert rules[-2:] == ["meta l4proto tcp counter reject with tcp reset",
                          "counter reject with icmpx admin-prohibited"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(generated=valid_variables())
def test_valid_policies_render_to_rulesets_nft_accepts(nft_accepts, generated):
    variables, answers = generated
    policy = parse_policy(variables, resolve=answers.__getitem__)
    text = render(policy)
    check_order(text)
    if policy.ipv6 == "block":
        assert "dns_v6" not in text
    nft_accepts(text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(generated=valid_variables())
def test_valid_policies_do_not_depend_on_input_order(generated):
    variables, answers = generated
    policy = parse_policy(variables, resolve=answers.__getitem__)
    reordered = {k: list(reversed(v)) if isinstance(v, list) else v for k, v in reversed(list(variables.items()))}
    again = parse_policy(reordered, resolve=answers.__getitem__)
    assert again == policy
    assert render(again) == render(policy)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(variables=near_valid)
def test_whatever_parses_nft_accepts(nft_accepts, variables):
    """Near-valid input, edge values included: a policy the parser lets through must load."""
    try:
        policy = parse_policy(variables, resolve=lambda name: ["198.51.100.9", "2001:db8::9"])
    except PolicyError:
        return
    nft_accepts(render(policy))
