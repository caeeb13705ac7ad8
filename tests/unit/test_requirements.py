# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""requirements.yml lists exactly the collections the repository uses.

"Used" means: a fully qualified name ``namespace.collection.name`` outside ``ansible.builtin`` and
this collection, found in

* YAML files (playbooks, roles, molecule, inventories, the execution environment, anything else),
  every key and string value, comments excluded: modules, ``ansible_connection`` values, lookups,
  filters and tests inside Jinja;
* Jinja templates and ini/cfg files, as text;
* Python files, in string constants and ``ansible_collections.<ns>.<collection>`` imports;
* molecule scenarios, through the collections their driver declares as required (the docker
  driver's create/destroy playbooks run community.docker and ansible.posix).

A name counts when its collection is installed here (the pinned ``ansible`` package) and really
has that plugin, role or playbook, or, for collections not installed here, when it is a task's
module key in YAML. Mentions that are not uses are listed in NOT_USES with the reason.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SELF = ("netlock", "killswitch")
BUILTIN = ("ansible", "builtin")
SKIP_DIRS = {".git", ".venv", ".collections", ".cache", "tests/output", "dist", "reports", "node_modules",
             ".pytest_cache", ".hypothesis", "__pycache__"}
YAML_SUFFIXES = {".yml", ".yaml"}
TEXT_SUFFIXES = {".j2", ".cfg", ".ini"}
FQCN = re.compile(r"(?<![\w.])([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)\.([a-z_][a-z0-9_]*)(?![\w])")
IMPORT = re.compile(r"^ansible_collections\.([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)(\.|$)")
# (file, fqcn): why the mention is not a dependency.
NOT_USES = {
    ("plugins/action/killswitch_policy.py", "ansible.netcommon.libssh"):
        "a connection name compared with the host's ansible_connection; nothing is loaded from it",
}
# What a user of the collection runs; anything it uses must be a galaxy.yml dependency.
RUNTIME_DIRS = ("roles/", "playbooks/", "plugins/", "meta/")
# The list itself and this file (its examples are not uses).
NOT_SCANNED = ("requirements.yml", "tests/unit/test_requirements.py")
PLUGIN_DIRS = ("action", "become", "cache", "callback", "cliconf", "connection", "doc_fragments", "filter",
               "httpapi", "inventory", "lookup", "module_utils", "modules", "netconf", "shell", "strategy",
               "terminal", "test", "vars")


# --------------------------------------------------------------------------- what is installed here

def _installed_collections():
    """{(namespace, name): collection root} for every collection on sys.path and the collections paths."""
    roots = [Path(p) for p in sys.path if p]
    roots += [Path(p) for p in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep) if p]
    found = {}
    for root in roots:
        base = root / "ansible_collections"
        if not base.is_dir():
            continue
        for meta in sorted(base.glob("*/*/MANIFEST.json")) + sorted(base.glob("*/*/galaxy.yml")):
            found.setdefault((meta.parent.parent.name, meta.parent.name), meta.parent)
    return found


INSTALLED = _installed_collections()


def _has_content(root, name):
    """Whether a collection ships a plugin, module, role or playbook called name (or routes it)."""
    for kind in PLUGIN_DIRS:
        folder = root / "plugins" / kind
        if (folder / (name + ".py")).exists() or (folder / (name + ".ps1")).exists() or (folder / name).is_dir():
            return True
        if kind in ("filter", "test") and folder.is_dir():
            # filters and tests live several to a file: look for the name in the plugin sources
            if any(re.search(r"['\"]%s['\"]\s*:" % re.escape(name), p.read_text(errors="replace"))
                   for p in folder.glob("*.py")) or (folder / (name + ".yml")).exists():
                return True
    if (root / "roles" / name).is_dir() or (root / "playbooks" / (name + ".yml")).exists():
        return True
    runtime = root / "meta" / "runtime.yml"
    if runtime.exists():
        routing = (yaml.safe_load(runtime.read_text()) or {}).get("plugin_routing") or {}
        return any(name in (entries or {}) for entries in routing.values())
    return False


def _counts(fqcn, is_task_key=False):
    ns, coll, name = fqcn.split(".")
    if (ns, coll) in (SELF, BUILTIN):
        return False
    if (ns, coll) in INSTALLED:
        return _has_content(INSTALLED[(ns, coll)], name)
    return is_task_key


# --------------------------------------------------------------------------- the repository's files

def repository_files():
    """Tracked and new (not ignored) files, relative to the repository root."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
        files = [Path(p) for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an installed collection)
        files = [p.relative_to(REPO_ROOT) for p in REPO_ROOT.rglob("*") if p.is_file()]
    keep = []
    for rel in files:
        text = rel.as_posix()
        if any(text == d or text.startswith(d + "/") or ("/%s/" % d) in "/" + text for d in SKIP_DIRS):
            continue
        if (REPO_ROOT / rel).is_file():
            keep.append(rel)
    return sorted(keep)


def _yaml_strings(node, found, parent_is_task=False):
    """Every string key/value of a YAML document: (string, is_task_module_key)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str):
                found.append((key, parent_is_task))
            _yaml_strings(value, found)
    elif isinstance(node, list):
        for item in node:
            # a list item that is a mapping with a 'name' or a dotted key is a task (or play)
            _yaml_strings(item, found, parent_is_task=isinstance(item, dict))
    elif isinstance(node, str):
        found.append((node, False))


def _python_strings(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value
        elif isinstance(node, ast.ImportFrom) and node.module:
            match = IMPORT.match(node.module)
            if match:
                yield "%s.%s.__import__" % (match.group(1), match.group(2))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                match = IMPORT.match(alias.name)
                if match:
                    yield "%s.%s.__import__" % (match.group(1), match.group(2))


def fqcn_uses(files=None):
    """{collection: {file: sorted names}} of every non-builtin collection the files use."""
    uses = {}

    def add(rel, fqcn, is_task_key=False):
        if (rel.as_posix(), fqcn) in NOT_USES:
            return
        ns, coll, name = fqcn.split(".")
        if name == "__import__":
            if (ns, coll) == SELF:
                return
        elif not _counts(fqcn, is_task_key):
            return
        uses.setdefault("%s.%s" % (ns, coll), {}).setdefault(rel.as_posix(), set()).add(name)

    for rel in files if files is not None else repository_files():
        path = REPO_ROOT / rel
        if rel.as_posix() in NOT_SCANNED:
            continue
        if path.suffix in YAML_SUFFIXES:
            strings = []
            for document in yaml.safe_load_all(path.read_text()):
                _yaml_strings(document, strings)
            for text, is_task in strings:
                key_is_fqcn = is_task and FQCN.fullmatch(text) is not None
                for match in FQCN.finditer(text):
                    add(rel, match.group(0), key_is_fqcn)
        elif path.suffix in TEXT_SUFFIXES:
            for match in FQCN.finditer(path.read_text(errors="replace")):
                add(rel, match.group(0))
        elif path.suffix == ".py":
            for text in _python_strings(path):
                if text.endswith(".__import__"):
                    add(rel, text)
                    continue
                for match in FQCN.finditer(text):
                    add(rel, match.group(0))
    for scenario in sorted((REPO_ROOT / "molecule").glob("*/molecule.yml")):
        for collection in molecule_driver_collections(scenario):
            rel = scenario.relative_to(REPO_ROOT).as_posix()
            uses.setdefault(collection, {}).setdefault(rel, set()).add("(driver)")
    return {c: {f: sorted(n) for f, n in per_file.items()} for c, per_file in uses.items()}


def molecule_driver_collections(scenario):
    """Collections the scenario's molecule driver requires (molecule checks them before a run)."""
    driver = ((yaml.safe_load(scenario.read_text()) or {}).get("driver") or {}).get("name", "default")
    from molecule.api import drivers  # pylint: disable=import-outside-toplevel
    known = drivers()
    assert driver in known, "%s: molecule driver %r is not installed" % (scenario, driver)
    return sorted(known[driver].required_collections)


def listed():
    """{name: version spec} from requirements.yml."""
    data = yaml.safe_load((REPO_ROOT / "requirements.yml").read_text()) or {}
    assert set(data) <= {"collections", "roles"}, "requirements.yml: unexpected keys %s" % sorted(data)
    assert not data.get("roles"), "requirements.yml lists roles; the repository uses none from Galaxy"
    entries = {}
    for entry in data.get("collections") or []:
        entry = {"name": entry} if isinstance(entry, str) else entry
        assert entry["name"] not in entries, "requirements.yml lists %s twice" % entry["name"]
        entries[entry["name"]] = entry.get("version", "*")
    return entries


# --------------------------------------------------------------------------- the tests

def test_every_used_collection_is_listed():
    uses = fqcn_uses()
    missing = {c: where for c, where in uses.items() if c not in listed()}
    assert not missing, "used but not in requirements.yml:\n%s" % json.dumps(missing, indent=1, sort_keys=True)


def test_every_listed_collection_is_used():
    uses = fqcn_uses()
    unused = sorted(set(listed()) - set(uses))
    assert not unused, "listed in requirements.yml but used nowhere in the repository: %s" % unused


def test_shipped_content_needs_only_galaxy_dependencies():
    """What users run (role, playbooks, plugins) may use only collections galaxy.yml depends on;
    requirements.yml may list more for the lab and the tests."""
    dependencies = set((yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text()).get("dependencies") or {}))
    shipped = {c: [f for f in where if f.startswith(RUNTIME_DIRS)] for c, where in fqcn_uses().items()}
    undeclared = {c: where for c, where in shipped.items() if where and c not in dependencies}
    assert not undeclared, "the collection's own content uses collections galaxy.yml does not depend on: %s" % undeclared


def test_listed_versions_admit_the_pinned_ansible_package_and_the_drivers():
    """What CI runs (the collections of the pinned ansible package) is what a user installs; and no
    listed version range lets in a version older than a molecule driver requires."""
    from ansible.galaxy.dependency_resolution.versioning import meets_requirements  # pylint: disable=import-outside-toplevel
    for name, spec in listed().items():
        ns, coll = name.split(".")
        assert (ns, coll) in INSTALLED, "%s is not installed here (pinned ansible package)" % name
        manifest = INSTALLED[(ns, coll)] / "MANIFEST.json"
        version = json.loads(manifest.read_text())["collection_info"]["version"]
        assert meets_requirements(version, spec), "%s %s (pinned ansible package) is outside %r" % (name, version, spec)
    for scenario in sorted((REPO_ROOT / "molecule").glob("*/molecule.yml")):
        driver = ((yaml.safe_load(scenario.read_text()) or {}).get("driver") or {}).get("name", "default")
        from molecule.api import drivers  # pylint: disable=import-outside-toplevel
        for name, minimum in drivers()[driver].required_collections.items():
            spec = listed()[name]
            assert spec != "*" and not meets_requirements(_older_than(minimum), spec), (
                "%s: requirements.yml admits %s versions older than %s, which molecule's %s driver needs"
                % (scenario.parent.name, name, minimum, driver))


def _older_than(version):
    """A version just below the given one (1.4.0 -> 1.3.999)."""
    parts = [int(p) for p in version.split(".")[:3]]
    for index in range(len(parts) - 1, -1, -1):
        if parts[index]:
            parts[index] -= 1
            parts[index + 1:] = [999] * (len(parts) - index - 1)
            return ".".join(map(str, parts))
    raise ValueError(version)


# The detector itself: each kind of use is found, and mentions that are not uses are not.
@pytest.mark.may_skip_in_ci  # community.general is optional in the venv, not a tool the checks need
@pytest.mark.parametrize("rel, text, expected", [
    ("x/play.yml", "- hosts: all\n  tasks:\n    - community.docker.docker_container: {name: a}\n",
     {"community.docker": ["docker_container"]}),
    ("x/inv.yml", "all:\n  vars:\n    ansible_connection: community.docker.docker\n",
     {"community.docker": ["docker"]}),
    ("x/vars.yml", "x: \"{{ lookup('community.general.random_string') }}\"\n",
     {"community.general": ["random_string"]}),
    ("x/tasks.yml", "- acme.widgets.frobnicate: {}\n", {"acme.widgets": ["frobnicate"]}),
    ("x/comment.yml", "# community.general.random_string is not used here\nx: vpn.example.net\n", {}),
    ("x/builtin.yml", "- ansible.builtin.command: true\n- netlock.killswitch.killswitch_policy: {}\n", {}),
    ("x/mod.py", "from ansible.utils.display import Display\nX = 'ansible.posix.synchronize'\n",
     {"ansible.posix": ["synchronize"]}),
    ("x/mod2.py", "from ansible_collections.community.docker.plugins.module_utils import common\n",
     {"community.docker": ["__import__"]}),
])
def test_detector(tmp_path, monkeypatch, rel, text, expected):
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(text)
    found = {c: sorted(n for names in per_file.values() for n in names) for c, per_file in
             fqcn_uses([Path(rel)]).items()}
    if ("community", "general") not in INSTALLED and "community.general" in expected:
        pytest.skip("community.general is not installed here")
    assert found == expected
