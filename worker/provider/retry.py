"""Backoff between provider attempts: the dispatcher (worker/dispatch/dispatcher.py) waits
:func:`backoff_delay` before it tries a failed job again.

"Full jitter" (uniform between zero and an exponentially growing ceiling) spreads the retries of
many workers that failed together, so they do not hit a recovering provider in lock step::

    >>> s = Settings(retry_base_s=0.5, retry_max_backoff_s=60)
    >>> 0 <= backoff_delay(3, s) <= 2.0      # ceiling 0.5 * 2**2
    True
"""

from __future__ import annotations

import random

from worker.settings import Settings

# 2**64 times any sane base already exceeds every cap; bounding the exponent avoids float overflow.
_MAX_EXPONENT = 64


def backoff_ceiling(attempt: int, settings: Settings) -> float:
    """Largest delay after failed attempt number ``attempt`` (1 = the first try)."""
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    return min(settings.retry_max_backoff_s, settings.retry_base_s * 2.0**exponent)


def backoff_delay(attempt: int, settings: Settings) -> float:
    """Seconds to wait after failed attempt number ``attempt``: uniform(0, ceiling), with the ceiling
    ``retry_base_s * 2**(attempt - 1)`` capped at ``retry_max_backoff_s``."""
    return random.uniform(0.0, backoff_ceiling(attempt, settings))
