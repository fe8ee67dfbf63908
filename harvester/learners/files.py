"""Where a learner export lives on disk, and the moves that keep it consistent.

Owns the layout (``OUT/learners/enterprise=<uuid>/learner_summary.{ndjson,csv}``,
``manifest.json``, ``.state/staging``), private modes (directories ``0700``, files
``0600``), the ``--out`` check and the publish step that swaps a finished run's staged
files in. Only removes files it names (never a whole tree) and never writes through a
link. Must not know rows, PII or HTTP.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import orjson

from harvester.errors import ConfigError, SinkError
from harvester.partfile import sha256_file
from harvester.sinks import PART, disk_errors, fsync_dir, is_ours, read_ours

__all__ = ["CSV_NAME", "LEARNERS_DIR", "MANIFEST_NAME", "NDJSON_NAME", "STAGING_DIR",
           "check_out", "clear_enterprise", "files_intact", "previous_manifest", "private_dir",
           "publish", "remove_staging", "unlink"]

LEARNERS_DIR: Final = "learners"
NDJSON_NAME: Final = "learner_summary.ndjson"
CSV_NAME: Final = "learner_summary.csv"
MANIFEST_NAME: Final = "manifest.json"
STAGING_DIR: Final = "staging"  #: under ``OUT/learners/.state``: a run's unpublished files
_OURS: Final = (NDJSON_NAME, CSV_NAME)


def private_dir(path: Path) -> Path:
    """Create ``path`` (one level) as ``0700``, or tighten an existing one to ``0700``."""
    with disk_errors(path):
        if path.is_symlink():
            raise SinkError(f"refusing to write personal data through the symlink {path}")
        path.mkdir(mode=0o700, exist_ok=True)
        if stat.S_IMODE(path.stat().st_mode) != 0o700:
            path.chmod(0o700)
    return path


def unlink(path: Path) -> None:
    """Remove one file if it is there (a link is removed, never followed)."""
    with disk_errors(path), contextlib.suppress(FileNotFoundError):
        path.unlink()


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that cannot hold the export, before anything is created.

    A file, a path under a file, a symbolic link (for OUT or ``OUT/learners``: personal
    data is never written through a link) or a directory we may not write are usage
    errors (exit 2), not disk failures.
    """
    for path in (out, out / LEARNERS_DIR):
        if path.is_symlink():
            raise ConfigError(f"--out {out}: {path} is a symbolic link; personal data is "
                              "never written through a link (pass the real directory)")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"--out {out}: {probe} exists and is not a directory")
    if (out / LEARNERS_DIR).exists() and not (out / LEARNERS_DIR).is_dir():
        raise ConfigError(f"--out {out}: {out / LEARNERS_DIR} exists and is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {probe} is not writable")


def _unlink_ours(directory: Path) -> None:
    for name in _OURS:
        unlink(directory / name)
        unlink(directory / (name + PART))


def clear_enterprise(directory: Path) -> None:
    """Remove the learner files of one ``enterprise=<uuid>`` directory (ours only), and
    the directory if that leaves it empty."""
    if directory.is_symlink() or not directory.is_dir():
        return
    _unlink_ours(directory)
    with contextlib.suppress(OSError):
        directory.rmdir()  # only if empty


def previous_manifest(root: Path) -> dict[str, Any] | None:
    """The published export's manifest, or None (none, unreadable, or not ours: then
    nothing of the previous export can be vouched for)."""
    path = root / MANIFEST_NAME
    if not is_ours(path):  # a link (symbolic or hard), a FIFO...: never read
        return None
    try:
        data = orjson.loads(read_ours(path))
    except (OSError, SinkError, orjson.JSONDecodeError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("enterprises"), dict)
    return data if ok else None


def files_intact(directory: Path, files: Mapping[str, Any]) -> bool:
    """Whether ``directory`` holds exactly these files of ours (real files, not links),
    each with the sha256 the previous manifest recorded."""
    if not files or directory.is_symlink() or not set(files) <= set(_OURS):
        return False
    for name, info in files.items():
        path = directory / name
        if not is_ours(path) or not isinstance(info, dict):
            return False
        if sha256_file(path) != info.get("sha256"):
            return False
    return True


def remove_staging(staging: Path) -> None:
    """Remove a staging tree (this run's unfinished files, or a killed run's)."""
    if staging.is_symlink() or not staging.is_dir():
        return
    for directory in staging.iterdir():
        if directory.is_dir() and not directory.is_symlink():
            _unlink_ours(directory)
        with contextlib.suppress(OSError):
            directory.rmdir()
    with contextlib.suppress(OSError):
        staging.rmdir()


def publish(root: Path, staging: Path, done: Iterable[tuple[str, Iterable[str]]],
            listed: Iterable[str], kept: Mapping[str, Iterable[str]] | None = None) -> None:
    """Replace the previous export in ``root`` with the files staged in ``staging``.

    ``done``: per enterprise directory this run exported, the names of its files (none
    for one that failed); ``listed``: every directory this run lists; ``kept``: per
    directory of a failed enterprise whose previous files stay, their names (other files
    of ours there go). The old manifest goes first (a crash from here on leaves no
    manifest rather than one describing files it did not write); then each enterprise's
    files move in, or its old files stay or go if it failed; then enterprises this run
    does not list go. Synchronous on purpose: a signal cannot stop it halfway.
    """
    unlink(root / MANIFEST_NAME)
    fsync_dir(root)
    carried = dict(kept or {})
    for dirname, names in done:
        staged, final = staging / dirname, root / dirname
        stays = dirname in carried
        files = set(carried[dirname] if stays else names)
        if not files:
            clear_enterprise(final)
            continue
        private_dir(final)
        for name in _OURS:
            with disk_errors(final / name):
                if stays and name in files:
                    pass  # the previous run's file, as its manifest entry is carried
                elif name in files:
                    os.replace(staged / name, final / name)  # replaces a link, never follows
                else:
                    unlink(final / name)
                unlink(final / (name + PART))
        fsync_dir(final)
    ours = set(listed)
    for directory in root.glob("enterprise=*"):
        if directory.name not in ours:
            clear_enterprise(directory)
    fsync_dir(root)
