# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""galaxy.yml, meta/runtime.yml, the CI matrix and the tarball users install.

* galaxy.yml carries what Galaxy shows: version, license (with LICENSE beside it), tags, and the
  repository, documentation, homepage and issues URLs, all in the one repository;
* meta/runtime.yml's requires_ansible admits the ansible-core release lines that the CI matrix
  (.github/workflows/ci.yml, the one place it is declared) tests and no older one, the pinned
  toolchain's ansible-core is one of them, and every ``matrix.<key>`` the workflow uses is set
  in every cell; tools/matrix.py (``make matrix``) reads the same cells;
* ``ansible-galaxy collection build`` makes a tarball with what users run and nothing of the
  development bench (lab, molecule, tests, tools, bench, lab inventories, CI, caches, venvs,
  reports): every module, plugin, role file, playbook and doc is in it; it installs offline,
  ``ansible-doc`` documents every module and the role from the installed copy, and the shipped
  playbooks parse there; nothing shipped refers to a path left out.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[2]
GALAXY = yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text())
RUNTIME = yaml.safe_load((REPO_ROOT / "meta" / "runtime.yml").read_text())
WORKFLOW_PATH = REPO_ROOT / ".github" / "workflows" / "ci.yml"
WORKFLOW = yaml.safe_load(WORKFLOW_PATH.read_text())
MATRIX_JOB = "ansible-test"
REPOSITORY = "https://github.com/netlock/killswitch"
FQCN = "%s.%s" % (GALAXY["namespace"], GALAXY["name"])
TARBALL = "%s-%s-%s.tar.gz" % (GALAXY["namespace"], GALAXY["name"], GALAXY["version"])

# What the tarball carries: top-level directories and files users run or read (extensions/: the molecule
# scenario users copy, extensions/molecule/killswitch, in the ansible-native layout).
SHIPPED_DIRS = ("plugins/", "roles/", "playbooks/", "meta/", "docs/", "extensions/", "inventories/example/")
SHIPPED_FILES = ("README.md", "CHANGELOG.md", "LICENSE", "requirements.yml", "execution-environment.yml",
                 "changelogs/changelog.yaml", "changelogs/config.yaml")
ADDED_BY_BUILD = ("MANIFEST.json", "FILES.json")
# The development bench: never in the tarball.
EXCLUDED_DIRS = ("lab/", "molecule/", "tests/", "tools/", "bench/", "inventories/lab/", "inventories/fleet/", ".github/", ".ci/", ".git/",
                 ".venv/", ".collections/", ".cache/", ".ansible/", ".hypothesis/", ".benchmarks/",
                 ".pytest_cache/", "reports/", "dist/", "build/", "changelogs/fragments/")
EXCLUDED_FILES = ("Makefile", "requirements-dev.txt", ".gitignore", ".yamllint", ".ansible-lint", ".ansible-lint-ignore",
                  ".cache-image-ref",
                  "changelogs/.plugin-cache.yaml")
EXCLUDED_PATH = re.compile(r"(?<![\w.-])(lab|molecule|tests|tools|bench|inventories)/")


# --------------------------------------------------------------------------- galaxy.yml

def test_galaxy_metadata_is_complete():
    for key in ("namespace", "name", "version", "readme", "authors", "description", "tags", "repository",
                "documentation", "homepage", "issues"):
        assert GALAXY.get(key), "galaxy.yml: %s is missing or empty" % key
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(GALAXY["version"])), "galaxy.yml: version %r is not x.y.z" % GALAXY["version"]
    assert (REPO_ROOT / GALAXY["readme"]).is_file()
    assert GALAXY["dependencies"] == {}, "the role and playbooks use ansible.builtin only (requirements.yml serves the lab)"


def test_galaxy_urls_name_the_one_repository():
    assert GALAXY["repository"] == REPOSITORY
    for key in ("documentation", "homepage", "issues"):
        url = GALAXY[key]
        assert url == REPOSITORY or url.startswith(REPOSITORY + "/") or url.startswith(REPOSITORY + "#"), \
            "galaxy.yml: %s %s is not under %s" % (key, url, REPOSITORY)
    assert GALAXY["issues"] == REPOSITORY + "/issues"


def test_galaxy_tags_are_valid():
    tags = GALAXY["tags"]
    assert 0 < len(tags) <= 20 and len(set(tags)) == len(tags), tags
    for tag in tags:
        assert re.fullmatch(r"[a-z0-9][a-z0-9_]{0,63}", tag), "galaxy.yml: tag %r is not lowercase alphanumeric" % tag
    assert set(tags) & {"application", "cloud", "database", "infrastructure", "linux", "monitoring", "networking",
                        "security", "storage", "tools", "windows"}, "no standard Galaxy category tag"


def test_license_is_declared_once_and_shipped():
    assert bool(GALAXY.get("license")) != bool(GALAXY.get("license_file")), "galaxy.yml: exactly one of license, license_file"
    assert GALAXY.get("license") == ["GPL-3.0-or-later"]
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 3, 29 June 2007" in text


# --------------------------------------------------------------------------- the support matrix

def _matrix_cells():
    return WORKFLOW["jobs"][MATRIX_JOB]["strategy"]["matrix"]["include"]


def _release_lines():
    return sorted({str(cell["ansible-core"]) for cell in _matrix_cells()}, key=Version)


def test_matrix_cells_are_release_lines_and_pythons():
    cells = _matrix_cells()
    assert cells
    for cell in cells:
        assert re.fullmatch(r"\d+\.\d+", str(cell["ansible-core"])), cell
        assert re.fullmatch(r"3\.\d+", str(cell["python"])), cell
    lines = _release_lines()
    assert len(lines) >= 2, "the matrix must cover at least the two newest ansible-core release lines: %s" % lines
    for line in lines:
        assert [c for c in cells if str(c["ansible-core"]) == line and c.get("sanity")], \
            "ansible-test sanity runs in no cell of ansible-core %s" % line


def test_requires_ansible_admits_exactly_the_tested_lines():
    spec = SpecifierSet(RUNTIME["requires_ansible"])
    lines = _release_lines()
    for line in lines:
        assert Version(line + ".0") in spec, "requires_ansible %s refuses ansible-core %s, which CI tests" % (spec, line)
    major, minor = (int(n) for n in lines[0].split("."))
    older = Version("%d.%d.999" % (major, minor - 1))
    assert older not in spec, "requires_ansible %s admits %s, older than the matrix (%s)" % (spec, older, lines)


def test_pinned_toolchain_is_a_tested_line():
    pins = [line.split("==")[1].strip() for line in (REPO_ROOT / "requirements-dev.txt").read_text().splitlines()
            if line.startswith("ansible-core==")]
    assert len(pins) == 1, "requirements-dev.txt must pin ansible-core once"
    line = ".".join(pins[0].split(".")[:2])
    assert line in _release_lines(), "requirements-dev.txt's ansible-core %s is not in the CI matrix" % pins[0]


@pytest.mark.may_skip_in_ci  # a metadata question, not a missing tool
def test_pythons_of_the_installed_line_are_supported():
    """The cells of the ansible-core installed here name Pythons that this ansible-core supports."""
    import importlib.metadata  # pylint: disable=import-outside-toplevel
    installed = Version(importlib.metadata.version("ansible-core"))
    requires_python = importlib.metadata.metadata("ansible-core")["Requires-Python"]
    if not requires_python:  # ansible-test units runs ansible-core from a copy with metadata of its own
        pytest.skip("the ansible-core metadata here does not say which Pythons it supports")
    requires = SpecifierSet(requires_python)
    line = "%d.%d" % (installed.major, installed.minor)
    pythons = [str(c["python"]) for c in _matrix_cells() if str(c["ansible-core"]) == line]
    if not pythons:
        pytest.skip("ansible-core %s is not a matrix line (test_pinned_toolchain_is_a_tested_line covers the pin)" % installed)
    for python in pythons:
        assert Version(python) in requires, "ansible-core %s needs Python %s, the matrix has %s" % (installed, requires, python)


def test_workflow_matrix_references_are_defined():
    for name, job in WORKFLOW["jobs"].items():
        matrix = (job.get("strategy") or {}).get("matrix") or {}
        text = yaml.safe_dump(job)
        used = set(re.findall(r"\bmatrix\.([A-Za-z_][\w-]*)", text))
        if not matrix:
            assert not used, "job %s uses matrix.%s without a matrix" % (name, used)
            continue
        axes = {k for k in matrix if k not in ("include", "exclude")}
        cells = matrix.get("include") or [{}]
        for cell in cells:
            missing = used - axes - set(cell)
            assert not missing, "job %s: matrix.%s is not set in cell %s" % (name, ", matrix.".join(sorted(missing)), cell)


def test_make_matrix_reads_the_workflow_matrix():
    spec = importlib.util.spec_from_file_location("netlock_matrix", REPO_ROOT / "tools" / "matrix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cells, units = module.load_matrix()
    assert [(c["ansible-core"], c["python"], c["sanity"]) for c in cells] == \
        [(str(c["ansible-core"]), str(c["python"]), bool(c.get("sanity"))) for c in _matrix_cells()]
    assert units == WORKFLOW["jobs"][MATRIX_JOB]["env"]["UNIT_TESTS"].split()
    for path in units:
        assert (REPO_ROOT / path).exists(), "UNIT_TESTS names %s, which does not exist" % path


# --------------------------------------------------------------------------- the tarball

def _tool(name):
    beside = Path(sys.executable).parent / name
    path = str(beside) if beside.exists() else shutil.which(name)
    if path is None:
        pytest.fail("%s is not installed" % name)
    return path


def _isolated_env(tmp, collections=None):
    """No user configuration, no PYTHONPATH, no collections but the given path, a Galaxy server that cannot answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_") and k != "PYTHONPATH"}
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), ANSIBLE_COLLECTIONS_PATH=str(collections or tmp / "none"),
               ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false", ANSIBLE_GALAXY_SERVER="http://127.0.0.1:9/",
               ANSIBLE_GALAXY_DISABLE_GPG_VERIFY="1", ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"))
    return env


def _run(argv, env, cwd=None):
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, "%s failed (%d):\n%s\n%s" % (" ".join(argv), proc.returncode, proc.stdout, proc.stderr)
    return proc


def _checkout_files():
    """The collection's files as a contributor has them: tracked and new, not ignored."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout
        files = [p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        files = [p.relative_to(REPO_ROOT).as_posix() for p in REPO_ROOT.rglob("*") if p.is_file()]
    return sorted(f for f in files if (REPO_ROOT / f).is_file() and "__pycache__" not in f and not f.endswith(".pyc"))


def _is_shipped(path):
    return path.startswith(SHIPPED_DIRS) or path in SHIPPED_FILES


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(tmp, tarball, member file names): the tarball built from the checkout."""
    tmp = tmp_path_factory.mktemp("galaxy")
    env = _isolated_env(tmp)
    _run([_tool("ansible-galaxy"), "collection", "build", "--output-path", str(tmp / "dist"), str(REPO_ROOT)], env=env)
    tarball = tmp / "dist" / TARBALL
    assert tarball.is_file(), "ansible-galaxy collection build did not write %s" % TARBALL
    with tarfile.open(tarball) as archive:
        names = sorted(m.name for m in archive.getmembers() if m.isfile())
    return tmp, tarball, names


@pytest.fixture(scope="module")
def installed(built):
    """(tmp, collections path, installed root): the tarball installed offline, without dependencies."""
    tmp, tarball, _names = built
    collections = tmp / "collections"
    env = _isolated_env(tmp, collections)
    _run([_tool("ansible-galaxy"), "collection", "install", "--offline", "--no-deps", "-p", str(collections), str(tarball)],
         env=env)
    root = collections / "ansible_collections" / GALAXY["namespace"] / GALAXY["name"]
    assert (root / "MANIFEST.json").is_file()
    return tmp, collections, root


def test_tarball_leaves_the_bench_out(built):
    _tmp, _tarball, names = built
    strays = [n for n in names if n.startswith(EXCLUDED_DIRS) or n in EXCLUDED_FILES or n.endswith((".tar.gz", ".pyc"))
              or "__pycache__" in n]
    assert not strays, "the tarball carries development files: %s" % strays


def test_tarball_carries_only_what_users_run(built):
    _tmp, _tarball, names = built
    unexpected = [n for n in names if not _is_shipped(n) and n not in ADDED_BY_BUILD]
    assert not unexpected, ("files outside %s in the tarball: %s; ship them on purpose (SHIPPED_*) or add them "
                            "to galaxy.yml's build_ignore" % (SHIPPED_DIRS + SHIPPED_FILES, unexpected))


def test_tarball_carries_every_plugin_role_playbook_and_doc(built):
    _tmp, _tarball, names = built
    wanted = [f for f in _checkout_files() if _is_shipped(f)]
    assert [f for f in wanted if f.startswith("plugins/modules/")], "no module found in the checkout"
    missing = sorted(set(wanted) - set(names))
    assert not missing, "shipped files missing from the tarball: %s" % missing
    assert {"MANIFEST.json", "FILES.json"} <= set(names)


def test_tarball_manifest_names_this_collection(built):
    _tmp, tarball, _names = built
    with tarfile.open(tarball) as archive:
        info = json.load(archive.extractfile("MANIFEST.json"))["collection_info"]
    for key in ("namespace", "name", "version", "repository", "documentation", "homepage", "issues", "tags", "license"):
        assert info[key] == GALAXY[key], "MANIFEST.json %s: %r, galaxy.yml: %r" % (key, info[key], GALAXY[key])


def _string_constants(path, text):
    """Strings a shipped file uses (comments and docstrings are prose, not references)."""
    if path.endswith((".yml", ".yaml")):
        found = []

        def walk(node):
            if isinstance(node, dict):
                for key, value in node.items():
                    walk(key)
                    walk(value)
            elif isinstance(node, list):
                for item in node:
                    walk(item)
            elif isinstance(node, str):
                found.append(node)
        for document in yaml.safe_load_all(text):
            walk(document)
        return found
    if path.endswith(".py"):
        tree = ast.parse(text)
        docstrings = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    docstrings.add(id(first.value))
        return [n.value for n in ast.walk(tree)
                if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]
    if path.endswith(".j2"):
        return [re.sub(r"\{#.*?#\}", "", text, flags=re.S)]
    return []


def test_nothing_shipped_uses_the_bench(installed):
    """Playbooks, roles, plugins and meta use no lab/, molecule/, tests/, tools/, bench/ or inventories/ path."""
    _tmp, _collections, root = installed
    uses = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or not rel.startswith(("plugins/", "roles/", "playbooks/", "meta/")):
            continue
        for value in _string_constants(rel, path.read_text(errors="replace")):
            for line in value.splitlines():
                if not line.lstrip().startswith("#") and EXCLUDED_PATH.search(line):
                    uses.append("%s: %s" % (rel, line.strip()))
    assert not uses, "shipped files use paths the tarball leaves out:\n" + "\n".join(uses)


def test_installed_modules_are_documented(installed):
    tmp, collections, root = installed
    modules = sorted(p.stem for p in (root / "plugins" / "modules").glob("*.py") if p.stem != "__init__")
    redirects = sorted(((RUNTIME.get("plugin_routing") or {}).get("modules") or {}))
    names = ["%s.%s" % (FQCN, m) for m in modules + redirects]
    proc = _run([_tool("ansible-doc"), "-t", "module", "--json"] + names, env=_isolated_env(tmp, collections))
    docs = json.loads(proc.stdout)
    assert sorted(docs) == sorted(names), "ansible-doc found %s of %s:\n%s" % (sorted(docs), names, proc.stderr)
    for name, entry in docs.items():
        doc = entry["doc"]
        assert doc.get("short_description") and doc.get("description"), name
        assert doc.get("collection") == FQCN, name
        assert doc["filename"].startswith(str(root)), "%s documented from %s, not the installed copy" % (name, doc["filename"])
        assert entry.get("examples"), "%s has no EXAMPLES" % name


def test_installed_role_is_documented(installed):
    tmp, collections, root = installed
    roles = sorted(p.name for p in (root / "roles").iterdir() if (p / "meta" / "argument_specs.yml").is_file())
    assert roles
    names = ["%s.%s" % (FQCN, r) for r in roles]
    proc = _run([_tool("ansible-doc"), "-t", "role", "--json"] + names, env=_isolated_env(tmp, collections))
    docs = json.loads(proc.stdout)
    assert sorted(docs) == names, proc.stderr
    for role, entry in docs.items():
        assert entry["entry_points"]["main"]["options"], role
        assert entry["path"].startswith(str(root)), entry["path"]


def test_installed_playbooks_parse(installed):
    tmp, collections, root = installed
    playbooks = sorted("%s.%s" % (FQCN, p.stem) for p in (root / "playbooks").glob("*.yml"))
    assert playbooks
    (tmp / "inventory.yml").write_text("---\nall:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    _run([_tool("ansible-playbook"), "-i", str(tmp / "inventory.yml"), "--syntax-check"] + playbooks,
         env=_isolated_env(tmp, collections), cwd=tmp)


def _pins(path):
    """{name: version} of a requirements file's lines."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _sep, version = line.partition("==")
            found[name.split("[")[0].strip().lower()] = version.strip()
    return found


def test_unit_requirements_match_the_toolchain_pins():
    """tests/unit/requirements.txt (ansible-test units in the matrix) pins what requirements-dev.txt pins."""
    unit, dev = _pins(REPO_ROOT / "tests" / "unit" / "requirements.txt"), _pins(REPO_ROOT / "requirements-dev.txt")
    assert unit
    for name, version in unit.items():
        assert version and dev.get(name) == version, "%s: tests/unit/requirements.txt %r, requirements-dev.txt %r" % (
            name, version, dev.get(name))
