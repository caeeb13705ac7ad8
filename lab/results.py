"""What a leak run produces: per host and case, packets sent and leaked; per host, a flap timeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple


@dataclass
class CaseResult:
    host: str
    case: str
    sent: int  # probe packets the client tried to send
    leaked: int  # packets from the client seen outside the tunnel that the policy does not allow
    control_seen: Optional[bool] = None  # positive control: the same probe without the kill switch was seen
    details: List[str] = field(default_factory=list)  # leaked packet summaries, notes

    @property
    def passed(self) -> bool:
        return self.leaked == 0 and self.control_seen is not False


@dataclass
class FlapTimeline:
    host: str
    duration: float  # seconds from the start of the stream
    tunnel: List[Tuple[float, bool]]  # (t, tunnel up?) at every state change, starting at t=0
    sink_seen: List[float]  # arrival times (s) of probe packets at the sink (through the tunnel)
    leaked: List[float]  # times (s) of packets seen leaving outside the tunnel
    sent: int
    flaps: int
