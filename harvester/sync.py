"""Nightly sync: change detection, the snapshot index, the change feed and the store.

* :func:`content_hash` is a stable hash of a record over normalised fields. The volatile
  ones (``modified``, ``content_last_modified``, enrollment counts, ratings, enrollment
  URLs, ``normalized_metadata*``, and ``utm_*`` parameters in URLs) are left out, because
  the service bumps them every day whether or not anything changed
  (edx-api-behaviour.md section 7).
* :class:`SnapshotIndex` is ``OUT/index.sqlite`` next to a snapshot: per catalog and item,
  the listing hash, the record hash, when its detail was fetched, its ETag and the line
  itself (zlib). A later night reads it by point look-ups, so a 1,000,000-item catalog
  syncs in flat memory.
* :class:`SyncPlan` decides per listed item: carry the previous record forward, fetch it
  (new, listing changed), or revalidate it (refresh due, with ``If-None-Match``). Refreshes
  are spread over the nights of ``max_age``: an item is due on the night its identity
  hashes to, so each night refreshes about 1/N of the catalog, never all of it at once.
* :func:`write_changes` writes a catalog's ``changes.ndjson``. Upserts are new or changed
  items. Deletes are emitted only when the catalog's listing completed and matched
  ``count``.
* :class:`Store` keeps dated snapshots and ``latest`` (a symlink); only a good run becomes
  latest, and ``--keep N`` prunes the oldest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from harvester.errors import SinkError, StateError
from harvester.models import JSONDict, key_digest
from harvester.sinks import PartFile, encode_line, iter_lines

#: Fields that change without the content changing; left out of every comparison.
VOLATILE: Final = frozenset({
    "modified", "content_last_modified", "enrollment_count", "recent_enrollment_count",
    "reviews_count", "avg_course_rating", "enrollment_url", "normalized_metadata",
    "normalized_metadata_by_run", "_harvest",
})
DAY: Final = 86400.0


def _strip_utm(url: str) -> str:
    parts = urlsplit(url)
    if "utm_" not in parts.query:
        return url
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if not k.startswith("utm_")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def normalize(value: Any) -> Any:
    """``value`` without volatile fields (at any depth) and without utm parameters."""
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, str) and "utm_" in value and value.startswith(("http", "/")):
        return _strip_utm(value)
    return value


def content_hash(record: JSONDict) -> str:
    """A stable hash of a record's meaningful content (key order does not matter)."""
    raw = orjson.dumps(normalize(record), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


# --- the index -------------------------------------------------------------------------

_INDEX_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS items (
    catalog TEXT NOT NULL, digest INTEGER NOT NULL, content_type TEXT NOT NULL,
    key TEXT NOT NULL, listing_hash TEXT, record_hash TEXT NOT NULL, fetched_at TEXT,
    source TEXT, etag TEXT, line BLOB NOT NULL, PRIMARY KEY (catalog, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS listing (
    catalog TEXT NOT NULL, digest INTEGER NOT NULL, listing_hash TEXT NOT NULL,
    PRIMARY KEY (catalog, digest)) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Indexed:
    """One item as the previous snapshot holds it."""

    listing_hash: str | None
    record_hash: str
    fetched_at: str | None
    etag: str | None
    line: bytes

    def record(self) -> JSONDict:
        """The stored line as an object (``_harvest`` included)."""
        rec: JSONDict = orjson.loads(self.line)
        return rec


class SnapshotIndex:
    """``index.sqlite`` of one snapshot (read-only for the previous night)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            else:
                self._db = sqlite3.connect(path, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_INDEX_SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"snapshot index {path} is unusable ({exc})") from None

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def get(self, catalog: str, digest: int) -> Indexed | None:
        """The previous snapshot's entry for an item of a catalog."""
        row = self._db.execute(
            "SELECT listing_hash, record_hash, fetched_at, etag, line FROM items "
            "WHERE catalog=? AND digest=?", (catalog, digest)).fetchone()
        if row is None:
            return None
        return Indexed(row[0], row[1], row[2], row[3], zlib.decompress(row[4]))

    def digests(self, catalog: str) -> Iterator[tuple[int, str, str]]:
        """``(digest, content_type, key)`` of every item of a catalog."""
        yield from self._db.execute(
            "SELECT digest, content_type, key FROM items WHERE catalog=?", (catalog,))

    def rebuild(self, catalog: str, spool: Path | None, files: list[Path], *,
                compressed: bool) -> None:
        """(Re)build a catalog's rows from its spooled listing and committed files."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM items WHERE catalog=?", (catalog,))
            db.execute("DELETE FROM listing WHERE catalog=?", (catalog,))
            if spool is not None and spool.exists():
                db.executemany("INSERT OR REPLACE INTO listing VALUES (?, ?, ?)", (
                    (catalog, int(e["d"]), content_hash(e["r"]))
                    for e in map(orjson.loads, iter_lines(spool))))
            for path in files:
                db.executemany(
                    "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, "
                    "(SELECT listing_hash FROM listing WHERE catalog=? AND digest=?), "
                    "?, ?, ?, ?, ?)",
                    (_row(catalog, line) for line in iter_lines(path, compressed=compressed)))
            # A listing-only record is its own listing.
            db.execute("UPDATE items SET listing_hash=record_hash "
                       "WHERE catalog=? AND listing_hash IS NULL", (catalog,))
            db.execute("DELETE FROM listing WHERE catalog=?", (catalog,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def _row(catalog: str, line: bytes) -> tuple[Any, ...]:
    rec = orjson.loads(line)
    h = rec["_harvest"]
    digest = key_digest(h["content_type"], h["key"])
    return (catalog, digest, h["content_type"], h["key"], catalog, digest, content_hash(rec),
            h.get("fetched_at"), h.get("source"), h.get("etag"), zlib.compress(line, 1))


# --- deciding what to fetch --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SyncOptions:
    """Settings of a sync run."""

    previous: Path | None  #: the previous good snapshot's directory, if any
    max_age: float = 7 * DAY
    now: float | None = None  #: wall-clock epoch seconds (tests and backfills set it)

    def at(self) -> float:
        """The run's notion of now."""
        return self.now if self.now is not None else datetime.now(UTC).timestamp()


CARRY: Final = "carry"
FETCH_NEW: Final = "new"
FETCH_CHANGED: Final = "changed"
REFRESH: Final = "refresh"


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class SyncPlan:
    """Per item: carry forward, fetch, or revalidate; and the counts of each."""

    def __init__(self, options: SyncOptions) -> None:
        self.options = options
        self.now = options.at()
        self.nights = max(1, round(options.max_age / DAY))
        self.night = int(self.now // DAY)
        prev = options.previous
        path = prev / "index.sqlite" if prev is not None else None
        self.previous = SnapshotIndex(path, readonly=True) if path and path.exists() else None

    def close(self) -> None:
        """Close the previous index."""
        if self.previous is not None:
            self.previous.close()

    def decide(self, catalog: str, digest: int, listing: JSONDict
               ) -> tuple[str, Indexed | None]:
        """What to do with one listed item that has a detail endpoint."""
        prev = self.previous.get(catalog, digest) if self.previous else None
        if prev is None:
            return FETCH_NEW, None
        if prev.listing_hash != content_hash(listing):
            return FETCH_CHANGED, prev
        if self._due(digest, prev.fetched_at):
            return REFRESH, prev
        return CARRY, prev

    def _due(self, digest: int, fetched_at: str | None) -> bool:
        when = _parse_time(fetched_at)
        if when is None:
            return True
        age = self.now - when
        if age >= self.options.max_age:
            return True
        # Spread: each item has one night in every `nights`; refreshed then if at least
        # half a day old, so a fresh fetch is not refreshed the next morning.
        return digest % self.nights == self.night % self.nights and age >= DAY / 2


def carried_line(prev: Indexed, listing: JSONDict, *, fetched_at: str | None = None,
                 etag: str | None = None) -> bytes:
    """The previous record, brought up to date where the new listing knows better.

    Volatile top-level fields the listing also has (``modified``, enrollment counts...)
    are taken from it; ``_harvest`` gets the listing's ``content_last_modified``.
    """
    rec = prev.record()
    meta = dict(rec.get("_harvest") or {})
    for key in VOLATILE - {"_harvest", "enrollment_url", "content_last_modified"}:
        if key in rec and key in listing:
            rec[key] = listing[key]
    meta["content_last_modified"] = listing.get("content_last_modified")
    meta["aggregation_key"] = listing.get("aggregation_key", meta.get("aggregation_key"))
    if fetched_at is not None:
        meta["fetched_at"] = fetched_at
    if etag is not None:
        meta["etag"] = etag
    rec["_harvest"] = meta
    return orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE)


# --- the change feed ---------------------------------------------------------------------

@dataclass(slots=True)
class ChangeCounts:
    """What a catalog's change feed holds."""

    upserts: int = 0
    deletes: int = 0
    deletes_suppressed: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the manifest."""
        return {"upserts": self.upserts, "deletes": self.deletes,
                "deletes_suppressed": self.deletes_suppressed}


def write_changes(current: SnapshotIndex, previous: SnapshotIndex | None, catalog: str,
                  path: Path, *, listing_complete: bool) -> ChangeCounts:
    """Write ``changes.ndjson`` for one catalog (atomically) and count it."""
    counts = ChangeCounts()
    part = PartFile(path)
    try:
        for digest, ctype, key in current.digests(catalog):
            now = current.get(catalog, digest)
            assert now is not None
            old = previous.get(catalog, digest) if previous else None
            if old is not None and old.record_hash == now.record_hash:
                continue
            part.write(encode_line({"op": "upsert", "catalog_uuid": catalog,
                                    "content_type": ctype, "key": key,
                                    "record": now.record()}))
            counts.upserts += 1
        if previous is not None:
            if listing_complete:
                for digest, ctype, key in previous.digests(catalog):
                    if current.get(catalog, digest) is None:
                        part.write(encode_line({"op": "delete", "catalog_uuid": catalog,
                                                "content_type": ctype, "key": key}))
                        counts.deletes += 1
            else:
                counts.deletes_suppressed = True
        part.commit()
    except BaseException:
        part.abandon()
        raise
    return counts


# --- the store ---------------------------------------------------------------------------

class Store:
    """``STORE/snapshots/<id>/`` (each a complete harvest output) and ``STORE/latest``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshots = root / "snapshots"
        self.latest_link = root / "latest"

    def latest(self) -> Path | None:
        """The latest good snapshot, if any."""
        if not self.latest_link.is_symlink():
            return None
        target = self.latest_link.resolve()
        return target if target.is_dir() else None

    def unfinished(self) -> Path | None:
        """The newest snapshot a killed or interrupted run left behind, to resume."""
        if not self.snapshots.is_dir():
            return None
        for snap in sorted(self.snapshots.iterdir(), reverse=True):
            if (snap / ".state" / "ledger.sqlite").exists() and \
                    not (snap / "manifest.json").exists():
                return snap
        return None

    def new_snapshot(self, run_at: float) -> Path:
        """A fresh, dated snapshot directory."""
        stamp = datetime.fromtimestamp(run_at, UTC).strftime("%Y%m%dT%H%M%SZ")
        path = self.snapshots / stamp
        n = 1
        while path.exists():
            n += 1
            path = self.snapshots / f"{stamp}-{n}"
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise SinkError(f"cannot create snapshot {path}: {exc.strerror}") from None
        return path

    def previous_of(self, snap: Path) -> Path | None:
        """The snapshot a run in ``snap`` compares against (fixed when it started)."""
        marker = snap / ".state" / "previous"
        if marker.exists():
            name = marker.read_text().strip()
            return self.snapshots / name if name else None
        prev = self.latest()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(prev.name if prev else "")
        return prev

    def promote(self, snap: Path) -> None:
        """Point ``latest`` at ``snap`` atomically (a new symlink renamed over the old)."""
        tmp = self.root / ".latest.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(Path("snapshots") / snap.name, tmp)
        os.replace(tmp, self.latest_link)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest finished snapshots; never latest."""
        latest = self.latest()
        finished = sorted(s for s in self.snapshots.iterdir() if (s / "manifest.json").exists())
        doomed = [s for s in finished[:-keep] if s != latest] if keep > 0 else []
        for snap in doomed:
            shutil.rmtree(snap)
        return [s.name for s in doomed]


# --- export ------------------------------------------------------------------------------

def doc_id(catalog: str, content_type: str, key: str) -> str:
    """A stable document id: readable where the engine allows it, else a hash."""
    raw = f"{catalog}:{content_type}:{key}"
    return raw if len(raw.encode()) <= 512 else hashlib.sha256(raw.encode()).hexdigest()


def safe_id(catalog: str, content_type: str, key: str) -> str:
    """An id Meilisearch/Typesense accept (``[A-Za-z0-9_-]``, <= 511 bytes), stable."""
    digest = hashlib.sha256(f"{catalog}:{content_type}:{key}".encode()).hexdigest()[:40]
    return f"{content_type}-{digest}"
