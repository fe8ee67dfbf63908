"""Turn a snapshot or a change feed into what search engines ingest.

Formats (one event per item: ``upsert`` with a document, or ``delete``):

* ``es-bulk``: Elasticsearch / OpenSearch ``_bulk`` NDJSON. An upsert is two lines,
  ``{"index": {"_index": I, "_id": ID}}`` then the document; a delete is one line,
  ``{"delete": {"_index": I, "_id": ID}}``. ``_id`` is ``<catalog>:<content_type>:<key>``
  (a sha256 when that exceeds 512 bytes or the catalog or type holds a ``:``, which
  would make it ambiguous), stable across runs.
* ``meili``: Meilisearch / Typesense documents, one JSON object per line, with the primary
  key ``id`` = ``<content_type>-<40 hex>`` (only ``[A-Za-z0-9_-]``, as both engines
  require: other characters of the type become ``_``; the hex keeps ids unique), stable
  across runs. Deletes cannot be expressed as documents, so their ids go
  to ``<out>.deletes.json`` (a JSON array, the body of Meilisearch's
  ``documents/delete-batch``).
* ``jsonl``: ``{"op", "id", "catalog_uuid", "content_type", "key", "document"?}`` per line.

A document is the harvested record with ``_harvest`` renamed ``harvest_meta`` (engines
reserve leading underscores) plus top-level ``catalog_uuid`` and ``content_type`` (detail
records lack the latter).

SIGINT/SIGTERM (with a :class:`SignalGuard`): before the commit, a signal stops the export
and nothing is replaced; once the commit has started renaming, a signal is only recorded
and the commit finishes, so "was it written?" always has one true answer.
"""

from __future__ import annotations

import gzip
import os
import re
import signal
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

import orjson

from harvester.delta import doc_id, safe_id
from harvester.errors import ConfigError, SinkError
from harvester.models import JSONDict
from harvester.partfile import PartFile, iter_lines
from harvester.sinks import encode_line, resolved
from harvester.userpath import refuse_special

FORMATS: Final = ("es-bulk", "meili", "jsonl")
ITEM_SUFFIXES: Final = (".ndjson", ".ndjson.gz")


@dataclass(frozen=True, slots=True)
class Event:
    """One item to upsert (with its record) or delete."""

    op: str
    catalog: str
    content_type: str
    key: str
    record: JSONDict | None


@dataclass(slots=True)
class ExportCounts:
    """What an export wrote."""

    upserts: int = 0
    deletes: int = 0
    files: tuple[Path, ...] = ()  #: what was replaced, in commit order


class SignalGuard:
    """SIGINT/SIGTERM for an export (a context manager; handlers installed from the main
    thread only). Until :attr:`committing`, the first signal raises
    ``KeyboardInterrupt`` (the export removes its ``.part`` files, nothing is replaced);
    from then on it is only recorded in :attr:`signal`, so a commit that has started
    renaming always finishes. A second signal never interrupts the handling of the first.
    """

    def __init__(self) -> None:
        self.signal: int | None = None  #: the first signal received
        self.committing = False  #: set by :func:`export` just before its first rename
        self._saved: dict[int, Any] = {}

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum
            if not self.committing:
                raise KeyboardInterrupt

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            self._saved = {sig: signal.signal(sig, self._on_signal)
                           for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def events(source: Path, *, changes: bool) -> Iterator[Event]:
    """Events from a change-feed file, a snapshot's change feeds, or a snapshot's items."""
    if source.is_file():
        yield from _feed(source)
        return
    if (source / "latest").is_symlink():  # a sync store: use its latest snapshot
        source = resolved(source / "latest")
    if not (source / "manifest.json").exists():
        raise ConfigError(f"{source} is neither a finished snapshot nor a change feed "
                          "(no manifest.json)")
    for cat_dir in sorted(source.glob("catalog=*")):
        if changes:
            feed = cat_dir / "changes.ndjson"
            if feed.exists():
                yield from _feed(feed)
            continue
        for f in sorted(cat_dir.iterdir()):
            if f.name.endswith(ITEM_SUFFIXES) and not f.name.startswith("changes."):
                for n, rec in _objects(f, compressed=f.name.endswith(".gz")):
                    h = rec.get("_harvest")
                    ids = _ids(h) if isinstance(h, dict) else None
                    if ids is None:
                        raise ConfigError(f"{f}: line {n} is not a harvested record (no "
                                          "_harvest catalog_uuid, content_type and key)")
                    yield Event("upsert", *ids, rec)


def _feed(path: Path) -> Iterator[Event]:
    for n, c in _objects(path):
        op, record = c.get("op"), c.get("record")
        if op not in ("upsert", "delete"):
            raise ConfigError(f"{path} is not a change feed (line {n} has op={op!r})")
        ids = _ids(c)
        if ids is None or (op == "upsert" and not isinstance(record, dict)):
            raise ConfigError(f"{path}: line {n} is not a change (it needs catalog_uuid, "
                              "content_type, key and, for an upsert, a record)")
        yield Event(op, *ids, record if isinstance(record, dict) else None)


def _ids(obj: JSONDict) -> tuple[str, str, str] | None:
    """``(catalog_uuid, content_type, key)`` of a record or change, if all are text."""
    cat, ctype, key = obj.get("catalog_uuid"), obj.get("content_type"), obj.get("key")
    if isinstance(cat, str) and isinstance(ctype, str) and isinstance(key, str):
        return cat, ctype, key  # may be empty: the ids are built to hold any text
    return None


def _objects(path: Path, *, compressed: bool = False) -> Iterator[tuple[int, JSONDict]]:
    """``(line number, object)`` per line of an export source. A line that is not a JSON
    object, or a last line cut short (no newline), is bad input: an export never skips
    what it cannot read, since a missing delete or upsert would go unnoticed."""
    lines = enumerate(iter_lines(path, compressed=compressed, torn=True, shared=True), 1)
    while True:
        try:
            n, line = next(lines)
        except StopIteration:
            return
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ConfigError(f"{path}: not a complete gzip file ({exc})") from None
        if not line.endswith(b"\n"):
            raise ConfigError(f"{path}: line {n} is cut short (no newline at the end of the "
                              "file: truncated?)")
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{path}: line {n} is not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}: line {n} is not a JSON object")
        yield n, obj


#: What an Elasticsearch / OpenSearch index name may not contain or start with.
_INDEX_FORBIDDEN: Final = re.compile(r'[\\/*?"<>|,#: A-Z]|[^\x21-\x7e]')


def check_index(index: str) -> None:
    """Refuse an index name Elasticsearch would reject (or that would break the bulk
    file): empty, over 255 bytes, upper case, whitespace or control characters,
    ``\\ / * ? " < > | , # :``, a leading ``-``, ``_`` or ``+``, ``.`` or ``..``."""
    if (not index or len(index.encode()) > 255 or _INDEX_FORBIDDEN.search(index)
            or index.startswith(("-", "_", "+")) or index in (".", "..")):
        raise ConfigError(f"--index: {index!r} is not a valid index name (lower-case "
                          "letters, digits, '-', '_', '.'; e.g. edx-catalog)")


def check_out(out: Path, source: Path | None = None) -> None:
    """Refuse an ``--out`` that cannot be the export file: no file name (``/``, ``.``,
    ``..``), an existing directory (a link is replaced, not followed), a device, FIFO or
    socket, or a path inside ``source`` (the export would add a stray file to it)."""
    if out.name in ("", ".", ".."):
        raise ConfigError(f"--out: {out} is a directory; expected a file to write, e.g. "
                          f"{out / 'export.ndjson'}")
    refuse_special(out, "--out")
    if source is not None and resolved(out.parent).is_relative_to(resolved(source)):
        raise ConfigError(f"--out: {out} is inside {source}, the output it exports; "
                          "name a file outside it")


def document(ev: Event) -> dict[str, Any]:
    """The search document of an upsert."""
    assert ev.record is not None
    doc = {k: v for k, v in ev.record.items() if k != "_harvest"}
    doc["harvest_meta"] = ev.record.get("_harvest")
    doc["catalog_uuid"] = ev.catalog
    doc["content_type"] = ev.content_type
    return doc


def export(source: Path, fmt: str, out: Path, *, index: str = "edx-catalog",
           changes: bool = False, guard: SignalGuard | None = None) -> ExportCounts:
    """Write ``source`` in format ``fmt`` to ``out`` (atomically); count what was written.

    Whatever stops it before the commit (an error, SIGINT/SIGTERM raised as an exception)
    leaves no ``.part`` and no changed file. Meilisearch's pair (documents and
    ``.deletes.json``) is written in full and fsynced before either is renamed; from the
    first rename on, ``guard`` holds signals back until both are. An error between the two
    renames says which file already holds the new export.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_index(index)
    check_out(out, source)
    parts: list[PartFile] = []
    try:
        if fmt == "meili":  # opened first: if it cannot be written, nothing is replaced
            parts.append(PartFile(out.with_name(out.name + ".deletes.json")))
        parts.append(PartFile(out))
        counts, deletes = _write(parts[-1], source, fmt, index=index, changes=changes)
        if fmt == "meili":
            parts[0].write(orjson.dumps(deletes) + b"\n")
        for part in parts:
            part.checkpoint()
    except BaseException:
        for part in parts:
            part.abandon()
            part.path.unlink(missing_ok=True)
        raise
    if guard is not None:
        guard.committing = True
    counts.files = _commit(parts)
    return counts


def _commit(parts: list[PartFile]) -> tuple[Path, ...]:
    """Rename every part to its final name, in order; the final paths.

    Deletes first: a crash between the two renames leaves new deletes next to the old
    documents. Applied, they only remove items that are gone now (the old documents were
    already applied), and a rerun brings tonight's documents. Documents first would leave
    the old deletes next to new documents, and an item deleted last time that came back
    tonight would be deleted again: a false delete.
    """
    done: list[Path] = []
    for i, part in enumerate(parts):
        try:
            part.commit()
        except BaseException as exc:
            if not os.path.lexists(part.path):  # renamed before it failed: in place
                done.append(part.final)
            for rest in parts[i:]:
                rest.abandon()
                rest.path.unlink(missing_ok=True)
            if done and isinstance(exc, Exception):
                raise SinkError(_half_committed(exc, done, [p.final for p in parts])) from exc
            raise
        done.append(part.final)
    return tuple(done)


def _half_committed(exc: Exception, done: list[Path], finals: list[Path]) -> str:
    """What an error during the commit leaves: which files hold the new export."""
    old = [str(p) for p in finals if p not in done]
    where = f"{', '.join(map(str, done))} already hold(s) the new export"
    return (f"{exc}; {where}" + (f", {', '.join(old)} the previous one" if old else "")
            + " (rerun the command)")


def _write(part: PartFile, source: Path, fmt: str, *, index: str, changes: bool
           ) -> tuple[ExportCounts, list[str]]:
    """Every event of ``source`` into ``part``; the counts and (meili) the delete ids."""
    counts = ExportCounts()
    deletes: list[str] = []
    for ev in events(source, changes=changes):
        if ev.op == "upsert":
            counts.upserts += 1
        else:
            counts.deletes += 1
        if fmt == "es-bulk":
            meta = {"_index": index, "_id": doc_id(ev.catalog, ev.content_type, ev.key)}
            if ev.op == "upsert":
                part.write(encode_line({"index": meta}))
                part.write(encode_line(document(ev)))
            else:
                part.write(encode_line({"delete": meta}))
        elif fmt == "meili":
            ident = safe_id(ev.catalog, ev.content_type, ev.key)
            if ev.op == "upsert":
                part.write(encode_line({"id": ident, **document(ev)}))
            else:
                deletes.append(ident)
        else:
            line: dict[str, Any] = {
                "op": ev.op, "id": doc_id(ev.catalog, ev.content_type, ev.key),
                "catalog_uuid": ev.catalog, "content_type": ev.content_type,
                "key": ev.key}
            if ev.op == "upsert":
                line["document"] = document(ev)
            part.write(encode_line(line))
    return counts, deletes
