"""The harvest: one TaskGroup owning every task, and the job of one catalog.

:class:`Harvest` wires the stages: the writer, a progress ticker, one job per catalog
(list, fetch details, commit) and the detail workers, all in one ``asyncio.TaskGroup``.
Data moves on bounded queues (catalog jobs -> detail queue -> workers -> writer queue),
so memory stays flat however large a catalog is. A catalog that fails is recorded as
failed and the others go on. This module and :mod:`~harvester.pipeline.walk` are the
only places that create tasks. Must not shape records, touch files or decide a sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from harvester.client import ApiClient, ThrottleClass
from harvester.config import Settings
from harvester.deadline import TimeBudget
from harvester.delta import SyncOptions
from harvester.errors import (
    ApiError,
    AuthError,
    Forbidden,
    RequestError,
    SinkError,
    StateError,
    Unauthorized,
    UnexpectedXML,
)
from harvester.messages import Message
from harvester.obs import Stats, event
from harvester.partfile import FileInfo
from harvester.pipeline.details import DetailScheduler
from harvester.pipeline.emit import Emitter
from harvester.pipeline.lister import CatalogLister, discover_catalogs
from harvester.pipeline.records import recount
from harvester.pipeline.session import RunSession
from harvester.pipeline.syncing import DetailDecider, FetchAll, SyncDecider
from harvester.pipeline.walk import leading_error
from harvester.policy import Clock, RateGate, Sleep
from harvester.run import CatalogState, Phase, RunResult, now_iso
from harvester.writer import Writer

T = TypeVar("T")

#: The writer of one of many tenants on one loop: checkpoints in a thread, at most one a
#: second (a hundred tenants' fsyncs, at 100 ms each, would saturate the disk). A kill
#: still loses nothing (lines reach the OS at once); a power cut, up to that second.
_SHARED_LOOP_WRITER: Final[dict[str, Any]] = {"offload": True, "every_seconds": 1.0,
                                              "idle_after": 1.0}


class Harvest:
    """One ``harvester harvest`` run (or, with ``sync``, one night of a sync)."""

    def __init__(self, settings: Settings, *, restart: bool = False,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep,
                 rand: Callable[[], float] = random.random, detail_404_delay: float = 15.0,
                 stats: Stats | None = None, sync: SyncOptions | None = None,
                 budget: TimeBudget | None = None, shared_loop: bool = False) -> None:
        self.settings, self.sync, self.budget = settings, sync, budget
        #: one of many tenants on this loop: checkpoints go to a thread (see Writer)
        self.shared_loop = shared_loop
        self._clock, self._sleep, self._rand = clock, sleep, rand
        self.detail_404_delay = detail_404_delay
        self.stats = stats or Stats()
        # Timestamps follow the sync's --as-of (backfills, tests), moving with real time.
        self._as_of, self._t0 = (sync.now if sync is not None else None), time.monotonic()
        self.session = RunSession(settings, restart=restart, now=self._now,
                                  fingerprint_extra=sync.fingerprint_parts() if sync else None)
        self.catalogs: list[CatalogState] = []
        self._client: ApiClient | None = None
        self._details: DetailScheduler | None = None
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue(maxsize=4096)
        self._emit = Emitter(self._queue, stats=self.stats, now=self._now)

    @property
    def failures(self) -> int:
        """Failures recorded in errors.ndjson so far (earlier sessions' included)."""
        return self._emit.failures

    @property
    def workers_started(self) -> int:
        """Detail workers created so far (lazily: never more than jobs queued)."""
        return self._details.workers_started if self._details is not None else 0

    async def run(self) -> RunResult:
        """Run (or resume) the harvest into ``settings.output.out``."""
        self.settings.api.require_credentials()
        with contextlib.ExitStack() as stack:
            # The lock, the ledger and the resume decision cost fsyncs: one of many
            # tenants on this loop does them in a thread, not in everyone's way.
            await self._blocking(stack.enter_context, self.session.hold())
            early = await self._blocking(self.session.open)
            if early is not None:
                return early
            return await self._run()
        raise AssertionError("unreachable")  # pragma: no cover (mypy: ExitStack)

    async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``: here, or in a thread when this loop is shared."""
        if not self.shared_loop:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _run(self) -> RunResult:
        t0, out = self._clock(), self.settings.output.out
        async with ApiClient(self.settings, stats=self.stats, clock=self._clock,
                             sleep=self._sleep, rand=self._rand) as client:
            self._client = client
            decider: DetailDecider = (SyncDecider(self.settings, self.sync, out)
                                      if self.sync is not None else FetchAll())
            try:
                listed, self.catalogs, gone = await discover_catalogs(
                    client, self.settings, self.session.ledger, decider)
                writer = Writer(out, self.session.ledger, compress=self.settings.output.gzip,
                                clock=self._clock, **_SHARED_LOOP_WRITER
                                if self.shared_loop else {})
                failures = await self._blocking(self.session.prepare, writer, self.catalogs)
                errors_file = await self._stages(client, writer, decider, failures)
                extra = decider.finish(out, self.catalogs, gone)
            except BaseExceptionGroup as group:
                raise leading_error(group) from None
            finally:
                decider.close()
        stats = {**self.stats.as_dict(), "wall_seconds": round(self._clock() - t0, 3)}
        return await self._blocking(
            self.session.finish, listed, self.catalogs, errors=self._emit.failures,
            errors_file=errors_file.as_dict(), stats=stats, extra=extra,
            keep_spool=self.sync is None)

    async def _stages(self, client: ApiClient, writer: Writer, decider: DetailDecider,
                      failures: int) -> FileInfo:
        """Every task of the run, in one TaskGroup; returns errors.ndjson's file info."""
        emit = self._emit
        emit.failures = failures
        details = self._details = DetailScheduler(
            client, self.settings, emit, decider, clock=self._clock, sleep=self._sleep,
            detail_404_delay=self.detail_404_delay, budget=self.budget,
            items=lambda: sum(cs.unique for cs in self.catalogs))
        lister = CatalogLister(client, self.settings, emit, self.session.ledger, writer)
        async with asyncio.TaskGroup() as tg:
            writer_task = tg.create_task(writer.run(self._queue), name="writer")
            details.start(tg, self.settings.limits.concurrency
                          if self.settings.harvest.details else 0)
            ticker = tg.create_task(self._ticker(), name="ticker")
            details.expect(cs.uuid for cs in self.catalogs
                           if cs.phase not in (Phase.DONE, Phase.FAILED))
            slots = asyncio.Semaphore(self.settings.limits.catalog_concurrency)
            async with asyncio.TaskGroup() as jobs:
                for cs in self.catalogs:
                    if cs.phase != Phase.DONE:
                        jobs.create_task(self._catalog_job(cs, lister, writer, decider, slots),
                                         name=f"catalog-{cs.uuid[:8]}")
            await details.stop()
            ticker.cancel()
            errors_info = await emit.commit_errors()
            await emit.close()
            await writer_task
        return errors_info

    async def _catalog_job(self, cs: CatalogState, lister: CatalogLister, writer: Writer,
                           decider: DetailDecider, slots: asyncio.Semaphore) -> None:
        """List, fetch details, commit; a failure is this catalog's, not the run's."""
        if cs.phase == Phase.FAILED:
            return  # a resume relists every failed catalog: this one is never done
        emit = self._emit
        assert self._details is not None
        try:
            if cs.phase in (Phase.NEW, Phase.LISTING):
                async with slots:
                    await lister.list_catalog(cs)
            if cs.phase in (Phase.LISTED, Phase.DETAILS):
                await self._details_phase(cs, writer, decider)
            await self._commit(cs, writer, decider)
        except (AuthError, SinkError, StateError):
            raise
        except (Forbidden, Unauthorized, UnexpectedXML, ApiError, RequestError) as exc:
            cs.error = str(exc)
            await emit.error(cs.uuid, "catalog_failed", exc)
            await emit.counters(cs)
            await emit.advance(cs, Phase.FAILED)
            event("harvest.catalog_failed", catalog=cs.uuid, error=str(exc))
            await decider.catalog_failed(cs, exc, emit, self.session.ledger, writer)
        finally:
            self._details.release(cs.uuid)  # queues nothing more, whatever happened

    async def _details_phase(self, cs: CatalogState, writer: Writer,
                             decider: DetailDecider) -> None:
        assert self._details is not None
        if cs.phase == Phase.LISTED:
            await self._emit.advance(cs, Phase.DETAILS)
        done = self.session.ledger.done(cs.uuid)
        await self._details.run_catalog(cs, decider.order(cs.uuid, writer.spool(cs.uuid).path),
                                        done)

    async def _commit(self, cs: CatalogState, writer: Writer, decider: DetailDecider) -> None:
        cs.details_total = max(cs.details_total, cs.unique)
        infos = await self._emit.commit_catalog(cs.uuid)
        cs.files = {name: i.as_dict() for name, i in infos.items()}
        if self.settings.harvest.details:
            recount(cs, writer, compressed=self.settings.output.gzip)
        decider.committed(cs, writer)
        await self._emit.counters(cs)
        await self._emit.advance(cs, Phase.DONE)
        event("harvest.catalog_done", catalog=cs.uuid, unique=cs.unique,
              details=cs.details_done, not_found=cs.not_found, failed=cs.failed, gaps=cs.gaps)

    def _now(self) -> str:
        if self._as_of is None:
            return now_iso()
        return now_iso(self._as_of + time.monotonic() - self._t0)

    async def _ticker(self, every: float = 10.0) -> None:
        while True:
            # Wall time, not the injected clock: a progress line every 10 s of real time,
            # and a fake clock must not spin here (nor move for the rest of the run).
            await asyncio.sleep(every)
            event("harvest.progress", **self.progress())

    def progress(self) -> dict[str, Any]:
        """A snapshot for progress displays."""
        gate = self._client.gates[ThrottleClass.LMS] if self._client else None
        lms = gate.rate if isinstance(gate, RateGate) else None
        remaining = sum(max(0, cs.unique - cs.details_done - cs.listing_only - cs.not_found
                            - cs.failed) for cs in self.catalogs
                        if self.settings.harvest.details and not cs.settled)
        eta = remaining / lms.per_second if lms else None
        return {
            "catalogs_done": sum(cs.phase == Phase.DONE for cs in self.catalogs),
            "catalogs": len(self.catalogs),
            "items": sum(cs.unique for cs in self.catalogs),
            "written": self.stats.items_written,
            "requests": self.stats.total_requests(),
            "throttled": self.stats.throttled,
            "eta_s": round(eta) if eta is not None else None,
            "lms_per_s": lms.per_second if lms else None,  # the bars' details ETA
        }
