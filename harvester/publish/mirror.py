"""Mirroring one local directory under a prefix: what is published (never state, temp,
partial files or the sync index), in which order (data, then manifests, deepest first),
the per-prefix index of size and sha256 that makes re-publishing skip and a killed
publish resume, and the removal of what an earlier publish left that is gone. Must not
know runs, stores or tenants."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

import orjson

from harvester.errors import PublishError
from harvester.obs import event
from harvester.publish.target import PublishReport, Target
from harvester.sinks import open_ours

__all__ = ["INDEX_NAME", "MANIFEST_NAME", "guard", "publish_dir"]

INDEX_NAME: Final = ".harvester-publish.json"
MANIFEST_NAME: Final = "manifest.json"
#: Uploads in flight: enough to hide a store's per-request latency.
_WORKERS: Final = 16
#: Seconds between rewrites of the index while uploads finish (a resume loses at most this).
_CHECKPOINT_S: Final = 1.0
_CHUNK: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class _File:
    rel: str  #: posix path under the published directory
    path: Path
    size: int


@dataclass(slots=True)
class _Done:
    rel: str
    size: int
    sha256: str
    uploaded: bool


# --- what is published -------------------------------------------------------------------


def _publishable(rel: PurePosixPath) -> bool:
    """Never state, temp, partial files or the sync index: only finished output."""
    return not (any(p.startswith(".") for p in rel.parts) or rel.name.endswith(".part")
                or rel.name.startswith("index.sqlite"))


def _local_files(root: Path, include: Callable[[PurePosixPath], bool]) -> list[_File]:
    """Regular files under ``root`` (no links followed), in a stable order."""
    found: list[_File] = []
    for here, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not os.path.islink(os.path.join(here, d)))
        for name in sorted(names):
            path = Path(here, name)
            rel = PurePosixPath(path.relative_to(root).as_posix())
            if path.is_symlink() or not path.is_file():
                continue
            if _publishable(rel) and include(rel):
                found.append(_File(rel.as_posix(), path, path.stat().st_size))
    return found


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with os.fdopen(open_ours(path, shared=True), "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _manifest_order(files: Iterable[_File]) -> list[_File]:
    """Manifests deepest first, so the top-level one (the run's summary) is written last."""
    return sorted(files, key=lambda f: (-f.rel.count("/"), f.rel))


# --- the upload --------------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    """One directory's publish: the old index, the remote sizes, the index being written."""

    target: Target
    prefix: str
    old: Mapping[str, Any]
    remote: Mapping[str, int]
    entries: dict[str, list[Any]] = field(default_factory=dict)
    report: PublishReport = field(default_factory=lambda: PublishReport(""))
    written_at: float = 0.0

    def upload(self, f: _File, hasher: ThreadPoolExecutor | None = None) -> _Done:
        """Skip ``f`` if its published copy matches, else upload it. A file that must go
        up anyway is hashed while it uploads (``hasher``), not before: the longest
        upload, not hash + upload, is then what a publish waits for."""
        entry = self.old.get(f.rel)
        if hasher is None or (isinstance(entry, list) and entry[:1] == [f.size]
                              and self.remote.get(f.rel) == f.size):
            sha = _sha256(f.path)
            if entry == [f.size, sha] and self.remote.get(f.rel) == f.size:
                return _Done(f.rel, f.size, sha, uploaded=False)
            self.target.fs.put_file(str(f.path), self.target.path(self.prefix, f.rel))
            return _Done(f.rel, f.size, sha, uploaded=True)
        hashing = hasher.submit(_sha256, f.path)
        self.target.fs.put_file(str(f.path), self.target.path(self.prefix, f.rel))
        return _Done(f.rel, f.size, hashing.result(), uploaded=True)

    def record(self, done: _Done) -> None:
        self.entries[done.rel] = [done.size, done.sha256]
        if done.uploaded:
            self.report.uploaded += 1
            self.report.bytes += done.size
        else:
            self.report.skipped += 1

    def checkpoint(self, *, force: bool = False) -> None:
        """Rewrite the index (old entries kept for what this run has not reached yet)."""
        now = time.monotonic()
        if not force and now - self.written_at < _CHECKPOINT_S:
            return
        merged = {**self.old, **self.entries}
        self.target.write_atomic(self.target.path(self.prefix, INDEX_NAME),
                                 orjson.dumps({"version": 1, "files": merged},
                                              option=orjson.OPT_SORT_KEYS))
        self.written_at = now

    def upload_all(self, files: list[_File]) -> None:
        """Upload concurrently, the largest files first (they bound the wall time); the
        index follows as uploads finish."""
        largest_first = sorted(files, key=lambda f: -f.size)
        with ThreadPoolExecutor(_WORKERS, thread_name_prefix="publish") as pool, \
                ThreadPoolExecutor(_WORKERS, thread_name_prefix="publish-sha") as hasher:
            pending: set[Future[_Done]] = {pool.submit(self.upload, f, hasher)
                                           for f in largest_first}
            try:
                while pending:
                    done, pending = wait(pending, timeout=_CHECKPOINT_S,
                                         return_when=FIRST_COMPLETED)
                    for fut in done:
                        self.record(fut.result())
                    self.checkpoint()
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise


def publish_dir(target: Target, root: Path, prefix: str,
                 include: Callable[[PurePosixPath], bool]) -> PublishReport:
    """Mirror ``root`` under ``prefix``: data files, then manifests, then the index; then
    remove what an earlier publish put there that the output no longer has."""
    files = _local_files(root, include)
    old_index = target.read_json(target.path(prefix, INDEX_NAME))
    old = old_index.get("files", {}) if isinstance(old_index, dict) else {}
    run = _Run(target, prefix, old if isinstance(old, dict) else {}, target.sizes(
        target.path(prefix)))
    run.report.url = target.url + (f"/{prefix}" if prefix else "")
    manifests = [f for f in files if PurePosixPath(f.rel).name == MANIFEST_NAME]
    run.upload_all([f for f in files if f not in manifests])
    run.checkpoint(force=True)
    for f in _manifest_order(manifests):
        run.record(run.upload(f))
    gone = sorted(set(run.old) - {f.rel for f in files})
    for rel in gone:  # only objects this tool published there, after the new manifest
        if rel in run.remote:
            target.fs.rm_file(target.path(prefix, rel))
        run.report.deleted += 1
    run.old = {}
    run.checkpoint(force=True)
    return run.report


def guard(target: Target, doing: str, work: Callable[[], PublishReport]) -> PublishReport:
    started = time.monotonic()
    try:
        report = work()
    except PublishError:
        raise
    except Exception as exc:  # the storage boundary: every backend raises its own kinds
        raise target.fail(doing, exc) from None
    report.seconds = round(time.monotonic() - started, 3)
    event("publish.done", url=report.url, uploaded=report.uploaded, skipped=report.skipped,
          deleted=report.deleted, bytes=report.bytes, seconds=report.seconds)
    return report
