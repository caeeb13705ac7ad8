# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """The files the role writes, as killswitch_files writes them and killswitch_in_force compares them
    (their argument spec is module_utils/role_parts.py FILE_OPTIONS)."""

    DOCUMENTATION = r"""
options:
  templates:
    description:
      - Files rendered from templates of the role, as dicts with C(src), C(dest), C(mode) and, for a template rendered
        in a loop, C(item). Rendered on the controller as M(ansible.builtin.template) renders them; the templates see
        C(killswitch_apply) (M(netlock.killswitch.killswitch_in_force) gives them its returned C(commands) as
        C(killswitch_apply.commands)). Owner and group are root.
    type: list
    elements: dict
    default: []
  copies:
    description:
      - Files copied, as dicts with C(dest), C(mode) and one of C(src) (a file of the role) or C(content). Owner and
        group are root. The action plugin sends M(netlock.killswitch.killswitch_files) each file's content and
        M(netlock.killswitch.killswitch_in_force) only its digest.
    type: list
    elements: dict
    default: []
  directories:
    description: Directories (parents included), as dicts with C(path) and C(mode); owner and group are root.
    type: list
    elements: dict
    default: []
  app_dropins:
    description:
      - The ExecStartPre drop-ins of the services with app exceptions, as a dict with C(template), C(unit_dir),
        C(name) (the drop-in's file name) and C(services). Each service's C(<unit_dir>/<service>.d/<name>) is rendered
        with C(item) set to the service; any other drop-in of that name is stale, and
        M(netlock.killswitch.killswitch_files) removes it.
    type: dict
  only:
    description:
      - Glob patterns and the exact set of paths each may match, as dicts with C(pattern) and C(paths); anything
        else matching is stale (an old stored policy, a drop-in no service needs), and
        M(netlock.killswitch.killswitch_files) removes it (a directory with its content) after the files are written.
    type: list
    elements: dict
    default: []
"""
