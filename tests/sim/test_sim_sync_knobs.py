"""The detail_403_* knobs (persistent per-key 403s, healed live) and drop_catalog_at_epoch."""

from __future__ import annotations

from typing import Any

import pytest
from simkit import Sim, SimFactory

from harvester.sim import SimConfig


def _detail_path(sim: Sim, catalog: int, item: dict[str, Any]) -> str:
    kind = {"course": "courses", "courserun": "course-runs", "program": "programs"}
    key = item["uuid"] if item["content_type"] == "program" else item["key"]
    return f"{sim.content_path(catalog)}/{kind[item['content_type']]}/{key}"


async def _detailed(sim: Sim, catalog: int = 0) -> list[dict[str, Any]]:
    return [i for i in await sim.walk(catalog) if i["content_type"] in
            ("course", "courserun", "program")]


async def test_detail_403_rate_picks_the_same_keys_every_time_until_healed(
        make_sim: SimFactory) -> None:
    sim = await make_sim(detail_403_rate=0.2, rate_lms="0")
    items = await _detailed(sim)
    first = [(await sim.get(_detail_path(sim, 0, i))).status for i in items]
    again = [(await sim.get(_detail_path(sim, 0, i))).status for i in items]
    assert first == again  # persistent: the same keys, every call
    assert set(first) == {200, 403}
    assert 0.05 < first.count(403) / len(first) < 0.4
    await sim.ops("POST", "/__config", {"detail_403_rate": 0})
    assert {(await sim.get(_detail_path(sim, 0, i))).status for i in items} == {200}


async def test_detail_403_keys_names_items(make_sim: SimFactory) -> None:
    sim = await make_sim(rate_lms="0")
    items = await _detailed(sim)
    target = items[3]
    key = target["uuid"] if target["content_type"] == "program" else target["key"]
    await sim.ops("POST", "/__config", {"detail_403_keys": [key]})
    statuses = {i["key"]: (await sim.get(_detail_path(sim, 0, i))).status for i in items[:8]}
    assert [k for k, s in statuses.items() if s == 403] == [target["key"]]
    resp = await sim.get(_detail_path(sim, 0, target))
    assert "permission" in (await resp.json())["detail"]
    await sim.ops("POST", "/__config", {"detail_403_keys": []})
    assert (await sim.get(_detail_path(sim, 0, target))).status == 200


async def test_dropped_catalog_leaves_the_lists_at_its_epoch(make_sim: SimFactory) -> None:
    sim = await make_sim(catalogs=3, drop_catalog_at_epoch=("1:2",), rate_lms="0")
    uuids = sim.srv.catalog_uuids
    item = (await _detailed(sim, 1))[0]
    for epoch, listed in ((0, uuids), (1, uuids), (2, [uuids[0], uuids[2]])):
        await sim.ops("POST", "/__epoch", {"epoch": epoch})
        v1 = await sim.get_json("/enterprise/v1/enterprise-catalogs")
        v2 = await sim.get_json("/enterprise/v2/enterprise-catalogs")
        assert [r["uuid"] for r in v1["results"]] == listed
        assert v1["count"] == len(listed)
        assert [r["uuid"] for r in v2["results"]] == listed
        gone = epoch >= 2
        assert (await sim.get(sim.content_path(1))).status == (404 if gone else 200)
        assert (await sim.get(_detail_path(sim, 1, item))).status == (404 if gone else 200)
        assert (await sim.get(sim.content_path(0))).status == 200
    changes = await sim.ops("GET", "/__changes?from=1&to=2")
    dropped = [c for c in changes if c["catalog_uuid"] == uuids[1]]
    assert dropped and all(c["op"] == "delete" for c in dropped)
    assert len(dropped) == len(await _all_at(sim, 1, epoch=1))


async def _all_at(sim: Sim, catalog: int, *, epoch: int) -> list[dict[str, Any]]:
    back = (await sim.ops("GET", "/__info"))["epoch"]
    await sim.ops("POST", "/__epoch", {"epoch": epoch})
    try:
        return await sim.walk(catalog)
    finally:
        await sim.ops("POST", "/__epoch", {"epoch": back})


@pytest.mark.parametrize("spec", ["2:1", "x:1", "1", "1:-1", "1:x"])
def test_drop_catalog_at_epoch_validated(spec: str) -> None:
    with pytest.raises(ValueError, match="drop_catalog_at_epoch"):
        SimConfig(catalogs=2, drop_catalog_at_epoch=(spec,))


def test_detail_403_knobs_validated() -> None:
    with pytest.raises(ValueError, match="detail_403_rate"):
        SimConfig(detail_403_rate=1.5)
    with pytest.raises(ValueError, match="detail_403_keys"):
        SimConfig(detail_403_keys=("",))


async def test_fault_scope_details_spares_listings(make_sim: SimFactory) -> None:
    sim = await make_sim(rate_lms="0", fault_rate=1.0, fault_kinds=("503",),
                         fault_scope="details")
    items = await _detailed(sim)  # every content page answers
    assert items
    assert (await sim.get("/enterprise/v1/enterprise-catalogs")).status == 200
    assert {(await sim.get(_detail_path(sim, 0, i))).status for i in items[:5]} == {503}
    await sim.ops("POST", "/__config", {"fault_scope": "all"})
    assert (await sim.get(sim.content_path(0))).status == 503
    with pytest.raises(ValueError, match="fault_scope"):
        SimConfig(fault_scope="pages")
