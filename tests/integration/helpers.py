"""Ground truth and output readers for integration tests."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web

from harvester.sim import SimServer

Key = tuple[str, str]
T = TypeVar("T")


class LoopThread:
    """An event loop in a daemon thread; ``run`` submits a coroutine and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.run(self.loop.shutdown_asyncgens())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def identity(item: dict[str, Any]) -> Key:
    """(content_type, key|uuid) the way edX identifies items."""
    ctype = item.get("content_type") or str(item.get("aggregation_key", "")).split(":")[0]
    key = item.get("uuid") if ctype == "program" else item.get("key") or item.get("uuid")
    return str(ctype), str(key)


async def token(session: aiohttp.ClientSession, srv: SimServer) -> str:
    async with session.post(f"{srv.base_url}/oauth2/v1/access_token", data={
            "grant_type": "client_credentials", "client_id": srv.client_id,
            "client_secret": srv.client_secret, "token_type": "jwt"}) as resp:
        assert resp.status == 200
        return str((await resp.json())["access_token"])


async def truth(srv: SimServer) -> dict[str, set[Key]]:
    """Every catalog's items, walked slowly and plainly (use a sim without faults/shuffle)."""
    out: dict[str, set[Key]] = {}
    async with aiohttp.ClientSession() as s:
        headers = {"Authorization": f"JWT {await token(s, srv)}", "Accept": "application/json"}
        for cat in srv.catalog_uuids:
            keys: set[Key] = set()
            page = 1
            while True:
                url = f"{srv.base_url}/enterprise/v2/enterprise-catalogs/{cat}"
                async with s.get(url, params={"page": page, "page_size": 100},
                                 headers=headers) as resp:
                    assert resp.status == 200
                    body = await resp.json()
                keys.update(identity(r) for r in body["results"])
                if not body["next"]:
                    break
                page += 1
            out[cat] = keys
    return out


async def fetch_json(srv: SimServer, path: str) -> Any:
    async with aiohttp.ClientSession() as s:
        headers = {"Authorization": f"JWT {await token(s, srv)}", "Accept": "application/json"}
        async with s.get(srv.base_url + path, headers=headers) as resp:
            assert resp.status == 200
            return await resp.json()


def read_lines(path: Path) -> list[dict[str, Any]]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [orjson.loads(line) for line in raw.splitlines() if line]


def harvested(out: Path) -> dict[str, list[Key]]:
    """Every item line under OUT, as identities per catalog (duplicates kept)."""
    got: dict[str, list[Key]] = {}
    for d in out.glob("catalog=*"):
        for f in d.iterdir():
            if f.name.endswith((".ndjson", ".ndjson.gz")):
                for rec in read_lines(f):
                    h = rec["_harvest"]
                    got.setdefault(h["catalog_uuid"], []).append((h["content_type"], h["key"]))
    return got


def assert_exactly_once(out: Path, expected: dict[str, set[Key]]) -> None:
    got = harvested(out)
    assert set(got) == set(expected)
    for cat, keys in expected.items():
        assert len(got[cat]) == len(set(got[cat])), f"duplicates in {cat}"
        assert set(got[cat]) == keys, f"{cat}: missing {len(keys - set(got[cat]))}, " \
                                      f"extra {len(set(got[cat]) - keys)}"


async def expire_tokens_after(srv: SimServer, clock: Any, details: int) -> None:
    """Once the simulator has served ``details`` detail requests, jump its clock past every
    token's expiry (the simulator must have been started with ``clock``)."""
    while srv.state.stats.detail_requests < details:
        await asyncio.sleep(0.005)
    clock.now += 10_000


class LoopbackProxy:
    """An aiohttp app on 127.0.0.1 (a free port) with one client session upstream.

    Tests that stand a hostile or counting proxy in front of the simulator subclass it and
    write only ``handle``; ``decompress=False`` forwards bodies byte for byte.
    """

    decompress = True

    def __init__(self) -> None:
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=self.decompress)
        app = web.Application()
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.handle)  # any path, newlines too
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError
