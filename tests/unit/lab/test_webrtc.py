"""WebRTC in a real browser: what a STUN/TURN server learns about a kill-switched client (issue 10, part 3).

Headless Chromium on a client namespace opens a page that gathers ICE candidates against a STUN (UDP) and
TURN (TCP) observer on the sink, each over IPv4 and IPv6 (lab.webrtc).  The client reaches the sink through
a WireGuard tunnel (wireguard-go) to a VPN server that masquerades; its physical link leads to the same sink
through a router, so a tunnel that goes away is a failover onto the physical link, as on a real host.

* tunnel up, kill switch on: the observer sees every probe, each only from the VPN server's address, never
  from the client's physical address; nothing but WireGuard leaves on the physical link;
* tunnel down, kill switch on: the observer sees nothing and the physical link carries nothing;
* positive control, tunnel down and no kill switch: the observer sees every probe from the client's own
  physical address (so the case above proves something for each of them).

The kill switch is the ruleset our renderer makes from the role's variables, loaded with ``nft -f``.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lab import webrtc  # noqa: E402
from lab.webrtc import PHYSICAL, PROBES, VPN_PUBLIC, describe  # noqa: E402

UNAVAILABLE = webrtc.unavailable()
live = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))


@pytest.fixture(scope="module")
def lab():
    with webrtc.WebrtcLab() as net:
        yield net


@pytest.fixture(scope="module")
def outcomes():
    return {}


# --------------------------------------------------------------------------- the cases


@live
def test_positive_control_without_the_kill_switch_the_sink_sees_every_probe_from_the_physical_address(
        lab, outcomes, tmp_path):
    lab.tunnel_down()
    lab.kill_switch(on=False)
    outcome = outcomes["control"] = lab.gather(str(tmp_path))
    for probe in PROBES:
        assert PHYSICAL[probe[1] == 6] in outcome["seen"][probe], (
            "the control did not see %s/IPv%d from the client's physical address: %s"
            % (probe + (describe(outcome["seen"]),)))
    assert PHYSICAL[0] in webrtc.candidate_addresses(outcome["page"]["candidates"]), outcome["page"]
    assert outcome["leaks"], "the wire detector saw nothing of a client without a kill switch"


@live
def test_tunnel_up_the_sink_sees_only_the_vpn_server(lab, outcomes, tmp_path):
    lab.kill_switch(on=True)
    lab.tunnel_up()
    outcome = outcomes["up"] = lab.gather(str(tmp_path))
    for probe in PROBES:
        sources = outcome["seen"][probe]
        # Every probe arrived (its own control: the path through the tunnel works) and only from the VPN server.
        assert sources == {VPN_PUBLIC[probe[1] == 6]}, "%s/IPv%d: %s" % (probe + (describe(outcome["seen"]),))
    assert webrtc.candidate_addresses(outcome["page"]["candidates"]) <= set(VPN_PUBLIC), outcome["page"]
    assert not outcome["leaks"], "left on the physical link:\n%s" % "\n".join(outcome["leaks"][:20])


@live
def test_tunnel_down_the_sink_sees_nothing(lab, outcomes, tmp_path):
    lab.kill_switch(on=True)
    lab.tunnel_up()
    lab.tunnel_down()
    outcome = outcomes["down"] = lab.gather(str(tmp_path))
    assert not any(outcome["seen"].values()), describe(outcome["seen"])
    assert not webrtc.candidate_addresses(outcome["page"]["candidates"]), outcome["page"]
    assert not outcome["leaks"], "left on the physical link:\n%s" % "\n".join(outcome["leaks"][:20])


@live
def test_the_report_judges_the_three_gatherings_as_the_tests_do(outcomes):
    """lab.webrtc.judge (what `make demo` reports) passes exactly these outcomes, and fails on a leak or a
    control that missed a probe."""
    if set(outcomes) != {"control", "up", "down"}:
        pytest.fail("the three gatherings above did not all run: %s" % sorted(outcomes))
    assert all(r.passed for r in webrtc.judge(outcomes["control"], outcomes["up"], outcomes["down"]))
    assert not webrtc.judge(outcomes["control"], outcomes["up"], outcomes["control"])[1].passed
    blind = dict(outcomes["control"], seen={p: set() for p in PROBES})
    assert all(r.control_seen is False and not r.passed for r in webrtc.judge(blind, outcomes["up"], outcomes["down"]))


# --------------------------------------------------------------------------- the observer itself


def test_binding_success_round_trips_the_source_address():
    for address, port in (("198.18.91.2", 40001), ("2001:db8:91::2", 51000)):
        response = webrtc.binding_success(b"0123456789ab", address, port)
        assert webrtc.parse_header(response) == (webrtc.BINDING_SUCCESS, b"0123456789ab")
        assert webrtc.xor_mapped_address(response) == (address, port)


def test_parse_header_refuses_what_is_not_stun():
    request = webrtc._message(webrtc.BINDING_REQUEST, b"x" * 12, b"")
    assert webrtc.parse_header(request) == (webrtc.BINDING_REQUEST, b"x" * 12)
    assert webrtc.parse_header(b"GET / HTTP/1.1\r\n\r\n") is None
    assert webrtc.parse_header(request[:-1] if len(request) > 20 else request[:19]) is None
    assert webrtc.parse_header(b"\xc0" + request[1:]) is None


def test_candidate_addresses_reads_the_type_field():
    candidates = ["candidate:1 1 udp 2122260223 198.18.90.2 45000 typ host generation 0",
                  "candidate:2 1 udp 1686052607 198.18.91.2 45000 typ srflx raddr 198.18.90.2 rport 45000",
                  "candidate:3 1 tcp 1518280447 198.18.90.2 9 typ host tcptype active"]
    assert webrtc.candidate_addresses(candidates) == {"198.18.91.2"}
    assert webrtc.candidate_addresses(candidates, "host") == {"198.18.90.2"}


def test_the_observer_records_udp_and_tcp_requests(tmp_path):
    log = str(tmp_path / "log.jsonl")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    observer = webrtc.Observer(log, port=port)
    thread = threading.Thread(target=observer.serve, args=(3,), daemon=True)
    thread.start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(2)
    udp.sendto(webrtc._message(webrtc.BINDING_REQUEST, b"t" * 12, b""), ("127.0.0.1", port))
    response, _peer = udp.recvfrom(2048)
    assert webrtc.xor_mapped_address(response) == ("127.0.0.1", udp.getsockname()[1])
    with socket.create_connection(("127.0.0.1", port), 2) as tcp:
        tcp.sendall(webrtc._message(webrtc.ALLOCATE_REQUEST, b"a" * 12, b""))
        assert webrtc.parse_header(tcp.recv(2048))[0] == webrtc.ALLOCATE_ERROR
    thread.join(5)
    seen = webrtc.requests_by_probe(webrtc.read_log(log))
    assert seen[("udp", 4)] == {"127.0.0.1"} and seen[("tcp", 4)] == {"127.0.0.1"}
    assert not seen[("udp", 6)] and not seen[("tcp", 6)]
