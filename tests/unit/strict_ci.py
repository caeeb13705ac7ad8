# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Under ``CI=true`` a skipped test is a failed test, so no check of a ruleset skips silently in CI.

The unit tests that load rules with ``nft``, ``iptables-restore`` or ``tcpdump`` in network namespaces skip
on a workstation without root or those tools; in CI that skip would hide the very checks that matter, so
this plugin turns it into a failure that names the reason.  A test whose skip does not depend on the
machine (a metadata line, a file beside the checkout) says so with ``@pytest.mark.may_skip_in_ci``.
Loaded by ``tests/unit/conftest.py``.
"""

from __future__ import annotations

import os

import pytest

CI_VALUES = ("true", "1", "yes")


def strict(environ=None):
    """Whether this run is CI (the ``CI`` variable, as GitHub Actions and our .ci/run set it)."""
    return (environ if environ is not None else os.environ).get("CI", "").strip().lower() in CI_VALUES


def skip_reason(longrepr):
    """The reason text of a skip report (pytest keeps it as (path, line, "Skipped: reason"))."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def pytest_configure(config):
    config.addinivalue_line("markers", "may_skip_in_ci: this test's skip does not mean a missing tool, so CI=true "
                                       "lets it skip")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and strict()) or hasattr(report, "wasxfail"):
        return
    if item.get_closest_marker("may_skip_in_ci") is not None:
        return
    fail(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped at import (``pytest.skip(..., allow_module_level=True)``, ``importorskip``)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and strict() and collector.get_closest_marker("may_skip_in_ci") is None:
        fail(report)


def fail(report):
    report.outcome = "failed"
    report.longrepr = "CI=true: this check cannot run here, and in CI that is a failure, not a skip: %s" % (
        skip_reason(report.longrepr))
