"""Config value types and the parsers of raw values (TOML, environment or flag text).

Owns :class:`Secret` (masked in ``repr``/``str``), :class:`Rate` and the ``parse_*``
functions; each parser raises ``ValueError`` saying what was expected, which the loader
prefixes with the setting's name. Must not know sections, files or the environment.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from harvester.errors import ConfigError

#: Longest ``sync --max-age``: a century (beyond it, "never refresh" in practice).
MAX_AGE_LIMIT: Final = 100 * 365 * 86400.0


class Secret:
    """A string that never shows itself in ``repr``, ``str``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that must send it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


_NUM: Final = r"(\d+(?:\.\d*)?|\.\d+)"
_RATE_RE = re.compile(rf"^\s*{_NUM}\s*/\s*{_NUM}?\s*(s|sec|second|m|min|minute|h|hour)s?\s*$")
_UNITS: Final = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
                 "h": 3600.0, "hour": 3600.0}


def _plain(x: float) -> str:
    """A number as ``Rate.parse`` reads it back: no exponent, no trailing zeros."""
    return str(int(x)) if x.is_integer() else f"{x:.9f}".rstrip("0").rstrip(".")


@dataclass(frozen=True, slots=True)
class Rate:
    """A request budget: at most ``count`` requests in any ``period`` seconds."""

    count: float
    period: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "count", float(self.count))
        object.__setattr__(self, "period", float(self.period))
        if not (self.count > 0 and math.isfinite(self.count)):
            raise ConfigError(f"rate count must be a positive number, got {self.count!r}")
        if not (self.period > 0 and math.isfinite(self.period)):
            raise ConfigError(f"rate period must be positive seconds, got {self.period!r}")

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``N/min``, ``N/s``, ``N/h`` or ``N/<k><unit>`` (``60/min`` is DRF's
        ``60/minute``). N may be fractional, as a shard's share of a budget often is:
        ``0.5/s``, ``7.5/min``, ``1/2s`` (see ``policy.RateGate`` for how it is kept)."""
        m = _RATE_RE.match(text)
        if not m:
            raise ValueError("expected N/min, N/s, N/h or N/<k>s, e.g. 60/min, 0.5/s, 1/2s")
        count, scale = float(m.group(1)), float(m.group(2) or 1)
        period = scale * _UNITS[m.group(3)]
        if not (count > 0 and math.isfinite(count)):
            raise ValueError("the count must be a positive number")
        if not (period > 0 and math.isfinite(period)):
            raise ValueError("the period must be a positive number of seconds")
        return cls(count, period)

    @property
    def per_second(self) -> float:
        """Long-run requests per second this budget allows."""
        return self.count / self.period

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.period)
        count = _plain(self.count)
        return f"{count}/{unit}" if unit else f"{count}/{_plain(self.period)}s"


# with what was expected, which the loader prefixes with the setting's name.

def parse_bool(v: object) -> bool:
    """true/false, or their common spellings in text."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(v, str) and v.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_int(v: object) -> int:
    """An integer (text of digits accepted; booleans are not integers)."""
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
        return int(v)
    raise ValueError("expected an integer")


def parse_float(v: object) -> float:
    """A number."""
    if isinstance(v, bool):
        raise ValueError("expected a number")
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        return float(v)
    raise ValueError("expected a number")


def parse_str(v: object) -> str:
    """A string, as is."""
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def parse_options(v: object) -> dict[str, Any]:
    """A table of options: a TOML table, or a JSON object (from the environment)."""
    if isinstance(v, str):
        try:
            v = orjson.loads(v)
        except orjson.JSONDecodeError:
            raise ValueError("expected a JSON object") from None
    if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
        raise ValueError("expected a table (a JSON object from the environment)")
    return dict(v)


def parse_rate(v: object) -> Rate:
    """A rate such as ``60/min`` (see :meth:`Rate.parse`)."""
    if isinstance(v, Rate):
        return v
    return Rate.parse(parse_str(v))


def parse_str_tuple(v: object) -> tuple[str, ...]:
    """A list of strings, or a comma-separated string; repeats dropped.

    An empty entry is an error, not "no filter": ``--catalog "$UNSET"`` must not widen a
    run to everything.
    """
    if isinstance(v, str):
        items = [p.strip() for p in v.split(",")]
    elif isinstance(v, list | tuple) and all(isinstance(i, str) for i in v):
        items = [i.strip() for i in v]
    else:
        raise ValueError("expected a list of strings")
    if not all(items):
        raise ValueError("an entry is empty (an unset shell variable?)")
    return tuple(dict.fromkeys(items))  # keep order, drop repeats


#: Longest name of one path component, in bytes (Linux, macOS and Windows filesystems).
NAME_MAX: Final = 255


def parse_path(v: object) -> Path:
    """A path; an empty one is an error (it would silently mean the current directory), so
    is one no filesystem could hold (a NUL, a name over :data:`NAME_MAX` bytes)."""
    text = parse_str(v)
    if not text.strip():
        raise ValueError("expected a path, got an empty value (an unset shell variable?)")
    if "\0" in text:
        raise ValueError("a path cannot contain a NUL character")
    path = Path(text)
    if any(len(os.fsencode(part)) > NAME_MAX for part in path.parts):
        raise ValueError(f"a file or directory name in this path is longer than {NAME_MAX} "
                         "bytes")
    return path


def parse_file_path(v: object) -> Path:
    """A path naming a file: :func:`parse_path`, and no trailing slash (``x.prom/`` names
    a directory, which ``Path`` would silently drop)."""
    text = parse_str(v)
    if text.endswith(("/", os.sep)):
        raise ValueError(f"{text!r} ends with a slash; name a file, not a directory")
    return parse_path(text)


_DURATION_RE: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([smhdw]?)\s*")
_DURATION_UNITS: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
                          "w": 604800.0}


def parse_duration(v: object) -> float:
    """``7d``, ``36h``, ``90m``, ``3600s`` or plain seconds: positive, at most a century."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        seconds = float(v)
    else:
        m = _DURATION_RE.fullmatch(parse_str(v).lower())
        if not m:
            raise ValueError("expected a duration such as 7d or 36h")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not 0 < seconds <= MAX_AGE_LIMIT:  # also false for nan and inf
        raise ValueError("expected a duration above 0 and at most 36500d")
    return seconds


def parse_keep(v: object) -> int:
    """How many finished snapshots a sync store keeps: at least 1."""
    n = parse_int(v)
    if n < 1:
        raise ValueError("must be >= 1")
    return n


#: dotted name -> (section of :class:`Settings`, attribute, parser). The single source of
#: valid keys, for the file, the environment and the flags of every command.
