"""The runs of many tenants, built once for the CLI and the Python API alike.

Each builder checks everything first (the tenants, their secrets, the root directory,
each tenant's own options), so a bad input is one :class:`ConfigError` line before any
request, and returns a :class:`~harvester.pipeline.TenantRun` whose units are the
single-tenant runs (``Harvest``, ``SyncNight``, ``LearnerExport``) on each tenant's own
settings. Must not print, draw or handle signals.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from harvester.config import Settings
from harvester.deadline import TimeBudget
from harvester.errors import ConfigError
from harvester.learners import LearnerExport, LearnerOptions, PiiPolicy, check_out
from harvester.metrics import manifest_success
from harvester.nightly import SyncNight
from harvester.pipeline import Harvest, TenantRun, TenantsResult
from harvester.publish import PublishReport, Target, publish_tenants
from harvester.store import Store
from harvester.tenants import Tenant, check_tenant_root, select_tenants, tenant_dirname

__all__ = [
    "harvest_run",
    "learners_pii_notice",
    "learners_run",
    "publish_run",
    "sync_last_success",
    "sync_run",
]


def harvest_run(settings: Settings, *, restart: bool = False, only: Sequence[str] = (),
                environ: Mapping[str, str] | None = None) -> TenantRun:
    """Every selected tenant's harvest into ``OUT/tenant=<name>/``."""
    root = settings.output.out
    check_tenant_root(root)
    tenants = select_tenants(settings, root=root, only=only, environ=environ)
    return TenantRun(tenants, lambda t: Harvest(t.settings, restart=restart,
                                                 shared_loop=True),
                     kind="harvest", root=root, shard=settings.harvest.shard)


def sync_run(settings: Settings, *, store: Path, max_age: float, keep: int,
             as_of: float | None = None, only: Sequence[str] = (),
             environ: Mapping[str, str] | None = None,
             budget: TimeBudget | None = None) -> TenantRun:
    """Every selected tenant's next snapshot, in its own store ``STORE/tenant=<name>/``."""
    tenants = select_tenants(settings, root=store, only=only, environ=environ)

    def night(t: Tenant) -> SyncNight:
        return SyncNight(t.settings, store=store / tenant_dirname(t.name), max_age=max_age,
                         keep=keep, as_of=as_of, budget=budget, shared_loop=True)

    return TenantRun(tenants, night, kind="sync", root=store, shard=settings.harvest.shard)


def sync_last_success(run: TenantRun) -> float | None:
    """When a sync of all these tenants last ended complete, as far as their stores tell
    (each tenant store's latest manifest): the oldest of them, None when a tenant has none.
    The fallback for ``--metrics-file`` when its previous textfile does not say."""
    ends = [manifest_success(Store(run.root / tenant_dirname(name)).latest())
            for name in run.units]
    if not ends or any(e is None for e in ends):
        return None
    return min(e for e in ends if e is not None)


def learners_run(settings: Settings, *, only: Sequence[str] = (),
                 environ: Mapping[str, str] | None = None) -> TenantRun:
    """Every selected tenant's learner export into ``OUT/tenant=<name>/learners/``;
    each tenant's ``enterprises`` (else ``[learners] enterprises``) are its own."""
    env = os.environ if environ is None else environ
    root = settings.output.out
    check_out(root)
    tenants = select_tenants(settings, root=root, only=only, environ=env)
    exports: dict[str, LearnerExport] = {}
    for t in tenants:
        try:
            options = LearnerOptions.from_settings(t.settings)
        except ConfigError as exc:
            raise ConfigError(f"tenant {t.name!r}: {exc} (or set enterprises = [...] in its "
                              "[[tenants]] table)") from None
        exports[t.name] = LearnerExport(t.settings, options, PiiPolicy.from_env(options.pii,
                                                                                env))
    return TenantRun(tenants, lambda t: exports[t.name], kind="learners", root=root,
                     shard=settings.harvest.shard, summary_name="learners-manifest.json")


def learners_pii_notice(run: TenantRun) -> str | None:
    """The ``--pii keep`` notice of a learners run of many tenants: one line naming every
    tenant whose export keeps personal data (None when none does)."""
    keep = [name for name, unit in run.units.items()
            if isinstance(unit, LearnerExport) and unit.pii_notice() is not None]
    if not keep:
        return None
    return (f"harvester: note: {run.root}/tenant=<name>/learners/ will hold personal data "
            f"(emails, names, usernames, SSO ids, grades) for tenants {', '.join(keep)}; "
            "files are private (0600). Use --pii hash or --pii drop to pseudonymise or "
            "remove identifying fields.")


def publish_run(target: Target | None, run: TenantRun, result: TenantsResult
                ) -> PublishReport | None:
    """After a run of many tenants: each tenant that ended ``complete`` or ``partial``
    published under ``URL/tenant=<name>/`` as it would be alone, the run summary last (see
    :func:`harvester.publish.publish_tenants`). A tenant that failed publishes nothing."""
    finished = {tenant_dirname(o.name): o.result for o in result.outcomes
                if o.result is not None and o.status in ("complete", "partial")}
    return publish_tenants(target, kind=run.kind, root=run.root, summary=run.summary_name,
                           finished=finished)
