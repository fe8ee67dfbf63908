"""Answer bodies: read within a cap, described safely, made fit to store.

A body is read up to a byte cap counted after decompression, never more. Error bodies are
described by a short excerpt (DRF's ``detail``), never quoted whole; a body we keep is
re-encodable by orjson at the depth our lines add and holds none of our secrets.

Reads the response it is handed; opens nothing, sends nothing, decides no status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
import orjson

from harvester.errors import NestedTooDeep
from harvester.redact import REDACTOR

#: How deep a body may nest: orjson, which writes every output line, stops at 254 levels
#: (it parses up to 1024), and our own lines wrap a record in a few levels more.
MAX_JSON_DEPTH: Final = 200
_ENCODER_DEPTH: Final = 254
_MARKUP_RE: Final = re.compile(rb"\s*<")
_HTML_RE: Final = re.compile(rb"\s*<(?:!doctype\s+html|html|head|body)\b", re.I)


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """The body, decompressed, or None as soon as it exceeds ``cap`` bytes.

    aiohttp inflates incrementally as we read, so stopping here bounds memory at ``cap``
    however far a gzip body would inflate. A declared length over the cap (uncompressed)
    is refused before reading anything.
    """
    declared = resp.content_length
    if declared is not None and declared > cap and not resp.headers.get("Content-Encoding"):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def excerpt(raw: bytes, *, private: bool) -> str:
    """A short, safe description of an error body: DRF's ``detail``/``message`` only."""
    if private or not raw:
        return ""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "non-JSON body"
    if isinstance(body, dict):
        for k in ("detail", "message", "error"):
            v = body.get(k)
            if isinstance(v, str):
                return REDACTOR.scrub(v)[:200]  # before cutting: a cut token looks like none
    return ""


def markup(content_type: str, raw: bytes) -> str | None:
    """``"HTML"`` or ``"XML"`` when a body is markup rather than JSON, else None."""
    ctype = content_type.lower()
    if "html" in ctype or _HTML_RE.match(raw):
        return "HTML"
    if "xml" in ctype or _MARKUP_RE.match(raw):
        return "XML"
    return None


def storable(body: Any, where: str, kw: dict[str, Any]) -> Any:
    """``body`` as the harvester may write it: re-encodable, and without our secrets.

    Encoded once inside enough padding that whatever passes fits in every line we write;
    the same canonical bytes are searched for the client secret and the tokens issued to
    us (a server that echoes them in data), and only a body holding one is rewritten.
    """
    padded = body
    for _ in range(_ENCODER_DEPTH - MAX_JSON_DEPTH):
        padded = [padded]
    try:
        canonical = orjson.dumps(padded)
    except orjson.JSONEncodeError:
        raise NestedTooDeep(f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep "
                            "cannot be stored", **kw) from None
    return REDACTOR.scrub_known(body) if REDACTOR.mentions(canonical) else body


def storable_headers(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """ETag and Last-Modified as we store them: without our secrets."""
    etag, last_mod = headers.get("ETag"), headers.get("Last-Modified")
    return (None if etag is None else REDACTOR.scrub_known(etag),
            None if last_mod is None else REDACTOR.scrub_known(last_mod))
