# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ansible-pull recipe (docs/pull/), run for real on one fleet host.

On ks-fleet3 (lab/fleet.py), with no package mirror and no controller connection:

1. ansible-core goes into a venv at /opt/netlock-killswitch-pull from wheels that the controller
   downloads (cached under .cache/pull-wheels/) and copies in: ``pip install --no-index``;
2. a git repository on the host holds the site: the shipped local.yml, an inventory, the fleet's
   policy with the management CIDR (the controller, 198.18.30.1) and the collection installed from a
   tarball built from this checkout;
3. the shipped service and timer are installed and checked with ``systemd-analyze verify``, the
   shipped defaults file is filled in (URL of the local repository);
4. the kill switch is removed (guard stopped, table and ruleset deleted), then the cron line's command runs as cron would run it (``/bin/sh
   -c``, cron's environment): it applies the kill switch (changed); the service then runs the
   same command (its ExecStart): changed=0; while it runs, the cron command again is refused by
   ``flock -n`` (exit 75) at once;
5. the controller still opens new SSH connections to the host, and the role run over SSH from the
   controller in check mode (its own management default) finds nothing to change.

The command lines are read from the shipped files, never retyped. Runs in about a minute.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lab import fleet  # noqa: E402  pylint: disable=wrong-import-position

PULL_DOCS = REPO_ROOT / "docs" / "pull"
HOST = fleet.managed("ks-fleet3")
VENV = "/opt/netlock-killswitch-pull"
STAGE = "/var/tmp/netlock-pull"  # not /tmp: docker cp cannot write into a tmpfs mount
SITE = "/srv/netlock-site"
UNIT = "netlock-killswitch-pull.service"
TIMER = "netlock-killswitch-pull.timer"
LOCK = "/run/lock/netlock-killswitch-pull.lock"
RULESET = "/etc/netlock-killswitch/ruleset.nft"
REFUSED = 75  # flock -E in the shipped command
CACHE = REPO_ROOT / ".cache" / "pull-wheels"
APPLY = str(REPO_ROOT / "molecule" / "fleet" / "apply.yml")  # the role alone, over SSH with become
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
TIMINGS = {}


# --------------------------------------------------------------------------- the shipped recipe

def service_command():
    """The service's EnvironmentFile and ExecStart."""
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str
    unit.read_string((PULL_DOCS / UNIT).read_text())
    return unit["Service"]["EnvironmentFile"], unit["Service"]["ExecStart"]


def cron_entry():
    """(environment, user, command) of the one job in the shipped cron file."""
    environment, jobs = {}, []
    for line in (PULL_DOCS / "netlock-killswitch-pull.cron").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assignment = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
        if assignment:
            environment[assignment.group(1)] = assignment.group(2)
            continue
        jobs.append(line.split(None, 6))
    assert len(jobs) == 1 and len(jobs[0]) == 7, "the cron file must hold exactly one job: %s" % jobs
    return environment, jobs[0][5], jobs[0][6]


def test_the_timer_and_cron_run_the_same_command():
    environment_file, command = service_command()
    _env, user, cron_command = cron_entry()
    assert user == "root"
    assert cron_command == ". %s && %s" % (environment_file, command), \
        "the cron line must source the service's EnvironmentFile and then run its ExecStart unchanged"
    argv = shlex.split(command)
    assert argv[:3] == ["/usr/bin/flock", "-n", "-E"] and argv[3] == str(REFUSED) and argv[4] == LOCK
    assert argv[5] == VENV + "/bin/ansible-pull"
    assert "%" not in cron_command, "cron turns % into a newline"


# --------------------------------------------------------------------------- helpers

def dexec(script, timeout=300, check=True, env=None, workdir=None):
    """Run a shell script on the host (docker exec, as root)."""
    argv = ["docker", "exec", "-i"]
    if workdir:
        argv += ["-w", workdir]
    argv += [HOST.name]
    argv += ["env", "-i"] + ["%s=%s" % kv for kv in env.items()] if env is not None else []
    argv += ["/bin/sh", "-c", script]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    proc.seconds = time.monotonic() - started
    if check:
        assert proc.returncode == 0, "on %s: %s\nrc=%d\n%s\n%s" % (
            HOST.name, script, proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:])
    return proc


def docker_cp(source, dest):
    subprocess.run(["docker", "cp", str(source), "%s:%s" % (HOST.name, dest)], check=True, capture_output=True,
                   timeout=120)


def recap(output):
    """{host: (ok, changed, unreachable, failed)} from a playbook run's recap."""
    return {m.group(1): tuple(int(x) for x in m.groups()[1:]) for m in RECAP.finditer(output)}


def dev_pin(name):
    for line in (REPO_ROOT / "requirements-dev.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.strip()
    raise AssertionError("%s not pinned in requirements-dev.txt" % name)


def wheels_for_host():
    """ansible-core and its dependencies as wheels for the host's Python, glibc and machine."""
    facts = dexec("python3 -c 'import platform, sys; print(\"%d.%d\" % sys.version_info[:2], "
                  "platform.libc_ver()[1], platform.machine())'").stdout.split()
    python, glibc, machine = facts
    requirement = dev_pin("ansible-core")
    target = CACHE / ("cp%s-glibc%s-%s-%s" % (python.replace(".", ""), glibc, machine, requirement.replace("==", "-")))
    if not (target / ".complete").exists():
        major, minor = (int(x) for x in glibc.split(".")[:2])
        platforms = ["manylinux_%d_%d_%s" % (major, m, machine) for m in range(minor, 16, -1)]
        platforms += ["manylinux2014_%s" % machine]
        argv = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--dest", str(target),
                "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
                "--abi", "cp" + python.replace(".", ""), "--abi", "abi3", "--abi", "none"]
        for platform in platforms:
            argv += ["--platform", platform]
        subprocess.run(argv + [requirement], check=True, capture_output=True, timeout=600)
        (target / ".complete").write_text(requirement + "\n")
    return target, requirement


# --------------------------------------------------------------------------- the run

@pytest.fixture(scope="module")
def pull(tmp_path_factory):
    """Sets the host up, runs the recipe three ways, and returns what happened."""
    started = time.monotonic()
    work = tmp_path_factory.mktemp("pull")
    dexec("rm -rf %s && mkdir -p %s" % (STAGE, STAGE))

    # 1. ansible-core in a venv, from the controller's wheels
    wheels, requirement = wheels_for_host()
    version = requirement.split("==")[1]
    have = dexec("%s/bin/ansible-pull --version 2>/dev/null | head -1" % VENV, check=False).stdout
    if "[core %s]" % version not in have:
        docker_cp(wheels, STAGE + "/wheels")
        dexec("rm -rf {venv} && python3 -m venv {venv} && {venv}/bin/pip install -q --disable-pip-version-check "
              "--no-index --find-links {stage}/wheels '{req}'".format(venv=VENV, stage=STAGE, req=requirement))
    TIMINGS["venv"] = time.monotonic() - started

    # 2. the site repository: shipped local.yml, the fleet's policy, the collection from a tarball
    subprocess.run([str(Path(sys.executable).parent / "ansible-galaxy"), "collection", "build", "--output-path",
                    str(work), str(REPO_ROOT)], check=True, capture_output=True, timeout=120)
    tarball = sorted(work.glob("netlock-killswitch-*.tar.gz"))[0]
    fleet_vars = yaml.safe_load((REPO_ROOT / "inventories" / "fleet" / "group_vars" / "all.yml").read_text())
    policy = {k: v for k, v in fleet_vars.items() if k.startswith("killswitch_")}
    policy["killswitch_management_cidrs"] = [fleet.CONTROLLER]
    (work / "all.yml").write_text("---\n" + yaml.safe_dump(policy, sort_keys=True))
    (work / "inventory.yml").write_text("---\n" + yaml.safe_dump(
        {"all": {"hosts": {HOST.name: None}, "vars": {"ansible_python_interpreter": "/usr/bin/python3"}}}))
    environment_file, _command = service_command()
    defaults = re.sub(r"(?m)^KILLSWITCH_PULL_URL=.*$", "KILLSWITCH_PULL_URL=file://" + SITE,
                      (PULL_DOCS / "netlock-killswitch-pull.default").read_text())
    defaults = re.sub(r"(?m)^KILLSWITCH_PULL_CHECKOUT=.*$", "KILLSWITCH_PULL_CHECKOUT=main", defaults)
    (work / "defaults").write_text(defaults)
    for source in (tarball, work / "all.yml", work / "inventory.yml", work / "defaults",
                   PULL_DOCS / "site" / "local.yml", PULL_DOCS / UNIT, PULL_DOCS / TIMER):
        docker_cp(source, STAGE + "/" + source.name)
    dexec("""set -e
rm -rf {site} /var/lib/netlock-killswitch-pull
mkdir -p {site}/group_vars && cd {site}
cp {stage}/local.yml local.yml && cp {stage}/inventory.yml inventory.yml && cp {stage}/all.yml group_vars/all.yml
{venv}/bin/ansible-galaxy collection install --offline -p collections {stage}/{tarball} >/dev/null
git init -q -b main . && git add -A
git -c user.name=lab -c user.email=lab@example.invalid commit -q -m 'kill switch site'
install -m 0644 {stage}/defaults {envfile}
install -m 0644 {stage}/{unit} {stage}/{timer} /etc/systemd/system/
systemctl daemon-reload
""".format(site=SITE, stage=STAGE, venv=VENV, tarball=tarball.name, envfile=environment_file, unit=UNIT, timer=TIMER))
    verify = dexec("systemd-analyze verify /etc/systemd/system/%s /etc/systemd/system/%s" % (UNIT, TIMER),
                   check=False)
    TIMINGS["site"] = time.monotonic() - started

    # 3. start from a host whose kill switch is gone (the guard stopped first, or it would restore it)
    dexec("systemctl stop netlock-killswitch-guard.timer netlock-killswitch-guard.service netlock-killswitch-watch.service "
          "2>/dev/null; nft delete table inet killswitch 2>/dev/null; rm -f %s; true" % RULESET)
    removed = dexec("nft list table inet killswitch", check=False).returncode != 0
    TIMINGS["removed"] = time.monotonic() - started

    # 4a. the cron line's command, as cron runs it
    cron_env, _user, cron_command = cron_entry()
    env = dict(cron_env, HOME="/root", LOGNAME="root", USER="root")
    first = dexec(cron_command, env=env, workdir="/root", check=False)
    table_after_first = dexec("nft list table inet killswitch", check=False)
    TIMINGS["first run"] = first.seconds

    # 4b. the service (its ExecStart), and the cron command again while it runs
    cursor = re.search(r"cursor: (\S+)", dexec("journalctl -n 0 --show-cursor --no-pager").stdout).group(1)
    dexec("systemctl reset-failed %s 2>/dev/null; systemctl start --no-block %s" % (UNIT, UNIT))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if LOCK in dexec("lslocks -n -o PATH", check=False).stdout:
            break
        if dexec("systemctl is-active %s" % UNIT, check=False).stdout.strip() not in ("activating", "active"):
            break
        time.sleep(0.2)
    concurrent = dexec(cron_command, env=env, workdir="/root", check=False)
    lock_held = LOCK in dexec("lslocks -n -o PATH", check=False).stdout
    while time.monotonic() < deadline + 240:
        state = dexec("systemctl show -p ActiveState --value %s" % UNIT).stdout.strip()
        if state not in ("activating", "active", "deactivating"):
            break
        time.sleep(0.5)
    show = dict(line.split("=", 1) for line in dexec(
        "systemctl show -p Result -p ExecMainStatus %s" % UNIT).stdout.splitlines() if "=" in line)
    journal = dexec("journalctl -o cat --no-pager -u %s --after-cursor '%s'" % (UNIT, cursor)).stdout
    TIMINGS["service run"] = time.monotonic() - started - TIMINGS["removed"] - first.seconds

    # 5. manageable over SSH from the controller, and the ruleset
    ssh = fleet.ssh(HOST, "sudo", "-n", "nft", "list", "table", "inet", "killswitch")
    TIMINGS["total"] = time.monotonic() - started
    yield dict(verify=verify, removed=removed, first=first, table_after_first=table_after_first,
               concurrent=concurrent, lock_held=lock_held, show=show, journal=journal, ssh=ssh)

    # the units go; the kill switch, the venv and the repository stay for the next run
    dexec("rm -f /etc/systemd/system/{unit} /etc/systemd/system/{timer} {envfile} && systemctl daemon-reload "
          "&& rm -rf {stage}".format(unit=UNIT, timer=TIMER, envfile=environment_file, stage=STAGE), check=False)
    print("\nansible-pull test timings (s; venv..removed and total cumulative): %s"
          % {k: round(v, 1) for k, v in TIMINGS.items()})


def test_units_verify(pull):
    assert pull["verify"].returncode == 0, pull["verify"].stderr


def test_cron_command_applies_the_kill_switch(pull):
    assert pull["removed"], "the kill switch was not removed before the first run"
    first = pull["first"]
    assert first.returncode == 0, "cron's run failed (%d):\n%s\n%s" % (
        first.returncode, first.stdout[-6000:], first.stderr[-3000:])
    result = recap(first.stdout)
    assert set(result) == {HOST.name}, "the run must target only the host itself: %s" % result
    ok, changed, unreachable, failed = result[HOST.name]
    assert changed > 0 and not unreachable and not failed, result
    assert pull["table_after_first"].returncode == 0, "no killswitch table after the run"
    assert "policy drop" in pull["table_after_first"].stdout
    assert "killswitch_management_cidrs is not set" not in first.stdout


def test_service_run_changes_nothing(pull):
    show = pull["show"]
    assert show["Result"] == "success" and show["ExecMainStatus"] == "0", (show, pull["journal"][-6000:])
    result = recap(pull["journal"])
    assert result.get(HOST.name, (0, -1))[1] == 0, "second run: %s\n%s" % (result, pull["journal"][-6000:])
    assert result[HOST.name][3:] == (0,) and result[HOST.name][2] == 0


def test_concurrent_run_is_refused_by_flock(pull):
    concurrent = pull["concurrent"]
    assert pull["lock_held"], "the service run was already over: nothing to collide with"
    assert concurrent.returncode == REFUSED, (concurrent.returncode, concurrent.stdout[-3000:], concurrent.stderr)
    assert concurrent.seconds < 5 and "PLAY" not in concurrent.stdout and "Starting Ansible Pull" not in concurrent.stdout


def test_host_stays_manageable_over_ssh(pull):
    ssh = pull["ssh"]
    assert ssh.returncode == 0, "new SSH connection from %s refused after the pull: %s" % (fleet.CONTROLLER, ssh.stderr)
    assert "table inet killswitch" in ssh.stdout
    assert fleet.CONTROLLER in ssh.stdout, "the management exception for the controller is missing"


def test_an_ssh_run_from_the_controller_finds_nothing_to_change(pull, playbook):
    """Ansible still manages the host over SSH (with become), and the role applied over SSH, with
    the management source it finds itself, agrees with what the host pulled: check mode, changed=0."""
    del pull
    run = playbook(APPLY, "-l", HOST.name, "--check", "--diff", timeout=300)
    TIMINGS["ssh check run"] = run.seconds
    assert run.returncode == 0, run.tail()
    assert run.recap[HOST.name]["changed"] == 0 and run.recap[HOST.name]["unreachable"] == 0, run.tail()


def test_unset_management_means_no_exception_with_a_local_connection(pull):
    """Run by hand from an SSH login, the pull's render must not pick the login's client up: over a
    local connection an unset killswitch_management_cidrs means no management exception."""
    del pull  # the venv and the site repository
    args = '{"tunnel_interfaces": ["wg0"], "endpoints": [{"address": "%s", "port": %d}]}' % fleet.ENDPOINT
    run = dexec("cd %s && ANSIBLE_COLLECTIONS_PATH=%s/collections %s/bin/ansible -c local -i inventory.yml %s "
                "-m netlock.killswitch.killswitch_policy -a %s"
                % (SITE, SITE, VENV, HOST.name, shlex.quote(args)),
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                     "SSH_CONNECTION": "%s 40000 %s 22" % (fleet.CONTROLLER, HOST.v4(fleet.FLEET)),
                     "SSH_CLIENT": "%s 40000 22" % fleet.CONTROLLER})
    result = json.loads(run.stdout[run.stdout.index("=>") + 2:])
    assert result["policy"]["management_networks"] == [], result["policy"]
