"""Orchestration of a harvest: the only module that creates tasks.

One ``asyncio.TaskGroup`` owns every task: the writer, the detail workers, a progress
ticker and one job per catalog. Data moves on bounded queues (catalog jobs -> detail
queue -> workers -> writer queue), so memory stays flat however large a catalog is.

A catalog job:

1. **lists** the catalog: page 1 teaches ``count`` and the real page size, the remaining
   pages are fetched concurrently by number (``page_concurrency`` workers), items are
   deduped by ``(content_type, key|uuid)`` and spooled to disk (see
   :mod:`harvester.listing` for keyless rows and keys listed twice); if fewer items than
   ``count`` were found (the server's order is unstable), the list is walked again while
   walks still find items, up to ``max_rewalks`` times;
2. **fetches details** for every spooled item that has a detail endpoint, through the
   shared LMS budget; a detail 404 for a listed item is retried in a later pass, then
   recorded as ``not_found``;
3. **commits** its files under their final names.

Everything written goes through the writer, which checkpoints into the resume ledger.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from harvester import __version__
from harvester.client import (
    ApiClient,
    Endpoint,
    catalogs_path,
    content_path,
    detail_path,
)
from harvester.config import Settings
from harvester.errors import (
    ApiError,
    AuthError,
    Forbidden,
    HarvestError,
    InvalidPage,
    NotFound,
    RequestError,
    SinkError,
    StateError,
    Unauthorized,
    UnexpectedXML,
)
from harvester.listing import Seen, spool_line, spool_winners, version_of
from harvester.models import (
    Catalog,
    JSONDict,
    Page,
    content_type_of,
    detail_segment,
    item_key,
    key_digest,
)
from harvester.obs import Stats, event
from harvester.paginate import ListingPlan
from harvester.policy import Clock, RateGate, Sleep
from harvester.reopen import reopen_failures
from harvester.run import (
    EXIT_OK,
    EXIT_PARTIAL,
    CatalogState,
    DetailJob,
    RunResult,
    build_manifest,
    describe_change,
    fingerprint,
    fingerprint_parts,
    now_iso,
    read_json,
)
from harvester.sinks import (
    FileInfo,
    PartFile,
    catalog_dirname,
    clear_dir,
    clear_outputs,
    disk_errors,
    encode_item,
    encode_line,
    iter_lines,
    write_json_atomic,
)
from harvester.state import STATE_DIR, Ledger, RunLock, WalkPlan
from harvester.sync import (
    CARRY,
    FETCH_CHANGED,
    FETCH_NEW,
    REFRESH,
    RETRY,
    SnapshotIndex,
    SyncOptions,
    SyncPlan,
    carried_line,
    stale_line,
    write_changes,
    write_gone,
)
from harvester.writer import (
    ERRORS_KEY,
    Barrier,
    CatalogInfo,
    CommitCatalog,
    CommitErrors,
    FileKey,
    Message,
    PageDone,
    PhaseChange,
    WalkPlanned,
    Write,
    Writer,
    leftovers,
)

#: Shapes of keys the detail endpoints can route (Django URL patterns of the LMS).
_DETAIL_KEY_RE: Final = {
    "course": re.compile(r"^[^/+]+\+[^/+]+$"),
    "courserun": re.compile(r"^[^/+]+\+[^/+]+\+[^/?]+$"),
    "program": re.compile(r"^[^/?#]+$"),
}


#: Lines queued back to back (no request between them) before waiting for the writer.
_BURST: Final = 512

#: Error kinds reported in errors.ndjson that do not make a run partial: a keyless row
#: is the server's data, and no rerun could ever fetch it.
_NOT_FAILURES: Final = frozenset({"no_key"})


def leading_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error to handle from a TaskGroup's group.

    An interrupt (not an ``Exception``) wins, then a harvester error, then anything else.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    interrupts = [e for e in leaves if not isinstance(e, Exception)]
    ours = [e for e in leaves if isinstance(e, HarvestError)]
    return (interrupts or ours or leaves)[0]


async def walk_pages(
    client: ApiClient,
    endpoint: Endpoint,
    path: str,
    page_size: int,
    take: Callable[[Page], Awaitable[None]],
    *,
    parallel: int,
    plan: ListingPlan | None = None,
    skip: set[int] | None = None,
    on_plan: Callable[[ListingPlan], Awaitable[None]] | None = None,
    on_page_error: Callable[[int, HarvestError], Awaitable[None]] | None = None,
    fatal: tuple[type[HarvestError], ...] = (Forbidden, Unauthorized, UnexpectedXML),
) -> ListingPlan | None:
    """Walk a DRF list: page 1, then the planned pages concurrently by number, then
    any pages beyond the plan one at a time. ``take`` gets each page in arrival order.

    The walk stops at the first 404 ``Invalid page.``, empty page or short page (see
    :class:`ListingPlan`), so a ``count`` that lies costs at most ``parallel`` wasted
    requests. ``plan`` resumes a walk whose page 1 is done; ``skip`` lists pages already
    taken. A page that fails after its retries goes to ``on_page_error`` (or raises,
    without one); ``fatal`` errors (by default 401, 403 and XML) always raise, since
    every other page would fail the same way. Returns the plan (its ``count`` is the
    largest any page reported), or None when page 1 itself was past the end.
    """
    if plan is None:
        plan = ListingPlan(page_size)
        try:
            first = await client.get_page(endpoint, path, plan.first())
        except InvalidPage:
            return None
        client.stats.pages += 1
        plan.learn(first)
        if on_plan is not None:
            await on_plan(plan)
        plan.took(first)
        await take(first)
    else:
        plan.resume(skip or set())
        if on_plan is not None:
            await on_plan(plan)
    walking = plan

    async def worker() -> None:
        while (req := walking.next_request()) is not None:
            try:
                page = await client.get_page(endpoint, path, req)
            except InvalidPage:
                walking.invalid(req.page)
                continue
            except (ApiError, RequestError) as exc:
                if on_page_error is None or isinstance(exc, fatal):
                    raise
                await on_page_error(req.page, exc)
                continue
            client.stats.pages += 1
            walking.took(page)  # before take(): idle workers learn of the end sooner
            await take(page)

    try:
        async with asyncio.TaskGroup() as tg:
            for i in range(max(1, parallel)):
                tg.create_task(worker(), name=f"pages-{i}")
    except BaseExceptionGroup as group:
        # Callers catch Forbidden, SinkError...: never make them unwrap a group.
        raise leading_error(group) from None
    return plan


async def walk_until_complete(
    walk: Callable[[int], Awaitable[bool | None]],
    found: Callable[[], tuple[int, int | None]],
    *,
    first: int,
    max_rewalks: int,
    event_name: str,
    **context: str,
) -> int:
    """Walk a list (walk ``first``, then more) until the items found reach the server's
    ``count``, a re-walk finds nothing new, or ``max_rewalks`` extra walks are spent;
    return the last walk.

    The service's order is unstable, so one walk can skip items that moved between
    pages; a new walk, deduplicated against what was found, picks them up. While walks
    keep finding items (a list that keeps moving) walking on is worth it; a re-walk that
    looked at the whole list and added nothing shows the rest of the gap is not coming
    (``count`` lies, or items are hidden), and more walks would only repeat it. ``walk``
    returns False when it was cut short (a page failed): that proves nothing either way.
    """
    n = first
    before = found()[0]
    while True:
        looked = await walk(n)
        unique, count = found()
        if count is None or unique >= count or n > max_rewalks:
            return n
        if n > 1 and unique <= before and looked is not False:
            return n
        before = unique
        fields: dict[str, Any] = {**context, "walk": n + 1, "unique": unique, "count": count}
        event(event_name, **fields)
        n += 1


def _describe(exc: BaseException) -> str:
    """An error's class and status, for ``_harvest.stale_reason`` (never server text)."""
    status = getattr(exc, "status", None)
    return f"{type(exc).__name__}, {status}" if status is not None else type(exc).__name__


class Harvest:
    """One ``harvester harvest`` run."""

    def __init__(
        self,
        settings: Settings,
        *,
        restart: bool = False,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        detail_404_delay: float = 15.0,
        stats: Stats | None = None,
        sync: SyncOptions | None = None,
    ) -> None:
        self.settings = settings
        self.sync = sync
        # Timestamps follow the sync's --as-of (backfills, tests), moving with real time.
        self._as_of = sync.now if sync is not None else None
        self._t0 = time.monotonic()
        self._plan: SyncPlan | None = None
        self._index: SnapshotIndex | None = None
        self.out = settings.output.out
        self.restart = restart
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self.detail_404_delay = detail_404_delay
        self.stats = stats or Stats()
        self.catalogs: list[CatalogState] = []
        self.run_id = ""
        self.started_at = ""
        self._wq: asyncio.Queue[Message | None] = asyncio.Queue(maxsize=4096)
        self._dq: asyncio.Queue[DetailJob | None] = asyncio.Queue(
            maxsize=settings.limits.concurrency * 4)
        self._client: ApiClient | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._max_workers = 0
        self._idle_workers = 0
        #: detail workers created so far: lazily, never more than jobs queued (a high
        #: --concurrency costs nothing until there is work for it)
        self.workers_started = 0
        self._writer: Writer | None = None
        self._ledger: Ledger | None = None
        self._errors = 0
        self._resumed = False
        #: sync: catalogs of the previous snapshot gone from a complete catalog list
        self._gone: list[str] = []
        self._gone_deletes: dict[str, int] = {}

    # --- entry point -----------------------------------------------------------------------

    async def run(self) -> RunResult:
        """Run (or resume) the harvest into ``settings.output.out``."""
        self.settings.api.require_credentials()
        lock = RunLock(self.out)
        lock.acquire()
        try:
            ledger = self._ledger = Ledger(self.out)
            try:
                early = self._open_run(ledger)
                if early is not None:
                    return early
                return await self._run(ledger)
            finally:
                ledger.close()
        finally:
            lock.release()

    def _open_run(self, ledger: Ledger) -> RunResult | None:
        extra = self.sync.fingerprint_parts() if self.sync is not None else None
        fp = fingerprint(self.settings, extra)
        if self.restart:
            ledger.reset()
            clear_outputs(self.out)
        elif ledger.is_empty():
            self._refuse_leftovers()
        else:
            if ledger.meta("status") == "complete" and ledger.meta("fingerprint") == fp:
                manifest = read_json(self.out / "manifest.json")
                return RunResult("complete", EXIT_OK, self.out, manifest,
                                 f"{self.out} already holds a complete harvest "
                                 f"(run {ledger.meta('run_id')}); nothing to do. "
                                 "Use --restart to harvest again.")
            if ledger.meta("fingerprint") != fp:
                old = orjson.loads(ledger.meta("fingerprint_parts") or "{}")
                new = fingerprint_parts(self.settings, extra)
                what = {"complete": "a complete harvest", "finished-partial": "a partial run"
                        }.get(ledger.meta("status") or "", "an unfinished run")
                raise StateError(
                    f"{self.out} holds {what} with different settings "
                    f"({describe_change(old, new)} changed); resuming would mix two "
                    "harvests. Rerun with the original settings, or use --restart "
                    "to discard it, or choose another --out")
        if ledger.is_empty():
            self.run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuidlib.uuid4().hex[:8]}"
            self.started_at = self._now()
            parts = orjson.dumps(fingerprint_parts(self.settings, extra)).decode()
            ledger.set_meta(fingerprint=fp, fingerprint_parts=parts, run_id=self.run_id,
                            started_at=self.started_at, status="running",
                            version=__version__)
        else:
            self.run_id = ledger.meta("run_id") or ""
            self.started_at = ledger.meta("started_at") or self._now()
            self._resumed = True
            event("harvest.resume", run_id=self.run_id, out=str(self.out),
                  was=ledger.meta("status"))
            # A run that ended partial is reopened: its manifest describes files that this
            # session changes, so it goes until this session writes the new one.
            ledger.set_meta(status="running")
            with disk_errors(self.out):
                (self.out / "manifest.json").unlink(missing_ok=True)
        return None

    def _refuse_leftovers(self) -> None:
        """A run without a ledger never adopts output it did not write."""
        found = leftovers(self.out)
        if found:
            shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
            raise StateError(
                f"{self.out} holds output of another harvest ({shown}) but no resume "
                "ledger, so it can be neither resumed nor trusted; rerun with --restart to "
                "replace it (only files the harvester writes are removed), or choose an "
                "empty --out")
        clear_dir(self.out / STATE_DIR / "spool")  # a stale listing cache is not adopted

    async def _run(self, ledger: Ledger) -> RunResult:
        t0 = self._clock()
        async with ApiClient(self.settings, stats=self.stats, clock=self._clock,
                             sleep=self._sleep, rand=self._rand) as client:
            self._client = client
            if self.sync is not None:
                self._plan = SyncPlan(self.sync)
                self._index = SnapshotIndex(self.out / "index.sqlite")
            try:
                catalogs = await self._catalog_list(client, ledger)
                writer = self._writer = Writer(self.out, ledger,
                                               compress=self.settings.output.gzip,
                                               clock=self._clock)
                self._prepare_resume(writer, ledger, catalogs)
                n_workers = (self.settings.limits.concurrency
                             if self.settings.harvest.details else 0)
                errors_info = await self._stages(writer, n_workers)
                self._write_gone()
            except BaseExceptionGroup as group:
                raise leading_error(group) from None
            finally:
                if self._plan is not None:
                    self._plan.close()
                if self._index is not None:
                    self._index.close()
        wall = self._clock() - t0
        return self._finish(ledger, catalogs, errors_info.as_dict(), wall)

    async def _stages(self, writer: Writer, n_workers: int) -> FileInfo:
        """Every task of the run, in one TaskGroup; returns errors.ndjson's file info."""
        async with asyncio.TaskGroup() as tg:
            writer_task = tg.create_task(writer.run(self._wq), name="writer")
            self._tg, self._max_workers = tg, n_workers
            ticker = tg.create_task(self._ticker(), name="ticker")
            listing_slots = asyncio.Semaphore(self.settings.limits.catalog_concurrency)
            async with asyncio.TaskGroup() as jobs:
                for cs in self.catalogs:
                    if cs.phase not in ("done",):
                        jobs.create_task(self._catalog_job(cs, listing_slots),
                                         name=f"catalog-{cs.uuid[:8]}")
            for _ in range(self.workers_started):
                await self._dq.put(None)
            ticker.cancel()
            commit = CommitErrors()
            await self._wq.put(commit)
            errors_info = await commit.done
            await self._wq.put(None)
            await writer_task
        return errors_info

    # --- catalogs --------------------------------------------------------------------------

    async def _catalog_list(self, client: ApiClient, ledger: Ledger) -> list[Catalog]:
        saved = ledger.catalogs()
        if saved:
            self._gone = orjson.loads(ledger.meta("gone_catalogs") or "[]")
            cats = [Catalog(u, str(r.get("title", "")), r) for u, r, _, _ in saved]
            for (u, r, phase, info) in saved:
                cs = CatalogState(u, str(r.get("title", "")), phase=phase)
                cs.load(info)
                self.catalogs.append(cs)
            return cats
        listed: dict[str, Catalog] = {}
        reported: list[int | None] = []

        async def take(page: Page) -> None:
            if page.number == 1:
                reported.append(page.count)
            for rec in page.results:
                u = rec.get("uuid")
                if isinstance(u, str) and u and u not in listed:
                    listed[u] = Catalog(u, str(rec.get("title") or ""), rec)

        await walk_pages(client, Endpoint.LMS, catalogs_path(), 100, take, parallel=1)
        complete = bool(reported) and reported[0] is not None and len(listed) >= reported[0]
        self._gone = self._gone_catalogs(listed, complete=complete)
        ledger.set_meta(gone_catalogs=orjson.dumps(self._gone).decode())
        wanted = self.settings.harvest.catalogs
        if wanted:
            # A named catalog that is gone is deleted, not tried (it could only fail).
            cats = [listed.get(u) or Catalog(u, "", {"uuid": u}) for u in wanted
                    if u not in self._gone]
            missing = [u for u in wanted if u not in listed]
            if missing:
                event("harvest.catalog_not_listed", catalogs=",".join(missing))
        else:
            cats = list(listed.values())
        cats = [c for c in cats if self.settings.harvest.in_shard(c.uuid)]
        ledger.save_catalogs((c.uuid, c.record) for c in cats)
        self.catalogs = [CatalogState(c.uuid, c.title) for c in cats]
        event("harvest.catalogs", count=len(cats))
        return cats

    def _gone_catalogs(self, listed: dict[str, Catalog], *, complete: bool) -> list[str]:
        """Sync: the previous snapshot's catalogs, within this run's scope (``--catalog``,
        ``--shard``), that the catalog list no longer has. Only a complete list (as many
        catalogs as its ``count``) can say a catalog is gone; a listed catalog that fails
        is never gone."""
        previous = self._plan.previous if self._plan is not None else None
        if previous is None:
            return []
        h = self.settings.harvest
        missing = [u for u in sorted(previous.catalogs())
                   if u not in listed and (not h.catalogs or u in h.catalogs)
                   and h.in_shard(u)]
        if missing and not complete:
            event("sync.catalog_list_incomplete", missing=len(missing), listed=len(listed))
            return []
        return missing

    def _write_gone(self) -> None:
        """Sync: a change feed of deletes for every item of each gone catalog."""
        previous = self._plan.previous if self._plan is not None else None
        if previous is None:
            return
        for uuid in self._gone:
            path = self.out / catalog_dirname(uuid) / "changes.ndjson"
            self._gone_deletes[uuid] = write_gone(previous, uuid, path)
            event("sync.catalog_gone", catalog=uuid, deletes=self._gone_deletes[uuid])

    def _prepare_resume(self, writer: Writer, ledger: Ledger, catalogs: list[Catalog]) -> None:
        keys: list[FileKey] = []
        for cs in self.catalogs:
            keys.append(("spool", cs.uuid))
            keys.extend(("out", cs.uuid, t) for t in
                        ("course", "courserun", "program", "learnerpathway", "other"))
        writer.reopen_tracked(keys)
        if self._resumed:
            # Every rerun retries what failed before, and drops those error lines first.
            # A sync's failed catalog carried forward is this snapshot's answer for it.
            settled = frozenset(cs.uuid for cs in self.catalogs if cs.phase == "failed"
                                and self.sync is not None and "carried_forward" in cs.sync)
            again = reopen_failures(self.out, ledger, writer, self.catalogs,
                                    details=self.settings.harvest.details, settled=settled)
            if again.relist or again.refetch:
                event("harvest.retry", catalogs_relisted=len(again.relist),
                      items_refetched=again.refetch, errors_kept=again.kept)
        # Again, with the errors file: also opens the files reopen_failures reopened.
        writer.reopen_tracked([*keys, ERRORS_KEY])
        if writer.recovered:
            event("harvest.recovered", lines=len(writer.recovered))
        errors = writer.part_path(ERRORS_KEY)
        # A resumed run still reports the errors its earlier sessions recorded.
        self._errors = (sum(1 for line in iter_lines(errors)
                            if orjson.loads(line).get("kind") not in _NOT_FAILURES)
                        if errors.exists() else 0)

    # --- one catalog -----------------------------------------------------------------------

    async def _catalog_job(self, cs: CatalogState, slots: asyncio.Semaphore) -> None:
        if cs.phase == "failed":
            return  # settled (see _prepare_resume): never committed as done
        try:
            if cs.phase in ("new", "listing"):
                async with slots:
                    await self._list_catalog(cs)
            if cs.phase in ("listed", "details"):
                await self._details_phase(cs)
            await self._commit_catalog(cs)
        except (AuthError, SinkError, StateError):
            raise
        except (Forbidden, Unauthorized, UnexpectedXML, ApiError, RequestError) as exc:
            cs.phase = "failed"
            cs.error = str(exc)
            await self._error(cs.uuid, "catalog_failed", None, None, exc)
            await self._wq.put(CatalogInfo(cs.uuid, cs.info()))
            await self._wq.put(PhaseChange(cs.uuid, "failed"))
            event("harvest.catalog_failed", catalog=cs.uuid, error=str(exc))
            if self._index is not None:
                await self._carry_catalog(cs, f"catalog_failed ({_describe(exc)})")

    async def _list_catalog(self, cs: CatalogState) -> None:
        assert self._client is not None
        assert self._ledger is not None
        # A session can die before even "listing" is recorded, with lines already spooled:
        # whatever is on disk is already seen.
        seen = self._rebuild_seen(cs)
        if cs.phase == "new":
            cs.phase = "listing"
            await self._wq.put(PhaseChange(cs.uuid, "listing"))
        def walk(n: int) -> Awaitable[bool]:
            cs.walks = n
            return self._walk_catalog(cs, n, seen)

        # A keyless row is listed, just unusable: it counts as found, never as a gap.
        await walk_until_complete(walk, lambda: (cs.unique + cs.keyless, cs.count_reported),
                                  first=max(1, self._ledger.last_walk(cs.uuid)),
                                  max_rewalks=self.settings.harvest.max_rewalks,
                                  event_name="harvest.rewalk", catalog=cs.uuid)
        cs.gaps = max(0, (cs.count_reported or 0) - cs.unique - cs.keyless)
        if cs.gaps:
            await self._error(cs.uuid, "gap", None, None,
                              f"{cs.gaps} of {cs.count_reported} items never appeared in "
                              f"{cs.walks} walks of the list")
        cs.phase = "listed"  # also without details: listing records leave the spool then
        await self._wq.put(CatalogInfo(cs.uuid, cs.info()))
        await self._wq.put(PhaseChange(cs.uuid, cs.phase))
        barrier = Barrier()
        await self._wq.put(barrier)
        await barrier.done
        event("harvest.listed", catalog=cs.uuid, count=cs.count_reported, unique=cs.unique,
              duplicates=cs.duplicates, pages=cs.pages, page_size=cs.page_size_used,
              walks=cs.walks)

    def _rebuild_seen(self, cs: CatalogState) -> Seen:
        """On resume mid-listing: the items already spooled, and the keyless rows
        already reported (their ``no_key`` lines carry the record's hash)."""
        assert self._writer is not None
        seen = Seen()
        for line in self._iter_part(("spool", cs.uuid)):
            entry = orjson.loads(line)
            seen.add(int(entry["d"]), version_of(orjson.dumps(entry["r"])))
        for line in self._iter_part(ERRORS_KEY):
            e = orjson.loads(line)
            if e.get("kind") == "no_key" and e.get("catalog_uuid") == cs.uuid \
                    and isinstance(e.get("record_hash"), str):
                seen.keyless.add(int(e["record_hash"], 16))
        cs.unique, cs.keyless = len(seen.ids), len(seen.keyless)
        return seen

    def _iter_part(self, key: FileKey) -> Iterator[bytes]:
        assert self._writer is not None
        path = self._writer.part_path(key)
        return iter_lines(path) if path.exists() else iter(())

    async def _walk_catalog(self, cs: CatalogState, walk: int, seen: Seen) -> bool:
        """One walk of a catalog's list; False when a page of it failed."""
        assert self._client is not None
        assert self._ledger is not None
        done_pages = self._ledger.pages_done(cs.uuid, walk)

        async def take(page: Page) -> None:
            await self._take_page(cs, walk, page, seen)

        recorded = self._ledger.walk_plan(cs.uuid, walk)
        plan: ListingPlan | None = None
        if recorded is not None and 1 in done_pages:
            plan = ListingPlan(self.settings.harvest.page_size, count=recorded.count,
                               page_size=recorded.page_size, total_pages=recorded.total_pages)

        async def on_plan(p: ListingPlan) -> None:
            cs.count_reported = p.count
            cs.page_size_used = p.page_size
            cs.clamped = p.clamped
            cs.pages_planned = p.total_pages or 0
            await self._wq.put(WalkPlanned(cs.uuid, walk, WalkPlan(p.count, p.page_size,
                                                                   p.total_pages)))
            if p.clamped:
                event("harvest.page_size_clamped", catalog=cs.uuid,
                      asked=self.settings.harvest.page_size, got=p.page_size)

        failed: list[int] = []

        async def on_page_error(n: int, exc: HarvestError) -> None:
            failed.append(n)
            await self._error(cs.uuid, "page_failed", None, None, exc, page=n)

        walked = await walk_pages(
            self._client, Endpoint.CONTENT, content_path(cs.uuid),
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
            raw = orjson.dumps(rec)
            version = version_of(raw)
            if key is None:
                if version in seen.keyless:
                    cs.duplicates += 1
                    continue
                seen.keyless.add(version)
                cs.keyless += 1
                await self._error(cs.uuid, "no_key", ctype, None,
                                  "listed item has neither key nor uuid; it cannot be "
                                  "fetched (counted as listed, not a gap)",
                                  extra={"record_hash": f"{version:016x}"})
                continue
            digest = key_digest(ctype, key)
            verdict = seen.add(digest, version)
            if verdict == "new":
                cs.unique += 1
            else:
                cs.duplicates += 1
                if verdict == "duplicate":
                    continue
            # A second version of a key is spooled too; spool_winners picks the one kept.
            await self._wq.put(Write(("spool", cs.uuid), spool_line(digest, ctype, key, raw)))
        cs.pages += 1
        await self._wq.put(PageDone(cs.uuid, walk, page.number))
        await self._wq.put(CatalogInfo(cs.uuid, cs.info()))

    # --- details ---------------------------------------------------------------------------

    async def _details_phase(self, cs: CatalogState) -> None:
        assert self._writer is not None
        assert self._ledger is not None
        if cs.phase == "listed":
            cs.phase = "details"
            await self._wq.put(PhaseChange(cs.uuid, "details"))
        done = self._ledger.done(cs.uuid)
        spool = self._writer.part_path(("spool", cs.uuid))
        cs.idle.clear()
        total = burst = 0
        for entry in self._spooled(cs, spool):
            total += 1
            if int(entry["d"]) in done:
                continue
            if await self._plan_item(cs, entry):
                burst += 1
                if burst >= _BURST:
                    # Lines queued with no request between them: let the writer catch
                    # up, or the queue fills with thousands of records at once.
                    burst = 0
                    barrier = Barrier()
                    await self._wq.put(barrier)
                    await barrier.done
        cs.details_total = total
        attempt = 0
        while True:
            if cs.outstanding:
                cs.idle.clear()
                await cs.idle.wait()
            if not cs.deferred:
                break
            attempt += 1
            retry, cs.deferred = cs.deferred, []
            # Give the upstream outage time to pass: until the earliest of these 404s is
            # delay x attempt old. After a long pass (the real 1/s rate) that is no wait.
            ready_at = min(j.deferred_at for j in retry) + self.detail_404_delay * attempt
            event("harvest.detail_retry_pass", catalog=cs.uuid, items=len(retry),
                  attempt=attempt, wait=round(max(0.0, ready_at - self._clock()), 1))
            await self._sleep(max(0.0, ready_at - self._clock()))
            for job in retry:
                job.attempt += 1
                cs.outstanding += 1
                await self._queue_detail(job)

    def _spooled(self, cs: CatalogState, spool: Path) -> Iterator[JSONDict]:
        """The spooled listing of a catalog. In a sync, the items an earlier night kept
        stale (their fetch failed) come first: they have waited longest."""
        if not spool.exists():
            return
        previous = self._plan.previous if self._plan is not None else None
        first = previous.stale_digests(cs.uuid) if previous is not None else set()
        if first:
            for entry in spool_winners(spool):
                if int(entry["d"]) in first:
                    yield entry
        for entry in spool_winners(spool):
            if int(entry["d"]) not in first:
                yield entry

    async def _plan_item(self, cs: CatalogState, entry: JSONDict) -> bool:
        """One listed item: written from the listing, carried forward, or queued. True
        when a line was queued without a request (see ``_BURST``)."""
        digest, ctype, key, rec = int(entry["d"]), entry["t"], entry["k"], entry["r"]
        details = self.settings.harvest.details
        if not details or detail_segment(ctype) is None or not self._routable(ctype, key):
            if details and detail_segment(ctype) is not None:
                await self._error(cs.uuid, "unroutable_key", ctype, key,
                                  "key cannot be routed to its detail endpoint; "
                                  "written from the listing")
            meta = self._meta(cs.uuid, ctype, key, rec, self._now(), "listing")
            await self._wq.put(Write(("out", cs.uuid, ctype), encode_item(rec, meta),
                                     done=(cs.uuid, digest)))
            cs.listing_only += 1
            self.stats.items_written += 1
            return True
        job = DetailJob(cs, ctype, key, digest, rec)
        if self._plan is not None:
            decision, prev = self._plan.decide(cs.uuid, digest, rec)
            self._count(cs, decision)
            if decision == CARRY and prev is not None:
                await self._wq.put(Write(("out", cs.uuid, ctype), carried_line(prev, rec),
                                         done=(cs.uuid, digest)))
                self.stats.items_written += 1
                return True
            job.fallback = prev  # listed, so never gone: kept (stale) if the fetch fails
            if decision == REFRESH:
                job.previous = prev
        cs.outstanding += 1
        await self._queue_detail(job)
        return False

    @staticmethod
    def _routable(ctype: str, key: str) -> bool:
        pattern = _DETAIL_KEY_RE.get(ctype)
        return bool(pattern and pattern.match(key)) and key not in (".", "..")

    async def _queue_detail(self, job: DetailJob) -> None:
        """Queue a detail job, starting a worker if none is free to take it."""
        if (self._idle_workers <= self._dq.qsize()
                and self.workers_started < self._max_workers and self._tg is not None):
            self._tg.create_task(self._detail_worker(), name=f"detail-{self.workers_started}")
            self.workers_started += 1
        await self._dq.put(job)

    async def _detail_worker(self) -> None:
        assert self._client is not None
        client = self._client
        while True:
            self._idle_workers += 1
            try:
                job = await self._dq.get()
            finally:
                self._idle_workers -= 1
            if job is None:
                return
            cs = job.cs
            try:
                await self._fetch_detail(client, job)
            finally:
                cs.outstanding -= 1
                if cs.outstanding == 0:
                    cs.idle.set()

    async def _fetch_detail(self, client: ApiClient, job: DetailJob) -> None:
        cs = job.cs
        path = detail_path(cs.uuid, job.content_type, job.key)
        assert path is not None
        try:
            prev = job.previous
            resp = await client.get_json(Endpoint.LMS, path,
                                         etag=prev.etag if prev is not None else None)
            if resp.status == 304 and prev is not None:
                # Unchanged since we last fetched it: the stored record, revalidated now.
                self._count(cs, "not_modified")
                await self._wq.put(Write(("out", cs.uuid, job.content_type),
                                         carried_line(prev, job.listing, fetched_at=self._now(),
                                                      etag=resp.etag or prev.etag),
                                         done=(cs.uuid, job.digest)))
                self.stats.items_written += 1
                return
            if not isinstance(resp.body, dict):
                raise ApiError(f"detail of {job.content_type} is not a JSON object",
                               status=resp.status)
            got = item_key(resp.body, job.content_type)
            if got is not None and got.casefold() != job.key.casefold():
                # A cache or upstream mix-up: writing it would file one item under another.
                raise ApiError(f"detail for {job.key!r} answered for {got!r}",
                               status=resp.status)
        except NotFound as exc:
            if job.attempt < self.settings.harvest.detail_404_retries:
                job.deferred_at = self._clock()
                cs.deferred.append(job)  # discovery outages surface as 404: try later
                return
            cs.not_found += 1
            await self._detail_failed(job, "not_found", exc)
            return
        except (AuthError, SinkError, StateError):
            raise
        except (Forbidden, Unauthorized, UnexpectedXML, ApiError, RequestError) as exc:
            cs.failed += 1
            await self._detail_failed(job, "detail_failed", exc)
            return
        self.stats.details += 1
        meta = self._meta(cs.uuid, job.content_type, job.key, job.listing, self._now(), "detail")
        if self.sync is not None and resp.etag:
            meta["etag"] = resp.etag
        await self._wq.put(Write(("out", cs.uuid, job.content_type),
                                 encode_item(resp.body, meta), done=(cs.uuid, job.digest)))
        cs.details_done += 1
        self.stats.items_written += 1

    async def _detail_failed(self, job: DetailJob, kind: str, exc: HarvestError) -> None:
        """Record a detail that failed for good (``not_found`` after its passes, or any
        other failure after its retries). In a sync a listed item is not gone: its previous
        record stays in the snapshot unchanged, marked stale, and the next night retries it
        first. With no previous record there is nothing to keep and nothing to delete."""
        cs, keep = job.cs, job.fallback
        done = (cs.uuid, job.digest)
        extra = {"stale": keep is not None} if self.sync is not None else None
        # A plain not_found is an answer and completes the item; a failure is retried on
        # resume unless a kept record completes it.
        await self._error(cs.uuid, kind, job.content_type, job.key, exc, extra=extra,
                          done=done if kind == "not_found" and keep is None else None)
        if keep is not None:
            line = stale_line(keep.line, f"{kind} ({_describe(exc)})", self._now())
            await self._wq.put(Write(("out", cs.uuid, job.content_type), line, done=done))
            self.stats.items_written += 1

    async def _carry_catalog(self, cs: CatalogState, reason: str) -> None:
        """Sync: a listed catalog that failed is not gone. Its previous records go into
        this snapshot unchanged, marked stale, with no deletes; the next night retries it.
        Items this night already wrote (a --no-details listing cut short) stay as written."""
        assert self._ledger is not None
        barrier = Barrier()
        await self._wq.put(barrier)
        await barrier.done
        written = self._ledger.done(cs.uuid)
        previous = self._plan.previous if self._plan is not None else None
        kept, at = 0, self._now()
        for digest, ctype, line in previous.lines(cs.uuid) if previous is not None else ():
            if digest not in written:
                # Done once written: a resumed carry or listing never writes it twice.
                await self._wq.put(Write(("out", cs.uuid, ctype), stale_line(line, reason, at),
                                         done=(cs.uuid, digest)))
                kept += 1
        commit = CommitCatalog(cs.uuid)
        await self._wq.put(commit)
        cs.files = {name: i.as_dict() for name, i in (await commit.done).items()}
        self._sync_commit(cs)
        cs.sync["carried_forward"] = kept > 0
        await self._wq.put(CatalogInfo(cs.uuid, cs.info()))
        await self._wq.put(PhaseChange(cs.uuid, "failed"))  # the commit said "committing"
        event("sync.catalog_carried", catalog=cs.uuid, items=kept)

    # --- finishing -------------------------------------------------------------------------

    async def _commit_catalog(self, cs: CatalogState) -> None:
        cs.details_total = max(cs.details_total, cs.unique)
        commit = CommitCatalog(cs.uuid)
        await self._wq.put(commit)
        infos = await commit.done
        cs.files = {name: i.as_dict() for name, i in infos.items()}
        self._recount(cs)
        if self._index is not None:
            self._sync_commit(cs)
            self._recount_sync(cs)
        cs.phase = "done"
        await self._wq.put(CatalogInfo(cs.uuid, cs.info()))
        await self._wq.put(PhaseChange(cs.uuid, "done"))
        event("harvest.catalog_done", catalog=cs.uuid, unique=cs.unique,
              details=cs.details_done, not_found=cs.not_found, failed=cs.failed, gaps=cs.gaps)

    def _count(self, cs: CatalogState, what: str) -> None:
        """Count a sync decision (carried, new, changed, refresh, not_modified)."""
        name = {CARRY: "carried", FETCH_NEW: "fetched_new", FETCH_CHANGED: "fetched_changed",
                REFRESH: "refreshed", RETRY: "retried_stale"}.get(what, what)
        cs.sync[name] = cs.sync.get(name, 0) + 1

    def _sync_commit(self, cs: CatalogState) -> None:
        """Index the committed catalog and write its change feed (idempotent on resume)."""
        assert self._index is not None
        assert self._writer is not None
        gz = self.settings.output.gzip
        files = [self._writer.path_for(("out", cs.uuid, t)) for t in
                 ("course", "courserun", "program", "learnerpathway", "other")]
        spool = self._writer.part_path(("spool", cs.uuid))
        listing = (((int(e["d"]), e["r"]) for e in spool_winners(spool))
                   if self.settings.harvest.details else None)
        self._index.rebuild(cs.uuid, listing, [f for f in files if f.exists()], compressed=gz)
        # Failed details are kept (stale), so they never look deleted; a failed catalog's
        # listing was cut short, so it can say nothing is gone. Keyless rows are listed.
        complete = (cs.phase != "failed" and cs.count_reported is not None and cs.gaps == 0
                    and cs.unique + cs.keyless >= cs.count_reported)
        previous = self._plan.previous if self._plan is not None else None
        counts = write_changes(self._index, previous, cs.uuid,
                               self.out / catalog_dirname(cs.uuid) / "changes.ndjson",
                               listing_complete=complete)
        cs.sync.update(counts.as_dict())
        cs.sync["stale"], cs.sync["stale_keys"] = self._index.stale_summary(cs.uuid)
        cs.sync["previous"] = (self.sync.previous.name
                               if self.sync is not None and self.sync.previous else None)
        if counts.deletes_suppressed:
            event("sync.deletes_suppressed", catalog=cs.uuid, unique=cs.unique,
                  count=cs.count_reported, pending=counts.deletes_pending)

    def _recount(self, cs: CatalogState) -> None:
        """Item counters from what is on disk, not from memory: sessions that died took
        their in-memory counts with them, but never the lines they wrote."""
        assert self._writer is not None
        if not self.settings.harvest.details:
            return
        detail = listing = 0
        for ctype in ("course", "courserun", "program", "learnerpathway", "other"):
            path = self._writer.path_for(("out", cs.uuid, ctype))
            if path.exists():
                for line in iter_lines(path, compressed=self.settings.output.gzip):
                    if orjson.loads(line)["_harvest"]["source"] == "detail":
                        detail += 1
                    else:
                        listing += 1
        cs.details_done, cs.listing_only = detail, listing
        # Failures too: a session that died took its counts with it, and errors of work
        # retried since are gone from the file.
        kinds: dict[str, int] = {}
        errors = self._writer.part_path(ERRORS_KEY)
        if errors.exists():
            for line in iter_lines(errors):
                e = orjson.loads(line)
                if e.get("catalog_uuid") == cs.uuid:
                    kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
        cs.not_found, cs.failed = kinds.get("not_found", 0), kinds.get("detail_failed", 0)

    def _recount_sync(self, cs: CatalogState) -> None:
        """The sync block's item counts from the committed catalog and the previous
        snapshot, like :meth:`_recount`: a resumed sync counts every session once, and
        only records the snapshot holds (one kept stale tonight is counted as ``stale``).

        ``not_modified`` is a refresh that found the record unchanged (a 304 keeps it).
        """
        assert self._index is not None
        previous = self._plan.previous if self._plan is not None else None
        counts = dict.fromkeys(("carried", "fetched_new", "fetched_changed", "refreshed",
                                "retried_stale", "not_modified"), 0)
        for digest, _, _ in self._index.digests(cs.uuid):
            now = self._index.get(cs.uuid, digest)
            if now is None or now.source != "detail" or now.stale:
                continue
            prev = previous.get(cs.uuid, digest) if previous is not None else None
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

    def _finish(self, ledger: Ledger, catalogs: list[Catalog], errors_info: dict[str, Any],
                wall: float) -> RunResult:
        problems = self._errors or any(
            cs.phase != "done" or cs.gaps or cs.not_found or cs.failed for cs in self.catalogs)
        status = "partial" if problems else "complete"
        cat_part = PartFile(self.out / "catalogs.ndjson", root=self.out)
        by_uuid = {c.uuid: c for c in catalogs}
        for cs in self.catalogs:
            rec: dict[str, Any] = (dict(by_uuid[cs.uuid].record) if cs.uuid in by_uuid
                                   else {"uuid": cs.uuid})
            rec["_harvest"] = {"dir": catalog_dirname(cs.uuid), "status": cs.phase,
                               "items": cs.unique}
            cat_part.write(encode_line(rec))
        cat_info = cat_part.commit()
        stats = self.stats.as_dict()
        stats["wall_seconds"] = round(wall, 3)
        manifest = build_manifest(
            run_id=self.run_id, started_at=self.started_at, ended_at=self._now(),
            status=status, config=self.settings.public_dict(), catalogs=self.catalogs,
            files={"catalogs.ndjson": cat_info.as_dict(), "errors.ndjson": errors_info},
            errors=self._errors, stats=stats)
        if self.sync is not None:
            manifest["stale"] = {
                "items": sum(int(cs.sync.get("stale", 0)) for cs in self.catalogs),
                "catalogs": [cs.uuid for cs in self.catalogs if cs.sync.get("carried_forward")]}
            manifest["gone_catalogs"] = {u: {"deletes": self._gone_deletes.get(u, 0)}
                                         for u in self._gone}
        write_json_atomic(self.out / "manifest.json", manifest, root=self.out)
        ledger.set_meta(status="complete" if status == "complete" else "finished-partial")
        if status == "complete" or self.sync is not None:
            # A partial harvest keeps its listings: its rerun fetches failed items from
            # them. A finished sync snapshot is never rerun (the next night retries).
            clear_dir(self.out / STATE_DIR / "spool")
        code = EXIT_OK if status == "complete" else EXIT_PARTIAL
        return RunResult(status, code, self.out, manifest)

    # --- helpers ---------------------------------------------------------------------------

    def _now(self) -> str:
        if self._as_of is None:
            return now_iso()
        return now_iso(self._as_of + time.monotonic() - self._t0)

    @staticmethod
    def _meta(catalog: str, ctype: str, key: str, listing: JSONDict, fetched_at: str,
              source: str) -> JSONDict:
        return {
            "catalog_uuid": catalog,
            "content_type": ctype,
            "key": key,
            "aggregation_key": listing.get("aggregation_key"),
            "content_last_modified": listing.get("content_last_modified"),
            "fetched_at": fetched_at,
            "source": source,
        }

    async def _error(self, catalog: str, kind: str, ctype: str | None, key: str | None,
                     error: BaseException | str, *, page: int | None = None,
                     done: tuple[str, int] | None = None,
                     extra: dict[str, Any] | None = None) -> None:
        rec: dict[str, Any] = {"catalog_uuid": catalog, "kind": kind, "at": self._now()}
        if ctype is not None:
            rec["content_type"] = ctype
        if key is not None:
            rec["key"] = key
        if page is not None:
            rec["page"] = page
        if isinstance(error, ApiError):
            rec["status"] = error.status
        if isinstance(error, BaseException):
            rec["error"] = type(error).__name__
        rec["message"] = str(error)
        rec.update(extra or {})
        if kind not in _NOT_FAILURES:
            self._errors += 1
        await self._wq.put(Write(ERRORS_KEY, encode_line(rec), done=done))

    async def _ticker(self, every: float = 10.0) -> None:
        while True:
            await self._sleep(every)
            event("harvest.progress", **self.progress())

    def progress(self) -> dict[str, Any]:
        """A snapshot for progress displays."""
        gate = self._client.gates[Endpoint.LMS] if self._client else None
        lms = gate.rate if isinstance(gate, RateGate) else None
        remaining = sum(max(0, cs.unique - cs.details_done - cs.listing_only - cs.not_found
                            - cs.failed) for cs in self.catalogs
                        if self.settings.harvest.details and cs.phase not in ("done", "failed"))
        eta = remaining / lms.per_second if lms else None
        return {
            "catalogs_done": sum(cs.phase == "done" for cs in self.catalogs),
            "catalogs": len(self.catalogs),
            "items": sum(cs.unique for cs in self.catalogs),
            "written": self.stats.items_written,
            "requests": self.stats.total_requests(),
            "throttled": self.stats.throttled,
            "eta_s": round(eta) if eta is not None else None,
        }

