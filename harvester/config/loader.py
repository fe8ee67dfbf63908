"""Loading settings: the one schema of dotted names, the config file, the environment.

:data:`SCHEMA` is the single source of valid keys for the file, the environment and the
flags of every command (``[learners]`` and ``[sync]`` included). Precedence is CLI >
environment > config file > defaults. Must not open sockets or read any file but the
config file.
"""

from __future__ import annotations

import errno
import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, Final

from harvester.config.sections import (
    ApiConfig,
    HarvestOptions,
    LearnersConfig,
    LimitsConfig,
    OutputOptions,
    PublishConfig,
    RetryConfig,
    Settings,
    SyncConfig,
)
from harvester.config.tenants import TenantsConfig, parse_tenants, resolve_shard
from harvester.config.values import (
    Secret,
    parse_bool,
    parse_duration,
    parse_file_path,
    parse_float,
    parse_int,
    parse_keep,
    parse_options,
    parse_path,
    parse_rate,
    parse_str,
    parse_str_tuple,
)
from harvester.errors import ConfigError

#: Largest config file read: far above any real config, small enough to refuse a
#: mistaken path to a log or a disk image at once.
CONFIG_MAX_BYTES: Final = 16 * 1024 * 1024

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
    "output.metrics_file": ("output", "metrics_file", parse_file_path),
    "learners.enterprises": ("learners", "enterprises", parse_str_tuple),
    "learners.pii": ("learners", "pii", parse_str),
    "learners.csv": ("learners", "csv", parse_bool),
    "learners.consented_only": ("learners", "consented_only", parse_bool),
    "learners.max_rewalks": ("learners", "max_rewalks", parse_int),
    "sync.store": ("sync", "store", parse_path),
    "sync.max_age": ("sync", "max_age", parse_duration),
    "sync.keep": ("sync", "keep", parse_keep),
    "publish.url": ("publish", "url", parse_str),
    "publish.storage_options": ("publish", "storage_options", parse_options),
    # [[tenants]] tables (the file's array of tables lands here; see read_config_file)
    "tenants.entries": ("tenants", "entries", parse_tenants),
}

#: Environment variables and the settings they feed.
ENV: Final[dict[str, str]] = {
    "EDX_CLIENT_ID": "api.client_id",
    "EDX_CLIENT_SECRET": "api.client_secret",
    "EDX_API_BASE": "api.base",
    "EDX_TOKEN_URL": "api.token_url",
    "HARVESTER_PUBLISH_URL": "publish.url",
    "HARVESTER_PUBLISH_STORAGE_OPTIONS": "publish.storage_options",
}

def read_regular(path: Path, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of the regular file ``path``. Links are followed (mounted
    Kubernetes secrets are links into ``..data/``), but anything else (a FIFO, a device, a
    directory) is an ``OSError`` before any read: a FIFO with no writer would block the
    open (hence ``O_NONBLOCK``) or the read forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_config_file(path: Path) -> dict[str, object]:
    """Read a TOML config file into ``{"section.key": value}``; unknown keys are errors."""
    try:
        raw = read_regular(path, CONFIG_MAX_BYTES)
        if len(raw) > CONFIG_MAX_BYTES:
            raise ConfigError(f"config file {path} is over 16 MiB; not a config")
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is not a config: its values are nested too "
                          "deeply") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    known = list(SCHEMA)
    sections = sorted(dict.fromkeys(k.split(".")[0] for k in known))
    flat: dict[str, object] = {}
    for section, body in data.items():
        if section == "tenants":  # [[tenants]]: a list of tables, checked by parse_tenants
            if not isinstance(body, list):
                raise ConfigError(f"{path}: tenants must be [[tenants]] tables (one per "
                                  "tenant), not a [tenants] section")
            flat["tenants.entries"] = body
            continue
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
        if name == "tenants.entries":  # its errors name the tenant; raw may hold secrets
            raise ConfigError(str(exc)) from None
        shown = "***" if name.endswith(("client_secret", "storage_options")) else repr(raw)
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
    "sync": SyncConfig, "publish": PublishConfig, "tenants": TenantsConfig,
}


def env_layer(environ: Mapping[str, str]) -> dict[str, object]:
    """The settings the environment provides. A variable that is set but empty (or
    blank) is an error, like an empty flag: ``EDX_API_BASE=`` must not mean production."""
    for var in ENV:
        if var in environ and not environ[var].strip():
            raise ConfigError(f"{var} is set but empty (an unset shell variable?); unset it "
                              "or give it a value")
    return {name: environ[var] for var, name in ENV.items() if var in environ}


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
    env = env_layer(environ)
    # Every layer is checked on its own: a bad value in the file stays an error when a
    # flag or the environment overrides it (it would break the next run without them).
    for where, layer in ((f"config file {config_file}", file_layer), ("environment", env)):
        try:
            build_settings(layer)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in the {where})") from None
    layers = [file_layer, env, cli]
    shard = next((lay["harvest.shard"] for lay in reversed(layers)
                  if lay.get("harvest.shard") is not None), None)
    if shard is not None:  # --shard auto/N: the index comes from the scheduler
        layers.append({"harvest.shard": resolve_shard(shard, environ)})
    return build_settings(*layers), file_layer
