"""A rerun retries what failed: a run's failed work is reopened before a session starts.

Every later session of a run (a resume after a crash or a signal, or a rerun of a run that
ended partial) starts here. The ledger's error lines are the record of what failed (the
writer records them with the work they belong to; ``errors.ndjson`` is rendered from
them, so a deleted, cut or replaced file loses nothing), and they name the work to do
again:

* ``catalog_failed``, ``page_failed``, ``gap``: the catalog is listed again (fresh walks;
  what is already spooled counts as seen, so only items not found yet are added); a sync's
  failed catalog too when its previous records were carried forward: those lines are no
  work done, so they are cut from its files and every item is decided again;
* ``detail_failed``, ``not_found``: the item's detail is fetched again; a sync's record
  kept stale for it is no work done either: its line is cut from its file first (see
  :mod:`harvester.stalecut`).

Those lines are dropped here, and the retried work writes them again if it still fails:
so no line stays for work that succeeded, and none is duplicated. Lines that describe the
data rather than failed work (``unroutable_key``, ``no_key``) are kept, once each; a
catalog listed again reports its ``no_key`` items again, so its old ones go.

A catalog that was committed is reopened: its files go back to ``.part`` (the ledger
records their size and lines first) and its phase back to listing or details. Each step
is safe to interrupt: the ledger learns of the work to redo first, then files are
renamed, then the error lines go. A session that dies in between does it all again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from harvester.carried import cut, plan_cut, to_cut
from harvester.errors import UnsafePath
from harvester.messages import ERRORS_KEY, FileKey, error_rows
from harvester.models import key_digest
from harvester.outputs import ITEM_TYPES
from harvester.partfile import iter_lines, recover_tail
from harvester.run import CatalogState, Phase
from harvester.sinks import disk_errors, fsync_dir, is_ours, not_ours
from harvester.stalecut import PENDING, finish_cut, rewrite_stale
from harvester.state import Checkpoint, Ledger
from harvester.writer import Writer

#: Error kinds whose catalog is listed again on a rerun.
RELIST_KINDS: Final = frozenset({"catalog_failed", "page_failed", "gap"})
#: Error kinds whose item is fetched again on a rerun.
REFETCH_KINDS: Final = frozenset({"detail_failed", "not_found"})
_COMMITTED: Final = frozenset({Phase.COMMITTING, Phase.DONE})


@dataclass(slots=True)
class Reopened:
    """What a session retries."""

    relist: set[str]  #: catalogs listed again
    refetch: int  #: items fetched again
    kept: int  #: error lines kept (not about failed work)


#: Set in the ledger of a run that records its error lines there (every run since).
ERRORS_IN_LEDGER: Final = "errors_in_ledger"


def error_lines(out: Path, ledger: Ledger) -> list[bytes]:
    """The run's error lines so far: the ledger's, then the complete lines a killed session
    wrote to ``errors.ndjson.part`` after its last checkpoint (never through a link).

    A ledger older than error records has none: its run's lines are read from the
    ``.part`` of a session that was under way, else from the committed file, as then.
    """
    part, final = out / "errors.ndjson.part", out / "errors.ndjson"
    if ledger.meta(ERRORS_IN_LEDGER) is None:
        src = part if is_ours(part) else final if is_ours(final) else None
        return recover_tail(src, 0, compressed=False) if src is not None else []
    tracked = ledger.files().get(part.name)
    tail = (recover_tail(part, tracked[0] if tracked else 0, compressed=False)
            if os.path.lexists(part) else [])
    return ledger.errors() + tail


def reopen_failures(out: Path, ledger: Ledger, writer: Writer, catalogs: list[CatalogState],
                    *, details: bool, redo: frozenset[str] = frozenset()) -> Reopened:
    """Reopen everything that failed in earlier sessions, so this one retries it. A
    sync's failed catalog is listed again even when its previous records were carried
    forward: those are cut from its files (see :mod:`harvester.carried`). ``redo``:
    catalogs of a finished run that start over (their files were damaged): listed
    again, their old lines dropped."""
    lines = [line for line in error_lines(out, ledger)
             if orjson.loads(line).get("catalog_uuid") not in redo]
    known = {cs.uuid for cs in catalogs}
    relist = {cs.uuid for cs in catalogs if cs.phase == Phase.FAILED} | redo
    refetch = _failed_work(lines, known, relist)
    cp = Checkpoint.empty()
    renames = _unwrite(writer, catalogs, refetch, cp)
    errors_part = writer.part_path(ERRORS_KEY)
    errors_rel = str(errors_part.relative_to(out))
    forget: list[str] = []
    if details:  # an item is fetched again from its catalog's spool: without one, list again
        for cat in {c for c, ds in refetch.items() if ds} | relist:
            spool = writer.part_path(("spool", cat))
            if not spool.exists():
                relist.add(cat)
                forget.append(str(spool.relative_to(out)))
    kept = _kept(lines, relist, refetch)
    cp.errors = [row for line in kept for row in error_rows(line)]
    if is_ours(errors_part):
        # All of it is in the ledger now: a session dying before the rewrite below must
        # not read it again as a killed session's unrecorded tail.
        cp.files[errors_rel] = (errors_part.stat().st_size, 0)
    else:
        forget.append(errors_rel)
    moves: list[tuple[Path, Path]] = []
    for cs in catalogs:
        if cs.uuid in relist or refetch.get(cs.uuid):
            _reset(cs, relist=cs.uuid in relist)
            cp.phases[cs.uuid] = cs.phase
            cp.infos[cs.uuid] = cs.info()
        if cs.phase not in _COMMITTED:
            moves += _reopen_files(writer, cs.uuid, cp)  # files to take more lines
    cuts = to_cut(catalogs)
    undone = [(c, d) for c, ds in refetch.items() for d in ds]
    ledger.reopen(relist=relist, undone=undone + plan_cut(writer, cuts, cp, forget),
                  forget=forget, cp=cp, meta={PENDING: renames})
    finish_cut(ledger, writer)
    for final, part in moves:
        with disk_errors(final):
            os.replace(final, part)
            fsync_dir(part.parent)
    cut(writer, cuts)
    ledger.set_meta(**{ERRORS_IN_LEDGER: "1"})
    size = _rewrite_errors(out, kept)
    # Tracked at its new size: the writer appends to it as to any resumed file. The cut
    # catalogs forget their marks only now, once their files are cut.
    ledger.record(Checkpoint({errors_rel: (size, len(kept))}, [], [], [],
                             {cs.uuid: cs.info() for cs in cuts}, {}))
    writer.retrack()
    return Reopened(relist, sum(len(ds) for ds in refetch.values()), len(kept))


def _failed_work(lines: list[bytes], known: set[str], relist: set[str]
                 ) -> dict[str, set[int]]:
    """The work the error lines name, in the ``known`` catalogs: catalogs to list again
    (added to ``relist``), and by catalog the digests of the items to fetch again."""
    refetch: dict[str, set[int]] = {}
    for line in lines:
        e = orjson.loads(line)
        cat, kind = e.get("catalog_uuid"), e.get("kind")
        if cat not in known:
            continue
        if kind in RELIST_KINDS:
            relist.add(cat)
        elif kind in REFETCH_KINDS and (d := _digest(e)) is not None:
            refetch.setdefault(cat, set()).add(d)
    return refetch


def _unwrite(writer: Writer, catalogs: list[CatalogState], refetch: dict[str, set[int]],
             cp: Checkpoint) -> str:
    """Of the items to fetch again, those with a line in the output: a record kept stale
    is failed work, so its line goes (the file rewritten without it, planned in ``cp``;
    the renames to do are returned) and the item is fetched again. One with a fresh line
    stays as it is, and so does its error line: fetching it again would write it twice."""
    carried = {cs.uuid for cs in catalogs if cs.carried_from is not None}
    renames = rewrite_stale(writer, refetch, carried, cp)
    for cat in carried & set(refetch):  # their lines up to the mark stay as written
        refetch[cat] -= _written(writer, cat, refetch[cat])
    return renames


def _reset(cs: CatalogState, *, relist: bool) -> None:
    """Put a catalog back to the phase that redoes its failed work."""
    if relist:
        cs.advance(Phase.LISTING)
        cs.gaps = 0
        cs.error = None
        cs.sync = {}  # decided again from scratch (carried_forward included)
    elif cs.phase in _COMMITTED:
        cs.advance(Phase.DETAILS)
    # Recounted from errors.ndjson when the catalog is committed again.
    cs.failed = cs.not_found = 0
    cs.files = {}


def _reopen_files(writer: Writer, catalog: str, cp: Checkpoint) -> list[tuple[Path, Path]]:
    """The committed item files of a catalog that must take more lines: tracked at their
    committed size, to be renamed back to ``.part`` (unless already planned in ``cp``:
    rewritten without stale lines)."""
    moves: list[tuple[Path, Path]] = []
    for ctype in ITEM_TYPES:
        key: FileKey = ("out", catalog, ctype)
        final, part = writer.path_for(key), writer.part_path(key)
        rel = str(part.relative_to(writer.out))
        if rel not in cp.files and _committed(final) and not os.path.lexists(part):
            lines = sum(1 for _ in iter_lines(final, compressed=writer.compress))
            with disk_errors(final):
                size = final.stat().st_size
            cp.files[rel] = (size, lines)
            moves.append((final, part))
    return moves


def _committed(final: Path) -> bool:
    """Whether a committed file of ours is there to reopen; raises :class:`UnsafePath` if
    something else is (a symbolic or hard link, a FIFO...), as for a tracked ``.part``:
    its lines are part of the run, so it is neither followed nor silently dropped."""
    try:
        why = not_ours(os.lstat(final))
    except FileNotFoundError:
        return False
    if why is not None:
        raise UnsafePath(f"refusing to reopen {final}: {why}; rerun with --restart to "
                         "start over")
    return True


def _written(writer: Writer, catalog: str, digests: set[int]) -> set[int]:
    """Which of these items of a catalog have a line in its item files."""
    found: set[int] = set()
    for ctype in ITEM_TYPES:
        key: FileKey = ("out", catalog, ctype)
        part = writer.part_path(key)
        path = part if os.path.lexists(part) else writer.path_for(key)
        if digests and is_ours(path):  # something else is refused or replaced later
            for line in iter_lines(path, compressed=writer.compress):
                h = orjson.loads(line)["_harvest"]
                d = key_digest(h["content_type"], h["key"])
                if d in digests:
                    found.add(d)
    return found


def _kept(lines: list[bytes], relist: set[str], refetch: dict[str, set[int]]
          ) -> list[bytes]:
    """The lines that stay, each once: all but those about work this session redoes."""
    kept: list[bytes] = []
    seen: set[tuple[object, ...]] = set()
    for line in lines:
        e = orjson.loads(line)
        kind, cat = e.get("kind"), e.get("catalog_uuid")
        if kind in RELIST_KINDS and cat in relist:
            continue
        if kind in REFETCH_KINDS and isinstance(cat, str) and \
                _digest(e) in refetch.get(cat, set()):
            continue
        if kind == "no_key":
            if cat not in relist:
                kept.append(line)  # identical lines may be distinct keyless items
            continue
        ident = (cat, kind, e.get("content_type"), e.get("key"), e.get("page"))
        if ident not in seen:
            seen.add(ident)
            kept.append(line)
    return kept


def _digest(e: dict[str, object]) -> int | None:
    ctype, key = e.get("content_type"), e.get("key")
    return key_digest(ctype, key) if isinstance(ctype, str) and isinstance(key, str) else None


def _rewrite_errors(out: Path, kept: list[bytes]) -> int:
    """``errors.ndjson.part`` := ``kept`` (atomically); the committed file it replaces goes.
    Returns the new size."""
    part, final = out / "errors.ndjson.part", out / "errors.ndjson"
    tmp = out / ".errors.ndjson.part.tmp"
    with disk_errors(part):
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"".join(kept))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, part)
        fsync_dir(out)
        final.unlink(missing_ok=True)
        fsync_dir(out)
    return sum(len(line) for line in kept)
