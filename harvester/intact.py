"""Is a finished run's output still what its ledger says it wrote?

A run the ledger records as ``complete`` answers "nothing to do" on a rerun only when that
is true: ``manifest.json`` is the very bytes the run wrote (kept in the ledger under
:data:`MANIFEST_KEY`; a ledger from before that needs a regular file of this run that says
``complete``), ``catalogs.ndjson`` and ``errors.ndjson`` are the regular files of one name
it describes, and every catalog's item files are the regular files (size and sha256) its
ledger entry recorded. :func:`check_finished` says what is not; the session then puts back
a manifest that alone is wrong, or rebuilds the top files from the ledger, and
:meth:`~harvester.state.Ledger.redo_catalogs` plus :func:`drop_item_files` harvest a
damaged catalog again. Reads OUT, never follows a link; removes only our exact
item names in a catalog being redone.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from harvester.errors import SinkError, StateError, UnsafePath
from harvester.outputs import ITEM_NAMES, catalog_dirname
from harvester.partfile import sha256_file
from harvester.run import Phase, read_json
from harvester.sinks import PART, disk_errors, fsync_dir
from harvester.state import STATE_DIR, Ledger

__all__ = ["MANIFEST_KEY", "Damage", "check_committed", "check_finished",
           "drop_item_files"]

#: The ledger's copy of the manifest a run wrote at finish (its exact bytes).
MANIFEST_KEY = "manifest_bytes"

#: The top files a finished run's manifest describes (besides itself).
_TOP = ("catalogs.ndjson", "errors.ndjson")


@dataclass(slots=True)
class Damage:
    """What of a finished run's output no longer matches its ledger."""

    problems: list[str] = field(default_factory=list)  #: one phrase each, for the log
    #: catalogs whose item files are damaged: the names to remove before redoing them
    redo: dict[str, set[str]] = field(default_factory=dict)
    #: the manifest's bytes as the run wrote them, when only ``manifest.json`` is wrong
    restore: bytes | None = None

    def __bool__(self) -> bool:
        return bool(self.problems)


def _mismatch(path: Path, info: Mapping[str, Any] | None) -> str | None:
    """Why ``path`` is not the regular file ``info`` (bytes, sha256) describes, if not."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return exc.strerror or "unreadable"
    if not stat.S_ISREG(st.st_mode):
        return "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
    if st.st_nlink > 1:  # a second name: rebuilt under a name of its own, never read
        return f"a hard link ({st.st_nlink} names)"
    if not isinstance(info, Mapping):
        return "not described"
    if st.st_size != info.get("bytes"):
        return "changed (size)"
    try:
        digest = sha256_file(path)
    except SinkError:  # swapped for a link since, or unreadable: rebuilt, never used
        return "unreadable or not ours"
    if digest != info.get("sha256"):
        return "changed (sha256)"
    return None


def _catalog_dir(out: Path, uuid: str) -> Path:
    where = out / catalog_dirname(uuid)
    if where.is_symlink():
        raise StateError(f"{where} is a symbolic link; refusing to follow it (remove it, "
                         "or use --restart)")
    return where


def _written_manifest(out: Path, ledger: Ledger, found: Damage) -> dict[str, Any] | None:
    """The manifest the run wrote, as its ledger keeps it: ``manifest.json`` must be
    those very bytes (an edited count or total is damage too)."""
    stored = ledger.meta(MANIFEST_KEY)
    if stored is None:  # a ledger from before the bytes were kept
        return None
    data = stored.encode()
    why = _mismatch(out / "manifest.json",
                    {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    if why is not None:
        found.problems.append(f"manifest.json {why}")
        found.restore = data
    manifest = orjson.loads(data)
    return manifest if isinstance(manifest, dict) else None


def check_finished(out: Path, ledger: Ledger) -> Damage:
    """Compare a finished run's output with its ledger (and its manifest)."""
    found = Damage()
    manifest_path = out / "manifest.json"
    manifest = _written_manifest(out, ledger, found)
    if ledger.meta(MANIFEST_KEY) is None and not manifest_path.is_symlink():
        manifest = read_json(manifest_path)
    if manifest is None:
        found.problems.append("manifest.json missing, a link or unreadable")
    elif manifest.get("run_id") != ledger.meta("run_id") or manifest.get("status") != "complete":
        found.problems.append("manifest.json is not this complete run's")
        manifest = None
    described = manifest.get("catalogs") if manifest is not None else None
    files = manifest.get("files") if manifest is not None else None
    for name in _TOP if manifest is not None else ():  # else all are rebuilt anyway
        why = _mismatch(out / name, files.get(name) if isinstance(files, dict) else None)
        if why is not None:
            found.problems.append(f"{name} {why}")
    for uuid, _, _, info in ledger.catalogs():
        recorded = info.get("files") or {}
        entry = described.get(uuid) if isinstance(described, dict) else None
        if manifest is not None and (not isinstance(entry, dict)
                                     or entry.get("files") != recorded):
            found.problems.append(f"manifest.json misdescribes catalog {uuid}")
        _check_catalog(out, uuid, recorded, found)
    if len(found.problems) > 1:  # more than the manifest: the run rebuilds it all
        found.restore = None
    return found


def check_committed(out: Path, ledger: Ledger) -> Damage:
    """Compare the committed catalogs of an unfinished or partial run with its ledger: a
    rerun must not report ``complete`` over a committed file it lost, nor append the
    items it refetches to a file that is gone or changed. Catalogs not committed yet are
    the writer's (their ``.part`` files are checked when reopened).

    A committed file that is a (symbolic or hard) link or no regular file is refused
    (:class:`UnsafePath`), as when a rerun reopens one: the run counts on its lines."""
    found = Damage()
    for uuid, _, phase, info in ledger.catalogs():
        if phase != Phase.DONE:
            continue
        recorded = info.get("files") or {}
        for name in recorded:
            path = _catalog_dir(out, uuid) / name
            why = _mismatch(path, None)
            if why in ("a symbolic link", "not a regular file") or (
                    why or "").startswith("a hard link"):
                raise UnsafePath(f"refusing to build on {path}: {why} where the run "
                                 "committed a file; remove it, or rerun with --restart to "
                                 "start over")
        _check_catalog(out, uuid, recorded, found)
    return found


def _check_catalog(out: Path, uuid: str, recorded: Mapping[str, Any], found: Damage) -> None:
    """Add to ``found`` what of a committed catalog's item files is not as recorded."""
    where = _catalog_dir(out, uuid)
    bad = [f"{name} {why}" for name, file_info in recorded.items()
           if (why := _mismatch(where / name, file_info)) is not None]
    # A link of one of our names that the run never wrote (a user's plain file of
    # such a name is theirs, and stays).
    bad += [f"{name} a symbolic link" for name in sorted(ITEM_NAMES - set(recorded))
            if (where / name).is_symlink()]
    if bad:
        found.problems += [f"{catalog_dirname(uuid)}/{b}" for b in bad]
        found.redo[uuid] = set(recorded) | {
            n for n in ITEM_NAMES if (where / n).is_symlink()}


def drop_item_files(out: Path, redo: Mapping[str, Iterable[str]]) -> None:
    """Remove the item files (and their ``.part``) of catalogs harvested again: the names
    the run wrote there (and links of our names), each unlinked (a link goes, never its
    target)."""
    for uuid, names in redo.items():
        where = _catalog_dir(out, uuid)
        for name in sorted(names):
            for path in (where / name, where / (name + PART)):
                with disk_errors(path):
                    path.unlink(missing_ok=True)
        if where.is_dir():
            fsync_dir(where)
        # A partial run keeps its listings: the catalog is listed afresh, so its spool
        # goes too (else its lines would count as already seen, and never be written).
        spool = out / STATE_DIR / "spool" / f"{catalog_dirname(uuid)}.ndjson"
        for path in (spool, spool.with_name(spool.name + PART)):
            with disk_errors(path):
                path.unlink(missing_ok=True)
