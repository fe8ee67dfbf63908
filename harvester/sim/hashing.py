"""Stateless, seedable integer hashing: the root of all simulated data.

Everything the simulator serves is a pure function of ``(seed, purpose tag, ids...)``, so
any position of a million-item catalog can be produced without touching its neighbours.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["BASE_TIME", "days", "iso", "iso_date", "mix", "rand_uuid", "unit"]

_M64: Final = (1 << 64) - 1
_GOLDEN: Final = 0x9E3779B97F4A7C15

#: Epoch 0 of the simulated world; epoch ``e`` is ``e`` days later.
BASE_TIME: Final = datetime(2025, 1, 6, 2, 0, 0, tzinfo=UTC)


def mix(*parts: int) -> int:
    """Hash integers into 64 well-mixed bits (splitmix64 finaliser per part)."""
    h = _GOLDEN
    for part in parts:
        z = ((h ^ (part & _M64)) + _GOLDEN) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        h = z ^ (z >> 31)
        # Fold in bits above 64 so huge ids stay distinct.
        rest = part >> 64
        while rest:
            h = mix(h, rest & _M64)
            rest >>= 64
    return h


def unit(*parts: int) -> float:
    """A deterministic float in ``[0, 1)``."""
    return (mix(*parts) >> 11) / float(1 << 53)


def rand_uuid(*parts: int) -> str:
    """A deterministic version-4-shaped UUID string."""
    value = (mix(*parts, 1) << 64) | mix(*parts, 2)
    return str(uuid.UUID(int=value, version=4))


def iso(moment: datetime) -> str:
    """Discovery-style timestamp: ``2025-01-06T02:00:00.123456Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_date(moment: datetime) -> str:
    """Calendar date, ``YYYY-MM-DD``."""
    return moment.strftime("%Y-%m-%d")


def days(n: float) -> timedelta:
    """Shorthand used by the generators."""
    return timedelta(days=n)
