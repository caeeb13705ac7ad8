# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Role variables the benchmarks feed the real policy core: a typical host, a fleet of them, big allowlists.

Documentation and benchmark addresses only (198.18.0.0/15, 2001:db8::/32, 192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24) plus the private LAN ranges, so nothing generated here points at a real network.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, Iterator, List, Sequence

TUNNEL = "wg0"
ENDPOINT = "198.51.100.7"
ENDPOINT_PORT = 51820
# The big allowlists: /32s spaced by 2 from 198.18.0.0 (at most 50,000, up to 198.19.134.x) and /128s under
# 2001:db8:8000::/33.  The datapath benchmarks' own addresses are 198.19.254.0/24 and 2001:db8:fe::/64, outside them.
ALLOW_V4_BASE = int(ipaddress.IPv4Address("198.18.0.0"))
ALLOW_V4_MAX = 50_000
ALLOW_V6_BASE = int(ipaddress.IPv6Address("2001:db8:8000::"))


def allowlist(entries: int, ipv6: bool = False, extra: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """``entries`` non-adjacent extra_outbound exceptions (nothing collapses away), any protocol, and ``extra``
    addresses in the same sets: half IPv4 and half IPv6 when ``ipv6``.  Any protocol, so that a datapath
    benchmark's traffic to an ``extra`` address is matched by a lookup in the big set itself."""
    v6_count = entries // 2 if ipv6 else 0
    v4_count = entries - v6_count
    if v4_count > ALLOW_V4_MAX:
        raise ValueError("%d IPv4 exceptions do not fit non-adjacent below 198.19.135.0" % v4_count)
    items = [{"cidr": str(ipaddress.IPv4Address(ALLOW_V4_BASE + 2 * i))} for i in range(v4_count)]
    items += [{"cidr": str(ipaddress.IPv6Address(ALLOW_V6_BASE + 2 * i))} for i in range(v6_count)]
    return items + [{"cidr": address} for address in extra]


def big_policy(entries: int, extra: Sequence[str] = (), **changes: Any) -> Dict[str, Any]:
    """A host with an ``entries``-long allowlist (half IPv6) plus ``extra``, IPv6 through the tunnel."""
    variables = {
        "killswitch_tunnel_interfaces": [TUNNEL],
        "killswitch_endpoints": [{"address": ENDPOINT, "port": ENDPOINT_PORT}],
        "killswitch_endpoint_mark": ENDPOINT_PORT,
        "killswitch_ipv6": "tunnel",
        "killswitch_management_cidrs": ["192.0.2.10/32"],
        "killswitch_extra_outbound": allowlist(entries, ipv6=True, extra=extra),
    }
    variables.update(changes)
    return variables


def fleet_host(index: int) -> Dict[str, Any]:
    """Host ``index`` of a generated inventory: the shape of inventories/example's group_vars, with
    per-host endpoints, management address, LAN and a handful of exceptions, so no two hosts are equal."""
    endpoint = ipaddress.IPv4Address(int(ipaddress.IPv4Address("203.0.113.0")) + index % 250 + 1)
    management = ipaddress.IPv4Address(int(ipaddress.IPv4Address("192.0.2.0")) + index % 250 + 1)
    site = index % 4096
    return {
        "killswitch_tunnel_interfaces": [TUNNEL, "tun*"],
        "killswitch_endpoints": [{"address": str(endpoint), "port": ENDPOINT_PORT},
                                 {"address": "2001:db8:1::%x" % (index % 65536 + 1), "port": ENDPOINT_PORT}],
        "killswitch_endpoint_mark": ENDPOINT_PORT,
        "killswitch_ipv6": "tunnel",
        "killswitch_allow_lan": True,
        "killswitch_lan_cidrs": ["10.%d.%d.0/24" % (site // 256, site % 256), "fd00:%x::/64" % site],
        "killswitch_management_cidrs": [str(management) + "/32"],
        "killswitch_dns_servers": ["198.18.0.53"],
        "killswitch_extra_outbound": [
            {"cidr": "198.19.%d.0/24" % (index % 256), "protocol": "tcp", "port": 443},
            {"cidr": "198.19.255.%d/32" % (index % 256), "protocol": "udp", "port": 123},
            {"cidr": "2001:db8:2:%x::/64" % (index % 65536), "protocol": "tcp", "port": 443},
        ],
        "killswitch_log_drops": index % 2 == 0,
    }


def fleet(hosts: int) -> Iterator[Dict[str, Any]]:
    return (fleet_host(index) for index in range(hosts))
