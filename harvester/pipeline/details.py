"""Detail scheduling: the detail queue, its lazily started workers and the 404 passes.

:class:`DetailScheduler` takes a listed catalog's spooled items, writes those that need
no request (listing-only, unroutable, or carried by the decider), queues the rest for a
pool of workers that grows only while jobs wait, and retries detail 404s in later passes.
It owns the live objects of a catalog's detail phase (outstanding count, idle event,
deferred 404s). Must not list, commit catalogs, or decide what a sync carries (that is
the :class:`~harvester.pipeline.syncing.DetailDecider`'s).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from harvester.client import ApiClient, ThrottleClass, detail_path
from harvester.config import Settings
from harvester.deadline import TimeBudget
from harvester.errors import (
    ApiError,
    AuthError,
    Forbidden,
    HarvestError,
    NotFound,
    OutOfTime,
    RequestError,
    SinkError,
    StateError,
    Unauthorized,
    UnexpectedXML,
)
from harvester.models import JSONDict, detail_segment, item_key
from harvester.obs import event
from harvester.pipeline.emit import Emitter
from harvester.pipeline.records import meta, routable
from harvester.pipeline.syncing import DetailDecider, DetailJob
from harvester.policy import Clock, Cutoff, Sleep
from harvester.run import CatalogState
from harvester.sinks import encode_item
from harvester.spool import SpoolEntry

#: Lines queued back to back (no request between them) before waiting for the writer.
BURST: Final = 512


@dataclass(slots=True)
class _Pending:
    """The live side of one catalog's detail phase."""

    outstanding: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    deferred: list[DetailJob] = field(default_factory=list)


class DetailScheduler:
    """Fetches the details of listed items through a lazily grown pool of workers."""

    def __init__(self, client: ApiClient, settings: Settings, emit: Emitter,
                 decider: DetailDecider, *, clock: Clock, sleep: Sleep,
                 detail_404_delay: float, budget: TimeBudget | None = None,
                 items: Callable[[], int] = lambda: 0) -> None:
        self.client, self.settings, self.emit, self.decider = client, settings, emit, decider
        self._clock, self._sleep = clock, sleep
        self.detail_404_delay = detail_404_delay
        self.budget, self._items = budget, items
        #: set once the deadline left no time for another request: the rest is deferred
        self.out_of_time = False
        # Lowest first: (priority, arrival). Without a deadline every priority is equal,
        # so this is FIFO and bounded (flat memory). Under a deadline it holds the night's
        # whole fetch list, so the most wanted requests go first across all catalogs.
        self._queue: asyncio.PriorityQueue[tuple[tuple[int, str], int, DetailJob | None]] = (
            asyncio.PriorityQueue(maxsize=0 if budget else settings.limits.concurrency * 4))
        self._seq = 0
        #: under a deadline, workers wait until every catalog has queued its items
        self._expected: set[str] = set()
        self._queued: set[str] = set()
        self._all_queued = asyncio.Event()
        if budget is None:
            self._all_queued.set()
        self._tg: asyncio.TaskGroup | None = None
        self._max_workers = 0
        self._idle_workers = 0
        self._pending: dict[str, _Pending] = {}
        #: workers created so far: never more than jobs queued (a high --concurrency
        #: costs nothing until there is work for it)
        self.workers_started = 0
        #: detail requests begun (a deadline that allows none is said, see _too_short)
        self._started = 0

    def start(self, tg: asyncio.TaskGroup, max_workers: int) -> None:
        """Let workers be created in ``tg``, up to ``max_workers``."""
        self._tg, self._max_workers = tg, max_workers

    async def stop(self) -> None:
        """End every worker once the queue is drained."""
        self._all_queued.set()
        for _ in range(self.workers_started):
            self._seq += 1
            await self._queue.put(((99, ""), self._seq, None))

    def expect(self, catalogs: Iterable[str]) -> None:
        """The catalogs whose items are still to be queued (under a deadline, the first
        request waits for all of them, so it is the most wanted of the whole night)."""
        self._expected.update(catalogs)
        self._release(None)

    def _release(self, catalog: str | None) -> None:
        """``catalog`` queued all its items (or will queue none: it failed)."""
        if catalog is not None:
            self._queued.add(catalog)
        if self._expected <= self._queued:
            self._all_queued.set()

    def release(self, catalog: str) -> None:
        """``catalog`` will queue nothing more (done, or failed before its details)."""
        self._release(catalog)

    async def run_catalog(self, cs: CatalogState, entries: Iterable[SpoolEntry],
                          done: set[int]) -> None:
        """Every spooled item of ``cs`` not ``done``: written, or fetched; then the 404
        passes, until nothing of the catalog is outstanding."""
        pending = self._pending[cs.uuid] = _Pending()
        total = burst = 0
        for entry in entries:
            total += 1
            if entry.digest in done:
                continue
            if await self._plan_item(cs, entry):
                burst += 1
                if burst >= BURST:
                    # Lines queued with no request between them: let the writer catch
                    # up, or the queue fills with thousands of records at once.
                    burst = 0
                    await self.emit.barrier()
        cs.details_total = total
        self._release(cs.uuid)
        await self._passes(cs, pending)
        del self._pending[cs.uuid]

    async def _passes(self, cs: CatalogState, pending: _Pending) -> None:
        attempt = 0
        while True:
            if pending.outstanding:
                pending.idle.clear()
                await pending.idle.wait()
            if not pending.deferred:
                return
            attempt += 1
            retry, pending.deferred = pending.deferred, []
            # Give the upstream outage time to pass: until the earliest of these 404s is
            # delay x attempt old. After a long pass (the real 1/s rate) that is no wait.
            ready_at = min(j.deferred_at for j in retry) + self.detail_404_delay * attempt
            cutoff = self._cutoff()
            if cutoff is not None and ready_at > cutoff.admit_by:
                self._stop("a 404 retry pass would start past the deadline")
            wait = 0.0 if self.out_of_time else max(0.0, ready_at - self._clock())
            event("harvest.detail_retry_pass", catalog=cs.uuid, items=len(retry),
                  attempt=attempt, wait=round(wait, 1))
            await self._sleep(wait)
            for job in retry:
                job.attempt += 1
                await self._queue_detail(job)

    async def _plan_item(self, cs: CatalogState, entry: SpoolEntry) -> bool:
        """One listed item: written from the listing, carried by the decider, or queued.
        True when a line was queued without a request (see ``BURST``)."""
        ctype, key, rec = entry.content_type, entry.key, entry.record
        details = self.settings.harvest.details
        if not details or detail_segment(ctype) is None or not routable(ctype, key):
            if details and detail_segment(ctype) is not None:
                await self.emit.error(cs.uuid, "unroutable_key",
                                      "key cannot be routed to its detail endpoint; "
                                      "written from the listing", content_type=ctype, key=key)
            line = encode_item(rec, meta(cs.uuid, ctype, key, rec, self.emit.now(), "listing"))
            await self.emit.item(cs.uuid, ctype, line, entry.digest)
            cs.listing_only += 1
            return True
        job = DetailJob(cs, ctype, key, entry.digest, rec)
        carried = self.decider.decide(job)
        if carried is not None:
            await self.emit.item(cs.uuid, ctype, carried, entry.digest)
            return True
        await self._queue_detail(job)
        return False

    async def _queue_detail(self, job: DetailJob) -> None:
        """Queue a detail job, starting a worker if none is free to take it."""
        self._pending[job.cs.uuid].outstanding += 1
        if (self._idle_workers <= self._queue.qsize()
                and self.workers_started < self._max_workers and self._tg is not None):
            self._tg.create_task(self._worker(), name=f"detail-{self.workers_started}")
            self.workers_started += 1
        self._seq += 1
        await self._queue.put((job.priority, self._seq, job))

    async def _worker(self) -> None:
        while True:
            self._idle_workers += 1
            try:
                await self._all_queued.wait()
                _, _, job = await self._queue.get()
            finally:
                self._idle_workers -= 1
            if job is None:
                return
            pending = self._pending[job.cs.uuid]
            try:
                await self._fetch(job)
            finally:
                pending.outstanding -= 1
                if pending.outstanding == 0:
                    pending.idle.set()

    def _cutoff(self) -> Cutoff | None:
        if self.budget is None:
            return None
        return self.budget.cutoff(self._items(), self.client.stats.typical(ThrottleClass.LMS))

    def _stop(self, why: str) -> None:
        if not self.out_of_time:
            self.out_of_time = True
            event("sync.deadline_reached", reason=why,
                  left=round(self.budget.left(), 1) if self.budget is not None else None)
            if self.budget is not None and self._started == 0:
                self._too_short(self.budget)

    def _too_short(self, budget: TimeBudget) -> None:
        """No detail at all fits: the listing and the commit it needs use the whole budget
        (the run may still end after the deadline: a listed night is always committed)."""
        items = self._items()
        event("sync.budget_too_short", logging.WARNING, items=items,
              commit_reserve=round(budget.reserve(items), 1), left=round(budget.left(), 1),
              hint="no detail was fetched: the listing and its commit need more than the "
                   "budget; give a longer --time-budget or an earlier --deadline start")

    async def _defer(self, job: DetailJob) -> None:
        """Not reached before the deadline: not a failure, first in line next night."""
        line = self.decider.defer(job, self.emit.now())
        await self.emit.item(job.cs.uuid, job.content_type, line, job.digest)

    async def _fetch(self, job: DetailJob) -> None:
        cs = job.cs
        path = detail_path(cs.uuid, job.content_type, job.key)
        assert path is not None
        cutoff = self._cutoff()
        if self.out_of_time:
            await self._defer(job)
            return
        self._started += 1
        try:
            prev = job.previous
            resp = await self.client.get_json(ThrottleClass.LMS, path,
                                              etag=prev.etag if prev is not None else None,
                                              cutoff=cutoff)
            if resp.status == 304 and prev is not None:
                line = self.decider.revalidated(job, prev, resp.etag, self.emit.now())
                await self.emit.item(cs.uuid, job.content_type, line, job.digest)
                return
            if not isinstance(resp.body, dict):
                raise ApiError(f"detail of {job.content_type} is not a JSON object",
                               status=resp.status)
            got = item_key(resp.body, job.content_type)
            if got is not None and got.casefold() != job.key.casefold():
                # A cache or upstream mix-up: writing it would file one item under another.
                raise ApiError(f"detail for {job.key!r} answered for {got!r}",
                               status=resp.status)
            await self._write(job, resp.body, resp.etag)  # NestedTooDeep: this item's
        except OutOfTime as exc:
            self._started -= 1  # refused before it was sent
            self._stop(str(exc))
            await self._defer(job)
            return
        except NotFound as exc:
            if job.attempt < self.settings.harvest.detail_404_retries:
                job.deferred_at = self._clock()
                # discovery outages surface as 404: try later
                self._pending[cs.uuid].deferred.append(job)
                return
            cs.not_found += 1
            await self._failed(job, "not_found", exc)
            return
        except (AuthError, SinkError, StateError):
            raise
        except (Forbidden, Unauthorized, UnexpectedXML, ApiError, RequestError) as exc:
            cs.failed += 1
            await self._failed(job, "detail_failed", exc)

    async def _write(self, job: DetailJob, body: JSONDict, etag: str | None) -> None:
        cs = job.cs
        m = meta(cs.uuid, job.content_type, job.key, job.listing, self.emit.now(), "detail")
        if self.decider.keeps_etag and etag:
            m["etag"] = etag
        await self.emit.item(cs.uuid, job.content_type, encode_item(body, m), job.digest)
        self.emit.stats.details += 1
        cs.details_done += 1

    async def _failed(self, job: DetailJob, kind: str, exc: HarvestError) -> None:
        """Record a detail that failed for good (``not_found`` after its passes, or any
        other failure after its retries); the decider may keep a previous record (stale).
        A plain not_found is an answer and completes the item; a failure is retried on
        resume unless a kept record completes it."""
        cs = job.cs
        kept = self.decider.keep(job, kind, exc, self.emit.now())
        await self.emit.error(cs.uuid, kind, exc, content_type=job.content_type,
                              key=job.key, extra=self.decider.error_extra(job),
                              done=job.digest if kind == "not_found" and kept is None
                              else None)
        if kept is not None:
            await self.emit.item(cs.uuid, job.content_type, kept, job.digest)
