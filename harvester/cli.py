"""The command line: parse, load settings, run, map the outcome to an exit code.

Wiring only. Exit codes: 0 complete, 3 partial (everything else written), 2 usage,
config, auth or state errors, 1 unexpected, 130/143 after SIGINT/SIGTERM (files closed,
nothing half-written looks complete; rerun to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
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
    sync_defaults,
)
from harvester.errors import (
    AuthError,
    ConfigError,
    HarvestError,
    SinkError,
    StateError,
    UnsafePath,
)
from harvester.export import export
from harvester.learners import (
    PII_HELP,
    LearnerExport,
    LearnerOptions,
    PiiPolicy,
    check_out,
    format_summary,
    progress_display,
)
from harvester.obs import REDACTOR, event, setup_logging
from harvester.pipeline import Harvest
from harvester.run import (
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    RunResult,
    describe_change,
    fingerprint,
    fingerprint_parts,
)
from harvester.state import Ledger
from harvester.store import Store, settle_night
from harvester.sync import SyncOptions

T = TypeVar("T")
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"harvester: {self.prog}: {message} (see {self.prog} --help)\n")


def _path(text: str) -> Path:
    """An argparse type: a path, never empty (an empty one would mean the cwd)."""
    try:
        return parse_path(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=_path, help="TOML config file (see config/)")
    p.add_argument("--api-base", dest="api.base", help="API base URL (env EDX_API_BASE)")
    p.add_argument("--token-url", dest="api.token_url", help="OAuth2 token URL (env EDX_TOKEN_URL)")
    p.add_argument("--rate-lms", dest="rates.lms", metavar="N/min|N/s",
                   help="budget of catalog-list + detail calls (default 60/min)")
    p.add_argument("--rate-learners", dest="rates.learners", metavar="N/min|N/s",
                   help="budget of learner-summary calls (default 60/min)")
    p.add_argument("--concurrency", dest="harvest.concurrency", type=int,
                   help=f"max requests in flight (default 8, at most {MAX_CONCURRENCY})")
    p.add_argument("--quiet", dest="output.quiet", action="store_const", const=True,
                   help="only warnings and errors")
    p.add_argument("--log-format", dest="output.log_format", choices=("text", "json"))
    p.add_argument("--progress", dest="output.progress", choices=("auto", "on", "off"),
                   help="live progress display (auto: on a TTY)")


def _add_harvest_flags(h: argparse.ArgumentParser) -> None:
    """Flags shared by `harvest` and `sync`."""
    _add_common(h)
    h.add_argument("--catalog", dest="harvest.catalogs", action="append", metavar="UUID",
                   help="only this catalog (repeatable)")
    h.add_argument("--page-size", dest="harvest.page_size", type=int,
                   help="items asked per content page (default 250; servers may clamp)")
    h.add_argument("--page-concurrency", dest="harvest.page_concurrency", type=int,
                   help="content pages in flight per catalog (default 4)")
    h.add_argument("--no-details", dest="harvest.details", action="store_const", const=False,
                   help="write listing records only (a fast dump)")
    h.add_argument("--gzip", dest="output.gzip", action="store_const", const=True,
                   help="write .ndjson.gz")
    h.add_argument("--shard", dest="harvest.shard", metavar="I/N",
                   help="only catalogs whose stable hash mod N is I (run N machines; give "
                        "each --rate-lms budget/N: they share the credential's budget)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree for every sub-command."""
    parser = _Parser(
        prog="harvester",
        description="Bulk harvester for the edX Enterprise API. Credentials come from "
                    "EDX_CLIENT_ID / EDX_CLIENT_SECRET (or the config file), never flags.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    h = sub.add_parser("harvest", help="catalogs -> pages -> details -> NDJSON per catalog")
    h.add_argument("--out", dest="output.out", help="output directory (default ./out)")
    _add_harvest_flags(h)
    mode = h.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the unfinished run in --out (the default)")
    mode.add_argument("--restart", action="store_true",
                      help="discard any run in --out and start over")

    sy = sub.add_parser("sync", help="nightly: a new snapshot in --store, details only for "
                        "what changed, and a change feed (upserts/deletes) per catalog")
    sy.add_argument("--store", type=_path,
                    help="store directory: snapshots/<id>/ and latest (or [sync] store)")
    _add_harvest_flags(sy)
    sy.add_argument("--max-age", metavar="DURATION",
                    help="refresh details older than this, spread over the nights "
                         "(e.g. 7d, 36h; default 7d, or [sync] max_age)")
    sy.add_argument("--keep", type=int,
                    help="finished snapshots kept (default 7, or [sync] keep)")
    sy.add_argument("--as-of", metavar="ISO-8601",
                    help="the run's date for refresh planning (backfills and tests)")

    ex = sub.add_parser("export", help="a snapshot or change feed -> search-engine input")
    ex.add_argument("source", type=_path,
                    help="a snapshot directory, a sync store (its latest), or changes.ndjson")
    ex.add_argument("--format", required=True, choices=("es-bulk", "meili", "jsonl"))
    ex.add_argument("--out", type=_path, required=True, help="file to write")
    ex.add_argument("--index", default="edx-catalog", help="index name for es-bulk")
    ex.add_argument("--changes", action="store_true",
                    help="export a snapshot's change feeds instead of all its items")

    lr = sub.add_parser("learners", help="learner-summary (enrollments, progress; personal "
                        "data) -> OUT/learners/enterprise=<uuid>/learner_summary.ndjson")
    lr.add_argument("--out", dest="output.out", help="output directory (default ./out)")
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

    d = sub.add_parser("demo", help="harvest the built-in simulator into ./out/demo")
    d.add_argument("--out", type=_path, default=Path("out/demo"))
    d.add_argument("--catalogs", type=int, default=3)
    d.add_argument("--items", type=int, default=120)

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


def run_async(make: Callable[[], Awaitable[T]]) -> tuple[T | None, int | None]:
    """Run a coroutine; SIGINT/SIGTERM cancel it cleanly. Returns (result, signal exit)."""
    caught: list[int] = []

    async def main() -> T:
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
            return await make()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(main()), None
    except (asyncio.CancelledError, KeyboardInterrupt):
        sig = caught[0] if caught else signal.SIGINT
        return None, EXIT_SIGTERM if sig == signal.SIGTERM else EXIT_SIGINT


def _print_summary(result: RunResult, *, stream: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    out = stream or sys.stdout
    console = Console(file=out, width=None if out.isatty() else 110)
    manifest = result.manifest or {}
    table = Table(title=f"harvest {manifest.get('run_id', '')}: {result.status}")
    for col in ("catalog", "title", "count", "unique", "dupes", "details", "not found",
                "gaps", "status"):
        table.add_column(col, justify="right" if col not in ("catalog", "title") else "left")
    for uuid, c in (manifest.get("catalogs") or {}).items():
        table.add_row(uuid[:8], str(c.get("title", ""))[:28], str(c.get("count_reported")),
                      str(c.get("unique_found")), str(c.get("duplicates_dropped")),
                      str(c.get("details_fetched")), str(c.get("not_found")),
                      str(c.get("gaps")), str(c.get("status")))
    console.print(table)
    totals = manifest.get("totals") or {}
    console.print(f"requests {totals.get('requests_total')}  retries {totals.get('retries')}  "
                  f"429s {totals.get('throttled_429')}  wall {totals.get('wall_seconds')} s")
    console.print(f"output: {result.out.resolve()}  (manifest.json, catalogs.ndjson, "
                  "catalog=<uuid>/*.ndjson, errors.ndjson)")


def _show_progress(settings: Settings) -> bool:
    """A live display: forced on, or 'auto' on a TTY unless --quiet."""
    mode = settings.output.progress
    return mode == "on" or (mode == "auto" and sys.stderr.isatty() and not settings.output.quiet)


def _live(harvest: Harvest, enabled: bool) -> Any:
    """A rich Live display of per-catalog progress, or a no-op context."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext()
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    last = [time.monotonic(), 0, 0.0]  # when, requests, requests/s (smoothed)

    def render() -> Table:
        p = harvest.progress()
        eta = p["eta_s"]
        now = time.monotonic()
        if now - last[0] >= 1.0:
            rate = (p["requests"] - last[1]) / (now - last[0])
            last[:] = [now, p["requests"], 0.5 * last[2] + 0.5 * rate if last[2] else rate]
        t = Table(title=f"items {p['items']}  written {p['written']}  requests "
                        f"{p['requests']} ({last[2]:.1f}/s)  429s {p['throttled']}  "
                        f"ETA {'-' if eta is None else f'{eta // 60}m{eta % 60:02d}s'}")
        for col in ("catalog", "phase", "pages", "items", "details", "not found"):
            t.add_column(col)
        for cs in harvest.catalogs[:20]:
            t.add_row(cs.uuid[:13], cs.phase, f"{cs.pages}/{cs.pages_planned or '?'}",
                      str(cs.unique), f"{cs.details_done}", str(cs.not_found))
        return t

    return Live(console=Console(stderr=True), get_renderable=render, refresh_per_second=4,
                transient=True)


def cmd_harvest(ns: argparse.Namespace) -> int:
    """``harvester harvest``."""
    settings = _settings(ns)
    setup_logging(fmt=settings.output.log_format, quiet=settings.output.quiet)
    show = _show_progress(settings)
    harvest = Harvest(settings, restart=ns.restart)

    async def go() -> RunResult:
        with _live(harvest, show):
            return await harvest.run()

    result, sig_code = run_async(go)
    if sig_code is not None:
        print(f"harvester: interrupted; partial files stay as .part. Rerun the same command "
              f"to resume from {settings.output.out}.", file=sys.stderr)
        return sig_code
    assert result is not None
    if result.message:
        print(result.message, file=sys.stderr)
    elif not settings.output.quiet:
        _print_summary(result)
    return result.exit_code


def cmd_learners(ns: argparse.Namespace) -> int:
    """``harvester learners``."""
    cli = _cli_layer(ns)
    settings, file_layer = load_settings(cli=cli, environ=os.environ, config_file=ns.config)
    options = LearnerOptions.load(file_layer, cli)
    export = LearnerExport(settings, options, PiiPolicy.from_env(options.pii, os.environ))
    check_out(settings.output.out)  # a bad --out is one line, before the PII notice
    settings.api.require_credentials()  # one line, before the notice
    setup_logging(fmt=settings.output.log_format, quiet=settings.output.quiet)
    if (notice := export.pii_notice()) is not None:
        print(notice, file=sys.stderr)
    show = _show_progress(settings)

    async def go() -> RunResult:
        with progress_display(export, show):
            return await export.run()

    try:
        result, sig_code = run_async(go)
    except SinkError as exc:  # no resume here: say what is left instead
        print(f"harvester: {REDACTOR.scrub(str(exc))} (the previous export in {export.root} "
              "is unchanged; rerun the command)", file=sys.stderr)
        return EXIT_UNEXPECTED
    if sig_code is not None:
        print(f"harvester: interrupted; the previous export in {export.root} is unchanged "
              "and this run's unfinished files were removed (rerun the command).",
              file=sys.stderr)
        return sig_code
    assert result is not None
    if result.message:
        print(f"harvester: {result.message}", file=sys.stderr)
    if not settings.output.quiet and result.exit_code != EXIT_USAGE:
        print(format_summary(result))
    return result.exit_code


def parse_max_age(text: str) -> float:
    """``--max-age``: ``7d``, ``36h``, ``90m``, ``3600s`` or plain seconds, as seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"--max-age: {exc}, got {text!r}") from None


def _sync_options(ns: argparse.Namespace, file_layer: dict[str, object]
                  ) -> tuple[Path, float, int]:
    """``(store, max_age, keep)``: the flag, else ``[sync]`` in the config, else default."""
    defaults = sync_defaults(file_layer)
    store = ns.store or defaults.get("store")
    if store is None:
        raise ConfigError("sync: no store given; pass --store DIR or set store under [sync] "
                          "in the config file")
    max_age = parse_max_age(ns.max_age) if ns.max_age is not None else \
        float(defaults.get("max_age", 7 * 86400.0))
    keep = ns.keep if ns.keep is not None else int(defaults.get("keep", 7))
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
    return when.timestamp()


def _why_not_resume(store: Store, snap: Path, settings: Settings,
                    options: SyncOptions) -> str | None:
    """Why this command cannot resume the unfinished ``snap`` (None: it can)."""
    if (problem := store.marker_problem(snap)) is not None:
        return problem
    try:
        ledger = Ledger(snap)
        try:
            fp, parts, status = (ledger.meta(k) for k in
                                 ("fingerprint", "fingerprint_parts", "status"))
        finally:
            ledger.close()
    except (StateError, sqlite3.Error):
        return "its resume ledger is unusable"
    extra = options.fingerprint_parts()
    if fp is None:
        return "it recorded no settings"
    if fp != fingerprint(settings, extra):
        try:
            old = orjson.loads(parts or "{}")
        except orjson.JSONDecodeError:
            old = {}
        return f"{describe_change(old, fingerprint_parts(settings, extra))} changed"
    if status != "running":
        return "its run ended without a manifest"
    return None


def _choose_snapshot(store: Store, settings: Settings, options: SyncOptions
                     ) -> tuple[Path, str | None]:
    """The unfinished snapshot to resume, else a new one; plus a notice when an
    unfinished snapshot (never latest) was abandoned because this command differs."""
    snap = store.unfinished()
    notice = None
    if snap is not None:
        why = _why_not_resume(store, snap, settings, options)
        if why is None:
            event("sync.resume", snapshot=snap.name)
            return snap, None
        store.abandon(snap)
        notice = (f"abandoned unfinished snapshot {snap.name} ({why}; it never became "
                  "latest); starting a new one")
        event("sync.abandon", logging.WARNING, snapshot=snap.name, reason=why)
    return store.new_snapshot(options.at()), notice


def cmd_sync(ns: argparse.Namespace) -> int:
    """``harvester sync``: the next snapshot of a store, fetching only what changed."""
    settings, file_layer = load_settings(cli=_cli_layer(ns), environ=os.environ,
                                         config_file=ns.config)
    store_dir, max_age, keep = _sync_options(ns, file_layer)
    options = SyncOptions(None, max_age, _as_of(ns.as_of))
    settings.api.require_credentials()  # before the store gets a lock or a snapshot
    setup_logging(fmt=settings.output.log_format, quiet=settings.output.quiet)
    store = Store(store_dir)
    lock = store.lock()
    lock.acquire()
    try:
        return _sync_locked(ns, settings, store, options, keep)
    finally:
        lock.release()


def _sync_locked(ns: argparse.Namespace, settings: Settings, store: Store,
                 options: SyncOptions, keep: int) -> int:
    snap, notice = _choose_snapshot(store, settings, options)
    previous = store.previous_of(snap)
    settings = replace(settings, output=replace(settings.output, out=snap))
    harvest = Harvest(settings, sync=replace(options, previous=previous))
    show = _show_progress(settings)

    async def go() -> RunResult:
        with _live(harvest, show):
            return await harvest.run()

    result, sig_code = run_async(go)
    if sig_code is not None:
        print(f"harvester: interrupted; rerun the same command to resume {snap} (a changed "
              "command abandons it and starts a new snapshot)", file=sys.stderr)
        return sig_code
    assert result is not None
    assert result.manifest is not None
    night = settle_night(store, snap, result.manifest, keep=keep, previous=previous)
    if not settings.output.quiet:
        _print_summary(result)
        if notice:
            print(notice)
        print("\n".join(night.summary))
        print(f"latest -> {snap.name}" if night.promoted else
              f"latest unchanged: {snap.name} is not a good snapshot (see errors.ndjson)")
        if night.pruned:
            print(f"pruned: {', '.join(night.pruned)}")
    return result.exit_code


def cmd_export(ns: argparse.Namespace) -> int:
    """``harvester export``: SIGINT/SIGTERM end it like ``harvest`` (130/143, one line,
    no traceback), leaving no partial file and the previous output untouched."""
    caught: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if not caught:  # a second signal must not interrupt the clean-up of the first
            caught.append(signum)
            raise KeyboardInterrupt

    saved = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        counts = export(ns.source, ns.format, ns.out, index=ns.index, changes=ns.changes)
    except KeyboardInterrupt:
        print(f"harvester: interrupted; {ns.out} was not written (rerun the command)",
              file=sys.stderr)
        return EXIT_SIGTERM if caught and caught[0] == signal.SIGTERM else EXIT_SIGINT
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    print(f"{ns.out}: {counts.upserts} upserts, {counts.deletes} deletes ({ns.format})")
    return 0


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

    result, sig_code = run_async(go)
    if sig_code is not None:
        return sig_code
    assert result is not None
    _print_summary(result)
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
    handlers = {"harvest": cmd_harvest, "sync": cmd_sync, "export": cmd_export,
                "learners": cmd_learners, "demo": cmd_demo}
    try:
        return handlers[ns.command](ns)
    except (ConfigError, AuthError, StateError, UnsafePath) as exc:
        print(f"harvester: {REDACTOR.scrub(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except SinkError as exc:
        print(f"harvester: {REDACTOR.scrub(str(exc))} (everything committed so far is kept; "
              "rerun to resume)", file=sys.stderr)
        return EXIT_UNEXPECTED
    except HarvestError as exc:
        print(f"harvester: {REDACTOR.scrub(str(exc))}", file=sys.stderr)
        return EXIT_UNEXPECTED
