# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""killswitch_verify: main() end to end with scripted commands and a fake prober; read-only in check mode and out
of it, never changed, fails naming what is open; its documentation parses and matches its options.

Here, not under tests/unit/plugins/modules (ansible-test's modules context, where controller code cannot be
imported), because its policy is the one the controller's killswitch_policy action returns (``_plain`` of the parsed
policy).
"""

from __future__ import annotations

import errno
import json

import pytest
import yaml

from ansible_collections.netlock.killswitch.plugins.action.killswitch_policy import _plain
from ansible_collections.netlock.killswitch.plugins.module_utils import verify as verify_utils
from ansible_collections.netlock.killswitch.plugins.modules import killswitch_verify as mod
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy
from ansible_collections.netlock.killswitch.tests.unit.plugins.modules.utils import patch_module_args

POLICY = _plain(parse_policy({"killswitch_tunnel_interfaces": ["wg0"], "killswitch_management_cidrs": [],
                              "killswitch_endpoints": [{"address": "192.0.2.50", "port": 51820}]}).data())
DIGEST = verify_utils.digest_of(POLICY)
TABLE = 'table inet %s {\n\tcomment "netlock.killswitch %s"\n}\n'


class FakeProber:
    """Every probe refused, unless ``open`` names (interface, family, protocol) that got out; records the timeout."""

    instances = []

    def __init__(self, timeout):
        self.timeout = timeout
        self.open = set()
        self.sent = []
        FakeProber.instances.append(self)

    def route(self, interface, family, target):
        return ("192.0.2.2" if family == 4 else "2001:db8:1::2"), None

    def send(self, interface, family, protocol, target, port):
        self.sent.append((interface, family, protocol))
        passes = (interface, family, protocol) in self.open or (interface == "wg0" and family == 4)
        return dict(outcome="sent" if passes else "refused", errno=None if passes else errno.EPERM,
                    detail="sendto() succeeded" if passes else "sendto() got EPERM")


@pytest.fixture(name="host")
def host_fixture(tmp_path, monkeypatch):
    """A fake /sys/class/net with eth0 and wg0 for verify(), and the fake prober in the module."""
    root = tmp_path / "net"
    for name, flags, operstate in (("lo", "0x9", "unknown"), ("eth0", "0x1003", "up"), ("wg0", "0x91", "unknown")):
        (root / name).mkdir(parents=True)
        (root / name / "flags").write_text(flags + "\n")
        (root / name / "operstate").write_text(operstate + "\n")
    real = verify_utils.verify

    def verify(*args, **kwargs):
        kwargs["sys_class_net"] = str(root)
        kwargs["read"] = lambda path: None
        return real(*args, **kwargs)
    monkeypatch.setattr(mod, "verify", verify)
    monkeypatch.setattr(mod, "Prober", FakeProber)
    FakeProber.instances = []
    return root


def run_main(monkeypatch, capsys, args, answers=None, bins=("nft", "systemctl"), open_paths=()):
    """main() with args; answers maps a command's name (and verb) to (rc, out, err). Returns (code, result, argv list)."""
    answers = dict(IN_FORCE, **(answers or {}))
    seen = []

    def run_command(self, argv, **kwargs):
        argv = list(argv)
        seen.append(argv)
        name = argv[0].rsplit("/", 1)[-1]
        key = name if name not in ("systemctl", "nft") else "%s %s" % (name, argv[-1] if name == "nft" else argv[1])
        if name == "nft" and "bridge" in argv:
            key = "nft bridge " + argv[-1]
        return answers[key]

    def get_bin_path(self, name, required=False, opt_dirs=None):
        if name in bins:
            return "/usr/bin/" + name
        if required:
            self.fail_json(msg="Failed to find required executable %s" % name)
        return None

    original = FakeProber.__init__

    def init(self, timeout):
        original(self, timeout)
        self.open = set(open_paths)

    monkeypatch.setattr(FakeProber, "__init__", init)
    monkeypatch.setattr(mod.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(mod.AnsibleModule, "get_bin_path", get_bin_path)
    with patch_module_args(args):
        with pytest.raises(SystemExit) as info:
            mod.main()
    return info.value.code, json.loads(capsys.readouterr().out), seen


IN_FORCE = {"nft killswitch": (0, TABLE % ("killswitch", DIGEST[:16]), ""),
            "nft killswitch_fence": (0, TABLE % ("killswitch_fence", DIGEST[:16]), ""),
            "nft bridge killswitch": (0, (TABLE % ("killswitch", DIGEST[:16])).replace("inet", "bridge"), ""),
            "systemctl is-enabled": (0, "enabled\n", ""), "systemctl is-active": (0, "active\n", ""),
            "iptables-save": (0, '*filter\n:killswitch-out - [0:0]\n-A killswitch-out -m comment --comment '
                                 '"netlock.killswitch %s"\nCOMMIT\n' % DIGEST[:16], "")}


@pytest.mark.usefixtures("host")
def test_in_force(monkeypatch, capsys):
    code, result, _seen = run_main(monkeypatch, capsys, {"policy": POLICY})
    assert code == 0, result
    assert result["changed"] is False and result["ok"] is True
    assert result["open_paths"] == []
    assert result["msg"].startswith("kill switch in force")
    assert result["digest"] == DIGEST[:16]
    assert FakeProber.instances[0].timeout == 0.5


@pytest.mark.usefixtures("host")
def test_an_open_path_fails_the_task_naming_it(monkeypatch, capsys):
    code, result, _seen = run_main(monkeypatch, capsys, {"policy": POLICY}, open_paths=[("eth0", 4, "udp")])
    assert code == 1 and result["failed"] is True and result["changed"] is False
    assert result["msg"] == ("eth0 IPv4 UDP to 198.51.100.1:443 was sent: the kill switch does not block it (sendto() "
                             "succeeded)")
    assert [p["path"] for p in result["open_paths"]] == ["eth0 IPv4 UDP to 198.51.100.1:443"]
    assert any(c["name"] == "eth0 IPv4 UDP to 198.51.100.1:443" and not c["ok"] for c in result["checks"])


@pytest.mark.usefixtures("host")
def test_a_missing_table_fails(monkeypatch, capsys):
    answers = {"nft killswitch": (1, "", "Error: No such file or directory")}
    code, result, _seen = run_main(monkeypatch, capsys, {"policy": POLICY}, answers)
    assert code == 1 and result["msg"] == "table inet killswitch is not loaded"


@pytest.mark.usefixtures("host")
def test_check_mode_runs_the_same_read_only_checks(monkeypatch, capsys):
    _code, normal, seen_normal = run_main(monkeypatch, capsys, {"policy": POLICY})
    sent_normal = FakeProber.instances[-1].sent
    code, checked, seen_check = run_main(monkeypatch, capsys, {"policy": POLICY, "_ansible_check_mode": True})
    assert code == 0 and checked["changed"] is False
    for key in ("checks", "open_paths", "probes", "ok", "msg", "table"):
        assert checked[key] == normal[key]
    assert seen_check == seen_normal and FakeProber.instances[-1].sent == sent_normal
    for argv in seen_check:
        name = argv[0].rsplit("/", 1)[-1]
        assert (name == "nft" and argv[1] == "list") or (name == "systemctl" and argv[1] in ("is-enabled", "is-active"))


@pytest.mark.usefixtures("host")
def test_iptables_backend_lists_the_fence_with_nft(monkeypatch, capsys):
    code, result, seen = run_main(monkeypatch, capsys, {"policy": POLICY, "backend": "iptables"},
                                  bins=("iptables-save", "nft", "systemctl"))
    assert code == 0, result
    assert seen[0] == ["/usr/bin/iptables-save", "-t", "filter"]
    assert ["/usr/bin/nft", "list", "table", "inet", "killswitch_fence"] in seen


@pytest.mark.usefixtures("host")
def test_traffic_off_makes_no_prober(monkeypatch, capsys):
    code, result, _seen = run_main(monkeypatch, capsys, {"policy": POLICY, "traffic": False})
    assert code == 0 and result["probes"] == [] and FakeProber.instances == []


@pytest.mark.usefixtures("host")
@pytest.mark.parametrize("args,message", [
    ({"policy": POLICY, "probe_timeout": 0}, "probe_timeout: 0.0 is not more than 0 and at most 5.0 seconds"),
    ({"policy": POLICY, "probe_timeout": 6}, "probe_timeout: 6.0 is not"),
    ({"policy": POLICY, "fence": "maybe"}, "fence"),
    ({}, "missing required arguments: policy"),
    ({"policy": {"table": "killswitch"}}, "policy: tunnel_interfaces, ipv6 missing"),
    ({"policy": POLICY, "probe_addresses": ["192.0.2.50"]}, "probe_addresses: 192.0.2.50 is allowed by the policy "
     "(killswitch_endpoints 192.0.2.50/32 (udp/51820))"),
    ({"policy": POLICY, "interfaces": ["eth9"]}, "interfaces: eth9 is not an interface of this host"),
])
def test_bad_options_fail_before_any_probe(monkeypatch, capsys, args, message):
    code, result, _seen = run_main(monkeypatch, capsys, args)
    assert code == 1 and message in result["msg"]
    assert all(not prober.sent for prober in FakeProber.instances)


@pytest.mark.usefixtures("host")
def test_a_probe_error_fails(monkeypatch, capsys):
    def refuse(self, interface, family, target):
        raise mod.ProbeError("cannot open a raw socket (Operation not permitted): the probes need root (CAP_NET_RAW)")
    monkeypatch.setattr(FakeProber, "route", refuse)
    code, result, _seen = run_main(monkeypatch, capsys, {"policy": POLICY})
    assert code == 1 and "need root" in result["msg"]


def test_documentation():
    doc = yaml.safe_load(mod.DOCUMENTATION)
    assert doc["module"] == "killswitch_verify"
    assert set(doc["attributes"]) == {"check_mode", "diff_mode", "platform"}
    assert doc["attributes"]["check_mode"]["support"] == "full" and doc["attributes"]["diff_mode"]["support"] == "none"
    examples = yaml.safe_load(mod.EXAMPLES)
    assert any("netlock.killswitch.killswitch_verify" in task for task in examples)
    returned = yaml.safe_load(mod.RETURN)
    assert set(returned) == {"ok", "msg", "checks", "open_paths", "probes", "probe_addresses", "digest", "table"}
