"""What changed since the last snapshot: change detection, the snapshot index, refresh rules.

* :func:`content_hash` is a stable hash of a record over normalised fields. The volatile
  ones (``modified``, ``content_last_modified``, enrollment counts, ratings, enrollment
  URLs, ``normalized_metadata*``, and ``utm_*`` parameters in URLs) are left out, because
  the service bumps them every day whether or not anything changed
  (edx-api-behaviour.md section 7).
* :class:`SnapshotIndex` is ``OUT/index.sqlite`` next to a snapshot: per catalog and item,
  the listing hash, the record hash, when its detail was fetched, its ETag and the line
  itself (zlib). A later night reads it by point look-ups, so a 1,000,000-item catalog
  syncs in flat memory.
* :class:`RefreshRules` decides per listed item: carry the previous record forward, fetch it
  (new, listing changed, previous record listing-only, or kept stale by an earlier night),
  or revalidate it (refresh due, with ``If-None-Match``). Refreshes are spread over the
  nights of ``max_age``: an item is due on the night its identity hashes to, so each
  night refreshes about 1/N of the catalog, never all of it at once.
* :func:`stale_line` keeps a previous record whose fetch failed tonight, marked stale: a
  listed item is never gone, so a failure is never a delete.

The change feed is :mod:`harvester.changes`, the store of dated snapshots
:mod:`harvester.store`. Must not run a harvest or make
requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sqlite3
import urllib.parse
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from harvester.errors import StateError, UnsafePath
from harvester.models import JSONDict, key_digest
from harvester.sinks import (
    iter_lines,
    planted_link,
)

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
    source TEXT, etag TEXT, line BLOB NOT NULL, stale INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (catalog, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS listing (
    catalog TEXT NOT NULL, digest INTEGER NOT NULL, listing_hash TEXT NOT NULL,
    PRIMARY KEY (catalog, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    catalog TEXT NOT NULL, digest INTEGER NOT NULL, content_type TEXT NOT NULL,
    key TEXT NOT NULL, PRIMARY KEY (catalog, digest)) WITHOUT ROWID;
"""


#: The index's ``stale`` column: 1 failed (kept stale), 2 deferred by a deadline.
_DEFERRED: Final = 2


@dataclass(frozen=True, slots=True)
class Indexed:
    """One item as the previous snapshot holds it."""

    listing_hash: str | None
    record_hash: str
    fetched_at: str | None
    etag: str | None
    line: bytes
    source: str | None = None  #: "detail", or "listing" for a listing-only record
    stale: bool = False  #: kept from an earlier night (its fetch failed, or was deferred)
    deferred: bool = False  #: kept because a deadline stopped the night before its fetch

    def record(self) -> JSONDict:
        """The stored line as an object (``_harvest`` included)."""
        rec: JSONDict = orjson.loads(self.line)
        return rec


def _readonly_uri(path: Path) -> str:
    """A URI opening a committed snapshot's index without writing a byte next to it.

    ``mode=ro`` alone still creates ``-shm``/``-wal`` for a WAL database (and changes the
    snapshot directory's mtime, or fails on a read-only store); ``immutable=1`` takes no
    locks and creates nothing. It is only safe when no ``-wal`` holds unmerged pages: a
    cleanly closed index has none, so only then is it used."""
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    if not path.with_name(path.name + "-wal").exists():
        uri += "&immutable=1"
    return uri


class SnapshotIndex:
    """``index.sqlite`` of one snapshot (read-only for the previous night)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        try:
            if readonly:
                self._db = sqlite3.connect(_readonly_uri(path), uri=True)
            else:
                # SQLite follows links: never open one planted in place of ours.
                link = planted_link(*(path.with_name(path.name + s)
                                      for s in ("", "-wal", "-shm", "-journal")))
                if link is not None:
                    raise UnsafePath(f"refusing to use {link}: a symbolic link or not a "
                                     "regular file")
                self._db = sqlite3.connect(path, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_INDEX_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(items)")}
            if "stale" not in columns and not readonly:  # an index from before `stale`
                self._db.execute("ALTER TABLE items ADD COLUMN stale INTEGER NOT NULL DEFAULT 0")
        except sqlite3.Error as exc:
            raise StateError(f"snapshot index {path} is unusable ({exc})") from None
        # An older previous index has no `stale` column: nothing in it is stale.
        self._stale = "stale" if readonly is False or "stale" in columns else "0"

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def get(self, catalog: str, digest: int) -> Indexed | None:
        """The previous snapshot's entry for an item of a catalog."""
        row = self._db.execute(
            f"SELECT listing_hash, record_hash, fetched_at, etag, line, source, {self._stale} "
            "FROM items WHERE catalog=? AND digest=?", (catalog, digest)).fetchone()
        if row is None:
            return None
        return Indexed(row[0], row[1], row[2], row[3], zlib.decompress(row[4]), row[5],
                       bool(row[6]), row[6] == _DEFERRED)

    def digests(self, catalog: str) -> Iterator[tuple[int, str, str]]:
        """``(digest, content_type, key)`` of every item of a catalog."""
        yield from self._db.execute(
            "SELECT digest, content_type, key FROM items WHERE catalog=?", (catalog,))

    def pending(self, catalog: str) -> Iterator[tuple[int, str, str]]:
        """``(digest, content_type, key)`` of deletes withheld on this night (or carried
        into it) for a catalog: gone from an earlier snapshot, not yet in any feed."""
        try:
            rows = self._db.execute(
                "SELECT digest, content_type, key FROM pending WHERE catalog=?", (catalog,))
        except sqlite3.OperationalError:  # an index written before pending deletes existed
            return
        yield from rows

    def set_pending(self, catalog: str, rows: Iterator[tuple[int, str, str]]) -> int:
        """Replace a catalog's pending deletes; returns how many there are."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM pending WHERE catalog=?", (catalog,))
            db.executemany("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?)",
                           ((catalog, d, t, k) for d, t, k in rows))
            n = int(db.execute("SELECT count(*) FROM pending WHERE catalog=?",
                               (catalog,)).fetchone()[0])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return n
    def catalogs(self) -> set[str]:
        """Every catalog that has an item, or a pending delete, in this snapshot."""
        found = {row[0] for row in self._db.execute("SELECT DISTINCT catalog FROM items")}
        # An index written before pending deletes existed has no such table.
        with contextlib.suppress(sqlite3.OperationalError):
            found |= {row[0] for row in self._db.execute("SELECT DISTINCT catalog FROM pending")}
        return found

    def lines(self, catalog: str) -> Iterator[tuple[int, str, bytes]]:
        """``(digest, content_type, line)`` of every item of a catalog."""
        for digest, ctype, blob in self._db.execute(
                "SELECT digest, content_type, line FROM items WHERE catalog=?", (catalog,)):
            yield digest, ctype, zlib.decompress(blob)

    def stale_digests(self, catalog: str) -> set[int]:
        """The items of a catalog kept stale (their fetch failed): retried first."""
        return {row[0] for row in self._db.execute(
            f"SELECT digest FROM items WHERE catalog=? AND {self._stale}", (catalog,))}

    def stale_summary(self, catalog: str, *, limit: int = 100) -> tuple[int, list[str]]:
        """How many items of a catalog are stale (failed; deferred ones are not), and the
        keys of the first ``limit``."""
        (n,) = self._db.execute(
            f"SELECT count(*) FROM items WHERE catalog=? AND {self._stale} = 1",
            (catalog,)).fetchone()
        keys = [row[0] for row in self._db.execute(
            f"SELECT key FROM items WHERE catalog=? AND {self._stale} = 1 ORDER BY key LIMIT ?",
            (catalog, limit))]
        return int(n), keys

    def rebuild(self, catalog: str, listing: Iterable[tuple[int, JSONDict]] | None,
                files: list[Path], *, compressed: bool) -> None:
        """(Re)build a catalog's rows from its listing (``(digest, listed record)``, one
        per item) and committed files."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM items WHERE catalog=?", (catalog,))
            db.execute("DELETE FROM listing WHERE catalog=?", (catalog,))
            if listing is not None:
                db.executemany("INSERT OR REPLACE INTO listing VALUES (?, ?, ?)", (
                    (catalog, digest, content_hash(rec)) for digest, rec in listing))
            for path in files:
                db.executemany(
                    "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, "
                    "(SELECT listing_hash FROM listing WHERE catalog=? AND digest=?), "
                    "?, ?, ?, ?, ?, ?)",
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
            h.get("fetched_at"), h.get("source"), h.get("etag"), zlib.compress(line, 1),
            1 if h.get("stale") else _DEFERRED if h.get("deferred") else 0)


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

    def fingerprint_parts(self) -> dict[str, Any]:
        """What gives a snapshot its meaning beyond the harvest settings: its date
        (``--as-of``, which also names it) and the refresh plan (``--max-age``)."""
        return {"as_of": self.now, "max_age": self.max_age}


CARRY: Final = "carry"
FETCH_NEW: Final = "new"
FETCH_CHANGED: Final = "changed"
REFRESH: Final = "refresh"
RETRY: Final = "retry"  #: kept stale by an earlier night: fetched again, first


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class RefreshRules:
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
        if prev.stale:
            return RETRY, prev
        if prev.source != "detail":
            # A listing-only record (a --no-details night) is not a detail to carry.
            return FETCH_CHANGED, prev
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


def stale_line(line: bytes, reason: str, at: str) -> bytes:
    """A previous record kept unchanged, marked stale in ``_harvest``: ``stale: true``,
    why (``stale_reason``) and since when (``stale_since``, kept from the first failure)."""
    rec: JSONDict = orjson.loads(line)
    meta = dict(rec.get("_harvest") or {})
    meta.pop("deferred", None)  # it was tried tonight: failed, no longer just deferred
    meta.pop("deferred_since", None)
    meta["stale"] = True
    meta["stale_reason"] = reason
    meta.setdefault("stale_since", at)
    rec["_harvest"] = meta
    return orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE)


def deferred_line(line: bytes, at: str) -> bytes:
    """A record kept because a deadline stopped the night before its fetch: marked
    ``deferred: true`` (and ``deferred_since``, kept from the first such night), so the
    next night fetches it first. Not a failure: any ``stale`` marks it had stay as they
    were."""
    rec: JSONDict = orjson.loads(line)
    meta = dict(rec.get("_harvest") or {})
    meta["deferred"] = True
    meta.setdefault("deferred_since", at)
    rec["_harvest"] = meta
    return orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE)


def _ambiguous(catalog: str, content_type: str) -> bool:
    """Whether ``catalog:type:key`` could also be read as another triple."""
    return ":" in catalog + content_type or "\0" in catalog + content_type


def _tagged(catalog: str, content_type: str, key: str) -> bytes:
    """An unambiguous encoding for ambiguous triples; NUL-led, so no plain form equals it."""
    return b"\0" + orjson.dumps([catalog, content_type, key])


def doc_id(catalog: str, content_type: str, key: str) -> str:
    """A stable document id: readable where the engine allows it, else a hash.

    A type or catalog holding ``:`` would make the readable form ambiguous, so such
    items get a hash of an unambiguous encoding (never equal to a readable id, which
    has colons).
    """
    if _ambiguous(catalog, content_type):
        return hashlib.sha256(_tagged(catalog, content_type, key)).hexdigest()
    raw = f"{catalog}:{content_type}:{key}"
    raw_bytes = raw.encode("utf-8", "surrogatepass")
    return raw if len(raw_bytes) <= 512 else hashlib.sha256(raw_bytes).hexdigest()


_ID_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]+")


def safe_id(catalog: str, content_type: str, key: str) -> str:
    """An id Meilisearch/Typesense accept (``[A-Za-z0-9_-]``, <= 511 bytes), stable.

    ``<content type, cleaned and cut to 64>-<40 hex>``. The hex is what makes it unique:
    a hash of an unambiguous encoding of all three parts (``catalog:type:key`` while
    neither of the first two holds a ``:``, as ids have always been made, so existing ids
    do not change; a NUL-tagged JSON array otherwise, which no plain form can equal).
    """
    if _ambiguous(catalog, content_type):
        raw = _tagged(catalog, content_type, key)
    else:
        raw = f"{catalog}:{content_type}:{key}".encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(raw).hexdigest()[:40]
    prefix = _ID_UNSAFE.sub("_", content_type)[:64] or "item"
    return f"{prefix}-{digest}"
