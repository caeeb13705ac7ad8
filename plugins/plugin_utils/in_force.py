# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a host already has everything the role would converge: what the controller expects against what
killswitch_in_force read on the host.  Pure; one line per part that is not in force."""

from __future__ import annotations

import fnmatch
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

ROOT = "root"


def file_differences(path: str, want: Mapping[str, Any], have: Mapping[str, Any] | None) -> List[str]:
    """A file or directory the role writes: its type, content digest, mode, owner and group."""
    if want.get("unrendered"):
        return ["%s: not compared, its template could not be rendered before the apply: %s" % (path, want["unrendered"])]
    if have is None:
        return ["%s: missing" % path]
    problems = []
    if have.get("type") != want["type"]:
        return ["%s: a %s, not a %s" % (path, have.get("type"), want["type"])]
    if want.get("sha256") is not None and have.get("sha256") != want["sha256"]:
        problems.append("%s: content differs" % path)
    if have.get("mode") != normal_mode(want["mode"]):
        problems.append("%s: mode %s, not %s" % (path, have.get("mode"), normal_mode(want["mode"])))
    for key in ("owner", "group"):
        if have.get(key) != ROOT:
            problems.append("%s: %s %s, not %s" % (path, key, have.get(key), ROOT))
    return problems


def normal_mode(mode: Any) -> str:
    """'0644', '644' and 0o644 alike as '0644'."""
    number = mode if isinstance(mode, int) else int(str(mode), 8)
    return "0%03o" % number


def unit_differences(name: str, want: Mapping[str, Any], have: Mapping[str, str] | None) -> List[str]:
    if not have or have.get("LoadState") != "loaded":
        return ["%s: not loaded" % name]
    problems = []
    if have.get("NeedDaemonReload") == "yes":
        problems.append("%s: changed on disk since systemd loaded it" % name)
    if want.get("enabled") and have.get("UnitFileState") != "enabled":
        problems.append("%s: %s, not enabled" % (name, have.get("UnitFileState") or "not enabled"))
    if want.get("active") and have.get("ActiveState") != "active":
        problems.append("%s: %s, not active" % (name, have.get("ActiveState")))
    return problems


def findings(expected: Mapping[str, Any], observed: Mapping[str, Any]) -> List[Tuple[str, str, str]]:
    """Every part not in force, as (kind, key, text): kind is tools, ruleset, file, absent, stale, unit, fence or
    backend; key the path, unit, table or backend concerned.

    ``expected``: files ({dest: {type, sha256, mode}}, directories included), absent (paths), only ({pattern:
    [paths]}), units ({name: {enabled, active}}), nft_tables.  ``observed``: the module's ``observed``.
    """
    found: List[Tuple[str, str, str]] = [("tools", tool, "%s: not on the host" % tool)
                                         for tool in observed.get("tools_missing", [])]
    firewall = observed.get("firewall") or {}
    if firewall.get("rollback_pending"):
        found.append(("ruleset", "", "an earlier apply awaits its confirmation"))
    elif not firewall.get("in_force"):
        found.append(("ruleset", "", "the ruleset is not proven in force (no record of it, or the live rules or file "
                                     "differ)"))
    paths: Dict[str, Any] = observed.get("paths") or {}
    for path, want in expected.get("files", {}).items():
        found.extend(("file", path, text) for text in file_differences(path, want, paths.get(path)))
    found.extend(("absent", path, "%s: present, should be absent" % path) for path in expected.get("absent", [])
                 if paths.get(path) is not None)
    globs = observed.get("globs") or {}
    for pattern, wanted in expected.get("only", {}).items():
        found.extend(("stale", path, "%s: stale" % path) for path in sorted(set(globs.get(pattern, [])) - set(wanted)))
    units = observed.get("units") or {}
    for name, want in expected.get("units", {}).items():
        found.extend(("unit", name, text) for text in unit_differences(name, want, units.get(name)))
    tables = set(observed.get("nft_tables") or [])
    found.extend(("fence", name, "nft table %s: not loaded" % name) for name in expected.get("nft_tables", [])
                 if name not in tables)
    for backend, left in sorted((observed.get("other_backends") or {}).items()):
        if left.get("table"):
            found.append(("backend", backend, "%s: the %s rules are still loaded" % (backend, backend)))
        found.extend(("backend", backend, "%s: %s is still there" % (backend, path)) for path in left.get("files", []))
    return found


def differences(expected: Mapping[str, Any], observed: Mapping[str, Any]) -> List[str]:
    """Every part not in force, one line each; empty when the role's converge would change nothing."""
    return [text for _kind, _key, text in findings(expected, observed)]


def todo(found: Sequence[Tuple[str, str, str]], app_dropin_paths: Iterable[str] = (),
         app_dropin_patterns: Iterable[str] = ()) -> Dict[str, Any]:
    """What the converge has to look at, for its tasks' conditions (tasks/converge.yml): a task whose part is in
    force is skipped.  The app exceptions' drop-ins (``app_dropin_paths``: files and directories; stale ones match
    ``app_dropin_patterns``) are one part, converged together."""
    dropin_paths, patterns = set(app_dropin_paths), list(app_dropin_patterns)
    paths = sorted({key for kind, key, _text in found if kind in ("file", "absent")})
    stale = sorted({key for kind, key, _text in found if kind == "stale"})
    stale_dropins = [path for path in stale if any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)]
    return dict(
        tools=any(kind == "tools" for kind, _key, _text in found),
        ruleset=any(kind == "ruleset" for kind, _key, _text in found),
        other_backends=sorted({key for kind, key, _text in found if kind == "backend"}),
        paths=paths,
        units=sorted({key for kind, key, _text in found if kind == "unit"}),
        fence=any(kind == "fence" for kind, _key, _text in found),
        app_dropins=bool(stale_dropins) or any(path in dropin_paths for path in paths),
        stale_policies=len(stale) > len(stale_dropins),
        guard_leftovers=any(kind == "absent" for kind, _key, _text in found),
    )
