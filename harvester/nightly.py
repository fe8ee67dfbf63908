"""One night of ``harvester sync``: pick the snapshot, run the harvest, settle the store.

:class:`SyncNight` holds the store's lock for the whole night, resumes the unfinished
snapshot when this command may (same settings, a usable ledger) or abandons it and
starts a new one, builds the night's :class:`~harvester.pipeline.Harvest`, and, once it
ran, promotes and prunes through :func:`harvester.store.settle_night`. Used by the CLI
and the Python API alike. Must not print, draw progress or handle signals.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import orjson

from harvester.config import Settings
from harvester.deadline import TimeBudget
from harvester.delta import SyncOptions
from harvester.errors import StateError
from harvester.obs import event
from harvester.pipeline import Harvest
from harvester.policy import Clock, Sleep
from harvester.run import (
    RunResult,
    SyncResult,
    describe_change,
    fingerprint,
    fingerprint_parts,
)
from harvester.state import Ledger
from harvester.store import Store, settle_night

__all__ = ["SyncNight"]

#: Why a snapshot without a manifest is not resumed: its run finished (then lost it).
_FINISHED: Final = "its run finished"


class SyncNight:
    """The next snapshot of one store; :meth:`hold` it, run its harvest, :meth:`settle`."""

    def __init__(self, settings: Settings, *, store: Path, max_age: float, keep: int,
                 as_of: float | None = None, budget: TimeBudget | None = None,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep,
                 shared_loop: bool = False) -> None:
        self.settings, self.budget = settings, budget
        self._clock, self._sleep = clock, sleep
        self.shared_loop = shared_loop  # one of many tenants (see Harvest)
        self.store = Store(store)
        self.options = SyncOptions(None, max_age, as_of)
        self.keep = keep
        self.snapshot: Path | None = None
        self.previous: Path | None = None
        self.notice: str | None = None
        self.harvest: Harvest | None = None

    def progress(self) -> dict[str, Any]:
        """The night's harvest counters, once it has one (a live display of tenants)."""
        return self.harvest.progress() if self.harvest is not None else {}

    async def run(self) -> SyncResult:
        """The whole night: hold the store, run the harvest, settle."""
        with self.hold() as harvest:
            return self.settle(await harvest.run())

    @contextmanager
    def hold(self) -> Iterator[Harvest]:
        """The store's lock for the night, and the harvest of the chosen snapshot."""
        self.settings.api.require_credentials()  # before the store gets a lock or a snapshot
        lock = self.store.lock()
        lock.acquire()
        try:
            self.store.check()
            snap = self.snapshot = self._choose()
            self.previous = self.store.previous_of(snap)
            settings = replace(self.settings, output=replace(self.settings.output, out=snap))
            self.harvest = Harvest(settings, sync=replace(self.options, previous=self.previous),
                                   budget=self.budget, clock=self._clock, sleep=self._sleep,
                                   shared_loop=self.shared_loop)
            yield self.harvest
        finally:
            lock.release()

    def settle(self, result: RunResult) -> SyncResult:
        """Promote the snapshot if it is good, prune the store (inside :meth:`hold`)."""
        assert self.snapshot is not None
        assert result.manifest is not None
        night = settle_night(self.store, self.snapshot, result.manifest, keep=self.keep)
        return SyncResult(result, night.manifest, self.snapshot, self.previous,
                          night.promoted, night.pruned, self.notice)

    def _choose(self) -> Path:
        """The unfinished snapshot to resume, else a new one (with :attr:`notice` set
        when an unfinished snapshot, never latest, was abandoned)."""
        snap = self.store.unfinished()
        if snap is not None:
            why = self._why_not_resume(snap)
            if why is None:
                event("sync.resume", snapshot=snap.name)
                return snap
            if why == _FINISHED:
                # A finished run that lost its manifest: no run to resume, and nothing
                # to delete (it may be latest; its index still serves tonight).
                self.notice = (f"snapshot {snap.name} finished but lost its manifest.json; "
                               "left as it is; starting a new one")
                event("sync.finished_without_manifest", logging.WARNING, snapshot=snap.name)
                return self.store.new_snapshot(self.options.at())
            self.store.abandon(snap)
            self.notice = (f"abandoned unfinished snapshot {snap.name} ({why}; it never "
                           "became latest); starting a new one")
            event("sync.abandon", logging.WARNING, snapshot=snap.name, reason=why)
        return self.store.new_snapshot(self.options.at())

    def _why_not_resume(self, snap: Path) -> str | None:
        """Why this command cannot resume the unfinished ``snap`` (None: it can)."""
        if (problem := self.store.marker_problem(snap)) is not None:
            return problem
        try:
            ledger = Ledger(snap)
            try:
                fp, parts, status = (ledger.meta(k) for k in
                                     ("fingerprint", "fingerprint_parts", "status"))
            finally:
                ledger.close()
        except (StateError, sqlite3.Error):
            return "its resume ledger is unusable"
        extra = self.options.fingerprint_parts()
        if fp is None:
            return "it recorded no settings"
        if fp != fingerprint(self.settings, extra):
            try:
                old = orjson.loads(parts or "{}")
            except orjson.JSONDecodeError:
                old = {}
            return f"{describe_change(old, fingerprint_parts(self.settings, extra))} changed"
        if status in ("complete", "finished-partial"):
            return _FINISHED
        if status != "running":
            return "its run ended without a manifest"
        return None
