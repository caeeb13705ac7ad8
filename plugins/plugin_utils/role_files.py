# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The content of a file the role writes, made on the controller: a template of the role rendered as
ansible.builtin.template renders it, a file of the role, or given content.

Shared by killswitch_in_force (which compares digests) and killswitch_files (which writes), so that the check and
the write cannot disagree about a file's content.
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail, AnsibleError

try:  # ansible-core 2.19 and later
    from ansible._internal._templating._template_vars import generate_ansible_template_vars
    from ansible.template import trust_as_template
except ImportError:  # ansible-core 2.18
    from ansible.template import generate_ansible_template_vars

    def trust_as_template(text):
        return text

COMMANDS_VAR = "killswitch_apply"  # the role's templates read the load and list commands from the apply's result


def check_items(files):
    """Each item: dest, mode and its source (src for a template or a role file, or content)."""
    for item in files:
        template = item["kind"] == "template"
        sources = [key for key in ("src", "content") if key in item]
        if "dest" not in item or "mode" not in item or len(sources) != 1 or (template and sources != ["src"]):
            raise AnsibleActionFail("%s: each item needs dest, mode and %s: %r" % (
                "templates" if template else "copies", "src" if template else "one of src, content", item))


def content(action, item, task_vars, commands=None):
    """The bytes the role's template, copy of a role file or copy of content writes for ``item``; ``commands``
    (the firewall's load and list commands), when given, are what the templates read as killswitch_apply.commands."""
    if "content" in item:
        return str(item["content"]).encode("utf-8")
    try:
        source = action._find_needle("templates" if item["kind"] == "template" else "files", item["src"])
    except AnsibleError as exc:
        raise AnsibleActionFail(str(exc)) from exc
    if item["kind"] != "template":
        with open(source, "rb") as handle:
            return handle.read()
    overlay = {} if commands is None else {COMMANDS_VAR: {"commands": commands}}
    if "item" in item:
        overlay["item"] = item["item"]
    return render(action, item["src"], source, item["dest"], task_vars, overlay).encode("utf-8")


def render(action, name, source, dest, task_vars, overlay):
    """As ansible.builtin.template renders a template (its defaults: trim_blocks, newline \\n), with ``overlay``."""
    data = trust_as_template(action._loader.get_text_file_contents(source))
    searchpath = list(task_vars.get("ansible_search_path", [])) + [action._loader._basedir, os.path.dirname(source)]
    searchpath = [path for base in searchpath for path in (os.path.join(base, "templates"), base)]
    variables = dict(task_vars)
    variables.update(generate_ansible_template_vars(path=name, fullpath=source, dest_path=dest,
                                                    include_ansible_managed="ansible_managed" not in variables))
    variables.update(overlay)
    templar = action._templar.copy_with_new_env(searchpath=searchpath, available_variables=variables)
    rendered = templar.template(data, escape_backslashes=False,
                                overrides=dict(trim_blocks=True, lstrip_blocks=False, newline_sequence="\n"))
    return "" if rendered is None else str(rendered)
