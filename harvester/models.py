"""Plain value types shared across modules. No behaviour beyond small pure helpers, no I/O."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

JSONDict = dict[str, Any]

#: content_type -> (output file stem, detail path segment or None if no detail endpoint)
CONTENT_TYPES: Final[dict[str, tuple[str, str | None]]] = {
    "course": ("courses", "courses"),
    "courserun": ("course_runs", "course-runs"),
    "program": ("programs", "programs"),
    "learnerpathway": ("learner_pathways", None),
}
#: File stem for any content type the API invents later; kept rather than dropped.
OTHER_STEM: Final = "other"
#: The content type of a row that names none (neither ``content_type`` nor an
#: ``aggregation_key`` prefix): it could be of any type.
UNKNOWN_TYPE: Final = "unknown"


def file_stem(content_type: str) -> str:
    """The NDJSON file stem for a content type (``courses``, ``course_runs``...)."""
    entry = CONTENT_TYPES.get(content_type)
    return entry[0] if entry else OTHER_STEM


def detail_segment(content_type: str) -> str | None:
    """The detail path segment for a content type, or None when it has no detail endpoint."""
    entry = CONTENT_TYPES.get(content_type)
    return entry[1] if entry else None


def content_type_of(item: JSONDict) -> str:
    """The item's content type: ``content_type``, else the prefix of ``aggregation_key``."""
    ctype = item.get("content_type")
    if isinstance(ctype, str) and ctype:
        return ctype
    agg = item.get("aggregation_key")
    if isinstance(agg, str) and ":" in agg:
        return agg.split(":", 1)[0]
    return UNKNOWN_TYPE


def item_key(item: JSONDict, content_type: str) -> str | None:
    """The item's identity: ``uuid`` for programs (they have no key), else ``key``.

    Falls back to the other field when the preferred one is missing, as edX's own
    ``content_key = key or uuid`` does.
    """
    order = ("uuid", "key") if content_type == "program" else ("key", "uuid")
    for name in order:
        value = item.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def key_digest(content_type: str, key: str) -> int:
    """A compact 63-bit identity for dedupe sets: ~60 bytes per item instead of a string."""
    raw = hashlib.blake2b(f"{content_type}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(raw, "big") >> 1  # 63 bits: fits SQLite's signed INTEGER


@dataclass(frozen=True, slots=True)
class Catalog:
    """One enterprise catalog as listed by ``/enterprise/v1/enterprise-catalogs``."""

    uuid: str
    title: str
    record: JSONDict


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a DRF-style list: ``{count, next, previous, results}``.

    ``count`` is None when the server omitted it; ``next_query`` is only the query part
    of ``next`` (never its host), or None at the end of the list.
    """

    number: int
    count: int | None
    results: list[JSONDict]
    next_query: str | None


@dataclass(frozen=True, slots=True)
class Response:
    """A decoded 2xx/304 answer."""

    status: int
    body: Any
    etag: str | None = None
    last_modified: str | None = None
