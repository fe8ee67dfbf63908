"""The resume ledger: what is durably done, so a rerun after any crash continues.

``OUT/.state/ledger.sqlite`` (SQLite, WAL) records, per run: the settings fingerprint, the
catalog list, each catalog's phase, the pages each listing walk finished, the items
whose final line is written, every error line (the record of what failed, which a rerun
retries: ``errors.ndjson`` is rendered from it, so losing that file loses nothing), and
for every file being written its committed byte size and line count. The writer only
records a batch *after* flushing and fsyncing the files that hold it, so the ledger
never runs ahead of the data. On resume, every ``.part``
file is cut back to its committed size: a torn last line, or lines written after the
last checkpoint, disappear, and their items are fetched again, so nothing is written
twice.

``OUT/.state/lock`` is held with ``flock`` for the whole run: a second harvester on the
same OUT is refused with the holder's pid; a lock left by a dead process is released
by the kernel, so it is never stale.

``.state`` is a private directory (``0700``); a symlink planted in place of it, of the
lock or of a ledger file is refused, never followed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from harvester.errors import SinkError, StateError
from harvester.sinks import ensure_dir, not_ours, planted_link, unopenable

STATE_DIR: Final = ".state"
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS catalogs (
    uuid TEXT PRIMARY KEY, pos INTEGER NOT NULL, record TEXT NOT NULL,
    phase TEXT NOT NULL DEFAULT 'new', info TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS walks (
    catalog TEXT NOT NULL, walk INTEGER NOT NULL, count INTEGER, page_size INTEGER NOT NULL,
    total_pages INTEGER, PRIMARY KEY (catalog, walk));
CREATE TABLE IF NOT EXISTS pages (
    catalog TEXT NOT NULL, walk INTEGER NOT NULL, page INTEGER NOT NULL,
    PRIMARY KEY (catalog, walk, page)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS done (
    catalog TEXT NOT NULL, digest INTEGER NOT NULL, PRIMARY KEY (catalog, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, lines INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS errors (
    seq INTEGER PRIMARY KEY, catalog TEXT, kind TEXT, line BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS errors_by_catalog ON errors (catalog);
"""


@dataclass(frozen=True, slots=True)
class WalkRecord:
    """What page 1 of a walk taught us, kept so a resumed walk need not refetch it."""

    count: int | None
    page_size: int
    total_pages: int | None


@dataclass(slots=True)
class Checkpoint:
    """One batch of progress, recorded in one transaction after its data is fsynced."""

    files: dict[str, tuple[int, int]]
    pages: list[tuple[str, int, int]]
    walks: list[tuple[str, int, WalkRecord]]
    done: list[tuple[str, int]]
    infos: dict[str, dict[str, Any]]
    phases: dict[str, str]
    #: error lines as written to ``errors.ndjson``, with their catalog and kind
    errors: list[tuple[str | None, str | None, bytes]] = field(default_factory=list)

    @classmethod
    def empty(cls) -> Checkpoint:
        """A checkpoint with nothing in it."""
        return cls({}, [], [], [], {}, {})

    def __bool__(self) -> bool:
        return bool(self.files or self.pages or self.walks or self.done or self.infos
                    or self.phases or self.errors)


def state_dir(out: Path) -> Path:
    """Create ``OUT/.state`` private (``0700``); refuse it if it is a link."""
    try:
        return ensure_dir(out / STATE_DIR, root=out, private=True)
    except SinkError as exc:
        raise StateError(str(exc)) from None


class RunLock:
    """An exclusive ``flock`` on ``OUT/.state/lock`` for the life of a run."""

    def __init__(self, out: Path) -> None:
        self.path = out / STATE_DIR / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise StateError naming the pid that holds it."""
        state_dir(self.path.parent.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if (why := unopenable(self.path, exc)) is not None:
                raise StateError(f"refusing to use lock {self.path}: {why}") from None
            raise StateError(f"cannot create lock {self.path}: {exc.strerror}"
                             + (" (a symbolic link; refusing to follow it)"
                                if exc.errno == errno.ELOOP else "")) from None
        why = not_ours(os.fstat(fd))
        if why is not None:
            os.close(fd)
            raise StateError(f"refusing to use lock {self.path}: {why}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateError(self.busy_message(holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def busy_message(self, holder: str) -> str:
        """The one-line refusal when pid ``holder`` has the lock."""
        return (f"another harvester (pid {holder}) is writing to {self.path.parent.parent}; "
                "wait for it or use another --out")

    def release(self) -> None:
        """Drop the lock (the kernel also drops it if the process dies)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Ledger:
    """The durable record of one run's progress in ``OUT/.state/ledger.sqlite``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / STATE_DIR / "ledger.sqlite"
        state_dir(out)
        # SQLite follows links: refuse one planted in place of the database or its journals.
        suffixes = ("", "-wal", "-shm", "-journal")
        link = planted_link(*(self.path.with_name(self.path.name + s) for s in suffixes))
        if link is not None:
            raise StateError(f"resume ledger file {link} is a symbolic link, a hard link or "
                             "not a regular file; refusing to use it (remove it, or choose "
                             "another --out)")
        try:
            # check_same_thread off: with many tenants in one process the writer records
            # its checkpoints from a worker thread (see Writer ``offload``); SQLite
            # serialises calls on one connection, and only that writer ever writes.
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"resume ledger {self.path} is unusable ({exc}); "
                             "rerun with --restart to start over") from None

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # --- run identity ----------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A run-level value (fingerprint, run_id, status...)."""
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, **values: str) -> None:
        """Set run-level values in one transaction."""
        with self._tx():
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())

    def is_empty(self) -> bool:
        """True when no run has been recorded here yet."""
        return self.meta("fingerprint") is None

    def reset(self) -> None:
        """Forget everything (``--restart``)."""
        with self._tx():
            for table in ("meta", "catalogs", "walks", "pages", "done", "files", "errors"):
                self._db.execute(f"DELETE FROM {table}")

    # --- catalogs --------------------------------------------------------------------------

    def save_catalogs(self, records: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Record the catalog list of this run, in order."""
        with self._tx():
            for pos, (uuid, record) in enumerate(records):
                self._db.execute(
                    "INSERT OR IGNORE INTO catalogs (uuid, pos, record) VALUES (?, ?, ?)",
                    (uuid, pos, orjson.dumps(record).decode()))

    def catalogs(self) -> list[tuple[str, dict[str, Any], str, dict[str, Any]]]:
        """``(uuid, record, phase, info)`` for every catalog, in list order."""
        rows = self._db.execute(
            "SELECT uuid, record, phase, info FROM catalogs ORDER BY pos").fetchall()
        return [(u, orjson.loads(r), p, orjson.loads(i)) for u, r, p, i in rows]

    # --- progress ----------------------------------------------------------------------------

    def walk_plan(self, catalog: str, walk: int) -> WalkRecord | None:
        """The recorded plan of a walk, if its page 1 is done."""
        row = self._db.execute("SELECT count, page_size, total_pages FROM walks "
                               "WHERE catalog=? AND walk=?", (catalog, walk)).fetchone()
        return None if row is None else WalkRecord(row[0], row[1], row[2])

    def last_walk(self, catalog: str) -> int:
        """The highest walk number started for a catalog (0 if none)."""
        row = self._db.execute("SELECT MAX(walk) FROM walks WHERE catalog=?",
                               (catalog,)).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def pages_done(self, catalog: str, walk: int) -> set[int]:
        """Pages of a walk whose items are durably spooled."""
        return {r[0] for r in self._db.execute(
            "SELECT page FROM pages WHERE catalog=? AND walk=?", (catalog, walk))}

    def done(self, catalog: str) -> set[int]:
        """Digests of a catalog's items whose final line is durably written."""
        return {r[0] for r in self._db.execute(
            "SELECT digest FROM done WHERE catalog=?", (catalog,))}

    def files(self) -> dict[str, tuple[int, int]]:
        """Committed ``(size, lines)`` of every file in progress, by path relative to OUT."""
        return {p: (s, n) for p, s, n in self._db.execute(
            "SELECT path, size, lines FROM files")}

    def errors(self, catalog: str | None = None) -> list[bytes]:
        """The run's error lines in the order written (of one ``catalog``, if given)."""
        if catalog is None:
            rows = self._db.execute("SELECT line FROM errors ORDER BY seq")
        else:
            rows = self._db.execute("SELECT line FROM errors WHERE catalog=? ORDER BY seq",
                                    (catalog,))
        return [bytes(r[0]) for r in rows]

    def error_kinds(self, catalog: str | None = None) -> dict[str, int]:
        """How many error lines of each kind the run holds (of one ``catalog``, if given)."""
        where, args = ("WHERE catalog=?", (catalog,)) if catalog is not None else ("", ())
        return {str(k): int(n) for k, n in self._db.execute(
            f"SELECT kind, COUNT(*) FROM errors {where} GROUP BY kind", args)}

    def forget_file(self, rel: str) -> None:
        """Stop tracking a file (it was committed under its final name)."""
        with self._tx():
            self._db.execute("DELETE FROM files WHERE path=?", (rel,))

    def reopen(self, *, relist: Iterable[str], undone: Iterable[tuple[str, int]],
               forget: Iterable[str], cp: Checkpoint,
               meta: dict[str, str] | None = None) -> None:
        """Make failed work to do again, in one transaction: forget the walks and pages of
        the catalogs to list again, the done marks of the items to fetch again, the
        files in ``forget`` and every error line, and record ``cp`` (new phases and
        counters, the files reopened for appending, the error lines that stay) and
        ``meta`` (run-level values, such as file work still to finish).

        Call before anything that loses the record of those failures (the old error
        lines), so a crash in between only makes the next session do it again.
        """
        with self._tx():
            for catalog in relist:
                self._db.execute("DELETE FROM walks WHERE catalog=?", (catalog,))
                self._db.execute("DELETE FROM pages WHERE catalog=?", (catalog,))
            self._db.executemany("DELETE FROM done WHERE catalog=? AND digest=?", undone)
            self._db.executemany("DELETE FROM files WHERE path=?", ((p,) for p in forget))
            self._db.execute("DELETE FROM errors")
            self._record(cp)
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 (meta or {}).items())

    def redo_catalogs(self, catalogs: Iterable[str], forget: Iterable[str]) -> None:
        """A finished run whose output lost files: these catalogs start over (their
        walks, pages, done items and counters forgotten, back to listing; tracked files
        whose path starts with one of ``forget`` forgotten) and the run is ``running``
        again, in one transaction, so a crash before the output is rebuilt never leaves
        a ledger that still says ``complete``."""
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('status', 'running')")
            for catalog in catalogs:
                for table in ("walks", "pages", "done"):
                    self._db.execute(f"DELETE FROM {table} WHERE catalog=?", (catalog,))
                self._db.execute("UPDATE catalogs SET phase='listing', info='{}' "
                                 "WHERE uuid=?", (catalog,))
            for prefix in forget:
                self._db.execute("DELETE FROM files WHERE substr(path, 1, ?) = ?",
                                 (len(prefix), prefix))

    def record(self, cp: Checkpoint) -> None:
        """Record a checkpoint atomically. Call only after its files are fsynced."""
        with self._tx():
            self._record(cp)

    def _record(self, cp: Checkpoint) -> None:
        self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?)",
                             [(p, s, n) for p, (s, n) in cp.files.items()])
        self._db.executemany("INSERT OR IGNORE INTO pages VALUES (?, ?, ?)", cp.pages)
        self._db.executemany(
            "INSERT OR REPLACE INTO walks VALUES (?, ?, ?, ?, ?)",
            [(c, w, p.count, p.page_size, p.total_pages) for c, w, p in cp.walks])
        self._db.executemany("INSERT OR IGNORE INTO done VALUES (?, ?)", cp.done)
        self._db.executemany("UPDATE catalogs SET info=? WHERE uuid=?",
                             [(orjson.dumps(i).decode(), c) for c, i in cp.infos.items()])
        self._db.executemany("UPDATE catalogs SET phase=? WHERE uuid=?",
                             [(p, c) for c, p in cp.phases.items()])
        self._db.executemany("INSERT INTO errors (catalog, kind, line) VALUES (?, ?, ?)",
                             cp.errors)

    def _tx(self) -> _Tx:
        return _Tx(self._db, self.path)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, with sqlite errors translated."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StateError(f"resume ledger {self._path}: {exc}") from None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._db.execute("COMMIT")
            else:
                self._db.execute("ROLLBACK")
        except sqlite3.Error as err:
            raise StateError(f"resume ledger {self._path}: {err}") from None
