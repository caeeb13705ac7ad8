# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fast address path (plugins/plugin_utils/addresses.py) against the standard library it stands in for:
the same networks, the same collapse, the same text, and every other spelling left to ``ipaddress``."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.netlock.killswitch.plugins.plugin_utils.addresses import (
    canonical_network, collapse_family, host_network, network_text, v6_text)

CLASSES = {4: ipaddress.IPv4Network, 6: ipaddress.IPv6Network}
BITS = {4: 32, 6: 128}


@st.composite
def clustered_networks(draw):
    """Networks of one family packed into a few hundred addresses, so that they overlap, nest and touch."""
    version = draw(st.sampled_from((4, 6)))
    bits = BITS[version]
    base = draw(st.sampled_from((0, (1 << bits) - 512, 0xC6120000 if version == 4 else 0x20010DB8 << 96)))
    members = draw(st.lists(st.tuples(st.integers(0, 511), st.integers(bits - 10, bits) | st.integers(0, bits)),
                            max_size=14))
    return [CLASSES[version](((base + offset) % (1 << bits), length), strict=False) for offset, length in members]


@settings(max_examples=1000, deadline=None)
@given(clustered_networks())
def test_collapse_is_the_standard_librarys(networks):
    collapsed = collapse_family(networks)
    assert collapsed == tuple(ipaddress.collapse_addresses(networks))
    assert all(type(n) is type(networks[0]) for n in collapsed)


def test_collapse_examples():
    n = ipaddress.ip_network
    assert collapse_family([n("10.0.0.0/25"), n("10.0.0.128/25")]) == (n("10.0.0.0/24"),)
    assert collapse_family([n("10.0.0.3/32"), n("10.0.0.0/8"), n("10.1.0.0/16")]) == (n("10.0.0.0/8"),)
    assert collapse_family([n("0.0.0.1/32"), n("0.0.0.2/31"), n("0.0.0.0/32")]) == (n("0.0.0.0/30"),)
    assert collapse_family([n("255.255.255.255/32"), n("255.255.255.254/32")]) == (n("255.255.255.254/31"),)
    assert collapse_family([n("2001:db8::2/128"), n("2001:db8::/128")]) == (n("2001:db8::/128"), n("2001:db8::2/128"))


def test_collapse_keeps_a_network_that_merges_with_nothing():
    """No new object for a network that stands alone (the common case of a big allowlist)."""
    alone = ipaddress.ip_network("198.18.0.8/29")
    inside = ipaddress.ip_network("198.18.0.9/32")
    assert collapse_family([inside, alone])[0] is alone


@st.composite
def spellings(draw):
    """Canonical texts of addresses and networks, and their near misses."""
    version = draw(st.sampled_from((4, 6)))
    bits = BITS[version]
    hextets = st.sampled_from((0, 0, 0, 1, 0xFFFF)) | st.integers(0, 0xFFFF)
    if version == 6:
        value = 0
        for part in draw(st.lists(hextets, min_size=8, max_size=8)):
            value = value << 16 | part
        address = ipaddress.IPv6Address(value)
    else:
        address = ipaddress.IPv4Address(draw(st.integers(0, (1 << 32) - 1)))
    text = str(address)
    text = draw(st.sampled_from((text, text.upper(), text.replace(":0:", ":00:"), text.replace(".", ".0", 1),
                                 address.exploded if version == 6 else text)))
    prefix = draw(st.none() | st.integers(0, bits + 1).map(str) | st.sampled_from(("", "08", "+8", " 8", "\u0668")))
    return text if prefix is None else "%s/%s" % (text, prefix)


@settings(max_examples=1000, deadline=None)
@given(spellings())
def test_parse_is_the_standard_librarys_or_none(text):
    try:
        expected = ipaddress.ip_network(text, strict=False)
    except ValueError:
        expected = None
    parsed = canonical_network(text)
    if parsed is not None:
        assert parsed == expected and type(parsed) is type(expected)
    if expected is not None:
        assert network_text(expected) == str(expected)


@pytest.mark.parametrize("text", ["01.2.3.4", "1.2.3.4/032", "2001:DB8::1", "2001:db8:0:0:0:0:0:1", "1.2.3.4/255.0.0.0",
                                  "1.2.3.4/", "1.2.3.4/33", "::ffff:01.2.3.4", "fe80::1%eth0", "\u0661.2.3.4", "wg0", ""])
def test_other_spellings_go_to_ipaddress(text):
    assert canonical_network(text) is None


def test_canonical_spellings_are_fast():
    assert canonical_network("10.1.2.3/8") == ipaddress.ip_network("10.0.0.0/8")
    assert canonical_network("2001:db8::1") == ipaddress.ip_network("2001:db8::1/128")


def test_v6_text_compresses_the_first_longest_zero_run():
    for text in ("::", "::1", "1::", "::1:0:0:ffff:0:0", "1:0:0:1::", "2001:db8::1:0:0:1", "1:2:3:4:5:6:7:8",
                 "1:0:2:0:3:0:4:0", "::ffff:0:0", "::ffff:102:304"):
        value = int(ipaddress.IPv6Address(text))
        assert v6_text(value) == str(ipaddress.IPv6Address(value))


@pytest.mark.parametrize("text", ["198.18.0.53", "0.0.0.0", "255.255.255.255", "2001:db8::53", "::", "::ffff:1.2.3.4", "fe80::1%eth0"])
def test_host_network_is_ip_network(text):
    address = ipaddress.ip_address(text)
    network = host_network(address)
    assert network == ipaddress.ip_network(address) and str(network) == str(ipaddress.ip_network(address))
