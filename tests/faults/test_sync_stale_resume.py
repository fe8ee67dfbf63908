"""A sync night killed after it kept failed details stale, then resumed.

The contract: anything that failed makes the run partial, and a rerun retries it. A
listed item whose detail failed keeps its previous record in tonight's snapshot, marked
stale; that line stands in for failed work, so a resume of the unfinished night (a rerun)
fetches the item again: when it now succeeds the night is ``complete`` with each item
exactly once, no stale record, and exactly the simulator's changes in the feed; when it
still fails, its record is kept stale again, exactly once, with one error line.

The kill comes at a fixed point (the run task is cancelled there, which leaves the ledger
and files as a ``kill -9`` does), never after a timed sleep.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from harvester.delta import SyncOptions
from harvester.pipeline import Harvest
from harvester.run import CatalogState, Phase
from harvester.sim import SimServer
from harvester.writer import Writer
from tests.conftest import SimStarter, settings_for
from tests.faults.test_lifecycle import (
    assert_errors_describe_output,
    errors,
    manifest,
    post_config,
    written,
)
from tests.faults.test_sync_kill import NIGHT1, NIGHT2, feed, hold_at, post, stale_lines
from tests.integration.helpers import fetch_json, truth


async def night_with_stale(start_sim: SimStarter, tmp_path: Path, where: str, *,
                           gz: bool) -> tuple[SimServer, Path, SyncOptions,
                                              list[tuple[str, str]]]:
    """Night 1 complete; night 2 (every record due) with four of catalog 0's items
    forbidden, killed at ``where``. Returns the failing items."""
    srv = await start_sim(catalogs=2, items=150, seed=7)
    night1, night2 = tmp_path / "n1", tmp_path / "n2"
    night1.mkdir()
    night2.mkdir()
    first = await Harvest(settings_for(srv, night1, **{"output.gzip": gz}),
                          sync=SyncOptions(None, now=NIGHT1)).run()
    assert first.exit_code == 0
    await post(srv, "/__epoch", {"epoch": 1})
    cat = srv.catalog_uuids[0]
    listed = (await truth(srv))[cat]
    failing = sorted(k for k in written(night1)[cat] if k in listed)[:4]
    await post_config(srv, detail_403_keys=[k for _, k in failing])
    sync = SyncOptions(night1, max_age=1.0, now=NIGHT2)  # every record due: fetched
    harvest = Harvest(settings_for(srv, night2, **{"output.gzip": gz}), sync=sync)
    held = (hold_at(harvest, cat, "before_commit") if where == "own_commit"
            else hold_after_done(harvest, cat))
    task = asyncio.create_task(harvest.run())
    waiter = asyncio.create_task(held.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    assert held.is_set(), "the night ended before the kill point"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert Counter(stale_anywhere(night2)) == Counter(failing)  # the kill came after them
    return srv, night2, sync, failing


def hold_after_done(harvest: Harvest, catalog: str) -> asyncio.Event:
    """Make ``harvest`` stop for good once ``catalog`` is committed and recorded done."""
    emit, held = harvest._emit, asyncio.Event()
    orig = emit.advance

    async def advance(cs: CatalogState, to: Phase) -> None:
        await orig(cs, to)
        if cs.uuid == catalog and to == Phase.DONE:
            await emit.barrier()
            held.set()
            await asyncio.Event().wait()  # until cancelled: the kill
    emit.advance = advance
    return held


def stale_anywhere(snap: Path) -> list[tuple[str, str]]:
    """The stale item lines in committed and ``.part`` item files."""
    found = []
    for f in snap.glob("catalog=*/*.ndjson*"):
        if not f.name.startswith("changes."):
            raw = f.read_bytes()
            if ".gz" in f.name:  # members, the last maybe unfinished (sync-flushed)
                parts = []
                while raw:
                    z = zlib.decompressobj(wbits=31)
                    parts.append(z.decompress(raw))
                    raw = z.unused_data
                raw = b"".join(parts)
            for line in raw.splitlines(keepends=True):
                h = orjson.loads(line)["_harvest"] if line.endswith(b"\n") else {}
                if h.get("stale"):
                    found.append((h["content_type"], h["key"]))
    return found


async def resume(srv: SimServer, night2: Path, sync: SyncOptions, *, gz: bool) -> Any:
    return await Harvest(settings_for(srv, night2, **{"output.gzip": gz}), sync=sync).run()


async def assert_each_listed_once(srv: SimServer, night2: Path) -> None:
    got = written(night2)
    for cat, keys in (await truth(srv)).items():
        assert Counter(got[cat]) == Counter(keys), f"catalog {cat[:8]}: not exactly its listing"


@pytest.mark.parametrize(("where", "gz"), [("own_commit", False), ("done", False),
                                           ("own_commit", True), ("done", True)])
async def test_a_stale_detail_that_heals_on_resume_is_fetched_again(
        start_sim: SimStarter, tmp_path: Path, where: str, gz: bool) -> None:
    srv, night2, sync, _ = await night_with_stale(start_sim, tmp_path, where, gz=gz)
    await post_config(srv, detail_403_keys=[])
    resumed = await resume(srv, night2, sync, gz=gz)
    assert (resumed.status, resumed.exit_code) == ("complete", 0)
    assert stale_lines(night2) == []
    await assert_each_listed_once(srv, night2)
    expected = {(c["op"], c["catalog_uuid"], c["content_type"], c["key"])
                for c in await fetch_json(srv, "/__changes?from=0&to=1")}
    assert feed(night2) == expected  # every delete and upsert, none invented
    assert manifest(night2)["stale"] == {"items": 0, "catalogs": []}
    assert errors(night2) == []
    assert_errors_describe_output(night2)


@pytest.mark.parametrize(("where", "gz"), [("own_commit", False), ("done", True)])
async def test_a_stale_detail_still_failing_on_resume_is_kept_stale_once(
        start_sim: SimStarter, tmp_path: Path, where: str, gz: bool) -> None:
    srv, night2, sync, failing = await night_with_stale(start_sim, tmp_path, where, gz=gz)
    resumed = await resume(srv, night2, sync, gz=gz)
    assert (resumed.status, resumed.exit_code) == ("partial", 3)
    assert Counter(stale_lines(night2)) == Counter(failing)
    await assert_each_listed_once(srv, night2)
    cat = srv.catalog_uuids[0]
    errs = errors(night2)
    assert Counter((e["catalog_uuid"], e["content_type"], e["key"]) for e in errs) == \
        Counter((cat, *k) for k in failing)
    assert all(e["kind"] == "detail_failed" and e["stale"] for e in errs)
    m = manifest(night2)
    assert m["stale"] == {"items": len(failing), "catalogs": []}
    assert sorted(m["catalogs"][cat]["sync"]["stale_keys"]) == sorted(k for _, k in failing)
    assert_errors_describe_output(night2)


@pytest.mark.parametrize("step", ["before_ledger", "before_renames"])
async def test_a_resume_killed_while_it_rewrites_is_repeatable(
        start_sim: SimStarter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        step: str) -> None:
    """The rewrite is safe to interrupt: a resume killed once the temp files are written
    but before the ledger knows (they are written again), or once the ledger knows but
    before they are renamed over (the next session renames them first)."""
    srv, night2, sync, _ = await night_with_stale(start_sim, tmp_path, "done", gz=True)
    await post_config(srv, detail_403_keys=[])

    def killed(*args: object) -> None:
        next(a for a in args if isinstance(a, Writer)).close()  # as a kill closes them all
        raise RuntimeError("killed mid-rewrite")

    with monkeypatch.context() as patch:
        # plan_cut comes just before the ledger learns of the rewrite, finish_cut after.
        patch.setattr("harvester.reopen.plan_cut" if step == "before_ledger"
                      else "harvester.reopen.finish_cut", killed)
        with pytest.raises(RuntimeError, match="killed mid-rewrite"):
            await resume(srv, night2, sync, gz=True)
    assert list(night2.glob("catalog=*/.*.tmp")), "the kill came after a rewrite"
    resumed = await resume(srv, night2, sync, gz=True)
    assert (resumed.status, resumed.exit_code) == ("complete", 0)
    assert stale_lines(night2) == []
    await assert_each_listed_once(srv, night2)
    assert errors(night2) == []
    assert not list(night2.glob("catalog=*/.*.tmp"))
