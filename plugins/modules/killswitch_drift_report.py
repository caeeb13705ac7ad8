#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: killswitch_drift_report
short_description: Report the fleet's kill switch drift as a table and a JSON report
version_added: 1.0.0
description:
  - Runs on the controller only (an action plugin) and never touches a host. The last task of C(playbooks/drift.yml).
  - Reads each targeted host's C(killswitch_status), the fact the role C(netlock.killswitch.killswitch) publishes at
    the end of every run (check mode included), and reports per host and per part (V(table), V(file), V(boot_unit),
    V(guard), V(watcher), V(fence)) whether it is in sync, with a one-line summary of each drifted part's diff.
  - A targeted host without a status was unreachable, or the role failed on it (the host's C(killswitch_drift_error)
    says why); both count as unreachable.
  - Prints a plain text table, writes the report as JSON to O(path), and fails when a host drifted and O(enforced) is
    false, or when a host is unreachable, so that the run exits non-zero (C(ansible-playbook) exits with 2).
author:
  - netlock.killswitch contributors (@netlock)
options:
  targets:
    description:
      - Every host the run targeted, in order (the play's C(ansible_play_hosts_all), which honours C(--limit)).
      - Only these hosts are reported; a target without a status is unreachable.
    type: list
    elements: str
    required: true
  statuses:
    description:
      - The hosts' C(killswitch_status) facts. Left out, each target's C(killswitch_status) is read from its host
        variables.
    type: list
    elements: dict
  path:
    description:
      - Where the JSON report is written, on the controller; a relative path is relative to the current directory.
      - The file is replaced atomically; its directory is created.
    type: path
    default: reports/drift.json
  enforced:
    description:
      - Whether the run converged the hosts (not check mode). Drift is then reported as repaired and does not fail
        the run.
    type: bool
    default: false
  fail:
    description: Fail when a host drifted (and O(enforced) is false) or is unreachable.
    type: bool
    default: true
  show:
    description: Print the table.
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - The report is written in check mode too; it describes the run and changes no host.
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
  - The shape of C(killswitch_status) is documented in C(docs/design/drift.md); the cron and systemd recipes that run
    the report are in C(docs/drift/).
seealso:
  - module: netlock.killswitch.killswitch_fleet_report
  - module: netlock.killswitch.killswitch_firewall
"""

EXAMPLES = r"""
- name: Print the fleet report, write reports/drift.json, fail on drift or an unreachable host
  netlock.killswitch.killswitch_drift_report:
    targets: "{{ ansible_play_hosts_all }}"
    enforced: "{{ killswitch_drift_enforce | bool }}"
  run_once: true
"""

RETURN = r"""
path:
  description: The absolute path of the JSON report.
  returned: success or failure
  type: str
  sample: /srv/ops/reports/drift.json
drifted:
  description: The hosts with at least one part not in sync.
  returned: success or failure
  type: list
  elements: str
unreachable:
  description: The targeted hosts without a status (unreachable, or the role failed).
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
    enforced:
      description: Whether the run converged the hosts.
      type: bool
    check_mode:
      description: Whether the hosts were only checked.
      type: bool
    targets:
      description: The targeted hosts.
      type: list
      elements: str
    hosts:
      description:
        - One entry per target, C({host, result, backend, digest, drifted, drifted_parts, parts, summary, msg}).
        - C(result) is V(in sync), V(drifted), V(repaired) (drifted, and this run restored it), V(unreachable) or
          V(failed) (the role failed on the host); C(parts) is the host's C(killswitch_status) parts, each
          C({in_sync, diff}); C(summary) a one-line summary of each drifted part's diff.
      type: list
      elements: dict
    drifted:
      description: The hosts that drifted.
      type: list
      elements: str
    unreachable:
      description: The hosts without a status.
      type: list
      elements: str
    totals:
      description: How many hosts have each result.
      type: dict
    ok:
      description: Whether the run passes (no host unreachable, no drift left unrepaired).
      type: bool
"""
