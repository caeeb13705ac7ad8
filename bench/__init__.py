# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The benchmark suite (issue 12): ``python -m bench`` (``make bench``) writes bench/results.json and results.md."""
