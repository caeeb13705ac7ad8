import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))

import pytest  # noqa: E402

from lab import cases, report, run  # noqa: E402
from lab.topology import CLIENTS  # noqa: E402

REPORTS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "reports", "molecule-leak")


@pytest.fixture(scope="session")
def leak_run():
    """Every case and the flap stream on every client, the clients side by side (lab/run.py), once.

    The tests below each judge their part of it; every case's numbers end up in reports/molecule-leak/,
    as `make demo` writes them.
    """
    start = time.monotonic()
    outcome = run.run_all(CLIENTS, list(cases.CASES), flaps=20)
    yield outcome
    report.print_report(outcome.results, outcome.timelines, firewalls=outcome.firewalls)
    report.write_all(outcome.results, outcome.timelines, REPORTS, outcome.firewalls)
    print("leak cases on %d clients side by side: %.0f s" % (len(CLIENTS), time.monotonic() - start))
