"""A detail kept stale is failed work, not work done: a later session fetches it again.

A sync keeps a failed detail's previous record in tonight's snapshot, marked stale (see
:meth:`~harvester.pipeline.syncing.SyncDecider.keep`), with an error line. A later session
of the night (a resume after a kill, a rerun) fetches those items again, so it must first
take their stale lines out. They are interleaved with good ones, so each item file holding
some is rewritten without them to a temp file beside its ``.part`` (fsynced):
:func:`rewrite_stale`. The ledger learns of it in the transaction that drops their error
lines and undoes the items (the ``.part`` tracked at its new size, the renames still to
do, :data:`PENDING`); then :func:`finish_cut` renames the temp files over (and removes
the committed file one came from). Safe to interrupt anywhere: a session that dies before
the transaction leaves unused temp files (the next one writes them again); one that dies
after it has its renames finished by the next session first of all, before any file is
reopened at its new size. Catalogs whose carried lines are cut (:mod:`harvester.carried`)
are not rewritten here. Must not decide what fails or what is kept stale.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Final

import orjson

from harvester.carried import items
from harvester.messages import FileKey
from harvester.models import key_digest
from harvester.partfile import iter_lines
from harvester.sinks import create_new, disk_errors, fsync_dir, is_ours
from harvester.state import Checkpoint, Ledger
from harvester.writer import Writer

#: The ledger's record of the renames a rewrite has still to do (JSON; empty when none).
PENDING: Final = "stale_cut"


def tmp_path(part: Path) -> Path:
    """Where the rewrite of a ``.part`` is written before it replaces it."""
    return part.with_name(f".{part.name}.tmp")


def rewrite_stale(writer: Writer, refetch: dict[str, set[int]], skip: set[str],
                  cp: Checkpoint) -> str:
    """Of the items to fetch again (by catalog, but not the ``skip`` ones): those with a
    fresh line stay as they are and leave ``refetch`` (their error line stays too); each
    item file holding stale lines of the others is written without them to its temp file,
    recorded in ``cp`` as the ``.part`` at its new size. Returns the renames to record
    under :data:`PENDING` ("" if none)."""
    renames: list[dict[str, object]] = []
    for cat, digests in refetch.items():
        if cat in skip or not digests:
            continue
        for key, rel in items(writer, cat):
            part, final = writer.part_path(key), writer.path_for(key)
            src = part if os.path.lexists(part) else final
            if not is_ours(src):  # something else is refused or replaced later
                continue
            keep, fresh, dropped = [], set(), 0
            for line in iter_lines(src, compressed=writer.compress):
                h = orjson.loads(line)["_harvest"]
                d = key_digest(h["content_type"], h["key"])
                if d in digests and h.get("stale"):
                    dropped += 1
                    continue
                if d in digests:
                    fresh.add(d)
                keep.append(line)
            digests -= fresh
            if dropped:
                cp.files[rel] = _write(tmp_path(part), keep, compress=writer.compress)
                renames.append({"key": list(key), "part": rel,
                                "final": str(final.relative_to(writer.out))
                                if src == final else ""})
    return orjson.dumps(renames).decode() if renames else ""


def _write(tmp: Path, lines: list[bytes], *, compress: bool) -> tuple[int, int]:
    """A new file of ours holding ``lines``, durable; its ``(size, lines)``."""
    with disk_errors(tmp):
        with os.fdopen(create_new(tmp, 0o644), "wb") as raw:
            if compress:
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
                    gz.write(b"".join(lines))
            else:
                raw.write(b"".join(lines))
            raw.flush()
            os.fsync(raw.fileno())
            size = raw.tell()
        fsync_dir(tmp.parent)
    return size, len(lines)


def finish_cut(ledger: Ledger, writer: Writer) -> None:
    """Do the renames the ledger says a rewrite still has to do (none, usually): each
    temp file replaces its ``.part`` (a handle on it is closed first), and a committed file
    it was rewritten from goes. Repeatable: a temp file already renamed is gone."""
    pending = ledger.meta(PENDING)
    if not pending:
        return
    for r in orjson.loads(pending):
        key: FileKey = tuple(r["key"])
        part = writer.out / r["part"]
        writer.release(key)
        with disk_errors(part):
            tmp = tmp_path(part)
            if is_ours(tmp):
                os.replace(tmp, part)
            if r["final"]:
                (writer.out / r["final"]).unlink(missing_ok=True)
            fsync_dir(part.parent)
    ledger.set_meta(**{PENDING: ""})
