"""The sync store, and what a finished night means for it.

:class:`Store` keeps dated snapshots and ``latest`` (a symlink), and refuses a planted
link or path at any of its names (:meth:`Store.check`); only a good run becomes
latest, ``--keep N`` prunes the oldest (never latest, never the one just written), and
an unfinished snapshot a changed command cannot resume is abandoned. One sync at a time
per store (:class:`StoreLock`). :func:`settle_night` reads the night's
:class:`~harvester.manifest.Manifest`, promotes the snapshot only when it is
:func:`usable`, prunes, and returns the night's totals (:func:`sync_totals`); the
summary a person reads is drawn by :mod:`harvester.display`. Must not run a harvest,
print, or decide a run's status.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from harvester.errors import SinkError, StateError, UnsafePath
from harvester.manifest import Manifest
from harvester.outputs import clear_outputs, listed_catalogs
from harvester.run import Phase
from harvester.sinks import (
    DIR_MODE,
    disk_errors,
    ensure_dir,
    fsync_dir,
    read_ours,
    resolved,
    write_json_atomic,
)
from harvester.state import STATE_DIR, RunLock

#: What a run writes in a snapshot's ``.state`` (besides its ``spool`` directory).
_STATE_FILES: Final = ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm",
                "ledger.sqlite-journal", "lock", "previous", ".previous.tmp")


def remove_snapshot(snap: Path) -> None:
    """Remove what a sync wrote in ``snap``: its output by exact name (see
    :func:`~harvester.outputs.clear_outputs`) and its ``.state``; then the directory, if
    that leaves it empty. A file a person put there stays, and keeps its directory."""
    clear_outputs(snap, listed_catalogs(snap))
    state = snap / STATE_DIR
    with disk_errors(snap):
        if state.is_dir() and not state.is_symlink():
            for name in _STATE_FILES:
                if (state / name).is_symlink() or (state / name).is_file():
                    (state / name).unlink()
            for directory in (state / "spool", state):
                with contextlib.suppress(OSError):
                    directory.rmdir()
        with contextlib.suppress(OSError):
            snap.rmdir()


class StoreLock(RunLock):
    """``STORE/.state/lock``: one sync per store, for the whole command (choosing,
    abandoning or resuming a snapshot, the run, promote and prune)."""

    def busy_message(self, holder: str) -> str:
        """Name the store: `sync` has no --out to switch to."""
        return (f"another harvester (pid {holder}) is syncing the store "
                f"{self.path.parent.parent}; wait for it to finish")


def _our_link(path: Path) -> None:
    """Refuse anything but a symbolic link (or nothing) at ``path``: the only links we
    create are ``latest`` and its temp, and a directory or file there is not ours."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISLNK(mode):
        what = "a directory" if stat.S_ISDIR(mode) else "not a symbolic link"
        raise UnsafePath(f"refusing to replace {path}: it is {what} the harvester did not "
                         "create (remove it, or choose another --store)")


class Store:
    """``STORE/snapshots/<id>/`` (each a complete harvest output) and ``STORE/latest``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshots = root / "snapshots"
        self.latest_link = root / "latest"
        self._latest_tmp = root / ".latest.tmp"

    def check(self) -> None:
        """Refuse a store whose own names were planted (UnsafePath, exit 2), before the
        night starts: ``snapshots`` must be a real directory (created if missing; never a
        link, so no snapshot, feed, index or prune goes through one), ``latest`` and
        ``.latest.tmp`` our symlinks or absent, and ``latest`` must lead to a snapshot
        of this store (the previous night is read from it, and pruning spares it)."""
        ensure_dir(self.snapshots, root=self.root)
        _our_link(self.latest_link)
        _our_link(self._latest_tmp)
        latest = self.latest()
        if latest is not None and latest.parent != resolved(self.snapshots):
            raise UnsafePath(f"refusing to use {self.latest_link}: it leads to {latest}, "
                             "outside the store's snapshots/ (through a symbolic link the "
                             "harvester did not create)")

    def lock(self) -> StoreLock:
        """The store's lock (acquire it before anything else)."""
        return StoreLock(self.root)

    def latest(self) -> Path | None:
        """The latest good snapshot, if any."""
        if not self.latest_link.is_symlink():
            return None
        target = resolved(self.latest_link)
        return target if target.is_dir() else None

    def _dirs(self) -> list[Path]:
        """Snapshot directories, oldest name first (never a link planted there)."""
        if self.snapshots.is_symlink() or not self.snapshots.is_dir():
            return []
        return sorted(s for s in self.snapshots.iterdir() if s.is_dir() and not s.is_symlink())

    def unfinished(self) -> Path | None:
        """The newest snapshot a killed or interrupted run left behind (no manifest).
        Only one a run of ours started (it has our ``.state``): a directory abandon or
        prune left behind for a user's file in it is not a run to resume, and seeing it
        as one would "abandon" it again every night."""
        left = [s for s in self._dirs() if not (s / "manifest.json").exists()
                and (s / STATE_DIR).is_dir() and not (s / STATE_DIR).is_symlink()]
        return left[-1] if left else None

    def new_snapshot(self, run_at: float) -> Path:
        """A fresh, dated snapshot directory."""
        stamp = datetime.fromtimestamp(run_at, UTC).strftime("%Y%m%dT%H%M%SZ")
        path = self.snapshots / stamp
        n = 1
        while path.exists() or path.is_symlink():
            n += 1
            path = self.snapshots / f"{stamp}-{n}"
        ensure_dir(self.snapshots, root=self.root)
        try:
            path.mkdir(mode=DIR_MODE)
        except OSError as exc:
            raise SinkError(f"cannot create snapshot {path}: {exc.strerror}") from None
        return path

    def _is_latest(self, snap: Path) -> bool:
        latest = self.latest()
        return latest is not None and latest == resolved(snap)

    def abandon(self, snap: Path) -> None:
        """Delete an unfinished snapshot that cannot be resumed (what a sync wrote in it,
        see :func:`remove_snapshot`). Never latest, never a finished one: those are
        refused with StateError."""
        if self._is_latest(snap) or (snap / "manifest.json").exists() or snap.is_symlink():
            raise StateError(f"refusing to abandon {snap}: it is a finished snapshot")
        remove_snapshot(snap)
        fsync_dir(self.snapshots)

    def _marker(self, snap: Path) -> Path:
        return snap / ".state" / "previous"

    def marker_problem(self, snap: Path) -> str | None:
        """Why ``snap``'s record of its previous snapshot cannot be trusted, or None.

        A run that cannot be sure what it compares against would emit a wrong feed (no
        previous: every item an upsert and no deletes), so such a snapshot is abandoned.
        """
        marker = self._marker(snap)
        if not marker.exists():
            return None  # not started yet: the marker is written when the run starts
        try:
            data = orjson.loads(read_ours(marker))
        except (OSError, SinkError, orjson.JSONDecodeError):
            return "its record of the previous snapshot is unreadable"
        name = data.get("previous", "") if isinstance(data, dict) else ""
        if name is None:
            return None
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            return "its record of the previous snapshot is unreadable"
        if not (self.snapshots / name / "index.sqlite").exists():
            return f"its previous snapshot {name} is gone"
        return None

    def previous_of(self, snap: Path) -> Path | None:
        """The snapshot a run in ``snap`` compares against (fixed when it started)."""
        marker = self._marker(snap)
        if marker.exists():
            if (problem := self.marker_problem(snap)) is not None:
                raise StateError(f"{snap}: {problem}")
            name = orjson.loads(read_ours(marker))["previous"]
            return self.snapshots / name if name else None
        prev = self.latest()
        write_json_atomic(marker, {"previous": prev.name if prev else None}, private=True,
                          root=snap)
        return prev

    def promote(self, snap: Path) -> None:
        """Point ``latest`` at ``snap`` atomically (a new symlink renamed over the old), and
        durably: a power cut after this returns still finds ``latest`` there."""
        fsync_dir(self.snapshots)  # the snapshot's own entry first
        self.check()  # again: a path planted during the night is refused, not replaced
        tmp = self._latest_tmp
        with disk_errors(tmp):
            tmp.unlink(missing_ok=True)
            os.symlink(Path("snapshots") / snap.name, tmp)
            os.replace(tmp, self.latest_link)
        fsync_dir(self.root)

    def prune(self, keep: int, *, current: Path | None = None) -> list[str]:
        """Delete all but the ``keep`` newest finished snapshots; never the one ``latest``
        points to, nor ``current`` (the one just written), however the store path is
        spelled (relative, through a link)."""
        if keep < 1:
            return []
        spared = {resolved(p) for p in (self.latest(), current) if p is not None}
        finished = [s for s in self._dirs() if (s / "manifest.json").exists()]
        doomed = [s for s in finished[:-keep] if resolved(s) not in spared]
        for snap in doomed:
            remove_snapshot(snap)
        return [s.name for s in doomed]


# --- export ------------------------------------------------------------------------------


#: The sync block's counts summed over catalogs for the night's totals.
SYNC_TOTALS = ("carried", "fetched_new", "fetched_changed", "refreshed", "retried_stale",
               "not_modified", "upserts", "deletes")


@dataclass(frozen=True, slots=True)
class Night:
    """How a sync night ended for its store."""

    promoted: bool
    pruned: list[str]
    manifest: Manifest  #: the snapshot's, typed


def usable(manifest: Manifest) -> bool:
    """Whether a finished snapshot may become ``latest``: every catalog done, or failed
    and carried forward from the previous snapshot (stale, no deletes), and no listing
    gaps. Failed details do not count against it: they are kept stale."""
    return all((c.status == Phase.DONE or "carried_forward" in c.sync) and not c.gaps
               for c in manifest.catalogs.values())


def sync_totals(manifest: Manifest) -> dict[str, int]:
    """The night's sync counts over every catalog, gone catalogs' deletes included."""
    cats = manifest.catalogs.values()
    totals = {k: sum(int(c.sync.get(k, 0)) for c in cats) for k in SYNC_TOTALS}
    gone: Mapping[str, Any] = manifest.sync.get("gone_catalogs") or {}
    totals["deletes"] += sum(int(g["deletes"]) for g in gone.values())
    return totals


def settle_night(store: Store, snap: Path, manifest: Mapping[str, Any], *,
                 keep: int) -> Night:
    """Promote ``snap`` if it is usable, prune the store to ``keep`` snapshots."""
    night = Manifest.from_json(manifest)
    good = usable(night)
    if good:
        store.promote(snap)
    pruned = store.prune(keep, current=snap)
    return Night(good, pruned, night)
