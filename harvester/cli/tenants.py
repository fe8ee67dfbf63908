"""The ``[[tenants]]`` path shared by ``harvest``, ``sync`` and ``learners``: every
tenant's unit under one :func:`~harvester.cli.jobs.run_job`, its live numbers for
``--metrics-file``, the per-tenant summary, and the publish of what finished.

Building each command's :class:`~harvester.pipeline.TenantRun` is the command's own
business (``harvester.fleet``); this module only runs one. Must not load settings.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harvester.cli.jobs import publish_step, run_job, say_published
from harvester.config import Settings
from harvester.display import show_progress, tenants_progress, tenants_summary
from harvester.metrics import MetricsFile, Tenants, live_manifest
from harvester.pipeline import Harvest, TenantRun
from harvester.publish import check_target
from harvester.run import RunResult, SyncResult

__all__ = ["run_tenants"]


def _tenants_view(run: TenantRun) -> Callable[[], Tenants]:
    """Each tenant's live numbers for --metrics-file (a harvest's or a sync's)."""
    def view() -> Tenants:
        out: dict[str, Any] = {}
        for name, unit in run.units.items():
            harvest = getattr(unit, "harvest", unit)
            out[name] = (live_manifest(harvest.catalogs, harvest.stats,
                                       errors=harvest.failures)
                         if isinstance(harvest, Harvest) else {})
        return out
    return view


def _manifest_of(result: RunResult | SyncResult | None) -> dict[str, Any]:
    if isinstance(result, SyncResult):
        return result.manifest.to_json()
    return (result.manifest or {}) if result is not None else {}


def run_tenants(run: TenantRun, settings: Settings, interrupted: str,
                metrics: MetricsFile | None, source: Path) -> int:
    """Run every tenant's unit under the signal handling, print the per-tenant summary,
    publish what finished (``--publish``, checked against ``source`` before any request)."""
    from harvester.fleet import publish_run

    target = check_target(settings.publish, source)
    if metrics is not None:
        metrics.live = _tenants_view(run)
    result = run_job(run.run, display=tenants_progress(run, show_progress(settings)),
                     interrupted=interrupted, metrics=metrics)
    if metrics is not None:
        metrics.outcome = (result.status, {o.name: _manifest_of(o.result)
                                           for o in result.outcomes})
    if not settings.output.quiet or result.exit_code:
        print("\n".join(tenants_summary(result.manifest)),
              file=sys.stderr if settings.output.quiet else sys.stdout)
    say_published(settings, publish_step(lambda: publish_run(target, run, result), metrics))
    return result.exit_code
