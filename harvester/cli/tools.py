"""The commands around a harvest: ``plan`` (what a harvest or sync would cost),
``export`` (a snapshot or change feed as search-engine input), ``verify`` (re-read what a
run wrote) and ``demo`` (the simulator harvested in-process).

Wiring only: each command's work lives in ``planning``, ``export``, ``verify`` and
``sim``. Must not touch a run's output itself.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import orjson

from harvester.cli.jobs import Interrupted, metrics_file, run_job, say, signal_exit
from harvester.cli.options import as_of, only, parse_max_age, settings_of
from harvester.config import load_settings
from harvester.display import (
    export_summary,
    plan_summary,
    print_harvest_summary,
    tenants_plan_summary,
    term_text,
)
from harvester.errors import ConfigError
from harvester.export import SignalGuard, export
from harvester.metrics import single
from harvester.obs import setup_logging
from harvester.pipeline import Harvest
from harvester.planning import Plan, TenantsPlan, make_plan, plan_tenants
from harvester.redact import REDACTOR
from harvester.run import EXIT_OK, EXIT_PARTIAL, RunResult
from harvester.tenants import select_tenants

__all__ = ["cmd_demo", "cmd_export", "cmd_plan", "cmd_verify"]


def cmd_plan(ns: argparse.Namespace) -> int:
    """``harvester plan``: list everything, request no detail, print the cost and ETA.
    Exit 0, or 3 when a catalog or page could not be listed (the plan is then a lower
    bound)."""
    with metrics_file(ns, "plan") as metrics:
        settings = settings_of(ns)
        store = ns.store or settings.sync.store
        if store is not None and Path(store).exists() and not Path(store).is_dir():
            raise ConfigError(f"plan: --store {store} is not a directory")
        max_age = (parse_max_age(ns.max_age) if ns.max_age is not None
                   else settings.sync.max_age)
        when = as_of(ns.as_of)
        store_dir = Path(store) if store else None
        plan: Plan | TenantsPlan
        if settings.tenants:  # each selected tenant: its credential, budget and store
            tenants = select_tenants(settings, root=settings.output.out,
                                     only=only(ns, settings))
            setup_logging(fmt=settings.output.log_format, quiet=True)
            plan = run_job(lambda: plan_tenants(tenants, store=store_dir, max_age=max_age,
                                                as_of=when), interrupted="nothing was written")
            views = {n: p.metrics_view() for n, p in plan.plans.items()}
        else:
            only(ns, settings)
            settings.api.require_credentials()
            setup_logging(fmt=settings.output.log_format, quiet=True)
            plan = run_job(lambda: make_plan(settings, store=store_dir, max_age=max_age,
                                             as_of=when), interrupted="nothing was written")
            views = {n: dict(m) for n, m in single(plan.metrics_view()).items()}
        if metrics is not None:
            metrics.outcome = ("complete" if plan.complete else "partial", views)
    if ns.json:
        sys.stdout.write(orjson.dumps(plan.as_dict(), option=orjson.OPT_INDENT_2).decode()
                         + "\n")
    else:
        print("\n".join(plan_summary(plan) if isinstance(plan, Plan)
                        else tenants_plan_summary(plan)))
    return EXIT_OK if plan.complete else EXIT_PARTIAL


def cmd_export(ns: argparse.Namespace) -> int:
    """``harvester export``: SIGINT/SIGTERM before the commit end it like ``harvest``
    (130/143, one line, no traceback), leaving no partial file and the previous output
    untouched. Once the commit has started it finishes: exit 0, and a line says the
    signal came too late to stop it (exit 0 always means the new export is in place)."""
    with metrics_file(ns, "export") as metrics, SignalGuard() as guard:
        try:
            counts = export(ns.source, ns.format, ns.out, index=ns.index,
                            changes=ns.changes, guard=guard)
        except KeyboardInterrupt:  # not run_job: its handler would stop a started commit
            print(f"harvester: interrupted; {ns.out} was not written (rerun the command)",
                  file=sys.stderr)
            raise Interrupted(signal_exit([guard.signal] if guard.signal else [])) from None
        if metrics is not None:
            metrics.outcome = ("complete", single({"files": {
                f.name: {"bytes": f.stat().st_size} for f in counts.files}}))
        print(export_summary(ns.out, counts.upserts, counts.deletes, ns.format))
        if guard.signal is not None:
            print(f"harvester: {signal.Signals(guard.signal).name} came after the commit "
                  f"had started; it finished: {' and '.join(map(str, counts.files))} hold "
                  "the new export", file=sys.stderr)
    return 0


def cmd_verify(ns: argparse.Namespace) -> int:
    """``harvester verify``: one line per problem on stdout; 0 clean, 1 not, 2 usage."""
    from harvester.verify import verify

    with metrics_file(ns, "verify") as metrics:
        if not ns.target.strip():
            raise ConfigError("verify: an empty path was given (an unset shell variable?)")
        try:
            report = verify(ns.target)
        except OSError as exc:  # the tree itself became unreadable (permissions, network)
            say(f"verify: cannot read {ns.target}: {exc}")
            return 1
        if metrics is not None:  # a problem found is a failed check (run_errors: how many)
            metrics.outcome = ("complete" if report.clean else "failed",
                               single({"totals": {"errors": len(report.problems)}}))
    for line in report.problems:
        print(term_text(REDACTOR.scrub(line)))
    if not ns.quiet:
        for note in report.notes:
            print(f"note: {term_text(note)}", file=sys.stderr)
        print(report.summary(), file=sys.stderr)
    return 0 if report.clean else 1


def cmd_demo(ns: argparse.Namespace) -> int:
    """``harvester demo``: the simulator in-process, a small harvest, a summary."""
    from harvester.sim import SimConfig, SimServer

    try:
        sim_cfg = SimConfig(catalogs=ns.catalogs, items=ns.items, rate_lms="100/s",
                            rate_learners="100/s", latency_ms=5.0)
    except ValueError as exc:
        raise ConfigError(f"demo: {exc}") from None
    setup_logging(quiet=True)

    async def go() -> RunResult:
        async with SimServer(sim_cfg, port=0) as srv:
            print(f"simulator on {srv.base_url}: {ns.catalogs} catalogs x {ns.items} items, "
                  "rate limit scaled to 100/s")
            settings, _ = load_settings(cli={
                "api.base": srv.base_url, "api.client_id": srv.client_id,
                "api.client_secret": srv.client_secret, "output.out": str(ns.out),
                "rates.lms": "100/s", "rates.learners": "100/s", "harvest.concurrency": 16,
                "retry.backoff_base": 0.05,
            }, environ={}, config_file=None)
            return await Harvest(settings, restart=True).run()

    result = run_job(go)
    print_harvest_summary(result)
    print(f"check it against its manifest: harvester verify {ns.out}")
    return result.exit_code
