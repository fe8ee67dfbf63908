"""Listing faults: rows of a content page that a real catalog can serve but should not.

* ``keyless_items``: an item listed with neither ``key`` nor ``uuid`` (it cannot be
  identified, so it can never be fetched or deduplicated by key).
* ``dup_keys``: an item listed twice with the same key and different content, as when
  the catalog re-indexes an item while a client walks the pages. The second row sits at
  the end of the list; its ``content_last_modified`` is one day newer for even indexes
  and one day older for odd ones, so "the first seen wins" and "the newest wins" differ.

Items come from a cache and must never be mutated: every change works on a copy.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from harvester.sim.config import SimConfig
from harvester.sim.content import Json
from harvester.sim.hashing import iso

__all__ = ["listed_item"]


def listed_item(item: Json, position: int, cfg: SimConfig, *, dup: int | None) -> Json:
    """The row served for the item at base ``position``; ``dup`` is the index of a second
    listing (``dup_keys``), None for the item's own row."""
    if dup is None and position >= cfg.keyless_items:
        return item
    row: dict[str, Any] = dict(item)
    if position < cfg.keyless_items:
        row.pop("key", None)
        row.pop("uuid", None)
    if dup is not None:
        shift = timedelta(days=1 if dup % 2 == 0 else -1)
        stamp = datetime.fromisoformat(str(item["content_last_modified"]).replace("Z", "+00:00"))
        row["content_last_modified"] = iso(stamp + shift)
        row["title"] = f"{item.get('title')} (listed twice, version {dup % 2})"
    return row
