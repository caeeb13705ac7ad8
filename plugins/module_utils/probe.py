# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sockets of killswitch_verify: one packet at a time, bound to one interface, judged by the local firewall.

Every probe is bound to its interface with SO_BINDTODEVICE, so routing cannot move it to another one, and
sends one packet (a TCP probe at most two SYNs).  Nothing waits for a reply from the network: the answer is the
sending call's own result.  For a locally generated packet netfilter runs in the sending call itself, and a
drop or a reject in the output (or postrouting) hook makes that call fail with EPERM before the packet
reaches the device; a call that succeeds means the packet got past every local rule.

- UDP and the DNS query: ``sendto`` on a datagram socket.
- ICMP echo: ``sendto`` on a raw ICMP (ICMPv6) socket.
- TCP: ``connect`` cannot tell: the kernel swallows the EPERM of a dropped SYN and retries, so a SYN dropped
  by the firewall and a SYN that left and met no answer both look like a timeout.  So the SYN is first sent
  on a raw socket, whose ``sendto`` returns the verdict.  Only when the firewall refused it does a real
  ``connect`` follow (bounded by the timeout), to show what a program sees: ECONNREFUSED at once under a
  ``reject with tcp reset``, no answer under a drop; a connect that succeeds is an open path all the same.

Raw sockets and SO_BINDTODEVICE need root (CAP_NET_RAW); ``ProbeError`` says so.
"""

from __future__ import annotations

import errno
import os
import random
import select
import socket
import time
from typing import Any, Dict, Optional, Tuple

from ansible_collections.netlock.killswitch.plugins.module_utils import verify

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
IPPROTO_ICMPV6 = getattr(socket, "IPPROTO_ICMPV6", 58)


class ProbeError(RuntimeError):
    """A probe could not be set up (no raw sockets, no such interface): nothing was sent."""


class Prober:
    """Sends the probes of ``verify.traffic_probes``; ``timeout`` bounds the one wait there is (TCP connect)."""

    def __init__(self, timeout: float = 0.5):
        self.timeout = timeout

    def bound(self, family: int, kind: int, protocol: int, interface: str):
        """A socket bound to ``interface``; ProbeError when it cannot be made (nothing was sent)."""
        try:
            sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, kind, protocol)
        except OSError as exc:
            if exc.errno == errno.EAFNOSUPPORT:
                raise  # no IPv6 in this kernel: the caller reports the family as not routable
            raise ProbeError("cannot open a %s socket (%s): the probes need root (CAP_NET_RAW)"
                             % ("raw" if kind == socket.SOCK_RAW else "datagram", exc.strerror or exc))
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode() + b"\0")
        except OSError as exc:
            sock.close()
            if exc.errno == errno.ENODEV:
                raise  # gone since it was listed: the caller reports it as not routable
            raise ProbeError("cannot bind a socket to %s (SO_BINDTODEVICE): %s" % (interface, exc.strerror or exc))
        return sock

    def route(self, interface: str, family: int, target: str) -> Tuple[Optional[str], Optional[int]]:
        """``(source address, None)`` when the kernel routes ``target`` through ``interface``, else ``(None, errno)``.

        A datagram socket's ``connect`` looks the route up and sends nothing.
        """
        try:
            sock = self.bound(family, socket.SOCK_DGRAM, 0, interface)
        except OSError as exc:
            return None, exc.errno
        try:
            sock.connect((target, 9))
            return sock.getsockname()[0].split("%", 1)[0], None
        except OSError as exc:
            return None, exc.errno
        finally:
            sock.close()

    def send(self, interface: str, family: int, protocol: str, target: str, port: Optional[int]) -> Dict[str, Any]:
        """One probe: ``{outcome, detail}`` with outcome refused, sent, connected or unroutable (verify.py)."""
        if protocol == "tcp":
            return self.tcp(interface, family, target, port)
        ident = random.randint(1, 0xFFFF)
        if protocol == "icmp":
            kind, number = socket.SOCK_RAW, socket.IPPROTO_ICMP if family == 4 else IPPROTO_ICMPV6
            data, address = verify.icmp_echo(family, ident, 1), (target, 0)
        else:
            kind, number = socket.SOCK_DGRAM, 0
            data = verify.dns_query(ident, family=family) if protocol == "dns" else verify.PAYLOAD
            address = (target, port)
        try:
            sock = self.bound(family, kind, number, interface)
        except OSError as exc:
            return result(exc.errno, "socket()")
        try:
            sock.sendto(data, address)
            error = None
        except OSError as exc:
            error = exc.errno
        finally:
            sock.close()
        return result(error, "sendto()")

    def tcp(self, interface: str, family: int, target: str, port: int) -> Dict[str, Any]:
        source, error = self.route(interface, family, target)
        if source is None:
            return result(error, "the route lookup")
        syn = verify.tcp_syn(source, target, random.randint(32768, 60999), port, random.getrandbits(32))
        try:
            raw = self.bound(family, socket.SOCK_RAW, socket.IPPROTO_TCP, interface)
        except OSError as exc:
            return result(exc.errno, "socket()")
        try:
            raw.sendto(syn, (target, 0))
            error = None
        except OSError as exc:
            error = exc.errno
        finally:
            raw.close()
        found = result(error, "a SYN's sendto()")
        if found["outcome"] != verify.REFUSED:
            return found
        seen, error, elapsed = self.connect(interface, family, target, port)
        if seen == verify.CONNECTED:
            return dict(outcome=verify.CONNECTED, detail="a SYN's sendto() got %s, yet connect() connected in %.1f ms"
                        % (verify.errno_name(found["errno"]), elapsed * 1000), errno=None)
        after = ("got %s after %.1f ms" % (verify.errno_name(error), elapsed * 1000) if error is not None
                 else "had no answer within %.1f s" % self.timeout)
        found["detail"] += "; connect() %s" % after
        return found

    def connect(self, interface: str, family: int, target: str, port: int) -> Tuple[str, Optional[int], float]:
        """``(connected | refused | timeout, errno, seconds)`` of a non-blocking connect, closed before any retry."""
        sock = self.bound(family, socket.SOCK_STREAM, 0, interface)
        sock.setblocking(False)
        start = time.monotonic()
        try:
            try:
                sock.connect((target, port))
                return verify.CONNECTED, None, time.monotonic() - start
            except OSError as exc:
                if exc.errno not in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
                    return verify.REFUSED, exc.errno, time.monotonic() - start
            _readable, writable, _failed = select.select([], [sock], [], self.timeout)
            elapsed = time.monotonic() - start
            if not writable:
                return "timeout", None, elapsed
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            return (verify.REFUSED, error, elapsed) if error else (verify.CONNECTED, None, elapsed)
        finally:
            sock.close()


def result(number: Optional[int], call: str) -> Dict[str, Any]:
    """``{outcome, detail, errno}`` from a sending call's errno (None: it succeeded)."""
    outcome = verify.send_outcome(number)
    if number is None:
        detail = "%s succeeded" % call
    elif outcome == verify.UNROUTABLE:
        detail = "%s got %s (%s): no route, the firewall was not reached" % (call, verify.errno_name(number),
                                                                             os.strerror(number))
    else:
        detail = "%s got %s" % (call, verify.errno_name(number))
    return dict(outcome=outcome, detail=detail, errno=number)
