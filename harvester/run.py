"""The state of one harvest run: settings fingerprint, catalog phases and counters, outcome.

Plain values and pure functions, shared by the pipeline (which fills them), the learner
export and the CLI (which report them). Owns the phase machine (:class:`Phase`,
:meth:`CatalogState.advance`). Must not do I/O (besides :func:`read_json`) or hold tasks,
queues or events.
"""

from __future__ import annotations

import hashlib
import os
import uuid as uuidlib
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from harvester.config import Settings
from harvester.errors import ApiError, IllegalPhase, SinkError
from harvester.sinks import open_ours

if TYPE_CHECKING:
    from harvester.manifest import Manifest
    from harvester.paginate import ListingPlan

EXIT_OK: Final = 0
EXIT_UNEXPECTED: Final = 1
EXIT_USAGE: Final = 2
EXIT_PARTIAL: Final = 3


def now_iso(at: float | None = None) -> str:
    """UTC now (or epoch ``at``), ISO-8601 with milliseconds and Z."""
    when = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_id() -> str:
    """A fresh run id: UTC start time to the second, then 8 random hex digits."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuidlib.uuid4().hex[:8]}"


def error_record(error: BaseException | str, **context: Any) -> dict[str, Any]:
    """An error record (``errors.ndjson``, a learner manifest's ``errors``): ``context``
    in the order given (None values left out), then the HTTP status, the error class and
    the message. The message is not redacted here; the file or manifest writer does."""
    rec = {k: v for k, v in context.items() if v is not None}
    if isinstance(error, ApiError):
        rec["status"] = error.status
    if isinstance(error, BaseException):
        rec["error"] = type(error).__name__
    rec["message"] = str(error)
    return rec


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


class Phase(StrEnum):
    """Where a catalog is in its job; persisted in the ledger by value.

    ``committing`` is the writer's: set in the ledger while a catalog's files are renamed.
    """

    NEW = "new"
    LISTING = "listing"
    LISTED = "listed"
    DETAILS = "details"
    COMMITTING = "committing"
    DONE = "done"
    FAILED = "failed"


#: The legal moves (besides staying put). A failed catalog only goes back to listing (a
#: rerun retries it); it can never become done without succeeding. A committed one goes
#: back to listing or details when a rerun redoes its failed work.
_MOVES: Final[dict[Phase, frozenset[Phase]]] = {
    Phase.NEW: frozenset({Phase.LISTING, Phase.FAILED}),
    Phase.LISTING: frozenset({Phase.LISTED, Phase.FAILED}),
    Phase.LISTED: frozenset({Phase.DETAILS, Phase.LISTING, Phase.FAILED}),
    Phase.DETAILS: frozenset({Phase.DONE, Phase.LISTING, Phase.FAILED}),
    Phase.COMMITTING: frozenset({Phase.DONE, Phase.DETAILS, Phase.LISTING, Phase.FAILED}),
    Phase.DONE: frozenset({Phase.DETAILS, Phase.LISTING}),
    Phase.FAILED: frozenset({Phase.LISTING}),
}


@dataclass(slots=True, kw_only=True)
class WalkCounters:
    """What walking one list found: a catalog's listing or an enterprise's learner
    summary. Both fill it the same way (:meth:`planned` from each walk's page 1)."""

    count_reported: int | None = None
    unique: int = 0
    duplicates: int = 0
    pages: int = 0
    pages_planned: int = 0
    walks: int = 0
    page_size_used: int = 0
    clamped: bool = False
    gaps: int = 0

    def planned(self, plan: ListingPlan) -> None:
        """Page 1 of a walk arrived: keep what it says about the whole list."""
        self.count_reported = plan.count
        self.page_size_used = plan.page_size
        self.clamped = plan.clamped
        self.pages_planned = plan.total_pages or 0


@dataclass(slots=True, kw_only=True)
class CatalogCounts(WalkCounters):
    """The persisted counters of one catalog (the ledger's ``info``), and nothing live."""

    keyless: int = 0  #: listed rows with neither key nor uuid (reported once, never a gap)
    keyless_types: list[str] = field(default_factory=list)  #: their content types
    details_total: int = 0
    details_done: int = 0
    listing_only: int = 0
    not_found: int = 0
    failed: int = 0
    error: str | None = None
    files: dict[str, Any] = field(default_factory=dict)
    sync: dict[str, Any] = field(default_factory=dict)
    #: a sync's failed catalog: its item files' committed ``[size, lines]`` (by path in
    #: OUT) before its previous records were carried in; a relist cuts them back to it
    carried_from: dict[str, list[int]] | None = None

    def info(self) -> dict[str, Any]:
        """The persisted counters, as saved at every checkpoint."""
        return {f.name: getattr(self, f.name) for f in fields(CatalogCounts)}

    def load(self, info: dict[str, Any]) -> None:
        """Restore counters saved by an earlier session (unknown keys are ignored)."""
        for f in fields(CatalogCounts):
            if f.name in info:
                setattr(self, f.name, info[f.name])


@dataclass(slots=True)
class CatalogState(CatalogCounts):
    """One catalog of a run: identity, phase and counters. Live scheduling objects
    (queues, events) belong to the stages that use them, never to this record."""

    uuid: str
    title: str
    phase: Phase = Phase.NEW

    def advance(self, to: Phase) -> None:
        """Move to phase ``to``; an illegal move (a failed catalog becoming done, say)
        raises :class:`~harvester.errors.IllegalPhase`."""
        if to != self.phase and to not in _MOVES[self.phase]:
            raise IllegalPhase(f"catalog {self.uuid}: {self.phase} -> {to} is not allowed")
        self.phase = to

    @property
    def settled(self) -> bool:
        """Done or failed: nothing more happens to it in this session."""
        return self.phase in (Phase.DONE, Phase.FAILED)


@dataclass(slots=True)
class RunResult:
    """How a run ended."""

    status: str
    exit_code: int
    out: Path
    manifest: dict[str, Any] | None
    message: str = ""


@dataclass(frozen=True, slots=True)
class SyncResult:
    """How a sync night ended: the snapshot's run, and what it did to the store."""

    run: RunResult
    manifest: Manifest
    snapshot: Path
    previous: Path | None
    promoted: bool  #: the snapshot became ``latest``
    pruned: list[str]
    notice: str | None = None  #: an unfinished snapshot was abandoned (why)

    @property
    def status(self) -> str:
        """``complete`` or ``partial``, as the snapshot's manifest says."""
        return self.run.status

    @property
    def exit_code(self) -> int:
        """The command's exit status (0 complete, 3 partial)."""
        return self.run.exit_code


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None if it is missing or not one."""
    try:
        # Never through a link, never blocking on a FIFO planted in its place.
        with os.fdopen(open_ours(path), "rb") as fh:
            data = orjson.loads(fh.read())
    except (OSError, SinkError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
