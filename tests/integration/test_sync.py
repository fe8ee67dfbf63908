"""`harvester sync` and `harvester export` against the simulator's epochs, via the CLI.

The simulator runs on a background loop, so ``cli.main`` runs exactly as from a shell.
Night 1 harvests epoch 0; the simulator then moves to epoch 1 (5% churn: changes,
deletes, additions) and night 2 must fetch only what changed plus its refresh share.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from harvester import cli
from harvester.delta import content_hash
from harvester.pipeline import Harvest
from harvester.sim import SimConfig, SimServer
from tests.conftest import settings_for
from tests.integration.helpers import LoopThread, read_lines

ITEMS = 300


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()




@pytest.fixture
def sim(loop: LoopThread) -> Iterator[SimServer]:
    srv = SimServer(SimConfig(catalogs=2, items=ITEMS, seed=4, rate_lms="0",
                              rate_learners="0", mutation_rate=0.05), port=0)
    loop.run(srv.start())
    yield srv
    loop.run(srv.close())


def call(loop: LoopThread, srv: SimServer, method: str, path: str, **kw: Any) -> Any:
    async def go() -> Any:
        async with aiohttp.ClientSession() as s, s.request(method, srv.base_url + path,
                                                           **kw) as r:
            return await r.json()
    return loop.run(go())


def sync(monkeypatch: pytest.MonkeyPatch, srv: SimServer, store: Path, day: str,
         *extra: str) -> int:
    monkeypatch.setenv("EDX_CLIENT_ID", srv.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", srv.client_secret)
    cfg = store.parent / "fast.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
    return cli.main(["sync", "--store", str(store), "--api-base", srv.base_url,
                     "--rate-lms", "2000/s", "--progress", "off", "--config", str(cfg),
                     "--as-of", day, *extra])


def manifest(snap: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((snap / "manifest.json").read_bytes())
    return data


def items(snap: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {}
    for f in snap.glob("catalog=*/*.ndjson"):
        if f.name != "changes.ndjson":
            for rec in read_lines(f):
                h = rec["_harvest"]
                out[(h["catalog_uuid"], h["content_type"], h["key"])] = rec
    return out


def changes(snap: Path) -> set[tuple[str, str, str, str]]:
    return {(c["op"], c["catalog_uuid"], c["content_type"], c["key"])
            for f in snap.glob("catalog=*/changes.ndjson") for c in read_lines(f)}


def test_second_night_fetches_only_changes_and_emits_the_exact_feed(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, sim: SimServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    assert sync(monkeypatch, sim, store, "2026-11-20") == 0
    night1 = (store / "latest").resolve()
    first = manifest(night1)
    assert all(c["sync"]["upserts"] == c["unique_found"] for c in first["catalogs"].values())

    call(loop, sim, "POST", "/__epoch", json={"epoch": 1})
    truth = call(loop, sim, "GET", "/__changes?from=0&to=1")
    call(loop, sim, "POST", "/__reset")
    capsys.readouterr()
    assert sync(monkeypatch, sim, store, "2026-11-21") == 0
    night2 = (store / "latest").resolve()
    assert night2 != night1
    second = manifest(night2)
    stats = call(loop, sim, "GET", "/__stats")

    # Detail requests: the changed and new items plus the refresh share, nothing else.
    detail_types = {"course", "courserun", "program"}
    changed_or_new = sum(1 for c in truth if c["op"] == "upsert"
                         and c["content_type"] in detail_types)
    total = sum(c["unique_found"] for c in first["catalogs"].values())
    share = sum(c["sync"].get("refreshed", 0) for c in second["catalogs"].values())
    carried = sum(c["sync"].get("carried", 0) for c in second["catalogs"].values())
    with capsys.disabled():
        print(f"\nnight 2: {stats['detail_requests']} detail requests = {changed_or_new} "
              f"changed/new + {share} refreshes (1/7 of {total} is {total / 7:.0f}); "
              f"{carried} carried forward without a request")
    assert stats["detail_requests"] <= changed_or_new + share
    assert 0 < share <= 2 * total / 7

    # The change feed is exactly the simulator's upserts and deletes.
    expected = {(c["op"], c["catalog_uuid"], c["content_type"], c["key"]) for c in truth}
    assert changes(night2) == expected

    # The carried-forward snapshot equals a fresh full harvest (ignoring fetched_at and the
    # volatile fields the service bumps daily).
    fresh_out = tmp_path / "fresh"
    settings = settings_for(sim, fresh_out)

    async def fresh() -> int:
        return (await Harvest(settings).run()).exit_code

    assert loop.run(fresh()) == 0
    synced, full = items(night2), items(fresh_out)
    assert synced.keys() == full.keys()
    differing = [k for k in full if content_hash(full[k]) != content_hash(synced[k])]
    assert differing == []
    out = capsys.readouterr().out
    assert re.search(r"upserts \d+, deletes \d+", out)


def test_incomplete_listing_emits_no_deletes_and_is_not_latest(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path) -> None:
    """A night whose listing misses items (unstable order, no re-walks) deletes nothing."""
    srv = SimServer(SimConfig(catalogs=1, items=ITEMS, seed=6, rate_lms="0"), port=0)
    loop.run(srv.start())
    try:
        store = tmp_path / "store"
        assert sync(monkeypatch, srv, store, "2026-11-20") == 0
        good = (store / "latest").resolve()
        loop.run(srv.close())
        srv = SimServer(SimConfig(catalogs=1, items=ITEMS, seed=6, rate_lms="0",
                                  shuffle=True), port=0)
        loop.run(srv.start())
        cfg = tmp_path / "norewalk.toml"
        cfg.write_text("[harvest]\nmax_rewalks = 0\n[retry]\nbackoff_base = 0\n")
        assert sync(monkeypatch, srv, store, "2026-11-21", "--config", str(cfg)) == 3
        bad = sorted((store / "snapshots").iterdir())[-1]
        entry = next(iter(manifest(bad)["catalogs"].values()))
        assert entry["gaps"] > 0
        assert entry["sync"]["deletes_suppressed"] is True
        assert not any(op == "delete" for op, *_ in changes(bad))
        assert (store / "latest").resolve() == good  # a bad night never becomes latest
    finally:
        loop.run(srv.close())


@pytest.fixture
def feed_snapshot(monkeypatch: pytest.MonkeyPatch, loop: LoopThread, sim: SimServer,
                  tmp_path: Path) -> Path:
    store = tmp_path / "store"
    assert sync(monkeypatch, sim, store, "2026-11-20") == 0
    call(loop, sim, "POST", "/__epoch", json={"epoch": 1})
    assert sync(monkeypatch, sim, store, "2026-11-21") == 0
    return (store / "latest").resolve()


def test_export_es_bulk_shapes(feed_snapshot: Path, tmp_path: Path) -> None:
    out = tmp_path / "bulk.ndjson"
    assert cli.main(["export", str(feed_snapshot), "--changes", "--format", "es-bulk",
                     "--out", str(out), "--index", "courses"]) == 0
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    feed = changes(feed_snapshot)
    i = upserts = deletes = 0
    while i < len(lines):
        action = lines[i]
        assert len(action) == 1
        (verb, meta), = action.items()
        assert verb in ("index", "delete") and set(meta) == {"_index", "_id"}
        assert meta["_index"] == "courses"
        catalog, ctype, key = meta["_id"].split(":", 2)
        if verb == "index":
            doc = lines[i + 1]
            assert "index" not in doc and "_harvest" not in doc
            assert doc["harvest_meta"]["key"] == key and doc["catalog_uuid"] == catalog
            assert doc["content_type"] == ctype
            assert ("upsert", catalog, ctype, key) in feed
            upserts += 1
            i += 2
        else:
            assert ("delete", catalog, ctype, key) in feed
            deletes += 1
            i += 1
    assert (upserts, deletes) == (sum(op == "upsert" for op, *_ in feed),
                                  sum(op == "delete" for op, *_ in feed))
    assert deletes > 0


def test_export_meili_and_jsonl_shapes(feed_snapshot: Path, tmp_path: Path) -> None:
    meili = tmp_path / "docs.ndjson"
    assert cli.main(["export", str(feed_snapshot), "--changes", "--format", "meili",
                     "--out", str(meili)]) == 0
    docs = [orjson.loads(x) for x in meili.read_bytes().splitlines()]
    deletes = orjson.loads((tmp_path / "docs.ndjson.deletes.json").read_bytes())
    feed = changes(feed_snapshot)
    assert len(docs) == sum(op == "upsert" for op, *_ in feed)
    assert len(deletes) == sum(op == "delete" for op, *_ in feed) > 0
    for d in [*docs, *({"id": x} for x in deletes)]:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,511}", d["id"])
    assert len({d["id"] for d in docs}) == len(docs)

    jl = tmp_path / "feed.jsonl"
    assert cli.main(["export", str(feed_snapshot), "--changes", "--format", "jsonl",
                     "--out", str(jl)]) == 0
    rows = [orjson.loads(x) for x in jl.read_bytes().splitlines()]
    for r in rows:
        assert set(r) == ({"op", "id", "catalog_uuid", "content_type", "key", "document"}
                          if r["op"] == "upsert" else
                          {"op", "id", "catalog_uuid", "content_type", "key"})
    assert {(r["op"], r["catalog_uuid"], r["content_type"], r["key"]) for r in rows} == feed

    # A whole snapshot exports as upserts only, with the same ids every time.
    again = tmp_path / "snap.ndjson"
    assert cli.main(["export", str(feed_snapshot), "--format", "meili",
                     "--out", str(again)]) == 0
    full = [orjson.loads(x) for x in again.read_bytes().splitlines()]
    assert {d["id"] for d in docs} <= {d["id"] for d in full}


def test_refreshes_revalidate_with_etags(monkeypatch: pytest.MonkeyPatch, loop: LoopThread,
                                         tmp_path: Path) -> None:
    """Nothing changed: every refresh is a conditional request answered 304 and counted."""
    srv = SimServer(SimConfig(catalogs=1, items=200, seed=8, rate_lms="0", etag=True),
                    port=0)
    loop.run(srv.start())
    try:
        store = tmp_path / "store"
        assert sync(monkeypatch, srv, store, "2026-11-20") == 0
        call(loop, srv, "POST", "/__reset")
        assert sync(monkeypatch, srv, store, "2026-11-21") == 0
        snap = (store / "latest").resolve()
        m = manifest(snap)
        entry = next(iter(m["catalogs"].values()))
        stats = call(loop, srv, "GET", "/__stats")
        assert entry["sync"]["refreshed"] > 0
        assert entry["sync"]["not_modified"] == entry["sync"]["refreshed"]
        assert stats["not_modified_304"] == entry["sync"]["refreshed"]
        assert m["totals"]["not_modified_304"] == entry["sync"]["refreshed"]
        assert entry["sync"]["upserts"] == 0 and entry["sync"]["deletes"] == 0
        revalidated = [r for r in items(snap).values()  # listing-only types are re-read
                       if r["_harvest"]["fetched_at"].startswith("2026-11-21")
                       and r["_harvest"]["source"] == "detail"]
        assert len(revalidated) == entry["sync"]["refreshed"]
        assert all(r["_harvest"].get("etag") for r in revalidated)
    finally:
        loop.run(srv.close())
