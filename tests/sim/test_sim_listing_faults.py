"""Listing-fault knobs: a lying count, keyless items, keys listed twice, head inserts."""

from __future__ import annotations

from typing import Any

import pytest
from simkit import Sim, SimFactory

from harvester.sim import SimConfig


async def walk(sim: Sim, catalog: int = 0, size: int = 100) -> tuple[list[Any], list[int]]:
    """Every row of a catalog, page by page until `next` is null; and each page's count."""
    rows: list[Any] = []
    counts: list[int] = []
    page = 1
    while True:
        body = await sim.get_json(sim.content_path(catalog), page=page, page_size=size)
        rows.extend(body["results"])
        counts.append(body["count"])
        if not body["next"]:
            return rows, counts
        page += 1


async def test_lie_count_changes_only_the_reported_count(make_sim: SimFactory) -> None:
    sim = await make_sim(items=5, lie_count=2000)
    rows, counts = await walk(sim)
    assert len(rows) == 5 and counts == [2000]
    resp = await sim.get(sim.content_path(0), page=2, page_size=5)
    assert resp.status == 404 and (await resp.json())["detail"] == "Invalid page."


async def test_keyless_items_have_neither_key_nor_uuid(make_sim: SimFactory) -> None:
    sim = await make_sim(items=30, keyless_items=3)
    rows, counts = await walk(sim)
    keyless = [r for r in rows if "key" not in r and "uuid" not in r]
    assert len(rows) == counts[0] == 30 and len(keyless) == 3
    assert all(r.get("content_type") and r.get("title") for r in keyless)


async def test_keyless_items_is_live(make_sim: SimFactory) -> None:
    """A sync test lists the same items keyless one night and keyed the next."""
    sim = await make_sim(items=30)
    rows, _ = await walk(sim)
    assert await sim.ops("POST", "/__config", {"keyless_items": 3}) == {"keyless_items": 3}
    now, _ = await walk(sim)
    keyless = [r for r in now if "key" not in r and "uuid" not in r]
    assert len(keyless) == 3 and [r["title"] for r in now] == [r["title"] for r in rows]
    resp = await sim.session.post(sim.base + "/__config", json={"keyless_items": 31})
    assert resp.status == 400  # validated like the flag
    await sim.ops("POST", "/__config", {"keyless_items": 0})
    assert await walk(sim) == (rows, [30])


async def test_dup_keys_list_a_key_twice_with_other_content(make_sim: SimFactory) -> None:
    sim = await make_sim(items=30, dup_keys=2)
    rows, counts = await walk(sim, size=10)
    assert counts == [30] * 4 and len(rows) == 32  # count: the distinct items
    by_key: dict[str, list[Any]] = {}
    for r in rows:
        by_key.setdefault(r.get("key") or r["uuid"], []).append(r)
    twice = {k: v for k, v in by_key.items() if len(v) == 2}
    assert len(twice) == 2
    for first, second in twice.values():
        assert first != second and second["title"].endswith(")")
    assert rows[30:] == [v[1] for v in twice.values()]
    newer = [v[1]["content_last_modified"] > v[0]["content_last_modified"]
             for v in twice.values()]
    assert sorted(newer) == [False, True]


async def test_head_inserts_appear_at_the_head_over_time(make_sim: SimFactory) -> None:
    sim = await make_sim(items=30, head_inserts=3, head_insert_every=2)
    first = (await sim.get_json(sim.content_path(0), page_size=100))
    second = (await sim.get_json(sim.content_path(0), page_size=100))
    third = (await sim.get_json(sim.content_path(0), page_size=100))
    assert [first["count"], second["count"], third["count"]] == [27, 27, 28]
    assert third["results"][1:] == first["results"]
    for _ in range(6):
        last = await sim.get_json(sim.content_path(0), page_size=100)
    assert last["count"] == 30 and last["results"][3:] == first["results"]
    other = await sim.get_json(sim.content_path(1), page_size=100)
    assert other["count"] == 27  # counted per catalog


@pytest.mark.parametrize(("field", "value"), [
    ("lie_count", -1), ("keyless_items", 200), ("dup_keys", -1), ("head_inserts", 120),
    ("head_insert_every", 0)])
def test_listing_knobs_validated(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        SimConfig(items=120, **{field: value})
