import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))

import pytest  # noqa: E402

from lab import report  # noqa: E402

RESULTS, TIMELINES = [], []


@pytest.fixture(scope="session", autouse=True)
def leak_report():
    """Every case's numbers end up in reports/molecule-leak/, as `make demo` writes them."""
    yield
    if RESULTS or TIMELINES:
        report.print_report(RESULTS, TIMELINES)
        report.write_all(RESULTS, TIMELINES, os.path.join(os.path.dirname(__file__), "..", "..", "..", "reports",
                                                          "molecule-leak"))
