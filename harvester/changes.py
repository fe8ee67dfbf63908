"""The change feed: a catalog's ``changes.ndjson`` against the previous snapshot.

:func:`write_changes` writes a catalog's ``changes.ndjson``. Upserts are new or changed
items. Deletes are emitted only when the catalog's listing completed and matched
``count``; otherwise they are withheld and kept in the snapshot's index as *pending*, so
the first night that can settle them still emits them (unless the item came back). A
complete listing with keyless rows (no ``key``, no ``uuid``) settles only the content types
it has no keyless row of: an unmatched item of a keyless row's type may be that row, so
its delete is held pending too (every type's, for a row of unknown type).
:func:`write_gone` deletes every item of a catalog that left a complete catalog list.
Must not decide what to fetch, or call a failed fetch a delete.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from harvester.delta import SnapshotIndex
from harvester.models import UNKNOWN_TYPE
from harvester.outputs import catalog_dirname
from harvester.partfile import PartFile
from harvester.sinks import encode_line


@dataclass(slots=True)
class ChangeCounts:
    """What a catalog's change feed holds."""

    upserts: int = 0
    deletes: int = 0
    deletes_suppressed: bool = False
    deletes_pending: int = 0  #: withheld deletes carried to the next night
    #: content types whose deletes were held because keyless rows of them were listed
    deletes_held_types: list[str] = field(default_factory=list)
    #: lines, bytes and sha256 of ``changes.ndjson``, so `harvester verify` can vouch for it
    feed: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the manifest."""
        return {"upserts": self.upserts, "deletes": self.deletes,
                "deletes_suppressed": self.deletes_suppressed,
                "deletes_pending": self.deletes_pending,
                "deletes_held_types": self.deletes_held_types, "feed": self.feed}


def changes_path(out: Path, catalog: str) -> Path:
    """Where a catalog's change feed goes in a snapshot."""
    return out / catalog_dirname(catalog) / "changes.ndjson"


def write_changes(current: SnapshotIndex, previous: SnapshotIndex | None, catalog: str,
                  path: Path, *, listing_complete: bool,
                  keyless_types: Collection[str] = ()) -> ChangeCounts:
    """Write ``changes.ndjson`` for one catalog (atomically) and count it.

    Gone items are those of the previous snapshot, plus the deletes it still had pending,
    that this night did not list. With ``listing_complete`` they are emitted, except those
    of a content type in ``keyless_types`` (tonight's keyless rows could be them); the rest
    become this snapshot's pending deletes, so promoting a night that cannot settle its
    deletes never loses them. An item listed again simply stops being gone.
    """
    counts = ChangeCounts()
    held = _held(keyless_types) if listing_complete else (lambda _ctype: True)
    part = PartFile(path)
    try:
        for digest, ctype, key in current.digests(catalog):
            now = current.get(catalog, digest)
            assert now is not None
            old = previous.get(catalog, digest) if previous else None
            if old is not None and old.record_hash == now.record_hash:
                continue
            part.write(encode_line({"op": "upsert", "catalog_uuid": catalog,
                                    "content_type": ctype, "key": key,
                                    "record": now.record()}))
            counts.upserts += 1
        for _digest, ctype, key in _gone(current, previous, catalog):
            if not held(ctype):
                part.write(encode_line({"op": "delete", "catalog_uuid": catalog,
                                        "content_type": ctype, "key": key}))
                counts.deletes += 1
        counts.deletes_pending = current.set_pending(
            catalog, (row for row in _gone(current, previous, catalog) if held(row[1])))
        counts.deletes_suppressed = not listing_complete and previous is not None
        if listing_complete and keyless_types and previous is not None:
            counts.deletes_held_types = sorted(set(keyless_types))
        counts.feed = part.commit().as_dict()
    except BaseException:
        part.abandon()
        raise
    return counts


def _gone(current: SnapshotIndex, previous: SnapshotIndex | None, catalog: str
          ) -> Iterator[tuple[int, str, str]]:
    """``(digest, content_type, key)`` of the items gone since ``previous``: its items and
    its pending deletes (disjoint by construction) that ``current`` does not hold."""
    if previous is None:
        return
    for src in (previous.digests(catalog), previous.pending(catalog)):
        yield from (row for row in src if current.get(catalog, row[0]) is None)


def _held(keyless_types: Collection[str]) -> Callable[[str], bool]:
    """Whether a gone item of a content type must wait: a keyless row of that type (or
    of an unknown type) may be that very item, listed without its key."""
    types = frozenset(keyless_types)
    if UNKNOWN_TYPE in types:
        return lambda _ctype: True
    return lambda ctype: ctype in types


def write_gone(previous: SnapshotIndex, catalog: str, path: Path) -> dict[str, Any]:
    """Write ``changes.ndjson`` for a catalog that left a complete catalog list: a delete
    for every item the previous snapshot had, and for every delete it still had pending.
    Returns the manifest's entry: ``deletes`` and the ``feed``'s lines, bytes, sha256."""
    n = 0
    part = PartFile(path)
    try:
        for _digest, ctype, key in chain(previous.digests(catalog), previous.pending(catalog)):
            part.write(encode_line({"op": "delete", "catalog_uuid": catalog,
                                    "content_type": ctype, "key": key}))
            n += 1
        feed = part.commit().as_dict()
    except BaseException:
        part.abandon()
        raise
    return {"deletes": n, "feed": feed}
