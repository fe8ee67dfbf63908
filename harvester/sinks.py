"""Safe files inside OUT: create, reopen, replace atomically; encode NDJSON lines.

We write only files we created, only inside OUT, never through a link: a new file is
created exclusively with ``O_NOFOLLOW`` (a stale temp or a planted link in its place is
unlinked first, which removes the link, not its target), an existing file is reopened
(for reading too) only with ``O_NOFOLLOW|O_NONBLOCK`` and only if the opened file is a
regular file with one name (a hard link would write into, or read, someone else's file; a
FIFO would block for ever), a directory inside OUT that is a symlink is refused, and directories
are created ``0750`` (``0700`` for private data) whatever the umask. Every module that
writes output goes through these primitives; none opens a file for writing by itself.

* :func:`ensure_dir`, :func:`create_new`, :func:`open_existing`, :func:`open_ours`,
  :func:`is_ours`, :func:`planted_link`, :func:`clear_dir`: directories and files that are
  certainly ours.
* :func:`write_json_atomic` / :func:`write_bytes_atomic` write the manifest and other
  small files whole (temp file, fsync, rename).
* :func:`encode_item` turns an API object into one line: the object's keys unchanged, plus
  ``_harvest``; a record the encoder refuses is that item's error, never a crash.

Files written line by line are :class:`~harvester.partfile.PartFile`; where they go in OUT
is :mod:`harvester.outputs`. OSErrors become :class:`~harvester.errors.SinkError` here,
naming the file. This module knows nothing of OUT's layout.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import orjson

from harvester.errors import NestedTooDeep, SinkError, UnsafePath
from harvester.models import JSONDict
from harvester.obs import inert_json

PART: Final = ".part"
DIR_MODE: Final = 0o750
PRIVATE_DIR_MODE: Final = 0o700
_OPEN_NEW: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted in place of a file of ours must not block for ever
# (and leave the run deaf to SIGTERM); it is cleared again once the file is known regular.
_OPEN_OURS: Final = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@contextmanager
def disk_errors(path: Path | str) -> Iterator[None]:
    """Translate OSError into SinkError naming the file (disk full, permissions...)."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise UnsafePath(f"refusing to write through {path}: it is a symbolic link "
                             "the harvester did not create") from exc
        reason = exc.strerror or type(exc).__name__
        raise SinkError(f"cannot write {path}: {reason}") from exc


# --- creating directories and files safely -----------------------------------------------

def _mkdirs(path: Path, mode: int) -> None:
    """Create ``path`` and its missing parents, each with ``mode`` (``os.makedirs`` gives
    intermediate directories the umask's default, which may be world-writable)."""
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, mode)


def _checked_dir(path: Path) -> None:
    """Refuse a link or non-directory at ``path``; tighten a group/world-writable one of
    ours (an older version created them ``0777 & ~umask``)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"refusing to write through {path}: it is a symbolic link the "
                         "harvester did not create (remove it, or choose another --out)")
    if not stat.S_ISDIR(st.st_mode):
        # Not a disk fault a rerun could outlive: every rerun would meet it again.
        raise UnsafePath(f"refusing to write into {path}: it is not a directory the "
                         "harvester created (remove it, or choose another --out)")
    if st.st_mode & 0o022:
        if st.st_uid != os.geteuid():
            raise UnsafePath(f"refusing to write into {path}: another user owns it and it "
                             "is writable by others")
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o022)


def ensure_dir(path: Path, *, root: Path | None = None, private: bool = False) -> Path:
    """Create ``path`` (``0750``, or ``0700`` if ``private``) with missing parents.

    With ``root`` (OUT), every component strictly below ``root`` must be a real directory:
    a symlink planted there is refused rather than written through. ``root`` itself is
    the user's choice and may be a link.
    """
    mode = PRIVATE_DIR_MODE if private else DIR_MODE
    with disk_errors(path):
        if root is None:
            _mkdirs(path, mode)
            return path
        _mkdirs(root, mode)
        current = root
        for part in path.relative_to(root).parts:
            current = current / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(current, mode)
            _checked_dir(current)
    return path


def create_new(path: Path, mode: int) -> int:
    """Open a new file for writing that is certainly ours: ``O_CREAT|O_EXCL|O_NOFOLLOW``.

    Something already at ``path`` (a stale temp of ours, or a link someone planted) is
    unlinked first: that removes the link, never its target. Raises OSError.
    """
    try:
        return os.open(path, _OPEN_NEW, mode)
    except FileExistsError:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way", str(path)
                                    ) from None
        os.unlink(path)
        return os.open(path, _OPEN_NEW, mode)


def not_ours(st: os.stat_result) -> str | None:
    """Why a file with this stat is not one of ours to reopen, or None if it may be: a
    symbolic link, anything but a regular file, or a file with another name (a hard link
    shares its bytes with a file the harvester did not create)."""
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link the harvester did not create"
    if not stat.S_ISREG(st.st_mode):
        return f"it is not a regular file ({_kind(st.st_mode)})"
    if st.st_nlink != 1:
        return (f"it is a hard link ({st.st_nlink} names) the harvester did not create; "
                "it writes only files it alone holds")
    return None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a plain file"


def open_ours(path: Path | str, flags: int = os.O_RDONLY, *, shared: bool = False,
              hint: str = "") -> int:
    """Open an existing file of ours (``flags``: ``O_RDONLY`` or ``O_RDWR``), never through
    a link and never blocking on a FIFO; raise :class:`UnsafePath` (one line naming the
    file) unless the opened file is a regular file with exactly one name (any number with
    ``shared``: for reading a source the user names, which may be a hard-linked copy);
    ``hint`` ends that line."""
    try:
        fd = os.open(path, flags | _OPEN_OURS)
    except OSError as exc:
        if (why := unopenable(path, exc)) is not None:
            raise UnsafePath(f"refusing to use {path}: {why}{hint}") from None
        raise
    st = os.fstat(fd)
    why = not_ours(st) if not (shared and stat.S_ISREG(st.st_mode)) else None
    if why is not None:
        os.close(fd)
        raise UnsafePath(f"refusing to use {path}: {why}{hint}")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def unopenable(path: Path | str, exc: OSError) -> str | None:
    """Why ``open`` failed with ``exc`` if it is because the file at ``path`` is not ours:
    ENXIO is what a socket (or a device with nothing behind it) gives, which is refused
    like a FIFO there, never reported as a disk error a rerun would meet for ever."""
    if exc.errno != errno.ENXIO:
        return None
    try:
        return not_ours(os.lstat(path))
    except OSError:
        return None


def resolved(path: Path) -> Path:
    """``path.resolve()``, refusing (:class:`UnsafePath`, exit 2) a path that leads into
    a symbolic link loop, which ``resolve`` reports with a bare RuntimeError (3.11) or
    OSError (3.13+)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno != errno.ELOOP:
            raise
        raise UnsafePath(f"refusing to use {path}: it leads into a symbolic link loop "
                         "(a link the harvester did not create; remove it)") from None


def read_ours(path: Path | str) -> bytes:
    """The bytes of a small file of ours (see :func:`open_ours`; raises OSError or
    :class:`UnsafePath`)."""
    with os.fdopen(open_ours(path), "rb") as fh:
        return fh.read()


def open_existing(path: Path) -> int:
    """Reopen a file of ours read-write to resume it (see :func:`open_ours`)."""
    return open_ours(path, os.O_RDWR, hint="; rerun with --restart to start over")


def is_ours(path: Path | str) -> bool:
    """Whether ``path`` exists and is a file of ours (lstat: a regular file, one name)."""
    try:
        return not_ours(os.lstat(path)) is None
    except FileNotFoundError:
        return False


def planted_link(*paths: Path) -> Path | None:
    """The first of ``paths`` that is a symbolic link, not a regular file, or a hard
    link, if any."""
    for p in paths:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if not_ours(st) is not None:
            return p
    return None


def clear_dir(directory: Path) -> None:
    """Unlink the entries of one of our flat directories; refuse one that is a link."""
    with disk_errors(directory):
        if not os.path.lexists(directory):
            return
        _checked_dir(directory)
        for f in directory.iterdir():
            f.unlink(missing_ok=True)


# --- one NDJSON line ---------------------------------------------------------------------

def encode_item(record: JSONDict, meta: JSONDict) -> bytes:
    """One NDJSON line: the API object unchanged, plus ``_harvest``.

    Raises :class:`NestedTooDeep` (that item's error, never the run's) for a record the
    encoder refuses; the client already refuses such bodies, this is the backstop."""
    out = dict(record)
    out["_harvest"] = meta
    return encode_line(out)


def encode_line(obj: Any) -> bytes:
    """One NDJSON line for our own records (errors, catalogs)."""
    return encode_record(obj, orjson.OPT_APPEND_NEWLINE)


def encode_record(obj: Any, option: int = 0) -> bytes:
    """``obj`` as compact JSON; :class:`NestedTooDeep` when the encoder refuses it."""
    try:
        return orjson.dumps(obj, option=option)
    except orjson.JSONEncodeError as exc:  # nested past orjson's 254 levels
        raise NestedTooDeep(f"a record cannot be written as JSON ({exc})", status=200
                            ) from None


# --- whole files, atomically -------------------------------------------------------------

def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename still happened
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any, *, private: bool = False,
                      root: Path | None = None) -> bytes:
    """Write JSON to ``path`` atomically: temp file, fsync, rename, fsync the directory.
    Returns the bytes written."""
    payload = inert_json(orjson.dumps(
        data, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    write_bytes_atomic(path, payload, private=private, root=root)
    return payload


def write_bytes_atomic(path: Path, payload: bytes, *, private: bool = False,
                       root: Path | None = None) -> None:
    """Write ``payload`` to ``path`` atomically (a new temp file of ours, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    ensure_dir(path.parent, root=root, private=private)
    with disk_errors(path):
        fd = create_new(tmp, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)

