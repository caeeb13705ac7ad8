# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The CI support matrix, run locally: ``make matrix``.

The cells come from the ``ansible-test`` job of .github/workflows/ci.yml (its ``strategy.matrix``
and its ``UNIT_TESTS``), the one place the matrix is declared. For each cell (ansible-core release
line, Python version): a virtual environment under ~/.cache/netlock-killswitch/matrix/
($NETLOCK_MATRIX_DIR; logs in its logs/) made with that Python (found
under ~/.pyenv/versions or on PATH; a cell whose Python is missing is reported as skipped), the
newest ansible-core of that line from the package index, then on a copy of the collection at
<tmp>/ansible_collections/netlock/killswitch the workflow's commands: ``ansible-test sanity``
(where the cell says so) and ``ansible-test units`` on UNIT_TESTS, both ``--local --requirements``.
ansible-test's pip bootstrap script, which cannot be downloaded here, is replaced by a stand-in
that uses Python's bundled pip (as tools/sanity.sh does).

    python tools/matrix.py --list
    python tools/matrix.py [--only 2.19/3.13 ...] [--no-sanity] [--units PATH ...]

Exits non-zero when a cell that ran failed; prints one result line per cell at the end.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
JOB = "ansible-test"
# Outside the checkout: yamllint and ansible-lint walk the checkout, and a venv is full of YAML.
VENVS = Path(os.environ.get("NETLOCK_MATRIX_DIR") or
             Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "netlock-killswitch" / "matrix")
PIP_CACHE = Path.home() / ".ansible" / "test" / "cache"
STAND_IN = "import ensurepip\nensurepip.bootstrap(upgrade=True)\n"


def load_matrix(workflow=WORKFLOW):
    """(cells, unit test paths) of the workflow's ansible-test job."""
    job = yaml.safe_load(workflow.read_text())["jobs"][JOB]
    cells = [{"ansible-core": str(c["ansible-core"]), "python": str(c["python"]), "sanity": bool(c.get("sanity"))}
             for c in job["strategy"]["matrix"]["include"]]
    return cells, job["env"]["UNIT_TESTS"].split()


def cell_name(cell):
    return "%s/%s" % (cell["ansible-core"], cell["python"])


def find_python(version):
    """An interpreter for 'X.Y': the newest ~/.pyenv/versions/X.Y.*, else pythonX.Y on PATH."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = []
    for path in glob.glob(str(pyenv / (version + ".*") / "bin" / ("python" + version))):
        match = re.search(r"/(\d+)\.(\d+)\.(\d+)/bin/", path)
        if match:
            found.append((tuple(int(n) for n in match.groups()), path))
    if found:
        return max(found)[1]
    return shutil.which("python" + version)


def run(argv, log, cwd=None, env=None):
    """Run argv, its output appended to log; the exit code."""
    with open(log, "a", encoding="utf-8") as out:
        out.write("\n$ %s\n" % " ".join(argv))
        out.flush()
        return subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode


def stand_in_pip_bootstrap(venv):
    """ansible-test downloads get-pip-<version>.py for the venvs it makes: put a stand-in in its cache."""
    versions = {"24_2", "25_0", "25_1", "25_2", "26_0"}
    for source in glob.glob(str(venv / "lib" / "python*" / "site-packages" / "ansible_test" / "_internal"
                                / "python_requirements.py")):
        versions.update(v.replace(".", "_") for v in re.findall(r"pip='([\d.]+)'", Path(source).read_text()))
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    for version in sorted(versions):
        path = PIP_CACHE / ("get_pip_%s.py" % version)
        if not path.exists():
            path.write_text(STAND_IN)


def copy_collection(dest):
    """Tracked and new files (never ignored ones) at dest, as a git repository (ansible-test lists files with git)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        source = ROOT / rel
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)


def run_cell(cell, units, sanity, logs):
    """{'cell', 'result', 'detail', 'seconds', 'log'} for one cell."""
    started = time.monotonic()
    name = cell_name(cell)
    log = logs / ("%s-py%s.log" % (cell["ansible-core"], cell["python"]))
    log.write_text("matrix cell %s\n" % name)
    result = {"cell": name, "log": str(log)}
    python = find_python(cell["python"])
    if python is None:
        result.update(result="skipped", detail="no Python %s here" % cell["python"], seconds=0.0)
        return result
    venv = VENVS / ("core%s-py%s" % (cell["ansible-core"], cell["python"]))
    bin_dir = venv / "bin"
    steps = []
    if not (bin_dir / "python").exists():
        if run([python, "-m", "venv", str(venv)], log):
            result.update(result="failed", detail="venv", seconds=time.monotonic() - started)
            return result
    if run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--upgrade",
            "ansible-core~=%s.0" % cell["ansible-core"]], log):
        result.update(result="failed", detail="pip install ansible-core", seconds=time.monotonic() - started)
        return result
    version = subprocess.run([str(bin_dir / "python"), "-c", "import ansible; print(ansible.__version__)"],
                             capture_output=True, text=True, check=False).stdout.strip()
    stand_in_pip_bootstrap(venv)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(PATH="%s%s%s" % (bin_dir, os.pathsep, env.get("PATH", "")), VIRTUAL_ENV=str(venv))
    with tempfile.TemporaryDirectory(prefix="netlock-matrix.", dir="/var/tmp") as work:
        dest = Path(work) / "ansible_collections" / "netlock" / "killswitch"
        copy_collection(dest)
        if sanity:
            code = run(["ansible-test", "sanity", "--local", "--python", cell["python"], "--requirements",
                        "--color", "no"], log, cwd=dest, env=env)
            steps.append("sanity %s" % ("ok" if code == 0 else "FAILED"))
        code = run(["ansible-test", "units", "--local", "--python", cell["python"], "--requirements",
                    "--color", "no"] + units, log, cwd=dest, env=env)
        steps.append("units %s" % ("ok" if code == 0 else "FAILED"))
        summary = units_summary(log)
        if summary:
            steps[-1] += " (%s)" % summary
    failed = any("FAILED" in s for s in steps)
    result.update(result="failed" if failed else "ok", detail="ansible-core %s, %s" % (version, ", ".join(steps)),
                  seconds=time.monotonic() - started)
    return result


def units_summary(log):
    """pytest's closing counts from the log's last units run."""
    lines = [line.strip("= \n") for line in Path(log).read_text(errors="replace").splitlines()
             if re.search(r"\d+ (passed|failed|error)", line)]
    return lines[-1] if lines else ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--list", action="store_true", help="print the cells and exit")
    parser.add_argument("--only", action="append", metavar="CORE/PYTHON", help="run only this cell (repeatable)")
    parser.add_argument("--no-sanity", action="store_true", help="skip ansible-test sanity")
    parser.add_argument("--units", nargs="+", metavar="PATH", help="unit test paths instead of the workflow's")
    args = parser.parse_args(argv)
    cells, units = load_matrix()
    if args.list:
        for cell in cells:
            python = find_python(cell["python"])
            print("%-12s sanity=%-5s python=%s" % (cell_name(cell), cell["sanity"], python or "(missing)"))
        print("units: %s" % " ".join(units))
        return 0
    if args.only:
        unknown = set(args.only) - {cell_name(c) for c in cells}
        if unknown:
            parser.error("not in the matrix: %s" % ", ".join(sorted(unknown)))
        cells = [c for c in cells if cell_name(c) in args.only]
    logs = VENVS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    for cell in cells:
        print("matrix: %s ..." % cell_name(cell), flush=True)
        result = run_cell(cell, args.units or units, cell["sanity"] and not args.no_sanity, logs)
        print("matrix: %(cell)s %(result)s: %(detail)s (%(seconds).0fs, log %(log)s)" % result, flush=True)
        results.append(result)
    print("\nmatrix results (.github/workflows/ci.yml, job %s):" % JOB)
    for result in results:
        print("  %-10s %-8s %s (%.0fs)" % (result["cell"], result["result"], result["detail"], result["seconds"]))
    return 1 if any(r["result"] == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
