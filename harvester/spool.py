"""The listing spool: one line per listed version of an item, read back as entries.

Owns the spool's line format (``{"d": digest, "t": content_type, "k": key, "r": record}``)
and nothing else: which version of a key wins is :mod:`harvester.listing`'s rule, passed
in as a ranking. Must not choose paths (the writer does) or know HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from harvester.models import JSONDict
from harvester.partfile import iter_lines

_PREFIX: Final = b'{"d":'


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One spooled item: its digest, content type, key and listed record."""

    digest: int
    content_type: str
    key: str
    record: JSONDict


class Spool:
    """A spool file (``.part``) of one catalog, as written by the writer."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def line(digest: int, content_type: str, key: str, raw: bytes) -> bytes:
        """A spool line around a record already encoded as ``raw``."""
        head = orjson.dumps({"d": digest, "t": content_type, "k": key})
        return head[:-1] + b',"r":' + raw + b"}\n"

    @staticmethod
    def digest_of(line: bytes) -> int:
        """The item digest of a spool line, without decoding the whole record."""
        if line.startswith(_PREFIX):
            end = line.find(b",", len(_PREFIX))
            if end > 0:
                return int(line[len(_PREFIX):end])
        return int(orjson.loads(line)["d"])

    @staticmethod
    def _entry(line: bytes) -> SpoolEntry:
        e = orjson.loads(line)
        return SpoolEntry(int(e["d"]), e["t"], e["k"], e["r"])

    def entries(self) -> Iterator[SpoolEntry]:
        """Every line, in spool order (versions of a key included)."""
        if self.path.exists():
            for line in iter_lines(self.path):
                yield self._entry(line)

    def winners(self, rank: Callable[[JSONDict], Any]) -> Iterator[SpoolEntry]:
        """One entry per item, in spool order: a key spooled more than once yields only
        the version with the smallest ``rank``, whatever order the versions arrived in."""
        if not self.path.exists():
            return
        once: set[int] = set()
        repeated: set[int] = set()
        for line in iter_lines(self.path):
            d = self.digest_of(line)
            (repeated if d in once else once).add(d)
        once.clear()
        best: dict[int, tuple[Any, int]] = {}
        if repeated:
            for i, line in enumerate(iter_lines(self.path)):
                d = self.digest_of(line)
                if d in repeated:
                    key = rank(orjson.loads(line)["r"])
                    if d not in best or key < best[d][0]:
                        best[d] = (key, i)
        for i, line in enumerate(iter_lines(self.path)):
            if best:
                won = best.get(self.digest_of(line))
                if won is not None and won[1] != i:
                    continue
            yield self._entry(line)
