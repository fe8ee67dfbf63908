"""The metrics textfile's pure parts, without sockets: the ticker, the carried
last-success timestamp, the path checks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from harvester.errors import ConfigError
from harvester.metrics import MetricsFile, check_metrics_path, read_last_success
from harvester.pipeline import with_ticks


async def test_with_ticks_ticks_while_the_work_runs_and_stops_with_it() -> None:
    ticks: list[int] = []
    asked: list[float] = []
    enough = asyncio.Event()

    async def sleep(seconds: float) -> None:
        asked.append(seconds)
        await asyncio.sleep(0)

    def tick() -> None:
        ticks.append(len(ticks))
        if len(ticks) == 3:
            enough.set()

    async def work() -> str:
        await enough.wait()
        return "done"

    assert await with_ticks(work, tick, every=30.0, sleep=sleep) == "done"
    settled = len(ticks)
    for _ in range(5):
        await asyncio.sleep(0)
    assert settled == len(ticks) >= 3 and set(asked) == {30.0}


async def test_with_ticks_lets_the_works_own_error_through_unwrapped() -> None:
    async def work() -> None:
        raise ConfigError("bad")

    with pytest.raises(ConfigError, match="bad"):
        await with_ticks(work, lambda: None, every=1.0, sleep=lambda s: asyncio.sleep(0))


def test_last_success_is_carried_and_only_a_complete_run_moves_it(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    clock = iter([100.0, 200.0, 300.0, 400.0]).__next__
    MetricsFile(path, "sync", clock=clock).finish("complete", {})  # started 100, ended 200
    assert read_last_success(path) == {"sync": 200.0}
    MetricsFile(path, "sync", clock=clock).finish("partial", {})
    assert read_last_success(path) == {"sync": 200.0}
    assert read_last_success(tmp_path / "none.prom") == {}


@pytest.mark.parametrize("content", [b"not a textfile {{{\n", b"\xff\xfe\x00"])
def test_an_unreadable_previous_file_starts_afresh(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "m.prom"
    path.write_bytes(content)
    MetricsFile(path, "harvest", clock=lambda: 5.0).finish("failed", {})
    assert read_last_success(path) == {}


def test_a_link_in_place_of_the_previous_file_is_not_read(tmp_path: Path) -> None:
    real = tmp_path / "real.prom"
    MetricsFile(real, "harvest", clock=lambda: 7.0).finish("complete", {})
    link = tmp_path / "link.prom"
    link.symlink_to(real)
    assert read_last_success(link) == {}


def test_check_metrics_path(tmp_path: Path) -> None:
    assert check_metrics_path(tmp_path / "m.prom") == tmp_path / "m.prom"
    for bad, why in ((tmp_path, "is a directory"), (tmp_path / "x" / "m.prom", "does not"),
                     (Path(" "), "empty")):
        with pytest.raises(ConfigError, match=why):
            check_metrics_path(bad)
