"""WebRTC leak check: what a STUN/TURN server learns about a client when a real browser gathers ICE candidates.

A web page can learn a visitor's address without any request of its own: WebRTC sends STUN Binding requests
(UDP) and TURN Allocate requests (TCP) to servers the page names, and the server answers with the address it
saw (the server-reflexive candidate).  Behind a VPN that address must be the VPN server's; with the tunnel
down, no request may arrive at all.

Two small servers, run as ``python3 -m lab.webrtc``:

* ``observe``: the STUN/TURN server on the sink.  It answers Binding requests over UDP with the
  XOR-MAPPED-ADDRESS (RFC 8489) and records, for every request over UDP or TCP, IPv4 or IPv6, the source
  address it came from, one JSON line each.  It never relays: a TURN Allocate is recorded and refused.
* ``page``: an HTTP server on the client's loopback that serves the page Chromium opens and writes the
  candidates the page gathered (what a web site would learn) to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterable, List, Optional, Tuple

from lab.netns import ENDPOINT_PORT, PHYSICAL, SINK, VPN_PUBLIC, TunnelLab, missing_tools

STUN_PORT = 3478
MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST, BINDING_SUCCESS = 0x0001, 0x0101
ALLOCATE_REQUEST, ALLOCATE_ERROR = 0x0003, 0x0113
XOR_MAPPED_ADDRESS, ERROR_CODE = 0x0020, 0x0009
HEADER = struct.Struct("!HHI12s")
# The probes a gathering makes: one request per (transport, family) of the servers the page names.
PROBES = (("udp", 4), ("udp", 6), ("tcp", 4), ("tcp", 6))


def parse_header(data: bytes) -> Optional[Tuple[int, bytes]]:
    """(message type, transaction id) of a STUN message, None for anything else (the magic cookie and the
    two zero top bits of RFC 8489 section 5 tell it from other traffic)."""
    if len(data) < HEADER.size:
        return None
    kind, length, cookie, transaction = HEADER.unpack_from(data)
    if cookie != MAGIC_COOKIE or kind & 0xC000 or length % 4 or len(data) < HEADER.size + length:
        return None
    return kind, transaction


def _attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def _message(kind: int, transaction: bytes, attributes: bytes) -> bytes:
    return HEADER.pack(kind, len(attributes), MAGIC_COOKIE, transaction) + attributes


def binding_success(transaction: bytes, address: str, port: int) -> bytes:
    """A Binding success response carrying the source as XOR-MAPPED-ADDRESS."""
    packed = socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    key = struct.pack("!I", MAGIC_COOKIE) + (transaction if len(packed) == 16 else b"")
    xored = bytes(a ^ b for a, b in zip(packed, key))
    family = 0x02 if len(packed) == 16 else 0x01
    value = struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + xored
    return _message(BINDING_SUCCESS, transaction, _attribute(XOR_MAPPED_ADDRESS, value))


def xor_mapped_address(message: bytes) -> Optional[Tuple[str, int]]:
    """The (address, port) of a response's XOR-MAPPED-ADDRESS (the client side of binding_success)."""
    header = parse_header(message)
    if header is None:
        return None
    transaction, offset = header[1], HEADER.size
    while offset + 4 <= len(message):
        kind, length = struct.unpack_from("!HH", message, offset)
        value = message[offset + 4:offset + 4 + length]
        if kind == XOR_MAPPED_ADDRESS:
            family, port = value[1], struct.unpack_from("!H", value, 2)[0] ^ (MAGIC_COOKIE >> 16)
            key = struct.pack("!I", MAGIC_COOKIE) + (transaction if family == 0x02 else b"")
            packed = bytes(a ^ b for a, b in zip(value[4:], key))
            return socket.inet_ntop(socket.AF_INET6 if family == 0x02 else socket.AF_INET, packed), port
        offset += 4 + length + (-length % 4)
    return None


def allocate_refused(transaction: bytes) -> bytes:
    """A TURN Allocate error response, 403 Forbidden: the observer records, it never relays."""
    reason = b"netlock observer: no relay"
    return _message(ALLOCATE_ERROR, transaction, _attribute(ERROR_CODE, struct.pack("!HBB", 0, 4, 3) + reason))


# --------------------------------------------------------------------------- observer (runs on the sink)

class Observer:
    """STUN over UDP and TURN over TCP on every address of the host, IPv4 and IPv6; one JSON line per
    request received: transport, family, source address, message type."""

    def __init__(self, log_path: str, port: int = STUN_PORT) -> None:
        self.log = open(log_path, "a", buffering=1)  # pylint: disable=consider-using-with
        self.selector = selectors.DefaultSelector()
        self.lock = threading.Lock()
        for family, any_address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            for sock in (udp, tcp):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((any_address, port))
            tcp.listen(16)
            self.selector.register(udp, selectors.EVENT_READ, self._datagram)
            self.selector.register(tcp, selectors.EVENT_READ, self._accept)

    def record(self, transport: str, source: str, message: Optional[Tuple[int, bytes]]) -> None:
        family = 6 if ":" in source else 4
        entry = {"transport": transport, "family": family, "source": source,
                 "type": None if message is None else message[0], "time": time.time()}
        with self.lock:
            self.log.write(json.dumps(entry, sort_keys=True) + "\n")

    def _datagram(self, sock: socket.socket) -> None:
        data, peer = sock.recvfrom(2048)
        message = parse_header(data)
        self.record("udp", peer[0], message)
        if message and message[0] == BINDING_REQUEST:
            sock.sendto(binding_success(message[1], peer[0], peer[1]), peer)

    def _accept(self, sock: socket.socket) -> None:
        connection, peer = sock.accept()
        threading.Thread(target=self._stream, args=(connection, peer[0]), daemon=True).start()

    def _stream(self, connection: socket.socket, source: str) -> None:
        with connection:
            connection.settimeout(5)
            try:
                data = connection.recv(2048)
            except OSError:
                data = b""
            message = parse_header(data)
            self.record("tcp", source, message)
            if message and message[0] == ALLOCATE_REQUEST:
                try:
                    connection.sendall(allocate_refused(message[1]))
                except OSError:
                    pass

    def serve(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for key, _mask in self.selector.select(timeout=0.5):
                key.data(key.fileobj)


def read_log(path: str) -> List[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def requests_by_probe(entries: Iterable[dict]) -> Dict[Tuple[str, int], set]:
    """For each (transport, family) probe, the source addresses the observer saw it from."""
    seen: Dict[Tuple[str, int], set] = {probe: set() for probe in PROBES}
    for entry in entries:
        seen.setdefault((entry["transport"], entry["family"]), set()).add(entry["source"])
    return seen


# --------------------------------------------------------------------------- the page (runs on the client)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>netlock WebRTC probe</title></head>
<body><pre id="out">gathering</pre>
<script>
const servers = %(servers)s;
const candidates = [];
let reported = false;
function report(reason) {
  if (reported) return;
  reported = true;
  document.getElementById("out").textContent = reason + "\\n" + candidates.join("\\n");
  fetch("/result", {method: "POST", body: JSON.stringify({reason: reason, candidates: candidates})});
}
const pc = new RTCPeerConnection({iceServers: servers, iceCandidatePoolSize: 0});
pc.createDataChannel("netlock");
pc.onicecandidate = (event) => {
  if (event.candidate && event.candidate.candidate) candidates.push(event.candidate.candidate);
  else if (!event.candidate) report("complete");
};
pc.createOffer().then((offer) => pc.setLocalDescription(offer)).catch((error) => report("error " + error));
setTimeout(() => report("timeout"), %(gather_ms)d);
</script></body></html>
"""


def ice_servers(v4: str, v6: str, port: int = STUN_PORT) -> List[dict]:
    """STUN over UDP and TURN over TCP, each on the observer's IPv4 and IPv6 address."""
    return [{"urls": ["stun:%s:%d" % (v4, port), "stun:[%s]:%d" % (v6, port)]},
            {"urls": ["turn:%s:%d?transport=tcp" % (v4, port), "turn:[%s]:%d?transport=tcp" % (v6, port)],
             "username": "netlock", "credential": "netlock"}]


def page_html(servers: List[dict], gather_ms: int) -> str:
    return PAGE % {"servers": json.dumps(servers), "gather_ms": gather_ms}


def candidate_addresses(candidates: Iterable[str], kind: str = "srflx") -> set:
    """The addresses of the candidates of one type (RFC 8839 candidate-attribute: the fifth field is the
    address, the eighth the type), as a web page reads them."""
    found = set()
    for line in candidates:
        fields = line.split()
        if len(fields) >= 8 and fields[6] == "typ" and fields[7] == kind:
            found.add(fields[4])
    return found


def serve_page(port: int, html: str, result_path: str, seconds: float) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802
            data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with open(result_path + ".tmp", "wb") as handle:
                handle.write(data)
            os.replace(result_path + ".tmp", result_path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.timeout = 0.5
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not os.path.exists(result_path):
        server.handle_request()
    server.server_close()


# --------------------------------------------------------------------------- the lab (network namespaces)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PAGE_PORT = 8088
GATHER_MS = 10000
HOST = "webrtc (chromium)"


def unavailable() -> Optional[str]:
    """Why the WebRTC lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = missing_tools("nft", "wireguard-go", "wg", "tcpdump") + ([] if CHROMIUM else ["chromium"])
    return "missing: %s (make host-deps installs them)" % ", ".join(missing) if missing else None


def kill_switch_ruleset(tunnel: str) -> str:
    """The kill switch the role would load on this client: our renderer, from the role's variables."""
    collections = os.path.join(ROOT, ".collections")
    if collections not in sys.path:
        sys.path.insert(0, collections)
    # pylint: disable=import-outside-toplevel
    from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy
    from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_nftables import render
    return render(parse_policy({
        "killswitch_tunnel_interfaces": [tunnel],
        "killswitch_endpoints": [{"address": VPN_PUBLIC[0], "port": ENDPOINT_PORT}],
        "killswitch_management_cidrs": [],
        "killswitch_ipv6": "tunnel",
    }))


class WebrtcLab(TunnelLab):
    """lab.netns.TunnelLab with the STUN/TURN observer on the sink and Chromium on the client."""

    def __init__(self, prefix: str = "nlwr") -> None:
        super().__init__(prefix)
        self.ruleset = kill_switch_ruleset(self.client_wg)

    def kill_switch(self, on: bool) -> None:
        self.load(self.ruleset if on else None)

    def gather(self, workdir: str) -> dict:
        """One gathering by Chromium on the client: the observer's log by probe, the page's candidates, and
        every packet the wire detector (on the router's side of the client's link) counts as a leak."""
        from lab.probe import Capture  # pylint: disable=import-outside-toplevel
        net = self
        log, result = os.path.join(workdir, "observer.jsonl"), os.path.join(workdir, "result.json")
        for path in (log, result):
            if os.path.exists(path):
                os.unlink(path)
        env = {"PYTHONPATH": ROOT}
        observer = net.spawn("sink", sys.executable, "-m", "lab.webrtc", "observe", "--log", log, "--seconds", "90",
                             env=env, stdout=subprocess.PIPE, text=True)
        if observer.stdout.readline().strip() != "observing":
            raise RuntimeError("the STUN/TURN observer did not start")
        net.spawn("client", sys.executable, "-m", "lab.webrtc", "page", "--port", str(PAGE_PORT), "--result", result,
                  "--v4", SINK[0], "--v6", SINK[1], "--gather-ms", str(GATHER_MS), "--seconds", "60", env=env)
        self._wait_listening(PAGE_PORT)
        profile = tempfile.mkdtemp(prefix="chromium-", dir=workdir)
        with Capture(None, self.leak_bpf(), interface="c0", netns=net.ns("router"), max_seconds=120) as wire:
            browser = net.spawn("client", "timeout", "45", CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                                "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
                                "--disable-component-update", "--disable-sync",
                                "--disable-features=WebRtcHideLocalIpsWithMdns", "--user-data-dir=%s" % profile,
                                "http://127.0.0.1:%d/" % PAGE_PORT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 40
            while not os.path.exists(result) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)  # a request still in flight reaches the observer
            browser.kill()
            browser.wait(timeout=10)
        observer.kill()
        observer.wait(timeout=10)
        if not os.path.exists(result):
            raise RuntimeError("the page reported nothing within 40 s: Chromium did not gather")
        with open(result) as handle:
            page = json.load(handle)
        return {"seen": requests_by_probe(read_log(log)), "page": page, "leaks": wire.packets}

    def _wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = self.exec("client", sys.executable, "-c",
                              "import socket; socket.create_connection(('127.0.0.1', %d), 1).close()" % port,
                              check=False)
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("the page server did not listen on 127.0.0.1:%d" % port)


def describe(seen: Dict[Tuple[str, int], set]) -> Dict[str, List[str]]:
    return {"%s/IPv%d" % probe: sorted(sources) for probe, sources in sorted(seen.items())}


def judge(control: dict, up: dict, down: dict) -> list:
    """The three gatherings as the leak report's case results (lab.results.CaseResult), one per case, each
    leak counted per request or packet, the control vouching only for the probes it saw."""
    from lab.results import CaseResult  # pylint: disable=import-outside-toplevel
    control_missing = ["%s/IPv%d" % p for p in PROBES if PHYSICAL[p[1] == 6] not in control["seen"].get(p, ())]
    results = []
    for case, outcome, need_vpn in (("webrtc tunnel up", up, True), ("webrtc tunnel down", down, False)):
        details, leaked = [], 0
        for probe in PROBES:
            sources = outcome["seen"].get(probe, set())
            wrong = sorted(sources - ({VPN_PUBLIC[probe[1] == 6]} if need_vpn else set()))
            leaked += len(wrong)
            details += ["STUN/TURN %s/IPv%d seen from %s" % (probe + (source,)) for source in wrong]
            if need_vpn and VPN_PUBLIC[probe[1] == 6] not in sources:
                details.append("%s/IPv%d never reached the sink through the tunnel" % probe)
        leaked += len(outcome["leaks"])
        details += outcome["leaks"][:20]
        error = "" if not (need_vpn and any("never reached" in d for d in details)) else "the tunnel path failed"
        results.append(CaseResult(host=HOST, case=case, sent=len(PROBES), leaked=leaked,
                                  control_seen=not control_missing,
                                  details=details + ["control did not see: %s" % ", ".join(control_missing)]
                                  if control_missing else details, error=error, case_id="webrtc"))
    return results


def run_cases() -> list:
    """The WebRTC cases for the leak report: control (no kill switch, tunnel down), tunnel up, tunnel down."""
    with WebrtcLab() as lab, tempfile.TemporaryDirectory(prefix="netlock-webrtc-") as workdir:
        lab.tunnel_down()
        lab.kill_switch(on=False)
        control = lab.gather(workdir)
        lab.kill_switch(on=True)
        lab.tunnel_up()
        up = lab.gather(workdir)
        lab.tunnel_down()
        down = lab.gather(workdir)
    return judge(control, up, down)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m lab.webrtc")
    commands = parser.add_subparsers(dest="command", required=True)
    observe = commands.add_parser("observe", help="STUN/TURN observer (the sink)")
    observe.add_argument("--log", required=True)
    observe.add_argument("--port", type=int, default=STUN_PORT)
    observe.add_argument("--seconds", type=float, default=600)
    page = commands.add_parser("page", help="serve the probe page on 127.0.0.1 (the client)")
    page.add_argument("--port", type=int, required=True)
    page.add_argument("--result", required=True)
    page.add_argument("--v4", required=True)
    page.add_argument("--v6", required=True)
    page.add_argument("--gather-ms", type=int, default=12000)
    page.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args(argv)
    if args.command == "observe":
        observer = Observer(args.log, args.port)
        print("observing", flush=True)
        observer.serve(args.seconds)
    else:
        serve_page(args.port, page_html(ice_servers(args.v4, args.v6), args.gather_ms), args.result, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
