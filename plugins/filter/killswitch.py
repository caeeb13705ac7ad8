# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of netlock.killswitch.

``drift_status``: one host's ``killswitch_status`` fact (docs/design/drift.md) from the results the role
registered, used by ``roles/killswitch/tasks/status.yml``::

    {'table': killswitch_apply, 'file': killswitch_apply, 'boot_unit': [killswitch_unit, killswitch_unit_enabled], ...}
    | netlock.killswitch.drift_status(host=inventory_hostname, backend=..., digest=...)

Each part (table, file, boot_unit, guard, watcher, fence) maps to a registered result, a loop's result or a
list of them. A part is in sync when none of them changed (in check mode: would change); skipped results and
parts left out are in sync. For table and file a killswitch_firewall result counts through its own
``table_changed``/``rollback_pending`` and ``file_changed``/``expected_changed`` and its diff is split the same
way. Each part's ``diff`` is its changed results' diffs as one short unified diff ('' when in sync). The
logic is in plugins/plugin_utils/drift.py.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.netlock.killswitch.plugins.plugin_utils.drift import StatusError, host_status
from ansible_collections.netlock.killswitch.plugins.plugin_utils.rollout import plain


def drift_status(parts, host, backend="", digest=""):
    """``killswitch_status`` of one host (plugins/plugin_utils/drift.py, docs/design/drift.md)."""
    if not hasattr(parts, "items"):
        raise AnsibleFilterError("drift_status expects a dict of parts, got %s" % type(parts).__name__)
    try:
        return host_status(plain(parts), host, backend=backend, digest=digest)
    except StatusError as exc:
        raise AnsibleFilterError("drift_status: %s" % exc) from exc


class FilterModule:
    """netlock.killswitch filters."""

    def filters(self):
        return {"drift_status": drift_status}
