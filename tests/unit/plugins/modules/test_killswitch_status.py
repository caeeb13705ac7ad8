# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""killswitch_status: main() end to end with scripted commands; read-only in check mode and out of it."""

from __future__ import annotations

import json

import pytest

from ansible_collections.netlock.killswitch.plugins.module_utils import status as status_utils
from ansible_collections.netlock.killswitch.plugins.modules import killswitch_status as mod
from ansible_collections.netlock.killswitch.tests.unit.plugins.modules.utils import patch_module_args

DIGEST = "3f2a9c0d11b4e7a8" + "0" * 48
TABLE = 'table inet killswitch {\n\tcomment "netlock.killswitch %s"\n\tchain output {\n\t}\n}\n' % DIGEST[:16]


def run_main(monkeypatch, capsys, args, answers, bins=("nft", "systemctl", "ping")):
    """main() with args; answers maps a command's name (and verb) to (rc, out, err). Returns (code, result, argv list)."""
    seen = []

    def run_command(self, argv, **kwargs):
        argv = list(argv)
        seen.append(argv)
        name = argv[0].rsplit("/", 1)[-1]
        key = name if name != "systemctl" else "%s %s" % (name, argv[1])
        if name == "nft" and "bridge" in argv:  # the bridge table: none unless the test gives one
            return answers.get("nft bridge", (1, "", "Error: No such file or directory"))
        return answers[key]

    def get_bin_path(self, name, required=False, opt_dirs=None):
        if name in bins:
            return "/usr/bin/" + name
        if required:
            self.fail_json(msg="Failed to find required executable %s" % name)
        return None

    monkeypatch.setattr(mod.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(mod.AnsibleModule, "get_bin_path", get_bin_path)
    with patch_module_args(args):
        with pytest.raises(SystemExit) as info:
            mod.main()
    return info.value.code, json.loads(capsys.readouterr().out), seen


IN_FORCE = {"nft": (0, TABLE, ""), "systemctl is-enabled": (0, "enabled\n", ""),
            "systemctl is-active": (0, "active\n", ""), "ping": (0, "", "")}


def test_in_force(monkeypatch, capsys):
    code, result, _seen = run_main(monkeypatch, capsys, {"digest": DIGEST}, IN_FORCE)
    assert code == 0
    assert result["changed"] is False
    assert result["ok"] is True and result["problems"] == []
    assert result["table"] == {"present": True, "digest": DIGEST[:16], "matches": True}
    assert result["boot_unit"]["enabled"] is True and result["guard"]["active"] is True


def test_problems_do_not_fail_the_module(monkeypatch, capsys):
    answers = dict(IN_FORCE, nft=(1, "", "Error: No such file or directory"))
    code, result, _seen = run_main(monkeypatch, capsys, {"digest": DIGEST}, answers)
    assert code == 0 and "failed" not in result
    assert result["ok"] is False
    assert result["problems"] == ["table inet killswitch is not loaded"]


def test_check_mode_runs_the_same_read_only_commands(monkeypatch, capsys):
    _code, normal, seen_normal = run_main(monkeypatch, capsys, {"digest": DIGEST}, IN_FORCE)
    code, checked, seen_check = run_main(monkeypatch, capsys, {"digest": DIGEST, "_ansible_check_mode": True}, IN_FORCE)
    assert code == 0
    assert checked["changed"] is False
    for key in ("table", "boot_unit", "guard", "tunnels", "ok", "problems"):
        assert checked[key] == normal[key]
    assert seen_check == seen_normal


def test_options_reach_the_commands(monkeypatch, capsys, tmp_path):
    sysfs = tmp_path / "net"
    (sysfs / "wg9").mkdir(parents=True)
    (sysfs / "wg9" / "flags").write_text("0x91\n")
    (sysfs / "wg9" / "operstate").write_text("unknown\n")
    monkeypatch.setattr(mod, "status", _with_sysfs(status_utils.status, str(sysfs)))
    args = {"table": "ks", "boot_unit": "ks-boot.service", "guard_unit": "ks-guard.timer", "digest": DIGEST,
            "tunnel_interfaces": ["wg*"], "traffic_target": "198.18.100.1"}
    code, result, seen = run_main(monkeypatch, capsys, args, dict(IN_FORCE, nft=(0, TABLE.replace("inet killswitch", "inet ks"), "")))
    assert code == 0 and result["ok"] is True
    assert ["/usr/bin/nft", "list", "table", "inet", "ks"] in seen
    assert ["/usr/bin/systemctl", "is-enabled", "ks-boot.service"] in seen
    assert ["/usr/bin/systemctl", "is-active", "ks-guard.timer"] in seen
    assert result["tunnels"] == [{"name": "wg9", "up": True, "traffic": "ok", "target": "198.18.100.1"}]


def _with_sysfs(function, root):
    def wrapped(*args, **kwargs):
        kwargs["sys_class_net"] = root
        return function(*args, **kwargs)
    return wrapped


def test_without_ping_traffic_is_not_checked(monkeypatch, capsys, tmp_path):
    sysfs = tmp_path / "net"
    (sysfs / "wg0").mkdir(parents=True)
    (sysfs / "wg0" / "flags").write_text("0x91\n")
    (sysfs / "wg0" / "operstate").write_text("unknown\n")
    monkeypatch.setattr(mod, "status", _with_sysfs(status_utils.status, str(sysfs)))
    args = {"tunnel_interfaces": ["wg0"], "traffic_target": "198.18.100.1"}
    code, result, seen = run_main(monkeypatch, capsys, args, IN_FORCE, bins=("nft", "systemctl"))
    assert code == 0 and result["ok"] is True
    assert result["tunnels"][0]["traffic"] == "not checked"
    assert not any(argv[0].endswith("ping") for argv in seen)


def test_state_absent(monkeypatch, capsys):
    answers = {"nft": (1, "", "Error"), "systemctl is-enabled": (1, "not-found\n", ""),
               "systemctl is-active": (3, "inactive\n", "")}
    code, result, _seen = run_main(monkeypatch, capsys, {"state": "absent"}, answers)
    assert code == 0 and result["ok"] is True and result["msg"] == "kill switch removed"


def test_a_stale_bridge_table_is_a_problem(monkeypatch, capsys):
    bridge = TABLE.replace("table inet", "table bridge").replace(DIGEST[:16], "0" * 16)
    code, result, _seen = run_main(monkeypatch, capsys, {"digest": DIGEST}, dict(IN_FORCE, **{"nft bridge": (0, bridge, "")}))
    assert code == 0 and result["ok"] is False
    assert result["problems"] == ["table bridge killswitch carries policy digest %s, expected %s" % ("0" * 16, DIGEST[:16])]
    assert result["bridge_table"] == {"present": True, "digest": "0" * 16, "matches": False}


def test_state_absent_with_the_bridge_table_left(monkeypatch, capsys):
    answers = {"nft": (1, "", "Error"), "systemctl is-enabled": (1, "not-found\n", ""),
               "systemctl is-active": (3, "inactive\n", ""), "nft bridge": (0, "table bridge killswitch {\n}\n", "")}
    code, result, _seen = run_main(monkeypatch, capsys, {"state": "absent"}, answers)
    assert code == 0 and result["ok"] is False and result["problems"] == ["table bridge killswitch is still loaded"]


def test_nft_garbage_fails(monkeypatch, capsys):
    code, result, _seen = run_main(monkeypatch, capsys, {}, dict(IN_FORCE, nft=(0, "garbage", "")))
    assert code == 1 and result["failed"] is True
    assert "unexpected listing" in result["msg"]


def test_bad_option_fails(monkeypatch, capsys):
    code, result, _seen = run_main(monkeypatch, capsys, {"state": "maybe"}, IN_FORCE)
    assert code == 1 and "state" in result["msg"]
