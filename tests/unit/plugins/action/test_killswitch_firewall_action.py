# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The apply action's confirmation: over new connections, every attempt bounded, never a hang."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from ansible.errors import AnsibleConnectionFailure

from ansible_collections.netlock.killswitch.plugins.action import killswitch_firewall as action
from ansible_collections.netlock.killswitch.plugins.action.killswitch_firewall import ActionModule


class Connection:
    """Counts resets; keeps the options the action sets."""

    def __init__(self):
        self.resets = 0
        self.closed = 0
        self.options = {"timeout": 10, "ssh_extra_args": "-o Foo=bar"}
        self._shell = SimpleNamespace(tmpdir="/tmp/already-there")

    def get_option(self, name):
        return self.options[name]

    def set_option(self, name, value):
        self.options[name] = value

    def reset(self):
        self.resets += 1

    def close(self):
        self.closed += 1


def make_action(answers, module_result, args=None, default="pending"):
    """answers: what each confirmation attempt does: a status string, an exception, or 'hang'."""
    connection = Connection()
    task = SimpleNamespace(args=args or {"ruleset": "x"}, async_val=0, check_mode=False,
                           action="netlock.killswitch.killswitch_firewall")
    plugin = ActionModule(task, connection, None, None, None, None)
    plugin._load_name = task.action  # as the plugin loader sets it
    release = threading.Event()
    calls = []

    def low_level(cmd, sudoable=True, **kwargs):
        calls.append((cmd, sudoable))
        answer = answers.pop(0) if answers else default
        if answer == "hang":
            release.wait(30)
            raise AnsibleConnectionFailure("released")
        if isinstance(answer, Exception):
            raise answer
        return {"rc": 0, "stdout": answer + "\n", "stderr": ""}

    plugin._low_level_execute_command = low_level
    plugin._execute_module = lambda **kwargs: dict(module_result)
    return plugin, connection, calls, release


ARMED = {"changed": True, "rollback": {"timeout": 6, "delay": 0.0, "confirm": "/bin/sh /run/x/confirm.sh"}}


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(action, "ATTEMPT_SECONDS", 1)
    monkeypatch.setattr(time, "sleep", lambda s: threading.Event().wait(min(s, 0.05)))


def test_confirmed_over_a_new_connection_with_become():
    plugin, connection, calls, _release = make_action(["pending", "confirmed"], ARMED)
    result = plugin.run(task_vars={})
    assert not result.get("failed"), result
    assert result["rollback"]["confirmed"] is True and result["rollback"]["status"] == "confirmed"
    assert connection.resets == 2, "each attempt starts from a new connection (ControlPersist master dropped)"
    assert calls == [("/bin/sh /run/x/confirm.sh", True)] * 2
    assert "ServerAliveInterval" in connection.options["ssh_extra_args"] and "Foo=bar" in connection.options["ssh_extra_args"]
    assert connection.options["timeout"] <= action.ATTEMPT_SECONDS


def test_a_host_that_never_answers_fails_within_the_timeout():
    plugin, _connection, _calls, _release = make_action([], ARMED, default=AnsibleConnectionFailure("timed out"))
    started = time.monotonic()
    result = plugin.run(task_vars={"inventory_hostname": "fleet1"})
    assert time.monotonic() - started < ARMED["rollback"]["timeout"] + 3
    assert result["failed"] is True and "restores its previous ruleset" in result["msg"]
    assert result["rollback"]["confirmed"] is False and result["rollback"]["status"] == "unreachable"


def test_a_stalled_session_is_abandoned_not_waited_for():
    long_enough = dict(ARMED, rollback=dict(ARMED["rollback"], timeout=12))
    plugin, connection, _calls, release = make_action(["hang", "hang", "confirmed"], long_enough)
    try:
        started = time.monotonic()
        result = plugin.run(task_vars={})
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert result["rollback"]["confirmed"] is True, result
    assert connection.closed == 2
    assert elapsed < 2 * (action.ATTEMPT_SECONDS + 2) + 2


@pytest.mark.parametrize("status", ["rolled back", "failed: Error: syntax error"])
def test_a_final_status_other_than_confirmed_fails(status):
    plugin, _conn, calls, _release = make_action([status], ARMED)
    result = plugin.run(task_vars={})
    assert result["failed"] is True and len(calls) == 1
    assert status in result["msg"]


def test_nothing_armed_means_nothing_to_confirm():
    plugin, connection, calls, _release = make_action([], {"changed": False})
    assert plugin.run(task_vars={}) == {"changed": False}
    assert calls == [] and connection.resets == 0


def test_confirm_false_leaves_the_rollback_armed():
    plugin, _conn, calls, _release = make_action([], ARMED, args={"ruleset": "x", "confirm": False})
    result = plugin.run(task_vars={"inventory_hostname": "h"})
    assert calls == [] and result["rollback"]["confirmed"] is False and not result.get("failed")
