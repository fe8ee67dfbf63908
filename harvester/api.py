"""The Python API: run a harvest, a sync night or a learner export from a scheduler.

For Airflow, Dagster or a script, not a shell: each function takes
:class:`~harvester.config.Settings` (build them with :meth:`Settings.load`, which
validates exactly as the command line does), blocks until the run ends, and returns a
typed result instead of an exit code. Errors raise the
:class:`~harvester.errors.HarvestError` tree (``ConfigError``, ``StateError``,
``SinkError``...). Nothing here configures logging, draws progress or installs signal
handlers: the caller owns those. Heavy modules are imported on first call, so
``import harvester`` stays cheap. Must not hold logic the CLI does not share.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harvester.config import Settings
from harvester.errors import ConfigError
from harvester.run import RunResult, SyncResult

if TYPE_CHECKING:
    from harvester.pipeline import TenantRun

__all__ = ["export_learners", "harvest", "sync", "sync_tenants"]


def _tenants_result(run: TenantRun, settings: Settings) -> RunResult:
    """A run of many tenants as one RunResult: the worst exit code, and the run summary
    (every tenant's status, ``ROOT/manifest.json``) as its manifest. With
    ``publish.url``, what finished is then published (see :func:`harvest`)."""
    from harvester.errors import PublishError
    from harvester.fleet import publish_run
    from harvester.publish import check_target

    target = check_target(settings.publish, run.root)
    done = asyncio.run(run.run())
    result = RunResult(done.status, done.exit_code, run.root, done.manifest)
    try:
        publish_run(target, run, done)
    except PublishError as exc:
        exc.result = result
        raise
    return result


def harvest(settings: Settings, *, restart: bool = False, tenants: Sequence[str] = (),
            environ: Mapping[str, str] | None = None) -> RunResult:
    """Harvest every catalog into ``settings.output.out`` (resuming an unfinished run
    there unless ``restart``). ``result.status`` is ``complete`` or ``partial``. With
    ``publish.url`` set, the output is then published there (a failed upload raises
    :class:`~harvester.errors.PublishError`, its ``result`` the run's; call again to
    resume it).

    With ``[[tenants]]`` in the settings, every tenant (or those named in ``tenants``;
    their secrets read from ``environ``, default ``os.environ``) is harvested at once into
    ``OUT/tenant=<name>/``; ``result.manifest`` is then the run summary, ``status`` is
    ``failed`` when a tenant could not run at all, and ``exit_code`` the worst tenant's."""
    if settings.tenants:
        from harvester.fleet import harvest_run

        return _tenants_result(harvest_run(settings, restart=restart, only=tenants,
                                           environ=environ), settings)
    from harvester.pipeline import Harvest
    from harvester.publish import check_target, publish_result

    target = check_target(settings.publish, settings.output.out)
    result = asyncio.run(Harvest(settings, restart=restart).run())
    publish_result(target, result)
    return result


def sync(settings: Settings, *, store: Path | str | None = None,
         max_age: float | None = None, keep: int | None = None,
         as_of: float | None = None) -> SyncResult:
    """The next snapshot of a sync store. ``store``, ``max_age`` (seconds) and ``keep``
    default to the ``[sync]`` section of the settings; ``as_of`` (epoch seconds) dates
    the night for backfills. ``result.promoted`` says whether it became ``latest``; a
    promoted snapshot is published to ``publish.url`` when set, ``latest.json`` last.
    With ``[[tenants]]``, use :func:`sync_tenants`."""
    from harvester.nightly import SyncNight
    from harvester.publish import check_target, publish_night

    if settings.tenants:
        raise ConfigError("sync: the settings hold [[tenants]]; call harvester.sync_tenants")
    where = store if store is not None else settings.sync.store
    if where is None:
        raise ConfigError("sync: no store given; pass store=... or set store under [sync] "
                          "in the config file")
    night = SyncNight(settings, store=Path(where),
                      max_age=settings.sync.max_age if max_age is None else max_age,
                      keep=settings.sync.keep if keep is None else keep, as_of=as_of)
    settings.api.require_credentials()
    target = check_target(settings.publish, Path(where))
    with night.hold() as run:
        done = night.settle(asyncio.run(run.run()))
        publish_night(target, done)  # under the store's lock, like the CLI
    return done


def sync_tenants(settings: Settings, *, store: Path | str | None = None,
                 max_age: float | None = None, keep: int | None = None,
                 as_of: float | None = None, tenants: Sequence[str] = (),
                 environ: Mapping[str, str] | None = None) -> RunResult:
    """Every ``[[tenants]]`` entry's next snapshot, each in its own store
    ``STORE/tenant=<name>/``, at once; the result's manifest is the run summary
    (``STORE/manifest.json``: each tenant's status, snapshot and whether it was promoted)."""
    from harvester.fleet import sync_run

    where = store if store is not None else settings.sync.store
    if where is None:
        raise ConfigError("sync: no store given; pass store=... or set store under [sync] "
                          "in the config file")
    return _tenants_result(sync_run(
        settings, store=Path(where), max_age=settings.sync.max_age if max_age is None
        else max_age, keep=settings.sync.keep if keep is None else keep, as_of=as_of,
        only=tenants, environ=environ), settings)


def export_learners(settings: Settings, *,
                    environ: Mapping[str, str] | None = None,
                    tenants: Sequence[str] = ()) -> RunResult:
    """Export the learner summaries of ``settings.learners.enterprises`` into
    ``OUT/learners``. ``--pii hash`` reads its key from ``HARVESTER_PII_KEY`` in
    ``environ`` (default ``os.environ``). ``result.status`` is ``complete``, ``partial``
    or ``failed``. With ``[[tenants]]``, each tenant's export goes to
    ``OUT/tenant=<name>/learners`` and the result is the run summary."""
    from harvester.learners import LearnerExport, LearnerOptions, PiiPolicy
    from harvester.publish import check_target, publish_result

    if settings.tenants:
        from harvester.fleet import learners_run

        return _tenants_result(learners_run(settings, only=tenants, environ=environ), settings)
    options = LearnerOptions.from_settings(settings)
    pii = PiiPolicy.from_env(options.pii, os.environ if environ is None else environ)
    target = check_target(settings.publish, settings.output.out)
    result = asyncio.run(LearnerExport(settings, options, pii).run())
    publish_result(target, result, learners=True)
    return result
