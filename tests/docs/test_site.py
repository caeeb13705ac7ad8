# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The documentation site as users read it, in a browser.

Opens every page of the site that ``tools/docs.py`` (``make docs``) built into build/docs/html in
headless Chromium (``chromium --headless=new --dump-dom``: the DOM after the page's scripts ran) and checks
it against the sources:

* every module in plugins/modules has a page, linked from the collection's index, and the page shows
  every option of the module's documentation (``ansible-doc --json``: DOCUMENTATION with its doc
  fragments), suboptions included;
* every filter (ansible-doc's list of the collection's filters, and every plugins/filter/*.yml) likewise;
* every role under roles/ has a page showing every variable of every entry point of its
  meta/argument_specs.yml;
* every Markdown guide (README.md, the role's README.md, docs/**/*.md) is a page of the site, reachable
  from the start page, with each of its headings, in order.

Run ``make docs`` first (``make docs-test`` does both). NETLOCK_DOCS_HTML overrides the site's directory,
CHROMIUM the browser.
"""

from __future__ import annotations

import html.parser
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GALAXY = yaml.safe_load((ROOT / "galaxy.yml").read_text(encoding="utf-8"))
NS, NAME = GALAXY["namespace"], GALAXY["name"]
FQCN = "%s.%s" % (NS, NAME)
SITE = Path(os.environ.get("NETLOCK_DOCS_HTML", ROOT / "build" / "docs" / "html"))
COLLECTION_DIR = "collections/%s/%s" % (NS, NAME)
BIN = Path(sys.executable).parent
# Kept in step with tools/docs.py: the guides, in the layout of the repository under guides/.
GUIDES = ["README.md", "roles/killswitch/README.md"] + sorted(
    p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/**/*.md"))
MODULES = sorted(p.stem for p in (ROOT / "plugins" / "modules").glob("*.py") if not p.name.startswith("_"))
ROLES = sorted(p.parent.parent.name for p in (ROOT / "roles").glob("*/meta/argument_specs.yml"))
CHROMIUM_TIMEOUT = 60


# --------------------------------------------------------------------------- the sources

def _ansible_doc(*args):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".collections"), ANSIBLE_NOCOLOR="1")
    out = subprocess.run([str(BIN / "ansible-doc"), "--json", *args], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out)


def _option_paths(options, prefix=""):
    """Every option and suboption as 'a/b/c', as antsibull-docs anchors them."""
    for name, spec in sorted((options or {}).items()):
        path = prefix + name
        yield path
        yield from _option_paths((spec or {}).get("suboptions") or (spec or {}).get("options"), path + "/")


FILTERS = sorted(set(name.split(".")[-1] for name in _ansible_doc("-t", "filter", "--list", FQCN))
                 | {p.stem for p in (ROOT / "plugins" / "filter").glob("*.yml")})


@pytest.fixture(scope="session")
def module_docs():
    return {fqcn.split(".")[-1]: data["doc"]
            for fqcn, data in _ansible_doc("-t", "module", *("%s.%s" % (FQCN, m) for m in MODULES)).items()}


@pytest.fixture(scope="session")
def filter_docs():
    return {fqcn.split(".")[-1]: data["doc"]
            for fqcn, data in _ansible_doc("-t", "filter", *("%s.%s" % (FQCN, f) for f in FILTERS)).items()}


def _markdown_headings(text):
    """The headings of a Markdown file as a reader sees them (code fences skipped, inline markup removed)."""
    headings, fence = [], None
    for line in text.splitlines():
        stripped = line.strip()
        marker = re.match(r"^(`{3,}|~{3,})", stripped)
        if marker:
            if fence is None:
                fence = marker.group(1)[0]
            elif stripped[0] == fence:
                fence = None
            continue
        match = None if fence else re.match(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match:
            title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2))
            title = re.sub(r"[`*]|(?<!\w)_|_(?!\w)", "", title)
            headings.append((len(match.group(1)), _norm(title)))
    return headings


def _norm(text):
    return " ".join(text.split())


# --------------------------------------------------------------------------- the browser

class Page(html.parser.HTMLParser):
    """What a reader sees of a rendered page: title, headings, links, option anchors and their titles."""

    def __init__(self, dom):
        super().__init__(convert_charrefs=True)
        self.title, self.headings, self.links, self.ids, self.options = "", [], set(), set(), {}
        self._heading = self._title = self._option = self._anchor = None
        self._skip = 0
        self.feed(dom)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if "ansibleOptionAnchor" in classes and attrs.get("id"):
            self._anchor = attrs["id"]
        if tag == "a":
            if attrs.get("href"):
                self.links.add(attrs["href"])
            if "headerlink" in classes:
                self._skip += 1
        if tag == "title":
            self._title = []
        elif re.fullmatch(r"h[1-6]", tag):
            self._heading = (int(tag[1]), [])
        elif tag == "p" and "ansible-option-title" in classes:
            self._option = []

    def handle_endtag(self, tag):
        if tag == "a" and self._skip:
            self._skip -= 1
        elif tag == "title" and self._title is not None:
            self.title, self._title = _norm("".join(self._title)), None
        elif self._heading and tag == "h%d" % self._heading[0]:
            self.headings.append((self._heading[0], _norm("".join(self._heading[1]))))
            self._heading = None
        elif tag == "p" and self._option is not None:
            if self._anchor:
                self.options[self._anchor] = _norm("".join(self._option))
            self._option = self._anchor = None

    def handle_data(self, data):
        if self._skip:
            return
        for buf in (self._title, self._heading and self._heading[1], self._option):
            if buf is not None:
                buf.append(data)


def _chromium():
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed (Debian package `chromium`; `make host-deps` installs it)")
    return found


def _dump_dom(browser, path):
    with tempfile.TemporaryDirectory(prefix="netlock-docs-chromium-") as profile:
        run = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              "--user-data-dir=" + profile, "--dump-dom", path.as_uri()],
                             capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=False)
    assert run.returncode == 0 and run.stdout.strip(), "chromium could not open %s: %s" % (path, run.stderr[-2000:])
    return run.stdout


@pytest.fixture(scope="session")
def site():
    """The pages under test, as Chromium rendered them: {path relative to the site: Page}."""
    if not (SITE / "index.html").is_file():
        pytest.fail("%s/index.html is missing: build the site first (make docs)" % SITE)
    browser = _chromium()
    wanted = (["index.html", "%s/index.html" % COLLECTION_DIR]
              + ["%s/%s_module.html" % (COLLECTION_DIR, m) for m in MODULES]
              + ["%s/%s_filter.html" % (COLLECTION_DIR, f) for f in FILTERS]
              + ["%s/%s_role.html" % (COLLECTION_DIR, r) for r in ROLES]
              + ["guides/%s.html" % g[:-len(".md")] for g in GUIDES])
    pages = [SITE / rel for rel in wanted if (SITE / rel).is_file()]  # a missing one fails its test
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        doms = list(pool.map(lambda p: _dump_dom(browser, p), pages))
    return {p.relative_to(SITE).as_posix(): Page(dom) for p, dom in zip(pages, doms)}


def _page(site, rel):
    assert rel in site, "the site has no page %s (pages: %s)" % (rel, ", ".join(sorted(site)))
    return site[rel]


def _links_to(site, source, target):
    """Whether the page source links to the page target (both relative to the site)."""
    for href in site[source].links:
        href = href.split("#")[0]
        if href and "://" not in href and posixpath.normpath(posixpath.join(posixpath.dirname(source), href)) == target:
            return True
    return False


def _assert_options(page, rel, expected, anchor_prefix=""):
    missing = [path for path in expected if "parameter-%s%s" % (anchor_prefix, path) not in page.options]
    assert not missing, "%s does not show the option(s) %s" % (rel, ", ".join(missing))
    # A filter's or test's positional input (_input) is shown as "Input".
    wrong = {path: page.options["parameter-%s%s" % (anchor_prefix, path)] for path in expected
             if not page.options["parameter-%s%s" % (anchor_prefix, path)].startswith(
                 "Input" if path == "_input" else path.split("/")[-1])}
    assert not wrong, "%s: option titles do not name the option: %s" % (rel, wrong)


# --------------------------------------------------------------------------- the reference pages

def test_the_collection_has_modules_filters_and_roles():
    assert MODULES and FILTERS and ROLES
    assert "killswitch_verify" in MODULES and "killswitch_drift_report" in MODULES and "drift_status" in FILTERS


@pytest.mark.parametrize("module", MODULES)
def test_every_module_has_a_page_with_every_option(site, module_docs, module):
    rel = "%s/%s_module.html" % (COLLECTION_DIR, module)
    page = _page(site, rel)
    assert any(level == 1 and "%s.%s module" % (FQCN, module) in text for level, text in page.headings), page.headings
    assert _links_to(site, "%s/index.html" % COLLECTION_DIR, rel), "the collection's index does not link to %s" % rel
    assert module in module_docs, "ansible-doc has no documentation for %s.%s" % (FQCN, module)
    expected = list(_option_paths(module_docs[module].get("options")))
    _assert_options(page, rel, expected)


@pytest.mark.parametrize("name", FILTERS)
def test_every_filter_has_a_page_with_every_option(site, filter_docs, name):
    rel = "%s/%s_filter.html" % (COLLECTION_DIR, name)
    page = _page(site, rel)
    assert any(level == 1 and "%s.%s filter" % (FQCN, name) in text for level, text in page.headings), page.headings
    assert _links_to(site, "%s/index.html" % COLLECTION_DIR, rel), "the collection's index does not link to %s" % rel
    assert name in filter_docs, "ansible-doc has no documentation for the filter %s.%s" % (FQCN, name)
    expected = list(_option_paths(filter_docs[name].get("options")))
    assert expected, "the filter %s documents no input or options" % name
    _assert_options(page, rel, expected)


@pytest.mark.parametrize("role", ROLES)
def test_every_role_has_a_page_with_every_variable(site, role):
    rel = "%s/%s_role.html" % (COLLECTION_DIR, role)
    page = _page(site, rel)
    assert any(level == 1 and "%s.%s role" % (FQCN, role) in text for level, text in page.headings), page.headings
    assert _links_to(site, "%s/index.html" % COLLECTION_DIR, rel), "the collection's index does not link to %s" % rel
    specs = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    entry_points = specs["argument_specs"]
    assert entry_points, "roles/%s/meta/argument_specs.yml has no entry point" % role
    for entry_point, spec in entry_points.items():
        expected = list(_option_paths(spec.get("options")))
        assert expected, "entry point %s of the role %s documents no variable" % (entry_point, role)
        _assert_options(page, rel, expected, anchor_prefix="%s--" % entry_point)


# --------------------------------------------------------------------------- the guides

@pytest.mark.parametrize("guide", GUIDES)
def test_every_guide_is_a_page_with_its_headings(site, guide):
    rel = "guides/%s.html" % guide[:-len(".md")]
    page = _page(site, rel)
    expected = _markdown_headings((ROOT / guide).read_text(encoding="utf-8"))
    assert expected, "%s has no headings" % guide
    shown = [text for dummy, text in page.headings]
    missing = [text for dummy, text in expected if text not in shown]
    assert not missing, "%s: the page %s does not show the heading(s) %s" % (guide, rel, missing)
    order = [shown.index(text) for dummy, text in expected]
    assert order == sorted(order), "%s: the headings on %s are out of order: %s" % (guide, rel, shown)
    assert page.title.startswith(expected[0][1]), "%s: page title %r" % (guide, page.title)
    assert _links_to(site, "index.html", rel), "the start page does not link to the guide %s" % rel


def test_the_start_page_leads_to_the_readme_and_the_collection(site):
    page = _page(site, "index.html")
    assert _links_to(site, "index.html", "guides/README.html")
    assert _links_to(site, "index.html", "collections/index.html")
    assert any(text == FQCN for level, text in page.headings if level == 1), page.headings


def test_readme_links_between_guides_stay_in_the_site(site):
    """README.md links docs/pull/README.md: on the site that is the guide's page, not a dead .md link."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    if "](docs/pull/README.md)" not in readme:
        pytest.skip("README.md no longer links docs/pull/README.md")
    assert _links_to(site, "guides/README.html", "guides/docs/pull/README.html"), sorted(site["guides/README.html"].links)
