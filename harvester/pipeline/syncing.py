"""How the detail stage decides per item: fetch everything (a harvest) or only what
changed since the previous snapshot (a sync).

The harvest core is the same for both; a :class:`DetailDecider` plugs in at the few
points where a sync differs: carrying unchanged records, revalidating with ETags,
keeping a failed item's or catalog's previous record (stale), indexing a committed
catalog and writing its change feed, catalogs gone from the list, and the manifest's
sync block. :class:`FetchAll` is the harvest's decider; :class:`SyncDecider` the sync's.
Must not create tasks or talk HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from harvester.carried import carry_mark
from harvester.changes import changes_path, write_changes, write_gone
from harvester.config import Settings
from harvester.delta import (
    CARRY,
    FETCH_CHANGED,
    FETCH_NEW,
    REFRESH,
    RETRY,
    Indexed,
    RefreshRules,
    SnapshotIndex,
    SyncOptions,
    carried_line,
    deferred_line,
    stale_line,
)
from harvester.errors import HarvestError
from harvester.listing import spool_winners
from harvester.models import Catalog, JSONDict
from harvester.obs import event
from harvester.pipeline.emit import Emitter
from harvester.pipeline.records import describe, meta
from harvester.run import CatalogState, Phase
from harvester.sinks import encode_item
from harvester.spool import SpoolEntry
from harvester.state import Ledger
from harvester.writer import Writer


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
    priority: tuple[int, str] = (0, "")  #: its place in a deadline's queue (lowest first)


class DetailDecider(Protocol):
    """What the detail stage asks about each item and catalog."""

    #: whether detail lines keep the response's ETag (for the next night's revalidation)
    keeps_etag: bool

    def fingerprint_parts(self) -> dict[str, Any] | None:
        """What a resumed run must share besides the harvest settings."""

    def order(self, catalog: str, spool: Path) -> Iterator[SpoolEntry]:
        """The spooled listing of a catalog, in the order to work through it."""

    def decide(self, job: DetailJob) -> bytes | None:
        """A line that answers the item without a request (carried), or None to fetch
        it (``job.previous`` / ``job.fallback`` set as needed)."""

    def revalidated(self, job: DetailJob, prev: Indexed, etag: str | None, now: str) -> bytes:
        """The line for an item whose revalidation answered 304."""

    def defer(self, job: DetailJob, now: str) -> bytes:
        """The line for an item the deadline left no time to fetch (kept for next night)."""

    def keep(self, job: DetailJob, kind: str, exc: HarvestError, now: str) -> bytes | None:
        """A line keeping the item's previous record (stale) after its fetch failed."""

    def error_extra(self, job: DetailJob) -> dict[str, Any] | None:
        """Extra fields of a failed detail's error record."""

    def gone(self, listed: dict[str, Catalog], *, complete: bool) -> list[str]:
        """Catalogs of the previous snapshot, in scope, that the list no longer has."""

    async def catalog_failed(self, cs: CatalogState, exc: HarvestError, emit: Emitter,
                             ledger: Ledger, writer: Writer) -> None:
        """A listed catalog failed (already recorded as failed)."""

    def committed(self, cs: CatalogState, writer: Writer) -> None:
        """A catalog's files are committed: index them, count them."""

    def finish(self, out: Path, catalogs: list[CatalogState], gone: list[str]
               ) -> dict[str, Any]:
        """After the last catalog: the ``gone`` catalogs' feeds; the manifest's extras."""

    def close(self) -> None:
        """Release what the decider opened."""


class FetchAll:
    """A harvest: fetch the detail of every listed item, keep nothing from before."""

    keeps_etag = False

    def fingerprint_parts(self) -> dict[str, Any] | None:
        return None

    def order(self, catalog: str, spool: Path) -> Iterator[SpoolEntry]:
        return spool_winners(spool)

    def decide(self, job: DetailJob) -> bytes | None:
        return None

    def revalidated(self, job: DetailJob, prev: Indexed, etag: str | None,
                    now: str) -> bytes:
        raise AssertionError("a harvest never revalidates")

    def defer(self, job: DetailJob, now: str) -> bytes:
        raise AssertionError("a harvest has no deadline")

    def keep(self, job: DetailJob, kind: str, exc: HarvestError,
             now: str) -> bytes | None:
        return None

    def error_extra(self, job: DetailJob) -> dict[str, Any] | None:
        return None

    def gone(self, listed: dict[str, Catalog], *, complete: bool) -> list[str]:
        return []

    async def catalog_failed(self, cs: CatalogState, exc: HarvestError,
                             emit: Emitter, ledger: Ledger, writer: Writer) -> None:
        return None

    def committed(self, cs: CatalogState, writer: Writer) -> None:
        return None

    def finish(self, out: Path, catalogs: list[CatalogState], gone: list[str]
               ) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        return None


#: Under a deadline, the order of the requests a night makes (see DetailJob.priority).
_RANK: Final = {RETRY: 0, FETCH_NEW: 1, FETCH_CHANGED: 2, REFRESH: 3}

#: The sync block's names of the decisions (``not_modified``: a refresh answered 304).
_COUNT_NAMES = {CARRY: "carried", FETCH_NEW: "fetched_new", FETCH_CHANGED: "fetched_changed",
                REFRESH: "refreshed", RETRY: "retried_stale"}


class SyncDecider:
    """A sync: carry unchanged records, revalidate due ones, keep failures stale, and
    write each catalog's change feed against the previous snapshot."""

    keeps_etag = True

    def __init__(self, settings: Settings, options: SyncOptions, out: Path) -> None:
        self.settings, self.options, self.out = settings, options, out
        self.rules = RefreshRules(options)
        self.index = SnapshotIndex(out / "index.sqlite")

    @property
    def previous(self) -> SnapshotIndex | None:
        """The previous snapshot's index, if there is one."""
        return self.rules.previous

    def fingerprint_parts(self) -> dict[str, Any] | None:
        """A snapshot's date and refresh plan."""
        return self.options.fingerprint_parts()

    def order(self, catalog: str, spool: Path) -> Iterator[SpoolEntry]:
        """Items an earlier night kept stale (their fetch failed, or a deadline deferred
        it) first: they have waited longest. (Under a deadline the detail queue also
        orders by :attr:`DetailJob.priority`, across catalogs.)"""
        first = self.previous.stale_digests(catalog) if self.previous is not None else set()
        if first:
            yield from (e for e in spool_winners(spool) if e.digest in first)
        yield from (e for e in spool_winners(spool) if e.digest not in first)

    def decide(self, job: DetailJob) -> bytes | None:
        """Carry an unchanged record forward; otherwise fetch (revalidating if due)."""
        decision, prev = self.rules.decide(job.cs.uuid, job.digest, job.listing)
        self._count(job.cs, _COUNT_NAMES.get(decision, decision))
        if decision == CARRY and prev is not None:
            return carried_line(prev, job.listing)
        job.fallback = prev  # listed, so never gone: kept (stale) if the fetch fails
        # Stale retries, new, changed, then refreshes oldest first (used under a deadline).
        job.priority = (_RANK.get(decision, 0),
                        (prev.fetched_at or "") if decision == REFRESH and prev else "")
        if decision == REFRESH:
            job.previous = prev
        return None

    def revalidated(self, job: DetailJob, prev: Indexed, etag: str | None, now: str) -> bytes:
        """Unchanged since we last fetched it: the stored record, revalidated now."""
        self._count(job.cs, "not_modified")
        return carried_line(prev, job.listing, fetched_at=now, etag=etag or prev.etag)

    def defer(self, job: DetailJob, now: str) -> bytes:
        """Not reached before the deadline: the previous record stays, marked deferred;
        a new item gets its listing record (``source: "listing"``), marked too. Either
        way the next night fetches it first; neither is a failure."""
        self._count(job.cs, "deferred")
        if job.fallback is not None:
            return deferred_line(job.fallback.line, now)
        m = meta(job.cs.uuid, job.content_type, job.key, job.listing, now, "listing")
        return deferred_line(encode_item(job.listing, m), now)

    def keep(self, job: DetailJob, kind: str, exc: HarvestError, now: str) -> bytes | None:
        """A listed item whose detail failed is not gone: its previous record stays,
        marked stale, and the next night retries it first."""
        if job.fallback is None:
            return None
        return stale_line(job.fallback.line, f"{kind} ({describe(exc)})", now)

    def error_extra(self, job: DetailJob) -> dict[str, Any] | None:
        """Whether a previous record was kept for the failed item."""
        return {"stale": job.fallback is not None}

    def gone(self, listed: dict[str, Catalog], *, complete: bool) -> list[str]:
        """The previous snapshot's catalogs, within this run's scope (``--catalog``,
        ``--shard``), that the catalog list no longer has. Only a complete list (as many
        catalogs as its ``count``) can say a catalog is gone; a listed catalog that fails
        is never gone."""
        if self.previous is None:
            return []
        h = self.settings.harvest
        missing = [u for u in sorted(self.previous.catalogs())
                   if u not in listed and (not h.catalogs or u in h.catalogs)
                   and h.in_shard(u)]
        if missing and not complete:
            event("sync.catalog_list_incomplete", missing=len(missing), listed=len(listed))
            return []
        return missing

    async def catalog_failed(self, cs: CatalogState, exc: HarvestError, emit: Emitter,
                             ledger: Ledger, writer: Writer) -> None:
        """A listed catalog that failed is not gone. Its previous records go into this
        snapshot unchanged, marked stale, with no deletes; the next night retries it.
        Items this night already wrote (an earlier session's) stay as written. The carried
        lines are no work done: a resume lists the catalog again and cuts them first, back
        to the mark taken here (see :mod:`harvester.carried`)."""
        await emit.barrier()
        cs.carried_from = carry_mark(ledger, writer, cs.uuid)
        await emit.counters(cs)
        await emit.barrier()  # the mark is durable before the first carried line
        written = ledger.done(cs.uuid)
        reason, at = f"catalog_failed ({describe(exc)})", emit.now()
        kept = 0
        for digest, ctype, line in self.previous.lines(cs.uuid) if self.previous else ():
            if digest not in written:
                # Done once written (as every line is); a resume cuts it before relisting.
                await emit.item(cs.uuid, ctype, stale_line(line, reason, at), digest)
                kept += 1
        infos = await emit.commit_catalog(cs.uuid)
        cs.files = {name: i.as_dict() for name, i in infos.items()}
        self._index_catalog(cs, writer)
        cs.sync["carried_forward"] = kept > 0
        await emit.counters(cs)
        await emit.phase(cs.uuid, Phase.FAILED)  # the commit said "committing"
        event("sync.catalog_carried", catalog=cs.uuid, items=kept)

    def committed(self, cs: CatalogState, writer: Writer) -> None:
        """Index the committed catalog, write its change feed, count its sync block."""
        self._index_catalog(cs, writer)
        self._recount(cs)

    def finish(self, out: Path, catalogs: list[CatalogState], gone: list[str]
               ) -> dict[str, Any]:
        """A change feed of deletes for every item of each gone catalog; the manifest's
        ``stale`` and ``gone_catalogs`` blocks."""
        feeds: dict[str, dict[str, Any]] = {}
        if self.previous is not None:
            for uuid in gone:
                feeds[uuid] = write_gone(self.previous, uuid, changes_path(out, uuid))
                event("sync.catalog_gone", catalog=uuid, deletes=feeds[uuid]["deletes"])
        return {
            "deferred": {"items": sum(int(cs.sync.get("deferred", 0)) for cs in catalogs),
                         "new": sum(int(cs.sync.get("deferred_new", 0)) for cs in catalogs)},
            "stale": {"items": sum(int(cs.sync.get("stale", 0)) for cs in catalogs),
                      "catalogs": [cs.uuid for cs in catalogs
                                   if cs.sync.get("carried_forward")]},
            "gone_catalogs": {u: feeds.get(u, {"deletes": 0}) for u in gone}}

    def close(self) -> None:
        """Close both indexes."""
        self.rules.close()
        self.index.close()

    @staticmethod
    def _count(cs: CatalogState, name: str) -> None:
        cs.sync[name] = cs.sync.get(name, 0) + 1

    def _index_catalog(self, cs: CatalogState, writer: Writer) -> None:
        """Index the committed catalog and write its change feed (idempotent on resume)."""
        listing: Iterable[tuple[int, JSONDict]] | None = (
            ((e.digest, e.record) for e in spool_winners(writer.spool(cs.uuid).path))
            if self.settings.harvest.details else None)
        self.index.rebuild(cs.uuid, listing, writer.item_files(cs.uuid),
                           compressed=self.settings.output.gzip)
        # Failed details are kept (stale), so they never look deleted; a failed catalog's
        # listing was cut short, so it can say nothing is gone. Keyless rows are listed,
        # but may be previous items without their key: their types' deletes wait.
        complete = (cs.phase != Phase.FAILED and cs.count_reported is not None
                    and cs.gaps == 0 and cs.unique + cs.keyless >= cs.count_reported)
        counts = write_changes(self.index, self.previous, cs.uuid,
                               changes_path(self.out, cs.uuid), listing_complete=complete,
                               keyless_types=cs.keyless_types)
        cs.sync.update(counts.as_dict())
        cs.sync["stale"], cs.sync["stale_keys"] = self.index.stale_summary(cs.uuid)
        cs.sync["previous"] = self.options.previous.name if self.options.previous else None
        if counts.deletes_suppressed:
            event("sync.deletes_suppressed", catalog=cs.uuid, unique=cs.unique,
                  count=cs.count_reported, pending=counts.deletes_pending)
        elif counts.deletes_held_types:
            event("sync.deletes_held", catalog=cs.uuid, keyless=cs.keyless,
                  types=",".join(counts.deletes_held_types), pending=counts.deletes_pending)

    def _recount(self, cs: CatalogState) -> None:
        """The sync block's item counts from the committed catalog and the previous
        snapshot, like :func:`~harvester.pipeline.records.recount`: a resumed sync counts
        every session once, and only records the snapshot holds (one kept stale tonight
        is counted as ``stale``). ``not_modified`` is a refresh that found the record
        unchanged (a 304 keeps it)."""
        counts = dict.fromkeys(("carried", "fetched_new", "fetched_changed", "refreshed",
                                "retried_stale", "not_modified", "deferred",
                                "deferred_new"), 0)
        for digest, _, _ in self.index.digests(cs.uuid):
            now = self.index.get(cs.uuid, digest)
            if now is not None and now.deferred:
                counts["deferred"] += 1
                counts["deferred_new"] += now.source != "detail" and (
                    self.previous is None or self.previous.get(cs.uuid, digest) is None)
            if now is None or now.source != "detail" or now.stale:
                continue
            prev = self.previous.get(cs.uuid, digest) if self.previous is not None else None
            if prev is None:
                counts["fetched_new"] += 1
            elif prev.stale:
                counts["retried_stale"] += 1
            elif prev.source != "detail" or prev.listing_hash != now.listing_hash:
                counts["fetched_changed"] += 1
            elif prev.fetched_at == now.fetched_at:
                counts["carried"] += 1
            else:
                counts["refreshed"] += 1
                counts["not_modified"] += prev.record_hash == now.record_hash
        cs.sync.update(counts)
