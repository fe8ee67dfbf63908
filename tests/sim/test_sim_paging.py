"""DRF page-number paging behind the gateway: sizes, clamps, links and errors."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from simkit import Sim, SimFactory

from harvester.sim.render import InvalidPage, paginate, parse_page_query


async def test_default_page_size_is_10_and_body_keys_exact(sim: Sim) -> None:
    body = await sim.get_json(sim.content_path())
    assert list(body) == ["count", "next", "previous", "results"]
    assert body["count"] == 120
    assert len(body["results"]) == 10
    assert body["previous"] is None


async def test_page_size_clamped_at_max(make_sim: SimFactory) -> None:
    sim = await make_sim(items=250)
    body = await sim.get_json(sim.content_path(), page_size=1000)
    assert len(body["results"]) == 100
    sim2 = await make_sim(items=250, max_page_size=30)
    assert len((await sim2.get_json(sim2.content_path(), page_size=1000))["results"]) == 30


@pytest.mark.parametrize("size", ["0", "-5", "abc", "1.5", ""])
async def test_bad_page_size_falls_back_to_default(sim: Sim, size: str) -> None:
    body = await sim.get_json(sim.content_path(), page_size=size)
    assert len(body["results"]) == 10


async def test_limit_is_ignored_by_default(sim: Sim) -> None:
    body = await sim.get_json(sim.content_path(), limit=50)
    assert len(body["results"]) == 10
    assert "limit" not in (body["next"] or "")


async def test_limit_doc_mode(make_sim: SimFactory) -> None:
    sim = await make_sim(limit_mode="doc", items=300)
    assert len((await sim.get_json(sim.content_path()))["results"]) == 20
    assert len((await sim.get_json(sim.content_path(), limit=50))["results"]) == 50
    assert len((await sim.get_json(sim.content_path(), limit=500))["results"]) == 100


@pytest.mark.parametrize("page", ["13", "0", "-1", "abc", "2.0"])
async def test_invalid_pages_404(sim: Sim, page: str) -> None:
    resp = await sim.get(sim.content_path(), page=page)
    assert resp.status == 404
    assert orjson.loads(await resp.read()) == {"detail": "Invalid page."}


async def test_last_page(sim: Sim) -> None:
    body = await sim.get_json(sim.content_path(), page="last", page_size=50)
    assert len(body["results"]) == 20
    assert body["next"] is None
    assert body["previous"].endswith("?page=2&page_size=50")
    assert len((await sim.get_json(sim.content_path(), page=12))["results"]) == 10


async def test_next_is_absolute_on_public_base_with_sorted_query(make_sim: SimFactory) -> None:
    sim = await make_sim(public_base="https://api.edx.org")
    body = await sim.get_json(sim.content_path(), page_size=20, page=2, limit=7, foo="bar")
    expected = f"https://api.edx.org{sim.content_path()}"
    assert body["next"] == f"{expected}?page=3&page_size=20"
    # A link back to page 1 drops `page` entirely (DRF remove_query_param).
    assert body["previous"] == f"{expected}?page_size=20"
    body = await sim.get_json(sim.content_path(), page=3)
    assert body["previous"] == f"{expected}?page=2"


async def test_default_public_base_is_own_url(sim: Sim) -> None:
    body = await sim.get_json(sim.content_path(), page_size=100)
    parts = urlsplit(body["next"])
    assert f"{parts.scheme}://{parts.netloc}" == sim.base
    assert parts.path == sim.content_path()
    assert parse_qsl(parts.query) == [("page", "2"), ("page_size", "100")]
    # Following `next` literally works.
    follow = await sim.session.get(body["next"], headers=sim.headers())
    assert len(orjson.loads(await follow.read())["results"]) == 20


async def test_end_marker_null_vs_empty(make_sim: SimFactory) -> None:
    sim = await make_sim()
    body = await sim.get_json(sim.content_path(), page_size=100, page=2)
    assert body["next"] is None
    sim2 = await make_sim(end_marker="empty")
    body = await sim2.get_json(sim2.content_path(), page_size=100, page=2)
    assert body["next"] == ""
    body = await sim2.get_json(sim2.content_path(), page_size=100)
    assert body["previous"] == ""
    assert body["next"].startswith("http")


async def test_empty_catalog_is_page_one_with_count_zero(make_sim: SimFactory) -> None:
    sim = await make_sim(items=0)
    body = await sim.get_json(sim.content_path())
    assert body == {"count": 0, "next": None, "previous": None, "results": []}
    assert (await sim.get(sim.content_path(), page=2)).status == 404


async def test_catalog_lists_v1_and_v2(make_sim: SimFactory) -> None:
    sim = await make_sim(catalogs=13)
    v1 = await sim.get_json("/enterprise/v1/enterprise-catalogs")
    assert v1["count"] == 13
    assert len(v1["results"]) == 10
    first = v1["results"][0]
    assert list(first) == [
        "uuid",
        "title",
        "enterprise_customer",
        "enterprise_catalog_query",
        "created",
        "modified",
    ]
    assert first["enterprise_customer"] == sim.srv.enterprise_uuid
    assert (
        len((await sim.get_json("/enterprise/v1/enterprise-catalogs", page_size=500))["results"])
        == 13
    )
    v2 = await sim.get_json("/enterprise/v2/enterprise-catalogs", page_size=5)
    assert len(v2["results"]) == 5
    assert {"content_last_modified", "catalog_modified", "catalog_query_uuid", "query_title"} <= (
        v2["results"][0].keys()
    )
    all_v1 = (await sim.get_json("/enterprise/v1/enterprise-catalogs", page_size=100))["results"]
    assert [c["uuid"] for c in all_v1] == sim.srv.catalog_uuids
    created = [c["created"] for c in all_v1]
    assert created == sorted(created)
    assert sim.srv.foreign_catalog_uuid not in {c["uuid"] for c in all_v1}


def test_v2_catalog_list_page_size_unbounded() -> None:
    assert parse_page_query({"page_size": "5000"}, 10, None, "ignore").size == 5000


def test_paginate_unit() -> None:
    assert paginate(0, None, 10).num_pages == 1
    assert paginate(25, "last", 10).number == 3
    with pytest.raises(InvalidPage):
        paginate(25, "4", 10)
