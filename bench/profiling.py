# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cProfile of a figure that misses its target: the top entries, as a Markdown code block for results.md."""

from __future__ import annotations

import cProfile
import io
import pstats
from typing import Any, Callable


def top_entries(call: Callable[[], Any], entries: int = 12, sort: str = "tottime") -> str:
    profiler = cProfile.Profile()
    profiler.runcall(call)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.strip_dirs().sort_stats(sort).print_stats(entries)
    lines = [line.rstrip() for line in text.getvalue().splitlines() if line.strip()]
    # pstats prints a header (totals, "Ordered by"), then the table: keep the totals line and the table.
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    totals = [line.strip() for line in lines if "function calls" in line][:1]
    return "```\n%s\n```" % "\n".join(totals + lines[start:])
