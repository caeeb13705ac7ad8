#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: killswitch_fleet_report
short_description: Summarize a staged kill switch rollout as a table and a JSON report
version_added: 1.0.0
description:
  - Runs on the controller only (an action plugin) and never touches a host. The last task of C(playbooks/rollout.yml).
  - Gives every host of the rollout one result, V(changed), V(ok), V(failed), V(unreachable) or V(not run) (the rollout
    stopped before its batch, or in the preflight), with the stage it ran in, its ruleset's policy digest, whether it
    changed, the reason when it did not converge, and the post-check's status
    (M(netlock.killswitch.killswitch_status)).
  - Reads each host's records from its host variables, C(killswitch_rollout_preflight) (set by the preflight) and
    C(killswitch_rollout_result) (set by its batch); a host without them was unreachable, or not run.
  - Prints a plain text table and writes the report as JSON to O(path); fails when any host did not converge, so the
    run exits non-zero.
author:
  - netlock.killswitch contributors (@netlock)
options:
  hosts:
    description: Every host of the rollout, in rollout order (the preflight's C(ansible_play_hosts_all)).
    type: list
    elements: str
    required: true
  stages:
    description: The stages that ran, in order, each C({name, hosts}) (V(preflight), V(canary), V(batch 2), ...).
    type: list
    elements: dict
    default: []
  stop:
    description: The result of the M(netlock.killswitch.killswitch_rollout_gate) that stopped the rollout, if one did.
    type: dict
    default: {}
  max_fail_percentage:
    description: The threshold the rollout ran with, recorded in the report.
    type: float
  path:
    description:
      - Where the JSON report is written, on the controller; a relative path is relative to the current directory.
      - The file is replaced atomically; its directory is created.
    type: path
    default: reports/rollout.json
  show:
    description: Print the table.
    type: bool
    default: true
  fail:
    description: Fail when any host is not V(ok) or V(changed).
    type: bool
    default: true
  final:
    description:
      - V(false) writes an interim report while the rollout runs (after the preflight and after each batch), marked
        C(complete=false), without printing or failing. A run that dies on the way (Ansible ends a run when every
        host of a batch becomes unreachable) then leaves a report that says how far it got, never a stale one.
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - The report is written in check mode too (it describes the run and changes no host); it records C(check_mode),
        and V(changed) then means the run would change the host.
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
notes:
  - Always reports C(changed=false), because the report describes the run and is not state the run converges.
seealso:
  - module: netlock.killswitch.killswitch_rollout_gate
  - module: netlock.killswitch.killswitch_status
"""

EXAMPLES = r"""
- name: Summary table and reports/rollout.json
  netlock.killswitch.killswitch_fleet_report:
    hosts: "{{ hostvars['localhost'].killswitch_rollout_targets }}"
    stages: "{{ hostvars['localhost'].killswitch_rollout_stages }}"
    stop: "{{ hostvars['localhost'].killswitch_rollout_stop }}"
  run_once: true
"""

RETURN = r"""
path:
  description: The absolute path of the JSON report.
  returned: success
  type: str
  sample: /srv/ops/reports/rollout.json
not_converged:
  description: The hosts that are not V(ok) or V(changed).
  returned: success or failure
  type: list
  elements: str
table:
  description: The printed table, line by line.
  returned: success
  type: list
  elements: str
report:
  description: The report, as written to O(path). On failure it is left out of the result (it is in the file).
  returned: success
  type: dict
  contains:
    generated:
      description: When the report was made (UTC, ISO 8601).
      type: str
    complete:
      description: Whether the rollout had finished (V(false) in an interim report, see O(final)).
      type: bool
    check_mode:
      description: Whether the run was a check.
      type: bool
    max_fail_percentage:
      description: The rollout's threshold.
      type: float
    stages:
      description: The stages in the order they ran, each C({name, hosts}).
      type: list
      elements: dict
    stopped:
      description:
        - The gate that stopped the rollout (M(netlock.killswitch.killswitch_rollout_gate)), or V(null)
        - C({stage, summary, msg, failed_hosts, aborted_hosts, unreachable_hosts, failed_percentage, max_fail_percentage}).
      type: dict
    hosts:
      description:
        - One entry per host, C({host, result, stage, digest, changed, msg, status}).
        - C(result) is V(changed), V(ok), V(failed), V(unreachable) or V(not run); C(digest) the policy digest (SHA-256);
          C(status) the post-check's M(netlock.killswitch.killswitch_status) result or V(null).
      type: list
      elements: dict
    totals:
      description: How many hosts have each result.
      type: dict
    ok:
      description: Whether every host is V(ok) or V(changed).
      type: bool
"""
