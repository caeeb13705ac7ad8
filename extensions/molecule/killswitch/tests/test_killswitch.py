"""The kill switch as installed by netlock.killswitch.killswitch, seen from inside each instance (pytest-testinfra).

verify.yml runs these after netlock.killswitch.killswitch_verify, with ``--hosts=ansible://all`` and the molecule
inventory, so each test runs once per instance and reads that instance's variables (your group_vars) from it.
KILLSWITCH_PROBE_ADDRESS sets the probe's destination (default 198.51.100.1, a documentation address: your
policy must not allow it).
"""

import fnmatch
import json
import os

import pytest

CONFIG_DIR = "/etc/netlock-killswitch"
RULESETS = {"nftables": CONFIG_DIR + "/ruleset.nft", "iptables": CONFIG_DIR + "/ruleset.sh"}
PROBE_ADDRESS = os.environ.get("KILLSWITCH_PROBE_ADDRESS", "198.51.100.1")

# One UDP datagram per interface, bound to it (SO_BINDTODEVICE) so that routing cannot move it: under the kill
# switch the output hook drops or rejects it inside sendto(), which then fails with EPERM; nothing waits on the
# network. Prints {interface: "refused" | "sent" | "<errno name>"} as JSON.
PROBE = r"""
import errno, json, socket, sys
result = {}
for name in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, name.encode())
    try:
        s.sendto(b"netlock-killswitch-molecule", (sys.argv[1], 443))
        result[name] = "sent"
    except OSError as exc:
        result[name] = "refused" if exc.errno == errno.EPERM else errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        s.close()
print(json.dumps(result))
"""


@pytest.fixture(name="ks")
def fixture_ks(host):
    """This instance's kill switch variables (the role's defaults where the inventory sets none)."""
    variables = host.ansible.get_variables()
    backends = [name for name, path in RULESETS.items() if host.file(path).exists]
    return {
        "table": variables.get("killswitch_table", "killswitch"),
        "guard": str(variables.get("killswitch_guard_enabled", True)).lower() in ("true", "yes", "1"),
        "tunnels": variables.get("killswitch_tunnel_interfaces") or [],
        "backend": backends[0] if len(backends) == 1 else None,
    }


def test_ruleset_file_is_present(host, ks):
    assert ks["backend"], "exactly one of %s must exist" % sorted(RULESETS.values())
    ruleset = host.file(RULESETS[ks["backend"]])
    assert ruleset.is_file and ruleset.user == "root" and ruleset.size > 0


def test_table_is_loaded(host, ks):
    assert ks["backend"], "no ruleset file: the role has not run, or was removed"
    if ks["backend"] == "nftables":
        listing = host.check_output("nft list table inet %s", ks["table"])
        assert "chain output" in listing and "policy drop" in listing, listing
    else:
        rules = host.check_output("iptables-save -t filter")
        assert ":%s-out" % ks["table"] in rules and "-j %s-out" % ks["table"] in rules, rules


def test_boot_unit_is_enabled(host):
    assert host.service("netlock-killswitch.service").is_enabled


def test_guard_timer_is_active(host, ks):
    if not ks["guard"]:
        pytest.skip("killswitch_guard_enabled is false")
    assert host.service("netlock-killswitch-guard.timer").is_running
    assert host.service("netlock-killswitch-watch.service").is_running


def is_up(host, name):
    """Administratively up: UP among the flags of `ip -o link show` (<BROADCAST,MULTICAST,UP,LOWER_UP>)."""
    line = host.check_output("ip -o link show dev %s", name)
    return "UP" in line.partition("<")[2].partition(">")[0].split(",")


def test_probe_outside_the_tunnel_is_refused(host, ks):
    interfaces = [name for name in host.interface.names()
                  if name != "lo" and not any(fnmatch.fnmatchcase(name, pattern) for pattern in ks["tunnels"])
                  and is_up(host, name)]
    assert interfaces, "no interface outside the tunnel is up"
    command = "python3 -c %s %s" + " %s" * len(interfaces)
    found = json.loads(host.check_output(command, PROBE, PROBE_ADDRESS, *interfaces))
    assert found == {name: "refused" for name in interfaces}, \
        "a datagram to %s:443 was not refused by the local firewall: %s" % (PROBE_ADDRESS, found)
