"""Walking lists against a hostile or moving server: a lying count, a list that grows at
the head while it is walked, keyless rows, a key listed twice with different content.

Each test drives the simulator over real HTTP and asserts the contract: exit code,
manifest, errors.ndjson lines, what is on disk, and how many requests it cost.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from harvester import cli
from harvester.pipeline import Harvest
from harvester.sim import SimConfig, SimServer
from tests.conftest import SimStarter, settings_for
from tests.integration.helpers import (
    LoopThread,
    assert_exactly_once,
    harvested,
    read_lines,
    truth,
)


def content_requests(srv: SimServer) -> dict[str, int]:
    return dict(srv.state.stats.snapshot()["requests"].get("content", {}))


def errors(out: Path) -> list[dict[str, Any]]:
    return read_lines(out / "errors.ndjson")


# --- a lying count --------------------------------------------------------------------------

@pytest.mark.parametrize("lie", [2000, 10**9])
async def test_a_lying_count_costs_a_few_requests_and_is_a_gap(
        start_sim: SimStarter, tmp_path: Path, lie: int) -> None:
    """5 items under `count: 2000` made 1,197 "Invalid page." requests and two re-walks;
    at 10**9, ~10**7 requests. Each walk now stops at its first "Invalid page.": at most
    page 1 + one probe per page worker, and one re-walk, which finds nothing new."""
    srv = await start_sim(catalogs=1, items=5, lie_count=lie)
    expected = await truth(srv)
    srv.state.stats.reset()
    result = await Harvest(settings_for(srv, tmp_path, **{"harvest.page_concurrency": 4})
                           ).run()
    assert result.exit_code == 3 and result.status == "partial"
    entry = result.manifest["catalogs"][srv.catalog_uuids[0]]  # type: ignore[index]
    assert entry["count_reported"] == lie and entry["unique_found"] == 5
    assert entry["gaps"] == lie - 5 and entry["walks"] == 2
    requests = content_requests(srv)
    assert requests.get("200") == 2  # page 1 of each walk
    assert requests.get("404", 0) <= 2 * 4  # at most one probe per worker and walk
    gaps = [e for e in errors(tmp_path) if e["kind"] == "gap"]
    assert len(gaps) == 1 and f"{lie - 5} of {lie}" in gaps[0]["message"]
    assert_exactly_once(tmp_path, expected)  # the 5 real items are all there


async def test_count_reached_costs_no_extra_walk_or_request(
        start_sim: SimStarter, tmp_path: Path) -> None:
    """The common case does not regress: 1,000 items in pages of 100 is exactly 10
    content requests, one walk, and the pages still go out concurrently."""
    srv = await start_sim(catalogs=1, items=1000, latency_ms=5)
    expected = await truth(srv)
    srv.state.stats.reset()
    result = await Harvest(settings_for(srv, tmp_path, **{"harvest.details": False})).run()
    assert result.exit_code == 0
    entry = result.manifest["catalogs"][srv.catalog_uuids[0]]  # type: ignore[index]
    assert entry["walks"] == 1 and entry["gaps"] == 0
    assert content_requests(srv) == {"200": 10}
    assert srv.state.stats.snapshot()["peak_concurrency"]["content"] > 1
    assert_exactly_once(tmp_path, expected)


# --- a list that keeps moving ---------------------------------------------------------------

async def test_a_list_growing_at_the_head_is_walked_until_nothing_is_missing(
        start_sim: SimStarter, tmp_path: Path) -> None:
    """30 items are inserted at the head, one every 3 content requests, while 2,000 are
    walked: each walk misses what was inserted after its page 1. Two re-walks left items
    missing (exit 3); walking on while walks still find items gets every one."""
    clean = await start_sim(catalogs=1, items=2000, seed=9)
    expected = await truth(clean)
    srv = await start_sim(catalogs=1, items=2000, seed=9, head_inserts=30,
                          head_insert_every=3)
    result = await Harvest(settings_for(srv, tmp_path, **{"harvest.details": False})).run()
    entry = result.manifest["catalogs"][srv.catalog_uuids[0]]  # type: ignore[index]
    assert result.exit_code == 0, errors(tmp_path)
    assert entry["count_reported"] == 2000 and entry["gaps"] == 0 and entry["walks"] > 3
    assert_exactly_once(tmp_path, expected)


async def test_a_list_that_never_settles_is_walked_to_the_bound_and_the_gap_reported(
        start_sim: SimStarter, tmp_path: Path) -> None:
    """Inserts that outlast the walks' bound leave a gap: reported, exit 3."""
    srv = await start_sim(catalogs=1, items=2000, seed=9, head_inserts=1000,
                          head_insert_every=1)
    result = await Harvest(settings_for(srv, tmp_path, **{"harvest.details": False,
                                                          "harvest.max_rewalks": 3})).run()
    entry = result.manifest["catalogs"][srv.catalog_uuids[0]]  # type: ignore[index]
    assert result.exit_code == 3
    assert entry["walks"] == 4 and entry["gaps"] > 0
    assert [e["kind"] for e in errors(tmp_path)] == ["gap"]
    got = harvested(tmp_path)[srv.catalog_uuids[0]]
    assert len(got) == len(set(got)) == entry["unique_found"]
    assert entry["unique_found"] + entry["gaps"] == entry["count_reported"]


# --- keyless rows ---------------------------------------------------------------------------

async def test_keyless_rows_are_reported_once_and_are_not_a_gap(
        start_sim: SimStarter, tmp_path: Path) -> None:
    """A listed row without key or uuid cost 2 re-walks, 3 identical `no_key` lines, a
    false gap and exit 3. It is listed, just unusable: one line each, complete, exit 0."""
    srv = await start_sim(catalogs=2, items=40, keyless_items=2)
    result = await Harvest(settings_for(srv, tmp_path)).run()
    assert result.exit_code == 0 and result.status == "complete"
    lines = errors(tmp_path)
    assert sorted(e["kind"] for e in lines) == ["no_key"] * 4
    assert len({(e["catalog_uuid"], e["record_hash"]) for e in lines}) == 4
    for cat in srv.catalog_uuids:
        entry = result.manifest["catalogs"][cat]  # type: ignore[index]
        assert (entry["walks"], entry["gaps"], entry["keyless"], entry["unique_found"]) == (
            1, 0, 2, 38)
        assert len(harvested(tmp_path)[cat]) == 38


async def test_keyless_rows_seen_again_by_rewalks_are_not_reported_again(
        start_sim: SimStarter, tmp_path: Path) -> None:
    """Shuffled pages force re-walks that list the keyless rows again and again."""
    srv = await start_sim(catalogs=1, items=300, seed=5, shuffle=True, keyless_items=3)
    result = await Harvest(settings_for(srv, tmp_path, **{
        "harvest.details": False, "harvest.page_concurrency": 1})).run()
    entry = result.manifest["catalogs"][srv.catalog_uuids[0]]  # type: ignore[index]
    assert [e["kind"] for e in errors(tmp_path) if e["kind"] == "no_key"] == ["no_key"] * 3
    assert entry["walks"] > 1 and entry["keyless"] == 3


async def test_keyless_rows_are_not_reported_again_after_a_resume(
        start_sim: SimStarter, tmp_path: Path) -> None:
    """Stopped mid-listing (SIGTERM) and rerun: the rows reported before the stop are not
    reported again, and the run completes."""
    srv = await start_sim(catalogs=1, items=1500, seed=5, shuffle=True, keyless_items=3,
                          latency_ms=10)
    out = tmp_path / "out"
    cfg = tmp_path / "h.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
    env = {**os.environ, "EDX_CLIENT_ID": srv.client_id, "EDX_CLIENT_SECRET": srv.client_secret}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harvester", "harvest", "--out", str(out), "--config", str(cfg),
        "--api-base", srv.base_url, "--no-details", "--page-concurrency", "1",
        "--progress", "off", "--quiet", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    # Into the second walk: every keyless row has been listed (and reported) once.
    while content_requests(srv).get("200", 0) < 20:
        assert proc.returncode is None
        await asyncio.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = await proc.communicate()
    assert proc.returncode == 143, err.decode()
    result = await Harvest(settings_for(srv, out, **{"harvest.details": False,
                                                     "harvest.page_concurrency": 1})).run()
    entry = result.manifest["catalogs"][srv.catalog_uuids[0]]  # type: ignore[index]
    assert [e["kind"] for e in errors(out) if e["kind"] == "no_key"] == ["no_key"] * 3
    assert entry["keyless"] == 3


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def test_a_keyless_row_never_blocks_the_sync_store(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path) -> None:
    """With a keyless row listed, `latest` moved never again. Now the night is good."""
    srv = SimServer(SimConfig(catalogs=1, items=40, keyless_items=1, rate_lms="0"), port=0)
    loop.run(srv.start())
    try:
        monkeypatch.setenv("EDX_CLIENT_ID", srv.client_id)
        monkeypatch.setenv("EDX_CLIENT_SECRET", srv.client_secret)
        cfg = tmp_path / "fast.toml"
        cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
        store = tmp_path / "store"
        code = cli.main(["sync", "--store", str(store), "--api-base", srv.base_url,
                         "--rate-lms", "2000/s", "--progress", "off", "--config", str(cfg),
                         "--as-of", "2026-11-20"])
        assert code == 0
        snap = (store / "latest").resolve()
        entry = next(iter(orjson.loads((snap / "manifest.json").read_bytes())
                          ["catalogs"].values()))
        assert entry["gaps"] == 0 and entry["sync"]["deletes_suppressed"] is False
        assert [e["kind"] for e in read_lines(snap / "errors.ndjson")] == ["no_key"]
    finally:
        loop.run(srv.close())


# --- a key listed twice with different content ----------------------------------------------

@pytest.mark.parametrize(("page_size", "concurrency"), [(100, 4), (10, 1), (10, 4)])
async def test_a_key_listed_twice_keeps_the_newest_record_whatever_the_order(
        start_sim: SimStarter, tmp_path: Path, page_size: int, concurrency: int) -> None:
    """The first copy to arrive used to win. The record kept is the one with the latest
    `content_last_modified`, however pages are sized and however they arrive."""
    srv = await start_sim(catalogs=1, items=40, dup_keys=4)
    cat = srv.catalog_uuids[0]
    result = await Harvest(settings_for(srv, tmp_path, **{
        "harvest.details": False, "harvest.page_size": page_size,
        "harvest.page_concurrency": concurrency})).run()
    assert result.exit_code == 0, errors(tmp_path)
    records = {}
    for f in (tmp_path / f"catalog={cat}").glob("*.ndjson"):
        for rec in read_lines(f):
            records[rec["_harvest"]["key"]] = rec
    assert len(records) == 40
    twice = {k: r for k, r in records.items() if "(listed twice" in str(r.get("title"))}
    # Versions 0 (even indexes) are a day newer than the first copy; versions 1 older.
    assert len(twice) == 2 and all("version 0" in r["title"] for r in twice.values())
    assert result.manifest["catalogs"][cat]["duplicates_dropped"] == 4  # type: ignore[index]


async def test_a_key_listed_twice_keeps_the_newest_listing_for_details(
        start_sim: SimStarter, tmp_path: Path) -> None:
    """With details, the kept listing decides `_harvest.content_last_modified` (and the
    sync's listing hash): also the newest copy, and one detail request per key."""
    srv = await start_sim(catalogs=1, items=40, dup_keys=4)
    cat = srv.catalog_uuids[0]
    listed: dict[str, list[str]] = {}
    page = 1
    while True:
        from tests.integration.helpers import fetch_json
        body = await fetch_json(srv, f"/enterprise/v2/enterprise-catalogs/{cat}"
                                     f"?page={page}&page_size=100")
        for r in body["results"]:
            key = r["uuid"] if r["content_type"] == "program" else r.get("key") or r["uuid"]
            listed.setdefault(key, []).append(r["content_last_modified"])
        if not body["next"]:
            break
        page += 1
    srv.state.stats.reset()
    result = await Harvest(settings_for(srv, tmp_path)).run()
    assert result.exit_code == 0, errors(tmp_path)
    got = {r["_harvest"]["key"]: r["_harvest"]["content_last_modified"]
           for f in (tmp_path / f"catalog={cat}").glob("*.ndjson") for r in read_lines(f)}
    assert got == {k: max(v) for k, v in listed.items()}
    details = sum(1 for k in got if not k.startswith("learnerpathway"))
    assert srv.state.stats.snapshot()["detail_requests"] <= details
