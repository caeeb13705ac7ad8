"""No leaks on a real tunnel, proven by captures on each client's link and at the sink.

Every client runs every case, each client with another firewall (inventories/lab/host_vars): a case
that passes on one client and fails on another fails.  Each case runs its probes with the kill switch
on (nothing may leave outside the tunnel) and again with it removed (the probes must then be seen), so
a pass cannot come from a broken probe.  The clients run side by side in one session-wide run
(conftest.leak_run); the tests judge its results.
"""

import pytest

from lab import cases, firewall
from lab.run import FLAP_CASE
from lab.topology import CLIENTS

testinfra_hosts = ["docker://%s" % c.name for c in CLIENTS]


@pytest.mark.parametrize("client", CLIENTS, ids=lambda c: c.name)
def test_firewall_is_the_intended_one(leak_run, client):
    """The iptables variant in the container and the kill switch in force are what the inventory says."""
    checked = [f for f in leak_run.firewalls if f.host == client.name]
    assert checked, "%s: the firewall was not checked" % client.name
    assert checked[0].ok, "%s (%s, in force: %s): %s" % (client.name, checked[0].label(), checked[0].in_force,
                                                         "; ".join(checked[0].problems))


@pytest.mark.parametrize("case", list(cases.CASES))
@pytest.mark.parametrize("client", CLIENTS, ids=lambda c: c.name)
def test_case_leaks_nothing(leak_run, client, case):
    results = leak_run.of(client.name, case)
    assert results, "%s did not run on %s" % (case, client.name)
    for result in results:
        assert not result.error, "%s: %s\n%s" % (result.case, result.error, "\n".join(result.details))
        assert result.control_seen, "%s: positive control failed, the probe proves nothing: %s" % (
            result.case, result.details)
        assert result.leaked == 0, "%s: %d packets leaked: %s" % (result.case, result.leaked, result.details)


@pytest.mark.parametrize("client", CLIENTS, ids=lambda c: c.name)
def test_flap_stream_leaks_nothing(leak_run, client):
    errors = leak_run.of(client.name, FLAP_CASE)
    assert not errors, "the flap stream failed: %s" % errors[0].error
    timeline = next(t for t in leak_run.timelines if t.host == client.name)
    assert timeline.sent / timeline.duration >= 500, "the stream was too slow to prove anything"
    assert timeline.sink_seen, "nothing reached the sink through the tunnel"
    assert timeline.leaked == [], "%d packets leaked across %d flaps" % (len(timeline.leaked), timeline.flaps)


@pytest.mark.usefixtures("leak_run")  # after every client's run, never beside it
def test_flap_stream_control():
    """Without the kill switch, the same flapping stream does leak, each of its kinds (IPv4 and IPv6, UDP, TCP
    and DNS, from the client and its guest): the detector sees every one it vouches for."""
    client = CLIENTS[0]
    with firewall.killswitch_off(client):
        timeline = cases.flap_stream(client, flaps=3, rate=600)
    assert timeline.leaked, "no leak seen without the kill switch: the flap detector is blind"
    kinds = cases.unseen(timeline.probes, [])
    assert len(set(kinds)) == len(kinds) >= 9, "the streams do not rotate 9 distinct kinds: %s" % kinds
    blind = [kind for kind in kinds if kind not in timeline.leaked_kinds]
    assert not blind, "without the kill switch these never showed up leaking: the detector is blind to them: %s" % blind
