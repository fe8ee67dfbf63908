"""Hostile answers: bodies dripped a byte at a time, and gzip bombs.

Both act on a finished :class:`aiohttp.web.Response`, after the handler built it, so every
route (and the token endpoint, with ``fault_token``) can be made hostile the same way.
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from typing import Final

from aiohttp import web

__all__ = ["MAINTENANCE_PAGE", "bomb", "drip"]

#: What an API gateway in maintenance mode answers, with a 200.
MAINTENANCE_PAGE: Final = (
    b"<!DOCTYPE html>\n<html><head><title>Service under maintenance</title></head>\n"
    b"<body><h1>Service under maintenance</h1><p>We will be back shortly.</p></body></html>\n"
)

_MIB: Final = 1 << 20


@functools.lru_cache(maxsize=4)
def _padding_member(mib: int) -> bytes:
    """One gzip member holding ``mib`` MiB of spaces (~1000:1), built once per size."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * _MIB
    parts = [comp.compress(block) for _ in range(mib)]
    parts.append(comp.flush())
    return b"".join(parts)


def bomb(resp: web.Response, mib: int) -> web.Response:
    """``resp`` gzip-encoded and followed by ``mib`` MiB of JSON whitespace.

    The inflated body is the same JSON document (trailing whitespace is legal JSON), so a
    client with no size cap parses it happily after holding it all in memory. Two gzip
    members back to back are one valid gzip stream (RFC 1952).
    """
    body = resp.body if isinstance(resp.body, bytes) else b""
    head = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    encoded = head.compress(body) + head.flush() + _padding_member(mib)
    out = web.Response(status=resp.status, body=encoded, headers=resp.headers.copy())
    out.headers["Content-Encoding"] = "gzip"
    out.headers.pop("Content-Length", None)
    return out


async def drip(request: web.Request, resp: web.Response, every_ms: float
               ) -> web.StreamResponse:
    """Send ``resp``'s headers at once, then its body one byte every ``every_ms``.

    No single read ever waits long, so a per-read (``sock_read``) timeout never fires;
    only a deadline on the whole answer does. A client that gives up closes the socket,
    and the next write ends this handler.
    """
    body = resp.body if isinstance(resp.body, bytes) else b""
    out = web.StreamResponse(status=resp.status, headers=resp.headers.copy())
    out.content_length = len(body)
    try:
        await out.prepare(request)
        for i in range(len(body)):
            await asyncio.sleep(every_ms / 1000.0)
            await out.write(body[i:i + 1])
        await out.write_eof()
    except ConnectionError:
        pass  # the client hung up: nothing more to send
    return out
