"""``manifest.json``: the typed record of how a run ended (the README's contract).

Frozen values with ``to_json()`` / ``from_json()``: :class:`Manifest` holds one
:class:`CatalogEntry` per catalog and the run's :class:`Totals`. ``to_json()`` is the
only way out to a file or a caller, and it redacts (titles, errors and config may quote
what a server sent). Must not write files or decide a run's status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harvester import __version__
from harvester.outputs import catalog_dirname
from harvester.redact import REDACTOR
from harvester.run import CatalogState


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One catalog's line in the manifest."""

    title: str
    dir: str
    status: str
    count_reported: int | None
    unique_found: int
    duplicates_dropped: int
    keyless: int
    gaps: int
    walks: int
    pages: int
    page_size_used: int
    page_size_clamped: bool
    details_fetched: int
    listing_only: int
    not_found: int
    failed: int
    error: str | None
    files: Mapping[str, Any]
    sync: Mapping[str, Any] = field(default_factory=dict)  #: a sync's counts; else empty

    @classmethod
    def of(cls, cs: CatalogState) -> CatalogEntry:
        """The entry of a catalog's final state."""
        return cls(
            title=cs.title, dir=catalog_dirname(cs.uuid), status=str(cs.phase),
            count_reported=cs.count_reported, unique_found=cs.unique,
            duplicates_dropped=cs.duplicates, keyless=cs.keyless, gaps=cs.gaps,
            walks=cs.walks, pages=cs.pages, page_size_used=cs.page_size_used,
            page_size_clamped=cs.clamped, details_fetched=cs.details_done,
            listing_only=cs.listing_only, not_found=cs.not_found, failed=cs.failed,
            error=cs.error, files=dict(cs.files), sync=dict(cs.sync))

    def to_json(self) -> dict[str, Any]:
        """The JSON object (``lines`` is derived from ``files``; ``sync`` only if set)."""
        out: dict[str, Any] = {}
        for name in self.__slots__:  # declaration order, as documented
            if name == "files":
                out["lines"] = {n: f["lines"] for n, f in self.files.items()}
            if name != "sync":
                out[name] = getattr(self, name)
        if self.sync:
            out["sync"] = dict(self.sync)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CatalogEntry:
        """Read an entry back (unknown keys, like ``lines``, are ignored)."""
        return cls(**{n: data[n] for n in cls.__slots__ if n in data})


#: Keys of :class:`Totals` that are counted from the catalogs (the rest are stats).
_COUNTED = ("catalogs", "items", "details_fetched", "not_found", "failed", "gaps", "errors")


@dataclass(frozen=True, slots=True)
class Totals:
    """The run's totals: counts over its catalogs, then its request statistics."""

    catalogs: int
    items: int
    details_fetched: int
    not_found: int
    failed: int
    gaps: int
    errors: int
    stats: Mapping[str, Any] = field(default_factory=dict)  #: flattened into the JSON

    @classmethod
    def of(cls, catalogs: Iterable[CatalogState], *, errors: int,
           stats: Mapping[str, Any]) -> Totals:
        """Totals over final catalog states."""
        cats = list(catalogs)
        return cls(catalogs=len(cats), items=sum(c.unique for c in cats),
                   details_fetched=sum(c.details_done for c in cats),
                   not_found=sum(c.not_found for c in cats),
                   failed=sum(c.failed for c in cats), gaps=sum(c.gaps for c in cats),
                   errors=errors, stats=dict(stats))

    def to_json(self) -> dict[str, Any]:
        """The JSON object: the counts, then the stats at the same level."""
        return {**{k: getattr(self, k) for k in _COUNTED}, **self.stats}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Totals:
        """Read totals back; every key that is not a count is a stat."""
        return cls(**{k: data[k] for k in _COUNTED},
                   stats={k: v for k, v in data.items() if k not in _COUNTED})


@dataclass(frozen=True, slots=True)
class Manifest:
    """A finished run's ``manifest.json``."""

    run_id: str
    started_at: str
    ended_at: str
    status: str
    config: Mapping[str, Any]
    catalogs: Mapping[str, CatalogEntry]
    files: Mapping[str, Any]
    totals: Totals
    version: str = __version__
    #: a sync's extras (``stale``, ``deferred``, ``gone_catalogs``); empty for a harvest
    sync: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``manifest.json``, redacted."""
        return REDACTOR.scrub_obj({
            "run_id": self.run_id, "started_at": self.started_at,
            "ended_at": self.ended_at, "status": self.status, "version": self.version,
            "config": dict(self.config),
            "catalogs": {u: c.to_json() for u, c in self.catalogs.items()},
            "files": dict(self.files), "totals": self.totals.to_json(), **self.sync})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """Read a manifest back (a harvest's or a sync's)."""
        return cls(
            run_id=data["run_id"], started_at=data["started_at"],
            ended_at=data["ended_at"], status=data["status"], version=data["version"],
            config=data["config"],
            catalogs={u: CatalogEntry.from_json(c) for u, c in data["catalogs"].items()},
            files=data["files"], totals=Totals.from_json(data["totals"]),
            sync={k: data[k] for k in ("stale", "deferred", "gone_catalogs") if k in data})
