"""No leaks on a real tunnel, proven by captures on each client's link and at the sink.

Each case runs its probes with the kill switch on (nothing may leave outside the tunnel) and again
with it removed (the probes must then be seen), so a pass cannot come from a broken probe.
"""

import pytest
from conftest import RESULTS, TIMELINES

from lab import cases
from lab.probe import killswitch_off
from lab.topology import CLIENTS

testinfra_hosts = ["docker://%s" % c.name for c in CLIENTS]


@pytest.mark.parametrize("case", list(cases.CASES))
@pytest.mark.parametrize("client", CLIENTS, ids=lambda c: c.name)
def test_case_leaks_nothing(client, case):
    for result in cases.run_case(case, client):
        RESULTS.append(result)
        assert result.control_seen, "%s: positive control failed, the probe proves nothing: %s" % (
            result.case, result.details)
        assert result.leaked == 0, "%s: %d packets leaked: %s" % (result.case, result.leaked, result.details)


@pytest.mark.parametrize("client", CLIENTS, ids=lambda c: c.name)
def test_flap_stream_leaks_nothing(client):
    timeline = cases.flap_stream(client, flaps=20, rate=600)
    TIMELINES.append(timeline)
    assert timeline.sent / timeline.duration >= 500, "the stream was too slow to prove anything"
    assert timeline.sink_seen, "nothing reached the sink through the tunnel"
    assert timeline.leaked == [], "%d packets leaked across %d flaps" % (len(timeline.leaked), timeline.flaps)


def test_flap_stream_control():
    """Without the kill switch, the same flapping stream does leak: the detector sees it."""
    client = CLIENTS[0]
    with killswitch_off(client.name):
        timeline = cases.flap_stream(client, flaps=3, rate=600)
    assert timeline.leaked, "no leak seen without the kill switch: the flap detector is blind"
