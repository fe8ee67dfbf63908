"""``harvester sync``: tonight's snapshot of a store (or of each tenant's), details only
for what changed, within ``--deadline`` / ``--time-budget``, then ``--publish``.

Wiring only: the night is :class:`~harvester.nightly.SyncNight`'s (snapshot, settle,
promotion). Must not touch the store itself.
"""

from __future__ import annotations

import argparse
import time

from harvester.cli.harvest import harvest_view
from harvester.cli.jobs import metrics_file, publish_step, run_job, say_published
from harvester.cli.options import as_of, only, settings_of, sync_options, time_budget
from harvester.cli.tenants import run_tenants
from harvester.display import (
    harvest_progress,
    print_harvest_summary,
    show_progress,
    sync_summary,
    term_text,
)
from harvester.metrics import manifest_success, single
from harvester.nightly import SyncNight
from harvester.obs import setup_logging
from harvester.publish import check_target, publish_night

__all__ = ["cmd_sync"]


def cmd_sync(ns: argparse.Namespace) -> int:
    """``harvester sync``: the next snapshot of a store, fetching only what changed."""
    started = time.monotonic()  # the budget counts start-up too
    with metrics_file(ns, "sync") as metrics:
        budget = time_budget(ns, started)
        settings = settings_of(ns)
        names = only(ns, settings)
        store_dir, max_age, keep = sync_options(ns, settings)
        if settings.tenants:
            from harvester.fleet import sync_last_success, sync_run

            run = sync_run(settings, store=store_dir, max_age=max_age, keep=keep,
                           as_of=as_of(ns.as_of), only=names, budget=budget)
            setup_logging(fmt=settings.output.log_format, quiet=settings.output.quiet)
            if metrics is not None:
                metrics.known_success = sync_last_success(run)
            return run_tenants(run, settings, "rerun the same command to resume each "
                               "tenant's snapshot.", metrics, store_dir)
        night = SyncNight(settings, store=store_dir, max_age=max_age, keep=keep,
                          as_of=as_of(ns.as_of), budget=budget)
        settings.api.require_credentials()  # before the store gets a lock or a snapshot
        target = check_target(settings.publish, store_dir)
        setup_logging(fmt=settings.output.log_format, quiet=settings.output.quiet)
        with night.hold() as harvest:
            if metrics is not None:
                metrics.live = harvest_view(harvest)
                metrics.known_success = manifest_success(night.previous)
            bars = harvest_progress(harvest, show_progress(settings),
                                    details=settings.harvest.details)
            result = run_job(harvest.run, display=bars,
                             interrupted=f"rerun the same command to resume {night.snapshot} "
                                         "(a changed command abandons it and starts a new "
                                         "snapshot)", metrics=metrics)
            done = night.settle(result)
            if metrics is not None:
                metrics.outcome = (done.status, single(done.manifest.to_json()))
            # Under the store's lock: two nights never race to write latest.json.
            published = publish_step(lambda: publish_night(target, done), metrics)
    if not settings.output.quiet:
        print_harvest_summary(result)
        if done.notice:
            print(term_text(done.notice))
        print("\n".join(sync_summary(done)))
    say_published(settings, published)
    return result.exit_code
