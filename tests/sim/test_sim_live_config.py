"""The forbid_catalogs knob and live knob changes through ``POST /__config``."""

from __future__ import annotations

import pytest
from simkit import SimFactory

from harvester.sim import SimConfig


async def test_forbidden_catalog_403s_content_and_details_until_healed(
    make_sim: SimFactory,
) -> None:
    sim = await make_sim(forbid_catalogs=("1",))
    assert (await sim.get(sim.content_path(0))).status == 200
    resp = await sim.get(sim.content_path(1))
    assert resp.status == 403
    assert "can_view_catalog" in (await resp.json())["detail"]
    healed = await sim.ops("POST", "/__config", {"forbid_catalogs": []})
    assert healed == {"forbid_catalogs": []}
    assert (await sim.get(sim.content_path(1))).status == 200
    await sim.ops("POST", "/__config", {"forbid_catalogs": ["0"]})
    assert (await sim.get(sim.content_path(0))).status == 403


async def test_config_endpoint_refuses_fixed_knobs_and_bad_values(make_sim: SimFactory) -> None:
    sim = await make_sim()
    for body in ({"items": 5}, {"forbid_catalogs": ["9"]}, [], {}):
        resp = await sim.session.post(sim.base + "/__config", json=body)
        assert resp.status == 400, body
    assert (await sim.get(sim.content_path(0))).status == 200


def test_forbid_catalogs_validated() -> None:
    with pytest.raises(ValueError, match="forbid_catalogs"):
        SimConfig(catalogs=2, forbid_catalogs=("2",))
    with pytest.raises(ValueError, match="forbid_catalogs"):
        SimConfig(forbid_catalogs=("x",))


async def test_omit_count_drops_count_from_content_pages_only_and_is_live(
    make_sim: SimFactory,
) -> None:
    sim = await make_sim(items=30, omit_count=True)
    body = await sim.get_json(sim.content_path(0), page_size=10)
    assert "count" not in body and len(body["results"]) == 10 and body["next"]
    # The catalog list keeps its count: only content pages are affected.
    assert "count" in await sim.get_json("/enterprise/v2/enterprise-catalogs")
    assert await sim.ops("POST", "/__config", {"omit_count": False}) == {"omit_count": False}
    assert (await sim.get_json(sim.content_path(0), page_size=10))["count"] == 30


async def test_config_endpoint_takes_int_indexes_and_answers_400_to_wrong_types(
    make_sim: SimFactory,
) -> None:
    sim = await make_sim(catalogs=3)
    # JSON has numbers: an index given as one is the same index.
    assert await sim.ops("POST", "/__config", {"forbid_catalogs": [1, "2"]}) == {
        "forbid_catalogs": ["1", "2"]}
    assert (await sim.get(sim.content_path(1))).status == 403
    wrong = ({"forbid_catalogs": [True]}, {"forbid_catalogs": [1.5]},
             {"forbid_catalogs": [None]}, {"forbid_catalogs": [[0]]}, {"forbid_catalogs": 1},
             {"forbid_catalogs": {"0": 1}}, {"detail_403_keys": [""]},
             {"detail_403_keys": [{}]}, {"fault_kinds": [601]}, {"fault_kinds": None},
             {"fault_rate": "x"}, {"fault_rate": None}, {"fault_rate": True},
             {"shuffle": "yes"}, {"shuffle": 1}, {"detail_404_times": 1.5},
             {"bomb_mb": "2"}, {"fault_scope": 5}, {"expires_in": 5}, {"expires_in": []})
    for body in wrong:
        resp = await sim.session.post(sim.base + "/__config", json=body)
        assert resp.status == 400, (body, resp.status)
        assert "detail" in await resp.json()
    # Nothing wrong was applied: catalog 1 is still the only one (with 2) forbidden.
    assert (await sim.get(sim.content_path(0))).status == 200
    assert (await sim.get(sim.content_path(1))).status == 403
