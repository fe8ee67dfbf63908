"""DRF's ``SimpleRateThrottle`` sliding log, on an injectable clock."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping

from harvester.sim.rates import Rate

__all__ = ["SlidingLog", "throttle_message"]


class SlidingLog:
    """Per-key request history; at most ``rate.count`` hits in any ``rate.window`` seconds.

    Like DRF, rejected requests are *not* recorded, so a client hammering a closed window
    does not extend it.
    """

    def __init__(self, rate: Rate | None, clock: Callable[[], float],
                 per_key: Mapping[str, Rate | None] | None = None) -> None:
        self.rate = rate
        self._clock = clock
        self._history: dict[str, deque[float]] = {}
        #: keys (credentials) with a budget of their own (``tenant_rate_lms``)
        self.per_key = dict(per_key or {})

    def hit(self, key: str) -> int | None:
        """Record a request for ``key``; ``None`` if allowed, else the wait in whole seconds."""
        rate = self.per_key.get(key, self.rate)
        if rate is None:
            return None
        now = self._clock()
        history = self._history.setdefault(key, deque())
        # Newest hits are on the left, as in DRF's list; expire from the right.
        while history and history[-1] <= now - rate.window:
            history.pop()
        if len(history) >= rate.count:
            remaining = rate.window - (now - history[-1])
            return max(1, math.ceil(remaining))
        history.appendleft(now)
        return None

    def reset(self) -> None:
        """Forget every history (``POST /__reset``)."""
        self._history.clear()


def throttle_message(wait: int) -> str:
    """DRF's ``Throttled`` detail text, singular for one second."""
    unit = "second" if wait == 1 else "seconds"
    return f"Request was throttled. Expected available in {wait} {unit}."
