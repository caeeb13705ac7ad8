# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``python -m bench``: run the benchmarks (all, or ``BENCH_ONLY=B3,B7``) and write bench/results.json and .md."""

from __future__ import annotations

import sys

from bench.run import main

sys.exit(main())
