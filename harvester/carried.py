"""A failed catalog's carried records are no work done: where they start, and the cut.

When a sync's catalog fails, its previous records are carried into tonight's snapshot,
marked stale (see :meth:`~harvester.pipeline.syncing.SyncDecider.catalog_failed`). They
stand in for failed work, so a later session of the night (a resume after a kill) must
list that catalog again and decide every item from scratch, as if they were never
written. Before the first carried line, :func:`carry_mark` takes what the catalog's item
files durably hold (lines an earlier session fetched for it, usually none), and the
catalog keeps it as ``carried_from``. The carried lines are the rest of each file, so a
relist cuts each file back to its mark and undoes the items of the lines it cuts:
:func:`plan_cut` is the ledger's side, :func:`cut` the files'. Both are safe to repeat: a
session that dies between them leaves the catalog listing with its mark, and the next
one cuts again. Must not decide what fails or what is carried.
"""

from __future__ import annotations

import os

import orjson

from harvester.messages import FileKey
from harvester.models import key_digest
from harvester.outputs import ITEM_TYPES
from harvester.partfile import iter_lines
from harvester.run import CatalogState, Phase
from harvester.sinks import disk_errors, fsync_dir, is_ours, open_existing
from harvester.state import Checkpoint, Ledger
from harvester.writer import Writer


def items(writer: Writer, catalog: str) -> list[tuple[FileKey, str]]:
    """A catalog's item file keys, with their ``.part`` path relative to OUT."""
    keys: list[FileKey] = [("out", catalog, t) for t in ITEM_TYPES]
    return [(k, str(writer.part_path(k).relative_to(writer.out))) for k in keys]


def carry_mark(ledger: Ledger, writer: Writer, catalog: str) -> dict[str, list[int]]:
    """The committed ``[size, lines]`` of the catalog's item files now (after a Barrier):
    a file with none of its lines yet has no entry."""
    tracked = ledger.files()
    return {rel: list(tracked[rel]) for _, rel in items(writer, catalog) if rel in tracked}


def to_cut(catalogs: list[CatalogState]) -> list[CatalogState]:
    """The catalogs whose carried lines go: listed again (a catalog lists before it
    writes any item, so a listing catalog with a mark has not been cut yet)."""
    return [cs for cs in catalogs if cs.carried_from is not None and cs.phase == Phase.LISTING]


def plan_cut(writer: Writer, cuts: list[CatalogState], cp: Checkpoint,
             forget: list[str]) -> list[tuple[str, int]]:
    """Record in ``cp`` and ``forget`` each item file of these catalogs at its mark (a
    file without one, or gone, is forgotten); return the items of the lines after the
    marks, to be undone. Call after the catalogs' committed files were planned back to
    ``.part`` (``cp.files``)."""
    undone: list[tuple[str, int]] = []
    for cs in cuts:
        undone += _plan_one(writer, cs, cp, forget)
    return undone


def _plan_one(writer: Writer, cs: CatalogState, cp: Checkpoint,
              forget: list[str]) -> list[tuple[str, int]]:
    mark = cs.carried_from or {}
    undone: list[tuple[str, int]] = []
    for key, rel in items(writer, cs.uuid):
        part, final = writer.part_path(key), writer.path_for(key)
        src = part if os.path.lexists(part) else final
        keep = mark[rel][1] if rel in mark else 0
        ours = is_ours(src)  # a symbolic or hard link, a FIFO...: never read, dropped
        if ours:
            for n, line in enumerate(iter_lines(src, compressed=writer.compress)):
                if n >= keep:
                    h = orjson.loads(line)["_harvest"]
                    undone.append((cs.uuid, key_digest(h["content_type"], h["key"])))
        if rel in mark and ours:
            cp.files[rel] = (mark[rel][0], keep)
        else:
            cp.files.pop(rel, None)
            forget.append(rel)
    return undone


def cut(writer: Writer, cuts: list[CatalogState]) -> None:
    """Cut each catalog's ``.part`` item files back to its mark (a file without one goes),
    closing any handle on them first; then forget the mark."""
    for cs in cuts:
        _cut_one(writer, cs)


def _cut_one(writer: Writer, cs: CatalogState) -> None:
    mark = cs.carried_from or {}
    for key, rel in items(writer, cs.uuid):
        writer.release(key)
        part = writer.part_path(key)
        with disk_errors(part):
            if rel in mark and is_ours(part):
                fd = open_existing(part)
                try:
                    os.ftruncate(fd, mark[rel][0])
                    os.fsync(fd)
                finally:
                    os.close(fd)
            elif rel not in mark and os.path.lexists(part):
                part.unlink()
                fsync_dir(part.parent)
    cs.carried_from = None
