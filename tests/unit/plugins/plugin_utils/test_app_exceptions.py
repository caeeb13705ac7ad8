# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""killswitch_app_exceptions: validation, the rule list, the nftables text, the backends that refuse it, the
host-state masking of nft_live and the guard's set filling (pure parts; the traffic proof is
tests/unit/plugins/module_utils/test_app_exceptions_live.py)."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
from pathlib import Path

import pytest

from ansible_collections.netlock.killswitch.plugins.module_utils.nft_live import normalize, plain_text
from ansible_collections.netlock.killswitch.plugins.plugin_utils import backends
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import AddressRule, AppException, PolicyError, parse_policy
from ansible_collections.netlock.killswitch.plugins.plugin_utils.render_nftables import render
from ansible_collections.netlock.killswitch.plugins.plugin_utils.rules import GROUPS, in_order, output_rules

GUARD_PATH = Path(__file__).resolve().parents[4] / "roles" / "killswitch" / "files" / "netlock_killswitch_guard.py"
BASE = {"killswitch_tunnel_interfaces": ["wg0"], "killswitch_endpoints": [{"address": "198.51.100.7", "port": 51820}],
        "killswitch_ipv6": "tunnel"}


def _guard():
    spec = importlib.util.spec_from_file_location("netlock_killswitch_guard_apps", str(GUARD_PATH))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


guard = _guard()


def policy(exceptions, **more):
    return parse_policy(dict(BASE, killswitch_app_exceptions=exceptions, **more))


def problems(exceptions, **more):
    with pytest.raises(PolicyError) as raised:
        policy(exceptions, **more)
    return [str(p) for p in raised.value.problems]


# --------------------------------------------------------------------------- policy


def test_a_service_is_its_cgroup_in_system_slice_and_rules_are_grouped_per_cgroup():
    parsed = policy([{"service": "backup.service", "cidr": "198.18.1.2", "protocol": "tcp", "port": 9000},
                     {"service": "backup.service", "cidr": "198.18.1.9", "protocol": "tcp", "port": 9000},
                     {"cgroup": "/app.slice/x/", "cidr": "2001:db8::/64"}])
    net = ipaddress.ip_network
    assert parsed.app_exceptions == (
        AppException("app.slice/x", AddressRule((net("2001:db8::/64"),), "any", None)),
        AppException("system.slice/backup.service",
                     AddressRule((net("198.18.1.2/32"), net("198.18.1.9/32")), "tcp", 9000)))
    assert parsed.warnings == ()
    assert policy([]).app_exceptions == () and parse_policy(BASE).app_exceptions == ()


@pytest.mark.parametrize("entry, variable, words", [
    ({"cidr": "198.18.1.2"}, "killswitch_app_exceptions[0]", "exactly one of service"),
    ({"service": "a.service", "cgroup": "a", "cidr": "198.18.1.2"}, "killswitch_app_exceptions[0]", "exactly one"),
    ({"service": "backup", "cidr": "198.18.1.2"}, "killswitch_app_exceptions[0].service", "not a systemd service"),
    ({"service": "a@b.service", "cidr": "198.18.1.2"}, "killswitch_app_exceptions[0].service", "give its cgroup"),
    ({"service": "a\\x2db.service", "cidr": "198.18.1.2"}, "killswitch_app_exceptions[0].service", "escaped"),
    ({"service": 5, "cidr": "198.18.1.2"}, "killswitch_app_exceptions[0].service", "not a systemd service"),
    ({"cgroup": "a/../b", "cidr": "198.18.1.2"}, "killswitch_app_exceptions[0].cgroup", "no '.' or '..'"),
    ({"cgroup": "a/./b", "cidr": "198.18.1.2"}, "killswitch_app_exceptions[0].cgroup", "no '.' or '..'"),
    ({"cgroup": "a b", "cidr": "198.18.1.2"}, "killswitch_app_exceptions[0].cgroup", "not a cgroup v2 path"),
    ({"cgroup": 'a"b', "cidr": "198.18.1.2"}, "killswitch_app_exceptions[0].cgroup", "not a cgroup v2 path"),
    ({"cgroup": "/", "cidr": "198.18.1.2"}, "killswitch_app_exceptions[0].cgroup", "not a cgroup v2 path"),
    ({"cgroup": "a//b", "cidr": "198.18.1.2"}, "killswitch_app_exceptions[0].cgroup", "not a cgroup v2 path"),
    ({"cgroup": "x" * 201, "cidr": "198.18.1.2"}, "killswitch_app_exceptions[0].cgroup", "at most 200"),
    ({"cgroup": "/".join("a" * 33), "cidr": "198.18.1.2"}, "killswitch_app_exceptions[0].cgroup", "32 levels"),
    ({"service": "a.service", "cidr": "198.18.1.300"}, "killswitch_app_exceptions[0].cidr", "not an IP address"),
    ({"service": "a.service"}, "killswitch_app_exceptions[0].cidr", "not an IP address"),
    ({"service": "a.service", "cidr": "198.18.1.2", "port": 53, "protocol": "udp"},
     "killswitch_app_exceptions[0].port", "DNS port"),
    ({"service": "a.service", "cidr": "198.18.1.2", "port": 853, "protocol": "tcp"},
     "killswitch_app_exceptions[0].port", "DNS port"),
    ({"service": "a.service", "cidr": "198.18.1.2", "port": 80}, "killswitch_app_exceptions[0].port", "needs protocol"),
    ({"service": "a.service", "cidr": "198.18.1.2", "protocol": "sctp"}, "killswitch_app_exceptions[0].protocol",
     "not one of"),
    ({"service": "a.service", "cidr": "198.18.1.2", "user": "x"}, "killswitch_app_exceptions[0]", "unknown keys user"),
    ("a.service", "killswitch_app_exceptions[0]", "not a mapping"),
])
def test_bad_entries_are_refused_naming_the_variable_and_value(entry, variable, words):
    found = problems([entry])
    assert any(p.startswith(variable + ": ") and words in p for p in found), found


def test_ipv6_is_refused_while_ipv6_is_blocked_and_not_a_list():
    found = problems([{"service": "a.service", "cidr": "2001:db8::2"}], killswitch_ipv6="block")
    assert any("killswitch_app_exceptions[0].cidr: '2001:db8::2' is IPv6" in p for p in found), found
    assert any(p.startswith("killswitch_app_exceptions: 'a.service' is not a list") for p in problems("a.service"))


def test_every_address_warns_and_the_guard_is_required():
    parsed = policy([{"service": "a.service", "cidr": "0.0.0.0/0", "protocol": "tcp", "port": 443}])
    assert len(parsed.warnings) == 1 and "every IPv4 address" in parsed.warnings[0]
    assert "system.slice/a.service" in parsed.warnings[0]
    found = problems([{"service": "a.service", "cidr": "198.18.1.2"}], killswitch_guard_enabled="false")
    assert found == ["killswitch_guard_enabled: 'false' is off, and killswitch_app_exceptions need the guard: it "
                     "fills their cgroup sets"]
    assert parse_policy(dict(BASE, killswitch_guard_enabled=False)).app_exceptions == ()


# --------------------------------------------------------------------------- rule list and nftables


def test_exceptions_come_after_the_extra_outbound_and_before_the_reject():
    parsed = policy([{"service": "backup.service", "cidr": "198.18.1.2", "protocol": "udp", "port": 9000},
                     {"service": "backup.service", "cidr": "2001:db8::2", "protocol": "udp", "port": 9000}],
                    killswitch_extra_outbound=[{"cidr": "198.18.2.0/24"}])
    rules = output_rules(parsed)
    assert in_order(rules, parsed)
    groups = [r.group for r in rules]
    apps = [i for i, r in enumerate(rules) if r.cgroup]
    assert [rules[i].family for i in apps] == [4, 6]
    assert all(rules[i].cgroup == "system.slice/backup.service" for i in apps)
    assert apps[0] > max(i for i, r in enumerate(rules) if r.group == "extra" and not r.cgroup)
    assert apps[-1] < groups.index("final") and GROUPS.index("extra") < GROUPS.index("final")
    assert all(r.cgroup is None for r in rules if r not in [rules[i] for i in apps])


def test_nftables_matches_a_host_filled_set_and_never_a_path_that_must_exist(nft_accepts):
    parsed = policy([{"service": "backup.service", "cidr": "198.18.1.2", "protocol": "tcp", "port": 9000},
                     {"cgroup": "apps/a-b", "cidr": "198.18.1.3"}, {"cgroup": "apps/a_b", "cidr": "198.18.1.3"}])
    text = render(parsed)
    assert ('\tset cgroup_system_slice_backup_service {\n\t\ttypeof socket cgroupv2 level 2\n'
            '\t\tcomment "cgroup system.slice/backup.service"\n\t}\n') in text
    assert ("socket cgroupv2 level 2 @cgroup_system_slice_backup_service ip daddr @app2_tcp_9000_v4 tcp dport 9000 "
            "accept") in text
    # two paths with the same slug get two sets
    assert "socket cgroupv2 level 2 @cgroup_apps_a_b ip daddr" in text
    assert "socket cgroupv2 level 2 @cgroup_apps_a_b_2 ip daddr" in text
    assert 'comment "cgroup apps/a-b"' in text and 'comment "cgroup apps/a_b"' in text
    assert "elements" not in text.split("set cgroup_", 1)[1].split("}", 1)[0]
    # none of these cgroups exists here: the ruleset loads anyway (the boot case)
    nft_accepts(text)


def test_iptables_and_windows_refuse_naming_variable_host_and_backend():
    parsed = policy([{"service": "backup.service", "cidr": "198.18.1.2"}])
    assert backends.render_for(parsed, "nftables", "h1")
    assert backends.fence_for(parsed, "h1")
    for name in ("iptables", "windows"):
        with pytest.raises(PolicyError) as raised:
            backends.render_for(parsed, name, "h1")
        message = str(raised.value)
        assert "killswitch_app_exceptions: ['system.slice/backup.service'] cannot be enforced by the %s backend" % name \
            in message and message.rstrip().endswith("on h1")


# --------------------------------------------------------------------------- host state: compared without it

LISTED = ('table inet killswitch {\n\tset app0_tcp_9000_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n'
          '\t\telements = { 198.18.1.2 }\n\t}\n\n\tset cgroup_a {\n\t\ttypeof socket cgroupv2 level 0\n'
          '\t\tcomment "cgroup a"\n%s\t}\n\n\tchain output {\n\t\tcounter packets 1 bytes 2 drop\n\t}\n}\n')


@pytest.mark.parametrize("members", ['\t\telements = { "a" }\n', '\t\telements = { 12345,\n\t\t\t     "a" }\n'])
def test_cgroup_set_members_are_not_compared_other_set_members_are(members):
    assert plain_text(LISTED % members) == plain_text(LISTED % "")
    assert "198.18.1.2" in plain_text(LISTED % members)

    def document(elements, addresses):
        return {"nftables": [{"set": {"name": "cgroup_a", "type": "cgroupsv2", "handle": 3, "elem": elements}},
                             {"set": {"name": "app0", "type": "ipv4_addr", "elem": addresses}}]}
    assert normalize(document(["a", "7"], ["198.18.1.2"])) == normalize(document([], ["198.18.1.2"]))
    assert normalize(document(["a"], ["198.18.1.2"])) != normalize(document(["a"], ["198.18.1.3"]))


# --------------------------------------------------------------------------- the guard fills the sets


def test_cgroup2_mount_from_mountinfo():
    hybrid = ("30 24 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n"
              "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert guard.cgroup2_mount(hybrid) == "/sys/fs/cgroup/unified"
    assert guard.cgroup2_mount("35 24 0:30 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n") == "/sys/fs/cgroup"
    assert guard.cgroup2_mount("30 24 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n") is None


def test_cgroup_commands_fill_flush_and_leave_alone(tmp_path):
    nft_dir = tmp_path / "sys-fs-cgroup"
    mount = nft_dir / "unified"
    (mount / "system.slice" / "backup.service").mkdir(parents=True)

    def document(members, comment="cgroup system.slice/backup.service", table="killswitch"):
        return {"nftables": [{"set": {"family": "inet", "table": table, "name": "cgroup_b", "type": "cgroupsv2",
                                      "comment": comment, "elem": members}},
                             {"set": {"family": "inet", "table": table, "name": "lan_v4", "type": "ipv4_addr",
                                      "elem": ["10.0.0.0/8"]}}]}

    def commands(members, **kwargs):
        return guard.cgroup_commands(document(members, **kwargs), "killswitch", str(mount), str(nft_dir))

    fill = {"cgroup_b": 'flush set inet killswitch cgroup_b\nadd element inet killswitch cgroup_b '
                        '{ "unified/system.slice/backup.service" }\n'}
    assert commands([]) == fill
    # in sync, as nft lists it by path or by id: nothing to do (no netlink event, no loop with the watcher)
    assert commands(["unified/system.slice/backup.service"]) == {}
    assert commands([str(os.stat(mount / "system.slice" / "backup.service").st_ino)]) == {}
    # a stale id (the service restarted) or a foreign member: replaced
    assert commands(["4242424242"]) == fill
    assert commands(["unified/system.slice/backup.service", "4242424242"]) == fill
    # the cgroup is gone: emptied (fail closed), and left alone once empty
    (mount / "system.slice" / "backup.service").rmdir()
    assert commands(["4242424242"]) == {"cgroup_b": "flush set inet killswitch cgroup_b\n"}
    assert commands([]) == {}
    # no cgroup v2 hierarchy: nothing can be admitted
    assert guard.cgroup_commands(document(["4242424242"]), "killswitch", None, str(nft_dir)) == {
        "cgroup_b": "flush set inet killswitch cgroup_b\n"}
    # sets of other tables, or without our comment, are not ours
    assert commands(["4242424242"], comment="something else") == {}
    assert guard.cgroup_commands(document(["1"], table="other"), "killswitch", str(mount), str(nft_dir)) == {}


def test_cgroups_command_waits_for_the_fence_bounded():
    """ExecStartPre returns once the watcher filled the fence's sets too (a packet must pass both tables: under real
    systemd the service's first probes were dropped by the fence otherwise), at most FENCE_CGROUP_WAIT seconds."""
    now = [0.0]

    def clock():
        return now[0]

    def sleep(seconds):
        now[0] += seconds

    def plans(*results):
        pending = list(results)
        return lambda: pending.pop(0) if len(pending) > 1 else pending[0]

    flush = {"cgroup_b": "flush set inet killswitch_fence cgroup_b\n"}
    assert guard.wait_for_cgroups(plans(flush, flush, {}), clock=clock, sleep=sleep)
    assert 0 < now[0] < 1
    now[0] = 0.0
    assert guard.wait_for_cgroups(plans(None), clock=clock, sleep=sleep) and now[0] == 0  # no fence: nothing to wait for
    assert not guard.wait_for_cgroups(plans(flush), clock=clock, sleep=sleep)  # the watcher never follows
    assert guard.FENCE_CGROUP_WAIT <= now[0] < guard.FENCE_CGROUP_WAIT + 1


def test_app_services_are_the_services_named_or_given_as_their_cgroup():
    parsed = policy([{"service": "backup.service", "cidr": "198.18.1.2"},
                     {"cgroup": "system.slice/sync.service", "cidr": "198.18.1.2", "protocol": "udp", "port": 4500},
                     {"cgroup": "system.slice/system-x.slice/x@1.service", "cidr": "198.18.1.2"},
                     {"cgroup": "user.slice/a.service", "cidr": "198.18.1.2"}])
    assert parsed.app_services == ("backup.service", "sync.service")


def test_app_services_under_a_nested_systemd_root():
    """systemd in a container keeps system.slice under its own cgroup; its services get the drop-in too."""
    parsed = policy([{"cgroup": "docker/0123abcd/system.slice/backup.service", "cidr": "198.18.1.2"},
                     {"cgroup": "docker/0123abcd/system.slice.other/x.service", "cidr": "198.18.1.2"},
                     {"cgroup": "docker/0123abcd/other.slice/y.service", "cidr": "198.18.1.2"}])
    assert parsed.app_services == ("backup.service",)
