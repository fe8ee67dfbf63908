"""Configuration: frozen dataclasses validated on construction, and one loader.

Precedence is CLI > environment > config file > defaults. Every setting has a dotted
name (``rates.lms``) used in the TOML file, in error messages and in the manifest.
Credentials come from the environment or the file only, never from a flag, so they
cannot land in shell history. Secrets are wrapped in :class:`Secret`, whose ``repr``
and ``str`` are masked.

One schema (:data:`SCHEMA`) covers every section, the ``[learners]`` and ``[sync]``
sections that one command applies included, so a typo or a bad value in any section is
an error whichever command reads the file. Must not open sockets, create sessions or
read files other than the config file.
"""

from __future__ import annotations

import math
import re
import tomllib
import uuid as uuidlib
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from harvester.errors import ConfigError

DEFAULT_API_BASE: Final = "https://api.edx.org"
#: Default cap on one response body, measured after decompression.
DEFAULT_MAX_RESPONSE_BYTES: Final = 32 << 20
TOKEN_PATH: Final = "/oauth2/v1/access_token"
#: Upper bound of every concurrency setting: far above what any budget can use (the
#: server's 60/min is the real limit), low enough that a typo cannot exhaust memory.
MAX_CONCURRENCY: Final = 1000
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


def _check_url(name: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}: expected an http(s) URL such as {DEFAULT_API_BASE}, "
                          f"got {value!r}")
    if parts.username or parts.password:
        raise ConfigError(f"{name}: credentials in the URL are not allowed; "
                          "use EDX_CLIENT_ID / EDX_CLIENT_SECRET")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or not math.isfinite(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}: must be {bound}, got {value!r}")


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Where the API is and how to authenticate."""

    base: str = DEFAULT_API_BASE
    token_url: str = ""
    client_id: str = ""
    client_secret: Secret = field(default_factory=lambda: Secret(""))
    connect_timeout: float = 10.0
    read_timeout: float = 35.0
    #: Total seconds one attempt may take, connect to last body byte: a body dripped a
    #: byte at a time never trips ``read_timeout``, this does.
    request_timeout: float = 60.0
    #: Largest body accepted, counted after decompression (a gzip bomb stops here).
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", self.base.rstrip("/"))
        _check_url("api.base", self.base)
        if not self.token_url:
            object.__setattr__(self, "token_url", self.base + TOKEN_PATH)
        _check_url("api.token_url", self.token_url)
        _positive("api.connect_timeout", self.connect_timeout)
        _positive("api.read_timeout", self.read_timeout)
        _positive("api.request_timeout", self.request_timeout)
        if not 1024 <= self.max_response_bytes <= 1 << 40:
            raise ConfigError(f"api.max_response_bytes: must be 1024..2**40 bytes, "
                              f"got {self.max_response_bytes!r}")

    def require_credentials(self) -> None:
        """Raise a ConfigError unless both client id and secret are set."""
        missing = [n for n, v in (("EDX_CLIENT_ID", self.client_id),
                                  ("EDX_CLIENT_SECRET", self.client_secret)) if not v]
        if missing:
            raise ConfigError(f"missing credentials: set {' and '.join(missing)} in the "
                              "environment (or api.client_id / api.client_secret in the config)")


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """The three throttles: rate per endpoint class, concurrency, and page fan-out."""

    lms: Rate = field(default_factory=lambda: Rate(60, 60))
    learners: Rate = field(default_factory=lambda: Rate(60, 60))
    concurrency: int = 8
    page_concurrency: int = 4
    catalog_concurrency: int = 2

    def __post_init__(self) -> None:
        for name in ("concurrency", "page_concurrency", "catalog_concurrency"):
            value = getattr(self, name)
            if not 1 <= value <= MAX_CONCURRENCY:
                raise ConfigError(f"harvest.{name}: must be 1..{MAX_CONCURRENCY}, "
                                  f"got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Numbers for the retry policy (see ``policy.RetryPolicy``)."""

    max_tries: int = 8
    max_time: float = 900.0
    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    gateway_400_retries: int = 2
    max_wait: float = 300.0
    #: Retry budget, seconds, for a host that has never answered (wrong base, DNS, TLS).
    first_contact_time: float = 60.0

    def __post_init__(self) -> None:
        # The back-off doubles per attempt: 2.0 ** 1024 overflows a float.
        if not 1 <= self.max_tries <= 1000:
            raise ConfigError(f"retry.max_tries: must be 1..1000, got {self.max_tries!r}")
        _positive("retry.first_contact_time", self.first_contact_time)
        _positive("retry.max_time", self.max_time)
        _positive("retry.backoff_base", self.backoff_base, allow_zero=True)
        _positive("retry.backoff_cap", self.backoff_cap, allow_zero=True)
        _positive("retry.gateway_400_retries", self.gateway_400_retries, allow_zero=True)
        _positive("retry.max_wait", self.max_wait, allow_zero=True)


@dataclass(frozen=True, slots=True)
class HarvestOptions:
    """What to harvest and how."""

    catalogs: tuple[str, ...] = ()
    page_size: int = 250
    details: bool = True
    #: extra walks while each still finds items (content pages cost no budget)
    max_rewalks: int = 25
    detail_404_retries: int = 2
    shard: str = ""  #: "I/N": only catalogs whose stable hash mod N is I ("" = all)

    def in_shard(self, catalog_uuid: str) -> bool:
        """Whether this run's shard owns a catalog (crc32 of its id, mod N)."""
        if not self.shard:
            return True
        index, total = (int(x) for x in self.shard.split("/"))
        return zlib.crc32(catalog_uuid.encode()) % total == index

    def __post_init__(self) -> None:
        if self.shard:
            m = re.fullmatch(r"(\d+)/(\d+)", self.shard.strip())
            if not m or not int(m.group(2)) >= 1 or not int(m.group(1)) < int(m.group(2)):
                raise ConfigError(f"harvest.shard: expected I/N with 0 <= I < N, e.g. 0/4, "
                                  f"got {self.shard!r}")
        if not 1 <= self.page_size <= 10_000:
            raise ConfigError(f"harvest.page_size: must be 1..10000, got {self.page_size!r}")
        _positive("harvest.max_rewalks", self.max_rewalks, allow_zero=True)
        _positive("harvest.detail_404_retries", self.detail_404_retries, allow_zero=True)


@dataclass(frozen=True, slots=True)
class OutputOptions:
    """Where and how output and logs go."""

    out: Path = Path("out")
    gzip: bool = False
    quiet: bool = False
    log_format: str = "text"
    progress: str = "auto"

    def __post_init__(self) -> None:
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"output.log_format: must be 'text' or 'json', "
                              f"got {self.log_format!r}")
        if self.progress not in ("auto", "on", "off"):
            raise ConfigError(f"output.progress: must be 'auto', 'on' or 'off', "
                              f"got {self.progress!r}")


class PiiMode(StrEnum):
    """What ``harvester learners`` does with personal-data fields."""

    KEEP = "keep"
    HASH = "hash"
    DROP = "drop"


def _enterprise_uuid(value: str) -> str:
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise ConfigError(f"learners.enterprises: {value!r} is not an enterprise customer "
                          "UUID") from None


@dataclass(frozen=True, slots=True)
class LearnersConfig:
    """``[learners]``: what ``harvester learners`` exports and how.

    Enterprise ids are canonicalised (and deduplicated) here; that at least one is
    given is checked by the command (``learners.LearnerOptions``), since every other
    command reads this section too.
    """

    enterprises: tuple[str, ...] = ()
    pii: PiiMode = PiiMode.KEEP
    csv: bool = False
    consented_only: bool = False
    max_rewalks: int = 2

    def __post_init__(self) -> None:
        canonical = tuple(dict.fromkeys(_enterprise_uuid(e) for e in self.enterprises))
        object.__setattr__(self, "enterprises", canonical)
        try:
            object.__setattr__(self, "pii", PiiMode(self.pii))
        except ValueError:
            raise ConfigError(f"learners.pii: must be keep, hash or drop, got {self.pii!r}"
                              ) from None
        if self.max_rewalks < 0:
            raise ConfigError(f"learners.max_rewalks: must be >= 0, got {self.max_rewalks!r}")


#: ``sync --max-age`` when neither the flag nor ``[sync] max_age`` gives one: a week.
DEFAULT_MAX_AGE: Final = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """``[sync]``: the store and refresh defaults of ``harvester sync`` (flags win)."""

    store: Path | None = None
    max_age: float = DEFAULT_MAX_AGE
    keep: int = 7

    def __post_init__(self) -> None:
        if not 0 < self.max_age <= MAX_AGE_LIMIT:  # also false for nan
            raise ConfigError(f"sync.max_age: must be above 0 and at most 36500d, "
                              f"got {self.max_age!r}")
        if self.keep < 1:
            raise ConfigError(f"sync.keep: must be >= 1, got {self.keep!r}")


#: The sections of a run's own settings, as recorded in a harvest's manifest.
RUN_SECTIONS: Final = ("api", "limits", "retry", "harvest", "output")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a run needs, validated."""

    api: ApiConfig = field(default_factory=ApiConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    harvest: HarvestOptions = field(default_factory=HarvestOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    learners: LearnersConfig = field(default_factory=LearnersConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)

    @classmethod
    def load(cls, config_file: Path | str | None = None, *,
             environ: Mapping[str, str] | None = None,
             overrides: Mapping[str, object] | None = None) -> Settings:
        """Settings as the command line builds them: ``overrides`` (dotted names, as in
        the config file: ``{"rates.lms": "30/min"}``) beat the environment (``EDX_*``;
        ``os.environ`` unless given), which beats ``config_file``, which beats defaults.
        Invalid values raise :class:`~harvester.errors.ConfigError`, one line each."""
        import os

        return load_settings(cli=dict(overrides or {}),
                             environ=os.environ if environ is None else environ,
                             config_file=None if config_file is None else Path(config_file))[0]

    def public_dict(self) -> dict[str, Any]:
        """The run's settings as plain data for the manifest: secrets removed."""
        out: dict[str, Any] = {}
        for section in fields(self):
            if section.name not in RUN_SECTIONS:
                continue
            part = getattr(self, section.name)
            data: dict[str, Any] = {}
            for f in fields(part):
                value = getattr(part, f.name)
                if isinstance(value, Secret):
                    continue
                if isinstance(value, Rate | Path):
                    value = str(value)
                elif isinstance(value, tuple):
                    value = list(value)
                data[f.name] = value
            out[section.name] = data
        return out


# --- loading -----------------------------------------------------------------------------
# Parsers of raw config values (TOML, environment or flag text); each raises ValueError
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


def parse_path(v: object) -> Path:
    """A path; an empty one is an error (it would silently mean the current directory)."""
    text = parse_str(v)
    if not text.strip():
        raise ValueError("expected a path, got an empty value (an unset shell variable?)")
    return Path(text)


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
SCHEMA: Final[dict[str, tuple[str, str, Callable[[object], Any]]]] = {
    "api.base": ("api", "base", parse_str),
    "api.token_url": ("api", "token_url", parse_str),
    "api.client_id": ("api", "client_id", parse_str),
    "api.client_secret": ("api", "client_secret", lambda v: Secret(parse_str(v))),
    "api.connect_timeout": ("api", "connect_timeout", parse_float),
    "api.read_timeout": ("api", "read_timeout", parse_float),
    "api.request_timeout": ("api", "request_timeout", parse_float),
    "api.max_response_bytes": ("api", "max_response_bytes", parse_int),
    "rates.lms": ("limits", "lms", parse_rate),
    "rates.learners": ("limits", "learners", parse_rate),
    "harvest.concurrency": ("limits", "concurrency", parse_int),
    "harvest.page_concurrency": ("limits", "page_concurrency", parse_int),
    "harvest.catalog_concurrency": ("limits", "catalog_concurrency", parse_int),
    "harvest.catalogs": ("harvest", "catalogs", parse_str_tuple),
    "harvest.shard": ("harvest", "shard", parse_str),
    "harvest.page_size": ("harvest", "page_size", parse_int),
    "harvest.details": ("harvest", "details", parse_bool),
    "harvest.max_rewalks": ("harvest", "max_rewalks", parse_int),
    "harvest.detail_404_retries": ("harvest", "detail_404_retries", parse_int),
    "retry.max_tries": ("retry", "max_tries", parse_int),
    "retry.max_time": ("retry", "max_time", parse_float),
    "retry.backoff_base": ("retry", "backoff_base", parse_float),
    "retry.backoff_cap": ("retry", "backoff_cap", parse_float),
    "retry.gateway_400_retries": ("retry", "gateway_400_retries", parse_int),
    "retry.max_wait": ("retry", "max_wait", parse_float),
    "retry.first_contact_time": ("retry", "first_contact_time", parse_float),
    "output.out": ("output", "out", parse_path),
    "output.gzip": ("output", "gzip", parse_bool),
    "output.quiet": ("output", "quiet", parse_bool),
    "output.log_format": ("output", "log_format", parse_str),
    "output.progress": ("output", "progress", parse_str),
    "learners.enterprises": ("learners", "enterprises", parse_str_tuple),
    "learners.pii": ("learners", "pii", parse_str),
    "learners.csv": ("learners", "csv", parse_bool),
    "learners.consented_only": ("learners", "consented_only", parse_bool),
    "learners.max_rewalks": ("learners", "max_rewalks", parse_int),
    "sync.store": ("sync", "store", parse_path),
    "sync.max_age": ("sync", "max_age", parse_duration),
    "sync.keep": ("sync", "keep", parse_keep),
}

#: Environment variables and the settings they feed.
ENV: Final[dict[str, str]] = {
    "EDX_CLIENT_ID": "api.client_id",
    "EDX_CLIENT_SECRET": "api.client_secret",
    "EDX_API_BASE": "api.base",
    "EDX_TOKEN_URL": "api.token_url",
}

def read_config_file(path: Path) -> dict[str, object]:
    """Read a TOML config file into ``{"section.key": value}``; unknown keys are errors."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    known = list(SCHEMA)
    sections = sorted(dict.fromkeys(k.split(".")[0] for k in known))
    flat: dict[str, object] = {}
    for section, body in data.items():
        if section not in sections:
            raise ConfigError(f"{path}: unknown section [{section}]; sections are "
                              f"{', '.join(sections)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: top-level key {section!r} must be a [{section}] "
                              "section")
        for key, value in body.items():
            name = f"{section}.{key}"
            if name not in known:
                valid = ", ".join(k for k in known if k.startswith(section + "."))
                raise ConfigError(f"{path}: unknown setting {name!r}; valid: {valid}")
            flat[name] = value
    return flat


def _parse_setting(name: str, parse: Callable[[object], Any], raw: object) -> Any:
    try:
        return parse(raw)
    except (ValueError, TypeError, ConfigError) as exc:  # ConfigError: e.g. Rate's checks
        shown = "***" if name.endswith("client_secret") else repr(raw)
        raise ConfigError(f"{name}: {exc} (got {shown})") from None


def build_settings(*layers: Mapping[str, object]) -> Settings:
    """Merge layers (lowest precedence first) of ``{"section.key": raw}`` into Settings."""
    merged: dict[str, object] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if v is not None})
    sections: dict[str, dict[str, Any]] = {f.name: {} for f in fields(Settings)}
    for name, raw in merged.items():
        section, attr, parse = _spec(name)
        sections[section][attr] = _parse_setting(name, parse, raw)
    return Settings(**{f.name: _SECTION_TYPES[f.name](**sections[f.name])
                       for f in fields(Settings)})


def parse_section(section: str, *layers: Mapping[str, object]) -> dict[str, Any]:
    """The ``section.*`` values of ``layers`` (lowest precedence first), parsed, by
    attribute; other sections' keys are ignored, an unknown key of this one is an error."""
    values: dict[str, Any] = {}
    for layer in layers:
        for name, raw in layer.items():
            if name.startswith(section + ".") and raw is not None:
                _, attr, parse = _spec(name)
                values[attr] = _parse_setting(name, parse, raw)
    return values


def _spec(name: str) -> tuple[str, str, Callable[[object], Any]]:
    spec = SCHEMA.get(name)
    if spec is None:
        section = name.split(".")[0]
        raise ConfigError(f"unknown setting {name!r}; valid: "
                          f"{', '.join(k for k in SCHEMA if k.startswith(section + '.'))}")
    return spec


_SECTION_TYPES: Final[dict[str, Callable[..., Any]]] = {
    "api": ApiConfig, "limits": LimitsConfig, "retry": RetryConfig,
    "harvest": HarvestOptions, "output": OutputOptions, "learners": LearnersConfig,
    "sync": SyncConfig,
}


def env_layer(environ: Mapping[str, str]) -> dict[str, object]:
    """The settings the environment provides (empty values are ignored)."""
    return {name: environ[var] for var, name in ENV.items() if environ.get(var)}


def load_settings(
    *,
    cli: Mapping[str, object],
    environ: Mapping[str, str],
    config_file: Path | None,
) -> tuple[Settings, dict[str, object]]:
    """Load settings with precedence CLI > env > file > defaults.

    Returns the settings and the raw file layer.
    """
    file_layer = read_config_file(config_file) if config_file else {}
    return build_settings(file_layer, env_layer(environ), cli), file_layer
