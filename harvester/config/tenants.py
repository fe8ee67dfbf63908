"""``[[tenants]]``: many credentials in one config file, and ``--shard auto/N``.

A tenant names where its credential comes from (an environment variable or a mounted
secret file), never the credential itself: a literal ``client_secret`` in the file is an
error. Reading those variables and files is :mod:`harvester.tenants`' job; here the
tables are only checked (names, keys, one source per credential half, rates). Must not
read the environment (except :func:`resolve_shard`'s one variable) or any file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from harvester.config.values import Rate, parse_rate, parse_str, parse_str_tuple
from harvester.errors import ConfigError

#: A tenant's name: it becomes a directory (``tenant=<name>``) and a log field.
TENANT_NAME: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62})")
#: The keys a ``[[tenants]]`` table may hold.
TENANT_KEYS: Final = ("name", "client_id_env", "client_id_file", "client_secret_env",
                      "client_secret_file", "catalogs", "rate_lms", "enterprises")
#: Where a Kubernetes Indexed Job puts the pod's index.
JOB_INDEX_ENV: Final = "JOB_COMPLETION_INDEX"


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """One ``[[tenants]]`` table, checked: where its credential comes from, and its
    optional catalog filter, LMS budget and learner-summary enterprises."""

    name: str
    client_id_env: str | None = None
    client_id_file: Path | None = None
    client_secret_env: str | None = None
    client_secret_file: Path | None = None
    catalogs: tuple[str, ...] = ()
    rate_lms: Rate | None = None
    enterprises: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TenantsConfig:
    """Every ``[[tenants]]`` table (``tenants.entries`` in the schema); empty means one
    implicit tenant. Iterates, and is true, like the tuple of its entries."""

    entries: tuple[TenantSpec, ...] = ()

    def __iter__(self) -> Iterator[TenantSpec]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)


def _source(where: str, table: Mapping[str, object], half: str
            ) -> tuple[str | None, Path | None]:
    env, file = table.get(f"{half}_env"), table.get(f"{half}_file")
    if (env is None) == (file is None):
        raise ConfigError(f"{where}: set exactly one of {half}_env (an environment "
                          f"variable's name) or {half}_file (a mounted secret file)")
    try:
        if env is not None:
            name = parse_str(env)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                # Not echoed: a value that is not a name is often the secret itself.
                raise ValueError(f"{half}_env must be an environment variable's name "
                                 "(the value given is not one; not shown)")
            return name, None
        text = parse_str(file)
        if not text.strip():
            raise ValueError(f"{half}_file is empty")
        return None, Path(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_tenant(index: int, table: object) -> TenantSpec:
    """One ``[[tenants]]`` table (``index`` names it until its name is known)."""
    where = f"tenants[{index}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a [[tenants]] table")
    name = table.get("name")
    if not isinstance(name, str) or not TENANT_NAME.fullmatch(name):
        raise ConfigError(f"{where}: name must be 1-63 of [a-z0-9-], starting with a letter "
                          f"or digit, got {name!r}")
    where = f"tenant {name!r}"
    for literal in ("client_secret", "client_id"):
        if literal in table:
            raise ConfigError(f"{where}: a literal {literal} is not allowed in the config "
                              f"file; use {literal}_env or {literal}_file")
    unknown = sorted(set(table) - set(TENANT_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid: "
                          f"{', '.join(TENANT_KEYS)}")
    id_env, id_file = _source(where, table, "client_id")
    secret_env, secret_file = _source(where, table, "client_secret")
    try:
        catalogs = parse_str_tuple(table.get("catalogs", []))
        enterprises = parse_str_tuple(table.get("enterprises", []))
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        rate = parse_rate(table["rate_lms"]) if "rate_lms" in table else None
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"tenants[{name}].rate_lms: {exc}") from None
    return TenantSpec(name, id_env, id_file, secret_env, secret_file, catalogs, rate,
                      enterprises)


def parse_tenants(raw: object) -> tuple[TenantSpec, ...]:
    """Every ``[[tenants]]`` table, checked; names are unique."""
    if not isinstance(raw, list | tuple):
        raise ConfigError("tenants: expected [[tenants]] tables")
    specs = tuple(raw_spec if isinstance(raw_spec, TenantSpec) else parse_tenant(i, raw_spec)
                  for i, raw_spec in enumerate(raw))
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"tenant {spec.name!r}: the name is used twice; tenant names "
                              "must be unique")
        seen.add(spec.name)
    return specs


def resolve_shard(raw: object, environ: Mapping[str, str]) -> object:
    """``auto/N`` becomes ``I/N`` with I from ``JOB_COMPLETION_INDEX`` (a Kubernetes
    Indexed Job's pod index); anything else is returned as given."""
    if not isinstance(raw, str) or not raw.strip().startswith("auto/"):
        return raw
    total = raw.strip().removeprefix("auto/")
    index = environ.get(JOB_INDEX_ENV, "")
    if not index.strip():
        raise ConfigError(f"harvest.shard: {raw!r} needs {JOB_INDEX_ENV} in the environment "
                          "(set by a Kubernetes Indexed Job); it is not set")
    if not index.strip().isdigit():
        raise ConfigError(f"harvest.shard: {JOB_INDEX_ENV} must be a whole number, got "
                          f"{index!r}")
    if total.isdigit() and int(index) >= int(total):
        raise ConfigError(f"harvest.shard: {JOB_INDEX_ENV}={index} is not below N in {raw!r} "
                          "(the Job's completions and N must match)")
    return f"{int(index)}/{total}"
