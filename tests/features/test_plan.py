"""`harvester plan` against the simulator: its numbers are the simulator's truth.

The plan lists everything and requests no detail; the counts by type must equal the
simulator's catalogs, and its detail requests must equal the detail requests the simulator
then serves to the harvest (or sync) that follows. The ETA's accuracy against wall time is
measured in bench/ (``python -m bench --only plan_eta``), not here: no timed assertions.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from harvester import cli
from harvester.sim import SimConfig, SimServer
from tests.integration.helpers import LoopThread


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def start(loop: LoopThread, **kw: Any) -> SimServer:
    cfg = SimConfig(**{"catalogs": 2, "items": 200, "seed": 7, "rate_lms": "0",
                       "rate_learners": "0", **kw})
    srv = SimServer(cfg, port=0)
    loop.run(srv.start())
    return srv


def call(loop: LoopThread, srv: SimServer, method: str, path: str, **kw: Any) -> Any:
    async def go() -> Any:
        async with aiohttp.ClientSession() as s, s.request(method, srv.base_url + path,
                                                           **kw) as r:
            return await r.json()
    return loop.run(go())


def run(monkeypatch: pytest.MonkeyPatch, srv: SimServer, tmp: Path, *args: str) -> int:
    monkeypatch.setenv("EDX_CLIENT_ID", srv.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", srv.client_secret)
    cfg = tmp / "fast.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
    return cli.main([*args, "--api-base", srv.base_url, "--rate-lms", "2000/s",
                     "--progress", "off", "--config", str(cfg)])


def plan_json(monkeypatch: pytest.MonkeyPatch, srv: SimServer, tmp: Path,
              capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert run(monkeypatch, srv, tmp, "plan", "--json", *args) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def sim_types(srv: SimServer) -> dict[str, dict[str, int]]:
    """Unique items by content type per catalog, from the simulator's own data."""
    data, epoch = srv.state.data, srv.state.epoch
    return {data.catalog_uuids[c]: dict(Counter(data.content.content_type(g)
                                                for g in data.membership(c, epoch)))
            for c in range(srv.state.cfg.catalogs)}


def test_plan_counts_and_requests_equal_the_simulators_truth(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Keys listed twice: the plan must dedupe exactly as the harvest does.
    srv = start(loop, dup_keys=6)
    try:
        call(loop, srv, "POST", "/__reset")
        doc = plan_json(monkeypatch, srv, tmp_path, capsys)
        assert call(loop, srv, "GET", "/__stats")["detail_requests"] == 0  # spent none
        assert doc["schema"] == 1 and doc["complete"] is True
        truth = sim_types(srv)
        assert {c["uuid"]: c["items"] for c in doc["catalogs"]} == truth
        assert doc["totals"]["catalog_list_requests"] >= 1
        assert doc["sync"] is None

        call(loop, srv, "POST", "/__reset")
        assert run(monkeypatch, srv, tmp_path, "harvest", "--out", str(tmp_path / "out")) == 0
        served = call(loop, srv, "GET", "/__stats")["detail_requests"]
        assert doc["totals"]["detail_requests"] == served
        # Only types with a detail endpoint cost a request (learner pathways do not).
        with_detail = sum(n for types in truth.values() for t, n in types.items()
                          if t != "learnerpathway")
        assert served == with_detail
        manifest = orjson.loads((tmp_path / "out" / "manifest.json").read_bytes())
        for c in doc["catalogs"]:
            assert c["items_total"] == manifest["catalogs"][c["uuid"]]["unique_found"]
    finally:
        loop.run(srv.close())


def test_plan_with_store_predicts_what_the_next_sync_fetches(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    srv = start(loop, mutation_rate=0.08)
    store = tmp_path / "store"
    try:
        assert run(monkeypatch, srv, tmp_path, "sync", "--store", str(store),
                   "--as-of", "2026-11-20") == 0
        call(loop, srv, "POST", "/__epoch", json={"epoch": 1})
        doc = plan_json(monkeypatch, srv, tmp_path, capsys, "--store", str(store),
                        "--as-of", "2026-11-21")
        sync = doc["sync"]
        assert sync["previous"] == (store / "latest").resolve().name
        assert sync["new"] > 0 and sync["changed"] > 0 and sync["refresh"] > 0

        call(loop, srv, "POST", "/__reset")
        assert run(monkeypatch, srv, tmp_path, "sync", "--store", str(store),
                   "--as-of", "2026-11-21") == 0
        served = call(loop, srv, "GET", "/__stats")["detail_requests"]
        assert sync["detail_requests"] == served
        night = orjson.loads(((store / "latest").resolve() / "manifest.json").read_bytes())
        did = Counter[str]()
        for c in night["catalogs"].values():
            did.update({k: int(v) for k, v in c["sync"].items() if isinstance(v, int)})
        assert (sync["new"], sync["changed"], sync["refresh"], sync["stale_retries"]) == (
            did["fetched_new"], did["fetched_changed"], did["refreshed"], did["retried_stale"])
        per_cat = {c["uuid"]: c["sync"] for c in doc["catalogs"]}
        for uuid, c in night["catalogs"].items():
            assert per_cat[uuid]["new"] == c["sync"]["fetched_new"]
            assert per_cat[uuid]["carried"] == c["sync"]["carried"]
    finally:
        loop.run(srv.close())


def test_plan_counts_keyless_rows_apart_and_never_as_requests(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    srv = start(loop, items=60, keyless_items=3)
    try:
        doc = plan_json(monkeypatch, srv, tmp_path, capsys)
        for c in doc["catalogs"]:
            assert c["keyless"] == 3
            assert c["items_total"] + c["keyless"] == 60
        call(loop, srv, "POST", "/__reset")
        run(monkeypatch, srv, tmp_path, "harvest", "--out", str(tmp_path / "out"))
        served = call(loop, srv, "GET", "/__stats")["detail_requests"]
        assert doc["totals"]["detail_requests"] == served
    finally:
        loop.run(srv.close())


def test_plan_text_output_and_bad_input(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    srv = start(loop, items=40)
    try:
        capsys.readouterr()
        assert run(monkeypatch, srv, tmp_path, "plan") == 0
        out = capsys.readouterr().out
        assert "detail requests" in out and "ETA" in out
        for uuid in srv.catalog_uuids:
            assert uuid in out
        # A store that is not a store, and a bad --max-age: exit 2, one line, no request.
        call(loop, srv, "POST", "/__reset")
        assert run(monkeypatch, srv, tmp_path, "plan", "--max-age", "-3d") == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--max-age" in err
        assert call(loop, srv, "GET", "/__stats")["requests"] == {}
        not_a_store = tmp_path / "file"
        not_a_store.write_text("x")
        assert run(monkeypatch, srv, tmp_path, "plan", "--store", str(not_a_store)) == 2
        assert "not a directory" in capsys.readouterr().err
        assert call(loop, srv, "GET", "/__stats")["requests"] == {}
    finally:
        loop.run(srv.close())
