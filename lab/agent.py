"""Runs inside lab containers (stdlib only): bounded probes that carry a canary, and a probe stream.

    python3 agent.py probe --canary C --target 198.18.2.20 --target 2001:db8:2::20 --dns 198.18.1.5
    python3 agent.py stream --canary C --target 198.18.2.20 --rate 600 --seconds 30
    python3 agent.py stream --mix --canary C --target 198.18.2.20 --target 2001:db8:2::20 --dns 198.18.1.5

Every probe is bounded: one TCP connect per target and port, a few UDP datagrams, two pings,
one DNS query over UDP, TCP and TLS port per resolver, each with a short timeout.
Prints JSON: {"sent": packets attempted, "reached": [what got an answer], "probes": [[protocol, destination,
port], ...]}: every distinct packet kind it sent (port 0 for ICMP), which a positive control must each see.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time

TIMEOUT = 2.0


def family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def dns_query(canary: str) -> bytes:
    """A minimal DNS query for <canary>.leak.test, type A."""
    header = struct.pack("!HHHHHH", 0x4E4C, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in (canary.lower(), "leak", "test"))
    return header + labels + b"\x00" + struct.pack("!HH", 1, 1)


def tcp(address: str, port: int, payload: bytes) -> bool:
    try:
        with socket.socket(family(address), socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect((address, port))
            sock.sendall(payload)
            return True
    except OSError:
        return False


def udp(address: str, port: int, payload: bytes, count: int) -> int:
    sent = 0
    with socket.socket(family(address), socket.SOCK_DGRAM) as sock:
        for _attempt in range(count):
            try:
                sock.sendto(payload, (address, port))
                sent += 1
            except OSError:  # EPERM from the kill switch's reject: the attempt still counts
                sent += 1
            time.sleep(0.02)
    return sent


def ping(address: str, canary: str, count: int = 2) -> bool:
    pattern = canary.encode().hex()[:32]
    cmd = ["ping", "-n", "-c", str(count), "-W", "1", "-i", "0.2", "-p", pattern, address]
    return subprocess.run(cmd, capture_output=True, timeout=10, check=False).returncode == 0


def probe(args) -> dict:
    marker = args.canary.encode()
    sent, reached, probes = 0, [], []
    for target in args.target:
        for port in args.tcp_port:
            sent += 1
            probes.append(["tcp", target, port])
            if tcp(target, port, marker + b"\n"):
                reached.append("tcp %s:%d" % (target, port))
        for port in args.udp_port:
            sent += udp(target, port, marker, args.udp_count)
            probes.append(["udp", target, port])
        if not args.no_icmp:
            sent += 2
            probes.append(["icmp", target, 0])
            if ping(target, args.canary):
                reached.append("icmp %s" % target)
    for resolver in args.dns:
        query = dns_query(args.canary)
        sent += udp(resolver, 53, query, 1)
        probes.append(["udp", resolver, 53])
        for port in (53, 853):
            sent += 1
            probes.append(["tcp", resolver, port])
            if tcp(resolver, port, struct.pack("!H", len(query)) + query):
                reached.append("tcp %s:%d" % (resolver, port))
    return {"sent": sent, "reached": reached, "probes": probes}


def mix_kinds(args) -> list:
    """--mix: the stream's rotation, one packet per entry: (proto, address, port) for UDP to every --target
    and --udp-port, a TCP connect to every --target and --tcp-port, and a DNS query to every --dns."""
    kinds = []
    for target in args.target:
        kinds += [("udp", target, port) for port in args.udp_port]
        kinds += [("tcp", target, port) for port in args.tcp_port]
    return kinds + [("dns", resolver, 53) for resolver in args.dns]


def mixed_stream(args) -> dict:
    """--mix: the rotation of mix_kinds at a fixed rate.  UDP carries the canary and a sequence number, DNS
    asks for <canary>.leak.test, TCP is one SYN per packet (a non-blocking connect, closed at once)."""
    kinds = mix_kinds(args)
    marker, query = args.canary.encode(), dns_query(args.canary)
    datagram = {socket.AF_INET: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
                socket.AF_INET6: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)}
    interval = 1.0 / args.rate
    sent = 0
    start = time.monotonic()
    try:
        while time.monotonic() - start < args.seconds:
            if sent % 100 == 0 and args.stop_file and os.path.exists(args.stop_file):
                break
            proto, address, port = kinds[sent % len(kinds)]
            try:
                if proto == "tcp":
                    with socket.socket(family(address), socket.SOCK_STREAM) as sock:
                        sock.setblocking(False)
                        sock.connect_ex((address, port))
                else:
                    payload = query if proto == "dns" else b"%s %d" % (marker, sent)
                    datagram[family(address)].sendto(payload, (address, port))
            except OSError:
                pass  # refused locally by the kill switch: still an attempt
            sent += 1
            delay = start + sent * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        for sock in datagram.values():
            sock.close()
    return {"sent": sent, "reached": [], "seconds": time.monotonic() - start, "kinds": len(kinds),
            "probes": [["udp" if proto == "dns" else proto, address, port] for proto, address, port in kinds]}


def stream(args) -> dict:
    """UDP datagrams at a fixed rate; the payload carries the canary and a sequence number."""
    if args.mix:
        return mixed_stream(args)
    interval = 1.0 / args.rate
    sent = 0
    with socket.socket(family(args.target[0]), socket.SOCK_DGRAM) as sock:
        start = time.monotonic()
        while time.monotonic() - start < args.seconds:
            if sent % 100 == 0 and args.stop_file and os.path.exists(args.stop_file):
                break
            try:
                sock.sendto(b"%s %d" % (args.canary.encode(), sent), (args.target[0], args.udp_port[0]))
            except OSError:
                pass  # rejected locally while the tunnel is down: still an attempt
            sent += 1
            delay = start + sent * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return {"sent": sent, "reached": []}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("mode", choices=["probe", "stream"])
    parser.add_argument("--canary", required=True)
    parser.add_argument("--target", action="append", default=[])
    parser.add_argument("--dns", action="append", default=[])
    parser.add_argument("--tcp-port", type=int, action="append")
    parser.add_argument("--udp-port", type=int, action="append")
    parser.add_argument("--udp-count", type=int, default=3)
    parser.add_argument("--no-icmp", action="store_true")
    parser.add_argument("--no-tcp", action="store_true", help="probe: no TCP connect (else --tcp-port or 8080)")
    parser.add_argument("--no-udp", action="store_true", help="probe: no UDP datagram (else --udp-port or 9999)")
    parser.add_argument("--rate", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=10, help="the stream's upper bound")
    parser.add_argument("--stop-file", help="the stream ends early once this file exists")
    parser.add_argument("--mix", action="store_true", help="stream: UDP, TCP and DNS to every target (mix_kinds)")
    args = parser.parse_args(argv)
    args.tcp_port = [] if args.no_tcp else args.tcp_port if args.tcp_port is not None else [8080]
    args.udp_port = [] if args.no_udp else args.udp_port if args.udp_port is not None else [9999]
    json.dump(probe(args) if args.mode == "probe" else stream(args), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
