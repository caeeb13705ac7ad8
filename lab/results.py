"""What a leak run produces: per host and case, packets sent and leaked; per host, a flap timeline and
the firewall it ran."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


# The case_id of the double-VPN chains' results (lab.doublevpn): standalone cases, one table per chain.
CHAIN_CASE_PREFIX = "doublevpn-"


@dataclass
class CaseResult:
    host: str
    case: str
    sent: int  # probe packets the client tried to send
    leaked: int  # packets from the client seen outside the tunnel that the policy does not allow
    control_seen: Optional[bool] = None  # positive control: the same probe without the kill switch was seen
    details: List[str] = field(default_factory=list)  # leaked packet summaries, notes
    error: str = ""  # the case could not run to its verdict (an exception): a failure, never a pass
    case_id: str = ""  # the lab.cases.CASES entry that gave it (one entry may give several results)
    seen: Dict[str, int] = field(default_factory=dict)  # probe packets by where they were seen (lab.doublevpn.WHERE)

    @property
    def passed(self) -> bool:
        return self.leaked == 0 and self.control_seen is not False and not self.error


@dataclass
class FlapTimeline:
    host: str
    duration: float  # seconds from the start of the stream
    tunnel: List[Tuple[float, bool]]  # (t, tunnel up?) at every state change, starting at t=0
    sink_seen: List[float]  # arrival times (s) of probe packets at the sink (through the tunnel)
    leaked: List[float]  # times (s) of packets seen leaving outside the tunnel
    sent: int
    flaps: int
    probes: List[List] = field(default_factory=list)  # every (protocol, destination, port) the streams rotate
    leaked_kinds: List[str] = field(default_factory=list)  # the probes among them seen leaking (lab.probe.unseen)


@dataclass
class HostFirewall:
    """The firewall a client ran its cases on, as the inventory set it and as the lab found it."""

    host: str
    backend: str  # killswitch_backend from the inventory
    alternative: str  # the iptables alternative the lab selected in the container
    iptables_version: str  # `iptables -V` inside the container
    in_force: str  # what the lab found holding the kill switch
    problems: List[str] = field(default_factory=list)  # any difference from the inventory: a failure
    vpn: str = ""  # the VPN client the host runs (lab.topology.Vpn.label: "WireGuard", "OpenVPN (udp)")

    @property
    def ok(self) -> bool:
        return not self.problems

    def label(self) -> str:
        """"nftables", or "iptables (legacy)" with the variant the container's iptables -V names."""
        if self.backend != "iptables":
            return self.backend
        variant = self.iptables_version.rpartition("(")[2].rstrip(")") if "(" in self.iptables_version else "?"
        return "iptables (%s)" % variant
