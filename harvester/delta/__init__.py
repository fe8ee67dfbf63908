"""What changed since the last snapshot: change detection, the snapshot index, refresh rules.

The change feed is :mod:`harvester.changes`, the store of dated snapshots
:mod:`harvester.store`. Nothing here runs a harvest or makes requests.

::

    hashing.py   content_hash: what counts as a change (volatile fields left out)
    index.py     SnapshotIndex: OUT/index.sqlite, the previous night read by point look-ups
    rules.py     SyncOptions, RefreshRules (carry, fetch, revalidate), the kept-record marks
    ids.py       doc_id, safe_id: an item's id in a search engine
"""

from harvester.delta.hashing import VOLATILE, content_hash, normalize
from harvester.delta.ids import doc_id, safe_id
from harvester.delta.index import Indexed, SnapshotIndex
from harvester.delta.rules import (
    CARRY,
    DAY,
    FETCH_CHANGED,
    FETCH_NEW,
    REFRESH,
    RETRY,
    RefreshRules,
    SyncOptions,
    carried_line,
    deferred_line,
    stale_line,
)

__all__ = ["CARRY", "DAY", "FETCH_CHANGED", "FETCH_NEW", "REFRESH", "RETRY", "VOLATILE",
           "Indexed", "RefreshRules", "SnapshotIndex", "SyncOptions", "carried_line",
           "content_hash", "deferred_line", "doc_id", "normalize", "safe_id", "stale_line"]
