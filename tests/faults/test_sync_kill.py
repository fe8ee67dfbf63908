"""A sync night killed while it carries a failed catalog forward, then resumed.

The contract: a failed catalog's previous records, carried into tonight's snapshot
(stale), are this night's stand-in for work that failed, never work done. A resume
(every later session of a killed night) lists that catalog again and decides each of its
items from scratch: when the catalog heals, the night is ``complete`` with fresh records,
exactly the simulator's upserts and deletes in the change feed, and no stale record;
when it still fails, the night is ``partial`` and the manifest says truthfully that its
previous records were carried, each exactly once.

The kill comes at a fixed point of the carry (the run task is cancelled there, which
leaves the ledger and files as a ``kill -9`` does: durable up to the last checkpoint, the
rest recovered or cut back by the next session), never after a timed sleep.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harvester.delta import SyncOptions
from harvester.pipeline import Harvest
from harvester.run import Phase
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
from tests.integration.helpers import fetch_json, read_lines, truth

NIGHT1, NIGHT2 = 1_700_000_000.0, 1_700_086_400.0

#: Where in the carry of the failed catalog the night is killed.
KILL_POINTS = ("mid_carry", "before_commit", "after_commit", "after_carry")


def hold_at(harvest: Harvest, catalog: str, point: str) -> asyncio.Event:
    """Make ``harvest`` stop for good at ``point`` of ``catalog``'s carry (everything
    before it durable); the event is set once it is there, for the test to kill it."""
    emit, held = harvest._emit, asyncio.Event()

    async def stop() -> None:
        held.set()
        await asyncio.Event().wait()  # until cancelled: the kill

    def wrap(name: str, before: Callable[..., Awaitable[bool]] | None = None,
             after: Callable[..., Awaitable[bool]] | None = None) -> None:
        orig = getattr(emit, name)

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            if before is not None and await before(*args, **kwargs):
                await stop()
            result = await orig(*args, **kwargs)
            if after is not None and await after(*args, **kwargs):
                await emit.barrier()
                await stop()
            return result
        setattr(emit, name, wrapped)

    carried = Counter[str]()

    async def fifth_carried(cat: str, ctype: str, line: bytes, *_: Any) -> bool:
        if cat == catalog and b'"stale_reason":"catalog_failed' in line:
            carried[cat] += 1
        return carried[cat] == 5

    async def ours_first(cat: str, *_: Any) -> bool:
        if cat == catalog:
            await emit.barrier()
        return cat == catalog

    async def failed_phase(cat: str, phase: Phase) -> bool:
        return cat == catalog and phase == Phase.FAILED

    if point == "mid_carry":
        wrap("item", after=fifth_carried)
    elif point == "before_commit":
        wrap("commit_catalog", before=ours_first)
    elif point == "after_commit":  # renamed, the ledger still says "committing"
        wrap("phase", before=failed_phase)
    else:  # all of the catalog's failure recorded (carried_forward included)
        wrap("phase", after=failed_phase)
    return held


async def killed_night(srv: SimServer, out: Path, sync: SyncOptions, bad: str,
                       point: str, **settings: object) -> None:
    """Night 2 with catalog 1 forbidden, killed at ``point`` of its carry."""
    harvest = Harvest(settings_for(srv, out, **settings), sync=sync)
    held = hold_at(harvest, bad, point)
    task = asyncio.create_task(harvest.run())
    waiter = asyncio.create_task(held.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    assert held.is_set(), "the night ended before the kill point"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def two_nights(start_sim: SimStarter, tmp_path: Path
                     ) -> tuple[SimServer, Path, Path, SyncOptions]:
    srv = await start_sim(catalogs=2, items=150, seed=7)
    night1, night2 = tmp_path / "n1", tmp_path / "n2"
    night1.mkdir()
    night2.mkdir()
    first = await Harvest(settings_for(srv, night1), sync=SyncOptions(None, now=NIGHT1)).run()
    assert first.exit_code == 0
    await post(srv, "/__epoch", {"epoch": 1})
    await post_config(srv, forbid_catalogs=["1"])
    return srv, night1, night2, SyncOptions(night1, now=NIGHT2)


async def post(srv: SimServer, path: str, body: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as s, s.post(srv.base_url + path, json=body) as r:
        assert r.status == 200, await r.text()


def feed(snap: Path) -> set[tuple[str, str, str, str]]:
    return {(c["op"], c["catalog_uuid"], c["content_type"], c["key"])
            for f in snap.glob("catalog=*/changes.ndjson") for c in read_lines(f)}


def stale_lines(snap: Path) -> list[tuple[str, str]]:
    return [(r["_harvest"]["content_type"], r["_harvest"]["key"])
            for f in snap.glob("catalog=*/*.ndjson*")
            if f.name.endswith((".ndjson", ".ndjson.gz")) and f.name != "changes.ndjson"
            for r in read_lines(f) if r["_harvest"].get("stale")]


async def assert_healed(srv: SimServer, night2: Path, **settings: object) -> None:
    """The resume, with the catalog healed: complete, fresh, exactly the listing and
    exactly the simulator's changes."""
    bad = srv.catalog_uuids[1]
    await post_config(srv, forbid_catalogs=[])
    resumed = await Harvest(settings_for(srv, night2, **settings),
                            sync=SyncOptions(night2.parent / "n1", now=NIGHT2)).run()
    assert (resumed.status, resumed.exit_code) == ("complete", 0)
    assert stale_lines(night2) == []
    listed = await truth(srv)
    got = written(night2)
    for cat, keys in listed.items():
        assert Counter(got[cat]) == Counter(keys), f"catalog {cat[:8]}: not exactly its listing"
    expected = {(c["op"], c["catalog_uuid"], c["content_type"], c["key"])
                for c in await fetch_json(srv, "/__changes?from=0&to=1")}
    assert feed(night2) == expected  # every delete and upsert, none invented
    m = manifest(night2)
    assert m["stale"] == {"items": 0, "catalogs": []}
    assert m["catalogs"][bad]["status"] == "done"
    assert "carried_forward" not in m["catalogs"][bad]["sync"]
    assert errors(night2) == []
    assert_errors_describe_output(night2)


@pytest.mark.parametrize(("point", "gz"), [*((p, False) for p in KILL_POINTS),
                                           ("mid_carry", True)])
async def test_a_carried_catalog_that_heals_on_resume_is_listed_and_decided_again(
        start_sim: SimStarter, tmp_path: Path, point: str, gz: bool) -> None:
    srv, _, night2, sync = await two_nights(start_sim, tmp_path)
    await killed_night(srv, night2, sync, srv.catalog_uuids[1], point, **{"output.gzip": gz})
    await assert_healed(srv, night2, **{"output.gzip": gz})


async def test_a_night_killed_while_cutting_and_again_while_carrying_still_heals(
        start_sim: SimStarter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step of the cut is safe to repeat: a session killed after the ledger learned
    of the cut but before the files were cut, then one killed while carrying again."""
    srv, _, night2, sync = await two_nights(start_sim, tmp_path)
    bad = srv.catalog_uuids[1]
    await killed_night(srv, night2, sync, bad, "mid_carry")

    def killed(writer: Writer, *_: object) -> None:
        writer.close()  # as a kill closes every handle
        raise RuntimeError("killed before the files were cut")

    with monkeypatch.context() as patch:
        patch.setattr("harvester.reopen.cut", killed)
        with pytest.raises(RuntimeError, match="killed before"):
            await Harvest(settings_for(srv, night2), sync=sync).run()
    await killed_night(srv, night2, sync, bad, "before_commit")
    await assert_healed(srv, night2)


@pytest.mark.parametrize("point", KILL_POINTS)
async def test_a_carried_catalog_still_failing_on_resume_is_carried_once_and_said(
        start_sim: SimStarter, tmp_path: Path, point: str) -> None:
    srv, night1, night2, sync = await two_nights(start_sim, tmp_path)
    bad = srv.catalog_uuids[1]
    await killed_night(srv, night2, sync, bad, point)

    resumed = await Harvest(settings_for(srv, night2), sync=sync).run()
    assert (resumed.status, resumed.exit_code) == ("partial", 3)
    previous = written(night1)[bad]
    kept = written(night2)[bad]
    assert Counter(kept) == Counter(previous)  # each previous record once
    assert Counter(stale_lines(night2)) == Counter(previous)
    m = manifest(night2)
    entry = m["catalogs"][bad]
    assert entry["status"] == "failed" and entry["sync"]["carried_forward"] is True
    assert m["stale"]["catalogs"] == [bad]
    assert m["stale"]["items"] == len(previous)
    assert not [f for f in feed(night2) if f[1] == bad]  # no upsert, no delete for it
    assert [(e["catalog_uuid"], e["kind"]) for e in errors(night2)] == [(bad, "catalog_failed")]
    assert_errors_describe_output(night2)
