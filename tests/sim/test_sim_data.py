"""The dataset: determinism, ordering knobs, epochs and their change feed, laziness."""

from __future__ import annotations

import time
import tracemalloc
from collections import Counter
from typing import Any

from simkit import Sim, SimFactory

from harvester.sim import SimConfig
from harvester.sim.data import Dataset

VOLATILE = {
    "modified",
    "content_last_modified",
    "enrollment_count",
    "recent_enrollment_count",
    "avg_course_rating",
    "reviews_count",
}


def ident(item: dict[str, Any]) -> tuple[str, str]:
    return item["content_type"], item.get("key") or item["uuid"]


def stable(value: Any) -> Any:
    """Drop the fields that move at every epoch without being a real change."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b, c = Dataset(SimConfig(seed=3)), Dataset(SimConfig(seed=3)), Dataset(SimConfig(seed=4))
    assert a.catalog_uuids == b.catalog_uuids != c.catalog_uuids
    assert (a.client_id, a.client_secret) == (b.client_id, b.client_secret)
    assert a.client_id != c.client_id
    for p in (0, 17, 1999):
        assert a.item(a.gid_at(1, p, 0), 0) == b.item(b.gid_at(1, p, 0), 0)
    assert a.item(5, 0) != c.item(5, 0)
    assert a.learner_row(7, 0) == b.learner_row(7, 0)


def test_type_mix_and_identity_roundtrip() -> None:
    data = Dataset(SimConfig(items=4000, catalogs=1))
    items = [data.item(data.gid_at(0, p, 0), 0) for p in range(4000)]
    mix = Counter(i["content_type"] for i in items)
    assert 0.55 < mix["course"] / 4000 < 0.65
    assert 0.20 < mix["courserun"] / 4000 < 0.30
    assert 0.09 < mix["program"] / 4000 < 0.15
    assert 0.01 < mix["learnerpathway"] / 4000 < 0.05
    assert len({ident(i) for i in items}) == 4000
    for item in items[:300]:
        ctype = item["content_type"]
        if ctype == "course":
            assert item["aggregation_key"] == f"course:{item['key']}"
            assert item["key"].count("+") == 1
            assert data.content.gid_from_course_key(item["key"]) is not None
        elif ctype == "courserun":
            assert item["key"].startswith("course-v1:")
            assert item["aggregation_key"] == f"courserun:{item['parent_content_key']}"
            assert "uuid" not in item
        else:
            assert "key" not in item
            assert item["aggregation_key"] == f"{ctype}:{item['uuid']}"
            assert data.content.gid_from_uuid(item["uuid"]) is not None
        if ctype != "learnerpathway":
            assert "utm_medium=enterprise&utm_source=" in item["marketing_url"]


def test_catalogs_overlap_about_a_fifth() -> None:
    data = Dataset(SimConfig(items=500, catalogs=3))
    first, second = data.membership(0, 0), data.membership(1, 0)
    assert len(first & second) == 100
    assert not data.membership(0, 0) & data.membership(2, 0)


async def test_shuffle_changes_order_not_membership(make_sim: SimFactory) -> None:
    sim = await make_sim(items=100, shuffle=True)
    # One page holds the whole catalog, so each request shows one full permutation.
    one = [ident(i) for i in await sim.walk(page_size=100)]
    two = [ident(i) for i in await sim.walk(page_size=100)]
    assert one != two
    assert sorted(one) == sorted(two)
    assert len(set(one)) == 100
    # Across pages, every request reshuffles: a paged walk sees duplicates.
    paged = [ident(i) for i in await sim.walk(page_size=10)]
    assert len(paged) == 100
    assert len(set(paged)) < 100
    plain = await make_sim(items=100)
    assert [ident(i) for i in await plain.walk(page_size=10)] == [
        ident(i) for i in await plain.walk(page_size=100)
    ]


async def test_churn_makes_dupes_and_gaps_but_rewalks_find_everything(
    make_sim: SimFactory,
) -> None:
    sim = await make_sim(items=300, churn=1.0)
    truth = Dataset(SimConfig(items=300, catalogs=2, learners=60)).membership(0, 0)
    walk = [ident(i) for i in await sim.walk(page_size=10)]
    assert len(walk) == 300
    assert len(set(walk)) < 300  # duplicates, hence gaps, across pages
    seen = set(walk)
    for _ in range(10):
        seen |= {ident(i) for i in await sim.walk(page_size=100)}
    assert len(seen) == len(truth) == 300
    assert (await sim.get_json(sim.content_path()))["count"] == 300


async def test_epoch_changes_match_a_diff_of_full_listings(make_sim: SimFactory) -> None:
    sim = await make_sim(items=400, catalogs=2, mutation_rate=0.25)

    async def snapshot() -> dict[tuple[str, str, str], dict[str, Any]]:
        out = {}
        for c, uuid in enumerate(sim.srv.catalog_uuids):
            for item in await sim.walk(c):
                out[(uuid, *ident(item))] = item
        return out

    before = await snapshot()
    assert (await sim.ops("POST", "/__epoch", {"epoch": 2}))["epoch"] == 2
    after = await snapshot()
    expected = {(k, "delete") for k in before.keys() - after.keys()}
    expected |= {(k, "upsert") for k in after.keys() - before.keys()}
    expected |= {
        (k, "upsert") for k in before.keys() & after.keys() if stable(before[k]) != stable(after[k])
    }
    feed = await sim.ops("GET", "/__changes?from=0&to=2")
    got = {((c["catalog_uuid"], c["content_type"], c["key"]), c["op"]) for c in feed}
    assert len(got) == len(feed)
    assert got == expected
    ops = Counter(op for _, op in got)
    assert ops["delete"] > 0
    assert ops["upsert"] > ops["delete"]
    # Every surviving item's timestamps moved, changed or not.
    for key in before.keys() & after.keys():
        assert before[key]["content_last_modified"] < after[key]["content_last_modified"]
    assert (await sim.ops("GET", "/__info"))["epoch"] == 2
    assert await sim.ops("GET", "/__changes?from=2&to=2") == []


async def test_details_follow_the_epoch(make_sim: SimFactory) -> None:
    sim = await make_sim(items=200, mutation_rate=1.0, rate_lms="0")
    before = {i["key"]: i for i in await sim.walk() if i["content_type"] == "course"}
    await sim.ops("POST", "/__epoch", {"epoch": 1})
    after = {i["key"]: i for i in await sim.walk() if i["content_type"] == "course"}
    survivors = sorted(before.keys() & after.keys())
    assert survivors
    uuid = sim.srv.catalog_uuids[0]
    for key in survivors[:5]:
        detail = await sim.get_json(f"/enterprise/v1/enterprise-catalogs/{uuid}/courses/{key}")
        # mutation_rate=1.0: every item really changed, and the detail shows the new epoch.
        assert detail["short_description"] == after[key]["short_description"]
        assert detail["short_description"] != before[key]["short_description"]
    gone = sorted(before.keys() - after.keys())
    assert gone
    resp = await sim.get(f"/enterprise/v1/enterprise-catalogs/{uuid}/courses/{gone[0]}")
    assert resp.status == 404


async def test_epoch_endpoint_validates(sim: Sim) -> None:
    resp = await sim.session.post(sim.base + "/__epoch", data=b'{"epoch": "x"}')
    assert resp.status == 400
    resp = await sim.session.get(sim.base + "/__changes?from=a")
    assert resp.status == 400


async def test_million_item_catalog_is_lazy(make_sim: SimFactory) -> None:
    sim = await make_sim(items=1_000_000, catalogs=1)
    tracemalloc.start()
    try:
        started = time.perf_counter()
        body = await sim.get_json(sim.content_path(), page=5000, page_size=100)
        elapsed = time.perf_counter() - started
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert body["count"] == 1_000_000
    assert len(body["results"]) == 100
    assert body["next"].endswith("page=5001&page_size=100")
    assert peak < 50 * 1024 * 1024
    assert elapsed < 5.0
