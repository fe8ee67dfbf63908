"""`sync --deadline` / `--time-budget`: stop in time, finish a complete snapshot, defer the
rest to the next night (first in line), never as failures.

Time is injected: the harvester's clock is a FakeTime that moves only when the rate gate
(or anything else) sleeps, so "ends by the deadline" is asserted on that clock, never on
wall time. The simulator does not throttle; the harvester's own gate at 10/s does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from harvester import cli
from harvester.deadline import TimeBudget
from harvester.delta import SyncOptions
from harvester.display import sync_summary
from harvester.nightly import SyncNight
from harvester.run import SyncResult
from harvester.sim import SimConfig, SimServer
from tests.conftest import FakeTime, settings_for
from tests.integration.helpers import LoopThread, read_lines

DAY1, DAY2, DAY3 = 1_795_000_000.0, 1_795_086_400.0, 1_795_172_800.0


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def sim(loop: LoopThread) -> Iterator[SimServer]:
    srv = SimServer(SimConfig(catalogs=2, items=90, seed=11, rate_lms="0", rate_learners="0",
                              mutation_rate=0.25), port=0)
    loop.run(srv.start())
    yield srv
    loop.run(srv.close())


def call(loop: LoopThread, srv: SimServer, method: str, path: str, **kw: Any) -> Any:
    async def go() -> Any:
        async with aiohttp.ClientSession() as s, s.request(method, srv.base_url + path,
                                                           **kw) as r:
            return await r.json()
    return loop.run(go())


def night(loop: LoopThread, srv: SimServer, store: Path, as_of: float,
          budget_s: float | None) -> tuple[SyncResult, FakeTime]:
    fake = FakeTime()
    # The first night has no deadline and a high budget. Every wait (the gate's leaky
    # bucket and sliding log, retries, the client's cut-off timer) is on the fake clock, so
    # nothing here depends on the machine's speed.
    rate = "10/s" if budget_s is not None else "1000/s"
    settings = settings_for(srv, store / "unused", **{"rates.lms": rate})
    budget = (TimeBudget(fake.now + budget_s, fake, base_reserve=0.5, per_item_reserve=0.001)
              if budget_s is not None else None)
    sync = SyncNight(settings, store=store, max_age=7 * 86400, keep=7, as_of=as_of,
                     budget=budget, clock=fake, sleep=fake.sleep)

    async def go() -> SyncResult:
        return await sync.run()

    return loop.run(go()), fake


def records(snap: Path) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for f in snap.glob("catalog=*/*.ndjson"):
        if f.name != "changes.ndjson":
            for rec in read_lines(f):
                h = rec["_harvest"]
                out[(h["catalog_uuid"], h["key"])] = h
    return out


def test_deadline_stops_in_time_promotes_and_defers_first_in_line(
        loop: LoopThread, sim: SimServer, tmp_path: Path) -> None:
    store = tmp_path / "store"
    first, _ = night(loop, sim, store, DAY1, None)
    assert first.run.exit_code == 0
    before = records((store / "latest").resolve())

    call(loop, sim, "POST", "/__epoch", json={"epoch": 1})
    truth = call(loop, sim, "GET", "/__changes?from=0&to=1")
    call(loop, sim, "POST", "/__reset")
    done, fake = night(loop, sim, store, DAY2, 3.0)
    # Stopped by the deadline on the injected clock; complete, promoted, exit 0.
    assert fake.now <= 1000.0 + 3.0
    assert done.run.exit_code == 0 and done.run.status == "complete"
    assert done.promoted and (store / "latest").resolve() == done.snapshot
    snap = done.snapshot
    m = orjson.loads((snap / "manifest.json").read_bytes())
    deferred = m["deferred"]
    fetched = call(loop, sim, "GET", "/__stats")["detail_requests"]
    assert deferred["items"] > 0 and fetched > 0
    # Deferred is not failed: no error lines, nothing stale, no delete that is not real.
    assert (snap / "errors.ndjson").read_bytes() == b""
    assert m["stale"]["items"] == 0
    gone = {(c["catalog_uuid"], c["key"]) for c in truth if c["op"] == "delete"}
    deletes = {(c["catalog_uuid"], c["key"]) for f in snap.glob("catalog=*/changes.ndjson")
               for c in read_lines(f) if c["op"] == "delete"}
    assert deletes == gone
    now = records(snap)
    marked = {k: h for k, h in now.items() if h.get("deferred")}
    assert len(marked) == deferred["items"]
    said = "\n".join(sync_summary(done))
    assert f"deferred by the deadline (first in line next night, not failures): " \
           f"{deferred['items']} items ({deferred['new']} new" in said
    assert sum(1 for k in marked if k not in before) == deferred["new"]
    for k, h in marked.items():
        if k in before:  # kept as it was: the previous record, marked
            assert h["fetched_at"] == before[k]["fetched_at"] and h["source"] == "detail"
        else:  # new: its listing record, first in line next night
            assert h["source"] == "listing"
    # New first, then changed, then refreshes, in each catalog: nothing lower in rank was
    # fetched while something higher waited.
    new = {k for k in now if k not in before and now[k]["content_type"] != "learnerpathway"}
    for cat in {k[0] for k in now}:
        new_deferred = any(k in marked for k in new if k[0] == cat)
        others_fetched = any(k[0] == cat and k in before and h["source"] == "detail"
                             and h["fetched_at"] != before[k]["fetched_at"]
                             for k, h in now.items())
        assert not (new_deferred and others_fetched)

    # Next night, with time for the deferred items but not for every refresh due: every
    # deferred item is fetched (first in line), and the budget then cuts refreshes. (The
    # fake clock also counts the gate's waits of other requests while one is in flight in
    # a request's time, so the budget is larger than requests/rate alone would need.)
    call(loop, sim, "POST", "/__reset")
    third, fake3 = night(loop, sim, store, DAY3, 12.0)
    assert third.run.exit_code == 0 and fake3.now <= 1000.0 + 12.0
    later = records(third.snapshot)
    assert all(later[k]["source"] == "detail" and not later[k].get("deferred")
               for k in marked if k in later)
    m3 = orjson.loads((third.snapshot / "manifest.json").read_bytes())
    assert m3["deferred"]["items"] > 0 and m3["deferred"]["new"] == 0


def test_no_deadline_trouble_when_everything_fits(
        loop: LoopThread, sim: SimServer, tmp_path: Path) -> None:
    store = tmp_path / "store"
    night(loop, sim, store, DAY1, None)
    call(loop, sim, "POST", "/__epoch", json={"epoch": 1})
    done, _ = night(loop, sim, store, DAY2, 3600.0)
    m = orjson.loads((done.snapshot / "manifest.json").read_bytes())
    assert done.run.exit_code == 0 and m["deferred"] == {"items": 0, "new": 0}
    assert not any(h.get("deferred") for h in records(done.snapshot).values())


@pytest.mark.parametrize(("args", "word"), [
    (["--deadline", "25:00"], "--deadline"),
    (["--deadline", "7pm"], "--deadline"),
    (["--time-budget", "-1h"], "--time-budget"),
    (["--time-budget", "0"], "--time-budget"),
    (["--time-budget", "inf"], "--time-budget"),
    (["--deadline", "06:00", "--time-budget", "3h"], "not allowed with"),
])
def test_nonsense_deadlines_are_one_line_exit_2_before_any_request(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, sim: SimServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], args: list[str], word: str) -> None:
    monkeypatch.setenv("EDX_CLIENT_ID", sim.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", sim.client_secret)
    call(loop, sim, "POST", "/__reset")
    code = cli.main(["sync", "--store", str(tmp_path / "store"), "--api-base", sim.base_url,
                     "--progress", "off", *args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and word in err
    assert call(loop, sim, "GET", "/__stats")["requests"] == {}
    assert not (tmp_path / "store").exists()


def test_sync_options_unchanged_by_a_budget() -> None:
    # A deadline is not part of what a snapshot means: a resumed night may change it.
    assert SyncOptions(None).fingerprint_parts() == {"as_of": None, "max_age": 7 * 86400.0}
    assert asyncio.iscoroutinefunction(SyncNight.run)


def test_cli_time_budget_that_fits_changes_nothing(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, sim: SimServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDX_CLIENT_ID", sim.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", sim.client_secret)
    cfg = tmp_path / "fast.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
    store = tmp_path / "store"
    in_two_hours = (datetime.now() + timedelta(hours=2)).strftime("%H:%M")
    for day, extra in (("2026-11-20", ["--time-budget", "2h"]),
                       ("2026-11-21", ["--deadline", in_two_hours])):
        code = cli.main(["sync", "--store", str(store), "--api-base", sim.base_url,
                         "--rate-lms", "2000/s", "--progress", "off", "--config", str(cfg),
                         "--as-of", day, *extra])
        assert code == 0
        m = orjson.loads(((store / "latest").resolve() / "manifest.json").read_bytes())
        assert m["deferred"] == {"items": 0, "new": 0} and m["status"] == "complete"
    assert "deferred" not in capsys.readouterr().out


def test_a_deadline_night_interrupted_then_resumed_finishes_the_same_snapshot(
        loop: LoopThread, sim: SimServer, tmp_path: Path) -> None:
    """Ctrl-C in the middle of a deadline night, then the same command again: it resumes
    the same snapshot, keeps what the first session fetched, and still ends in time with
    a complete snapshot whose deferred marks and counts agree."""
    store = tmp_path / "store"
    night(loop, sim, store, DAY1, None)
    night1 = (store / "latest").resolve()
    call(loop, sim, "POST", "/__epoch", json={"epoch": 1})
    call(loop, sim, "POST", "/__reset")

    fake = FakeTime()
    settings = settings_for(sim, store / "unused", **{"rates.lms": "10/s"})
    first = SyncNight(settings, store=store, max_age=7 * 86400, keep=7, as_of=DAY2,
                      budget=TimeBudget(fake.now + 3.0, fake, base_reserve=0.5,
                                        per_item_reserve=0.001),
                      clock=fake, sleep=fake.sleep)

    async def interrupted() -> None:
        task = asyncio.ensure_future(first.run())
        while sim.state.stats.detail_requests < 12 and not task.done():
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    loop.run(interrupted())
    assert (store / "latest").resolve() == night1  # an interrupted night is never latest
    assert first.snapshot is not None and not (first.snapshot / "manifest.json").exists()
    done, fake2 = night(loop, sim, store, DAY2, 3.0)
    assert done.snapshot == first.snapshot  # resumed, not abandoned
    assert done.run.exit_code == 0 and done.promoted and fake2.now <= 1000.0 + 3.0
    m = orjson.loads((done.snapshot / "manifest.json").read_bytes())
    assert (done.snapshot / "errors.ndjson").read_bytes() == b""
    now = records(done.snapshot)
    marked = [k for k, h in now.items() if h.get("deferred")]
    assert len(marked) == m["deferred"]["items"] > 0
    # Every listed item is in the snapshot, once (deferred ones included): nothing lost.
    data = sim.state.data
    for c in range(sim.state.cfg.catalogs):
        uuid = data.catalog_uuids[c]
        assert sum(1 for k in now if k[0] == uuid) == len(data.membership(c, 1))


def test_a_budget_the_listing_and_commit_fill_fetches_nothing_and_says_so(
        loop: LoopThread, sim: SimServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """~185 items: a 0.5 s + 1 ms/item reserve (~0.68 s) is more than the 0.6 s budget, so
    no detail request may start; the night is still complete, and the log says why."""
    store = tmp_path / "store"
    night(loop, sim, store, DAY1, None)
    call(loop, sim, "POST", "/__epoch", json={"epoch": 1})
    call(loop, sim, "POST", "/__reset")
    with caplog.at_level("INFO"):
        done, _ = night(loop, sim, store, DAY2, 0.6)
    assert done.run.exit_code == 0
    assert call(loop, sim, "GET", "/__stats")["detail_requests"] == 0
    said = [r for r in caplog.records if "sync.budget_too_short" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING", caplog.text
    fields = said[0].fields  # type: ignore[attr-defined]
    listed = orjson.loads((done.snapshot / "manifest.json").read_bytes())["totals"]["items"]
    assert fields["items"] == listed and fields["commit_reserve"] == round(
        0.5 + 0.001 * listed, 1)
