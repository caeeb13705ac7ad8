"""A lab resolver (stdlib only): answers A and AAAA queries over UDP from a fixed table, NXDOMAIN for any
other name, so that names used in lab policies resolve to lab addresses and nowhere else.

    python3 -m lab.labdns --listen 198.18.92.2 --record vpn.lab.test=198.18.91.2 --record vpn.lab.test=2001:db8:91::2
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import struct
import sys
import time
from typing import Dict, List, Optional, Tuple

TYPE_A, TYPE_AAAA, CLASS_IN = 1, 28, 1


def parse_question(query: bytes) -> Optional[Tuple[int, str, int, int]]:
    """(id, name, type, end offset of the question) of a standard query, None for anything else."""
    if len(query) < 12:
        return None
    ident, flags, questions = struct.unpack_from("!HHH", query)
    if flags & 0x8000 or questions != 1:
        return None
    labels, offset = [], 12
    while offset < len(query) and query[offset]:
        length = query[offset]
        if length > 63:
            return None
        labels.append(query[offset + 1:offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    if offset + 5 > len(query):
        return None
    kind, _klass = struct.unpack_from("!HH", query, offset + 1)
    return ident, ".".join(labels).lower(), kind, offset + 5


def answer(query: bytes, records: Dict[str, List[str]]) -> Optional[bytes]:
    parsed = parse_question(query)
    if parsed is None:
        return None
    ident, name, kind, end = parsed
    family = {TYPE_A: 4, TYPE_AAAA: 6}.get(kind)
    addresses = [ipaddress.ip_address(a) for a in records.get(name, [])]
    matching = [a for a in addresses if a.version == family]
    rcode = 0 if name in records else 3  # NXDOMAIN for names we do not hold
    header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, len(matching), 0, 0)
    body = query[12:end]
    for address in matching:
        body += struct.pack("!HHHIH", 0xC00C, kind, CLASS_IN, 60, len(address.packed)) + address.packed
    return header + body


def serve(listen: str, records: Dict[str, List[str]], seconds: float, port: int = 53) -> None:
    sock = socket.socket(socket.AF_INET6 if ":" in listen else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((listen, port))
    sock.settimeout(0.5)
    print("serving", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            query, peer = sock.recvfrom(512)
        except socket.timeout:
            continue
        response = answer(query, records)
        if response:
            sock.sendto(response, peer)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m lab.labdns")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--record", action="append", default=[], help="name=address (repeat)")
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args(argv)
    records: Dict[str, List[str]] = {}
    for item in args.record:
        name, address = item.split("=", 1)
        records.setdefault(name.lower().rstrip("."), []).append(str(ipaddress.ip_address(address)))
    serve(args.listen, records, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
