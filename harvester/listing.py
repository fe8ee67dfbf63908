"""What one catalog's listing found: identities, versions of a key, keyless rows, winners.

A listing is walked page by page, concurrently and more than once, so the same item
arrives several times, in an order that depends on response timing. Two rules make the
result independent of that order:

* **Duplicates.** An item is identified by ``(content_type, key|uuid)``. When one key is
  listed with different content (the catalog re-indexed it while we walked), the record
  kept is the one with the latest ``content_last_modified``; on a tie, or when neither
  has one, the one whose canonical JSON (sorted keys, compact) has the smallest SHA-256.
  Every differing version goes to the append-only spool; :func:`spool_winners` keeps the
  winner when the spool is read.
* **Keyless rows.** A row with neither ``key`` nor ``uuid`` is listed but unusable. It is
  reported once (``no_key``) and counted as found, so it never becomes a gap. It is
  identified by :func:`keyless_identity`, which ignores content a re-index changes: one
  keyless item listed twice with different content (a re-index mid-walk) is one row, so
  it can never pad the count and hide a keyed item the walks missed.

:class:`Seen` costs about 8 bytes per item more than a plain set: each entry points at
one of 65,536 shared version tags rather than owning an integer, and exact version sets
are kept only for the rare keys listed with different content.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import orjson

from harvester.models import JSONDict
from harvester.spool import Spool, SpoolEntry

#: Shared objects for the 16-bit version tags: a dict entry points at one of these
#: instead of owning a fresh int (~32 bytes an item at a million items).
_TAGS: Final = tuple(range(1 << 16))
_TAG_MASK: Final = (1 << 16) - 1


def canonical(rec: JSONDict) -> bytes:
    """The record as canonical JSON: sorted keys, no whitespace."""
    return orjson.dumps(rec, option=orjson.OPT_SORT_KEYS)


def version_of(raw: bytes) -> int:
    """A 64-bit hash of a record's JSON as served (``orjson.dumps(record)``).

    Not canonical, on purpose: it only tells "the same bytes again" (a duplicate) from
    "maybe different" (spooled, and judged canonically by :func:`winner_key`), and one
    encoding per listed item is most of the listing's CPU.
    """
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


def winner_key(rec: JSONDict) -> tuple[float, str]:
    """Sort key of the duplicate rule: the smallest key wins (see the module doc)."""
    stamp = -math.inf
    clm = rec.get("content_last_modified")
    if isinstance(clm, str):
        try:
            moment = datetime.fromisoformat(clm)
        except ValueError:
            pass
        else:
            stamp = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return (-stamp, hashlib.sha256(canonical(rec)).hexdigest())


#: Fields of a listing row that a re-index rewrites: never part of a keyless row's identity.
VOLATILE_FIELDS: Final = frozenset({"content_last_modified", "modified", "title"})
#: Types whose ``aggregation_key`` names one item (a course run's names its course).
_AGGREGATE_NAMES_ITEM: Final = frozenset({"course", "program", "learnerpathway"})


def keyless_identity(rec: JSONDict, content_type: str) -> int:
    """A keyless row's identity, independent of content a re-index changes: its
    ``aggregation_key`` where that names one item, else a hash of the row without
    :data:`VOLATILE_FIELDS`. Two rows of one item never count as two keyless items."""
    agg = rec.get("aggregation_key")
    if content_type in _AGGREGATE_NAMES_ITEM and isinstance(agg, str) and agg:
        raw = orjson.dumps([content_type, agg])
    else:
        raw = canonical({k: v for k, v in rec.items() if k not in VOLATILE_FIELDS})
    return version_of(raw)


Verdict = Literal["new", "version", "duplicate"]


@dataclass(slots=True)
class Seen:
    """The identities, versions and keyless rows one catalog's listing has found."""

    ids: dict[int, int] = field(default_factory=dict)
    versions: dict[int, set[int]] = field(default_factory=dict)
    keyless: set[int] = field(default_factory=set)

    def add(self, digest: int, version: int) -> Verdict:
        """Record a sighting of item ``digest`` with content ``version``.

        ``new``: first sighting. ``version``: content not seen before for this key (spool
        it: the reader picks the winner). ``duplicate``: nothing new.
        """
        tag = self.ids.get(digest)
        if tag is None:
            self.ids[digest] = _TAGS[version & _TAG_MASK]
            return "new"
        known = self.versions.get(digest)
        if known is None:
            if tag == version & _TAG_MASK:
                # Same content as the first sighting (or one of 65,536 look-alikes: the
                # cost of flat memory; such a version is dropped as a duplicate).
                return "duplicate"
            self.versions[digest] = {version}
            return "version"
        if version in known:
            return "duplicate"
        known.add(version)
        return "version"


def spool_winners(path: Path) -> Iterator[SpoolEntry]:
    """The spooled listing of ``path``, one entry per item, winners by :func:`winner_key`."""
    return Spool(path).winners(winner_key)
