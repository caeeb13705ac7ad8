import os
import sys
import time

# The drift lab, whatever the caller's environment: every lab module takes its names from lab.topology.
os.environ.setdefault("NETLOCK_LAB", "drift")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))

import pytest  # noqa: E402

from lab import flush  # noqa: E402
from lab.topology import CLIENTS  # noqa: E402

ROUNDS = 10  # every foreign action, per client, with the fence on
# The control only has to show the leak (each round of it leaks hundreds of packets); fewer rounds keep the
# scenario's wall time under 12 minutes on a 2-CPU machine.
CONTROL_ROUNDS = 3
MEASUREMENTS = os.path.join(flush.REPORTS, "drift-measurements.json")


@pytest.fixture(scope="session")
def drift_run():
    """The whole drift run once (lab/flush.py run_drift), the clients side by side; the tests judge it.

    Fenced foreign actions, the tamper matrix and the fleet report first, then the control: a rollout with
    killswitch_fence: off and the same actions again.
    """
    assert os.environ["NETLOCK_LAB"] == "drift", "the drift scenario runs against the drift lab only"
    start = time.monotonic()
    # The control comes last and the lab is removed after verify, so no rollout puts the fence back.
    outcome = flush.run_drift(CLIENTS, rounds=ROUNDS, control_rounds=CONTROL_ROUNDS, restore_fence=False,
                              notify=lambda what: print("drift: %s" % what, flush=True))
    yield outcome
    flush.print_run(outcome)
    flush.write_measurements(outcome, MEASUREMENTS, wall_seconds=round(time.monotonic() - start, 1))
    print("drift measurements: %s" % MEASUREMENTS)
    print(flush.markdown_table(outcome.fenced + outcome.control))
