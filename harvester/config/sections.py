"""The settings themselves: one frozen, validated dataclass per section, and :class:`Settings`.

Every value is checked on construction (the error names the dotted setting and what is
allowed). Must not parse raw text (:mod:`~harvester.config.values` does), read files or
the environment (:mod:`~harvester.config.loader` does), or open sockets.
"""

from __future__ import annotations

import math
import re
import uuid as uuidlib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from yarl import URL

from harvester.config.tenants import TenantsConfig
from harvester.config.values import MAX_AGE_LIMIT, Rate, Secret
from harvester.errors import ConfigError

DEFAULT_API_BASE: Final = "https://api.edx.org"
#: Default cap on one response body, measured after decompression.
DEFAULT_MAX_RESPONSE_BYTES: Final = 32 << 20
TOKEN_PATH: Final = "/oauth2/v1/access_token"
#: Upper bound of every concurrency setting: far above what any budget can use (the
#: server's 60/min is the real limit), low enough that a typo cannot exhaust memory.
MAX_CONCURRENCY: Final = 1000


def _check_url(name: str, value: str) -> None:
    """An http(s) URL the client can use: parsed in full (host, brackets, port range)
    by both the standard library and yarl (which the client uses), here, before any
    file or request."""
    try:
        parts = urlsplit(value)
        port, host = parts.port, parts.hostname  # raise on a bad port or an unclosed [
        url = URL(value)
        raw_host = url.raw_host or ""
        ok = (url.port is not None and bool(host)
              and (":" in raw_host or re.fullmatch(r"[A-Za-z0-9._-]+", raw_host) is not None))
    except ValueError as exc:
        raise ConfigError(f"{name}: not a valid URL ({exc}), got {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc or not ok or port == 0:
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
    #: ``--metrics-file``'s default: a node_exporter textfile (checked when a run uses it)
    metrics_file: Path | None = None

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


#: ``--publish`` URL schemes, and the fsspec package (and our extra) each one needs.
PUBLISH_SCHEMES: Final[Mapping[str, tuple[str, str]]] = {
    "s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure"),
    "file": ("", ""),
}


@dataclass(frozen=True, slots=True)
class PublishConfig:
    """``[publish]``: where ``--publish`` uploads finished output (empty: nowhere).

    ``storage_options`` go to the fsspec filesystem as they are (``endpoint_url``,
    ``profile``...); they may hold keys, so they never reach a repr or a manifest.
    """

    url: str = ""
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        url = self.url.strip()
        if "://" in url:  # a trailing slash is dropped from the path, never from "s3://"
            scheme, rest = url.split("://", 1)
            url = f"{scheme}://{rest.rstrip('/') or rest}"
        object.__setattr__(self, "url", url)
        if not self.url:
            return
        parts = urlsplit(self.url)
        if "://" not in self.url or parts.scheme not in PUBLISH_SCHEMES:
            raise ConfigError(f"--publish {self.url}: unknown URL scheme "
                              f"{parts.scheme + '://' if '://' in self.url else '(none)'}; "
                              "use s3://bucket/prefix, gs://, az:// or file:///path")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ConfigError(f"--publish {parts.scheme}://{parts.hostname or ''}...: "
                              "credentials, queries and fragments do not belong in the URL "
                              "(credentials come from the provider chain or "
                              "publish.storage_options)")
        if parts.scheme != "file" and not parts.netloc:
            raise ConfigError(f"--publish {self.url}: no bucket in the URL "
                              f"(expected {parts.scheme}://bucket/prefix)")
        if parts.scheme == "file" and (parts.netloc or not parts.path.startswith("/")):
            raise ConfigError(f"--publish {self.url}: a file URL needs an absolute path "
                              "(file:///data/edx-published)")


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
    publish: PublishConfig = field(default_factory=PublishConfig)
    #: ``[[tenants]]``: empty means one implicit tenant (``EDX_CLIENT_ID``/``_SECRET``).
    tenants: TenantsConfig = field(default_factory=TenantsConfig)

    @classmethod
    def load(cls, config_file: Path | str | None = None, *,
             environ: Mapping[str, str] | None = None,
             overrides: Mapping[str, object] | None = None) -> Settings:
        """Settings as the command line builds them: ``overrides`` (dotted names, as in
        the config file: ``{"rates.lms": "30/min"}``) beat the environment (``EDX_*``;
        ``os.environ`` unless given), which beats ``config_file``, which beats defaults.
        Invalid values raise :class:`~harvester.errors.ConfigError`, one line each."""
        import os

        # The loader builds these dataclasses, so it imports this module; importing it
        # back only when called keeps the module graph one-way.
        from harvester.config.loader import load_settings

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
