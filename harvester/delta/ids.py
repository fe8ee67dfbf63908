"""The ids an item carries into a search engine, stable from one snapshot to the next.

:func:`doc_id` is readable where the engine allows it; :func:`safe_id` fits the strict
engines (Meilisearch, Typesense). Pure: no I/O, imports nothing from the rest of the
harvester.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

import orjson

__all__ = ["doc_id", "safe_id"]


def _ambiguous(catalog: str, content_type: str) -> bool:
    """Whether ``catalog:type:key`` could also be read as another triple."""
    return ":" in catalog + content_type or "\0" in catalog + content_type


def _tagged(catalog: str, content_type: str, key: str) -> bytes:
    """An unambiguous encoding for ambiguous triples; NUL-led, so no plain form equals it."""
    return b"\0" + orjson.dumps([catalog, content_type, key])


def doc_id(catalog: str, content_type: str, key: str) -> str:
    """A stable document id: readable where the engine allows it, else a hash.

    A type or catalog holding ``:`` would make the readable form ambiguous, so such
    items get a hash of an unambiguous encoding (never equal to a readable id, which
    has colons).
    """
    if _ambiguous(catalog, content_type):
        return hashlib.sha256(_tagged(catalog, content_type, key)).hexdigest()
    raw = f"{catalog}:{content_type}:{key}"
    raw_bytes = raw.encode("utf-8", "surrogatepass")
    return raw if len(raw_bytes) <= 512 else hashlib.sha256(raw_bytes).hexdigest()


_ID_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]+")


def safe_id(catalog: str, content_type: str, key: str) -> str:
    """An id Meilisearch/Typesense accept (``[A-Za-z0-9_-]``, <= 511 bytes), stable.

    ``<content type, cleaned and cut to 64>-<40 hex>``. The hex is what makes it unique:
    a hash of an unambiguous encoding of all three parts (``catalog:type:key`` while
    neither of the first two holds a ``:``, as ids have always been made, so existing ids
    do not change; a NUL-tagged JSON array otherwise, which no plain form can equal).
    """
    if _ambiguous(catalog, content_type):
        raw = _tagged(catalog, content_type, key)
    else:
        raw = f"{catalog}:{content_type}:{key}".encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(raw).hexdigest()[:40]
    prefix = _ID_UNSAFE.sub("_", content_type)[:64] or "item"
    return f"{prefix}-{digest}"
