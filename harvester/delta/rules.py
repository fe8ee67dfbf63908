"""What a sync night does with each listed item, and how a kept record is marked.

* :class:`RefreshRules` decides per listed item: carry the previous record forward, fetch it
  (new, listing changed, previous record listing-only, or kept stale by an earlier night),
  or revalidate it (refresh due, with ``If-None-Match``). Refreshes are spread over the
  nights of ``max_age``: an item is due on the night its identity hashes to, so each
  night refreshes about 1/N of the catalog, never all of it at once.
* :func:`carried_line`, :func:`stale_line` and :func:`deferred_line` rewrite a previous
  record for tonight's snapshot: a listed item is never gone, so a failure is never a
  delete.

Reads the previous night's index, never writes an index. Must not run a harvest or make
requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from harvester.delta.hashing import VOLATILE, content_hash
from harvester.delta.index import Indexed, SnapshotIndex
from harvester.models import JSONDict

__all__ = ["CARRY", "DAY", "FETCH_CHANGED", "FETCH_NEW", "REFRESH", "RETRY", "RefreshRules",
           "SyncOptions", "carried_line", "deferred_line", "stale_line"]

DAY: Final = 86400.0


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """Settings of a sync run."""

    previous: Path | None  #: the previous good snapshot's directory, if any
    max_age: float = 7 * DAY
    now: float | None = None  #: wall-clock epoch seconds (tests and backfills set it)

    def at(self) -> float:
        """The run's notion of now."""
        return self.now if self.now is not None else datetime.now(UTC).timestamp()

    def fingerprint_parts(self) -> dict[str, Any]:
        """What gives a snapshot its meaning beyond the harvest settings: its date
        (``--as-of``, which also names it) and the refresh plan (``--max-age``)."""
        return {"as_of": self.now, "max_age": self.max_age}


CARRY: Final = "carry"
FETCH_NEW: Final = "new"
FETCH_CHANGED: Final = "changed"
REFRESH: Final = "refresh"
RETRY: Final = "retry"  #: kept stale by an earlier night: fetched again, first


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class RefreshRules:
    """Per item: carry forward, fetch, or revalidate; and the counts of each."""

    def __init__(self, options: SyncOptions) -> None:
        self.options = options
        self.now = options.at()
        self.nights = max(1, round(options.max_age / DAY))
        self.night = int(self.now // DAY)
        prev = options.previous
        path = prev / "index.sqlite" if prev is not None else None
        self.previous = SnapshotIndex(path, readonly=True) if path and path.exists() else None

    def close(self) -> None:
        """Close the previous index."""
        if self.previous is not None:
            self.previous.close()

    def decide(self, catalog: str, digest: int, listing: JSONDict
               ) -> tuple[str, Indexed | None]:
        """What to do with one listed item that has a detail endpoint."""
        prev = self.previous.get(catalog, digest) if self.previous else None
        if prev is None:
            return FETCH_NEW, None
        if prev.stale:
            return RETRY, prev
        if prev.source != "detail":
            # A listing-only record (a --no-details night) is not a detail to carry.
            return FETCH_CHANGED, prev
        if prev.listing_hash != content_hash(listing):
            return FETCH_CHANGED, prev
        if self._due(digest, prev.fetched_at):
            return REFRESH, prev
        return CARRY, prev

    def _due(self, digest: int, fetched_at: str | None) -> bool:
        when = _parse_time(fetched_at)
        if when is None:
            return True
        age = self.now - when
        if age >= self.options.max_age:
            return True
        # Spread: each item has one night in every `nights`; refreshed then if at least
        # half a day old, so a fresh fetch is not refreshed the next morning.
        return digest % self.nights == self.night % self.nights and age >= DAY / 2


def carried_line(prev: Indexed, listing: JSONDict, *, fetched_at: str | None = None,
                 etag: str | None = None) -> bytes:
    """The previous record, brought up to date where the new listing knows better.

    Volatile top-level fields the listing also has (``modified``, enrollment counts...)
    are taken from it; ``_harvest`` gets the listing's ``content_last_modified``.
    """
    rec = prev.record()
    meta = dict(rec.get("_harvest") or {})
    for key in VOLATILE - {"_harvest", "enrollment_url", "content_last_modified"}:
        if key in rec and key in listing:
            rec[key] = listing[key]
    meta["content_last_modified"] = listing.get("content_last_modified")
    meta["aggregation_key"] = listing.get("aggregation_key", meta.get("aggregation_key"))
    if fetched_at is not None:
        meta["fetched_at"] = fetched_at
    if etag is not None:
        meta["etag"] = etag
    rec["_harvest"] = meta
    return orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE)


def stale_line(line: bytes, reason: str, at: str) -> bytes:
    """A previous record kept unchanged, marked stale in ``_harvest``: ``stale: true``,
    why (``stale_reason``) and since when (``stale_since``, kept from the first failure)."""
    rec: JSONDict = orjson.loads(line)
    meta = dict(rec.get("_harvest") or {})
    meta.pop("deferred", None)  # it was tried tonight: failed, no longer just deferred
    meta.pop("deferred_since", None)
    meta["stale"] = True
    meta["stale_reason"] = reason
    meta.setdefault("stale_since", at)
    rec["_harvest"] = meta
    return orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE)


def deferred_line(line: bytes, at: str) -> bytes:
    """A record kept because a deadline stopped the night before its fetch: marked
    ``deferred: true`` (and ``deferred_since``, kept from the first such night), so the
    next night fetches it first. Not a failure: any ``stale`` marks it had stay as they
    were."""
    rec: JSONDict = orjson.loads(line)
    meta = dict(rec.get("_harvest") or {})
    meta["deferred"] = True
    meta.setdefault("deferred_since", at)
    rec["_harvest"] = meta
    return orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE)
