"""The file-level checks of ``harvester verify`` and the report they fill.

:class:`Check` compares one file with its manifest entry (bytes and sha256 of the file
as stored, lines of its content), checks the lines of an NDJSON file, and names what no
manifest accounts for. Everything streams in 1 MiB chunks: memory stays flat at any size.
"""

from __future__ import annotations

import csv
import io
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import PurePosixPath
from typing import Any, Final

import orjson

from harvester.verify.trees import Tree

__all__ = ["Check", "Report", "measure"]

#: What ``--publish`` keeps in each prefix it publishes (its record of what it uploaded),
#: and the probe object it writes and removes at the URL before a run.
PUBLISH_INDEX: Final = ".harvester-publish.json"
_PUBLISH_PROBE: Final = ".harvester-write-check"
_CHUNK: Final = 1 << 20
#: Bad lines reported per file at most (the rest are counted on one more line).
_MAX_LINE_PROBLEMS: Final = 10

@dataclass
class Report:
    """What a verification found: ``problems`` (one line each, naming the file)."""

    problems: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    outputs: int = 0  #: manifests verified (outputs, snapshots, learner exports)
    notes: list[str] = field(default_factory=list)  #: facts that are not problems

    @property
    def clean(self) -> bool:
        """No problem found."""
        return not self.problems

    def summary(self) -> str:
        """One line for the end of the command."""
        verdict = "clean" if self.clean else f"{len(self.problems)} problem(s)"
        return (f"verify: {self.outputs} manifest(s), {self.files} file(s), "
                f"{self.bytes} bytes checked: {verdict}")


class Check:
    """One verification: a tree, the report, and where each problem line points."""

    def __init__(self, tree: Tree, report: Report) -> None:
        self.tree, self.report = tree, report

    def problem(self, rel: str, what: str) -> None:
        self.report.problems.append(f"{self.tree.show(rel)}: {what}")

    def json(self, rel: str) -> dict[str, Any] | None:
        """A small JSON object (a manifest, a pointer), or None (reported) when it is
        unreadable."""
        if (kind := self.tree.kind(rel)) != "file":
            self.problem(rel, "missing" if kind is None else f"is a {kind}, not a file")
            return None
        try:
            with self.tree.open(rel) as fh:
                data = orjson.loads(fh.read())
        except (OSError, orjson.JSONDecodeError) as exc:
            self.problem(rel, f"unreadable: {exc}")
            return None
        if not isinstance(data, dict):
            self.problem(rel, "not a JSON object")
            return None
        return data

    def manifest(self, rel: str) -> dict[str, Any] | None:
        """A manifest's JSON (counted as one output verified), or None (reported)."""
        data = self.json(rel)
        self.report.outputs += data is not None
        return data

    def file(self, rel: str, spec: Any) -> None:
        """Bytes, sha256 and lines of one file against its manifest entry."""
        if not isinstance(spec, Mapping) or not {"lines", "bytes", "sha256"} <= set(spec):
            self.problem(rel, "the manifest's entry lacks lines/bytes/sha256")
            return
        if (kind := self.tree.kind(rel)) != "file":
            self.problem(rel, "missing (named in the manifest)" if kind is None else
                         f"is a {kind}, not a file (the harvester writes only plain files)")
            return
        try:
            size, digest, lines, why = measure(self.tree, rel)
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            self.problem(rel, f"unreadable: {exc}")
            return
        self.report.files += 1
        self.report.bytes += size
        bad = [why] if why else []
        if size != spec["bytes"]:
            cut = " (truncated)" if size < spec["bytes"] else ""
            bad.append(f"{size} bytes, the manifest says {spec['bytes']}{cut}")
        if lines is not None and lines != spec["lines"]:
            bad.append(f"{lines} lines, the manifest says {spec['lines']}")
        if digest != spec["sha256"]:
            bad.append(f"sha256 {digest[:12]}... differs from the manifest's "
                       f"{str(spec['sha256'])[:12]}...")
        if bad:
            self.problem(rel, "; ".join(bad))

    def lines(self, rel: str, check: Callable[[Any], str | None]) -> None:
        """Every line of an NDJSON file is JSON that ``check`` accepts (None = fine)."""
        if self.tree.kind(rel) != "file":
            return  # reported as missing or as a link by the file check
        bad = 0
        with self.tree.open(rel) as fh:
            for n, line in enumerate(fh, 1):
                try:
                    why = check(orjson.loads(line))
                except orjson.JSONDecodeError:
                    why = "not JSON" if line.endswith(b"\n") else "a cut last line"
                if why is not None:
                    bad += 1
                    if bad <= _MAX_LINE_PROBLEMS:
                        self.problem(f"{rel}:{n}", why)
        if bad > _MAX_LINE_PROBLEMS:
            self.problem(rel, f"{bad - _MAX_LINE_PROBLEMS} more bad lines")

    def stray(self, rel: str, expected: set[str], skip: Callable[[str], bool]) -> None:
        """Leftover ``.part``/temp files, links, and files no manifest names, under rel."""
        for sub in self.tree.files(rel):
            if not skip(sub) and sub not in expected and PurePosixPath(sub).name != \
                    PUBLISH_INDEX:
                self.unexpected(sub)

    def unexpected(self, sub: str) -> None:
        """A path no manifest names: say what it most likely is."""
        name = PurePosixPath(sub).name
        if name.endswith((".part", ".tmp")) or name.startswith(_PUBLISH_PROBE):
            self.problem(sub, "leftover partial file (a run was interrupted, or is still "
                         "running)")
        elif self.tree.loops(sub):
            self.problem(sub, "a symbolic link loop (it never reaches a file; the "
                         "harvester never writes a link)")
        elif self.tree.kind(sub) == "link":
            self.problem(sub, "a symbolic link (the harvester never writes one)")
        else:
            self.problem(sub, "not named in the manifest")


def measure(tree: Tree, rel: str) -> tuple[int, str, int | None, str | None]:
    """``(bytes, sha256, lines, why)`` of a file in one streaming pass. ``lines`` is None
    (and ``why`` says why) when a ``.gz`` does not inflate: its bytes are still hashed,
    so a flipped byte is reported as such. A CSV takes a second pass: its records, not
    its newlines, are what the manifest counts."""
    gz = _Inflater() if rel.endswith(".gz") else None
    h, size, lines = sha256(), 0, 0
    with tree.open(rel) as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            if gz is None:
                lines += chunk.count(b"\n")
            else:
                gz.feed(chunk)
    if gz is not None:
        return size, h.hexdigest(), gz.close(), gz.error
    if rel.endswith(".csv"):
        with tree.open(rel) as fh, io.TextIOWrapper(fh, encoding="utf-8", newline="") as text:
            lines = sum(1 for _ in csv.reader(text))
    return size, h.hexdigest(), lines, None


class _Inflater:
    """Counts the newlines of a multi-member gzip stream (a checkpointed ``.gz`` is
    several members back to back) without holding more than a chunk of it."""

    def __init__(self) -> None:
        self.lines = 0
        self.error: str | None = None
        self._z = zlib.decompressobj(wbits=31)
        self._pending = False  # the current member has begun but not ended

    def feed(self, chunk: bytes) -> None:
        while chunk and self.error is None:
            self._pending = True
            try:
                self.lines += self._z.decompress(chunk, _CHUNK).count(b"\n")
            except zlib.error as exc:
                self.error = f"not a valid gzip stream ({exc})"
                return
            chunk = self._z.unconsumed_tail
            if self._z.eof:
                chunk += self._z.unused_data
                self._z, self._pending = zlib.decompressobj(wbits=31), False

    def close(self) -> int | None:
        if self.error is None and self._pending:
            self.error = "the gzip stream is cut short"
        return None if self.error else self.lines
