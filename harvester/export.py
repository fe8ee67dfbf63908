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
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from harvester.delta import doc_id, safe_id
from harvester.errors import ConfigError
from harvester.models import JSONDict
from harvester.sinks import PartFile, encode_line, iter_lines

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


def events(source: Path, *, changes: bool) -> Iterator[Event]:
    """Events from a change-feed file, a snapshot's change feeds, or a snapshot's items."""
    if source.is_file():
        yield from _feed(source)
        return
    if (source / "latest").is_symlink():  # a sync store: use its latest snapshot
        source = (source / "latest").resolve()
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
                for line in iter_lines(f, compressed=f.name.endswith(".gz")):
                    rec = orjson.loads(line)
                    h = rec["_harvest"]
                    yield Event("upsert", h["catalog_uuid"], h["content_type"], h["key"], rec)


def _feed(path: Path) -> Iterator[Event]:
    for line in iter_lines(path):
        c = orjson.loads(line)
        if c.get("op") not in ("upsert", "delete"):
            raise ConfigError(f"{path} is not a change feed (a line has op={c.get('op')!r})")
        yield Event(c["op"], c["catalog_uuid"], c["content_type"], c["key"], c.get("record"))


def document(ev: Event) -> dict[str, Any]:
    """The search document of an upsert."""
    assert ev.record is not None
    doc = {k: v for k, v in ev.record.items() if k != "_harvest"}
    doc["harvest_meta"] = ev.record.get("_harvest")
    doc["catalog_uuid"] = ev.catalog
    doc["content_type"] = ev.content_type
    return doc


def export(source: Path, fmt: str, out: Path, *, index: str = "edx-catalog",
           changes: bool = False) -> ExportCounts:
    """Write ``source`` in format ``fmt`` to ``out`` (atomically); count what was written.

    Whatever stops it (an error, SIGINT/SIGTERM raised as an exception) leaves no
    ``.part`` and no changed file. Meilisearch's pair (documents and ``.deletes.json``) is
    written in full and fsynced before either is renamed.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
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
        # Deletes first: a kill between the two renames pairs new deletes with the old
        # documents, which removes only items that are really gone.
        for part in parts:
            part.commit()
    except BaseException:
        for part in parts:
            part.abandon()
            part.path.unlink(missing_ok=True)
        raise
    return counts


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
