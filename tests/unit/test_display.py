"""harvester.display renders every command's progress and summary; drawn on a fake console
(rich into a StringIO), with run state built by hand. No sockets, no terminal."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console

from harvester import display
from harvester.config import Settings
from harvester.learners.state import EnterpriseState
from harvester.manifest import Manifest
from harvester.run import CatalogState, Phase, RunResult, SyncResult

CAT = "0f3c6a4e-aaaa-4bbb-8ccc-000000000001"
ENT = "8f2b0d2e-1c1a-4a57-9d0e-6f1f5c2f4b11"


def draw(renderable: Any) -> str:
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(renderable)
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def catalog_entry(**over: Any) -> dict[str, Any]:
    entry = {"title": "Data Science", "dir": f"catalog={CAT}", "status": "done",
             "count_reported": 10, "unique_found": 10, "duplicates_dropped": 1, "keyless": 0,
             "gaps": 0, "walks": 1, "pages": 1, "page_size_used": 250,
             "page_size_clamped": False, "details_fetched": 9, "listing_only": 0,
             "not_found": 1, "failed": 0, "error": None,
             "files": {"course.ndjson": {"lines": 9}}}
    return {**entry, **over}


def harvest_manifest(**extra: Any) -> dict[str, Any]:
    return {"run_id": "20260101T000000Z-abcd1234", "started_at": "s", "ended_at": "e",
            "status": "complete", "version": "0", "config": {}, "files": {},
            "catalogs": {CAT: catalog_entry(**extra.pop("entry", {}))},
            "totals": {"catalogs": 1, "items": 10, "details_fetched": 9, "not_found": 1,
                       "failed": 0, "gaps": 0, "errors": 0, "requests_total": 12,
                       "retries": 2, "throttled_429": 1, "wall_seconds": 1.5},
            **extra}


def test_learners_table_and_summary() -> None:
    es = EnterpriseState(ENT, status="partial", walks=2, pages=4, pages_planned=5,
                         rows_written=3000, duplicates=7)
    text = draw(display.learners_table({"rows": 3000, "requests": 9, "throttled": 0}, [es]))
    assert "learners: rows 3000  requests 9  429s 0" in text
    assert ENT[:13] in text and "partial" in text and "4/5" in text
    result = RunResult("partial", 3, Path("/tmp/out/learners"), {
        "run_id": "r1", "enterprises": {ENT: {"status": "partial", "count_reported": 3010,
                                              "rows_written": 3000, "duplicates_dropped": 7,
                                              "gaps": 10}},
        "totals": {"learners": 5, "enrollments": 3000, "passed": 1, "in_progress": 2,
                   "failed": 0, "requests_total": 9, "retries": 0, "throttled_429": 0,
                   "wall_seconds": 2.0}})
    summary = display.learners_summary(result).splitlines()
    assert summary[0] == "learners r1: partial"
    assert summary[1].split() == [ENT, "partial", "count", "3010", "written", "3000",
                                  "duplicates", "7", "gaps", "10"]
    assert "enrollments  3000" in summary
    assert summary[-1].endswith("(manifest.json, enterprise=<uuid>/learner_summary.ndjson)")


def test_harvest_summary_prints_the_table_totals_and_output() -> None:
    out = io.StringIO()
    display.print_harvest_summary(RunResult("complete", 0, Path("out"), harvest_manifest()),
                                  stream=out)
    text = out.getvalue()
    assert "harvest 20260101T000000Z-abcd1234: complete" in text
    assert CAT[:8] in text and "Data Science" in text
    assert "requests 12  retries 2  429s 1  wall 1.5 s" in text
    assert "catalog=<uuid>/*.ndjson" in text


def test_sync_summary_lines() -> None:
    """Totals, withheld deletes, gone catalogs, stale items, promotion and pruning."""
    sync = {"carried": 5, "upserts": 2, "deletes": 1, "deletes_suppressed": True,
            "deletes_pending": 4}
    m = harvest_manifest(entry={"sync": sync}, gone_catalogs={"deadbeef-0000": {"deletes": 3}},
                         stale={"items": 2, "catalogs": [CAT]})
    run = RunResult("partial", 3, Path("snap"), m)
    night = SyncResult(run, Manifest.from_json(m), Path("/s/snapshots/20260102T000000Z"),
                       Path("/s/snapshots/20260101T000000Z"), False, ["20251201T000000Z"])
    lines = display.sync_summary(night)
    assert lines[0].startswith("sync 20260102T000000Z (previous: 20260101T000000Z): carried 5")
    assert "upserts 2, deletes 4" in lines[0]  # 1 here + 3 of the gone catalog
    assert f"deletes withheld for {CAT[:8]} (listing incomplete; 4 carried" in lines[0]
    assert lines[1] == "gone from the catalog list (all items deleted): deadbeef"
    assert lines[2].endswith(f"2 items; catalogs {CAT[:8]}")
    assert lines[3].startswith("latest unchanged: 20260102T000000Z is not a good snapshot")
    assert lines[4] == "pruned: 20251201T000000Z"


def test_live_display_only_when_asked_or_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    on, auto, off = (Settings.load(environ={}, overrides={"output.progress": p})
                     for p in ("on", "auto", "off"))
    quiet = Settings.load(environ={}, overrides={"output.quiet": True})
    assert display.show_progress(on, io.StringIO())
    assert not display.show_progress(auto, io.StringIO())
    assert display.show_progress(auto, Tty())
    assert not display.show_progress(off, Tty()) and not display.show_progress(quiet, Tty())
    with display.live(lambda: "x", False) as nothing:
        assert nothing is None


def test_export_summary_line() -> None:
    assert display.export_summary(Path("feed.json"), 3, 1, "meili") == \
        "feed.json: 3 upserts, 1 deletes (meili)"


def _cat(n: int, phase: Phase, **counts: Any) -> CatalogState:
    cs = CatalogState(f"{n:08d}-aaaa-4bbb-8ccc-000000000000", "t", **counts)
    path = {Phase.NEW: [], Phase.LISTING: [Phase.LISTING],
            Phase.DETAILS: [Phase.LISTING, Phase.LISTED, Phase.DETAILS],
            Phase.DONE: [Phase.LISTING, Phase.LISTED, Phase.DETAILS, Phase.DONE]}[phase]
    for step in path:
        cs.advance(step)
    return cs


def bar_lines(text: str, n: int) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{n:08d}-aaaa")]


def test_catalog_bars_show_percent_and_eta_for_listing_and_details() -> None:
    clock = [100.0]
    bars = display.CatalogBars(details=True, get_time=lambda: clock[0])
    listing = _cat(1, Phase.LISTING, pages=0, pages_planned=40)
    fetching = _cat(2, Phase.DETAILS, pages=10, pages_planned=10, unique=1000,
                    details_done=250, not_found=5, listing_only=45)
    done = _cat(3, Phase.DONE, pages=2, unique=150, details_done=150)
    cats = [listing, fetching, done]
    for _ in range(3):  # a page a second: at 10 of 40, 30 s left
        clock[0] += 5.0
        listing.pages += 5
        bars.update(cats, lms_per_s=1.0)
    text = draw(bars.renderable())
    lst, det = bar_lines(text, 1)
    assert "listing" in lst and "38%" in lst and "15/40" in lst and "ETA 0:00:25" in lst
    assert "details" in det and "ETA -:--:--" in det  # total unknown until listed
    lst, det = bar_lines(text, 2)
    assert "100%" in lst and "done" in lst
    # 700 details left, one catalog fetching at the whole 1/s budget: 11m40s
    assert "30%" in det and "300/1000" in det and "ETA 0:11:40" in det
    lst, det = bar_lines(text, 3)
    assert "100%" in det and "done" in det


def test_the_details_eta_splits_the_budget_between_catalogs_fetching() -> None:
    bars = display.CatalogBars(details=True, get_time=lambda: 0.0)
    a = _cat(1, Phase.DETAILS, pages=1, pages_planned=1, unique=100, details_done=40)
    b = _cat(2, Phase.DETAILS, pages=1, pages_planned=1, unique=100, details_done=90)
    bars.update([a, b], lms_per_s=2.0)  # each gets 1/s
    text = draw(bars.renderable())
    assert "ETA 0:01:00" in bar_lines(text, 1)[1] and "ETA 0:00:10" in bar_lines(text, 2)[1]


def test_catalog_bars_stay_within_twenty_rows_and_listing_only_has_one_bar() -> None:
    cats = [_cat(i, Phase.DONE if i < 15 else Phase.LISTING, pages=1, pages_planned=2)
            for i in range(30)]
    bars = display.CatalogBars(details=True, get_time=lambda: 0.0)
    bars.update(cats, lms_per_s=None)
    text = draw(bars.renderable())
    assert len(bar_lines(text, 15)) == 2 and bar_lines(text, 0) == []  # unsettled first
    assert sum(len(bar_lines(text, i)) for i in range(30)) == 20
    assert "... and 20 more catalog(s)" in text
    only = display.CatalogBars(details=False, get_time=lambda: 0.0)
    only.update(cats[:3], lms_per_s=None)
    assert [len(bar_lines(draw(only.renderable()), i)) for i in range(3)] == [1, 1, 1]


def test_the_live_view_draws_the_run_numbers_above_the_bars() -> None:
    bars = display.CatalogBars(details=True, get_time=lambda: 0.0)
    bars.update([_cat(1, Phase.LISTING, pages_planned=4)], lms_per_s=1.0)
    text = draw(display.harvest_view({"catalogs_done": 0, "catalogs": 1, "items": 7,
                                      "written": 4, "requests": 20, "throttled": 2,
                                      "eta_s": 125}, bars, 3.25))
    assert text.splitlines()[0] == ("catalogs 0/1 done  items 7  written 4  requests 20 "
                                    "(3.2/s)  429s 2  ETA 2m05s")
    assert "0/4" in text and "0%" in text
