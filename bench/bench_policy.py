"""Speed and memory of the policy core and renderer at fleet scale (pytest-benchmark).

    make bench    # or: pytest bench/ --benchmark-only

Targets (2-core machine): parse + render of 100k LAN/extra CIDRs under 5 s and 300 MiB peak;
`nft -c` of that ruleset is measured by tests/unit (it is nft's time, not ours).
"""

import ipaddress
import tracemalloc

import pytest

from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_nftables import render
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy

SIZES = (1_000, 100_000)


def variables(entries: int) -> dict:
    """Non-adjacent /30s in 10.0.0.0/8 and /31s in 198.18.0.0/15, so nothing collapses away."""
    lan = [str(ipaddress.IPv4Network((0x0A000000 + 8 * i, 30))) for i in range(entries // 2)]
    extra = [{"cidr": str(ipaddress.IPv4Network((0xC6120000 + 4 * i, 31))), "protocol": "tcp", "port": 443}
             for i in range(entries // 2)]
    return {
        "killswitch_tunnel_interfaces": ["wg0", "tun*"],
        "killswitch_endpoints": [{"address": "198.51.100.7", "port": 51820}],
        "killswitch_endpoint_mark": 51820,
        "killswitch_allow_lan": True,
        "killswitch_lan_cidrs": lan,
        "killswitch_extra_outbound": extra,
    }


@pytest.mark.parametrize("entries", SIZES)
def test_parse_and_render(benchmark, entries):
    raw = variables(entries)
    text = benchmark(lambda: render(parse_policy(raw)))
    assert text.count("/30") == entries // 2


@pytest.mark.parametrize("entries", SIZES)
def test_peak_memory(entries):
    raw = variables(entries)
    tracemalloc.start()
    render(parse_policy(raw))
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print("peak memory for %d entries: %.1f MiB" % (entries, peak / 2**20))
    assert peak < 300 * 2**20
