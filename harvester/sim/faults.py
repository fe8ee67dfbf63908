"""Injected upstream and gateway failures (``SimConfig.fault_rate`` / ``fault_kinds``)."""

from __future__ import annotations

from typing import Final

import orjson
from aiohttp import web

from harvester.sim.hostile import MAINTENANCE_PAGE

__all__ = ["DROPPED", "fault_response"]

#: Placeholder status of a response whose connection a fault already broke.
DROPPED: Final = 499


def fault_response(request: web.Request, kind: str) -> web.StreamResponse:
    """The response (or the broken connection) for one injected fault of ``kind``.

    ``reset`` and ``truncate`` act on the transport directly and return a placeholder with
    status :data:`DROPPED`, which aiohttp cannot send any more.
    """
    if kind in {"reset", "truncate"}:
        transport = request.transport
        if transport is not None:
            if kind == "truncate":
                body = b'{"count": 100, "next": null, "previous": null, "results": [{"key'
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body) + 4096}\r\nConnection: close\r\n\r\n"
                )
                transport.write(head.encode() + body)
            # close() flushes what was written, then drops the connection mid-response.
            transport.close()
        return web.Response(status=DROPPED)
    if kind == "badjson":
        return web.Response(
            body=b'{"count": 3, "next": null, "results": [{"key": "x",]',
            content_type="application/json",
        )
    if kind == "maintenance":
        # A gateway in maintenance mode: 200 and an HTML page, whatever was asked for.
        return web.Response(body=MAINTENANCE_PAGE, content_type="text/html")
    if kind == "500":
        return web.Response(
            status=500, body=b"<h1>Server Error (500)</h1>", content_type="text/html"
        )
    message = {
        "502": "Internal server error",
        "503": "Service Unavailable",
        "504": "Endpoint request timed out",
    }[kind]
    return web.Response(
        status=int(kind), body=orjson.dumps({"message": message}), content_type="application/json"
    )
