"""NDJSON output: route, encode, store.

* :func:`catalog_dirname` routes a catalog to ``catalog=<uuid>``; anything that is not a
  plain UUID is percent-encoded and tagged with a hash, so nothing a server sends can name
  a path outside OUT.
* :func:`encode_item` turns an API object into one line: the object's keys unchanged, plus
  ``_harvest``.
* :class:`PartFile` writes ``<name>.part`` (optionally gzip) and, on ``commit()``, fsyncs
  it, renames it to its final name and reports lines, bytes and sha256. A run that dies
  leaves only ``.part`` files: nothing that looks complete.
* :func:`write_json_atomic` writes the manifest (temp file, fsync, rename); the
  writer (``writer.py``) owns the open files.

OSErrors become :class:`~harvester.errors.SinkError` here, naming the file.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import quote

import orjson

from harvester.errors import SinkError
from harvester.models import JSONDict, file_stem

_UUID_RE: Final = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                             r"[0-9a-fA-F]{12}$")
PART: Final = ".part"


@contextmanager
def disk_errors(path: Path | str) -> Iterator[None]:
    """Translate OSError into SinkError naming the file (disk full, permissions...)."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SinkError(f"cannot write {path}: {reason}") from exc


def catalog_dirname(catalog_uuid: str) -> str:
    """``catalog=<uuid>`` for a real UUID; a safe, unique encoding for anything else."""
    if _UUID_RE.match(catalog_uuid):
        return f"catalog={catalog_uuid.lower()}"
    digest = hashlib.sha256(catalog_uuid.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    safe = quote(catalog_uuid, safe="-_")[:80]  # encodes '/', '.', '%', NUL, ...
    return f"catalog=x-{safe}-{digest}"


def encode_item(record: JSONDict, meta: JSONDict) -> bytes:
    """One NDJSON line: the API object unchanged, plus ``_harvest``."""
    out = dict(record)
    out["_harvest"] = meta
    return orjson.dumps(out, option=orjson.OPT_APPEND_NEWLINE)


def encode_line(obj: Any) -> bytes:
    """One NDJSON line for our own records (errors, catalogs)."""
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)


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
                 resume_at: tuple[int, int] | None = None) -> None:
        self.final = final
        self.path = final.with_name(final.name + PART)
        self.lines = 0
        self._compress = compress
        with disk_errors(self.path):
            final.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o777)
            if resume_at is not None and not self.path.exists():
                # Never start an empty file in place of one the ledger knows: that
                # would later be renamed over good data.
                raise SinkError(f"{self.path} is missing although the resume ledger tracks "
                                "it; rerun with --restart")
            if resume_at is not None:
                size, self.lines = resume_at
                fd = os.open(self.path, os.O_RDWR)
                if os.fstat(fd).st_size < size:
                    os.close(fd)
                    raise SinkError(f"{self.path} is shorter than the ledger says "
                                    "(was it edited?); rerun with --restart")
                os.ftruncate(fd, size)
                os.lseek(fd, size, os.SEEK_SET)
            else:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                             0o600 if private else 0o644)
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


def write_json_atomic(path: Path, data: Any, *, private: bool = False) -> None:
    """Write JSON to ``path`` atomically: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    payload = orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)


def clear_outputs(out: Path) -> None:
    """Remove a previous run's outputs from OUT (``--restart``): only files we create."""
    with disk_errors(out):
        for d in out.glob("catalog=*"):
            if d.is_dir() and not d.is_symlink():
                for f in d.iterdir():
                    if f.is_file() and (f.name.endswith((".ndjson", ".ndjson.gz", PART))):
                        f.unlink()
                with contextlib.suppress(OSError):
                    d.rmdir()
        for name in ("manifest.json", "catalogs.ndjson", "errors.ndjson",
                     "catalogs.ndjson.part", "errors.ndjson.part", "index.sqlite",
                     "index.sqlite-wal", "index.sqlite-shm"):
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
        spool = out / ".state" / "spool"
        if spool.is_dir():
            for f in spool.iterdir():
                f.unlink()


def iter_lines(path: Path, *, compressed: bool = False) -> Iterator[bytes]:
    """Complete lines of an NDJSON file (``.gz`` multi-member aware)."""
    opener: Any = gzip.open if compressed else open
    with disk_errors(path), opener(path, "rb") as fh:
        for line in fh:
            if line.endswith(b"\n"):
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
    with disk_errors(part), part.open("rb") as fh:
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
