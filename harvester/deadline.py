"""A run's deadline: ``sync --deadline HH:MM`` or ``--time-budget 3h``.

:class:`TimeBudget` is the deadline on the run's (injected) clock. It keeps back time to
finish the snapshot (commit, index, change feeds, manifest, promotion: proportional to
the items listed) and, for every request, the time of a typical request: a request is
started only when the rate gate can admit it early enough to be answered before that
reserve begins (:meth:`TimeBudget.cutoff`). Pure logic: no requests, no tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from harvester.config import parse_duration
from harvester.errors import ConfigError
from harvester.policy import Clock, Cutoff

#: Seconds kept for finishing the snapshot whatever its size (start of the commit,
#: manifest, promotion), and per listed item (its line written from the previous record
#: or the listing when deferred, the index rebuild, the recount, the change feed).
#: Measured on the simulator: about 0.4 ms per item all told; these keep 2x and more.
BASE_RESERVE: Final = 1.0
PER_ITEM_RESERVE: Final = 0.001
#: A request's time before the run has timed any (the real API answers in well under 1 s).
DEFAULT_REQUEST_TIME: Final = 1.0


@dataclass(slots=True)
class TimeBudget:
    """The clock time by which a run must have ended, commit included."""

    ends_at: float
    clock: Clock
    base_reserve: float = BASE_RESERVE
    per_item_reserve: float = PER_ITEM_RESERVE

    def reserve(self, items: int) -> float:
        """Seconds kept back to finish a snapshot of ``items`` items."""
        return self.base_reserve + self.per_item_reserve * max(0, items)

    def cutoff(self, items: int, typical_request: float | None) -> Cutoff:
        """When the next request must be admitted (``admit_by``) and answered
        (``end_by``) for the run to finish by :attr:`ends_at`."""
        end_by = self.ends_at - self.reserve(items)
        took = typical_request if typical_request is not None else DEFAULT_REQUEST_TIME
        return Cutoff(admit_by=end_by - took, end_by=end_by)

    def left(self) -> float:
        """Seconds until :attr:`ends_at` (negative once past)."""
        return self.ends_at - self.clock()


def parse_time_budget(text: str) -> float:
    """``--time-budget``: ``3h``, ``90m``, ``45s``, ``1d`` or plain seconds; positive and
    finite."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"--time-budget: {exc}, got {text!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"--time-budget: must be a positive duration, got {text!r}")
    return seconds


def seconds_until(text: str, now: datetime) -> float:
    """``--deadline HH:MM`` (local time, 24-hour clock) as seconds from ``now`` (a local,
    aware or naive datetime). A time already past today means tomorrow: a nightly job
    started at 23:30 with ``--deadline 06:00`` has until 06:00 the next morning."""
    hours, sep, minutes = text.strip().partition(":")
    if (not sep or not hours.isdigit() or not minutes.isdigit() or len(minutes) != 2
            or len(hours) > 2 or int(hours) > 23 or int(minutes) > 59):
        raise ConfigError(f"--deadline: expected HH:MM (00:00 to 23:59, local time), "
                          f"got {text!r}")
    target = now.replace(hour=int(hours), minute=int(minutes), second=0, microsecond=0)
    if target <= now:
        target += timedelta(days=1)
    return (target - now).total_seconds()
