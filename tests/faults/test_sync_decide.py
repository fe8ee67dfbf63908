"""What a sync night decides per item and per catalog when things fail or go away.

The contract: a delete means the item is gone (absent from a complete listing of its
catalog, or its catalog absent from a complete catalog list), never that a fetch failed.
A listed item whose detail failed keeps its previous record, marked stale, and is retried
the next night; a listed catalog that fails is carried forward the same way. Such a night
is partial (exit 3) but still promotes a usable snapshot whose manifest says what was
carried. All of it is driven over real HTTP against the simulator, through the CLI.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from harvester import cli
from harvester.config import HarvestOptions
from harvester.delta import content_hash
from harvester.sim import SimConfig, SimServer
from tests.integration.helpers import LoopThread, read_lines

Item = tuple[str, str, str]  # (catalog, content_type, key)
DETAIL_TYPES = ("course", "courserun", "program")


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def start(loop: LoopThread) -> Iterator[Any]:
    running: list[SimServer] = []

    def go(**overrides: Any) -> SimServer:
        cfg = SimConfig(**{"catalogs": 2, "items": 40, "seed": 11, "rate_lms": "0",
                           "rate_learners": "0", "mutation_rate": 0.0, **overrides})
        srv = SimServer(cfg, port=0)
        loop.run(srv.start())
        running.append(srv)
        return srv

    yield go
    for srv in running:
        loop.run(srv.close())


def ops(loop: LoopThread, srv: SimServer, method: str, path: str, body: Any = None) -> Any:
    async def go() -> Any:
        async with aiohttp.ClientSession() as s, s.request(
                method, srv.base_url + path,
                data=None if body is None else orjson.dumps(body)) as r:
            assert r.status == 200, await r.text()
            return await r.json()
    return loop.run(go())


def sync(monkeypatch: pytest.MonkeyPatch, srv: SimServer, store: Path, day: str,
         *extra: str, quiet: bool = True) -> int:
    monkeypatch.setenv("EDX_CLIENT_ID", srv.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", srv.client_secret)
    cfg = store.parent / "fast.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\nmax_tries = 2\n"
                   "[harvest]\ndetail_404_retries = 0\n")
    return cli.main(["sync", "--store", str(store), "--api-base", srv.base_url,
                     "--rate-lms", "2000/s", "--progress", "off",
                     *(["--quiet"] if quiet else []),
                     "--config", str(cfg), "--as-of", day, *extra])


def latest(store: Path) -> Path:
    return (store / "latest").resolve()


def newest(store: Path) -> Path:
    return sorted((store / "snapshots").iterdir())[-1]


def manifest(snap: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((snap / "manifest.json").read_bytes())
    return data


def records(snap: Path) -> dict[Item, dict[str, Any]]:
    out = {}
    for f in snap.glob("catalog=*/*.ndjson"):
        if f.name != "changes.ndjson":
            for rec in read_lines(f):
                h = rec["_harvest"]
                out[(h["catalog_uuid"], h["content_type"], h["key"])] = rec
    return out


def feed(snap: Path) -> list[tuple[str, str, str, str]]:
    return [(c["op"], c["catalog_uuid"], c["content_type"], c["key"])
            for f in snap.glob("catalog=*/changes.ndjson") for c in read_lines(f)]


def deletes(snap: Path) -> set[Item]:
    return {(cat, t, k) for op, cat, t, k in feed(snap) if op == "delete"}


def errors(snap: Path) -> list[dict[str, Any]]:
    return read_lines(snap / "errors.ndjson")


def es_bulk_deletes(snap: Path, tmp: Path) -> int:
    out = tmp / "bulk.ndjson"
    assert cli.main(["export", str(snap), "--changes", "--format", "es-bulk",
                     "--out", str(out)]) == 0
    return sum(1 for line in out.read_bytes().splitlines() if b'"delete"' in line[:12])


def pick(snap: Path, catalog: str, n: int) -> list[Item]:
    """``n`` items of a catalog only (no other catalog lists them) that have a detail
    endpoint, in a stable order."""
    recs = records(snap)
    elsewhere = {k for c, _, k in recs if c != catalog}
    got = sorted(i for i in recs if i[0] == catalog and i[1] in DETAIL_TYPES
                 and i[2] not in elsewhere)
    return got[1:1 + n]


def assert_carried_stale(before: dict[Item, Any], after: dict[Item, Any],
                         items: set[Item]) -> None:
    for item in items:
        assert item in after, f"{item} left the snapshot"
        h = after[item]["_harvest"]
        assert h["stale"] is True and h["stale_reason"] and h["stale_since"]
        assert content_hash(after[item]) == content_hash(before[item])  # unchanged record


# --- a failed detail ---------------------------------------------------------------------

def test_forbidden_detail_is_carried_stale_never_deleted_and_retried_next_night(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, start: Any, tmp_path: Path) -> None:
    srv = start(mutation_rate=0.2)
    store = tmp_path / "store"
    assert sync(monkeypatch, srv, store, "2026-11-20") == 0
    night1 = latest(store)
    before = records(night1)
    cat = srv.catalog_uuids[0]
    failing = pick(night1, cat, 3)
    # Epoch 1 adds items: one new item fails too (nothing to keep, nothing to delete).
    ops(loop, srv, "POST", "/__epoch", {"epoch": 1})
    truth = ops(loop, srv, "GET", "/__changes?from=0&to=1")
    added = [(c["catalog_uuid"], c["content_type"], c["key"]) for c in truth
             if c["op"] == "upsert" and c["content_type"] in ("course", "courserun")
             and (c["catalog_uuid"], c["content_type"], c["key"]) not in before]
    new = next(i for i in sorted(added) if [k for *_, k in added].count(i[2]) == 1
               and i[2] not in {k for *_, k in before})
    ops(loop, srv, "POST", "/__config", {"detail_403_keys": [k for _, _, k in failing]
                                         + [new[2]]})

    # --max-age 1s: every item is due, so every failing one is requested tonight.
    assert sync(monkeypatch, srv, store, "2026-11-21", "--max-age", "1s") == 3
    night2 = newest(store)
    assert latest(store) == night2  # partial, but usable: the store moves on
    after = records(night2)
    assert_carried_stale(before, after, set(failing))
    assert new not in after
    assert not deletes(night2) & {*failing, new}
    gone = {(c["catalog_uuid"], c["content_type"], c["key"]) for c in truth
            if c["op"] == "delete"}
    assert deletes(night2) == gone  # real deletes still flow
    assert es_bulk_deletes(night2, tmp_path) == len(gone)
    errs = {(e["catalog_uuid"], e.get("content_type"), e.get("key")): e for e in errors(night2)}
    assert set(errs) == {*failing, new}
    assert all(errs[i]["kind"] == "detail_failed" and errs[i]["stale"] for i in failing)
    assert errs[new]["stale"] is False
    m = manifest(night2)
    assert m["status"] == "partial"
    assert m["catalogs"][cat]["sync"]["stale"] == 3
    assert sorted(m["catalogs"][cat]["sync"]["stale_keys"]) == sorted(k for *_, k in failing)
    assert m["stale"] == {"items": 3, "catalogs": []}

    # Night 3, healed: the stale items are fetched again (first) and lose their mark.
    ops(loop, srv, "POST", "/__config", {"detail_403_keys": []})
    ops(loop, srv, "POST", "/__reset")
    assert sync(monkeypatch, srv, store, "2026-11-22") == 0
    night3 = latest(store)
    assert night3 != night2
    healed = records(night3)
    for item in failing:
        assert "stale" not in healed[item]["_harvest"]
        assert healed[item]["_harvest"]["fetched_at"].startswith("2026-11-22")
    assert new in healed
    m3 = manifest(night3)
    assert m3["catalogs"][cat]["sync"]["retried_stale"] == 3
    assert m3["stale"] == {"items": 0, "catalogs": []}
    assert ops(loop, srv, "GET", "/__stats")["detail_requests"] >= 3


@pytest.mark.parametrize("kind", ["503", "reset"])
def test_detail_failing_after_retries_is_carried_stale(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, start: Any, tmp_path: Path,
        kind: str) -> None:
    """5xx or a dropped connection on every detail, after its retries: nothing is lost."""
    srv = start()
    store = tmp_path / "store"
    assert sync(monkeypatch, srv, store, "2026-11-20") == 0
    before = records(latest(store))
    ops(loop, srv, "POST", "/__config", {"fault_rate": 1.0, "fault_kinds": [kind],
                                         "fault_scope": "details"})
    assert sync(monkeypatch, srv, store, "2026-11-21", "--max-age", "1s") == 3
    night2 = newest(store)
    assert latest(store) == night2
    after = records(night2)
    assert after.keys() == before.keys()
    detailed = {i for i in before if i[1] in DETAIL_TYPES}
    assert_carried_stale(before, after, detailed)
    assert deletes(night2) == set()
    assert es_bulk_deletes(night2, tmp_path) == 0
    assert manifest(night2)["stale"]["items"] == len(detailed)


def test_not_found_detail_of_a_listed_item_is_carried_stale(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, start: Any, tmp_path: Path) -> None:
    """Listed but its detail 404s after the retry passes: listed means not gone."""
    srv = start()
    store = tmp_path / "store"
    assert sync(monkeypatch, srv, store, "2026-11-20") == 0
    before = records(latest(store))
    ops(loop, srv, "POST", "/__config", {"detail_404_rate": 0.3,
                                         "detail_404_mode": "permanent"})
    assert sync(monkeypatch, srv, store, "2026-11-21", "--max-age", "1s") == 3
    night2 = newest(store)
    assert latest(store) == night2
    missing = {(e["catalog_uuid"], e["content_type"], e["key"]) for e in errors(night2)
               if e["kind"] == "not_found"}
    assert missing
    after = records(night2)
    assert after.keys() == before.keys()
    assert_carried_stale(before, after, missing)
    assert deletes(night2) == set()


# --- a failed catalog --------------------------------------------------------------------

def test_forbidden_catalog_is_carried_forward_stale_and_retried(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, start: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    srv = start()
    store = tmp_path / "store"
    assert sync(monkeypatch, srv, store, "2026-11-20") == 0
    night1 = latest(store)
    before = records(night1)
    bad = srv.catalog_uuids[1]
    ops(loop, srv, "POST", "/__config", {"forbid_catalogs": ["1"]})
    capsys.readouterr()
    assert sync(monkeypatch, srv, store, "2026-11-21", quiet=False) == 3
    said = capsys.readouterr().out
    assert "kept stale from the previous snapshot" in said and bad[:8] in said
    assert "latest -> " in said
    night2 = newest(store)
    assert latest(store) == night2
    after = records(night2)
    assert after.keys() == before.keys()
    assert_carried_stale(before, after, {i for i in before if i[0] == bad})
    assert not any(i[0] == bad for i in deletes(night2))
    assert not any(op == "upsert" and c == bad for op, c, *_ in feed(night2))
    m = manifest(night2)
    assert m["status"] == "partial"
    assert m["catalogs"][bad]["status"] == "failed"
    assert m["catalogs"][bad]["sync"]["carried_forward"] is True
    assert m["stale"]["catalogs"] == [bad]
    assert [e["kind"] for e in errors(night2)] == ["catalog_failed"]

    ops(loop, srv, "POST", "/__config", {"forbid_catalogs": []})
    assert sync(monkeypatch, srv, store, "2026-11-22") == 0
    night3 = latest(store)
    assert night3 != night2
    healed = records(night3)
    assert healed.keys() == before.keys()
    assert not any(r["_harvest"].get("stale") for r in healed.values())
    assert manifest(night3)["stale"] == {"items": 0, "catalogs": []}


# --- a catalog that goes away ------------------------------------------------------------

def test_catalog_gone_from_a_complete_list_deletes_all_its_items(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, start: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    srv = start(drop_catalog_at_epoch=("1:1",))
    store = tmp_path / "store"
    assert sync(monkeypatch, srv, store, "2026-11-20") == 0
    night1 = latest(store)
    gone_cat = srv.catalog_uuids[1]
    doomed = {i for i in records(night1) if i[0] == gone_cat}
    ops(loop, srv, "POST", "/__epoch", {"epoch": 1})
    truth = {(c["catalog_uuid"], c["content_type"], c["key"])
             for c in ops(loop, srv, "GET", "/__changes?from=0&to=1") if c["op"] == "delete"}
    assert truth == doomed  # the simulator agrees: the whole catalog is deleted
    capsys.readouterr()
    assert sync(monkeypatch, srv, store, "2026-11-21", quiet=False) == 0
    said = capsys.readouterr().out
    assert f"gone from the catalog list (all items deleted): {gone_cat[:8]}" in said
    assert f"deletes {len(doomed)}" in said
    night2 = latest(store)
    assert night2 != night1
    assert deletes(night2) == doomed
    assert es_bulk_deletes(night2, tmp_path) == len(doomed)
    assert not any(i[0] == gone_cat for i in records(night2))
    gone_entry = manifest(night2)["gone_catalogs"]
    assert set(gone_entry) == {gone_cat} and gone_entry[gone_cat]["deletes"] == len(doomed)
    assert gone_entry[gone_cat]["feed"]["lines"] == len(doomed)  # measured, for verify
    # Deleted once: the next night has nothing left to delete.
    assert sync(monkeypatch, srv, store, "2026-11-22") == 0
    assert deletes(latest(store)) == set()


def test_only_catalogs_in_scope_can_be_gone(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, start: Any, tmp_path: Path) -> None:
    """--catalog and --shard narrow what a night can call gone."""
    srv = start(catalogs=3, drop_catalog_at_epoch=("1:1",))
    narrow, named = tmp_path / "narrow", tmp_path / "named"
    for store in (narrow, named):
        assert sync(monkeypatch, srv, store, "2026-11-20") == 0
    gone_cat = srv.catalog_uuids[1]
    doomed = {i for i in records(latest(named)) if i[0] == gone_cat}
    ops(loop, srv, "POST", "/__epoch", {"epoch": 1})
    # Another catalog only: catalog 1 is outside the filter, so it is not gone.
    assert sync(monkeypatch, srv, narrow, "2026-11-21", "--catalog", srv.catalog_uuids[0]) == 0
    assert deletes(latest(narrow)) == set()
    # Named by --catalog and gone from the complete list: deleted, not tried and failed.
    ops(loop, srv, "POST", "/__reset")
    assert sync(monkeypatch, srv, named, "2026-11-21", "--catalog", gone_cat,
                "--catalog", srv.catalog_uuids[2]) == 0
    assert deletes(latest(named)) == doomed
    assert ops(loop, srv, "GET", "/__stats")["requests"].get("content", {}).get("404", 0) == 0


def test_only_the_shard_that_owns_a_catalog_deletes_it(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, start: Any, tmp_path: Path) -> None:
    srv = start(catalogs=3, drop_catalog_at_epoch=("1:1",))
    gone_cat = srv.catalog_uuids[1]
    mine = next(i for i in (0, 1) if HarvestOptions(shard=f"{i}/2").in_shard(gone_cat))
    stores = {i: tmp_path / f"shard{i}" for i in (0, 1)}
    doomed: set[Item] = set()
    for i, store in stores.items():
        assert sync(monkeypatch, srv, store, "2026-11-20", "--shard", f"{i}/2") == 0
        doomed |= {x for x in records(latest(store)) if x[0] == gone_cat}
    assert doomed
    ops(loop, srv, "POST", "/__epoch", {"epoch": 1})
    for i, store in stores.items():
        assert sync(monkeypatch, srv, store, "2026-11-21", "--shard", f"{i}/2") == 0
        assert deletes(latest(store)) == (doomed if i == mine else set())


# --- a listing-only previous snapshot ----------------------------------------------------

def test_sync_after_a_no_details_snapshot_fetches_every_detail(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, start: Any, tmp_path: Path) -> None:
    srv = start()
    store = tmp_path / "store"
    assert sync(monkeypatch, srv, store, "2026-11-20", "--no-details") == 0
    listed = records(latest(store))
    detailed = {i for i in listed if i[1] in DETAIL_TYPES}
    assert all(r["_harvest"]["source"] == "listing" for r in listed.values())
    ops(loop, srv, "POST", "/__reset")
    assert sync(monkeypatch, srv, store, "2026-11-20T12:00:00") == 0
    night2 = latest(store)
    assert ops(loop, srv, "GET", "/__stats")["detail_requests"] == len(detailed)
    got = records(night2)
    assert {i for i, r in got.items() if r["_harvest"]["source"] == "detail"} == detailed
    assert sum(c["sync"].get("carried", 0) for c in manifest(night2)["catalogs"].values()) == 0


def test_an_incomplete_catalog_list_calls_no_catalog_gone(tmp_path: Path) -> None:
    """A list shorter than its count cannot say a catalog is gone (narrow: no server)."""
    from harvester.config import load_settings
    from harvester.delta import SnapshotIndex, SyncOptions
    from harvester.models import Catalog
    from harvester.pipeline.syncing import SyncDecider

    prev = tmp_path / "prev"
    prev.mkdir()
    lines = tmp_path / "lines.ndjson"
    index = SnapshotIndex(prev / "index.sqlite")
    for cat in ("a", "b"):
        lines.write_bytes(orjson.dumps({"key": "X+Y", "_harvest": {
            "catalog_uuid": cat, "content_type": "course", "key": "X+Y",
            "source": "detail"}}) + b"\n")
        index.rebuild(cat, None, [lines], compressed=False)
    index.close()
    settings, _ = load_settings(cli={"api.client_id": "i", "api.client_secret": "s",
                                     "output.out": str(tmp_path / "out")},
                                environ={}, config_file=None)
    (tmp_path / "out").mkdir()
    decider = SyncDecider(settings, SyncOptions(prev), tmp_path / "out")
    try:
        listed = {"a": Catalog("a", "", {"uuid": "a"})}
        assert decider.gone(listed, complete=True) == ["b"]
        assert decider.gone(listed, complete=False) == []
    finally:
        decider.close()


def test_items_kept_stale_are_retried_first(tmp_path: Path) -> None:
    """Narrow: the details phase hands out last night's stale items before the rest."""
    from harvester.config import load_settings
    from harvester.delta import SnapshotIndex, SyncOptions
    from harvester.models import key_digest
    from harvester.pipeline.syncing import SyncDecider

    keys = [f"Org+C{i}" for i in range(6)]
    prev = tmp_path / "prev"
    prev.mkdir()
    lines = tmp_path / "lines.ndjson"
    lines.write_bytes(b"".join(orjson.dumps({"key": k, "_harvest": {
        "catalog_uuid": "a", "content_type": "course", "key": k, "source": "detail",
        **({"stale": True} if k in ("Org+C4", "Org+C2") else {})}}) + b"\n" for k in keys))
    index = SnapshotIndex(prev / "index.sqlite")
    index.rebuild("a", None, [lines], compressed=False)
    index.close()
    spool = tmp_path / "spool.ndjson"
    spool.write_bytes(b"".join(orjson.dumps({"d": key_digest("course", k), "t": "course",
                                             "k": k, "r": {"key": k}}) + b"\n" for k in keys))
    settings, _ = load_settings(cli={"api.client_id": "i", "api.client_secret": "s",
                                     "output.out": str(tmp_path / "out")},
                                environ={}, config_file=None)
    (tmp_path / "out").mkdir()
    decider = SyncDecider(settings, SyncOptions(prev), tmp_path / "out")
    try:
        order = [e.key for e in decider.order("a", spool)]
    finally:
        decider.close()
    assert order == ["Org+C2", "Org+C4", "Org+C0", "Org+C1", "Org+C3", "Org+C5"]
