"""DRF sliding-log throttling on the injected clock (no sleeps: time moves by assignment)."""

from __future__ import annotations

import orjson
import pytest
from simkit import FakeClock, Sim, SimFactory

from harvester.sim import Rate, SimConfig, parse_rate
from harvester.sim.throttle import SlidingLog, throttle_message

V1_LIST = "/enterprise/v1/enterprise-catalogs"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60/min", Rate(60, 60.0)),
        ("60/minute", Rate(60, 60.0)),
        ("20/s", Rate(20, 1.0)),
        ("800/h", Rate(800, 3600.0)),
        ("5/10s", Rate(5, 10.0)),
        ("0", None),
        ("none", None),
        ("0/min", None),
    ],
)
def test_parse_rate(text: str, expected: Rate | None) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["60", "x/min", "60/fortnight", "-1/s"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)
    with pytest.raises(ValueError, match="rate_lms"):
        SimConfig(rate_lms=text)


def test_sliding_log_unit() -> None:
    clock = FakeClock(0.0)
    log = SlidingLog(Rate(3, 10.0), clock)
    for t in (0.0, 1.0, 2.0):
        clock.now = t
        assert log.hit("u") is None
    clock.now = 2.5
    assert log.hit("u") == 8  # ceil(10 - 2.5)
    assert log.hit("other") is None  # per credential
    clock.now = 9.6
    assert log.hit("u") == 1  # rejected hits were not recorded
    clock.now = 10.0
    assert log.hit("u") is None  # the hit at 0.0 has left the window
    assert throttle_message(1) == "Request was throttled. Expected available in 1 second."


async def test_61st_request_is_throttled_until_the_window_moves(sim: Sim) -> None:
    for i in range(60):
        sim.clock.now += 0.5
        assert (await sim.get(V1_LIST)).status == 200, i
    resp = await sim.get(V1_LIST)
    assert resp.status == 429
    # Now is t0+30; the first hit (t0+0.5) leaves the 60 s window in 30.5 s -> ceil 31.
    assert resp.headers["Retry-After"] == "31"
    body = orjson.loads(await resp.read())
    assert body == {"detail": "Request was throttled. Expected available in 31 seconds."}
    sim.clock.now += 30.4
    assert (await sim.get(V1_LIST)).status == 429
    sim.clock.now += 0.2
    assert (await sim.get(V1_LIST)).status == 200
    stats = await sim.ops("GET", "/__stats")
    assert stats["throttled_429"] == 2
    assert stats["requests"]["lms"]["429"] == 2


async def test_list_and_details_share_the_budget_content_does_not(
    make_sim: SimFactory,
) -> None:
    sim = await make_sim(rate_lms="3/min")
    page = await sim.get_json(sim.content_path())
    course = next(i for i in page["results"] if i["content_type"] == "course")
    uuid = sim.srv.catalog_uuids[0]
    detail = f"/enterprise/v2/enterprise-catalogs/{uuid}/courses/{course['key']}"
    assert (await sim.get(V1_LIST)).status == 200
    assert (await sim.get(detail)).status == 200
    assert (await sim.get(detail.replace("/v2/", "/v1/"))).status == 200
    assert (await sim.get(V1_LIST)).status == 429
    assert (await sim.get(detail)).status == 429
    for _ in range(20):
        assert (await sim.get(sim.content_path())).status == 200
    assert (await sim.get("/enterprise/v2/enterprise-catalogs")).status == 200
    # Learner-summary has its own budget.
    learners = f"/enterprise/v3/enterprise-customer/{sim.srv.enterprise_uuid}/learner-summary"
    assert (await sim.get(learners)).status == 200


async def test_learner_budget_is_separate(make_sim: SimFactory) -> None:
    sim = await make_sim(rate_learners="2/s", rate_lms="0")
    learners = f"/enterprise/v3/enterprise-customer/{sim.srv.enterprise_uuid}/learner-summary"
    assert [(await sim.get(learners)).status for _ in range(3)] == [200, 200, 429]
    for _ in range(5):
        assert (await sim.get(V1_LIST)).status == 200
    sim.clock.now += 1.0
    assert (await sim.get(learners)).status == 200


async def test_strip_retry_after(make_sim: SimFactory) -> None:
    sim = await make_sim(rate_lms="1/min", strip_retry_after=True)
    assert (await sim.get(V1_LIST)).status == 200
    resp = await sim.get(V1_LIST)
    assert resp.status == 429
    assert "Retry-After" not in resp.headers
    assert b"Expected available in 60 seconds." in await resp.read()


async def test_reset_clears_throttle_logs(make_sim: SimFactory) -> None:
    sim = await make_sim(rate_lms="1/min")
    assert (await sim.get(V1_LIST)).status == 200
    assert (await sim.get(V1_LIST)).status == 429
    await sim.ops("POST", "/__reset")
    assert (await sim.get(V1_LIST)).status == 200
