"""The single writer stage: every byte of output goes through here, in order.

Stages upstream send messages on one bounded queue: item lines (with the identity of the
item they complete), finished pages, walk plans, per-catalog counters and phase changes.
The writer appends lines to their ``.part`` files and, every second or every couple of
thousand messages, checkpoints: flush and fsync every open file, *then* record in the
ledger the files' sizes and every page and item those bytes hold. So the ledger never
runs ahead of the data, and a crash loses at most the last 100 ms of work, which the
rerun fetches again.

With ``offload`` (many tenants sharing one event loop) the periodic checkpoints run in a
worker thread: their fsyncs would otherwise stall every other tenant's requests.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from harvester.errors import SinkError
from harvester.messages import (
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
    error_rows,
)
from harvester.models import CONTENT_TYPES, OTHER_STEM, key_digest
from harvester.obs import inert_json
from harvester.outputs import ITEM_NAMES, ITEM_TYPES, catalog_dirname, output_path
from harvester.partfile import FileInfo, PartFile, describe, recover_tail
from harvester.policy import Clock
from harvester.redact import REDACTOR
from harvester.run import Phase
from harvester.sinks import ensure_dir
from harvester.spool import Spool
from harvester.state import STATE_DIR, Checkpoint, Ledger

T = TypeVar("T")


def _settle(done: asyncio.Future[T], work: Callable[[], T]) -> None:
    """Run ``work`` and hand its result, or its SinkError, to whoever awaits ``done``."""
    try:
        result = work()
    except SinkError as exc:
        if not done.done():
            done.set_exception(exc)
    else:
        if not done.done():
            done.set_result(result)


class Writer:
    """Owns every output file handle and the ledger's progress records."""

    def __init__(
        self,
        out: Path,
        ledger: Ledger,
        *,
        compress: bool = False,
        clock: Clock = time.monotonic,
        every_messages: int = 2000,
        every_seconds: float = 0.1,
        idle_after: float = 0.05,
        offload: bool = False,
    ) -> None:
        self.out = out
        self.ledger = ledger
        self.compress = compress
        self._clock = clock
        self._every_messages = every_messages
        self._every_seconds = every_seconds
        self._idle_after = idle_after
        self._files: dict[FileKey, PartFile] = {}
        self._rels: dict[Path, str] = {}  # PartFile.path -> path relative to out (hot path)
        self._pending = Checkpoint.empty()
        self._since = 0
        self._last = clock()
        self._tracked = ledger.files()
        self.checkpoints = 0
        self._offload = offload
        # One piece of file work at a time: a thread's checkpoint or commit may still run
        # when a cancelled run's close() makes its own (reentrant: a commit checkpoints).
        self._checkpointing = threading.RLock()
        #: lines kept from a killed session's unrecorded tail, by file (for counters)
        self.recovered: list[tuple[FileKey, bytes]] = []

    # --- paths ------------------------------------------------------------------------------

    def path_for(self, key: FileKey) -> Path:
        """The final path of a file key."""
        if key[0] == "out":
            return output_path(self.out, key[1], key[2], compress=self.compress)
        if key[0] == "spool":
            return self.out / STATE_DIR / "spool" / f"{catalog_dirname(key[1])}.ndjson"
        if key == ERRORS_KEY:
            return self.out / "errors.ndjson"
        raise ValueError(f"unknown file key {key!r}")

    def part_path(self, key: FileKey) -> Path:
        """The ``.part`` file being written for a key (readable after a Barrier)."""
        final = self.path_for(key)
        return final.with_name(final.name + ".part")

    def spool(self, catalog: str) -> Spool:
        """The listing spool of a catalog (read it after a Barrier)."""
        return Spool(self.part_path(("spool", catalog)))

    def item_files(self, catalog: str) -> list[Path]:
        """A catalog's committed item files that exist."""
        paths = (self.path_for(("out", catalog, t)) for t in ITEM_TYPES)
        return [p for p in paths if p.exists()]

    def _rel(self, part: PartFile) -> str:
        rel = self._rels.get(part.path)
        if rel is None:
            rel = self._rels[part.path] = str(part.path.relative_to(self.out))
        return rel

    def _file(self, key: FileKey) -> PartFile:
        if key[0] == "out" and key[2] not in CONTENT_TYPES:
            # Every type the API invents shares other.ndjson: one key, so one open file.
            key = ("out", key[1], OTHER_STEM)
        f = self._files.get(key)
        if f is None:
            final = self.path_for(key)
            rel = str(final.with_name(final.name + ".part").relative_to(self.out))
            f = PartFile(final, compress=self.compress and key[0] == "out",
                         resume_at=self._tracked.get(rel), root=self.out)
            self._files[key] = f
        return f

    def release(self, key: FileKey) -> None:
        """Close a file without renaming it, so the next :meth:`reopen_tracked` opens it
        afresh at its tracked size (after its ``.part`` was cut back on disk)."""
        f = self._files.pop(key, None)
        if f is not None:
            f.abandon()

    def retrack(self) -> None:
        """Reload which files the ledger tracks (after the ledger was changed directly)."""
        self._tracked = self.ledger.files()

    def reopen_tracked(self, keys: list[FileKey]) -> None:
        """On resume: reopen these files, keep the complete lines a killed session wrote
        after its last checkpoint (marking their items done), and cut off the torn rest.

        A tracked ``.part`` that is gone while its final file exists was renamed by a
        session that died before it could record that: it is complete, so it is only
        forgotten, never reopened (an empty reopen would later overwrite it).
        """
        for key in keys:
            final = self.path_for(key)
            part = final.with_name(final.name + ".part")
            rel = str(part.relative_to(self.out))
            if rel in self._tracked and not part.exists() and final.exists():
                self.ledger.forget_file(rel)
                del self._tracked[rel]
                continue
            if not part.exists():
                continue
            # Untracked: created after the last checkpoint, by this run (--restart and a
            # new run clear OUT first), so all of its complete lines are ours to keep.
            size = self._tracked.get(rel, (0, 0))[0]
            compressed = self.compress and key[0] == "out"
            tail = recover_tail(part, size, compressed=compressed)
            self._file(key)  # cut back to the committed size
            for line in tail:
                self.apply(Write(key, line, done=self._done_of(key, line)))
                self.recovered.append((key, line))
        self.checkpoint()

    @staticmethod
    def _done_of(key: FileKey, line: bytes) -> tuple[str, int] | None:
        """Which item a recovered line completes: an item line, or a not_found record."""
        if key[0] == "spool":
            return None
        rec = orjson.loads(line)
        if key[0] == "out":
            h = rec.get("_harvest") or {}
            ctype, k, cat = h.get("content_type"), h.get("key"), h.get("catalog_uuid")
        elif rec.get("kind") == "not_found":
            ctype, k, cat = rec.get("content_type"), rec.get("key"), rec.get("catalog_uuid")
        else:
            return None
        if not (isinstance(ctype, str) and isinstance(k, str) and isinstance(cat, str)):
            return None
        return cat, key_digest(ctype, k)

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, queue: asyncio.Queue[Message | None]) -> None:
        """Apply messages until a None arrives.

        Checkpoints come when the queue goes idle (at most every ``idle_after`` seconds),
        or every ``every_messages`` / ``every_seconds`` under sustained load. At the real
        service's detail rate (one a second) that is one checkpoint per item, so a crash
        costs only what was in flight; at listing speed it batches.
        """
        try:
            while True:
                wait = self._idle_after if queue.empty() else self._every_seconds
                timeout = max(0.0, self._last + wait - self._clock())
                try:
                    async with asyncio.timeout(timeout if self._pending else None):
                        msg = await queue.get()
                except TimeoutError:
                    await self._periodic_checkpoint()
                    continue
                if msg is None:
                    break
                if self._offload and isinstance(msg, CommitCatalog | CommitErrors | Barrier):
                    await self._apply_off_loop(msg)
                else:
                    self.apply(msg)
                if queue.empty():
                    self._flush_dirty()
                if self._since >= self._every_messages or \
                        self._clock() - self._last >= self._every_seconds:
                    await self._periodic_checkpoint()
        finally:
            # Normal end, failure or cancellation alike: make what was written durable
            # and recorded, then let go of the handles. Nothing is renamed here.
            self.close()

    def apply(self, msg: Message) -> None:
        """Apply one message (sync: file writes are buffered and short)."""
        pending = self._pending
        self._since += 1
        if isinstance(msg, Write):
            f = self._file(msg.key)
            data = msg.data
            if msg.key == ERRORS_KEY:
                # Error records quote servers: the last line of redaction, whoever built
                # them. The ledger gets them in the same checkpoint as the work they fail.
                data = inert_json(REDACTOR.scrub_line(data))  # people cat this file
                pending.errors.extend(error_rows(data))
            f.write(data)
            if not f.compressed:
                f.flush()  # to the OS at once: a kill -9 cannot take it (see reopen_tracked)
            pending.files[self._rel(f)] = (0, 0)  # filled in at checkpoint
            if msg.done is not None:
                pending.done.append(msg.done)
        elif isinstance(msg, PageDone):
            pending.pages.append((msg.catalog, msg.walk, msg.page))
        elif isinstance(msg, WalkPlanned):
            pending.walks.append((msg.catalog, msg.walk, msg.plan))
        elif isinstance(msg, CatalogInfo):
            pending.infos[msg.catalog] = msg.info
        elif isinstance(msg, PhaseChange):
            pending.phases[msg.catalog] = msg.phase
        elif isinstance(msg, Barrier):
            self.checkpoint()
            if not msg.done.done():
                msg.done.set_result(None)
        elif isinstance(msg, CommitCatalog):
            _settle(msg.done, lambda: self.commit_catalog(msg.catalog))
        elif isinstance(msg, CommitErrors):
            _settle(msg.done, self.commit_errors)

    def _flush_dirty(self) -> None:
        """Push pending writes to the OS so a kill -9 cannot take them (see recover)."""
        if self._pending.files:
            by_rel = {self._rel(f): f for f in self._files.values()}
            for rel in self._pending.files:
                by_rel[rel].flush()

    async def _apply_off_loop(self, msg: CommitCatalog | CommitErrors | Barrier) -> None:
        """A commit or barrier (checkpoint, renames, fsyncs) in a worker thread; its
        future is settled back here, on the loop that owns it."""
        work: Callable[[], Any]
        if isinstance(msg, CommitCatalog):
            work = functools.partial(self.commit_catalog, msg.catalog)
        elif isinstance(msg, CommitErrors):
            work = self.commit_errors
        else:
            work = self.checkpoint
        self._since += 1
        done: asyncio.Future[Any] = msg.done
        job = asyncio.get_running_loop().run_in_executor(None, self._locked, work)
        try:
            result = await asyncio.shield(job)
        except SinkError as exc:
            if not done.done():
                done.set_exception(exc)
            return
        if not done.done():
            done.set_result(result)

    def _locked(self, work: Callable[[], T]) -> T:
        with self._checkpointing:
            return work()

    async def _periodic_checkpoint(self) -> None:
        """A checkpoint on this loop, or with ``offload`` in a worker thread while this
        task waits (nothing else touches this writer's files meanwhile)."""
        if not self._offload:
            self.checkpoint()
            return
        done = asyncio.get_running_loop().run_in_executor(None, self.checkpoint)
        # Cancelled meanwhile: the thread finishes its checkpoint; close() waits for it.
        await asyncio.shield(done)

    def checkpoint(self) -> None:
        """fsync every file with pending writes, then record the batch in the ledger."""
        with self._checkpointing:
            self._checkpoint()

    def _checkpoint(self) -> None:
        cp, self._pending = self._pending, Checkpoint.empty()
        self._since = 0
        self._last = self._clock()
        if not cp:
            return
        by_rel = {self._rel(f): f for f in self._files.values()}
        for rel in list(cp.files):
            cp.files[rel] = by_rel[rel].checkpoint()
        self.ledger.record(cp)
        self._tracked.update(cp.files)
        self.checkpoints += 1

    def commit_catalog(self, catalog: str) -> dict[str, FileInfo]:
        """Checkpoint, then rename the catalog's ``.part`` files to their final names."""
        self._pending.phases[catalog] = Phase.COMMITTING
        self.checkpoint()
        infos: dict[str, FileInfo] = {}
        cat_dir = self.path_for(("out", catalog, "course")).parent
        if cat_dir.is_dir():  # files an earlier session committed before it died
            for final in cat_dir.iterdir():
                if final.name not in ITEM_NAMES:
                    continue  # not an item file of ours (a user's file stays as it is)
                if final.is_symlink():  # not ours: never describe (or leave) it as output
                    final.unlink(missing_ok=True)
                    continue
                infos[final.name] = describe(final)
        for key in [k for k in self._files if k[0] == "out" and k[1] == catalog]:
            part = self._files.pop(key)
            rel = self._rel(part)
            info = part.commit()
            infos[info.name] = info
            self.ledger.forget_file(rel)
            self._tracked.pop(rel, None)
        ensure_dir(self.path_for(("out", catalog, "course")).parent, root=self.out)
        spool = self._files.pop(("spool", catalog), None)
        if spool is not None:
            spool.abandon()
        return infos

    def commit_errors(self) -> FileInfo:
        """Checkpoint, then commit ``errors.ndjson`` (written even when empty: no errors is
        an answer).

        The checkpoint comes first: the last error lines (a catalog that failed last) may
        still be pending, and a pending write to a file that is no longer open would
        break every later checkpoint.
        """
        part = self._file(ERRORS_KEY)
        self.checkpoint()
        self._files.pop(ERRORS_KEY)
        rel = self._rel(part)
        info = part.commit()
        self.ledger.forget_file(rel)
        self._tracked.pop(rel, None)
        return info

    def close(self) -> None:
        """Final checkpoint (best effort on a broken disk), then close every handle
        (after any commit a worker thread is still making)."""
        with self._checkpointing:
            try:
                self.checkpoint()
            finally:
                for f in self._files.values():
                    f.abandon()
                self._files.clear()
