"""``harvester harvest``: every catalog into OUT (or each tenant's), resumable, then
``--publish``; and :func:`harvest_view`, a harvest's live numbers for ``--metrics-file``
(``sync`` shows its night's harvest the same way).

Wiring only: the run is :class:`~harvester.pipeline.Harvest`'s. Must not write files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from harvester.cli.jobs import metrics_file, publish_step, run_job, say_published
from harvester.cli.options import only, settings_of
from harvester.cli.tenants import run_tenants
from harvester.display import harvest_progress, print_harvest_summary, show_progress, term_text
from harvester.metrics import Tenants, live_manifest, single
from harvester.obs import setup_logging
from harvester.pipeline import Harvest
from harvester.publish import check_target, publish_result

__all__ = ["cmd_harvest", "harvest_view"]


def harvest_view(harvest: Harvest) -> Callable[[], Tenants]:
    """A running harvest's numbers, as ``--metrics-file`` reads them on each tick."""
    return lambda: single(live_manifest(harvest.catalogs, harvest.stats, errors=harvest.failures))


def cmd_harvest(ns: argparse.Namespace) -> int:
    """``harvester harvest``."""
    with metrics_file(ns, "harvest") as metrics:
        settings = settings_of(ns)
        names = only(ns, settings)
        if settings.tenants:
            from harvester.fleet import harvest_run

            run = harvest_run(settings, restart=ns.restart, only=names)
            setup_logging(fmt=settings.output.log_format, quiet=settings.output.quiet)
            return run_tenants(run, settings, "each tenant's partial files stay as .part. "
                               f"Rerun the same command to resume {settings.output.out}.",
                               metrics, settings.output.out)
        setup_logging(fmt=settings.output.log_format, quiet=settings.output.quiet)
        harvest = Harvest(settings, restart=ns.restart)
        target = check_target(settings.publish, settings.output.out)  # before any request
        if metrics is not None:
            metrics.live = harvest_view(harvest)
        bars = harvest_progress(harvest, show_progress(settings),
                                details=settings.harvest.details)
        result = run_job(harvest.run, display=bars,
                         interrupted="partial files stay as .part. Rerun the same command "
                                     f"to resume from {settings.output.out}.",
                         metrics=metrics)
        if metrics is not None:
            metrics.outcome = (result.status, single(result.manifest))
        published = publish_step(lambda: publish_result(target, result), metrics)
    if result.message:
        print(term_text(result.message), file=sys.stderr)
    elif not settings.output.quiet:
        print_harvest_summary(result)
    say_published(settings, published)
    return result.exit_code
