# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The policy's address work on integers: parse, collapse and print networks fast, with the standard library's results.

``ipaddress`` parses, sorts, collapses and prints one object at a time in Python; an allowlist of 100,000 entries
spent seconds there.  These functions give exactly what ``ipaddress`` gives (the same ``IPv4Network`` and
``IPv6Network`` objects, the same text) and hand every spelling they are not sure of to ``ipaddress`` itself, so
what is valid, and every error, stays the standard library's.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import List, Optional, Sequence, Tuple, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_BITS = {4: 32, 6: 128}
_CLASSES = {4: ipaddress.IPv4Network, 6: ipaddress.IPv6Network}
# Runs of zero hextets, longest first, as they appear between colons in ":" + "%x:%x:...:%x" + ":".
_ZERO_RUNS = tuple(":0" * length + ":" for length in range(8, 1, -1))
# ::ffff:0:0/96, IPv4-mapped addresses: newer Pythons print them in mixed notation, so ipaddress prints them.
_MAPPED_PREFIX = 0xFFFF


def v4_text(value: int) -> str:
    return "%d.%d.%d.%d" % (value >> 24, value >> 16 & 0xFF, value >> 8 & 0xFF, value & 0xFF)


def v6_text(value: int) -> str:
    """``str(IPv6Address(value))``: lower case, the longest run of zero hextets (the first of equals) as '::'."""
    if value >> 32 == _MAPPED_PREFIX:
        return str(ipaddress.IPv6Address(value))
    text = "%x:%x:%x:%x:%x:%x:%x:%x" % (value >> 112, value >> 96 & 0xFFFF, value >> 80 & 0xFFFF, value >> 64 & 0xFFFF,
                                        value >> 48 & 0xFFFF, value >> 32 & 0xFFFF, value >> 16 & 0xFFFF, value & 0xFFFF)
    # RFC 5952, as ipaddress prints: the longest run of two or more zero hextets (the first of equals) becomes '::'.
    padded = ":%s:" % text
    for run in _ZERO_RUNS:
        at = padded.find(run)
        if at >= 0:
            return padded[1:at] + "::" + padded[at + len(run):-1]
    return text


_TEXT = {4: v4_text, 6: v6_text}


def network_text(network: Network) -> str:
    """``str(network)``, faster."""
    address = network.network_address
    if network.version == 4:
        return "%s/%d" % (v4_text(int(address)), network.prefixlen)
    if getattr(address, "scope_id", None):
        return str(network)
    return "%s/%d" % (v6_text(int(address)), network.prefixlen)


def host_network(address: Address) -> Network:
    """``ip_network(address)`` for an address object, without the text round trip ipaddress makes."""
    if getattr(address, "scope_id", None):
        return ipaddress.ip_network(address)
    return _CLASSES[address.version]((int(address), address.max_prefixlen))


def canonical_network(text: str) -> Optional[Network]:
    """``ip_network(text, strict=False)`` when ``text`` is an address spelt as the C library prints it (no leading
    zeros, lower case, zeros compressed: a spelling ipaddress reads the same), with or without a decimal prefix
    length; None for any other spelling, valid or not: the caller asks ``ipaddress``, which then judges it."""
    address, slash, prefix = text.partition("/")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        packed = socket.inet_pton(family, address)
        if socket.inet_ntop(family, packed) != address:
            return None  # leading zeros, upper case, uncompressed zeros...: ipaddress's rules decide
    except (OSError, ValueError):
        return None
    value = int.from_bytes(packed, "big")
    version = 6 if family == socket.AF_INET6 else 4
    bits = _BITS[version]
    if not slash:
        length = bits
    elif prefix.isascii() and prefix.isdigit() and str(int(prefix)) == prefix and int(prefix) <= bits:
        length = int(prefix)
    else:
        return None
    host_bits = (1 << (bits - length)) - 1
    return _CLASSES[version]((value & ~host_bits, length))


def collapse_family(networks: Sequence[Network]) -> Tuple[Network, ...]:
    """``tuple(ipaddress.collapse_addresses(networks))`` for networks of one family: the fewest networks that cover
    the same addresses, sorted.  Integer ranges, merged in one pass; a network that merges with nothing is kept as is."""
    if len(networks) < 2:
        return tuple(networks)
    version = networks[0].version
    bits = _BITS[version]
    # (first, -prefix length, last, network): at one start the biggest network comes first and covers the rest.
    spans = sorted((int(n.network_address), -n.prefixlen, int(n.network_address) | ((1 << (bits - n.prefixlen)) - 1), n)
                   for n in networks)
    out: List[Network] = []
    first, _length, last, widest = spans[0]
    for start, _length, end, network in spans[1:]:
        if start <= last + 1:  # overlaps or touches the current range
            if end > last:
                last, widest = end, None
            continue
        _emit(out, version, first, last, widest)
        first, last, widest = start, end, network
    _emit(out, version, first, last, widest)
    return tuple(out)


def _emit(out: List[Network], version: int, first: int, last: int, whole: Optional[Network]) -> None:
    """Append the range first..last: ``whole`` when one network is exactly that range, else its aligned blocks."""
    if whole is not None:
        out.append(whole)
        return
    bits, network_class = _BITS[version], _CLASSES[version]
    while first <= last:
        # The biggest block aligned at ``first`` that does not pass ``last``.
        size = bits if first == 0 else (first & -first).bit_length() - 1
        size = min(size, (last - first + 1).bit_length() - 1)
        out.append(network_class((first, bits - size)))
        first += 1 << size
