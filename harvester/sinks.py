"""NDJSON output: route, encode, store.

* :func:`catalog_dirname` routes a catalog to ``catalog=<uuid>``; anything that is not a
  canonical (lowercase) UUID is percent-encoded and tagged with a hash of the exact id, so
  nothing a server sends can name a path outside OUT and no two ids share a directory.
* :func:`encode_item` turns an API object into one line: the object's keys unchanged, plus
  ``_harvest``; a record the encoder refuses is that item's error, never a crash.
* :class:`PartFile` writes ``<name>.part`` (optionally gzip) and, on ``commit()``, fsyncs
  it, renames it to its final name and reports lines, bytes and sha256. A run that dies
  leaves only ``.part`` files: nothing that looks complete.
* :func:`write_json_atomic` writes the manifest (temp file, fsync, rename); the
  writer (``writer.py``) owns the open files.

We write only files we created, only inside OUT, never through a link: a new file is
created exclusively with ``O_NOFOLLOW`` (a stale temp or a planted link in its place is
unlinked first, which removes the link, not its target), an existing file is reopened only
with ``O_NOFOLLOW``, a directory inside OUT that is a symlink is refused, and directories
are created ``0750`` (``0700`` for private data) whatever the umask.

OSErrors become :class:`~harvester.errors.SinkError` here, naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import re
import stat
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import quote

import orjson

from harvester.errors import NestedTooDeep, SinkError, UnsafePath
from harvester.models import CONTENT_TYPES, OTHER_STEM, JSONDict, file_stem

_CANONICAL_UUID_RE: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PART: Final = ".part"
DIR_MODE: Final = 0o750
PRIVATE_DIR_MODE: Final = 0o700
_OPEN_NEW: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_EXISTING: Final = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


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


def catalog_dirname(catalog_uuid: str) -> str:
    """``catalog=<uuid>`` for a canonical (lowercase) UUID; else a safe, unique encoding.

    One-to-one: any other id (an upper-case UUID included, so ids that differ only in case
    never share a directory, even on a case-insensitive filesystem) is percent-encoded,
    cut at 80 characters and tagged with 12 hex digits of the sha256 of the exact id.
    """
    if _CANONICAL_UUID_RE.fullmatch(catalog_uuid):
        return f"catalog={catalog_uuid}"
    digest = hashlib.sha256(catalog_uuid.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    safe = quote(catalog_uuid, safe="-_")[:80]  # encodes '/', '.', '%', NUL, ...
    return f"catalog=x-{safe}-{digest}"


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
        raise SinkError(f"cannot write into {path}: it is not a directory")
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


def open_existing(path: Path) -> int:
    """Reopen a file of ours read-write, never through a link; it must be a regular file."""
    fd = os.open(path, _OPEN_EXISTING)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(f"refusing to write {path}: it is not a regular file")
    return fd


def planted_link(*paths: Path) -> Path | None:
    """The first of ``paths`` that is a symbolic link (or not a regular file), if any."""
    for p in paths:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            return p
    return None


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


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What the manifest says about one committed file."""

    name: str
    lines: int
    bytes: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the manifest."""
        return {"lines": self.lines, "bytes": self.bytes, "sha256": self.sha256}


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes as stored."""
    h = hashlib.sha256()
    with disk_errors(path), path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


class PartFile:
    """An output file written as ``<final>.part`` and renamed only when complete.

    ``checkpoint()`` makes everything written so far durable and returns the committed
    ``(size, lines)``; with gzip it ends the current gzip member, so the file is a valid
    (multi-member) gzip stream at every checkpoint. ``resume_at`` reopens an existing
    ``.part`` and cuts it back to a committed size, dropping anything written after it.
    """

    def __init__(self, final: Path, *, compress: bool = False, private: bool = False,
                 resume_at: tuple[int, int] | None = None, root: Path | None = None) -> None:
        self.final = final
        self.path = final.with_name(final.name + PART)
        self.lines = 0
        self._compress = compress
        ensure_dir(final.parent, root=root, private=private)
        with disk_errors(self.path):
            if resume_at is not None and not os.path.lexists(self.path):
                # Never start an empty file in place of one the ledger knows: that
                # would later be renamed over good data.
                raise SinkError(f"{self.path} is missing although the resume ledger tracks "
                                "it; rerun with --restart")
            if resume_at is not None:
                size, self.lines = resume_at
                fd = open_existing(self.path)
                if os.fstat(fd).st_size < size:
                    os.close(fd)
                    raise SinkError(f"{self.path} is shorter than the ledger says "
                                    "(was it edited?); rerun with --restart")
                os.ftruncate(fd, size)
                os.lseek(fd, size, os.SEEK_SET)
            else:
                fd = create_new(self.path, 0o600 if private else 0o644)
            self._raw: IO[bytes] = os.fdopen(fd, "wb", buffering=1 << 16)
        self._gz: gzip.GzipFile | None = None

    def write(self, line: bytes) -> None:
        """Append one complete line."""
        with disk_errors(self.path):
            if self._compress:
                if self._gz is None:
                    self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6,
                                             mtime=0)
                self._gz.write(line)
            else:
                self._raw.write(line)
        self.lines += 1

    @property
    def compressed(self) -> bool:
        """Whether lines are gzip-compressed (flushing those per line would cost ratio)."""
        return self._compress

    def flush(self) -> None:
        """Hand everything written so far to the OS (no fsync). A killed process loses
        nothing the OS has; with gzip, a sync flush makes it decompressible as it is."""
        with disk_errors(self.path):
            if self._gz is not None:
                self._gz.flush()  # Z_SYNC_FLUSH: a byte-aligned point a reader can reach
            self._raw.flush()

    def checkpoint(self) -> tuple[int, int]:
        """Flush and fsync; return the durable ``(size, lines)``."""
        with disk_errors(self.path):
            if self._gz is not None:
                self._gz.close()  # ends this gzip member; leaves the file open
                self._gz = None
            self._raw.flush()
            os.fsync(self._raw.fileno())
            return self._raw.tell(), self.lines

    def commit(self) -> FileInfo:
        """Flush, fsync, close, rename to the final name; report what was written."""
        self.checkpoint()
        with disk_errors(self.final):
            self._raw.close()
            os.replace(self.path, self.final)
            fsync_dir(self.final.parent)
            size = self.final.stat().st_size
        return FileInfo(self.final.name, self.lines, size, sha256_file(self.final))

    def abandon(self) -> None:
        """Close without renaming: the ``.part`` stays, visibly incomplete."""
        # Closing after a failure must not mask that failure.
        with contextlib.suppress(Exception):
            if self._gz is not None:
                self._gz.close()
            self._raw.close()


def output_path(out: Path, catalog_uuid: str, content_type: str, *, compress: bool) -> Path:
    """Where a catalog's items of one content type go (the final name)."""
    ext = ".ndjson.gz" if compress else ".ndjson"
    return out / catalog_dirname(catalog_uuid) / f"{file_stem(content_type)}{ext}"


def write_json_atomic(path: Path, data: Any, *, private: bool = False,
                      root: Path | None = None) -> None:
    """Write JSON to ``path`` atomically: temp file, fsync, rename, fsync the directory."""
    payload = orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    write_bytes_atomic(path, payload, private=private, root=root)


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


#: Every file a harvest writes in a catalog directory: the item files (plain or gzip) and
#: the change feed, each also as its ``.part``. Nothing else there is ours.
CATALOG_FILES: Final = frozenset(
    f"{stem}{ext}{part}"
    for stem in [*(s for s, _ in CONTENT_TYPES.values()), OTHER_STEM]
    for ext in (".ndjson", ".ndjson.gz") for part in ("", PART)
) | {"changes.ndjson", "changes.ndjson" + PART}
#: What a harvest writes at the top of OUT (besides catalog directories and ``.state``).
TOP_FILES: Final = ("manifest.json", ".manifest.json.tmp", "catalogs.ndjson",
                    "errors.ndjson", "catalogs.ndjson.part", "errors.ndjson.part",
                    ".errors.ndjson.part.tmp", "index.sqlite", "index.sqlite-wal",
                    "index.sqlite-shm", "index.sqlite-journal")
#: A catalog directory's name as :func:`catalog_dirname` makes it (either form).
_CATALOG_DIR_RE: Final = re.compile(
    f"catalog=(?:{_CANONICAL_UUID_RE.pattern}|x-[A-Za-z0-9%_-]{{0,80}}-[0-9a-f]{{12}})")


def is_catalog_dirname(name: str) -> bool:
    """Whether ``name`` is a catalog directory's name as :func:`catalog_dirname` makes it."""
    return _CATALOG_DIR_RE.fullmatch(name) is not None


def listed_catalogs(out: Path) -> set[str]:
    """The catalogs a finished run in ``out`` names (``manifest.json``, ``catalogs.ndjson``;
    never read through a link): whose directories it wrote."""
    found: set[object] = set()
    manifest, listed = out / "manifest.json", out / "catalogs.ndjson"
    with contextlib.suppress(OSError, orjson.JSONDecodeError, SinkError):
        if manifest.is_file() and not manifest.is_symlink():
            data = orjson.loads(manifest.read_bytes())
            if isinstance(data, dict) and isinstance(data.get("catalogs"), dict):
                found |= set(data["catalogs"])
        if listed.is_file() and not listed.is_symlink():
            for line in iter_lines(listed):
                rec = orjson.loads(line)
                if isinstance(rec, dict):
                    found.add(rec.get("uuid"))
    return {u for u in found if isinstance(u, str) and u}


def clear_outputs(out: Path, catalogs: Iterable[str] = ()) -> None:
    """Remove a previous run's outputs from OUT (``--restart``): only the exact names a
    harvest writes (:data:`TOP_FILES`, :data:`CATALOG_FILES`), in the directory of each
    of ``catalogs`` and of each named as we name them; a catalog directory goes only if that
    leaves it empty. Any other file, however named, stays; no link is followed."""
    with disk_errors(out):
        if not out.is_dir():
            return
        dirs = {catalog_dirname(c) for c in catalogs}
        dirs |= {p.name for p in out.glob("catalog=*") if _CATALOG_DIR_RE.fullmatch(p.name)}
        for name in sorted(dirs):
            d = out / name
            if d.is_symlink() or not d.is_dir():
                continue
            for f in CATALOG_FILES:
                if (d / f).is_symlink() or (d / f).is_file():
                    (d / f).unlink()
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty: a user's files keep their directory
        for name in TOP_FILES:
            if (out / name).is_symlink() or (out / name).is_file():
                (out / name).unlink()
        clear_dir(out / ".state" / "spool")


def clear_dir(directory: Path) -> None:
    """Unlink the entries of one of our flat directories; refuse one that is a link."""
    with disk_errors(directory):
        if not os.path.lexists(directory):
            return
        _checked_dir(directory)
        for f in directory.iterdir():
            f.unlink(missing_ok=True)


def iter_lines(path: Path, *, compressed: bool = False, torn: bool = False
               ) -> Iterator[bytes]:
    """Complete lines of an NDJSON file (``.gz`` multi-member aware); with ``torn``, a
    last line without its newline too (for a reader that must not skip it)."""
    opener: Any = gzip.open if compressed else open
    with disk_errors(path), opener(path, "rb") as fh:
        for line in fh:
            if torn or line.endswith(b"\n"):
                yield line


def describe(final: Path) -> FileInfo:
    """Lines, bytes and sha256 of a committed file (one committed by an earlier session)."""
    compressed = final.name.endswith(".gz")
    lines = sum(1 for _ in iter_lines(final, compressed=compressed))
    with disk_errors(final):
        size = final.stat().st_size
    return FileInfo(final.name, lines, size, sha256_file(final))


def recover_tail(part: Path, size: int, *, compressed: bool) -> list[bytes]:
    """Complete, valid JSON lines a killed writer left after the committed ``size``.

    The OS keeps what a killed process wrote, so these lines are real data; anything
    after the first torn or invalid line is dropped. With gzip the tail is an unfinished
    member, read as far as its last sync flush.
    """
    if os.path.islink(part):
        return []  # not ours: never adopt what a link points to (PartFile replaces it)
    with disk_errors(part), os.fdopen(os.open(part, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fh:
        fh.seek(size)
        tail = fh.read()
    if compressed and tail:
        tail = _inflate_prefix(tail)
    lines: list[bytes] = []
    for line in tail.split(b"\n")[:-1]:  # the last piece has no newline: torn
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:
            break
        lines.append(line + b"\n")
    return lines


def _inflate_prefix(data: bytes, chunk: int = 4096) -> bytes:
    """As much of a (possibly damaged) gzip member as decompresses: chunk by chunk, then
    byte by byte inside the chunk that fails, so nothing before the damage is lost."""
    inflater = zlib.decompressobj(wbits=31)
    out: list[bytes] = []
    for start in range(0, len(data), chunk):
        piece = data[start:start + chunk]
        try:
            out.append(inflater.decompress(piece))
        except zlib.error:
            inflater = zlib.decompressobj(wbits=31)
            out.clear()  # replay the good prefix byte-wise to find where it breaks
            good = data[:start]
            out.append(inflater.decompress(good))
            for i in range(len(piece)):
                try:
                    out.append(inflater.decompress(piece[i:i + 1]))
                except zlib.error:
                    break
            break
    return b"".join(out)
