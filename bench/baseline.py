"""Reference clients the harvester is compared with, run as ``python -m bench.baseline``.

* ``bare``: the least an asyncio client can do to fetch what ``harvester harvest`` fetches,
  with the same request shapes and the same concurrency: one token, the catalog list,
  each catalog's content pages (page 1 at the requested size, then pages 2..N by number
  at the size the server used, ``page_concurrency`` at a time, ``catalog_concurrency``
  catalogs at a time), then every detail through ``concurrency`` workers, with at most
  ``concurrency`` requests in flight overall. No retries, no throttle, no ledger, no
  files: bodies are decoded and dropped.
* ``serial``: the naive loop: follow ``next`` one page at a time and fetch each item's
  detail one by one. It stops at the end of the first page after ``--time-budget``
  seconds (its rate is steady, so a slice measures it).

Paths and item identities come from the harvester's own pure helpers, so both clients
hit exactly the URLs the harvester hits. Credentials: ``EDX_CLIENT_ID`` /
``EDX_CLIENT_SECRET``. Prints one JSON object: items, details, pages, requests, wall.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
from yarl import URL

from harvester.client import catalogs_path, content_path, detail_path
from harvester.models import content_type_of, item_key


class Bare:
    """A minimal, correct-path-only asyncio client."""

    def __init__(self, session: aiohttp.ClientSession, base: str, inflight: int) -> None:
        self.session = session
        self.base = base
        self.inflight = asyncio.Semaphore(inflight)
        self.token = ""
        self.requests = 0

    async def login(self) -> None:
        """POST the client-credentials form for a JWT."""
        form = {"grant_type": "client_credentials", "client_id": os.environ["EDX_CLIENT_ID"],
                "client_secret": os.environ["EDX_CLIENT_SECRET"], "token_type": "jwt"}
        async with self.session.post(self.base + "/oauth2/v1/access_token", data=form) as r:
            r.raise_for_status()
            self.token = (await r.json())["access_token"]
        self.requests += 1

    async def get(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        """GET and decode one JSON body (raises on any non-2xx)."""
        headers = {"Authorization": f"JWT {self.token}", "Accept": "application/json"}
        url = URL(self.base + path + ("?" + urlencode(query) if query else ""), encoded=True)
        async with self.inflight, self.session.get(url, headers=headers) as r:
            r.raise_for_status()
            raw = await r.read()
        self.requests += 1
        return orjson.loads(raw)


def _page_query(page: int, size: int) -> dict[str, str]:
    return {"page": str(page), "page_size": str(size), "limit": str(size)}


def _detail_jobs(catalog: str, items: list[dict[str, Any]]) -> list[str]:
    """Detail paths of the items that have a detail endpoint."""
    paths = []
    for item in items:
        ctype = content_type_of(item)
        key = item_key(item, ctype)
        path = detail_path(catalog, ctype, key) if key is not None else None
        if path is not None:
            paths.append(path)
    return paths


async def bare(args: argparse.Namespace) -> dict[str, Any]:
    """The ``bare`` client; see the module docstring."""
    t0 = time.monotonic()
    connector = aiohttp.TCPConnector(limit=args.concurrency + 4)
    async with aiohttp.ClientSession(connector=connector) as session:
        api = Bare(session, args.base, args.concurrency)
        await api.login()
        listed = await api.get(catalogs_path(), _page_query(1, 100))
        catalogs = [row["uuid"] for row in listed["results"]]
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        counts = {"items": 0, "details": 0, "pages": 1}
        slots = asyncio.Semaphore(args.catalog_concurrency)

        async def list_catalog(uuid: str) -> None:
            async with slots:
                path = content_path(uuid)
                first = await api.get(path, _page_query(1, args.page_size))
                items: list[dict[str, Any]] = list(first["results"])
                size = len(items)
                total = math.ceil(first["count"] / size) if size else 1
                todo = list(range(total, 1, -1))

                async def worker() -> None:
                    while todo:
                        page = await api.get(path, _page_query(todo.pop(), size))
                        items.extend(page["results"])

                async with asyncio.TaskGroup() as tg:
                    for _ in range(min(args.page_concurrency, len(todo))):
                        tg.create_task(worker())
                counts["pages"] += total
                counts["items"] += len(items)
            for job in _detail_jobs(uuid, items):
                await queue.put(job)

        async def detail_worker() -> None:
            while (path := await queue.get()) is not None:
                await api.get(path)
                counts["details"] += 1

        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(detail_worker()) for _ in range(args.concurrency)]
            async with asyncio.TaskGroup() as jobs:
                for uuid in catalogs:
                    jobs.create_task(list_catalog(uuid))
            for _ in workers:
                await queue.put(None)
    return {**counts, "requests": api.requests, "wall": time.monotonic() - t0}


async def serial(args: argparse.Namespace) -> dict[str, Any]:
    """The ``serial`` client; see the module docstring."""
    t0 = time.monotonic()
    deadline = t0 + args.time_budget
    counts = {"items": 0, "details": 0, "pages": 1}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        api = Bare(session, args.base, 1)
        await api.login()
        listed = await api.get(catalogs_path(), _page_query(1, 100))
        for uuid in (row["uuid"] for row in listed["results"]):
            path: str | None = content_path(uuid)
            query: dict[str, str] | None = _page_query(1, args.page_size)
            while path is not None and time.monotonic() < deadline:
                page = await api.get(path, query)
                counts["pages"] += 1
                for job in _detail_jobs(uuid, page["results"]):
                    await api.get(job)
                    counts["details"] += 1
                counts["items"] += len(page["results"])
                nxt = page.get("next")
                # Follow `next` as given (host included): the naive client's way.
                path, query = (nxt.removeprefix(args.base), None) if nxt else (None, None)
            if time.monotonic() >= deadline:
                break
    return {**counts, "requests": api.requests, "wall": time.monotonic() - t0}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run one client, print its JSON result."""
    p = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("bare", "serial"))
    p.add_argument("--base", required=True, help="API base URL")
    p.add_argument("--page-size", type=int, default=250)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--page-concurrency", type=int, default=4)
    p.add_argument("--catalog-concurrency", type=int, default=2)
    p.add_argument("--time-budget", type=float, default=10.0, help="serial only, seconds")
    args = p.parse_args(argv)
    result = asyncio.run(bare(args) if args.mode == "bare" else serial(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
