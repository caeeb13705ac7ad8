#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: killswitch_files
short_description: Write the kill switch's files and directories on a Linux host in one module run
version_added: 1.2.0
description:
  - Writes a set of files, each owned by root with its mode, and makes a set of directories, in one module run
    where M(ansible.builtin.template) and M(ansible.builtin.copy) take several round trips per file (bench B1 and
    B2). Only a file whose content, mode or owner differs is written, through a temporary file renamed into place.
  - The action plugin makes each file's content on the controller, as M(netlock.killswitch.killswitch_in_force)
    does to compare it, so that a check and a write agree. Templates are rendered as M(ansible.builtin.template)
    renders them.
author:
  - netlock.killswitch contributors (@netlock)
extends_documentation_fragment:
  - netlock.killswitch.role_files
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: One entry per file written, its text before and after (a size for a file that is not UTF-8 text).
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
seealso:
  - module: netlock.killswitch.killswitch_in_force
"""

EXAMPLES = r"""
- name: Store a policy for the guard
  netlock.killswitch.killswitch_files:
    directories:
      - {path: /etc/netlock-killswitch/policies/0123456789abcdef, mode: "0700"}
    copies:
      - {content: "{{ killswitch_rendered.ruleset }}", dest: /etc/netlock-killswitch/policies/0123456789abcdef/ruleset, mode: "0600"}
"""

RETURN = r"""
changed_paths:
  description: The files and directories written, changed or removed (or, in check mode, that would be).
  returned: always
  type: list
  elements: str
  sample: [/etc/netlock-killswitch/guard.json]
"""

import glob
import os
import shutil
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.netlock.killswitch.plugins.module_utils.role_parts import FILE_OPTIONS

ROOT = 0
DIFF_BYTES = 256 * 1024  # a larger file's diff shows its size


def _mode(value):
    return value if isinstance(value, int) else int(str(value), 8)


def directory_changes(path, mode):
    """What making ``path`` (root, ``mode``) changes: [] when it is already so."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return ["made"]
    if not stat.S_ISDIR(info.st_mode):
        raise ValueError("%s exists and is not a directory" % path)
    changes = []
    if stat.S_IMODE(info.st_mode) != mode:
        changes.append("mode")
    if (info.st_uid, info.st_gid) != (ROOT, ROOT):
        changes.append("owner")
    return changes


def make_directory(path, mode):
    os.makedirs(path, mode=mode, exist_ok=True)
    os.chmod(path, mode)
    os.chown(path, ROOT, ROOT)


def read_bytes(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def file_changes(path, data, mode):
    """(what differs, the content before): [] when the file already holds ``data`` with ``mode``, root-owned."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return ["content"], None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("%s exists and is not a regular file" % path)
    before = read_bytes(path)
    changes = [] if before == data else ["content"]
    if stat.S_IMODE(info.st_mode) != mode:
        changes.append("mode")
    if (info.st_uid, info.st_gid) != (ROOT, ROOT):
        changes.append("owner")
    return changes, before


def write_file(path, data, mode):
    """Through a temporary file in the same directory, renamed into place."""
    directory = os.path.dirname(path) or "/"
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.chown(tmp, ROOT, ROOT)
        # Not module.atomic_move: it gives the new file the old one's mode, and the mode is part of what is written.
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _text(data):
    if data is None:
        return ""
    if len(data) > DIFF_BYTES:
        return "(%d bytes)\n" % len(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "(%d bytes, not UTF-8 text)\n" % len(data)


def remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def converge(module, directories, files, only=()):
    changed, diff = [], []
    for item in directories:
        mode = _mode(item["mode"])
        if directory_changes(item["path"], mode):
            changed.append(item["path"])
            if not module.check_mode:
                make_directory(item["path"], mode)
    for item in files:
        data, mode = item["content"].encode("utf-8"), _mode(item["mode"])
        changes, before = file_changes(item["dest"], data, mode)
        if not changes:
            continue
        changed.append(item["dest"])
        diff.append(dict(before_header=item["dest"], before=_text(before), after_header=item["dest"], after=_text(data)))
        if not module.check_mode:
            write_file(item["dest"], data, mode)
    for item in only:
        for path in sorted(set(glob.glob(item["pattern"])) - set(item.get("paths") or [])):
            changed.append(path)
            diff.append(dict(before_header=path, before="(present)\n", after_header=path, after="(absent)\n"))
            if not module.check_mode:
                remove(path)
    return changed, diff


def main():
    module = AnsibleModule(
        argument_spec=dict(FILE_OPTIONS),
        supports_check_mode=True,
    )
    # The action plugin sends every file as a copy with its content (templates rendered, role files read), and
    # app_dropins expanded into those, directories and only.
    files = module.params["copies"]
    if module.params["templates"] or module.params["app_dropins"] or any("content" not in item for item in files):
        module.fail_json(msg="killswitch_files runs through its action plugin, which sends each file's content")
    try:
        changed, diff = converge(module, module.params["directories"], files, module.params["only"])
    except (OSError, ValueError) as exc:
        module.fail_json(msg="writing the kill switch's files failed: %s" % exc)
    result = dict(changed=bool(changed), changed_paths=changed)
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
