"""Read-only trees for ``harvester verify``: a local directory or an fsspec prefix.

Paths are relative POSIX strings; a link is reported as such and never followed (a local
file is opened with ``O_NOFOLLOW``). On object storage a "directory" is a prefix and
a published store's ``latest`` is ``latest.json``, which names the snapshot.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from harvester.errors import ConfigError
from harvester.sinks import open_ours

__all__ = ["FsspecTree", "LocalTree", "Tree", "open_tree"]


class Tree(Protocol):
    """Read-only access to a directory or a published prefix, by relative POSIX path."""

    def show(self, rel: str) -> str:
        """How a path is named to a person (the root as given, joined with ``rel``)."""
        ...

    def kind(self, rel: str) -> str | None:
        """``file``, ``dir``, ``link`` (never followed) or ``other``; None if absent."""
        ...

    def open(self, rel: str) -> IO[bytes]:
        """The file's bytes as stored."""
        ...

    def files(self, rel: str) -> Iterator[str]:
        """Every entry under ``rel`` that is not a directory, recursively (links are
        listed, not followed), as paths relative to the root."""
        ...

    def children(self, rel: str) -> list[str]:
        """The names directly under ``rel`` (a directory or a prefix), sorted."""
        ...

    def readlink(self, rel: str) -> str | None:
        """A link's target as written; None if ``rel`` is not a link."""
        ...

    def loops(self, rel: str) -> bool:
        """Whether ``rel`` is a symbolic link that never reaches a file (a loop)."""
        ...


class LocalTree:
    """A local directory, read through ``os`` without following links."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def show(self, rel: str) -> str:
        return str(self.root / rel) if rel else str(self.root)

    def kind(self, rel: str) -> str | None:
        try:
            mode = os.lstat(self.root / rel).st_mode
        except FileNotFoundError:
            return None
        except OSError:
            return "other"
        if stat.S_ISLNK(mode):
            return "link"
        return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"

    def open(self, rel: str) -> IO[bytes]:
        # Never blocks on a FIFO planted since the walk; a hard-linked copy may be checked.
        return os.fdopen(open_ours(self.root / rel, shared=True), "rb")

    def files(self, rel: str) -> Iterator[str]:
        with os.scandir(self.root / rel) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            sub = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir(follow_symlinks=False):
                yield from self.files(sub)
            else:
                yield sub

    def children(self, rel: str) -> list[str]:
        return sorted(os.listdir(self.root / rel))

    def readlink(self, rel: str) -> str | None:
        try:
            return os.readlink(self.root / rel)
        except OSError:
            return None

    def loops(self, rel: str) -> bool:
        return _loops(self.root / rel)


class FsspecTree:
    """A prefix of any fsspec filesystem (object storage has no links or directories:
    a "directory" is a prefix, and a store's ``latest`` is ``latest.json``)."""

    def __init__(self, fs: Any, root: str, url: str) -> None:
        self.fs, self.root, self.url = fs, root.rstrip("/"), url.rstrip("/")

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def show(self, rel: str) -> str:
        return f"{self.url}/{rel}" if rel else self.url

    def kind(self, rel: str) -> str | None:
        if self._local_link(rel):
            return "link"
        try:
            info = self.fs.info(self._path(rel))
        except FileNotFoundError:
            return None
        kind = info.get("type")
        return "dir" if kind == "directory" else "file" if kind == "file" else "other"

    def _local_link(self, rel: str) -> bool:
        """A link on a local filesystem read as ``file://`` (dangling ones included,
        which ``info`` reports as absent)."""
        islink = getattr(self.fs, "islink", None)
        return bool(islink is not None and islink(self._path(rel)))

    def open(self, rel: str) -> IO[bytes]:
        handle: IO[bytes] = self.fs.open(self._path(rel), "rb")
        return handle

    def files(self, rel: str) -> Iterator[str]:
        for path in sorted(self.fs.find(self._path(rel), withdirs=False)):
            yield str(PurePosixPath(path).relative_to(self.root))

    def children(self, rel: str) -> list[str]:
        return sorted(PurePosixPath(str(p)).name for p in self.fs.ls(self._path(rel),
                                                                     detail=False))

    def readlink(self, rel: str) -> str | None:
        return os.readlink(self._path(rel)) if self._local_link(rel) else None

    def loops(self, rel: str) -> bool:
        return self._local_link(rel) and _loops(self._path(rel))


def _loops(path: Path | str) -> bool:
    """Whether following ``path`` meets a symbolic link loop (stat says ELOOP)."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def open_tree(target: str) -> Tree:
    """A local path or a URL (``scheme://...``) to verify; ConfigError (exit 2) if it
    cannot be read at all."""
    if "://" not in target:
        path = Path(target)
        if not path.is_dir():
            what = "does not exist" if not os.path.lexists(path) else "is not a directory"
            raise ConfigError(f"verify: {target} {what}")
        return LocalTree(path)
    try:
        from fsspec.core import url_to_fs

        fs, root = url_to_fs(target)
    except (ImportError, ValueError) as exc:  # unknown scheme, or its package missing
        raise ConfigError(f"verify: cannot open {target}: {exc}") from None
    tree = FsspecTree(fs, str(root), target)
    if tree.kind("") != "dir":
        raise ConfigError(f"verify: {target} does not exist or is not a directory/prefix")
    return tree
