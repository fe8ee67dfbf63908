"""The snapshot index: ``OUT/index.sqlite`` next to a snapshot, and the only code that opens it.

:class:`SnapshotIndex` holds, per catalog and item, the listing hash, the record hash, when
its detail was fetched, its ETag and the line itself (zlib). A later night reads it by
point look-ups, so a 1,000,000-item catalog syncs in flat memory. It also keeps the deletes
withheld for a later night (``pending``). Decides nothing about what to fetch (that is
:mod:`harvester.delta.rules`); never follows a link planted in place of its files.
"""

from __future__ import annotations

import contextlib
import sqlite3
import urllib.parse
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from harvester.delta.hashing import content_hash
from harvester.errors import StateError, UnsafePath
from harvester.models import JSONDict, key_digest
from harvester.partfile import iter_lines
from harvester.sinks import planted_link

__all__ = ["Indexed", "SnapshotIndex"]


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
            # SQLite follows links and blocks on a FIFO: never open one planted in place
            # of ours (nor a hard link, which is another file too).
            names = ("",) if readonly else ("", "-wal", "-shm", "-journal")
            link = planted_link(*(path.with_name(path.name + s) for s in names))
            if link is not None:
                raise UnsafePath(f"refusing to use {link}: a symbolic link, a hard link or "
                                 "not a regular file")
            if readonly:
                self._db = sqlite3.connect(_readonly_uri(path), uri=True)
            else:
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
