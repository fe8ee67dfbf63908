"""The case_twin_catalogs knob: two catalog ids that differ only in case, served apart."""

from __future__ import annotations

import pytest
from simkit import SimFactory

from harvester.sim import SimConfig


def _keys(body: dict[str, object]) -> set[str]:
    results = body["results"]
    assert isinstance(results, list)
    return {str(r.get("key") or r.get("uuid")) for r in results}


async def test_case_twins_are_distinct_catalogs_with_their_own_content(
    make_sim: SimFactory,
) -> None:
    sim = await make_sim(case_twin_catalogs=True, items=30)
    lower, upper = sim.srv.catalog_uuids[0], sim.srv.catalog_uuids[1]
    assert lower != upper and lower.lower() == upper.lower() and lower == lower.lower()
    listed = await sim.get_json("/enterprise/v1/enterprise-catalogs", page_size=100)
    assert {lower, upper} <= {row["uuid"] for row in listed["results"]}
    first = await sim.get_json(sim.content_path(0), page_size=100)
    second = await sim.get_json(sim.content_path(1), page_size=100)
    assert _keys(first) and _keys(second) - _keys(first)  # own content (stride overlap aside)
    # A detail is served from the twin that lists it, and only from that one.
    key = next(iter(_keys(second) - _keys(first)))
    row = next(r for r in second["results"] if (r.get("key") or r.get("uuid")) == key)
    kind = {"course": "courses", "courserun": "course-runs", "program": "programs"}[
        row["content_type"]]
    assert (await sim.get(f"{sim.content_path(1)}/{kind}/{key}")).status == 200
    assert (await sim.get(f"{sim.content_path(0)}/{kind}/{key}")).status == 404


async def test_without_the_knob_ids_are_looked_up_case_insensitively(
    make_sim: SimFactory,
) -> None:
    sim = await make_sim(items=10)
    upper = sim.content_path(0).rsplit("/", 1)[0] + "/" + sim.srv.catalog_uuids[0].upper()
    assert (await sim.get(upper)).status == 200


def test_case_twins_need_two_catalogs() -> None:
    with pytest.raises(ValueError, match="case_twin_catalogs"):
        SimConfig(catalogs=1, case_twin_catalogs=True)
