# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build the collection's documentation site into build/docs/html, offline.

The reference pages (every module, the filter, the role, the redirects) come from the plugins' own
DOCUMENTATION and the role's meta/argument_specs.yml through antsibull-docs, as on docs.ansible.com:
``antsibull-docs sphinx-init --use-current`` writes the Sphinx project, ``antsibull-docs collection
--use-current`` the RST pages of this collection only. The guides users read on GitHub (README.md, the
role's README.md and every docs/**/*.md) are pages of the same site, rendered by MyST with the
repository's layout kept, so that their links to each other keep working; a link to any other file of the
repository points at that file on GitHub.

Offline: intersphinx (docs.ansible.com, docs.python.org) is switched off, so references into
ansible-core's docs render as text; ``--lenient`` keeps those from failing the build.

Usage: ``.venv/bin/python tools/docs.py`` (``make docs``). Needs ``make collection`` (the collection
under .collections/ansible_collections/netlock/killswitch); sets ANSIBLE_COLLECTIONS_PATH to it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GALAXY = yaml.safe_load((ROOT / "galaxy.yml").read_text(encoding="utf-8"))
FQCN = "%s.%s" % (GALAXY["namespace"], GALAXY["name"])
BIN = Path(sys.executable).parent
COLLECTIONS = ROOT / ".collections"
# Guides, in the order of the site's "Guides" menu; the first is the README (the landing guide).
FIRST_GUIDES = ("README.md", "roles/killswitch/README.md")
GUIDE_GLOBS = ("docs/**/*.md",)
GUIDES_DIR = "guides"
# Appended to the conf.py that sphinx-init writes.
CONF_EXTRA = '''
# ---- tools/docs.py: offline build of netlock.killswitch's docs with its Markdown guides
extensions.append('myst_parser')
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
myst_heading_anchors = 4
# Untagged code fences in the guides are shell output; Sphinx retries them as plain text.
suppress_warnings = ['misc.highlighting_failure']
# No network here: intersphinx would try docs.ansible.com and docs.python.org.
intersphinx_mapping = {}
html_title = %(title)r
'''
INLINE_LINK = re.compile(r"(\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")


def guide_sources():
    """Repository-relative paths of the Markdown guides, README first."""
    found = [p for p in FIRST_GUIDES if (ROOT / p).is_file()]
    for pattern in GUIDE_GLOBS:
        for path in sorted(ROOT.glob(pattern)):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in found:
                found.append(rel)
    return found


def rewrite_links(text, rel, guides):
    """Keep links between guides (same layout under guides/); point other repository links at GitHub."""
    base = Path(rel).parent
    blob = GALAXY["repository"].rstrip("/") + "/blob/main/"
    tree = GALAXY["repository"].rstrip("/") + "/tree/main/"

    def fix(match):
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            return match.group(0)
        path, dummy, anchor = target.partition("#")
        resolved = os.path.normpath((base / path).as_posix()).replace(os.sep, "/")
        if resolved in guides or resolved.startswith(".."):
            return match.group(0)
        url = (tree if (ROOT / resolved).is_dir() else blob) + resolved + ("#" + anchor if anchor else "")
        return match.group(1) + url + match.group(3)

    out, fenced = [], False
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        out.append(line if fenced else INLINE_LINK.sub(fix, line))
    return "".join(out)


def write_guides(rst):
    guides = guide_sources()
    for rel in guides:
        dest = rst / GUIDES_DIR / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(rewrite_links((ROOT / rel).read_text(encoding="utf-8"), rel, guides), encoding="utf-8")
    return guides


def write_index(rst, guides):
    title = FQCN
    entries = "\n".join("   %s/%s" % (GUIDES_DIR, rel[:-len(".md")]) for rel in guides)
    (rst / "index.rst").write_text("""\
.. _docsite_root_index:

{title}
{underline}

{description}

.. toctree::
   :maxdepth: 1
   :caption: Guides

{entries}

.. toctree::
   :maxdepth: 2
   :caption: Collection

   collections/index

.. toctree::
   :maxdepth: 1
   :caption: Plugin indexes
   :glob:

   collections/index_*

.. toctree::
   :maxdepth: 1
   :caption: Reference indexes

   collections/environment_variables
""".format(title=title, underline="=" * len(title), description=GALAXY["description"], entries=entries),
        encoding="utf-8")


def run(cmd, env, cwd=None):
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, check=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "build" / "docs"),
                        help="output directory: <out>/html is the site, <out>/src the Sphinx project")
    parser.add_argument("--jobs", default="auto", help="sphinx-build -j (default: auto)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    src, html, rst = out / "src", out / "html", out / "src" / "rst"
    link = COLLECTIONS / "ansible_collections" / GALAXY["namespace"] / GALAXY["name"]
    if not (link / "galaxy.yml").is_file():
        sys.exit("%s is missing: run `make collection` first" % link)

    env = dict(os.environ)
    env["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS)
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    started = time.monotonic()

    for stale in (src, html, out / "doctrees"):
        shutil.rmtree(stale, ignore_errors=True)
    src.mkdir(parents=True)
    run([BIN / "antsibull-docs", "sphinx-init", "--use-current", "--lenient", "--dest-dir", src,
         "--project", FQCN, "--copyright", "%s contributors" % FQCN, "--title", "%s documentation" % FQCN,
         "--no-add-antsibull-docs-version", FQCN], env)
    with open(src / "conf.py", "a", encoding="utf-8") as conf:
        conf.write(CONF_EXTRA % {"title": "%s documentation" % FQCN})
    rst.mkdir(exist_ok=True)
    rst.chmod(0o755)  # antsibull-docs wants that directory only writable by itself
    run([BIN / "antsibull-docs", "--config-file", src / "antsibull-docs.cfg", "collection", "--cleanup",
         "everything", "--use-current", "--fail-on-error", "--dest-dir", rst, FQCN], env)
    guides = write_guides(rst)
    write_index(rst, guides)
    warnings = out / "sphinx-warnings.txt"
    run([BIN / "sphinx-build", "-b", "html", "-q", "-j", args.jobs, "-c", src, "-d", out / "doctrees",
         "-w", warnings, rst, html], env)
    print("docs: %s/index.html (%d guides, %.0fs; Sphinx warnings in %s)"
          % (html, len(guides), time.monotonic() - started, warnings))


if __name__ == "__main__":
    main()
