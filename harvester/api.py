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
from collections.abc import Mapping
from pathlib import Path

from harvester.config import Settings
from harvester.errors import ConfigError
from harvester.run import RunResult, SyncResult

__all__ = ["export_learners", "harvest", "sync"]


def harvest(settings: Settings, *, restart: bool = False) -> RunResult:
    """Harvest every catalog into ``settings.output.out`` (resuming an unfinished run
    there unless ``restart``). ``result.status`` is ``complete`` or ``partial``."""
    from harvester.pipeline import Harvest

    return asyncio.run(Harvest(settings, restart=restart).run())


def sync(settings: Settings, *, store: Path | str | None = None,
         max_age: float | None = None, keep: int | None = None,
         as_of: float | None = None) -> SyncResult:
    """The next snapshot of a sync store. ``store``, ``max_age`` (seconds) and ``keep``
    default to the ``[sync]`` section of the settings; ``as_of`` (epoch seconds) dates
    the night for backfills. ``result.promoted`` says whether it became ``latest``."""
    from harvester.nightly import SyncNight

    where = store if store is not None else settings.sync.store
    if where is None:
        raise ConfigError("sync: no store given; pass store=... or set store under [sync] "
                          "in the config file")
    night = SyncNight(settings, store=Path(where),
                      max_age=settings.sync.max_age if max_age is None else max_age,
                      keep=settings.sync.keep if keep is None else keep, as_of=as_of)
    return asyncio.run(night.run())


def export_learners(settings: Settings, *,
                    environ: Mapping[str, str] | None = None) -> RunResult:
    """Export the learner summaries of ``settings.learners.enterprises`` into
    ``OUT/learners``. ``--pii hash`` reads its key from ``HARVESTER_PII_KEY`` in
    ``environ`` (default ``os.environ``). ``result.status`` is ``complete``, ``partial``
    or ``failed``."""
    from harvester.learners import LearnerExport, LearnerOptions, PiiPolicy

    options = LearnerOptions.from_settings(settings)
    pii = PiiPolicy.from_env(options.pii, os.environ if environ is None else environ)
    return asyncio.run(LearnerExport(settings, options, pii).run())
