"""A real S3-compatible server on loopback for the publish tests, and a counting proxy.

moto in server mode (``moto[server]``, as s3fs's own suite uses it) listens on
127.0.0.1, port 0. :class:`S3Proxy` sits between the harvester and moto: it forwards
every request unchanged and records them, so tests count PUTs, and it can hold data
uploads after the N-th one, so a test can kill the harvester mid-publish at a known
point instead of at a lucky moment. No boto or fsspec code is patched: the harvester
finds the proxy through ``AWS_ENDPOINT_URL``, as a user's S3-compatible store is found.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from moto.server import ThreadedMotoServer

from harvester.publish import INDEX_NAME
from tests.integration.helpers import LoopThread

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2"}
_HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


class Moto:
    """moto's S3 server in a thread on 127.0.0.1, and a plain s3fs client of it."""

    def __init__(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(key="testing", secret="testing", skip_instance_cache=True,
                                 endpoint_url=self.endpoint, use_listings_cache=False)

    def stop(self) -> None:
        self.server.stop()


@dataclass
class S3Proxy:
    """Forwards to ``upstream``; ``requests`` logs ``(method, path)``; with ``hold_after``
    set, data PUTs beyond that many wait until :meth:`release`, then fail with 503
    (a dead client's upload never lands)."""

    upstream: str
    loop: LoopThread
    requests: list[tuple[str, str]] = field(default_factory=list)
    hold_after: int | None = None
    #: what a held upload gets on release: "fail" (a 503), "forward" (sent on late), or
    #: "drop" (the connection is cut, as when the server behind a balancer died)
    on_release: str = "fail"
    data_puts: int = 0  #: data uploads the server accepted
    admitted: int = 0  #: data uploads let through to the server
    held: int = 0
    url: str = ""
    _release: asyncio.Event | None = None
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    def start(self) -> S3Proxy:
        self.loop.run(self._start())
        return self

    async def _start(self) -> None:
        self._release = asyncio.Event()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    @staticmethod
    def is_data_put(method: str, path: str) -> bool:
        """An object upload other than the publish index or the write probe."""
        key = path.split("?")[0].strip("/")
        return (method == "PUT" and "/" in key and not key.endswith(INDEX_NAME)
                and "write-check" not in key)

    def puts(self, *, data_only: bool = True) -> list[str]:
        return [p.split("?")[0] for m, p in self.requests
                if m == "PUT" and (not data_only or self.is_data_put(m, p))]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None and self._release is not None
        body = await request.read()
        data_put = self.is_data_put(request.method, request.path_qs)
        if data_put and self.hold_after is not None and self.admitted >= self.hold_after:
            self.held += 1
            await self._release.wait()
            if self.on_release == "fail":
                return web.Response(status=503, text="held by the test proxy")
        self.admitted += data_put  # counted on arrival: uploads come 16 at a time
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        try:
            if self.on_release == "drop":
                raise aiohttp.ClientConnectionError("the test cut the connection")
            async with self._session.request(request.method, self.upstream + request.path_qs,
                                             headers=headers, data=body) as up:
                payload = await up.read()
                out = {k: v for k, v in up.headers.items() if k.lower() not in _HOP}
                status = up.status
        except aiohttp.ClientConnectionError:
            assert request.transport is not None
            request.transport.close()  # the client sees the connection die, not an answer
            raise web.HTTPServiceUnavailable() from None
        self.requests.append((request.method, request.path))  # percent-decoded
        if data_put and status == 200:
            self.data_puts += 1
        if request.method == "HEAD":  # no body, but the object's real length
            length = up.headers.get("Content-Length", "0")
            return web.Response(status=status, headers={**out, "Content-Length": length})
        return web.Response(status=status, headers=out, body=payload)

    def release(self, on_release: str | None = None) -> None:
        assert self._release is not None
        if on_release is not None:
            self.on_release = on_release
        self.loop.loop.call_soon_threadsafe(self._release.set)

    def close(self) -> None:
        self.release()
        self.loop.run(self._close())

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment a harvester needs to reach ``endpoint`` through the usual chain."""
    return {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}


def objects(fs: Any, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix``, by path relative to it."""
    base = prefix.rstrip("/") + "/"
    return {k[len(base):]: fs.cat_file(k) for k in fs.find(prefix)}
