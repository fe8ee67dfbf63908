"""The run lifecycle under failure: reruns, resume and ``errors.ndjson`` (issues 10, 11).

The contract: ``complete`` means complete; anything that failed keeps the run ``partial``
(exit 3) on every rerun until it succeeds; a rerun retries what failed; ``errors.ndjson``
always describes the output next to it (no line for work that succeeded, none lost or
duplicated for work that still fails); a run never adopts files it did not write.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from yarl import URL

from harvester import cli
from harvester.client import detail_path
from harvester.delta import SyncOptions
from harvester.messages import ERRORS_KEY, Write
from harvester.models import key_digest
from harvester.outputs import catalog_dirname
from harvester.pipeline import Harvest
from harvester.sim import SimConfig, SimServer
from harvester.state import Ledger
from harvester.writer import Writer
from tests.conftest import SimStarter, settings_for
from tests.integration.helpers import (
    LoopbackProxy,
    LoopThread,
    assert_exactly_once,
    harvested,
    read_lines,
    truth,
)
from tests.integration.test_resume import spawn, wait_for

#: Plenty of failures, none of them permanent: every request has a 1 in 4 chance to fail
#: after its two tries (a 500 or 503 each time).
FLAKY: dict[str, Any] = {"fault_rate": 0.5, "fault_kinds": ("500", "503")}


async def post_config(srv: SimServer, **knobs: Any) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{srv.base_url}/__config",
                                                    json=knobs) as resp:
        assert resp.status == 200, await resp.text()


def errors(out: Path) -> list[dict[str, Any]]:
    return read_lines(out / "errors.ndjson")


def manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((out / "manifest.json").read_bytes())
    return data


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def written(out: Path) -> dict[str, list[tuple[str, str]]]:
    """Every item line under OUT per catalog (duplicates kept; change feeds are not items)."""
    got: dict[str, list[tuple[str, str]]] = {}
    for f in out.glob("catalog=*/*.ndjson*"):
        if f.name.endswith((".ndjson", ".ndjson.gz")) and f.name != "changes.ndjson":
            for rec in read_lines(f):
                h = rec["_harvest"]
                got.setdefault(h["catalog_uuid"], []).append((h["content_type"], h["key"]))
    return got


def assert_errors_describe_output(out: Path) -> None:
    """errors.ndjson, the manifest and the files next to them tell one story."""
    m = manifest(out)
    lines = errors(out)
    info = m["files"]["errors.ndjson"]
    assert info["lines"] == len(lines) == m["totals"]["errors"]
    assert info["sha256"] == sha256(out / "errors.ndjson")
    ident = Counter((e["catalog_uuid"], e["kind"], e.get("content_type"), e.get("key"),
                     e.get("page")) for e in lines if e["kind"] != "no_key")
    assert not [k for k, n in ident.items() if n > 1], f"duplicate error lines: {ident}"
    items = {cat: set(keys) for cat, keys in written(out).items()}
    for e in lines:
        if e["kind"] in ("detail_failed", "not_found") and not e.get("stale"):
            assert (e["content_type"], e["key"]) not in items.get(e["catalog_uuid"], set()), \
                f"an error line for an item that is in the output: {e}"
    for cat, entry in m["catalogs"].items():
        failed = [e for e in lines if e["catalog_uuid"] == cat and e["kind"] == "catalog_failed"]
        assert (entry["status"] == "failed") == bool(failed), (cat, entry["status"], failed)
        assert entry["failed"] == sum(e["catalog_uuid"] == cat and e["kind"] == "detail_failed"
                                      for e in lines)
        assert entry["not_found"] == sum(e["catalog_uuid"] == cat and e["kind"] == "not_found"
                                         for e in lines)
        for name, f in entry["files"].items():
            assert f["sha256"] == sha256(out / entry["dir"] / name), name
    assert (m["status"] == "partial") == bool(lines or any(
        c["status"] != "done" or c["gaps"] for c in m["catalogs"].values()))


# --- #10.1: a failed catalog is never committed as done ------------------------------------

async def test_failed_catalog_stays_partial_on_every_rerun_until_healed(
        start_sim: SimStarter, tmp_path: Path) -> None:
    srv = await start_sim(catalogs=2, items=40, forbid_catalogs=("1",))
    bad = srv.catalog_uuids[1]
    out = tmp_path / "out"
    first = await Harvest(settings_for(srv, out)).run()
    assert (first.exit_code, first.status) == (3, "partial")
    assert [(e["catalog_uuid"], e["kind"]) for e in errors(out)] == [(bad, "catalog_failed")]
    for _ in range(2):
        forbidden = srv.state.stats.requests["content"]["403"]
        again = await Harvest(settings_for(srv, out)).run()
        assert (again.exit_code, again.status) == (3, "partial")
        assert srv.state.stats.requests["content"]["403"] > forbidden, "not retried"
        assert manifest(out)["catalogs"][bad]["status"] == "failed"
        assert [(e["catalog_uuid"], e["kind"]) for e in errors(out)] == \
            [(bad, "catalog_failed")]
        assert_errors_describe_output(out)
    await post_config(srv, forbid_catalogs=[])
    healed = await Harvest(settings_for(srv, out)).run()
    assert (healed.exit_code, healed.status) == (0, "complete")
    assert_exactly_once(out, await truth(srv))
    assert errors(out) == []
    assert_errors_describe_output(out)
    # And complete now means done: the next rerun asks nothing.
    requests = srv.state.stats.snapshot()["requests"]
    assert (await Harvest(settings_for(srv, out)).run()).exit_code == 0
    assert srv.state.stats.snapshot()["requests"] == requests


async def test_rerun_of_a_partial_run_retries_failed_pages_and_details(
        start_sim: SimStarter, tmp_path: Path) -> None:
    srv = await start_sim(catalogs=2, items=120, seed=5, **FLAKY)
    out = tmp_path / "out"
    settings = settings_for(srv, out, **{"retry.max_tries": 2, "harvest.page_size": 10,
                                         "harvest.max_rewalks": 0})
    first = await Harvest(settings).run()
    assert (first.exit_code, first.status) == (3, "partial")
    kinds = {e["kind"] for e in errors(out)}
    assert {"detail_failed", "page_failed", "gap"} <= kinds, kinds
    assert_errors_describe_output(out)
    # Still failing: partial again, and errors.ndjson is about this output, no older one.
    again = await Harvest(settings).run()
    assert (again.exit_code, again.status) == (3, "partial")
    assert_errors_describe_output(out)
    await post_config(srv, fault_rate=0.0)
    healed = await Harvest(settings).run()
    assert (healed.exit_code, healed.status) == (0, "complete")
    assert_exactly_once(out, await truth(srv))
    assert errors(out) == []
    assert_errors_describe_output(out)


@pytest.mark.parametrize("gzip", [False, True])
async def test_rerun_retries_details_that_were_not_found(start_sim: SimStarter,
                                                         tmp_path: Path, gzip: bool) -> None:
    srv = await start_sim(catalogs=1, items=60, detail_404_rate=0.2,
                          detail_404_mode="permanent")
    out = tmp_path / "out"
    settings = settings_for(srv, out, **{"harvest.detail_404_retries": 0,
                                         "output.gzip": gzip})
    first = await Harvest(settings).run()
    assert first.exit_code == 3
    missing = sorted((e["content_type"], e["key"]) for e in errors(out))
    assert missing and {e["kind"] for e in errors(out)} == {"not_found"}
    assert_errors_describe_output(out)
    # A kill -9 after errors.ndjson was committed and before the manifest was written:
    # the rerun neither loses nor duplicates those lines.
    (out / "manifest.json").unlink()
    ledger = Ledger(out)
    ledger.set_meta(status="running")
    ledger.close()
    again = await Harvest(settings).run()
    assert again.exit_code == 3
    assert sorted((e["content_type"], e["key"]) for e in errors(out)) == missing
    assert_errors_describe_output(out)
    await post_config(srv, detail_404_rate=0.0)
    healed = await Harvest(settings).run()
    assert (healed.exit_code, healed.status) == (0, "complete")
    assert_exactly_once(out, await truth(srv))
    assert errors(out) == []


# --- #10.4: a failing catalog never crashes the run ---------------------------------------

@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def sim_on(loop: LoopThread, **cfg: Any) -> SimServer:
    srv = SimServer(SimConfig(**{"rate_lms": "0", "rate_learners": "0", **cfg}), port=0)
    loop.run(srv.start())
    return srv


def harvest_cli(monkeypatch: pytest.MonkeyPatch, srv: SimServer, out: Path,
                *extra: str) -> int:
    monkeypatch.setenv("EDX_CLIENT_ID", srv.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", srv.client_secret)
    cfg = out.parent / "fast.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
    return cli.main(["harvest", "--out", str(out), "--api-base", srv.base_url,
                     "--rate-lms", "2000/s", "--progress", "off", "--quiet",
                     "--config", str(cfg), *extra])


@pytest.mark.parametrize("catalogs", [1, 2])
def test_failing_last_catalog_ends_partial_with_a_manifest(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        loop: LoopThread, tmp_path: Path, catalogs: int) -> None:
    srv = sim_on(loop, catalogs=catalogs, items=30, forbid_catalogs=(str(catalogs - 1),))
    bad = srv.catalog_uuids[-1]
    out = tmp_path / "out"
    try:
        for _ in range(2):  # the rerun ends the same way
            assert harvest_cli(monkeypatch, srv, out) == 3, capsys.readouterr().err
            assert "Traceback" not in capsys.readouterr().err
            m = manifest(out)
            assert m["status"] == "partial"
            assert m["catalogs"][bad]["status"] == "failed"
            assert [(e["catalog_uuid"], e["kind"], e["status"]) for e in errors(out)] == \
                [(bad, "catalog_failed", 403)]
            assert_errors_describe_output(out)
            assert Ledger(out).files().get("errors.ndjson.part") is None
    finally:
        loop.run(srv.close())


def test_commit_errors_checkpoints_its_pending_lines(tmp_path: Path) -> None:
    """The last error line may still be pending when errors.ndjson is committed."""
    ledger = Ledger(tmp_path)
    writer = Writer(tmp_path, ledger)
    writer.apply(Write(ERRORS_KEY, b'{"kind": "catalog_failed"}\n'))
    info = writer.commit_errors()
    writer.close()  # a final checkpoint must not look for the committed part
    assert info.lines == 1
    assert (tmp_path / "errors.ndjson").read_bytes() == b'{"kind": "catalog_failed"}\n'
    assert ledger.files() == {}
    ledger.close()


# --- #11.5: a resume after an interruption retries and forgets what then succeeded --------

async def test_resume_retries_failed_details_and_drops_their_errors(
        start_sim: SimStarter, tmp_path: Path) -> None:
    srv = await start_sim(catalogs=1, items=200, seed=3)
    out = tmp_path / "out"
    settings = settings_for(srv, out, **{"retry.max_tries": 2, "rates.lms": "300/s"})
    harvest = Harvest(settings)
    task = asyncio.create_task(harvest.run())
    # Faults start once the listing is done, so every failure is a detail's.
    while not harvest.catalogs or harvest.catalogs[0].phase != "details":
        assert not task.done()
        await asyncio.sleep(0)
    await post_config(srv, **FLAKY)
    while harvest.catalogs[0].failed < 3:
        assert not task.done(), "the details ended before the interruption"
        await asyncio.sleep(0)
    task.cancel()  # what SIGINT does
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (out / "manifest.json").exists()
    # Resumed while details still fail: each failure is reported once, for this output.
    still = await Harvest(settings).run()
    assert (still.exit_code, still.status) == (3, "partial")
    assert {e["kind"] for e in errors(out)} == {"detail_failed"}
    assert_errors_describe_output(out)
    await post_config(srv, fault_rate=0.0)
    resumed = await Harvest(settings_for(srv, out)).run()
    assert (resumed.exit_code, resumed.status) == (0, "complete")
    assert_exactly_once(out, await truth(srv))
    assert errors(out) == []
    assert_errors_describe_output(out)


async def test_resumed_sync_counts_the_whole_run(start_sim: SimStarter,
                                                 tmp_path: Path) -> None:
    """The sync block counts what the snapshot holds, not what the last session saw."""
    srv = await start_sim(catalogs=1, items=120, seed=8)
    out = tmp_path / "snap"
    out.mkdir()
    sync = SyncOptions(None, now=1_700_000_000.0)
    harvest = Harvest(settings_for(srv, out, **{"rates.lms": "300/s"}), sync=sync)
    task = asyncio.create_task(harvest.run())
    while srv.state.stats.detail_requests < 30:
        assert not task.done(), "the details ended before the interruption"
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    result = await Harvest(settings_for(srv, out), sync=sync).run()
    assert result.exit_code == 0
    (entry,) = manifest(out)["catalogs"].values()
    fetched = entry["details_fetched"]
    assert fetched == sum(1 for k in (await truth(srv))[srv.catalog_uuids[0]]
                          if k[0] != "learnerpathway")
    assert entry["sync"]["fetched_new"] == fetched
    assert entry["sync"]["carried"] == entry["sync"]["refreshed"] == 0


async def test_resumed_sync_keeps_a_carried_failed_catalog_once(
        start_sim: SimStarter, tmp_path: Path) -> None:
    """A sync's failed catalog carried forward (stale) is listed again by a resume; still
    failing, it is carried again: never turned into 'done', its records never twice."""
    srv = await start_sim(catalogs=2, items=150, seed=9)
    night1, night2 = tmp_path / "n1", tmp_path / "n2"
    night1.mkdir()
    night2.mkdir()
    first = await Harvest(settings_for(srv, night1),
                          sync=SyncOptions(None, now=1_700_000_000.0)).run()
    assert first.exit_code == 0
    await post_config(srv, forbid_catalogs=["1"])
    bad = srv.catalog_uuids[1]
    # max_age 0: every item of catalog 0 is revalidated, so it is still busy below.
    sync = SyncOptions(night1, max_age=0.0, now=1_700_086_400.0)
    harvest = Harvest(settings_for(srv, night2, **{"rates.lms": "200/s"}), sync=sync)
    task = asyncio.create_task(harvest.run())
    while not [c for c in harvest.catalogs if c.uuid == bad and "carried_forward" in c.sync]:
        assert not task.done(), "the run ended before the interruption"
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    resumed = await Harvest(settings_for(srv, night2), sync=sync).run()
    assert resumed.exit_code == 3
    entry = manifest(night2)["catalogs"][bad]
    assert entry["status"] == "failed" and entry["sync"]["carried_forward"]
    kept = written(night2)[bad]
    assert len(kept) == len(set(kept)) == len(written(night1)[bad])
    assert [(e["catalog_uuid"], e["kind"]) for e in errors(night2)] == [(bad, "catalog_failed")]
    assert_errors_describe_output(night2)


# --- #10.10: a run never adopts files it did not write ------------------------------------

def test_a_run_without_a_ledger_refuses_leftovers_and_restart_clears_only_ours(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        loop: LoopThread, tmp_path: Path) -> None:
    srv = sim_on(loop, catalogs=1, items=30)
    try:
        cat = srv.catalog_uuids[0]
        out = tmp_path / "out"
        planted = out / f"catalog={cat}" / "courses.ndjson.part"
        planted.parent.mkdir(parents=True)
        fake = {"key": "planted+X", "content_type": "course",
                "_harvest": {"catalog_uuid": cat, "content_type": "course",
                             "key": "planted+X", "source": "detail"}}
        planted.write_bytes(orjson.dumps(fake) + b"\n")
        assert harvest_cli(monkeypatch, srv, out) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--restart" in err[0] and str(out) in err[0], err
        assert planted.read_bytes() == orjson.dumps(fake) + b"\n"  # untouched
        # --restart starts clean, and removes nothing it did not create.
        (out / "notes.txt").write_text("mine")
        keep = tmp_path / "keep"
        keep.mkdir()
        (keep / "precious.ndjson.part").write_text("mine")
        (out / ".state").mkdir(exist_ok=True)
        (out / ".state" / "spool").symlink_to(keep)
        # A link where the harvester keeps its own files is refused, never followed.
        assert harvest_cli(monkeypatch, srv, out, "--restart") == 2
        assert "link" in capsys.readouterr().err
        assert (keep / "precious.ndjson.part").read_text() == "mine"
        (out / ".state" / "spool").unlink()
        assert harvest_cli(monkeypatch, srv, out, "--restart") == 0, capsys.readouterr().err
        assert (out / "notes.txt").read_text() == "mine"
        assert (keep / "precious.ndjson.part").read_text() == "mine"
        assert ("course", "planted+X") not in harvested(out)[cat]
        expected = loop.run(truth(srv))
        assert_exactly_once(out, expected)
        # Deleting .state after a complete run: the next run does not adopt that output.
        shutil.rmtree(out / ".state")
        before = {p: sha256(p) for p in out.rglob("*") if p.is_file()}
        assert harvest_cli(monkeypatch, srv, out) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--restart" in err[0], err
        assert {p: sha256(p) for p in out.rglob("*")
                if p.is_file() and ".state" not in p.parts} == before
        assert harvest_cli(monkeypatch, srv, out, "--restart") == 0
        assert_exactly_once(out, expected)
        assert not [p for p in out.rglob("*.part") if ".state" not in p.parts]
        assert os.listdir(out / ".state")  # the new run's own ledger
    finally:
        loop.run(srv.close())


async def test_a_stale_spool_without_a_ledger_is_not_adopted(start_sim: SimStarter,
                                                              tmp_path: Path) -> None:
    srv = await start_sim(catalogs=1, items=30)
    cat = srv.catalog_uuids[0]
    out = tmp_path / "out"
    spool = out / ".state" / "spool" / f"{catalog_dirname(cat)}.ndjson.part"
    spool.parent.mkdir(parents=True)
    rec = {"uuid": "9d1f0c1e-0000-4000-8000-000000000001", "content_type": "learnerpathway"}
    spool.write_bytes(orjson.dumps({"d": key_digest("learnerpathway", rec["uuid"]),
                                    "t": "learnerpathway", "k": rec["uuid"], "r": rec}) + b"\n")
    result = await Harvest(settings_for(srv, out)).run()
    assert result.exit_code == 0
    assert_exactly_once(out, await truth(srv))


def test_unknown_content_types_share_other_ndjson_without_losing_lines(
        tmp_path: Path) -> None:
    """Every type the API invents later goes to other.ndjson: one file, every line."""
    ledger = Ledger(tmp_path)
    writer = Writer(tmp_path, ledger)
    cat = "2f8a8f1e-0a4c-4a7e-9f55-0d9f7f1f3a10"
    for n, ctype in enumerate(("video", "podcast", "video")):
        writer.apply(Write(("out", cat, ctype), orjson.dumps({"n": n}) + b"\n"))
    infos = writer.commit_catalog(cat)
    writer.close()
    assert infos["other.ndjson"].lines == 3
    assert [r["n"] for r in read_lines(tmp_path / f"catalog={cat}" / "other.ndjson")] == \
        [0, 1, 2]
    ledger.close()


class CountingProxy(LoopbackProxy):
    """Forwards to the simulator and counts the requests per path."""

    def __init__(self, srv: SimServer) -> None:
        super().__init__()
        self.srv = srv
        self.hits: Counter[str] = Counter()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.hits[request.path] += 1
        headers = {k: request.headers[k] for k in ("Authorization", "Accept", "Content-Type")
                   if k in request.headers}
        url = URL(self.srv.base_url + request.raw_path, encoded=True)
        async with self._session.request(request.method, url, data=await request.read() or None,
                                         headers=headers, allow_redirects=False) as up:
            raw, status = await up.read(), up.status
            kept = {k: up.headers[k] for k in ("Content-Type", "Retry-After", "ETag")
                    if k in up.headers}
        return web.Response(status=status, body=raw, headers=kept)


def on_disk(out: Path) -> set[str]:
    """The detail paths of every whole item line under OUT (a torn last line is not one)."""
    paths: set[str] = set()
    for f in out.glob("catalog=*/*.ndjson*"):
        for line in f.read_bytes().splitlines():
            try:
                h = orjson.loads(line)["_harvest"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            if (path := detail_path(h["catalog_uuid"], h["content_type"], h["key"])):
                paths.add(path)
    return paths


async def test_kill_9_during_a_rerun_of_a_partial_run_loses_nothing(
        start_sim: SimStarter, tmp_path: Path) -> None:
    """The rerun reopens committed files; a SIGKILL at any point of it is resumed exactly,
    and nothing already on disk when a run is killed is ever fetched again."""
    srv = await start_sim(catalogs=2, items=150, detail_404_rate=0.3,
                          detail_404_mode="permanent", latency_ms=1)
    out = tmp_path / "out"
    proxy = CountingProxy(srv)  # the API base is part of a run's settings: every run uses it
    await proxy.start()
    try:
        first = await Harvest(settings_for(srv, out, **{"api.base": proxy.base_url,
                                                        "harvest.detail_404_retries": 0})).run()
        assert first.exit_code == 3
        failed = len(errors(out))
        await post_config(srv, detail_404_rate=0.0)
        stats = srv.state.stats
        kept: list[tuple[set[str], Counter[str]]] = []
        for more in (3, 12, 25):
            target = stats.detail_requests + more
            proc = await spawn(srv, out, tmp_path, "--api-base", proxy.base_url)
            await wait_for(lambda t=target: stats.detail_requests >= t, proc)  # type: ignore[misc]
            proc.kill()
            await proc.communicate()
            kept.append((on_disk(out), proxy.hits.copy()))
        healed = await Harvest(settings_for(srv, out, **{"api.base": proxy.base_url})).run()
    finally:
        await proxy.close()
    assert (healed.exit_code, healed.status) == (0, "complete")
    assert_exactly_once(out, await truth(srv))
    assert errors(out) == []
    assert_errors_describe_output(out)
    # Only what failed is fetched again (at least once each), never what was on disk.
    assert len({path for path in on_disk(out) if proxy.hits[path]}) >= failed
    for written, hits_then in kept:
        again = {path for path in written if proxy.hits[path] != hits_then[path]}
        assert not again, f"{len(again)} items on disk at a kill were fetched again"
