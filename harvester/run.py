"""The state of one harvest run: identity, per-catalog counters, outcome, manifest.

Plain values and pure functions, shared by the pipeline (which fills them), the learner
export and the CLI (which report them). No I/O, no tasks.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from harvester import __version__
from harvester.config import Settings
from harvester.models import JSONDict
from harvester.obs import REDACTOR
from harvester.sinks import catalog_dirname
from harvester.sync import Indexed

EXIT_OK: Final = 0
EXIT_UNEXPECTED: Final = 1
EXIT_USAGE: Final = 2
EXIT_PARTIAL: Final = 3


def now_iso(at: float | None = None) -> str:
    """UTC now (or epoch ``at``), ISO-8601 with milliseconds and Z."""
    when = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fingerprint_parts(settings: Settings, extra: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    """What must not change between an interrupted run and its resumption (``extra``:
    a sync's own parts, see ``SyncOptions.fingerprint_parts``)."""
    h = settings.harvest
    return {"api": settings.api.base, "catalogs": sorted(h.catalogs), "shard": h.shard,
            "page_size": h.page_size, "details": h.details, "gzip": settings.output.gzip,
            **(extra or {})}


def fingerprint(settings: Settings, extra: dict[str, Any] | None = None) -> str:
    """A short hash of :func:`fingerprint_parts`."""
    raw = orjson.dumps(fingerprint_parts(settings, extra), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()[:16]


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    names = {"catalogs": "the catalog set (--catalog)", "shard": "--shard",
             "page_size": "--page-size",
             "details": "details on/off (--no-details)", "gzip": "--gzip",
             "api": "the API base URL", "as_of": "--as-of", "max_age": "--max-age"}
    changed = [names[k] for k in names if old.get(k) != new.get(k)]
    return ", ".join(changed) or "the settings"


@dataclass(slots=True)
class CatalogState:
    """In-memory counters of one catalog; persisted as ``info`` at every checkpoint."""

    uuid: str
    title: str
    phase: str = "new"
    count_reported: int | None = None
    unique: int = 0
    duplicates: int = 0
    keyless: int = 0  #: listed rows with neither key nor uuid (reported once, never a gap)
    pages: int = 0
    pages_planned: int = 0
    walks: int = 0
    page_size_used: int = 0
    clamped: bool = False
    gaps: int = 0
    details_total: int = 0
    details_done: int = 0
    listing_only: int = 0
    not_found: int = 0
    failed: int = 0
    error: str | None = None
    files: dict[str, Any] = field(default_factory=dict)
    sync: dict[str, Any] = field(default_factory=dict)
    outstanding: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    deferred: list[DetailJob] = field(default_factory=list)

    _PERSIST: tuple[str, ...] = (
        "count_reported", "unique", "duplicates", "keyless", "pages", "pages_planned", "walks",
        "page_size_used", "clamped", "gaps", "details_total", "details_done", "listing_only",
        "not_found", "failed", "error", "files", "sync")

    def info(self) -> dict[str, Any]:
        """The persisted counters."""
        return {k: getattr(self, k) for k in self._PERSIST}

    def load(self, info: dict[str, Any]) -> None:
        """Restore counters saved by an earlier session."""
        for k in self._PERSIST:
            if k in info:
                setattr(self, k, info[k])

    def manifest(self) -> dict[str, Any]:
        """This catalog's entry in the manifest."""
        files = self.files
        return {
            "title": self.title,
            "dir": catalog_dirname(self.uuid),
            "status": self.phase,
            "count_reported": self.count_reported,
            "unique_found": self.unique,
            "duplicates_dropped": self.duplicates,
            "keyless": self.keyless,
            "gaps": self.gaps,
            "walks": self.walks,
            "pages": self.pages,
            "page_size_used": self.page_size_used,
            "page_size_clamped": self.clamped,
            "details_fetched": self.details_done,
            "listing_only": self.listing_only,
            "not_found": self.not_found,
            "failed": self.failed,
            "error": self.error,
            "lines": {name: f["lines"] for name, f in files.items()},
            "files": files,
            **({"sync": self.sync} if self.sync else {}),
        }


@dataclass(slots=True)
class DetailJob:
    """One item whose detail is to be fetched."""

    cs: CatalogState
    content_type: str
    key: str
    digest: int
    listing: JSONDict
    attempt: int = 0
    previous: Indexed | None = None  #: sync: the record to revalidate (If-None-Match)
    fallback: Indexed | None = None  #: sync: the record kept (stale) if this fetch fails
    deferred_at: float = 0.0  #: clock time of its last 404 (retried once that is old enough)


@dataclass(slots=True)
class RunResult:
    """How a run ended."""

    status: str
    exit_code: int
    out: Path
    manifest: dict[str, Any] | None
    message: str = ""


def build_manifest(*, run_id: str, started_at: str, ended_at: str, status: str,
                   config: dict[str, Any], catalogs: list[CatalogState],
                   files: dict[str, Any], errors: int, stats: dict[str, Any]
                   ) -> dict[str, Any]:
    """The run's ``manifest.json`` (the contract documented in the README), redacted:
    titles, errors and config may quote what a server sent."""
    return REDACTOR.scrub_obj({
        "run_id": run_id,
        "started_at": started_at,
        "ended_at": ended_at,
        "status": status,
        "version": __version__,
        "config": config,
        "catalogs": {cs.uuid: cs.manifest() for cs in catalogs},
        "files": files,
        "totals": {
            "catalogs": len(catalogs),
            "items": sum(cs.unique for cs in catalogs),
            "details_fetched": sum(cs.details_done for cs in catalogs),
            "not_found": sum(cs.not_found for cs in catalogs),
            "failed": sum(cs.failed for cs in catalogs),
            "gaps": sum(cs.gaps for cs in catalogs),
            "errors": errors,
            **stats,
        },
    })


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None if it is missing or not one."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
