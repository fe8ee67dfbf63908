"""The argparse tree of every ``harvester`` sub-command: flags, help texts, usage errors.

Owns only the shape of the command line: a flag that names a setting has a dotted ``dest``
(``api.base``) that :func:`harvester.cli.options.cli_layer` hands to the config loader.
Must not load settings, read the environment, or run anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

from harvester import __version__
from harvester.config import MAX_CONCURRENCY, parse_path
from harvester.learners import PII_HELP
from harvester.run import EXIT_USAGE
from harvester.userpath import file_arg

__all__ = ["build_parser"]


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


def _add_harvest(sub: Any) -> None:
    """``harvester harvest``'s flags."""
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


def _add_sync(sub: Any) -> None:
    """``harvester sync``'s flags: the harvest flags, the store's, and the night's end."""
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


def _add_verify(sub: Any) -> None:
    """``harvester verify``'s flags."""
    v = sub.add_parser("verify", help="re-read what a harvest, sync store or learner export "
                       "wrote and check it against its manifest (exit 0 clean, 1 not)")
    v.add_argument("target", metavar="OUT|STORE|URL",
                   help="an output directory, a sync store, a learner export, or a "
                        "published prefix (file://, s3://...)")
    v.add_argument("--quiet", action="store_true", help="print only the problems")
    _add_metrics(v)


def _add_demo(sub: Any) -> None:
    """``harvester demo``'s flags."""
    d = sub.add_parser("demo", help="harvest the built-in simulator into ./out/demo")
    d.add_argument("--out", type=_path, default=Path("out/demo"), metavar="DIR",
                   help="output directory (default ./out/demo)")
    d.add_argument("--catalogs", type=int, default=3, metavar="N",
                   help="simulated catalogs (default 3)")
    d.add_argument("--items", type=int, default=120, metavar="N",
                   help="items per catalog (default 120)")


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
    for add in (_add_harvest, _add_sync, _add_plan, _add_export, _add_learners,
                _add_verify, _add_demo):
        add(sub)
    sub.add_parser("sim", help="run the api.edx.org simulator (see `harvester sim --help`)",
                   add_help=False)
    return parser
