"""Shared fixtures: a clean environment, fake time, and live simulators on loopback.

Unit tests (tests/unit) use no sockets. Integration tests (tests/integration) run the
harvester against ``harvester.sim`` over real HTTP on 127.0.0.1, port 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harvester.config import Settings, load_settings
from harvester.obs import LOGGER_NAME
from harvester.sim import SimConfig, SimServer


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's EDX_* / HARVESTER_* variables."""
    for name in list(os.environ):
        if name.startswith(("EDX_", "HARVESTER_")):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _restore_logger() -> Iterator[None]:
    """cli.main points the harvester logger at the captured stderr; undo that afterwards."""
    log = logging.getLogger(LOGGER_NAME)
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    log.handlers[:] = saved[0]
    log.setLevel(saved[1])
    log.propagate = saved[2]


class FakeTime:
    """A clock that moves only when told; ``sleep`` advances it instantly."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


SimStarter = Callable[..., Awaitable[SimServer]]


@pytest.fixture
async def start_sim() -> AsyncIterator[SimStarter]:
    """``srv = await start_sim(items=50, fault_rate=0.05)``: a live simulator."""
    running: list[SimServer] = []

    async def start(clock: Callable[[], float] | None = None, **overrides: Any) -> SimServer:
        cfg = SimConfig(**{"catalogs": 2, "items": 150, "rate_lms": "0",
                           "rate_learners": "0", **overrides})
        srv = SimServer(cfg, host="127.0.0.1", port=0, clock=clock)
        await srv.start()
        running.append(srv)
        return srv

    yield start
    for srv in running:
        await srv.close()


def settings_for(srv: SimServer, out: Path, **overrides: object) -> Settings:
    """Harvester settings aimed at ``srv``: fast retries, generous budgets by default."""
    layer: dict[str, object] = {
        "api.base": srv.base_url,
        "api.client_id": srv.client_id,
        "api.client_secret": srv.client_secret,
        "output.out": str(out),
        "rates.lms": "1000/s",
        "rates.learners": "1000/s",
        "retry.backoff_base": 0.0,
        "retry.backoff_cap": 0.0,
        "output.progress": "off",
    }
    layer.update(overrides)
    settings, _ = load_settings(cli=layer, environ={}, config_file=None)
    return settings
