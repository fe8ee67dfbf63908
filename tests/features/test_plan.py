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


def tree(root: Path) -> list[tuple[str, int, int, int, bytes]]:
    """Every entry under ``root``: path, mode, size, mtime (ns) and content."""
    return sorted((str(p.relative_to(root)), (st := p.lstat()).st_mode, st.st_size,
                   st.st_mtime_ns, p.read_bytes() if p.is_file() and not p.is_symlink()
                   else b"") for p in root.rglob("*"))


def test_plan_leaves_the_store_untouched_and_works_read_only(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """No -shm/-wal next to the snapshot's index, no mtime changed. The tests run as root,
    for whom a-w stops nothing: the byte-and-mtime listing is what proves it."""
    srv = start(loop, items=40)
    store = tmp_path / "store"
    try:
        assert run(monkeypatch, srv, tmp_path, "sync", "--store", str(store),
                   "--as-of", "2026-11-20") == 0
        before = tree(store)
        for p in [store, *store.rglob("*")]:
            if not p.is_symlink():
                p.chmod(p.stat().st_mode & ~0o222)
        ro = tree(store)
        doc = plan_json(monkeypatch, srv, tmp_path, capsys, "--store", str(store),
                        "--as-of", "2026-11-21")
        assert doc["sync"]["previous"] == (store / "latest").resolve().name
        assert tree(store) == ro
        assert [e[:1] + e[2:] for e in ro] == [e[:1] + e[2:] for e in before]
    finally:
        for p in [store, *store.rglob("*")]:
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o200)
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


# --- [[tenants]]: one plan per tenant, each with its own credential, budget and store ------

def tenants_run(srv: SimServer, tmp: Path, monkeypatch: pytest.MonkeyPatch,
                *args: str, refused: int | None = None) -> int:
    toml, env = srv.tenant_config()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if refused is not None:  # that tenant's secret is wrong
        monkeypatch.setenv(f"SIM_{refused}_CLIENT_SECRET", "wrong-secret")
    cfg = tmp / "tenants.toml"  # sim-1 has a budget of its own
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n" + toml.replace(
        'name = "sim-1"', 'name = "sim-1"\nrate_lms = "1000/s"'))
    return cli.main([*args, "--config", str(cfg), "--api-base", srv.base_url,
                     "--rate-lms", "2000/s", "--progress", "off"])


def lms_by_client(loop: LoopThread, srv: SimServer) -> dict[str, int]:
    """LMS responses the simulator served per tenant (detail requests + catalog list)."""
    by_client = call(loop, srv, "GET", "/__stats").get("by_client", {})
    return {f"sim-{t.index}": sum(n for k, n in by_client.get(t.client_id, {}).items()
                                  if k.startswith("lms:")) for t in srv.tenants}


def test_plan_per_tenant_equals_what_each_tenant_then_harvests_and_syncs(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    srv = start(loop, tenants=3, catalogs=3, items=40, mutation_rate=0.08)
    store, prom = tmp_path / "store", tmp_path / "plan.prom"
    names = [f"sim-{t.index}" for t in srv.tenants]
    try:
        call(loop, srv, "POST", "/__reset")
        capsys.readouterr()
        assert tenants_run(srv, tmp_path, monkeypatch, "plan", "--json",
                           "--metrics-file", str(prom)) == 0
        doc = json.loads(capsys.readouterr().out)
        during_plan = call(loop, srv, "GET", "/__stats")
        assert during_plan["detail_requests"] == 0
        assert set(doc["tenants"]) == set(names) and doc["schema"] == 1
        assert doc["tenants"]["sim-1"]["rate_lms"] != doc["tenants"]["sim-0"]["rate_lms"]
        assert doc["totals"]["detail_requests"] == sum(
            d["totals"]["detail_requests"] for d in doc["tenants"].values())
        assert doc["totals"]["harvest_eta_seconds"] == max(
            d["totals"]["harvest_eta_seconds"] for d in doc["tenants"].values())
        assert {c["tenant"] for c in doc["catalogs"]} == set(names)

        call(loop, srv, "POST", "/__reset")
        assert tenants_run(srv, tmp_path, monkeypatch, "sync", "--store", str(store),
                           "--as-of", "2026-11-20") == 0
        served = lms_by_client(loop, srv)
        for name in names:
            d = doc["tenants"][name]["totals"]
            assert d["detail_requests"] + d["catalog_list_requests"] == served[name] > 0

        call(loop, srv, "POST", "/__epoch", json={"epoch": 1})
        call(loop, srv, "POST", "/__reset")
        capsys.readouterr()
        assert tenants_run(srv, tmp_path, monkeypatch, "plan", "--json", "--store",
                           str(store), "--as-of", "2026-11-21", "--tenant", "sim-0",
                           "--tenant", "sim-2") == 0
        doc2 = json.loads(capsys.readouterr().out)
        assert set(doc2["tenants"]) == {"sim-0", "sim-2"}
        for name in ("sim-0", "sim-2"):
            assert doc2["tenants"][name]["sync"]["store"] == str(store / f"tenant={name}")
            assert doc2["tenants"][name]["sync"]["previous"] == \
                (store / f"tenant={name}" / "latest").resolve().name
        call(loop, srv, "POST", "/__reset")
        assert tenants_run(srv, tmp_path, monkeypatch, "sync", "--store", str(store),
                           "--as-of", "2026-11-21") == 0
        served = lms_by_client(loop, srv)
        for name in ("sim-0", "sim-2"):
            t = doc2["tenants"][name]
            assert t["sync"]["new"] + t["sync"]["changed"] > 0
            assert t["sync"]["detail_requests"] + t["totals"]["catalog_list_requests"] == \
                served[name]
        assert doc2["sync"]["detail_requests"] == sum(
            doc2["tenants"][n]["sync"]["detail_requests"] for n in ("sim-0", "sim-2"))
    finally:
        loop.run(srv.close())
    # The plan's textfile: each tenant's requests, as the simulator counted them.
    from prometheus_client.parser import text_string_to_metric_families
    got: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(prom.read_text()):
        for s in family.samples:
            if s.name == "edx_harvester_requests_total" and s.labels["class"] != "token":
                got[(s.labels["tenant"], s.labels["class"], s.labels["status"])] = s.value
    by_client = during_plan["by_client"]
    assert got == {(f"sim-{t.index}", *k.split(":")): float(n) for t in srv.tenants
                   for k, n in by_client[t.client_id].items()}


def test_plan_with_tenants_text_and_shards(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from harvester.tenants import in_shard

    srv = start(loop, tenants=3, catalogs=2, items=20)
    try:
        capsys.readouterr()
        assert tenants_run(srv, tmp_path, monkeypatch, "plan", "--shard", "2/3") == 0
        out = capsys.readouterr().out
        mine = [f"sim-{t.index}" for t in srv.tenants if in_shard(f"sim-{t.index}", "2/3")]
        others = {f"sim-{t.index}" for t in srv.tenants} - set(mine)
        assert mine and others
        assert [line for line in out.splitlines() if line.startswith("tenant ")] == [
            f"tenant {n}:" for n in mine]
        assert "slowest tenant" in out.splitlines()[-1]
        assert not any(f"tenant {n}:" in out for n in others)
        # A refused credential fails that tenant's plan only: exit 3, the others planned.
        assert tenants_run(srv, tmp_path, monkeypatch, "plan", "--json", refused=2) == 3
        doc = json.loads(capsys.readouterr().out)
        assert set(doc["tenants"]) == {"sim-0", "sim-1"} and doc["complete"] is False
        assert list(doc["failed_tenants"]) == ["sim-2"]
        assert "wrong-secret" not in json.dumps(doc)
        assert tenants_run(srv, tmp_path, monkeypatch, "plan", refused=0) == 3
        assert "tenant sim-0: not planned:" in capsys.readouterr().out
        call(loop, srv, "POST", "/__reset")
        assert tenants_run(srv, tmp_path, monkeypatch, "plan", "--tenant", "nope") == 2
        assert "nope" in capsys.readouterr().err
        assert call(loop, srv, "GET", "/__stats")["requests"] == {}
    finally:
        loop.run(srv.close())
