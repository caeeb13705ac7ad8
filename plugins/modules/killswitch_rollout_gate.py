#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: killswitch_rollout_gate
short_description: Decide whether a staged kill switch rollout goes on after a stage
version_added: 1.0.0
description:
  - Runs on the controller only (an action plugin) and never touches a host. Used by C(playbooks/rollout.yml)
    once after the preflight and once after each batch, with C(run_once).
  - Reads each host's record of the stage from its host variables (the fact named by O(fact)), counts the hosts
    of O(hosts) that failed (or stopped with a failing batch) and those that have no record (they became unreachable),
    and fails when their share of the stage is above O(max_fail_percentage), with a message naming each host and why.
  - A failure means the rollout must stop. The playbook registers the result, ignores the failure, ends the play
    with C(meta) C(end_play) and still runs its summary, which fails the run.
author:
  - netlock.killswitch contributors (@netlock)
options:
  stage:
    description: Name of the stage, for the messages and the report (V(preflight), V(canary), V(batch 2), ...).
    type: str
    required: true
  hosts:
    description:
      - Every host of the stage, including those that have become unreachable since it began.
    type: list
    elements: str
    required: true
  fact:
    description:
      - The host variable holding each host's record, a dict whose C(result) is V(ok) or V(changed) when the host passed,
        V(failed), V(aborted) or V(unreachable) when it did not; an unset or empty record means unreachable too.
      - V(killswitch_rollout_preflight) for the preflight, V(killswitch_rollout_result) for the batches.
    type: str
    default: killswitch_rollout_result
  max_fail_percentage:
    description:
      - The share of the stage's hosts, in percent, that may fail or become unreachable without stopping the rollout.
      - V(0) stops at the first one, as Ansible's C(max_fail_percentage) counts per batch.
    type: float
    default: 0
  warn:
    description:
      - Warn, naming the hosts, when some failed or became unreachable but no more than O(max_fail_percentage) allows.
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Changes nothing in any mode.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
  async:
    description: Supports being used with the C(async) keyword.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: all
    details: Runs on the controller.
seealso:
  - module: netlock.killswitch.killswitch_fleet_report
"""

EXAMPLES = r"""
- name: Stop the rollout when a host of this batch failed
  netlock.killswitch.killswitch_rollout_gate:
    stage: canary
    hosts: "{{ hostvars['localhost'].killswitch_rollout_stages[-1].hosts }}"
    max_fail_percentage: 0
  run_once: true
  register: killswitch_rollout_gate
  ignore_errors: true

- name: End the play when the gate said stop
  ansible.builtin.meta: end_play
  when: killswitch_rollout_gate.stop
"""

RETURN = r"""
stop:
  description: Whether the rollout must stop (the task fails too).
  returned: always
  type: bool
stage:
  description: The stage judged.
  returned: always
  type: str
  sample: canary
hosts:
  description: The stage's hosts.
  returned: always
  type: list
  elements: str
failed_hosts:
  description: The hosts that failed.
  returned: always
  type: list
  elements: str
aborted_hosts:
  description: The hosts that stopped with their batch because another host failed a task that ends the play.
  returned: always
  type: list
  elements: str
unreachable_hosts:
  description: The hosts recorded as unreachable, or without a record.
  returned: always
  type: list
  elements: str
failed_percentage:
  description: Failed and unreachable hosts as a share of the stage, in percent.
  returned: always
  type: float
  sample: 50.0
max_fail_percentage:
  description: The threshold applied.
  returned: always
  type: float
summary:
  description: The verdict in one line, without the reasons.
  returned: always
  type: str
msg:
  description: The verdict, naming each failed or unreachable host and why.
  returned: always
  type: str
  sample: "canary: 1 of 1 hosts did not pass (1 unreachable; 100%, above the 0% allowed), the rollout stops here: web1: unreachable"
"""
