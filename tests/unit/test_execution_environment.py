# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""execution-environment.yml generates the build context it declares.

The image itself cannot be built here (no container registry for the base image), so this builds
the collection tarball from the checkout, runs ``ansible-builder create`` into a temporary
directory and checks the context: the Containerfile, the base image, the pinned ansible-core and
ansible-runner, the collection tarball and the requirements copied in. The image's collection
stage (``ansible-galaxy collection install`` with the declared options) and ansible-builder's
dependency introspection are then run here, offline, on that context.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
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
from packaging.requirements import Requirement
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EE_FILE = REPO_ROOT / "execution-environment.yml"
GALAXY = yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text())
TARBALL = "%s-%s-%s.tar.gz" % (GALAXY["namespace"], GALAXY["name"], GALAXY["version"])
HOST_ONLY_PACKAGES = ("nftables", "util-linux", "iproute", "docker", "moby", "systemd")


def _tool(name):
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if path is None:
        pytest.fail("%s is not installed (make venv installs requirements-dev.txt)" % name)
    return str(path)


def _run(argv, cwd=None, env=None):
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, "%s failed (%d):\n%s\n%s" % (" ".join(argv), proc.returncode, proc.stdout, proc.stderr)
    return proc


def _isolated_env(tmp):
    """No user configuration, no collections from elsewhere, and a Galaxy server that cannot answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(HOME=str(tmp / "home"), ANSIBLE_COLLECTIONS_PATH=str(tmp / "none"),
               ANSIBLE_GALAXY_SERVER="http://127.0.0.1:9/", ANSIBLE_GALAXY_DISABLE_GPG_VERIFY="1")
    (tmp / "home").mkdir(exist_ok=True)
    return env


@pytest.fixture(scope="module")
def declared():
    return yaml.safe_load(EE_FILE.read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory, declared):
    """(work dir, build context, tarball): the tarball built from the checkout, then the context."""
    work = tmp_path_factory.mktemp("ee")
    env = _isolated_env(work)
    shutil.copy(EE_FILE, work / EE_FILE.name)
    _run([_tool("ansible-galaxy"), "collection", "build", "--output-path", str(work / "dist"), str(REPO_ROOT)], env=env)
    tarball = work / "dist" / TARBALL
    assert tarball.is_file(), "ansible-galaxy collection build did not write %s" % TARBALL
    context = work / "context"
    _run([_tool("ansible-builder"), "create", "-f", str(work / EE_FILE.name), "-c", str(context),
          "--output-filename", "Containerfile"], cwd=work, env=env)
    return work, context, tarball


def _containerfile_args(context):
    text = (context / "Containerfile").read_text()
    return text, dict(re.findall(r'^ARG (\w+)="(.*)"$', text, re.M))


def _dev_pin(name):
    for line in (REPO_ROOT / "requirements-dev.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and Requirement(line).name == name:
            return line
    raise AssertionError("%s is not pinned in requirements-dev.txt" % name)


def test_definition_is_schema_3_and_pinned(declared):
    assert declared["version"] == 3
    deps = declared["dependencies"]
    assert deps["ansible_core"]["package_pip"] == _dev_pin("ansible-core"), \
        "the EE must run the ansible-core that CI tests (requirements-dev.txt)"
    for key in ("ansible_core", "ansible_runner"):
        assert "==" in deps[key]["package_pip"], "%s is not pinned" % key
    tags = declared["options"]["tags"]
    assert any(tag.endswith(":" + GALAXY["version"]) for tag in tags), "image tag %s does not carry the version" % tags


def test_containerfile_declares_base_image_interpreter_and_pins(built, declared):
    _work, context, _tarball = built
    text, args = _containerfile_args(context)
    deps = declared["dependencies"]
    assert args["EE_BASE_IMAGE"] == declared["images"]["base_image"]["name"]
    assert args["PYCMD"] == deps["python_interpreter"]["python_path"]
    assert args["PYPKG"] == deps["python_interpreter"]["package_system"]
    assert args["ANSIBLE_INSTALL_REFS"].split() == [deps["ansible_core"]["package_pip"],
                                                    deps["ansible_runner"]["package_pip"]]
    assert args["ANSIBLE_GALAXY_CLI_COLLECTION_OPTS"].split() == ["--offline"]
    assert "ansible-galaxy collection install $ANSIBLE_GALAXY_CLI_COLLECTION_OPTS -r requirements.yml" in text
    assert "COPY _build /build" in text
    assert "LABEL ansible-execution-environment=true" in text


def test_interpreter_is_one_ansible_core_supports(declared):
    package = declared["dependencies"]["python_interpreter"]["package_system"]
    version = re.fullmatch(r"python(\d+\.\d+)", package)
    assert version, "cannot tell the Python version of the package %r" % package
    requires = importlib.metadata.metadata("ansible-core")["Requires-Python"]
    from packaging.specifiers import SpecifierSet  # pylint: disable=import-outside-toplevel
    assert Version(version.group(1)) in SpecifierSet(requires), \
        "ansible-core %s needs Python %s, the EE has %s" % (importlib.metadata.version("ansible-core"), requires, package)


def test_collection_tarball_is_copied_in(built, declared):
    _work, context, tarball = built
    copied = context / "_build" / "collections" / TARBALL
    assert copied.is_file(), "the collection tarball is not in the build context"
    assert hashlib.sha256(copied.read_bytes()).digest() == hashlib.sha256(tarball.read_bytes()).digest()
    with tarfile.open(copied) as archive:
        info = json.load(archive.extractfile("MANIFEST.json"))["collection_info"]
        names = archive.getnames()
    assert (info["namespace"], info["name"], info["version"]) == (GALAXY["namespace"], GALAXY["name"], GALAXY["version"])
    assert "roles/killswitch/tasks/main.yml" in names and "plugins/action/killswitch_policy.py" in names
    assert [f["src"] for f in declared["additional_build_files"]] == ["dist/" + TARBALL], \
        "execution-environment.yml names a tarball other than the one galaxy.yml's version builds"


def test_galaxy_requirements_are_local_files_only(built, declared):
    _work, context, _tarball = built
    requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    assert requirements == declared["dependencies"]["galaxy"]
    entries = requirements["collections"]
    assert entries == [{"name": "collections/" + TARBALL, "type": "file"}]
    assert not requirements.get("roles")


def test_system_and_python_dependencies_are_the_controller_side(built, declared):
    _work, context, _tarball = built
    bindep = [line.strip() for line in (context / "_build" / "bindep.txt").read_text().splitlines() if line.strip()]
    assert bindep == declared["dependencies"]["system"]
    assert any(line.split()[0] == "openssh-clients" for line in bindep), "no SSH client to reach the hosts"
    assert not [p for p in bindep if p.split()[0].startswith(HOST_ONLY_PACKAGES)], "host-side packages in the EE"
    python = declared["dependencies"]["python"]
    requirements_txt = context / "_build" / "requirements.txt"
    if python:
        assert requirements_txt.read_text().split() == python
    else:
        assert not requirements_txt.exists()


def test_collection_stage_runs_offline_and_adds_no_dependencies(built, declared):
    """The image's galaxy stage and builder introspection, run here against the generated context."""
    work, context, _tarball = built
    env = _isolated_env(work)
    _text, args = _containerfile_args(context)
    target = work / "usr-share-ansible" / "collections"
    _run([_tool("ansible-galaxy"), "collection", "install"] + args["ANSIBLE_GALAXY_CLI_COLLECTION_OPTS"].split()
         + ["-r", "requirements.yml", "--collections-path", str(target)], cwd=context / "_build", env=env)
    installed = target / "ansible_collections" / GALAXY["namespace"] / GALAXY["name"]
    assert (installed / "MANIFEST.json").is_file()
    assert sorted(p.parent.name for p in (target / "ansible_collections").glob("*/*/MANIFEST.json")) == [GALAXY["name"]]

    out = work / "introspected"
    _run([sys.executable, str(context / "_build" / "scripts" / "introspect.py"), "introspect",
          "--user-bindep", str(context / "_build" / "bindep.txt"),
          "--write-bindep", str(out.with_suffix(".bindep")), "--write-pip", str(out.with_suffix(".pip")),
          str(target)], env=env)
    final_bindep = [line.split("#")[0].strip() for line in out.with_suffix(".bindep").read_text().splitlines()]
    assert [line for line in final_bindep if line] == declared["dependencies"]["system"]
    final_pip = out.with_suffix(".pip")
    assert not final_pip.exists() or not final_pip.read_text().strip(), \
        "the collection declares Python requirements: add them to execution-environment.yml deliberately"


def test_controller_plugins_import_only_what_the_image_has(declared):
    """Everything but modules runs on the controller: stdlib, ansible-core and its requirements,
    this collection, and the declared Python dependencies."""
    allowed = set(sys.stdlib_module_names) | {"__future__", "ansible", "ansible_collections"}
    distributions = importlib.metadata.packages_distributions()
    wanted = {Requirement(r).name.lower() for r in importlib.metadata.requires("ansible-core") or []
              if "extra ==" not in r}
    wanted |= {Requirement(r).name.lower() for r in declared["dependencies"]["python"]}
    allowed |= {module for module, dists in distributions.items() if {d.lower() for d in dists} & wanted}
    strays = {}
    for path in sorted((REPO_ROOT / "plugins").rglob("*.py")):
        if "modules" in path.relative_to(REPO_ROOT / "plugins").parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                if name.split(".")[0] not in allowed:
                    strays.setdefault(str(path.relative_to(REPO_ROOT)), []).append(name)
    assert not strays, "controller-side imports the execution environment does not provide: %s" % strays
