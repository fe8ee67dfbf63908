"""A file written line by line: ``<name>.part`` until complete, then renamed.

* :class:`PartFile` writes ``<name>.part`` (optionally gzip) and, on ``commit()``, fsyncs
  it, renames it to its final name and reports lines, bytes and sha256 (:class:`FileInfo`).
  A run that dies leaves only ``.part`` files: nothing that looks complete.
* :func:`recover_tail` reads back the complete lines a killed writer left after its last
  checkpoint; :func:`iter_lines` and :func:`describe` read committed files.

Files are created, reopened and read only through :mod:`harvester.sinks` (exclusive
creates; reopens with ``O_NOFOLLOW|O_NONBLOCK`` of a regular file with one name), so a
``.part`` is always a file of ours inside OUT; a symbolic or hard link, or a FIFO, in its
place is never read or written through, and never blocks. Which files exist and where is
the caller's business (the writer, ``writer.py``, owns the open files of a harvest).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from harvester.errors import SinkError
from harvester.sinks import (
    PART,
    create_new,
    disk_errors,
    ensure_dir,
    fsync_dir,
    is_ours,
    open_existing,
    open_ours,
)


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
    with disk_errors(path), os.fdopen(open_ours(path), "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()



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



def iter_lines(path: Path, *, compressed: bool = False, torn: bool = False,
               shared: bool = False) -> Iterator[bytes]:
    """Complete lines of an NDJSON file (``.gz`` multi-member aware); with ``torn``, a
    last line without its newline too (for a reader that must not skip it); ``shared``
    allows a hard-linked file (a source the user names, never one of ours)."""
    with disk_errors(path), os.fdopen(open_ours(path, shared=shared), "rb") as raw:
        fh: Any = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
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
    if not is_ours(part):
        # Not ours (a symbolic or hard link, a FIFO...): never adopt what it holds. An
        # untracked one is replaced by a new file; a tracked one is refused on reopen.
        return []
    with disk_errors(part), os.fdopen(open_ours(part), "rb") as fh:
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
