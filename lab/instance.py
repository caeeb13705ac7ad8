"""A second leak lab beside the first: the same topology under other names, label and networks.

``NETLOCK_LAB=drift`` (molecule/drift) makes lab.topology hand every module the drift lab instead of the
leak lab: containers ks-drift-*, label netlock.lab=drift, networks ks-drift-lan and ks-drift-inet in their
own ranges, inventory molecule/drift/inventory.  Each host keeps its place in its network (the router is
still .254, the first client .11), so every address moves with its network and nothing else changes:
both labs can run at the same time, and ``python -m lab down`` of one never touches the other.

Pure functions only (no I/O): tests/unit/lab/test_flush.py checks them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Dict, Iterable, List, Sequence, Tuple

ENV = "NETLOCK_LAB"
DEFAULT = "leak"


@dataclass(frozen=True)
class Instance:
    prefix: str  # replaces the leading "ks-" of every container and network name
    label: str
    networks: Dict[str, Tuple[str, str]]  # leak lab network name -> (IPv4, IPv6) subnet of this instance
    inventory: str  # relative to the repository root


INSTANCES: Dict[str, Instance] = {
    "drift": Instance("ks-drift-", "netlock.lab=drift",
                      {"ks-lan": ("198.18.40.0/24", "2001:db8:40::/64"),
                       "ks-inet": ("198.18.41.0/24", "2001:db8:41::/64")},
                      "molecule/drift/inventory"),
}


def instance(name: str) -> Instance:
    try:
        return INSTANCES[name]
    except KeyError:
        raise ValueError("%s=%r: no such lab; known: %s, %s" % (ENV, name, DEFAULT, ", ".join(sorted(INSTANCES))))


def rename(name: str, inst: Instance) -> str:
    if not name.startswith("ks-"):
        raise ValueError("lab name %r does not start with ks-" % name)
    return inst.prefix + name[len("ks-"):]


def move_address(address: str, old: str, new: str) -> str:
    """The address at the same offset in the new network (198.18.1.254 in 198.18.1.0/24 -> .254 in new)."""
    old_net, new_net = ipaddress.ip_network(old), ipaddress.ip_network(new)
    ip = ipaddress.ip_address(address)
    if ip not in old_net:
        raise ValueError("%s is not in %s" % (address, old))
    if old_net.prefixlen != new_net.prefixlen or old_net.version != new_net.version:
        raise ValueError("%s and %s differ in size or family" % (old, new))
    return str(new_net.network_address + (int(ip) - int(old_net.network_address)))


def move_net(net, inst: Instance):
    """A lab.topology.Net of the leak lab as it is in this instance."""
    v4, v6 = inst.networks[net.name]
    return replace(net, name=rename(net.name, inst), v4=v4, v6=v6)


def move_host(host, nets: Sequence, inst: Instance):
    """A lab.topology.Host of the leak lab as it is in this instance (nets: the leak lab's Net objects)."""
    by_name = {net.name: net for net in nets}
    addresses = {}
    for net_name, (v4, v6) in host.addresses.items():
        old = by_name[net_name]
        new = move_net(old, inst)
        addresses[new.name] = (move_address(v4, old.v4, new.v4), move_address(v6, old.v6, new.v6))
    return replace(host, name=rename(host.name, inst), addresses=addresses)


def move(name: str, networks: Iterable, hosts: Iterable) -> Tuple[List, List, Instance]:
    """(networks, hosts, instance): the leak lab's networks and hosts, in their order, moved to instance name."""
    inst = instance(name)
    networks = list(networks)
    return [move_net(n, inst) for n in networks], [move_host(h, networks, inst) for h in hosts], inst
