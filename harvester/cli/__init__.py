"""The command line: parse, load settings, run, map the outcome to an exit code.

Wiring only. Exit codes: 0 complete, 3 partial (everything else written), 2 usage,
config, auth or state errors, 1 unexpected, 130/143 after SIGINT/SIGTERM (files closed,
nothing half-written looks complete; rerun to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import orjson

from harvester import __version__
from harvester.config import (
    MAX_CONCURRENCY,
    Settings,
    load_settings,
    parse_duration,
    parse_path,
)
from harvester.deadline import TimeBudget, parse_time_budget, seconds_until
from harvester.display import (
    export_summary,
    harvest_progress,
    learners_progress,
    learners_summary,
    plan_summary,
    print_harvest_summary,
    show_progress,
    sync_summary,
    tenants_plan_summary,
    tenants_progress,
    tenants_summary,
    term_text,
)
from harvester.errors import (
    AuthError,
    ConfigError,
    HarvestError,
    PublishError,
    SinkError,
    StateError,
    UnsafePath,
)
from harvester.export import SignalGuard, export
from harvester.learners import PII_HELP, LearnerExport, LearnerOptions, PiiPolicy, check_out
from harvester.metrics import MetricsFile, Tenants, live_manifest, manifest_success, single
from harvester.nightly import SyncNight
from harvester.obs import REDACTOR, event, setup_logging
from harvester.pipeline import Harvest, TenantRun, with_ticks
from harvester.pipes import quiet_on_closed_pipe
from harvester.planning import Plan, TenantsPlan, make_plan, plan_tenants
from harvester.publish import PublishReport, check_target, publish_night, publish_result
from harvester.run import (
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    RunResult,
    SyncResult,
)
from harvester.tenants import select_tenants
from harvester.userpath import file_arg, run_dirs

T = TypeVar("T")
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"harvester: {self.prog}: {message} (see {self.prog} --help)\n")


def _say(message: str) -> None:
    """One ``harvester: ...`` line on stderr: redacted, and without control characters
    (server text in an error must not drive the terminal)."""
    print(f"harvester: {term_text(REDACTOR.scrub(message))}", file=sys.stderr)


def _path(text: str) -> Path:
    """An argparse type: a path, never empty (an empty one would mean the cwd)."""
    try:
        return parse_path(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=_path, metavar="FILE", help="TOML config file (see config/)")
    p.add_argument("--api-base", dest="api.base", metavar="URL",
                   help="API base URL (env EDX_API_BASE)")
    p.add_argument("--token-url", dest="api.token_url", metavar="URL",
                   help="OAuth2 token URL (env EDX_TOKEN_URL)")
    p.add_argument("--rate-lms", dest="rates.lms", metavar="RATE",
                   help="budget of catalog-list + detail calls: N/min, N/s, N/2s... "
                        "(default 60/min)")
    p.add_argument("--rate-learners", dest="rates.learners", metavar="RATE",
                   help="budget of learner-summary calls (default 60/min)")
    p.add_argument("--concurrency", dest="harvest.concurrency", type=int, metavar="N",
                   help=f"max requests in flight (default 8, at most {MAX_CONCURRENCY})")
    p.add_argument("--quiet", dest="output.quiet", action="store_const", const=True,
                   help="only warnings and errors")
    p.add_argument("--log-format", dest="output.log_format", choices=("text", "json"),
                   help="log lines as text or one JSON object each (default text)")
    p.add_argument("--progress", dest="output.progress", choices=("auto", "on", "off"),
                   help="live progress display (auto: on a TTY)")
    p.add_argument("--tenant", dest="tenant_names", action="append", metavar="NAME",
                   help="only this [[tenants]] entry of the config (repeatable)")
    _add_metrics(p)


def _add_metrics(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-file", type=file_arg, metavar="FILE",
                   help="write Prometheus metrics (node_exporter textfile) here during the "
                        "run and at its end, e.g. /var/lib/node_exporter/edx_harvester.prom")


def _add_publish(p: argparse.ArgumentParser) -> None:
    p.add_argument("--publish", dest="publish.url", metavar="URL",
                   help="after the run, upload the output to s3://bucket/prefix, gs://, az:// "
                        "or file:///path (or [publish] url; see README)")


def _add_harvest_flags(h: argparse.ArgumentParser) -> None:
    """Flags shared by `harvest` and `sync`."""
    _add_common(h)
    h.add_argument("--catalog", dest="harvest.catalogs", action="append", metavar="UUID",
                   help="only this catalog (repeatable)")
    h.add_argument("--page-size", dest="harvest.page_size", type=int, metavar="N",
                   help="items asked per content page (default 250; servers may clamp)")
    h.add_argument("--page-concurrency", dest="harvest.page_concurrency", type=int,
                   metavar="N",
                   help="content pages in flight per catalog (default 4)")
    h.add_argument("--no-details", dest="harvest.details", action="store_const", const=False,
                   help="write listing records only (a fast dump)")
    h.add_argument("--gzip", dest="output.gzip", action="store_const", const=True,
                   help="write .ndjson.gz")
    h.add_argument("--shard", dest="harvest.shard", metavar="I/N",
                   help="only catalogs whose stable hash mod N is I (run N machines; give "
                        "each --rate-lms budget/N: they share the credential's budget); with "
                        "[[tenants]], only those tenants; auto/N takes I from "
                        "JOB_COMPLETION_INDEX")


def _add_plan(sub: Any) -> None:
    """``harvester plan``'s flags (the harvest flags, and the sync's for ``--store``)."""
    pl = sub.add_parser("plan", help="list every catalog (no detail request) and say what a "
                        "harvest, or tonight's sync with --store, would request and how long "
                        "it would take")
    pl.add_argument("--store", type=_path, metavar="DIR",
                    help="also plan tonight's sync of this store")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON (schema 1)")
    _add_harvest_flags(pl)
    pl.add_argument("--max-age", metavar="DURATION", help="as for sync (default 7d)")
    pl.add_argument("--as-of", metavar="ISO-8601", help="as for sync")


def _add_export(sub: Any) -> None:
    """``harvester export``'s flags."""
    ex = sub.add_parser("export", help="a snapshot or change feed -> search-engine input")
    ex.add_argument("source", type=_path, metavar="PATH",
                    help="a snapshot directory, a sync store (its latest), or changes.ndjson")
    ex.add_argument("--format", required=True, choices=("es-bulk", "meili", "jsonl"))
    ex.add_argument("--out", type=file_arg, required=True, metavar="FILE", help="file to write")
    ex.add_argument("--index", default="edx-catalog", metavar="NAME",
                    help="index name for es-bulk")
    ex.add_argument("--changes", action="store_true",
                    help="export a snapshot's change feeds instead of all its items")
    _add_metrics(ex)


def _add_learners(sub: Any) -> None:
    """``harvester learners``' flags."""
    lr = sub.add_parser("learners", help="learner-summary (enrollments, progress; personal "
                        "data) -> OUT/learners/enterprise=<uuid>/learner_summary.ndjson")
    lr.add_argument("--out", dest="output.out", metavar="DIR",
                    help="output directory (default ./out)")
    lr.add_argument("--enterprise", dest="learners.enterprises", action="append",
                    metavar="UUID", help="enterprise customer UUID (repeatable; or [learners] "
                    "enterprises in the config)")
    lr.add_argument("--pii", dest="learners.pii", choices=("keep", "hash", "drop"),
                    help=PII_HELP)
    lr.add_argument("--consented-only", dest="learners.consented_only", action="store_const",
                    const=True, help="write only rows with is_consent_granted true")
    lr.add_argument("--csv", dest="learners.csv", action="store_const", const=True,
                    help="also write learner_summary.csv (serializer column order)")
    _add_common(lr)
    _add_publish(lr)


def _version() -> str:
    """``harvester X (Python Y, aiohttp Z)``: what a bug report needs first."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    try:
        aiohttp = version("aiohttp")
    except PackageNotFoundError:  # pragma: no cover - aiohttp is a hard dependency
        aiohttp = "not installed"
    return f"harvester {__version__} (Python {platform.python_version()}, aiohttp {aiohttp})"


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree for every sub-command."""
    parser = _Parser(
        prog="harvester",
        description="Bulk harvester for the edX Enterprise API. Credentials come from "
                    "EDX_CLIENT_ID / EDX_CLIENT_SECRET (or the config file), never flags.")
    parser.add_argument("--version", action="version", version=_version(),
                        help="print the versions of the harvester, Python and aiohttp")
    sub = parser.add_subparsers(dest="command", required=True)

    h = sub.add_parser("harvest", help="catalogs -> pages -> details -> NDJSON per catalog")
    h.add_argument("--out", dest="output.out", metavar="DIR",
                   help="output directory (default ./out)")
    _add_harvest_flags(h)
    _add_publish(h)
    mode = h.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the unfinished run in --out (the default)")
    mode.add_argument("--restart", action="store_true",
                      help="discard any run in --out and start over")

    sy = sub.add_parser("sync", help="nightly: a new snapshot in --store, details only for "
                        "what changed, and a change feed (upserts/deletes) per catalog")
    sy.add_argument("--store", type=_path, metavar="DIR",
                    help="store directory: snapshots/<id>/ and latest (or [sync] store)")
    _add_harvest_flags(sy)
    _add_publish(sy)
    sy.add_argument("--max-age", metavar="DURATION",
                    help="refresh details older than this, spread over the nights "
                         "(e.g. 7d, 36h; default 7d, or [sync] max_age)")
    sy.add_argument("--keep", type=int, metavar="N",
                    help="finished snapshots kept (default 7, or [sync] keep)")
    sy.add_argument("--as-of", metavar="ISO-8601",
                    help="the run's date for refresh planning (backfills and tests)")
    end = sy.add_mutually_exclusive_group()
    end.add_argument("--deadline", metavar="HH:MM",
                     help="finish by this local time (tomorrow if already past today); "
                          "what is not fetched by then is deferred to the next night")
    end.add_argument("--time-budget", metavar="DURATION",
                     help="finish within this long (e.g. 3h, 90m), start-up and commit "
                          "included; the rest is deferred to the next night")
    _add_plan(sub)

    _add_export(sub)
    _add_learners(sub)
    v = sub.add_parser("verify", help="re-read what a harvest, sync store or learner export "
                       "wrote and check it against its manifest (exit 0 clean, 1 not)")
    v.add_argument("target", metavar="OUT|STORE|URL",
                   help="an output directory, a sync store, a learner export, or a "
                        "published prefix (file://, s3://...)")
    v.add_argument("--quiet", action="store_true", help="print only the problems")
    _add_metrics(v)
    d = sub.add_parser("demo", help="harvest the built-in simulator into ./out/demo")
    d.add_argument("--out", type=_path, default=Path("out/demo"), metavar="DIR",
                   help="output directory (default ./out/demo)")
    d.add_argument("--catalogs", type=int, default=3, metavar="N",
                   help="simulated catalogs (default 3)")
    d.add_argument("--items", type=int, default=120, metavar="N",
                   help="items per catalog (default 120)")

    sub.add_parser("sim", help="run the api.edx.org simulator (see `harvester sim --help`)",
                   add_help=False)
    return parser


def _cli_layer(ns: argparse.Namespace) -> dict[str, object]:
    """The settings given as flags. An empty flag value is an error: it is almost always an
    unset shell variable, and taken as "not given" it would silently widen the run."""
    layer = {k: v for k, v in vars(ns).items() if "." in k and v is not None}
    for name, value in layer.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and not v.strip() for v in values):
            raise ConfigError(f"{name}: an empty value was given (an unset shell variable?)")
    return layer


def _settings(ns: argparse.Namespace) -> Settings:
    settings, _ = load_settings(cli=_cli_layer(ns), environ=os.environ,
                                config_file=getattr(ns, "config", None))
    return settings


class Interrupted(Exception):
    """A command stopped by SIGINT/SIGTERM; ``code`` is its exit status (130/143)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _signal_exit(caught: list[int]) -> int:
    return EXIT_SIGTERM if caught and caught[0] == signal.SIGTERM else EXIT_SIGINT


async def _cancel_on_signal(work: Callable[[], Awaitable[T]],
                            display: AbstractContextManager[Any], caught: list[int],
                            metrics: MetricsFile | None = None) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def on_signal(signum: int) -> None:
        if not caught:
            caught.append(signum)
            event("run.signal", signal=signal.Signals(signum).name)
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        with display:
            if metrics is None:
                return await work()
            return await with_ticks(work, metrics.tick, every=metrics.every,
                                    sleep=metrics.sleep)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_job(work: Callable[[], Awaitable[T]], *,
            display: AbstractContextManager[Any] | None = None,
            interrupted: str | None = None, metrics: MetricsFile | None = None) -> T:
    """Run one command's coroutine under SIGINT/SIGTERM handling, with its live display.

    A signal cancels ``work`` cleanly; then ``harvester: interrupted; <interrupted>``
    goes to stderr (when given) and :class:`Interrupted` carries 130 (SIGINT) or 143
    (SIGTERM) to :func:`main`: no traceback, and each command's own clean-up has already
    run. (``export`` has its own :class:`~harvester.export.SignalGuard`: a started commit
    must finish.) With ``metrics``, its textfile is written every ``metrics.every``
    seconds meanwhile.
    """
    caught: list[int] = []
    try:
        return asyncio.run(_cancel_on_signal(work, display or contextlib.nullcontext(),
                                             caught, metrics))
    except (asyncio.CancelledError, KeyboardInterrupt):
        if interrupted is not None:
            print(f"harvester: interrupted; {interrupted}", file=sys.stderr)
        raise Interrupted(_signal_exit(caught)) from None


@contextmanager
def _metrics(ns: argparse.Namespace, command: str) -> Iterator[MetricsFile | None]:
    """``--metrics-file``: checked first (a bad path is exit 2 before anything runs),
    then written once more when the command ends, however it ends: the outcome the
    command set, else ``interrupted`` (a signal) or ``failed`` (an error)."""
    path, source = getattr(ns, "metrics_file", None), "--metrics-file"
    if path is None and hasattr(ns, "config"):  # else output.metrics_file in the config
        with contextlib.suppress(ConfigError):  # the command's own load says it, exit 2
            path, source = _settings(ns).output.metrics_file, "output.metrics_file"
    if path is None:
        yield None
        return
    mf = MetricsFile(path, command, source=source, own=run_dirs(command, ns, _settings))
    try:
        yield mf
    except Interrupted:
        mf.outcome = ("interrupted", None)
        raise
    finally:
        status, manifest = mf.outcome or ("failed", None)
        try:
            mf.finish(status, manifest)
        except HarvestError as exc:  # the run's own result stands
            _say(f"--metrics-file not written: {exc}")


def _harvest_view(harvest: Harvest) -> Callable[[], Tenants]:
    return lambda: single(live_manifest(harvest.catalogs, harvest.stats, errors=harvest.failures))


def _only(ns: argparse.Namespace, settings: Settings) -> list[str]:
    names: list[str] = ns.tenant_names or []
    if names and not settings.tenants:
        raise ConfigError("--tenant: the config file has no [[tenants]] tables")
    if any(not n.strip() for n in names):
        raise ConfigError("--tenant: an empty value was given (an unset shell variable?)")
    return names


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


def _run_tenants(run: TenantRun, settings: Settings, interrupted: str,
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
    _say_published(settings, _publish(lambda: publish_run(target, run, result), metrics))
    return result.exit_code


def _manifest_of(result: RunResult | SyncResult | None) -> dict[str, Any]:
    if isinstance(result, SyncResult):
        return result.manifest.to_json()
    return (result.manifest or {}) if result is not None else {}


def cmd_harvest(ns: argparse.Namespace) -> int:
    """``harvester harvest``."""
    with _metrics(ns, "harvest") as metrics:
        settings = _settings(ns)
        only = _only(ns, settings)
        if settings.tenants:
            from harvester.fleet import harvest_run

            run = harvest_run(settings, restart=ns.restart, only=only)
            setup_logging(fmt=settings.output.log_format, quiet=settings.output.quiet)
            return _run_tenants(run, settings, "each tenant's partial files stay as .part. "
                                f"Rerun the same command to resume {settings.output.out}.",
                                metrics, settings.output.out)
        setup_logging(fmt=settings.output.log_format, quiet=settings.output.quiet)
        harvest = Harvest(settings, restart=ns.restart)
        target = check_target(settings.publish, settings.output.out)  # before any request
        if metrics is not None:
            metrics.live = _harvest_view(harvest)
        bars = harvest_progress(harvest, show_progress(settings),
                                details=settings.harvest.details)
        result = run_job(harvest.run, display=bars,
                         interrupted="partial files stay as .part. Rerun the same command "
                                     f"to resume from {settings.output.out}.",
                         metrics=metrics)
        if metrics is not None:
            metrics.outcome = (result.status, single(result.manifest))
        published = _publish(lambda: publish_result(target, result), metrics)
    if result.message:
        print(term_text(result.message), file=sys.stderr)
    elif not settings.output.quiet:
        print_harvest_summary(result)
    _say_published(settings, published)
    return result.exit_code


def _publish(work: Callable[[], PublishReport | None],
             metrics: MetricsFile | None) -> PublishReport | PublishError | None:
    """A publish step, inside the ``--metrics-file`` block: a failed publish is no
    success there either (the data did not reach its readers). Its error is returned, to
    be raised by :func:`_say_published` once the run's summary is out. A signal stops it
    (the uploads in flight finish; 130/143, rerun to resume it)."""
    guard = SignalGuard()
    try:
        with guard:
            return work()
    except KeyboardInterrupt:
        print("harvester: interrupted; the local output is intact; rerun the same command "
              "to resume the publish", file=sys.stderr)
        raise Interrupted(_signal_exit([guard.signal] if guard.signal else [])) from None
    except PublishError as exc:
        if metrics is not None and metrics.outcome is not None:
            metrics.outcome = ("partial", metrics.outcome[1])
        return exc


def _say_published(settings: Settings, report: PublishReport | PublishError | None) -> None:
    if isinstance(report, PublishError):
        raise report
    if report is not None and not settings.output.quiet:
        print(f"published to {report.url}: {report.uploaded} uploaded "
              f"({report.bytes:,} bytes), {report.skipped} unchanged, {report.deleted} "
              "removed" + (f"; latest.json -> {report.latest}" if report.latest else ""))


def cmd_learners(ns: argparse.Namespace) -> int:
    """``harvester learners``."""
    with _metrics(ns, "learners") as metrics:
        settings = _settings(ns)
        only = _only(ns, settings)
        if settings.tenants:
            from harvester.fleet import learners_pii_notice, learners_run

            run = learners_run(settings, only=only)
            setup_logging(fmt=settings.output.log_format, quiet=settings.output.quiet)
            if (notice := learners_pii_notice(run)) is not None:
                print(notice, file=sys.stderr)
            return _run_tenants(run, settings, "each tenant's previous export is unchanged "
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
            _say(f"{exc} (the previous export in {export.root} is unchanged; rerun the "
                 "command)")
            return EXIT_UNEXPECTED
        if metrics is not None:
            metrics.outcome = (result.status, single(result.manifest))
        published = _publish(lambda: publish_result(target, result, learners=True), metrics)
    if result.message:
        _say(result.message)
    if not settings.output.quiet and result.exit_code != EXIT_USAGE:
        print(learners_summary(result))
    _say_published(settings, published)
    return result.exit_code


def parse_max_age(text: str) -> float:
    """``--max-age``: ``7d``, ``36h``, ``90m``, ``3600s`` or plain seconds, as seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"--max-age: {exc}, got {text!r}") from None


def _sync_options(ns: argparse.Namespace, settings: Settings) -> tuple[Path, float, int]:
    """``(store, max_age, keep)``: the flag, else ``[sync]`` in the config, else default."""
    store = ns.store or settings.sync.store
    if store is None:
        raise ConfigError("sync: no store given; pass --store DIR or set store under [sync] "
                          "in the config file")
    max_age = parse_max_age(ns.max_age) if ns.max_age is not None else settings.sync.max_age
    keep = ns.keep if ns.keep is not None else settings.sync.keep
    if keep < 1:
        raise ConfigError(f"--keep: must be >= 1, got {keep}")
    return Path(store), max_age, keep


def _as_of(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--as-of: expected an ISO-8601 date or time, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:  # 9999-12-31T23:59:59-14:00 is in year 10000 in UTC
        return when.astimezone(UTC).timestamp()
    except (ValueError, OverflowError):
        raise ConfigError(f"--as-of: {text!r} is out of range (years 1..9999 in UTC)"
                          ) from None


def _time_budget(ns: argparse.Namespace, started: float) -> TimeBudget | None:
    """``--deadline`` / ``--time-budget`` as a deadline on the monotonic clock, counted
    from ``started`` (the command's start: start-up is part of the budget)."""
    if ns.deadline is not None:
        seconds = seconds_until(ns.deadline, datetime.now().astimezone())
    elif ns.time_budget is not None:
        seconds = parse_time_budget(ns.time_budget)
    else:
        return None
    return TimeBudget(started + seconds, time.monotonic)


def cmd_sync(ns: argparse.Namespace) -> int:
    """``harvester sync``: the next snapshot of a store, fetching only what changed."""
    started = time.monotonic()  # the budget counts start-up too
    with _metrics(ns, "sync") as metrics:
        budget = _time_budget(ns, started)
        settings = _settings(ns)
        only = _only(ns, settings)
        store_dir, max_age, keep = _sync_options(ns, settings)
        if settings.tenants:
            from harvester.fleet import sync_last_success, sync_run

            run = sync_run(settings, store=store_dir, max_age=max_age, keep=keep,
                           as_of=_as_of(ns.as_of), only=only, budget=budget)
            setup_logging(fmt=settings.output.log_format, quiet=settings.output.quiet)
            if metrics is not None:
                metrics.known_success = sync_last_success(run)
            return _run_tenants(run, settings, "rerun the same command to resume each "
                                "tenant's snapshot.", metrics, store_dir)
        night = SyncNight(settings, store=store_dir, max_age=max_age, keep=keep,
                          as_of=_as_of(ns.as_of), budget=budget)
        settings.api.require_credentials()  # before the store gets a lock or a snapshot
        target = check_target(settings.publish, store_dir)
        setup_logging(fmt=settings.output.log_format, quiet=settings.output.quiet)
        with night.hold() as harvest:
            if metrics is not None:
                metrics.live = _harvest_view(harvest)
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
            published = _publish(lambda: publish_night(target, done), metrics)
    if not settings.output.quiet:
        print_harvest_summary(result)
        if done.notice:
            print(term_text(done.notice))
        print("\n".join(sync_summary(done)))
    _say_published(settings, published)
    return result.exit_code


def cmd_plan(ns: argparse.Namespace) -> int:
    """``harvester plan``: list everything, request no detail, print the cost and ETA.
    Exit 0, or 3 when a catalog or page could not be listed (the plan is then a lower
    bound)."""
    with _metrics(ns, "plan") as metrics:
        settings = _settings(ns)
        store = ns.store or settings.sync.store
        if store is not None and Path(store).exists() and not Path(store).is_dir():
            raise ConfigError(f"plan: --store {store} is not a directory")
        max_age = (parse_max_age(ns.max_age) if ns.max_age is not None
                   else settings.sync.max_age)
        as_of = _as_of(ns.as_of)
        store_dir = Path(store) if store else None
        plan: Plan | TenantsPlan
        if settings.tenants:  # each selected tenant: its credential, budget and store
            tenants = select_tenants(settings, root=settings.output.out,
                                     only=_only(ns, settings))
            setup_logging(fmt=settings.output.log_format, quiet=True)
            plan = run_job(lambda: plan_tenants(tenants, store=store_dir, max_age=max_age,
                                                as_of=as_of), interrupted="nothing was written")
            views = {n: p.metrics_view() for n, p in plan.plans.items()}
        else:
            _only(ns, settings)
            settings.api.require_credentials()
            setup_logging(fmt=settings.output.log_format, quiet=True)
            plan = run_job(lambda: make_plan(settings, store=store_dir, max_age=max_age,
                                             as_of=as_of), interrupted="nothing was written")
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
    with _metrics(ns, "export") as metrics, SignalGuard() as guard:
        try:
            counts = export(ns.source, ns.format, ns.out, index=ns.index,
                            changes=ns.changes, guard=guard)
        except KeyboardInterrupt:  # not run_job: its handler would stop a started commit
            print(f"harvester: interrupted; {ns.out} was not written (rerun the command)",
                  file=sys.stderr)
            raise Interrupted(_signal_exit([guard.signal] if guard.signal else [])) from None
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

    with _metrics(ns, "verify") as metrics:
        if not ns.target.strip():
            raise ConfigError("verify: an empty path was given (an unset shell variable?)")
        try:
            report = verify(ns.target)
        except OSError as exc:  # the tree itself became unreadable (permissions, network)
            print(f"harvester: verify: cannot read {ns.target}: {exc}", file=sys.stderr)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harvester`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "sim":
        from harvester.sim.__main__ import main as sim_main

        return sim_main(args[1:])
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:  # argparse already printed usage
        return EXIT_USAGE if exc.code not in (0, None) else 0
    handlers = {"harvest": cmd_harvest, "sync": cmd_sync, "plan": cmd_plan, "export": cmd_export,
                "learners": cmd_learners, "demo": cmd_demo, "verify": cmd_verify}
    try:
        return quiet_on_closed_pipe(lambda: handlers[ns.command](ns))
    except Interrupted as exc:
        return exc.code
    except (ConfigError, AuthError, StateError, UnsafePath) as exc:
        _say(str(exc))
        return EXIT_USAGE
    except PublishError as exc:
        print(f"harvester: {REDACTOR.scrub(str(exc))} (the local output is intact; rerun the "
              "same command to resume the publish)", file=sys.stderr)
        return EXIT_PARTIAL
    except SinkError as exc:
        _say(f"{exc} (everything committed so far is kept; rerun to resume)")
        return EXIT_UNEXPECTED
    except HarvestError as exc:
        _say(str(exc))
        return EXIT_UNEXPECTED
