"""Many tenants in one process: who runs, with which credential, into which directory.

A tenant is one ``[[tenants]]`` table made concrete: its credential read from the
environment variable or mounted secret file it names, and its own :class:`Settings`
(credential, LMS budget, catalog filter, ``OUT/tenant=<name>``). The single-tenant
pipeline runs unchanged on those settings, so each tenant has its own token manager,
rate gates, lock, ledger and manifest. :func:`select_tenants` applies ``--tenant`` and
``--shard`` (over tenants, by a stable hash of the name), then reads only the selected
tenants' secrets: a shard's pod needs only its own tenants' secrets mounted. Every
problem is one :class:`~harvester.errors.ConfigError` line naming the tenant, before
any request. Running them is :mod:`harvester.pipeline.tenants`' job; here nothing runs.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from harvester.config import Secret, Settings, TenantsConfig, TenantSpec
from harvester.config.loader import read_regular
from harvester.errors import ConfigError, StateError
from harvester.run import EXIT_OK, EXIT_PARTIAL, EXIT_UNEXPECTED, EXIT_USAGE
from harvester.state import STATE_DIR

__all__ = ["Tenant", "in_shard", "select_tenants", "tenant_dirname", "worst_exit"]

#: A secret file is a few dozen bytes; anything this large is the wrong file.
SECRET_MAX_BYTES: Final = 64 * 1024
#: Exit codes from best to worst: a usage error outranks a partial run, an unexpected
#: error outranks both.
_SEVERITY: Final = {EXIT_OK: 0, EXIT_PARTIAL: 1, EXIT_USAGE: 2, EXIT_UNEXPECTED: 3}


def tenant_dirname(name: str) -> str:
    """A tenant's directory under OUT (or a store): ``tenant=<name>``."""
    return f"tenant={name}"


def worst_exit(codes: Sequence[int]) -> int:
    """The exit code of a run of many tenants: the worst of theirs (0 when none ran)."""
    return max(codes, key=lambda c: _SEVERITY.get(c, len(_SEVERITY)), default=EXIT_OK)


def in_shard(name: str, shard: str) -> bool:
    """Whether shard ``I/N`` owns a tenant (crc32 of its name mod N, like catalogs)."""
    if not shard:
        return True
    index, total = (int(x) for x in shard.split("/"))
    return zlib.crc32(name.encode()) % total == index


#: Where a single-tenant run's credential comes from (the hint of a refused token).
DEFAULT_SOURCE: Final = "EDX_CLIENT_ID / EDX_CLIENT_SECRET"


@dataclass(frozen=True, slots=True)
class Tenant:
    """A selected tenant: its name and the settings its runs use (credential inside,
    masked in every ``repr``)."""

    name: str
    settings: Settings
    #: Where its credential comes from, for a refused credential's hint.
    source: str = DEFAULT_SOURCE


#: What an environment variable's name looks like by convention; a ``*_env`` value that
#: does not (a pasted secret, say) is never echoed in an error.
ENV_NAME: Final = re.compile(r"[A-Z_][A-Z0-9_]*")


def _read_env(where: str, var: str, environ: Mapping[str, str]) -> str:
    value = environ.get(var, "").strip()
    if not value:
        if ENV_NAME.fullmatch(var):
            raise ConfigError(f"{where}_env: environment variable {var} is not set "
                              "(or empty)")
        raise ConfigError(f"{where}_env: the variable it names is not set (the value is "
                          "not shown: it does not look like a variable's name; put the "
                          "secret in the environment and its variable's name here)")
    return value


def _read_file(where: str, path: Path) -> str:
    # The path is not echoed: a secret pasted where the path belongs would leak.
    where = f"{where}_file"
    try:
        raw = read_regular(path, SECRET_MAX_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{where}: the secret file it names does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the secret file it names: "
                          f"{exc.strerror or exc}") from None
    if len(raw) > SECRET_MAX_BYTES:
        raise ConfigError(f"{where}: the secret file it names is over 64 KiB; "
                          "not a credential")
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: the secret file it names is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{where}: the secret file it names is empty")
    return value


def _credential(spec: TenantSpec, half: str, environ: Mapping[str, str]) -> str:
    where = f"tenant {spec.name!r}: {half}"
    var: str | None = getattr(spec, f"{half}_env")
    if var is not None:
        return _read_env(where, var, environ)
    path: Path | None = getattr(spec, f"{half}_file")
    assert path is not None  # TenantSpec has exactly one source per half
    return _read_file(where, path)


def credential_source(spec: TenantSpec) -> str:
    """Where ``spec``'s credential comes from, as a refused token's hint names it: the
    variables by name, a file by its setting (a path is not echoed)."""
    def one(half: str) -> str:
        var: str | None = getattr(spec, f"{half}_env")
        if var is not None and ENV_NAME.fullmatch(var):
            return var
        kind = "env" if var is not None else "file"
        return f"tenants[{spec.name}].{half}_{kind}"
    return f"{one('client_id')} / {one('client_secret')}"


def tenant_settings(settings: Settings, spec: TenantSpec, *, client_id: str, secret: str,
                    out: Path) -> Settings:
    """``settings`` as one tenant's run sees them: its credential, budget, catalogs and
    directory; no shard (shards split tenants) and no tenants of its own."""
    return replace(
        settings,
        api=replace(settings.api, client_id=client_id, client_secret=Secret(secret)),
        limits=replace(settings.limits, lms=spec.rate_lms or settings.limits.lms),
        harvest=replace(settings.harvest, catalogs=spec.catalogs or settings.harvest.catalogs,
                        shard=""),
        output=replace(settings.output, out=out),
        learners=replace(settings.learners,
                         enterprises=spec.enterprises or settings.learners.enterprises),
        tenants=TenantsConfig())


def select_tenants(settings: Settings, *, root: Path, only: Sequence[str] = (),
                   environ: Mapping[str, str] | None = None) -> list[Tenant]:
    """The tenants this run drives, each with its credential read and its directory
    ``root/tenant=<name>``: ``only`` (``--tenant``) and the shard restrict them. An
    unknown name, a missing variable or an unreadable secret file is a ConfigError."""
    env = os.environ if environ is None else environ
    names = [spec.name for spec in settings.tenants]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ConfigError(f"--tenant {unknown[0]!r}: no such tenant in the config file "
                          f"(tenants: {', '.join(names) or 'none'})")
    chosen = [spec for spec in settings.tenants
              if (not only or spec.name in only) and in_shard(spec.name, settings.harvest.shard)]
    return [Tenant(spec.name, tenant_settings(
        settings, spec, client_id=_credential(spec, "client_id", env),
        secret=_credential(spec, "client_secret", env), out=root / tenant_dirname(spec.name)),
        credential_source(spec))
        for spec in chosen]


def check_tenant_root(root: Path) -> None:
    """Refuse a root that holds a single-tenant run: its files and the tenants' summary
    would share ``manifest.json``."""
    if (root / STATE_DIR).exists() or any(root.glob("catalog=*")):
        raise StateError(f"{root} holds a single-tenant harvest (.state, catalog=*); a run "
                         "of [[tenants]] writes tenant=<name>/ directories and its own "
                         "manifest.json there: choose another --out")


def summary(kind: str, outcomes: Sequence[Mapping[str, Any]], *, shard: str,
            started_at: str, ended_at: str) -> dict[str, Any]:
    """The run summary (``OUT/manifest.json``): every tenant's status and exit code."""
    code = worst_exit([o["exit_code"] for o in outcomes])
    status = {EXIT_OK: "complete", EXIT_PARTIAL: "partial"}.get(code, "failed")
    return {"kind": kind, "status": status, "exit_code": code, "shard": shard or None,
            "started_at": started_at, "ended_at": ended_at,
            "tenants": {o["name"]: dict(o) for o in outcomes}}
