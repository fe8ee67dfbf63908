"""Injected faults, the gateway's status remap, latency, concurrency and stats."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from simkit import Sim, SimFactory

from harvester.sim import SimConfig


@pytest.mark.parametrize(
    ("kind", "status", "body"),
    [
        ("502", 502, {"message": "Internal server error"}),
        ("503", 503, {"message": "Service Unavailable"}),
        ("504", 504, {"message": "Endpoint request timed out"}),
    ],
)
async def test_gateway_error_faults(
    make_sim: SimFactory, kind: str, status: int, body: dict[str, str]
) -> None:
    sim = await make_sim(fault_rate=1.0, fault_kinds=(kind,))
    resp = await sim.get(sim.content_path())
    assert resp.status == status
    assert orjson.loads(await resp.read()) == body


async def test_500_fault_is_an_html_page(make_sim: SimFactory) -> None:
    sim = await make_sim(fault_rate=1.0, fault_kinds=("500",))
    resp = await sim.get(sim.content_path())
    assert resp.status == 500
    assert resp.content_type == "text/html"


async def test_reset_fault_drops_the_connection(make_sim: SimFactory) -> None:
    sim = await make_sim(fault_rate=1.0, fault_kinds=("reset",))
    with pytest.raises(aiohttp.ClientConnectionError):
        await sim.get(sim.content_path())


async def test_truncate_fault_short_body(make_sim: SimFactory) -> None:
    sim = await make_sim(fault_rate=1.0, fault_kinds=("truncate",))
    with pytest.raises(aiohttp.ClientPayloadError):
        await sim.get(sim.content_path())


async def test_badjson_fault(make_sim: SimFactory) -> None:
    sim = await make_sim(fault_rate=1.0, fault_kinds=("badjson",))
    resp = await sim.get(sim.content_path())
    assert resp.status == 200
    assert resp.content_type == "application/json"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(await resp.read())


async def test_faults_spare_the_token_endpoint_unless_asked(make_sim: SimFactory) -> None:
    sim = await make_sim(fault_rate=1.0, fault_kinds=("503",))
    assert (await sim.new_token()).status == 200
    stats = await sim.ops("GET", "/__stats")
    assert stats["faults"] == {}
    hit = await make_sim(token=False, fault_rate=1.0, fault_kinds=("503",), fault_token=True)
    assert (await hit.new_token()).status == 503


async def test_fault_rate_is_a_seeded_fraction(make_sim: SimFactory) -> None:
    async def statuses(seed: int) -> list[int]:
        sim = await make_sim(seed=seed, fault_rate=0.3, fault_kinds=("503",))
        return [(await sim.get(sim.content_path())).status for _ in range(60)]

    first = await statuses(5)
    assert 5 < first.count(503) < 35
    assert set(first) == {200, 503}
    assert await statuses(5) == first


async def test_gateway_remap(make_sim: SimFactory) -> None:
    sim = await make_sim(gateway_remap=True, fault_rate=1.0, fault_kinds=("502",))
    resp = await sim.get(sim.content_path())
    assert resp.status == 400
    assert "message" in orjson.loads(await resp.read())
    sim2 = await make_sim(gateway_remap=True, rate_lms="1/min")
    ent = sim2.srv.enterprise_uuid
    learners = f"/enterprise/v3/enterprise-customer/{ent}/learner-summary"
    resp = await sim2.get(learners, headers=sim2.headers("application/xml"))
    assert resp.status == 400  # was 406
    # Mapped statuses pass through unchanged.
    assert (await sim2.get(sim2.content_path(), page=99)).status == 404
    assert (await sim2.get("/enterprise/v1/enterprise-catalogs")).status == 200
    assert (await sim2.get("/enterprise/v1/enterprise-catalogs")).status == 429
    resp = await sim2.get(sim2.content_path(), headers={"Accept": "application/json"})
    assert resp.status == 400  # missing auth is a 400 anyway
    sim3 = await make_sim(fault_rate=1.0, fault_kinds=("500",), gateway_remap=True)
    assert (await sim3.get(sim3.content_path())).status == 500


async def test_latency_concurrency_and_stats(make_sim: SimFactory) -> None:
    sim = await make_sim(latency_ms=150, jitter_ms=10)
    await sim.ops("POST", "/__reset")
    results = await asyncio.gather(*(sim.get(sim.content_path(), page=p) for p in range(1, 7)))
    assert [r.status for r in results] == [200] * 6
    await sim.get("/enterprise/v1/enterprise-catalogs")
    stats = await sim.ops("GET", "/__stats")
    assert stats["peak_concurrency"]["overall"] >= 2
    assert stats["peak_concurrency"]["content"] >= 2
    assert stats["peak_concurrency"]["lms"] == 1
    assert stats["requests"] == {"content": {"200": 6}, "lms": {"200": 1}}
    assert stats["bytes_out"] > 6 * 1000
    await sim.ops("POST", "/__reset")
    stats = await sim.ops("GET", "/__stats")
    assert stats["requests"] == {}
    assert stats["bytes_out"] == 0


async def test_stats_counters(sim: Sim) -> None:
    await sim.new_token()
    page = await sim.get_json(sim.content_path())
    course = next(i for i in page["results"] if i["content_type"] == "course")
    uuid = sim.srv.catalog_uuids[0]
    await sim.get(f"/enterprise/v1/enterprise-catalogs/{uuid}/courses/{course['key']}")
    await sim.get(f"/enterprise/v1/enterprise-catalogs/{uuid}/courses/x+y")
    stats = await sim.ops("GET", "/__stats")
    assert stats["tokens_issued"] == 2
    assert stats["detail_requests"] == 2
    assert stats["requests"]["token"] == {"200": 2}
    assert stats["requests"]["lms"] == {"200": 1, "404": 1}
    assert set(stats["peak_concurrency"]) >= {"overall", "content", "lms", "learners"}


async def test_info_endpoint(sim: Sim) -> None:
    info = await sim.ops("GET", "/__info")
    assert info["base_url"] == sim.base
    assert info["client_id"] == sim.srv.client_id
    assert info["catalog_uuids"] == sim.srv.catalog_uuids
    assert info["foreign_catalog_uuid"] == sim.srv.foreign_catalog_uuid
    assert info["enterprise_uuid"] == sim.srv.enterprise_uuid
    assert info["epoch"] == 0
    assert "client_secret" not in info["config"]
    assert sim.srv.client_secret not in orjson.dumps(info).decode()


@pytest.mark.parametrize(
    "overrides",
    [
        {"fault_kinds": ("boom",)},
        {"fault_rate": 1.5},
        {"accept_mode": "xml"},
        {"items": -1},
        {"detail_404_mode": "sometimes"},
        {"public_base": "api.edx.org"},
        {"end_marker": "none"},
        {"slow_drip_ms": -1.0},
        {"slow_drip_rate": 1.5},
        {"bomb_rate": -0.1},
        {"bomb_mb": 0},
        {"bomb_mb": 5000},
        {"client_id": ""},
        {"client_secret": ""},
    ],
)
def test_config_validation(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(overrides))):
        SimConfig(**overrides)  # type: ignore[arg-type]
