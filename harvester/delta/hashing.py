"""What counts as a change: a record's content hash, over its meaningful fields only.

:func:`content_hash` is a stable hash of a record over normalised fields. The volatile ones
(``modified``, ``content_last_modified``, enrollment counts, ratings, enrollment URLs,
``normalized_metadata*``, and ``utm_*`` parameters in URLs) are left out, because the
service bumps them every day whether or not anything changed (edx-api-behaviour.md
section 7). Pure: no I/O, imports nothing from the rest of the harvester.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from harvester.models import JSONDict

__all__ = ["VOLATILE", "content_hash", "normalize"]

#: Fields that change without the content changing; left out of every comparison.
VOLATILE: Final = frozenset({
    "modified", "content_last_modified", "enrollment_count", "recent_enrollment_count",
    "reviews_count", "avg_course_rating", "enrollment_url", "normalized_metadata",
    "normalized_metadata_by_run", "_harvest",
})


def _strip_utm(url: str) -> str:
    parts = urlsplit(url)
    if "utm_" not in parts.query:
        return url
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if not k.startswith("utm_")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def normalize(value: Any) -> Any:
    """``value`` without volatile fields (at any depth) and without utm parameters."""
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, str) and "utm_" in value and value.startswith(("http", "/")):
        return _strip_utm(value)
    return value


def content_hash(record: JSONDict) -> str:
    """A stable hash of a record's meaningful content (key order does not matter)."""
    raw = orjson.dumps(normalize(record), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(raw, digest_size=12).hexdigest()
