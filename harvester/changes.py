"""The change feed: a catalog's ``changes.ndjson`` against the previous snapshot.

:func:`write_changes` writes a catalog's ``changes.ndjson``. Upserts are new or changed
items. Deletes are emitted only when the catalog's listing completed and matched
``count``; otherwise they are withheld and kept in the snapshot's index as *pending*, so
the first night that can settle them still emits them (unless the item came back).
:func:`write_gone` deletes every item of a catalog that left a complete catalog list.
Must not decide what to fetch, or call a failed fetch a delete.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from harvester.delta import SnapshotIndex
from harvester.sinks import (
    PartFile,
    catalog_dirname,
    encode_line,
)


@dataclass(slots=True)
class ChangeCounts:
    """What a catalog's change feed holds."""

    upserts: int = 0
    deletes: int = 0
    deletes_suppressed: bool = False
    deletes_pending: int = 0  #: withheld deletes carried to the next night

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the manifest."""
        return {"upserts": self.upserts, "deletes": self.deletes,
                "deletes_suppressed": self.deletes_suppressed,
                "deletes_pending": self.deletes_pending}


def changes_path(out: Path, catalog: str) -> Path:
    """Where a catalog's change feed goes in a snapshot."""
    return out / catalog_dirname(catalog) / "changes.ndjson"


def write_changes(current: SnapshotIndex, previous: SnapshotIndex | None, catalog: str,
                  path: Path, *, listing_complete: bool) -> ChangeCounts:
    """Write ``changes.ndjson`` for one catalog (atomically) and count it.

    Gone items are those of the previous snapshot, plus the deletes it still had pending,
    that this night did not list. With ``listing_complete`` they are emitted; otherwise
    they become this snapshot's pending deletes, so promoting a night that cannot settle
    its deletes never loses them. An item listed again simply stops being gone.
    """
    counts = ChangeCounts()
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
        gone: Iterator[tuple[int, str, str]] = iter(())
        if previous is not None:
            # Disjoint by construction: a pending delete is never in its snapshot's items.
            gone = (row for src in (previous.digests(catalog), previous.pending(catalog))
                    for row in src if current.get(catalog, row[0]) is None)
        if listing_complete:
            for _digest, ctype, key in gone:
                part.write(encode_line({"op": "delete", "catalog_uuid": catalog,
                                        "content_type": ctype, "key": key}))
                counts.deletes += 1
            current.set_pending(catalog, iter(()))
        else:
            counts.deletes_suppressed = previous is not None
            counts.deletes_pending = current.set_pending(catalog, gone)
        part.commit()
    except BaseException:
        part.abandon()
        raise
    return counts


def write_gone(previous: SnapshotIndex, catalog: str, path: Path) -> int:
    """Write ``changes.ndjson`` for a catalog that left a complete catalog list: a delete
    for every item the previous snapshot had, and for every delete it still had pending.
    Returns the number of deletes."""
    n = 0
    part = PartFile(path)
    try:
        for _digest, ctype, key in chain(previous.digests(catalog), previous.pending(catalog)):
            part.write(encode_line({"op": "delete", "catalog_uuid": catalog,
                                    "content_type": ctype, "key": key}))
            n += 1
        part.commit()
    except BaseException:
        part.abandon()
        raise
    return n
