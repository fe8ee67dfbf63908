"""cli.run_job: one rule for every command's signals and display. A signal sent to this
process ends the work (cancelled, or interrupted once), prints one line, and carries
130/143 out; the display is always closed. No sockets, no sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

from harvester.cli import EXIT_SIGINT, EXIT_SIGTERM, Interrupted, run_job
from harvester.errors import ServerError
from harvester.learners.state import EnterpriseState
from harvester.paginate import ListingPlan
from harvester.run import CatalogState, WalkCounters, error_record


class Shown:
    def __init__(self) -> None:
        self.events: list[str] = []

    @contextlib.contextmanager
    def display(self) -> Iterator[None]:
        self.events.append("open")
        try:
            yield
        finally:
            self.events.append("closed")


def test_result_passes_through_with_the_display_open() -> None:
    shown = Shown()

    async def work() -> int:
        assert shown.events == ["open"]
        return 7

    assert run_job(work, display=shown.display()) == 7
    assert shown.events == ["open", "closed"]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, EXIT_SIGTERM),
                                           (signal.SIGINT, EXIT_SIGINT)])
def test_a_signal_cancels_async_work(sig: signal.Signals, code: int,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    shown = Shown()
    cleaned: list[bool] = []

    async def work() -> None:
        os.kill(os.getpid(), sig)
        try:
            await asyncio.Event().wait()  # until the signal cancels it
        finally:
            cleaned.append(True)

    with pytest.raises(Interrupted) as info:
        run_job(work, display=shown.display(), interrupted="rerun it.")
    assert info.value.code == code and cleaned == [True]
    assert shown.events == ["open", "closed"]
    assert capsys.readouterr().err == "harvester: interrupted; rerun it.\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_walk_counters_are_shared_by_catalogs_and_enterprises() -> None:
    """One WalkCounters type: page 1 of a walk fills both the same way."""
    plan = ListingPlan(1000, count=2500, page_size=500, total_pages=5, clamped=True)
    cs, es = CatalogState("c", "t"), EnterpriseState("e")
    for counters in (cs, es):
        assert isinstance(counters, WalkCounters)
        counters.planned(plan)
        assert (counters.count_reported, counters.page_size_used, counters.clamped,
                counters.pages_planned) == (2500, 500, True, 5)


def test_error_records_share_one_shape() -> None:
    exc = ServerError("busy", status=503, url="https://x/learner-summary?page=3")
    rec = error_record(exc, catalog_uuid="c", kind="page_failed", at="t", key=None, page=3)
    assert list(rec) == ["catalog_uuid", "kind", "at", "page", "status", "error", "message"]
    assert (rec["status"], rec["error"]) == (503, "ServerError")
    es = EnterpriseState("e")
    es.record_error("page_failed", exc, page=3)
    assert es.errors[0]["kind"] == "page_failed" and es.errors[0]["status"] == 503
