# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The files, directories and glob patterns of the role's parts, as killswitch_in_force names them.

Shared by the module (which reads those paths on the host) and its action plugin (which knows what they should
hold), so that both expand ``app_dropins`` the same way.
"""

from __future__ import annotations

# The argument spec of the file options both modules take (documented once, doc_fragments/role_files.py).
FILE_OPTIONS = dict(
    templates=dict(type="list", elements="dict", default=[]),
    copies=dict(type="list", elements="dict", default=[]),
    directories=dict(type="list", elements="dict", default=[]),
    app_dropins=dict(type="dict"),
    only=dict(type="list", elements="dict", default=[]),
)


def app_dropin_parts(spec):
    """One drop-in per service with an app exception, in ``<unit_dir>/<service>.d/``; any other is stale.

    Returns (templates, directories, only) in the shapes of the module's options; a template carries ``item``,
    the service, as the role's loop over the services does.
    """
    if not spec:
        return [], [], []
    unit_dir, name = spec["unit_dir"].rstrip("/"), spec["name"]
    services = list(spec.get("services") or [])
    templates = [dict(src=spec["template"], dest="%s/%s.d/%s" % (unit_dir, service, name), mode="0644", item=service)
                 for service in services]
    directories = [dict(path="%s/%s.d" % (unit_dir, service), mode="0755") for service in services]
    # The role's find: files of that name at most two levels below the unit directory.
    only = [dict(pattern="%s/*/%s" % (unit_dir, name), paths=[item["dest"] for item in templates]),
            dict(pattern="%s/%s" % (unit_dir, name), paths=[])]
    return templates, directories, only


def parts(params):
    """(files, directories, only) of the module's options, app drop-ins expanded; each file has ``kind``
    (template or copy)."""
    templates, directories, only = app_dropin_parts(params.get("app_dropins"))
    files = ([dict(item, kind="template") for item in list(params.get("templates") or []) + templates]
             + [dict(item, kind="copy") for item in params.get("copies") or []])
    return files, list(params.get("directories") or []) + directories, list(params.get("only") or []) + only
