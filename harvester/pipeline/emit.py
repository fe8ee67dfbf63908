"""A typed front for the writer queue: the only way a stage sends the writer anything.

:class:`Emitter` turns stage events (an item line, a spooled listing row, an error, a
phase, a finished page, a walk's plan, a barrier, a commit) into writer messages, counts
what it sends (``items_written``, run failures), and shapes error records. Must not
write files itself, decide anything or build a writer message anywhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from harvester.messages import (
    ERRORS_KEY,
    Barrier,
    CatalogInfo,
    CommitCatalog,
    CommitErrors,
    Message,
    PageDone,
    PhaseChange,
    WalkPlanned,
    Write,
)
from harvester.obs import Stats
from harvester.partfile import FileInfo
from harvester.run import CatalogState, Phase, error_record
from harvester.sinks import encode_line
from harvester.state import WalkRecord

#: Error kinds reported in errors.ndjson that do not make a run partial: a keyless row
#: is the server's data, and no rerun could ever fetch it.
NOT_FAILURES: Final = frozenset({"no_key"})


class Emitter:
    """Sends typed events to the writer over its bounded queue."""

    def __init__(self, queue: asyncio.Queue[Message | None], *, stats: Stats,
                 now: Callable[[], str]) -> None:
        self.queue = queue
        self.stats = stats
        self.now = now
        #: errors that make the run partial (earlier sessions' included, see session)
        self.failures = 0

    async def item(self, catalog: str, content_type: str, line: bytes,
                   digest: int | None = None) -> None:
        """An item's final line; ``digest`` marks the item done once it is durable."""
        done = (catalog, digest) if digest is not None else None
        await self.queue.put(Write(("out", catalog, content_type), line, done=done))
        self.stats.items_written += 1

    async def spool(self, catalog: str, line: bytes) -> None:
        """A listed row for the catalog's spool."""
        await self.queue.put(Write(("spool", catalog), line))

    async def error(self, catalog: str, kind: str, error: BaseException | str, *,
                    content_type: str | None = None, key: str | None = None,
                    page: int | None = None, done: int | None = None,
                    extra: dict[str, Any] | None = None) -> None:
        """An ``errors.ndjson`` record; ``done`` (a digest) completes that item."""
        rec = error_record(error, catalog_uuid=catalog, kind=kind, at=self.now(),
                           content_type=content_type, key=key, page=page)
        rec.update(extra or {})
        if kind not in NOT_FAILURES:
            self.failures += 1
        await self.queue.put(Write(ERRORS_KEY, encode_line(rec),
                                   done=(catalog, done) if done is not None else None))

    async def counters(self, cs: CatalogState) -> None:
        """The catalog's latest persisted counters."""
        await self.queue.put(CatalogInfo(cs.uuid, cs.info()))

    async def advance(self, cs: CatalogState, to: Phase) -> None:
        """Move the catalog to phase ``to`` (see :meth:`CatalogState.advance`, which
        refuses an illegal move) and have the ledger record it."""
        cs.advance(to)
        await self.queue.put(PhaseChange(cs.uuid, to))

    async def phase(self, catalog: str, phase: Phase) -> None:
        """Record a phase again (after a commit, whose ledger phase is ``committing``)."""
        await self.queue.put(PhaseChange(catalog, phase))

    async def page_done(self, catalog: str, walk: int, page: int) -> None:
        """Every row of this page has been sent before this."""
        await self.queue.put(PageDone(catalog, walk, page))

    async def walk_planned(self, catalog: str, walk: int, record: WalkRecord) -> None:
        """Page 1 of a walk arrived: what it taught."""
        await self.queue.put(WalkPlanned(catalog, walk, record))

    async def barrier(self) -> None:
        """Wait until everything sent so far is written and checkpointed."""
        barrier = Barrier()
        await self.queue.put(barrier)
        await barrier.done

    async def commit_catalog(self, catalog: str) -> dict[str, FileInfo]:
        """Commit a catalog's files under their final names."""
        commit = CommitCatalog(catalog)
        await self.queue.put(commit)
        return await commit.done

    async def commit_errors(self) -> FileInfo:
        """Commit ``errors.ndjson`` (the last thing a run writes)."""
        commit = CommitErrors()
        await self.queue.put(commit)
        return await commit.done

    async def close(self) -> None:
        """Tell the writer nothing more is coming."""
        await self.queue.put(None)
