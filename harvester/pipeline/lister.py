"""Listing: the catalog list, and each catalog's items, deduplicated into its spool.

:func:`discover_catalogs` walks the catalog list (or reads it back from the ledger) and
picks this run's catalogs. :class:`CatalogLister` walks one catalog's content list,
again while walks still find items (up to ``max_rewalks``), dedupes rows by
``(content_type, key|uuid)`` (see :mod:`harvester.listing`), reports keyless rows once,
and spools every new version through the emitter. Must not fetch details, commit files,
or write or parse spool lines itself (:class:`~harvester.spool.Spool` owns the format).
"""

from __future__ import annotations

from collections.abc import Awaitable

import orjson

from harvester.client import ApiClient, ThrottleClass, catalogs_path, content_path
from harvester.config import Settings
from harvester.errors import HarvestError
from harvester.listing import Seen, keyless_identity, version_of
from harvester.models import (
    UNKNOWN_TYPE,
    Catalog,
    Page,
    content_type_of,
    item_key,
    key_digest,
)
from harvester.obs import event
from harvester.paginate import ListingPlan
from harvester.pipeline.emit import Emitter
from harvester.pipeline.syncing import DetailDecider
from harvester.pipeline.walk import walk_pages, walk_until_complete
from harvester.run import CatalogState, Phase
from harvester.sinks import encode_record
from harvester.spool import Spool
from harvester.state import Ledger, WalkRecord
from harvester.writer import Writer


async def discover_catalogs(client: ApiClient, settings: Settings, ledger: Ledger,
                            decider: DetailDecider
                            ) -> tuple[list[Catalog], list[CatalogState], list[str]]:
    """This run's catalogs (their records and states) and the catalogs gone since the
    previous snapshot; read back from the ledger on resume."""
    saved = ledger.catalogs()
    if saved:
        gone = orjson.loads(ledger.meta("gone_catalogs") or "[]")
        cats = [Catalog(u, str(r.get("title", "")), r) for u, r, _, _ in saved]
        states = []
        for u, r, phase, info in saved:
            cs = CatalogState(u, str(r.get("title", "")), phase=Phase(phase))
            cs.load(info)
            states.append(cs)
        return cats, states, gone
    listed: dict[str, Catalog] = {}
    reported: list[int | None] = []

    async def take(page: Page) -> None:
        if page.number == 1:
            reported.append(page.count)
        for rec in page.results:
            u = rec.get("uuid")
            if isinstance(u, str) and u and u not in listed:
                listed[u] = Catalog(u, str(rec.get("title") or ""), rec)

    await walk_pages(client, ThrottleClass.LMS, catalogs_path(), 100, take, parallel=1)
    complete = bool(reported) and reported[0] is not None and len(listed) >= reported[0]
    gone = decider.gone(listed, complete=complete)
    ledger.set_meta(gone_catalogs=orjson.dumps(gone).decode())
    wanted = settings.harvest.catalogs
    if wanted:
        # A named catalog that is gone is deleted, not tried (it could only fail).
        cats = [listed.get(u) or Catalog(u, "", {"uuid": u}) for u in wanted if u not in gone]
        missing = [u for u in wanted if u not in listed]
        if missing:
            event("harvest.catalog_not_listed", catalogs=",".join(missing))
    else:
        cats = list(listed.values())
    cats = [c for c in cats if settings.harvest.in_shard(c.uuid)]
    ledger.save_catalogs((c.uuid, c.record) for c in cats)
    event("harvest.catalogs", count=len(cats))
    return cats, [CatalogState(c.uuid, c.title) for c in cats], gone


class CatalogLister:
    """Lists catalogs' content into their spools, walk after walk until complete."""

    def __init__(self, client: ApiClient, settings: Settings, emit: Emitter, ledger: Ledger,
                 writer: Writer) -> None:
        self.client, self.settings, self.emit = client, settings, emit
        self.ledger, self.writer = ledger, writer

    async def list_catalog(self, cs: CatalogState) -> None:
        """List ``cs`` (resuming its walk) and leave it ``listed``, its spool durable."""
        # A session can die before even "listing" is recorded, with lines already spooled:
        # whatever is on disk is already seen.
        seen = self.rebuild_seen(cs)
        if cs.phase == Phase.NEW:
            await self.emit.advance(cs, Phase.LISTING)

        def walk(n: int) -> Awaitable[bool]:
            cs.walks = n
            return self._walk(cs, n, seen)

        # A keyless row is listed, just unusable: it counts as found, never as a gap.
        await walk_until_complete(walk, lambda: (cs.unique + cs.keyless, cs.count_reported),
                                  first=max(1, self.ledger.last_walk(cs.uuid)),
                                  max_rewalks=self.settings.harvest.max_rewalks,
                                  event_name="harvest.rewalk", catalog=cs.uuid)
        cs.gaps = max(0, (cs.count_reported or 0) - cs.unique - cs.keyless)
        if cs.gaps:
            await self.emit.error(cs.uuid, "gap",
                                  f"{cs.gaps} of {cs.count_reported} items never appeared in "
                                  f"{cs.walks} walks of the list")
        await self.emit.counters(cs)
        # Also without details: the listing records leave the spool in the details phase.
        await self.emit.advance(cs, Phase.LISTED)
        await self.emit.barrier()
        event("harvest.listed", catalog=cs.uuid, count=cs.count_reported, unique=cs.unique,
              duplicates=cs.duplicates, pages=cs.pages, page_size=cs.page_size_used,
              walks=cs.walks)

    def rebuild_seen(self, cs: CatalogState) -> Seen:
        """On resume mid-listing: the items already spooled, and the keyless rows
        already reported (their ``no_key`` lines carry the record's hash)."""
        seen = Seen()
        for entry in self.writer.spool(cs.uuid).entries():
            seen.add(entry.digest, version_of(orjson.dumps(entry.record)))
        types: set[str] = set()
        for line in self.ledger.errors(cs.uuid):
            e = orjson.loads(line)
            ident = e.get("keyless_id", e.get("record_hash"))  # the latter: older runs
            if e.get("kind") == "no_key" and e.get("catalog_uuid") == cs.uuid \
                    and isinstance(ident, str):
                seen.keyless.add(int(ident, 16))
                types.add(str(e.get("content_type", UNKNOWN_TYPE)))
        cs.unique, cs.keyless = len(seen.ids), len(seen.keyless)
        cs.keyless_types = sorted(types)
        return seen

    async def _walk(self, cs: CatalogState, walk: int, seen: Seen) -> bool:
        """One walk of a catalog's list; False when a page of it failed."""
        done_pages = self.ledger.pages_done(cs.uuid, walk)
        recorded = self.ledger.walk_plan(cs.uuid, walk)
        plan: ListingPlan | None = None
        if recorded is not None and 1 in done_pages:
            plan = ListingPlan(self.settings.harvest.page_size, count=recorded.count,
                               page_size=recorded.page_size, total_pages=recorded.total_pages)

        async def take(page: Page) -> None:
            await self._take_page(cs, walk, page, seen)

        async def on_plan(p: ListingPlan) -> None:
            cs.planned(p)
            await self.emit.walk_planned(cs.uuid, walk,
                                         WalkRecord(p.count, p.page_size, p.total_pages))
            if p.clamped:
                event("harvest.page_size_clamped", catalog=cs.uuid,
                      asked=self.settings.harvest.page_size, got=p.page_size)

        failed: list[int] = []

        async def on_page_error(n: int, exc: HarvestError) -> None:
            failed.append(n)
            await self.emit.error(cs.uuid, "page_failed", exc, page=n)

        walked = await walk_pages(
            self.client, ThrottleClass.CONTENT, content_path(cs.uuid),
            self.settings.harvest.page_size, take,
            parallel=self.settings.limits.page_concurrency, plan=plan, skip=done_pages,
            on_plan=on_plan, on_page_error=on_page_error)
        if walked is not None and walked.count is not None:
            cs.count_reported = walked.count  # the list may have grown while we walked it
        return not failed

    async def _take_page(self, cs: CatalogState, walk: int, page: Page, seen: Seen) -> None:
        for rec in page.results:
            ctype = content_type_of(rec)
            key = item_key(rec, ctype)
            raw = encode_record(rec)  # NestedTooDeep fails the catalog, not the run
            version = version_of(raw)
            if key is None:
                ident = keyless_identity(rec, ctype)
                if ident in seen.keyless:
                    cs.duplicates += 1
                    continue
                seen.keyless.add(ident)
                cs.keyless += 1
                if ctype not in cs.keyless_types:
                    cs.keyless_types.append(ctype)
                await self.emit.error(cs.uuid, "no_key",
                                      "listed item has neither key nor uuid; it cannot be "
                                      "fetched (counted as listed, not a gap)",
                                      content_type=ctype,
                                      extra={"record_hash": f"{version:016x}",
                                             "keyless_id": f"{ident:016x}"})
                continue
            digest = key_digest(ctype, key)
            verdict = seen.add(digest, version)
            if verdict == "new":
                cs.unique += 1
            else:
                cs.duplicates += 1
                if verdict == "duplicate":
                    continue
            # A second version of a key is spooled too; the reader picks the one kept.
            await self.emit.spool(cs.uuid, Spool.line(digest, ctype, key, raw))
        cs.pages += 1
        await self.emit.page_done(cs.uuid, walk, page.number)
        await self.emit.counters(cs)
