"""Helpers shared by the simulator tests: a fake clock and a live-simulator handle."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from yarl import URL

from harvester.sim import SimServer


@dataclass
class FakeClock:
    """A monotonic clock the test owns."""

    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sim:
    """A running simulator, an HTTP session and a token for it."""

    srv: SimServer
    session: aiohttp.ClientSession
    clock: FakeClock
    token: str = ""
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.srv.base_url

    def content_path(self, catalog: int = 0) -> str:
        return f"/enterprise/v2/enterprise-catalogs/{self.srv.catalog_uuids[catalog]}"

    async def new_token(self, **form: str) -> aiohttp.ClientResponse:
        data = {
            "grant_type": "client_credentials",
            "client_id": self.srv.client_id,
            "client_secret": self.srv.client_secret,
            "token_type": "jwt",
            **form,
        }
        resp = await self.session.post(self.base + "/oauth2/v1/access_token", data=data)
        await resp.read()
        return resp

    def headers(self, accept: str | None = "application/json", **extra: str) -> dict[str, str]:
        out = {"Authorization": f"JWT {self.token}"}
        if accept is not None:
            out["Accept"] = accept
        out.update(extra)
        return out

    async def get(
        self,
        path: str,
        *,
        encoded: bool = False,
        headers: dict[str, str] | None = None,
        **params: Any,
    ) -> aiohttp.ClientResponse:
        """GET ``path`` (query ``params``); the body is read before returning."""
        url = URL(self.base + path, encoded=encoded)
        if params:
            url = url.update_query({k: str(v) for k, v in params.items()})
        resp = await self.session.get(url, headers=self.headers() if headers is None else headers)
        await resp.read()
        return resp

    async def get_json(self, path: str, **params: Any) -> Any:
        resp = await self.get(path, **params)
        assert resp.status == 200, (resp.status, await resp.text())
        return orjson.loads(await resp.read())

    async def ops(self, method: str, path: str, body: Any = None) -> Any:
        resp = await self.session.request(
            method, self.base + path, data=None if body is None else orjson.dumps(body)
        )
        assert resp.status == 200, await resp.text()
        return orjson.loads(await resp.read())

    async def walk(self, catalog: int = 0, page_size: int = 100) -> list[dict[str, Any]]:
        """Every item of a catalog, page by page, following the page numbers."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            body = await self.get_json(self.content_path(catalog), page=page, page_size=page_size)
            out += body["results"]
            if not body["next"]:
                return out
            page += 1


SimFactory = Callable[..., Awaitable[Sim]]
