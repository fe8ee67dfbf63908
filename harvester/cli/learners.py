"""``harvester learners``: the learner-summary export (personal data) of each enterprise,
or of each tenant's, with its ``--pii`` notice first, then ``--publish``.

Wiring only: the export is :class:`~harvester.learners.LearnerExport`'s. Must not write
files or see a learner row.
"""

from __future__ import annotations

import argparse
import os
import sys

from harvester.cli.jobs import metrics_file, publish_step, run_job, say, say_published
from harvester.cli.options import only, settings_of
from harvester.cli.tenants import run_tenants
from harvester.display import learners_progress, learners_summary, show_progress
from harvester.errors import SinkError
from harvester.learners import LearnerExport, LearnerOptions, PiiPolicy, check_out
from harvester.metrics import single
from harvester.obs import setup_logging
from harvester.publish import check_target, publish_result
from harvester.run import EXIT_UNEXPECTED, EXIT_USAGE

__all__ = ["cmd_learners"]


def cmd_learners(ns: argparse.Namespace) -> int:
    """``harvester learners``."""
    with metrics_file(ns, "learners") as metrics:
        settings = settings_of(ns)
        names = only(ns, settings)
        if settings.tenants:
            from harvester.fleet import learners_pii_notice, learners_run

            run = learners_run(settings, only=names)
            setup_logging(fmt=settings.output.log_format, quiet=settings.output.quiet)
            if (notice := learners_pii_notice(run)) is not None:
                print(notice, file=sys.stderr)
            return run_tenants(run, settings, "each tenant's previous export is unchanged "
                               "(rerun the command).", metrics, settings.output.out)
        options = LearnerOptions.from_settings(settings)
        export = LearnerExport(settings, options, PiiPolicy.from_env(options.pii, os.environ))
        check_out(settings.output.out)  # a bad --out is one line, before the PII notice
        settings.api.require_credentials()  # one line, before the notice
        target = check_target(settings.publish, settings.output.out)
        setup_logging(fmt=settings.output.log_format, quiet=settings.output.quiet)
        if (notice := export.pii_notice()) is not None:
            print(notice, file=sys.stderr)
        if metrics is not None:
            metrics.live = lambda: single({"totals": export.stats.as_dict(), "enterprises": {
                es.uuid: es.manifest() for es in export.enterprises}})
        try:
            result = run_job(export.run,
                             display=learners_progress(export, show_progress(settings)),
                             interrupted=f"the previous export in {export.root} is unchanged "
                                         "and this run's unfinished files were removed "
                                         "(rerun the command).", metrics=metrics)
        except SinkError as exc:  # no resume here: say what is left instead
            say(f"{exc} (the previous export in {export.root} is unchanged; rerun the "
                "command)")
            return EXIT_UNEXPECTED
        if metrics is not None:
            metrics.outcome = (result.status, single(result.manifest))
        published = publish_step(lambda: publish_result(target, result, learners=True), metrics)
    if result.message:
        say(result.message)
    if not settings.output.quiet and result.exit_code != EXIT_USAGE:
        print(learners_summary(result))
    say_published(settings, published)
    return result.exit_code
