"""Socket-free tests: the gate replay behind plan's ETA, the deadline's arithmetic and
flag parsing, and the plan's --json schema."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest

from harvester.config import Rate
from harvester.deadline import TimeBudget, parse_time_budget, seconds_until
from harvester.errors import ConfigError, OutOfTime
from harvester.planning import CatalogPlan, Plan
from harvester.policy import RateGate, admission_schedule
from tests.conftest import FakeTime


@pytest.mark.parametrize(("n", "rate", "request_time"), [
    (1, "20/s", 0.0), (20, "20/s", 0.0), (21, "20/s", 0.0), (95, "20/s", 0.05),
    (130, "60/min", 0.4), (7, "0.5/s", 0.1), (33, "7.5/min", 0.2)])
async def test_admission_schedule_replays_the_real_gate(n: int, rate: str,
                                                        request_time: float) -> None:
    """The plan's model and the gate agree on when the last of n answers arrives."""
    fake = FakeTime(0.0)
    gate = RateGate("lms", Rate.parse(rate), clock=fake, sleep=fake.sleep, smooth=False)
    ends: list[float] = []
    for _ in range(n):  # one worker at a time: the gate's own FIFO order
        ticket = await gate.acquire()
        fake.now += request_time
        ticket.stamp()
        ticket.counted = True
        ends.append(fake.now)
    model = admission_schedule(n, Rate.parse(rate), concurrency=1, request_time=request_time)
    # (the gate sleeps at least 1 ms per wait; the model does not)
    assert model == pytest.approx(ends[-1], abs=0.005)


def test_admission_schedule_counts_slots_already_taken_and_concurrency() -> None:
    rate = Rate.parse("10/s")
    free = admission_schedule(10, rate, concurrency=10, request_time=0.0)
    taken = admission_schedule(10, rate, concurrency=10, request_time=0.0, busy_until=[0.5])
    assert free == 0.0 and taken == pytest.approx(0.5)
    # Two workers, 1 s per request, a budget that never binds: 4 requests take 2 s.
    assert admission_schedule(4, Rate.parse("100/s"), concurrency=2,
                              request_time=1.0) == pytest.approx(2.0)
    assert admission_schedule(0, rate, concurrency=1, request_time=1.0) == 0.0


async def test_gate_refuses_a_request_it_could_not_admit_in_time() -> None:
    fake = FakeTime(0.0)
    gate = RateGate("lms", Rate.parse("2/s"), clock=fake, sleep=fake.sleep, smooth=False)
    for _ in range(2):
        (await gate.acquire(admit_by=0.5)).counted = True
    with pytest.raises(OutOfTime):
        await gate.acquire(admit_by=0.5)  # the next slot is a window away
    assert fake.now == 0.0  # refused at once, without waiting for it
    await gate.acquire(admit_by=5.0)  # with time left, it waits and is admitted
    assert fake.now > 1.0


def test_time_budget_keeps_back_commit_time_and_one_request() -> None:
    b = TimeBudget(100.0, lambda: 40.0, base_reserve=2.0, per_item_reserve=0.01)
    cut = b.cutoff(items=500, typical_request=0.5)
    assert cut.end_by == pytest.approx(100.0 - 2.0 - 5.0)
    assert cut.admit_by == pytest.approx(cut.end_by - 0.5)
    assert b.cutoff(items=0, typical_request=None).admit_by == pytest.approx(97.0)
    assert b.left() == 60.0


def test_deadline_is_local_time_and_tomorrow_once_past() -> None:
    evening = datetime(2026, 11, 30, 23, 30)
    assert seconds_until("06:00", evening) == 6.5 * 3600
    morning = datetime(2026, 11, 30, 5, 0)
    assert seconds_until("06:00", morning) == 3600
    assert seconds_until("05:00", morning) == 24 * 3600  # exactly now: tomorrow
    for bad in ("25:00", "24:00", "6", "06:60", "6:5", "-1:00", "", "ab:cd", "06:00:00"):
        with pytest.raises(ConfigError, match="--deadline"):
            seconds_until(bad, morning)


@pytest.mark.parametrize("text", ["-1h", "0", "0s", "inf", "nan", "3 fortnights", ""])
def test_time_budget_rejects_nonsense(text: str) -> None:
    with pytest.raises(ConfigError, match="--time-budget"):
        parse_time_budget(text)


def test_time_budget_durations() -> None:
    assert parse_time_budget("3h") == 3 * 3600
    assert parse_time_budget("90m") == 5400
    assert parse_time_budget("45") == 45


def test_plan_json_schema_is_stable() -> None:
    plan = Plan([CatalogPlan("c1", "T", "listed", 3, 0, {"course": 2, "learnerpathway": 1},
                             2, {"stale_retries": 0, "new": 1, "changed": 0, "refresh": 1,
                                 "carried": 0})],
                "20/1s", 0.5, 1, 0.01, 1.6, store=Path("/s"), previous="p",
                sync_eta_seconds=1.1, startup_seconds=0.2)
    doc = plan.as_dict()
    assert set(doc) == {"schema", "complete", "rate_lms", "startup_seconds",
                        "listing_seconds", "request_seconds", "catalogs", "totals", "sync"}
    assert doc["schema"] == 1
    assert set(doc["catalogs"][0]) == {"uuid", "title", "status", "count_reported", "keyless",
                                       "items", "items_total", "detail_requests", "sync"}
    assert doc["totals"] == {"catalogs": 1, "items": {"course": 2, "learnerpathway": 1},
                             "items_total": 3, "detail_requests": 2,
                             "catalog_list_requests": 1, "harvest_eta_seconds": 1.6}
    assert doc["sync"] == {"store": "/s", "previous": "p", "stale_retries": 0, "new": 1,
                           "changed": 0, "refresh": 1, "carried": 0, "detail_requests": 2,
                           "eta_seconds": 1.1}
    assert asyncio.iscoroutinefunction(RateGate.acquire)
