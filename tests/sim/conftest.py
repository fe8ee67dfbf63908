"""Fixtures for the simulator tests: a fake clock and a factory of live simulators.

Every simulator here is a real HTTP server on 127.0.0.1 port 0; the tests talk to it with
a real aiohttp client. Time moves only when a test assigns to ``clock.now``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from simkit import FakeClock, Sim, SimFactory

from harvester.sim import SimConfig, SimServer


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_sim(clock: FakeClock) -> AsyncIterator[SimFactory]:
    """``await make_sim(items=50, shuffle=True)``: a live simulator with a valid token."""
    started: list[Sim] = []

    async def factory(*, token: bool = True, **overrides: Any) -> Sim:
        cfg = SimConfig(**{"items": 120, "catalogs": 2, "learners": 60, **overrides})
        srv = SimServer(cfg, host="127.0.0.1", port=0, clock=clock)
        await srv.start()
        session = aiohttp.ClientSession()
        sim = Sim(srv, session, clock)
        started.append(sim)
        if token:
            resp = await sim.new_token()
            assert resp.status == 200
            sim.token = (await resp.json())["access_token"]
        return sim

    yield factory
    for sim in started:
        await sim.session.close()
        await sim.srv.close()


@pytest.fixture
async def sim(make_sim: SimFactory) -> Sim:
    """A default small simulator."""
    return await make_sim()
