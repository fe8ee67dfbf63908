"""Record shaping and counting from disk: the ``_harvest`` block, routable keys, recounts.

Pure helpers for the stages. Must not send anything to the writer or make requests.
"""

from __future__ import annotations

import re
from typing import Final

import orjson

from harvester.models import JSONDict
from harvester.partfile import iter_lines
from harvester.run import CatalogState
from harvester.writer import Writer

#: Shapes of keys the detail endpoints can route (Django URL patterns of the LMS).
_DETAIL_KEY_RE: Final = {
    "course": re.compile(r"^[^/+]+\+[^/+]+$"),
    "courserun": re.compile(r"^[^/+]+\+[^/+]+\+[^/?]+$"),
    "program": re.compile(r"^[^/?#]+$"),
}


def routable(content_type: str, key: str) -> bool:
    """Whether the detail endpoint of ``content_type`` can route ``key``."""
    pattern = _DETAIL_KEY_RE.get(content_type)
    return bool(pattern and pattern.match(key)) and key not in (".", "..")


def describe(exc: BaseException) -> str:
    """An error's class and status, for ``_harvest.stale_reason`` (never server text)."""
    status = getattr(exc, "status", None)
    return f"{type(exc).__name__}, {status}" if status is not None else type(exc).__name__


def meta(catalog: str, content_type: str, key: str, listing: JSONDict, fetched_at: str,
         source: str) -> JSONDict:
    """The ``_harvest`` block of an output line."""
    return {
        "catalog_uuid": catalog,
        "content_type": content_type,
        "key": key,
        "aggregation_key": listing.get("aggregation_key"),
        "content_last_modified": listing.get("content_last_modified"),
        "fetched_at": fetched_at,
        "source": source,
    }


def recount(cs: CatalogState, writer: Writer, *, compressed: bool) -> None:
    """Item counters from what is on disk, not from memory: sessions that died took
    their in-memory counts with them, but never the lines they wrote."""
    detail = listing = 0
    for path in writer.item_files(cs.uuid):
        for line in iter_lines(path, compressed=compressed):
            if orjson.loads(line)["_harvest"]["source"] == "detail":
                detail += 1
            else:
                listing += 1
    cs.details_done, cs.listing_only = detail, listing
    # Failures too, from the ledger's record of them: a session that died took its counts
    # with it, and errors of work retried since are gone from it.
    kinds = writer.ledger.error_kinds(cs.uuid)
    cs.not_found, cs.failed = kinds.get("not_found", 0), kinds.get("detail_failed", 0)
