"""A run's session on OUT: lock, ledger, identity, resume decisions and the manifest.

:class:`RunSession` takes OUT's lock, opens the resume ledger, decides whether this is a
new run, a resumption or nothing to do (refusing mixed settings and foreign output),
reopens what failed before, and at the end decides ``complete`` or ``partial`` and writes
``catalogs.ndjson`` and ``manifest.json``. Must not make requests, create tasks or send
the writer anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from harvester import __version__
from harvester.config import Settings
from harvester.errors import StateError
from harvester.intact import (
    MANIFEST_KEY,
    Damage,
    check_committed,
    check_finished,
    drop_item_files,
)
from harvester.manifest import CatalogEntry, Manifest, Totals
from harvester.messages import ERRORS_KEY, FileKey
from harvester.models import Catalog
from harvester.obs import event
from harvester.outputs import ITEM_TYPES, catalog_dirname, clear_outputs, leftovers, listed_catalogs
from harvester.partfile import PartFile
from harvester.pipeline.emit import NOT_FAILURES
from harvester.reopen import ERRORS_IN_LEDGER, reopen_failures
from harvester.run import (
    EXIT_OK,
    EXIT_PARTIAL,
    CatalogState,
    Phase,
    RunResult,
    describe_change,
    fingerprint,
    fingerprint_parts,
    new_run_id,
    read_json,
)
from harvester.sinks import (
    clear_dir,
    disk_errors,
    encode_line,
    ensure_dir,
    write_bytes_atomic,
    write_json_atomic,
)
from harvester.stalecut import finish_cut
from harvester.state import STATE_DIR, Ledger, RunLock
from harvester.writer import Writer

_WHAT = {"complete": "a complete harvest", "finished-partial": "a partial run"}


class RunSession:
    """One session of a run on ``settings.output.out``."""

    def __init__(self, settings: Settings, *, restart: bool, now: Callable[[], str],
                 fingerprint_extra: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.out = settings.output.out
        self.restart = restart
        self.now = now
        self._extra = fingerprint_extra
        self.run_id = ""
        self.started_at = ""
        self.resumed = False
        #: catalogs of a finished run harvested again (their files were damaged)
        self.redo: frozenset[str] = frozenset()
        self._ledger: Ledger | None = None

    @property
    def ledger(self) -> Ledger:
        """The open ledger (inside :meth:`hold`)."""
        assert self._ledger is not None, "RunSession.hold() first"
        return self._ledger

    @contextmanager
    def hold(self) -> Iterator[Ledger]:
        """OUT's lock and its ledger, for the life of the session."""
        lock = RunLock(self.out)
        lock.acquire()
        try:
            self._ledger = Ledger(self.out)
            try:
                yield self._ledger
            finally:
                self._ledger.close()
                self._ledger = None
        finally:
            lock.release()

    def open(self) -> RunResult | None:
        """Start or resume the run; a result when there is nothing to do."""
        ledger = self.ledger
        # Before any work: a planted non-directory here must not surface only at finish,
        # after a manifest said complete.
        if os.path.lexists(spool := self.out / STATE_DIR / "spool"):
            ensure_dir(spool, root=self.out)  # checks each part: nothing is created
        fp = fingerprint(self.settings, self._extra)
        checked = False  # whether the committed output was compared with the ledger
        if self.restart:
            known = self._known_catalogs()
            ledger.reset()
            clear_outputs(self.out, known)
        elif ledger.is_empty():
            self._refuse_leftovers()
        elif ledger.meta("status") == "complete" and ledger.meta("fingerprint") == fp:
            checked = True
            restored = self._damaged(check_finished)
            if restored is not None:
                return RunResult("complete", EXIT_OK, self.out,
                                 read_json(self.out / "manifest.json"),
                                 f"{self.out} already holds a complete harvest "
                                 f"(run {ledger.meta('run_id')}); {restored}. "
                                 "Use --restart to harvest again.")
        elif ledger.meta("fingerprint") != fp:
            old = orjson.loads(ledger.meta("fingerprint_parts") or "{}")
            what = _WHAT.get(ledger.meta("status") or "", "an unfinished run")
            raise StateError(
                f"{self.out} holds {what} with different settings "
                f"({describe_change(old, fingerprint_parts(self.settings, self._extra))} "
                "changed); resuming would mix two harvests. Rerun with the original "
                "settings, or use --restart to discard it, or choose another --out")
        if ledger.is_empty():
            self._start(fp)
        else:
            if not checked:  # every rerun: never build on committed output it lost
                self._damaged(check_committed)
            self._resume()
        return None

    def _damaged(self, check: Callable[[Path, Ledger], Damage]) -> str | None:
        """A complete run is answered "nothing to do", and a rerun's committed catalogs
        are kept, only if their output is still what the ledger says: a manifest that
        alone is wrong is put back as the run wrote it (the answer says so); else (None)
        this session rebuilds the top files from the ledger and harvests again the
        catalogs whose files are missing, changed or links."""
        found = check(self.out, self.ledger)
        if not found:
            return "nothing to do"
        event("harvest.repair", out=str(self.out), problems="; ".join(found.problems[:5]),
              catalogs_redone=len(found.redo))
        if found.restore is not None:
            # A new name of ours (a link's other name keeps its bytes).
            write_bytes_atomic(self.out / "manifest.json", found.restore, root=self.out)
            return f"{found.problems[0]}, so it was rewritten as the run wrote it"
        self.redo = frozenset(found.redo)
        # Their files and spools (a finished run's spools are gone) start afresh.
        self.ledger.redo_catalogs(found.redo, [p for u in found.redo for p in (
            f"{catalog_dirname(u)}/", f"{STATE_DIR}/spool/{catalog_dirname(u)}.")])
        drop_item_files(self.out, found.redo)
        return None

    def _start(self, fp: str) -> None:
        self.run_id = new_run_id()
        self.started_at = self.now()
        parts = orjson.dumps(fingerprint_parts(self.settings, self._extra)).decode()
        self.ledger.set_meta(fingerprint=fp, fingerprint_parts=parts, run_id=self.run_id,
                             started_at=self.started_at, status="running",
                             version=__version__, **{ERRORS_IN_LEDGER: "1"})

    def _resume(self) -> None:
        ledger = self.ledger
        self.run_id = ledger.meta("run_id") or ""
        self.started_at = ledger.meta("started_at") or self.now()
        self.resumed = True
        event("harvest.resume", run_id=self.run_id, out=str(self.out),
              was=ledger.meta("status"))
        # A run that ended partial is reopened: its manifest describes files that this
        # session changes, so it goes until this session writes the new one.
        ledger.set_meta(status="running")
        with disk_errors(self.out):
            (self.out / "manifest.json").unlink(missing_ok=True)

    def _known_catalogs(self) -> set[str]:
        """The catalogs whose directories an earlier run may have written: the ledger's,
        and those its manifest and ``catalogs.ndjson`` name."""
        return {u for u, _, _, _ in self.ledger.catalogs()} | listed_catalogs(self.out)

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

    def prepare(self, writer: Writer, catalogs: list[CatalogState]) -> int:
        """Reopen every file this run writes; on resume, make what failed before to do
        again. Returns the failures already recorded."""
        keys: list[FileKey] = []
        for cs in catalogs:
            keys.append(("spool", cs.uuid))
            keys.extend(("out", cs.uuid, t) for t in ITEM_TYPES)
        finish_cut(self.ledger, writer)  # a killed session's rewrites, before any reopen
        writer.reopen_tracked(keys)
        if self.resumed:
            # Every rerun retries what failed before, and drops those error lines first.
            again = reopen_failures(self.out, self.ledger, writer, catalogs,
                                    details=self.settings.harvest.details, redo=self.redo)
            if again.relist or again.refetch:
                event("harvest.retry", catalogs_relisted=len(again.relist),
                      items_refetched=again.refetch, errors_kept=again.kept)
        # Again, with the errors file: also opens the files reopen_failures reopened.
        writer.reopen_tracked([*keys, ERRORS_KEY])
        if writer.recovered:
            event("harvest.recovered", lines=len(writer.recovered))
        # A resumed run still reports the errors its earlier sessions recorded.
        return sum(n for kind, n in self.ledger.error_kinds().items()
                   if kind not in NOT_FAILURES)

    def finish(self, listed: list[Catalog], catalogs: list[CatalogState], *,
               errors: int, errors_file: dict[str, Any], stats: dict[str, Any],
               extra: dict[str, Any], keep_spool: bool) -> RunResult:
        """Decide the status, write ``catalogs.ndjson`` and ``manifest.json``, and close
        the run in the ledger. ``keep_spool``: a partial harvest's rerun needs its
        listings (a finished sync snapshot is never rerun)."""
        problems = errors or any(cs.phase != Phase.DONE or cs.gaps or cs.not_found
                                 or cs.failed for cs in catalogs)
        status = "partial" if problems else "complete"
        cat_part = PartFile(self.out / "catalogs.ndjson", root=self.out)
        by_uuid = {c.uuid: c for c in listed}
        for cs in catalogs:
            rec: dict[str, Any] = (dict(by_uuid[cs.uuid].record) if cs.uuid in by_uuid
                                   else {"uuid": cs.uuid})
            rec["_harvest"] = {"dir": catalog_dirname(cs.uuid), "status": cs.phase,
                               "items": cs.unique}
            cat_part.write(encode_line(rec))
        files = {"catalogs.ndjson": cat_part.commit().as_dict(), "errors.ndjson": errors_file}
        manifest = Manifest(
            run_id=self.run_id, started_at=self.started_at, ended_at=self.now(),
            status=status, config=self.settings.public_dict(),
            catalogs={cs.uuid: CatalogEntry.of(cs) for cs in catalogs}, files=files,
            totals=Totals.of(catalogs, errors=errors, stats=stats), sync=extra).to_json()
        wrote = write_json_atomic(self.out / "manifest.json", manifest, root=self.out)
        # Its bytes too: a later rerun puts back a manifest edited or lost since.
        self.ledger.set_meta(status="complete" if status == "complete" else "finished-partial",
                             **{MANIFEST_KEY: wrote.decode()})
        if status == "complete" or not keep_spool:
            clear_dir(self.out / STATE_DIR / "spool")
        return RunResult(status, EXIT_OK if status == "complete" else EXIT_PARTIAL,
                         self.out, manifest)
