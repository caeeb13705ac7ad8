# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""strict_ci.py: under CI=true a skip fails (naming the reason), elsewhere it stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import strict_ci

HERE = Path(__file__).resolve().parent
SAMPLE = '''
import shutil
import pytest

def test_needs_nft():
    pytest.skip("the nft command is not installed")

@pytest.mark.skipif(True, reason="needs root for a private network namespace")
def test_marked():
    pass

@pytest.mark.may_skip_in_ci
def test_allowed():
    pytest.skip("a metadata question")

def test_passes():
    assert True

@pytest.mark.xfail(reason="known", strict=False)
def test_xfail():
    assert False
'''


MODULE_SKIP = '''
import pytest
pytest.skip("tcpdump is not installed", allow_module_level=True)

def test_never_collected():
    pass
'''


def run_sample(tmp_path, ci, sample=SAMPLE):
    (tmp_path / "test_sample.py").write_text(sample)
    env = dict(os.environ, PYTHONPATH=str(HERE), CI=ci)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "strict_ci", "-rA",
                           "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
                          capture_output=True, text=True, check=False, env=env, timeout=120, cwd=str(tmp_path))


def test_ci_turns_skips_of_missing_tools_into_failures(tmp_path):
    proc = run_sample(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # a skip in the call fails the test; a skipif mark skips in setup, whose failure pytest reports as an error
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in proc.stdout, proc.stdout
    assert "FAILED test_sample.py::test_needs_nft" in proc.stdout
    assert "ERROR test_sample.py::test_marked" in proc.stdout
    assert "the nft command is not installed" in proc.stdout
    assert "needs root for a private network namespace" in proc.stdout


def test_ci_fails_a_module_skipped_at_import(tmp_path):
    proc = run_sample(tmp_path, "true", MODULE_SKIP)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "ERROR test_sample.py" in proc.stdout and "tcpdump is not installed" in proc.stdout, proc.stdout
    assert run_sample(tmp_path, "", MODULE_SKIP).returncode == 5  # outside CI: all skipped, nothing ran


def test_outside_ci_skips_stay_skips(tmp_path):
    proc = run_sample(tmp_path, "")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 3 skipped, 1 xfailed" in proc.stdout, proc.stdout


@pytest.mark.parametrize("value, expected", [("true", True), ("TRUE", True), ("1", True), ("", False),
                                             ("false", False), (None, False)])
def test_strict_reads_the_ci_variable(value, expected):
    assert strict_ci.strict({} if value is None else {"CI": value}) is expected
