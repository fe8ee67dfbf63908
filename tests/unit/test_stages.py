"""The lister and the detail scheduler, driven by a scripted client (no sockets) into a
real writer and ledger: what each writes, counts and reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from harvester.errors import NotFound, ServerError
from harvester.messages import ERRORS_KEY
from harvester.partfile import iter_lines
from harvester.pipeline.details import DetailScheduler
from harvester.pipeline.lister import CatalogLister
from harvester.pipeline.syncing import FetchAll
from harvester.run import CatalogState, Phase

from .stagekit import ScriptedClient, rig, row, settings

CAT = "c0ffee00-0000-4000-8000-000000000001"


def errors(rig_writer_part: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in iter_lines(rig_writer_part)]


async def test_the_lister_dedupes_spools_and_reports_keyless_rows_once(tmp_path: Path) -> None:
    """Each key is spooled once per version, a keyless row is one no_key error and counts
    as found, and the catalog ends listed with no gap."""
    rows = [row("edX+A"), row("edX+B"), row("edX+A"), {"title": "no key"},
            row("edX+B", title="B, new version"), {"title": "no key"}]
    client = ScriptedClient(rows=rows, count=3)  # A, B and the keyless row
    cs = CatalogState(CAT, "t")
    async with rig(tmp_path, [CAT]) as r:
        lister = CatalogLister(client.as_client(), settings(tmp_path, **{
            "harvest.page_size": 2}), r.emit, r.ledger, r.writer)
        await lister.list_catalog(cs)
        spooled = [(e.key, e.record["title"]) for e in r.writer.spool(CAT).entries()]
        errs = errors(r.writer.part_path(ERRORS_KEY))
        pages = r.ledger.pages_done(CAT, 1)
    assert cs.phase == Phase.LISTED
    assert (cs.unique, cs.keyless, cs.duplicates, cs.gaps) == (2, 1, 3, 0)
    assert (cs.count_reported, cs.pages, cs.walks) == (3, 3, 1)
    assert spooled == [("edX+A", "edX+A"), ("edX+B", "edX+B"), ("edX+B", "B, new version")]
    assert [e["kind"] for e in errs] == ["no_key"]
    assert pages == {1, 2, 3}  # recorded durable in the ledger


async def test_a_lister_resumed_mid_walk_skips_what_the_spool_holds(tmp_path: Path) -> None:
    """Rebuilt from the spool and the ledger's pages, a resumed listing counts and
    spools nothing twice, and asks again only for what is not done."""
    client = ScriptedClient(rows=[row(f"edX+C{i}") for i in range(5)])
    async with rig(tmp_path, [CAT]) as r:
        s = settings(tmp_path, **{"harvest.page_size": 2})
        await CatalogLister(client.as_client(), s, r.emit, r.ledger, r.writer
                            ).list_catalog(CatalogState(CAT, "t"))
        again = CatalogState(CAT, "t", phase=Phase.LISTING)
        await CatalogLister(client.as_client(), s, r.emit, r.ledger, r.writer
                            ).list_catalog(again)
        keys = [e.key for e in r.writer.spool(CAT).entries()]
    assert (again.unique, again.duplicates, again.pages) == (5, 0, 0)
    assert keys == [f"edX+C{i}" for i in range(5)]


async def test_the_scheduler_fetches_retries_404s_and_records_failures(tmp_path: Path) -> None:
    """Every item ends written, not_found (after its 404 passes) or failed, exactly once;
    workers are created only for queued jobs."""
    rows = [row("edX+OK1"), row("edX+OK2"), row("edX+GONE"), row("edX+BAD"),
            row("edX+NO/ROUTE")]
    client = ScriptedClient(rows=rows, details={
        "edX+OK1": {"key": "edX+OK1", "full": True}, "edX+OK2": {"key": "edX+OK2"},
        "edX+GONE": NotFound("no such course", status=404),
        "edX+BAD": ServerError("upstream down", status=503)})
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    cs = CatalogState(CAT, "t")
    s = settings(tmp_path, **{"harvest.detail_404_retries": 2, "harvest.concurrency": 50})
    async with rig(tmp_path, [CAT]) as r:
        await CatalogLister(client.as_client(), s, r.emit, r.ledger, r.writer).list_catalog(cs)
        details = DetailScheduler(client.as_client(), s, r.emit, FetchAll(), clock=lambda: 0.0,
                                  sleep=sleep, detail_404_delay=5.0)
        async with asyncio.TaskGroup() as tg:
            details.start(tg, 50)
            await details.run_catalog(cs, FetchAll().order(CAT, r.writer.spool(CAT).path),
                                      done=set())
            await details.stop()
        await r.emit.barrier()
        errs = errors(r.writer.part_path(ERRORS_KEY))
        done = r.ledger.done(CAT)
    assert (cs.details_done, cs.listing_only, cs.not_found, cs.failed) == (2, 1, 1, 1)
    assert client.asked.count("edX+GONE") == 3  # first try + 2 passes
    assert slept == [5.0, 10.0]  # each pass waits delay x attempt after the 404
    assert sorted(e["kind"] for e in errs) == ["detail_failed", "not_found", "unroutable_key"]
    assert 1 <= details.workers_started <= 4
    assert len(done) == 4  # a failure is not done: a rerun retries it


@pytest.mark.parametrize("details", [False, True])
async def test_without_details_every_item_is_written_from_the_listing(
        tmp_path: Path, details: bool) -> None:
    """--no-details writes listing records and asks for nothing."""
    client = ScriptedClient(rows=[row("edX+A"), row("edX+B")],
                            details={"edX+A": {"key": "edX+A"}, "edX+B": {"key": "edX+B"}})
    cs = CatalogState(CAT, "t")
    s = settings(tmp_path, **{"harvest.details": details})
    async with rig(tmp_path, [CAT]) as r:
        await CatalogLister(client.as_client(), s, r.emit, r.ledger, r.writer).list_catalog(cs)
        sched = DetailScheduler(client.as_client(), s, r.emit, FetchAll(), clock=lambda: 0.0,
                                sleep=asyncio.sleep, detail_404_delay=0.0)
        async with asyncio.TaskGroup() as tg:
            sched.start(tg, 4 if details else 0)
            await sched.run_catalog(cs, FetchAll().order(CAT, r.writer.spool(CAT).path), set())
            await sched.stop()
    assert (cs.details_done, cs.listing_only) == ((2, 0) if details else (0, 2))
    assert client.asked == (["edX+A", "edX+B"] if details else [])
