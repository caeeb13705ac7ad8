"""Every leak case and the flap stream against every client, the clients side by side.

Each client runs the full case list, then its flap stream, in a thread of its own.  A case changes
only its own client, so cases of different clients overlap, except the EXCLUSIVE ones of lab.cases,
which change what every client depends on: each runs while no other case runs anywhere.  Before and
after its cases, each client's firewall is checked against the inventory (lab.cases.host_firewall).
A case that raises is recorded as failed with its error; the other cases and clients go on.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence

from lab import cases
from lab.results import CaseResult, FlapTimeline, HostFirewall
from lab.topology import Host

FLAP_CASE = "flap stream"
# (host, what it is doing now, steps done since the last call)
Notify = Callable[[str, str, int], None]


class SharedExclusiveLock:
    """Many holders in shared mode, or one in exclusive mode; a waiting exclusive holder goes first."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._exclusive_waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive and not self._exclusive_waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._condition:
                self._shared -= 1
                self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._exclusive_waiting += 1
            self._condition.wait_for(lambda: not self._exclusive and not self._shared)
            self._exclusive_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._condition:
                self._exclusive = False
                self._condition.notify_all()


@dataclass
class Run:
    results: List[CaseResult] = field(default_factory=list)
    timelines: List[FlapTimeline] = field(default_factory=list)
    firewalls: List[HostFirewall] = field(default_factory=list)
    seconds: float = 0.0

    def of(self, host: str, case: Optional[str] = None) -> List[CaseResult]:
        """The results of one client, of one case of the CASES table when given (a case may give several)."""
        return [r for r in self.results if r.host == host and (case is None or r.case_id == case)]


def _error(host: Host, case: str, exc: BaseException) -> CaseResult:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return CaseResult(host.name, case, 0, 0, details=traceback.format_exc().splitlines()[-12:], error=text,
                      case_id=case)


def _checked_firewall(host: Host, when: str) -> HostFirewall:
    try:
        checked = cases.host_firewall(host)
    except Exception as exc:  # noqa: BLE001 -- a check that cannot run is a failed check
        return HostFirewall(host.name, "?", "?", "", "", ["%s the cases: the check failed: %s" % (when, exc)],
                            vpn=host.vpn.label())
    checked.problems = ["%s the cases: %s" % (when, p) for p in checked.problems]
    return checked


def run_client(host: Host, names: Sequence[str], flaps: int, lab_lock: SharedExclusiveLock, notify: Notify):
    results: List[CaseResult] = []
    timelines: List[FlapTimeline] = []
    notify(host.name, "checking the firewall", 0)
    before = _checked_firewall(host, "before")
    for name in names:
        notify(host.name, name, 0)
        scope = lab_lock.exclusive() if name in cases.EXCLUSIVE else lab_lock.shared()
        with scope:
            try:
                outcome = cases.run_case(name, host)
            except Exception as exc:  # noqa: BLE001 -- recorded as this case's failure
                outcome = [_error(host, name, exc)]
        for result in outcome:
            result.case_id = name
        results += outcome
        notify(host.name, name, 1)
    notify(host.name, "flap stream, %d flaps" % flaps, 0)
    with lab_lock.shared():
        try:
            timelines.append(cases.flap_stream(host, flaps=flaps))
        except Exception as exc:  # noqa: BLE001
            results.append(_error(host, FLAP_CASE, exc))
    after = _checked_firewall(host, "after")
    before.problems += [p for p in after.problems if p not in before.problems]
    notify(host.name, "done", 1)
    return results, timelines, before


def run_all(hosts: Sequence[Host], names: Sequence[str], flaps: int = 20, notify: Optional[Notify] = None,
            concurrent: bool = True) -> Run:
    """Every named case and the flap stream on every host; clients side by side unless concurrent is False."""
    notify = notify or (lambda _host, _what, _done: None)
    lab_lock = SharedExclusiveLock()
    run = Run()
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(hosts) if concurrent else 1, thread_name_prefix="lab") as pool:
        futures = [pool.submit(run_client, host, names, flaps, lab_lock, notify) for host in hosts]
        for future in futures:
            results, timelines, checked = future.result()
            run.results += results
            run.timelines += timelines
            run.firewalls.append(checked)
    run.seconds = time.monotonic() - start
    return run
