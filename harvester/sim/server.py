"""Run the simulator on a real socket: ``async with SimServer(cfg) as srv: ...``."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from harvester.sim.app import STATE, build_app
from harvester.sim.config import SimConfig
from harvester.sim.data import SimTenant
from harvester.sim.state import SimState

__all__ = ["SimServer"]


class SimServer:
    """An aiohttp ``AppRunner`` + ``TCPSite`` around :func:`build_app`.

    ``port=0`` binds a free port; :attr:`base_url` tells which one after :meth:`start`.
    """

    def __init__(
        self,
        cfg: SimConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.cfg = cfg or SimConfig()
        self.host = host
        self.port = port
        self.app = build_app(self.cfg, clock)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    @property
    def state(self) -> SimState:
        """The live simulator state (stats, epoch, data)."""
        return self.app[STATE]

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the bound socket."""
        if self._base_url is None:
            raise RuntimeError("SimServer is not started")
        return self._base_url

    @property
    def client_id(self) -> str:
        """OAuth client id accepted by the token endpoint."""
        return self.state.data.client_id

    @property
    def client_secret(self) -> str:
        """OAuth client secret accepted by the token endpoint."""
        return self.state.data.client_secret

    @property
    def enterprise_uuid(self) -> str:
        """The client's enterprise customer UUID."""
        return self.state.data.enterprise_uuid

    @property
    def catalog_uuids(self) -> list[str]:
        """The client's catalogs, in ``created`` order."""
        data = self.state.data
        return data.catalog_uuids[: data.foreign_index]

    @property
    def foreign_catalog_uuid(self) -> str:
        """A catalog of another enterprise customer (403 for this client)."""
        data = self.state.data
        return data.catalog_uuids[data.foreign_index]

    @property
    def tenants(self) -> list[SimTenant]:
        """Every credential served (``--tenants N``; tenant 0 is :attr:`client_id`)."""
        return list(self.state.data.tenants)

    def tenant_config(self, prefix: str = "sim") -> tuple[str, dict[str, str]]:
        """The harvester's ``[[tenants]]`` tables for every credential served, and the
        environment they read: ``(toml, {VAR: value})``. Tenant ``t`` is ``<prefix>-<t>``."""
        lines: list[str] = []
        env: dict[str, str] = {}
        for t in self.state.data.tenants:
            var = f"{prefix.upper().replace('-', '_')}_{t.index}"
            lines += ["[[tenants]]", f'name = "{prefix}-{t.index}"',
                      f'client_id_env = "{var}_CLIENT_ID"',
                      f'client_secret_env = "{var}_CLIENT_SECRET"', ""]
            env[f"{var}_CLIENT_ID"] = t.client_id
            env[f"{var}_CLIENT_SECRET"] = t.client_secret
        return "\n".join(lines), env

    async def start(self) -> None:
        """Bind and serve."""
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        sockname = runner.addresses[0]
        host, port = sockname[0], sockname[1]
        shown = f"[{host}]" if ":" in host else host
        self._base_url = f"http://{shown}:{port}"
        self.state.base_url = self._base_url

    async def close(self) -> None:
        """Stop serving and release the socket."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
