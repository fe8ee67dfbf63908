"""What a parsed command line means: its settings, its ``--tenant`` selection, and the
values of the flags that are not settings (``--max-age``, ``--as-of``, ``--deadline``).

Every flag error here is a :class:`~harvester.errors.ConfigError` (exit 2). Must not
print, set up logging, or start any run.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from harvester.config import Settings, load_settings, parse_duration
from harvester.deadline import TimeBudget, parse_time_budget, seconds_until
from harvester.errors import ConfigError

__all__ = ["as_of", "cli_layer", "only", "parse_max_age", "settings_of", "sync_options",
           "time_budget"]


def cli_layer(ns: argparse.Namespace) -> dict[str, object]:
    """The settings given as flags. An empty flag value is an error: it is almost always an
    unset shell variable, and taken as "not given" it would silently widen the run."""
    layer = {k: v for k, v in vars(ns).items() if "." in k and v is not None}
    for name, value in layer.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and not v.strip() for v in values):
            raise ConfigError(f"{name}: an empty value was given (an unset shell variable?)")
    return layer


def settings_of(ns: argparse.Namespace) -> Settings:
    """The command's settings: its flags over the environment over its ``--config`` file."""
    settings, _ = load_settings(cli=cli_layer(ns), environ=os.environ,
                                config_file=getattr(ns, "config", None))
    return settings


def only(ns: argparse.Namespace, settings: Settings) -> list[str]:
    """The ``--tenant`` names (empty: every tenant); an error without ``[[tenants]]``."""
    names: list[str] = ns.tenant_names or []
    if names and not settings.tenants:
        raise ConfigError("--tenant: the config file has no [[tenants]] tables")
    if any(not n.strip() for n in names):
        raise ConfigError("--tenant: an empty value was given (an unset shell variable?)")
    return names


def parse_max_age(text: str) -> float:
    """``--max-age``: ``7d``, ``36h``, ``90m``, ``3600s`` or plain seconds, as seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"--max-age: {exc}, got {text!r}") from None


def sync_options(ns: argparse.Namespace, settings: Settings) -> tuple[Path, float, int]:
    """``(store, max_age, keep)``: the flag, else ``[sync]`` in the config, else default."""
    store = ns.store or settings.sync.store
    if store is None:
        raise ConfigError("sync: no store given; pass --store DIR or set store under [sync] "
                          "in the config file")
    max_age = parse_max_age(ns.max_age) if ns.max_age is not None else settings.sync.max_age
    keep = ns.keep if ns.keep is not None else settings.sync.keep
    if keep < 1:
        raise ConfigError(f"--keep: must be >= 1, got {keep}")
    return Path(store), max_age, keep


def as_of(text: str | None) -> float | None:
    """``--as-of``: an ISO-8601 date or time (UTC unless it says otherwise) as a timestamp."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--as-of: expected an ISO-8601 date or time, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:  # 9999-12-31T23:59:59-14:00 is in year 10000 in UTC
        return when.astimezone(UTC).timestamp()
    except (ValueError, OverflowError):
        raise ConfigError(f"--as-of: {text!r} is out of range (years 1..9999 in UTC)"
                          ) from None


def time_budget(ns: argparse.Namespace, started: float) -> TimeBudget | None:
    """``--deadline`` / ``--time-budget`` as a deadline on the monotonic clock, counted
    from ``started`` (the command's start: start-up is part of the budget)."""
    if ns.deadline is not None:
        seconds = seconds_until(ns.deadline, datetime.now().astimezone())
    elif ns.time_budget is not None:
        seconds = parse_time_budget(ns.time_budget)
    else:
        return None
    return TimeBudget(started + seconds, time.monotonic)
