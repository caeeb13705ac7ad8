# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible callback for the fleet benchmarks: one JSON line per task start and per host result, appended and flushed
at once to the file named by $BENCH_COUNT_OUT, so a run stopped by its time bound still leaves what it did.
bench/fleet_lab.py ``summarize`` reads it."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: bench_count
    type: aggregate
    short_description: task starts and host results as JSON lines, for the fleet benchmarks
    description:
      - Appends one JSON line per task start and per host result to the file in $BENCH_COUNT_OUT.
    requirements:
      - enabled in ANSIBLE_CALLBACKS_ENABLED
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_count"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        path = os.environ.get("BENCH_COUNT_OUT")
        self._out = open(path, "a", encoding="utf-8") if path else None  # pylint: disable=consider-using-with

    def _write(self, record: dict) -> None:
        if self._out is not None:
            record["t"] = time.monotonic()
            self._out.write(json.dumps(record) + "\n")
            self._out.flush()

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._write({"event": "task", "name": task.get_name(), "action": task.action})

    def _result(self, result, status: str) -> None:
        outcome = result._result  # pylint: disable=protected-access
        items = outcome.get("results") if isinstance(outcome.get("results"), list) else None
        self._write({"event": "result", "host": result._host.get_name(),  # pylint: disable=protected-access
                     "name": result._task.get_name(), "action": result._task.action,  # pylint: disable=protected-access
                     "status": status, "changed": bool(outcome.get("changed")),
                     "items": None if items is None else [not item.get("skipped", False) for item in items if isinstance(item, dict)]})

    def v2_runner_on_ok(self, result) -> None:
        self._result(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._result(result, "failed")

    def v2_runner_on_skipped(self, result) -> None:
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result) -> None:
        self._result(result, "unreachable")

    def v2_runner_item_on_ok(self, result) -> None:
        self._write({"event": "item", "host": result._host.get_name(), "name": result._task.get_name()})  # pylint: disable=protected-access
