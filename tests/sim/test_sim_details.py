"""Detail endpoints: URL matching on decoded paths, bodies, 403/404 semantics, ETags."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
import pytest
from simkit import Sim, SimFactory

DROPPED = {
    "content_type",
    "aggregation_key",
    "content_last_modified",
    "active",
    "xapi_activity_id",
    "normalized_metadata",
    "normalized_metadata_by_run",
}


async def by_type(sim: Sim, catalog: int = 0) -> dict[str, dict[str, Any]]:
    items = await sim.walk(catalog)
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        out.setdefault(item["content_type"], item)
    assert {"course", "courserun", "program"} <= out.keys()
    return out


def detail_path(sim: Sim, kind: str, key: str, catalog: int = 0, version: int = 1) -> str:
    uuid = sim.srv.catalog_uuids[catalog]
    return f"/enterprise/v{version}/enterprise-catalogs/{uuid}/{kind}/{key}"


@pytest.mark.parametrize("version", [1, 2])
async def test_course_detail(make_sim: SimFactory, version: int) -> None:
    sim = await make_sim(items=200)
    course = (await by_type(sim))["course"]
    body = await sim.get_json(detail_path(sim, "courses", course["key"], version=version))
    assert body["key"] == course["key"]
    assert body["title"] == course["title"]
    assert not DROPPED & body.keys()
    assert "utm_" not in body["marketing_url"]
    assert body["enrollment_url"].startswith("https://")
    assert sim.srv.catalog_uuids[0] in body["enrollment_url"]
    assert all("enrollment_url" in run for run in body["course_runs"])
    assert "utm_" in course["marketing_url"]


async def test_course_run_detail_raw_and_percent_encoded(sim: Sim) -> None:
    run = (await by_type(sim))["courserun"]
    key = run["key"]
    assert key.startswith("course-v1:")
    assert key.count("+") == 2
    raw = await sim.get(detail_path(sim, "course-runs", key))
    encoded_path = detail_path(sim, "course-runs", quote(key, safe=""))
    assert "%2B" in encoded_path
    assert "%3A" in encoded_path
    encoded = await sim.get(encoded_path, encoded=True)
    assert raw.status == encoded.status == 200
    assert orjson.loads(await raw.read()) == orjson.loads(await encoded.read())
    body = orjson.loads(await raw.read())
    assert body["key"] == key
    assert not DROPPED & body.keys()
    assert "enrollment_url" in body
    # `+` in a path is a plus, never a space.
    spaced = await sim.get(detail_path(sim, "course-runs", key.replace("+", "%20")), encoded=True)
    assert spaced.status in {404}


async def test_nested_run_of_listed_course(sim: Sim) -> None:
    course = (await by_type(sim))["course"]
    run_key = course["course_runs"][0]["key"]
    body = await sim.get_json(detail_path(sim, "course-runs", run_key))
    assert body["key"] == run_key
    assert "enrollment_url" in body


async def test_program_detail(sim: Sim) -> None:
    program = (await by_type(sim))["program"]
    assert "key" not in program
    body = await sim.get_json(detail_path(sim, "programs", program["uuid"], version=2))
    assert body["uuid"] == program["uuid"]
    assert isinstance(body["enrollment_url"], str)
    assert program["enrollment_url"] is None
    for course in body["courses"]:
        assert "enrollment_url" in course
        assert all("enrollment_url" in run for run in course["course_runs"])
    assert not DROPPED & body.keys()


async def test_run_key_under_courses_is_an_html_404(sim: Sim) -> None:
    run = (await by_type(sim))["courserun"]
    resp = await sim.get(detail_path(sim, "courses", run["key"]))
    assert resp.status == 404
    assert resp.content_type == "text/html"
    resp = await sim.get(detail_path(sim, "course-runs", "edX+DemoX"))
    assert resp.content_type == "text/html"


async def test_trailing_slash_accepted(sim: Sim) -> None:
    course = (await by_type(sim))["course"]
    assert (await sim.get(detail_path(sim, "courses", course["key"]) + "/")).status == 200
    assert (await sim.get(sim.content_path() + "/")).status == 200


async def test_not_in_catalog_is_404_not_found(make_sim: SimFactory) -> None:
    sim = await make_sim(items=100, catalogs=3)
    first = {i.get("key") or i["uuid"]: i for i in await sim.walk(0)}
    third = await sim.walk(2)  # catalog 2 shares nothing with catalog 0
    outsider = next(i for i in third if i["content_type"] == "course")
    assert outsider["key"] not in first
    for key in (outsider["key"], "edX+DemoX", "HarvardX+CS50x"):
        resp = await sim.get(detail_path(sim, "courses", key))
        assert resp.status == 404
        assert orjson.loads(await resp.read()) == {"detail": "Not found."}
    pathway_items = [i for i in await sim.walk(1) if i["content_type"] == "learnerpathway"]
    for item in pathway_items[:1]:
        assert (await sim.get(detail_path(sim, "programs", item["uuid"], 1))).status == 404


async def test_foreign_or_unknown_catalog_is_403(sim: Sim) -> None:
    expected = {"detail": "Missing: enterprise.can_view_catalog"}
    foreign = sim.srv.foreign_catalog_uuid
    for path in (
        f"/enterprise/v2/enterprise-catalogs/{foreign}",
        f"/enterprise/v2/enterprise-catalogs/{foreign}/courses/edX+DemoX",
        "/enterprise/v1/enterprise-catalogs/00000000-0000-4000-8000-000000000000/courses/a+b",
        "/enterprise/v2/enterprise-catalogs/not-a-uuid",
    ):
        resp = await sim.get(path)
        assert resp.status == 403, path
        assert orjson.loads(await resp.read()) == expected


async def test_etag_and_304(make_sim: SimFactory) -> None:
    sim = await make_sim(etag=True)
    course = (await by_type(sim))["course"]
    path = detail_path(sim, "courses", course["key"])
    first = await sim.get(path)
    etag = first.headers["ETag"]
    assert etag.startswith('"')
    assert "Last-Modified" in first.headers
    again = await sim.get(path, headers=sim.headers(**{"If-None-Match": etag}))
    assert again.status == 304
    assert await again.read() == b""
    other = await sim.get(path, headers=sim.headers(**{"If-None-Match": '"nope"'}))
    assert other.status == 200
    stats = await sim.ops("GET", "/__stats")
    assert stats["not_modified_304"] == 1
    plain = await make_sim(etag=False)
    assert "ETag" not in (await plain.get(detail_path(plain, "courses", course["key"]))).headers


async def test_detail_404_transient(make_sim: SimFactory) -> None:
    sim = await make_sim(detail_404_rate=1.0, detail_404_times=2, rate_lms="0")
    course = (await by_type(sim))["course"]
    path = detail_path(sim, "courses", course["key"])
    statuses = [(await sim.get(path)).status for _ in range(4)]
    assert statuses == [404, 404, 200, 200]


async def test_detail_404_permanent(make_sim: SimFactory) -> None:
    sim = await make_sim(detail_404_rate=1.0, detail_404_mode="permanent", rate_lms="0")
    course = (await by_type(sim))["course"]
    path = detail_path(sim, "courses", course["key"])
    for _ in range(4):
        resp = await sim.get(path)
        assert resp.status == 404
        assert orjson.loads(await resp.read()) == {"detail": "Not found."}


async def test_detail_404_rate_is_a_fraction(make_sim: SimFactory) -> None:
    sim = await make_sim(items=300, detail_404_rate=0.5, detail_404_mode="permanent", rate_lms="0")
    courses = [i for i in await sim.walk(0) if i["content_type"] == "course"][:40]
    statuses = [(await sim.get(detail_path(sim, "courses", c["key"]))).status for c in courses]
    assert 5 < statuses.count(404) < 35
