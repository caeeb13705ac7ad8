# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CHANGELOG.md from changelogs/ (antsibull-changelog), including the changes not released yet.

``antsibull-changelog generate`` renders only the releases recorded in changelogs/changelog.yaml,
so the work waiting in changelogs/fragments/ would not appear in CHANGELOG.md until a release.
This script runs antsibull-changelog on a scratch copy of galaxy.yml and changelogs/: when
fragments are pending, ``antsibull-changelog release`` there records them as galaxy.yml's version
with a release summary saying it is not released yet, then ``antsibull-changelog generate``
writes CHANGELOG.md, which is the file compared or copied back. Nothing in the checkout changes
except CHANGELOG.md (never with --check). A real release is ``antsibull-changelog release`` in the
checkout, followed by ``make changelog``.

    python tools/changelog.py            write CHANGELOG.md
    python tools/changelog.py --check    exit 1 (with a diff) when the committed CHANGELOG.md differs
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = "CHANGELOG.md"
SUMMARY_FRAGMENT = "zzzz-not-released-yet.yml"
FRAGMENT_SUFFIXES = (".yml", ".yaml")


def antsibull_changelog():
    """The antsibull-changelog beside this interpreter (the project venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "antsibull-changelog"
    found = str(beside) if beside.exists() else shutil.which("antsibull-changelog")
    if not found:
        sys.exit("antsibull-changelog is not installed: `make venv` installs requirements-dev.txt")
    return found


def run(argv, cwd):
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit("%s failed (%d):\n%s%s" % (" ".join(argv), proc.returncode, proc.stdout, proc.stderr))


def pending_fragments(changelogs):
    return sorted(p for p in (changelogs / "fragments").iterdir()
                  if p.is_file() and p.suffix in FRAGMENT_SUFFIXES and not p.name.startswith("."))


def render(root=ROOT):
    """The CHANGELOG.md text antsibull-changelog makes from root's galaxy.yml and changelogs/."""
    tool = antsibull_changelog()
    version = yaml.safe_load((root / "galaxy.yml").read_text())["version"]
    with tempfile.TemporaryDirectory(prefix="netlock-changelog.") as scratch:
        work = Path(scratch)
        shutil.copy2(root / "galaxy.yml", work / "galaxy.yml")
        shutil.copytree(root / "changelogs", work / "changelogs",
                        ignore=shutil.ignore_patterns(".plugin-cache.yaml"))
        fragments = pending_fragments(work / "changelogs")
        if fragments:
            has_summary = any("release_summary" in (yaml.safe_load(p.read_text()) or {}) for p in fragments)
            if not has_summary:
                (work / "changelogs" / "fragments" / SUMMARY_FRAGMENT).write_text(
                    "---\nrelease_summary: >-\n  Not released yet: version %s (galaxy.yml) with the changes waiting in\n"
                    "  ``changelogs/fragments/``.\n" % version)
            # The plugin list of a release comes from ansible-doc; a preview lists no new plugins.
            (work / "changelogs" / ".plugin-cache.yaml").write_text(
                yaml.safe_dump({"version": str(version), "plugins": {}, "objects": {}}))
            run([tool, "release", "--version", str(version), "--date", "1970-01-01"], cwd=work)
        run([tool, "generate"], cwd=work)
        return (work / OUTPUT).read_text()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed %s, change nothing" % OUTPUT)
    args = parser.parse_args(argv)
    wanted = render()
    target = ROOT / OUTPUT
    current = target.read_text() if target.exists() else ""
    if args.check:
        if current != wanted:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), wanted.splitlines(True),
                                                       OUTPUT + " (committed)", OUTPUT + " (from changelogs/)"))
            print("\n%s is not what changelogs/ generates: run `make changelog` and commit the result" % OUTPUT)
            return 1
        print("%s is up to date with changelogs/" % OUTPUT)
        return 0
    if current != wanted:
        target.write_text(wanted)
        print("wrote %s" % OUTPUT)
    else:
        print("%s is already up to date" % OUTPUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
