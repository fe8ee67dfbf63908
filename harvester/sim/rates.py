"""DRF throttle rates: :class:`Rate` and :func:`parse_rate` (``"60/min"``, ``"20/s"``).

Pure parsing of the rate knobs' text (``rate_lms``, ``rate_learners``, ``tenant_rate_lms``);
no clock, no throttling (that is :mod:`.throttle`), no knowledge of :class:`~.config.SimConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = ["Rate", "parse_rate"]

# DRF reads only the first letter of the period ("60/minute" == "60/m"), so we do too.
_PERIODS: Final[dict[str, float]] = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class Rate:
    """A throttle budget: at most ``count`` requests in any ``window`` seconds."""

    count: int
    window: float


def parse_rate(text: str) -> Rate | None:
    """Parse a DRF-style rate such as ``"60/min"`` or ``"20/s"``.

    ``"0"``, ``"none"``, ``"off"`` and ``""`` switch throttling off and return ``None``.
    A number before the period letter scales the window (``"100/10s"``), which DRF itself
    does not allow but is handy for tests.

    Raises:
        ValueError: when the text is not a rate.
    """
    cleaned = text.strip().lower()
    if cleaned in {"", "0", "none", "off"}:
        return None
    num_text, sep, period_text = cleaned.partition("/")
    if not sep or not period_text:
        raise ValueError(f"rate must look like '60/min', got {text!r}")
    try:
        count = int(num_text)
    except ValueError:
        raise ValueError(f"rate count must be an integer, got {text!r}") from None
    if count < 0:
        raise ValueError(f"rate count must be >= 0, got {text!r}")
    if count == 0:
        return None
    digits = ""
    while period_text and (period_text[0].isdigit() or period_text[0] == "."):
        digits, period_text = digits + period_text[0], period_text[1:]
    if not period_text or period_text[0] not in _PERIODS:
        raise ValueError(f"rate period must start with one of s/m/h/d, got {text!r}")
    scale = float(digits) if digits else 1.0
    window = scale * _PERIODS[period_text[0]]
    if not math.isfinite(window) or window <= 0:
        raise ValueError(f"rate window must be positive, got {text!r}")
    return Rate(count=count, window=window)
