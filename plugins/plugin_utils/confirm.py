# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Commit-confirm over a new connection: the pieces the Linux and Windows action plugins share.

After an armed apply the controller drops its connection and confirms over a new one, so that a confirmation
proves the management path still works; each attempt is bounded, since a cut path makes a call hang rather
than fail.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional


def reset_connection(connection: Any, display: Any) -> None:
    """Drop the current connection so that the next call opens a new one."""
    try:
        connection.reset()
    except AttributeError:
        display.warning("the connection plugin cannot reset; confirming over the existing connection")
    except Exception as exc:  # a reset that fails leaves nothing to reuse
        display.vvv("connection reset failed: %s" % exc)


def bounded(call: Callable[[], Any], connection: Any, seconds: float,
            on_error: Callable[[Exception], Any] = lambda exc: None) -> Optional[Any]:
    """``call()`` in a thread: its result (``on_error(exc)`` when it raised: the host is not reachable yet), or
    None when it did not answer within ``seconds``, the stalled connection then closed."""
    answer = {}

    def attempt():
        try:
            answer["value"] = call()
        except Exception as exc:  # connection failures
            answer["value"] = on_error(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        try:
            connection.close()
        except Exception:  # the stalled session is abandoned either way
            pass
        return None
    return answer.get("value")
