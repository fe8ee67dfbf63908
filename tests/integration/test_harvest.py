"""`harvester harvest` against the simulator over real HTTP on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from harvester.errors import StateError
from harvester.pipeline import Harvest
from harvester.state import RunLock
from tests.conftest import SimStarter, settings_for
from tests.integration.helpers import (
    assert_exactly_once,
    expire_tokens_after,
    fetch_json,
    harvested,
    read_lines,
    truth,
)


async def test_every_item_exactly_once_with_fields_intact(start_sim: SimStarter,
                                                          tmp_path: Path) -> None:
    srv = await start_sim(catalogs=2, items=250, latency_ms=2)
    expected = await truth(srv)
    srv.state.stats.reset()
    result = await Harvest(settings_for(srv, tmp_path)).run()
    assert result.status == "complete" and result.exit_code == 0
    assert_exactly_once(tmp_path, expected)

    manifest = orjson.loads((tmp_path / "manifest.json").read_bytes())
    for cat in srv.catalog_uuids:
        entry = manifest["catalogs"][cat]
        assert entry["count_reported"] == 250 and entry["unique_found"] == 250
        assert entry["page_size_used"] == 100 and entry["page_size_clamped"] is True
        assert sum(entry["lines"].values()) == 250
    stats = srv.state.stats.snapshot()
    assert stats["peak_concurrency"]["content"] > 1, "pages were not fetched concurrently"
    assert stats["throttled_429"] == 0

    # A detail line is the API object unchanged, plus _harvest.
    cat = srv.catalog_uuids[0]
    course = next(r for r in read_lines(tmp_path / f"catalog={cat}" / "courses.ndjson"))
    meta = course.pop("_harvest")
    assert meta["source"] == "detail" and meta["aggregation_key"].startswith("course:")
    direct = await fetch_json(srv, f"/enterprise/v2/enterprise-catalogs/{cat}/courses/"
                                   f"{meta['key']}")
    assert course == direct
    assert (tmp_path / "errors.ndjson").read_bytes() == b""
    assert len(read_lines(tmp_path / "catalogs.ndjson")) == 2
    assert not list(tmp_path.rglob("*.part"))


async def test_listing_only_dump(start_sim: SimStarter, tmp_path: Path) -> None:
    srv = await start_sim(catalogs=2, items=120)
    expected = await truth(srv)
    srv.state.stats.reset()
    result = await Harvest(settings_for(srv, tmp_path, **{"harvest.details": False,
                                                          "output.gzip": True})).run()
    assert result.exit_code == 0
    assert_exactly_once(tmp_path, expected)
    assert srv.state.stats.snapshot()["detail_requests"] == 0
    files = list(tmp_path.glob("catalog=*/*.ndjson.gz"))
    assert files and all(r["_harvest"]["source"] == "listing"
                         for f in files for r in read_lines(f))


async def test_zero_429_when_budget_matches_the_server(start_sim: SimStarter,
                                                       tmp_path: Path) -> None:
    """Configured at exactly the server's limit, the run gets no 429 at all."""
    srv = await start_sim(catalogs=1, items=90, rate_lms="40/s")
    result = await Harvest(settings_for(srv, tmp_path, **{"rates.lms": "40/s",
                                                          "harvest.concurrency": 16})).run()
    assert result.exit_code == 0
    assert srv.state.stats.snapshot()["throttled_429"] == 0
    assert result.manifest is not None and result.manifest["totals"]["throttled_429"] == 0


async def test_twice_too_fast_recovers_from_429s(start_sim: SimStarter, tmp_path: Path) -> None:
    """Configured 2x too fast: the 429s pause the class and nothing is lost."""
    srv = await start_sim(catalogs=1, items=60, rate_lms="30/s")
    expected = await truth(srv)
    result = await Harvest(settings_for(srv, tmp_path, **{"rates.lms": "60/s",
                                                          "harvest.concurrency": 8})).run()
    assert result.exit_code == 0
    assert_exactly_once(tmp_path, expected)
    assert result.manifest is not None and result.manifest["totals"]["throttled_429"] > 0


async def test_token_expiry_mid_run(start_sim: SimStarter, tmp_path: Path) -> None:
    """The server's clock jumps past the token's expiry mid-run: 401, refresh, replay."""
    from tests.conftest import FakeTime

    sim_clock = FakeTime()
    srv = await start_sim(clock=sim_clock, catalogs=1, items=80, latency_ms=3)
    expected = await truth(srv)
    harvest = Harvest(settings_for(srv, tmp_path, **{"harvest.concurrency": 4}))

    async with asyncio.TaskGroup() as tg:
        tg.create_task(expire_tokens_after(srv, sim_clock, 20))
        run = tg.create_task(harvest.run())
    result = run.result()
    assert result.exit_code == 0
    assert_exactly_once(tmp_path, expected)
    stats = srv.state.stats.snapshot()
    assert stats["requests"]["lms"].get("401", 0) >= 1
    assert harvest.stats.tokens >= 2


async def test_faults_lose_nothing(start_sim: SimStarter, tmp_path: Path) -> None:
    """5% of requests fail in every way the sim knows; the output is still exact."""
    clean = await start_sim(catalogs=2, items=200, seed=3)
    expected = await truth(clean)
    srv = await start_sim(catalogs=2, items=200, seed=3, fault_rate=0.05, gateway_remap=True)
    result = await Harvest(settings_for(srv, tmp_path)).run()
    assert result.exit_code == 0, (tmp_path / "errors.ndjson").read_text()
    assert_exactly_once(tmp_path, expected)
    faults = srv.state.stats.snapshot()["faults"]
    assert sum(faults.values()) > 5
    assert result.manifest is not None and result.manifest["totals"]["retries"] > 0


async def test_unstable_order_is_rewalked(start_sim: SimStarter, tmp_path: Path) -> None:
    """Shuffled pages drop and repeat items; dedupe plus re-walks still find them all."""
    clean = await start_sim(catalogs=1, items=300, seed=5)
    expected = await truth(clean)
    srv = await start_sim(catalogs=1, items=300, seed=5, shuffle=True)
    result = await Harvest(settings_for(srv, tmp_path, **{"harvest.max_rewalks": 8,
                                                          "harvest.details": False})).run()
    manifest = result.manifest
    assert manifest is not None
    entry = manifest["catalogs"][srv.catalog_uuids[0]]
    assert entry["duplicates_dropped"] > 0 and entry["walks"] > 1
    got = harvested(tmp_path)[srv.catalog_uuids[0]]
    assert len(got) == len(set(got))
    if result.exit_code == 0:
        assert_exactly_once(tmp_path, expected)
    else:  # any remaining gap is reported, never silent
        assert entry["gaps"] == 300 - len(got) > 0


async def test_transient_detail_404s_are_retried_later(start_sim: SimStarter,
                                                       tmp_path: Path) -> None:
    srv = await start_sim(catalogs=1, items=120, detail_404_rate=0.2,
                          detail_404_mode="transient", detail_404_times=1)
    expected = await truth(srv)
    h = Harvest(settings_for(srv, tmp_path), detail_404_delay=0.0)
    result = await h.run()
    assert result.exit_code == 0
    assert_exactly_once(tmp_path, expected)


async def test_permanent_detail_404s_are_recorded_not_written(start_sim: SimStarter,
                                                              tmp_path: Path) -> None:
    srv = await start_sim(catalogs=1, items=120, detail_404_rate=0.1,
                          detail_404_mode="permanent")
    expected = await truth(srv)
    result = await Harvest(settings_for(srv, tmp_path), detail_404_delay=0.0).run()
    assert result.status == "partial" and result.exit_code == 3
    errors = read_lines(tmp_path / "errors.ndjson")
    missing = {(e["content_type"], e["key"]) for e in errors if e["kind"] == "not_found"}
    assert missing
    got = set(harvested(tmp_path)[srv.catalog_uuids[0]])
    assert got == expected[srv.catalog_uuids[0]] - missing
    entry = result.manifest["catalogs"][srv.catalog_uuids[0]]  # type: ignore[index]
    assert entry["not_found"] == len(missing)


async def test_forbidden_catalog_fails_alone(start_sim: SimStarter, tmp_path: Path) -> None:
    """A catalog these credentials may not see: recorded, the others still complete."""
    srv = await start_sim(catalogs=1, items=30)
    wanted = [srv.catalog_uuids[0], srv.foreign_catalog_uuid]
    result = await Harvest(settings_for(srv, tmp_path, **{"harvest.catalogs": wanted})).run()
    assert result.exit_code == 3
    assert result.manifest is not None
    assert result.manifest["catalogs"][srv.foreign_catalog_uuid]["status"] == "failed"
    assert result.manifest["catalogs"][srv.catalog_uuids[0]]["status"] == "done"
    kinds = [e["kind"] for e in read_lines(tmp_path / "errors.ndjson")]
    assert kinds == ["catalog_failed"]
    assert not (tmp_path / f"catalog={srv.foreign_catalog_uuid}" / "courses.ndjson").exists()


async def test_complete_run_is_not_repeated(start_sim: SimStarter, tmp_path: Path) -> None:
    """A cron retry on a finished OUT makes no request and exits 0."""
    srv = await start_sim(catalogs=1, items=20)
    assert (await Harvest(settings_for(srv, tmp_path)).run()).exit_code == 0
    srv.state.stats.reset()
    again = await Harvest(settings_for(srv, tmp_path)).run()
    assert again.exit_code == 0 and "already holds a complete harvest" in again.message
    assert srv.state.stats.snapshot()["requests"] == {}
    fresh = await Harvest(settings_for(srv, tmp_path), restart=True).run()
    assert fresh.exit_code == 0 and srv.state.stats.detail_requests > 0


async def test_second_harvester_on_same_out_is_refused(start_sim: SimStarter,
                                                       tmp_path: Path) -> None:
    srv = await start_sim(catalogs=1, items=5)
    lock = RunLock(tmp_path)
    lock.acquire()
    try:
        with pytest.raises(StateError, match="another harvester"):
            await Harvest(settings_for(srv, tmp_path)).run()
    finally:
        lock.release()



async def test_no_secret_or_token_reaches_the_logs(start_sim: SimStarter,
                                                   tmp_path: Path) -> None:
    """JSON logs of a run with retries, a 429 and a token that expires mid-run hold
    neither the client secret nor any JWT."""
    import io

    from harvester.obs import setup_logging
    from tests.conftest import FakeTime

    sim_clock = FakeTime()
    srv = await start_sim(clock=sim_clock, catalogs=1, items=60, fault_rate=0.05)
    buf = io.StringIO()
    setup_logging(fmt="json", stream=buf)
    harvest = Harvest(settings_for(srv, tmp_path))

    async with asyncio.TaskGroup() as tg:
        tg.create_task(expire_tokens_after(srv, sim_clock, 20))
        run = tg.create_task(harvest.run())
    assert run.result().exit_code == 0
    logs = buf.getvalue()
    assert "http.retry" in logs and "auth.token" in logs  # the logs did see the action
    assert srv.client_secret not in logs
    assert "eyJ" not in logs  # every JWT starts with a base64 '{"'
    assert srv.client_secret not in repr(harvest.settings)
    assert srv.client_secret not in repr(harvest._client)


async def test_shards_split_the_catalogs_disjointly(start_sim: SimStarter,
                                                    tmp_path: Path) -> None:
    """--shard I/N: N runs together harvest every catalog exactly once."""
    srv = await start_sim(catalogs=5, items=10)
    owners: dict[str, int] = {}
    for i in range(3):
        result = await Harvest(settings_for(srv, tmp_path / f"s{i}", **{
            "harvest.shard": f"{i}/3", "harvest.details": False})).run()
        assert result.exit_code == 0
        assert result.manifest is not None
        for cat in result.manifest["catalogs"]:
            assert cat not in owners
            owners[cat] = i
    assert set(owners) == set(srv.catalog_uuids)
    assert len(set(owners.values())) > 1
