"""The two error kinds of the product.

Transient errors (I/O that may succeed on retry: a busy database, a refused connection) are
retried with backoff by the caller that does I/O; permanent errors (bad input, a violated
rule) are recorded and never retried. Foreign exceptions are translated into one of these
at the adapter boundary, so the controller reasons about two kinds only.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["AutopilotError", "PermanentError", "TransientError", "retry_transient"]

T = TypeVar("T")


class AutopilotError(Exception):
    """Base of every error the product raises on purpose."""


class TransientError(AutopilotError):
    """Worth retrying: the same call may succeed later."""


class PermanentError(AutopilotError):
    """Not worth retrying: the input or the state is wrong; record it and move on."""


def retry_transient(
    fn: Callable[[], T],
    *,
    attempts: int = 5,
    base_delay_s: float = 0.2,
    max_delay_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; on TransientError retry with jittered exponential backoff."""
    for i in range(attempts):
        try:
            return fn()
        except TransientError:
            if i == attempts - 1:
                raise
            delay = min(max_delay_s, base_delay_s * (2**i))
            sleep(delay * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")  # pragma: no cover
