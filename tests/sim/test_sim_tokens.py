"""Knobs for token-handling fault tests: a 403 that echoes the token, odd ``expires_in``."""

from __future__ import annotations

import jwt
import orjson
import pytest
from simkit import Sim, SimFactory


async def test_echo_token_puts_the_callers_authorization_in_every_403(
        make_sim: SimFactory) -> None:
    sim = await make_sim(forbid_catalogs=("1",), echo_token=True)
    resp = await sim.get(sim.content_path(1))
    assert resp.status == 403
    detail = orjson.loads(await resp.read())["detail"]
    assert detail.startswith(f"JWT {sim.token} ")
    assert "can_view_catalog" in detail
    ent = "/enterprise/v3/enterprise-customer/00000000-0000-0000-0000-000000000000/learner-summary"
    resp = await sim.get(ent)
    assert resp.status == 403
    assert sim.token in orjson.loads(await resp.read())["detail"]


async def test_without_echo_token_a_403_says_nothing_of_the_token(make_sim: SimFactory) -> None:
    sim = await make_sim(forbid_catalogs=("1",))
    resp = await sim.get(sim.content_path(1))
    assert sim.token not in (await resp.read()).decode()


async def test_echo_token_is_live(sim: Sim) -> None:
    await sim.ops("POST", "/__config", {"forbid_catalogs": ["0"], "echo_token": True})
    resp = await sim.get(sim.content_path(0))
    assert sim.token in orjson.loads(await resp.read())["detail"]


@pytest.mark.parametrize(("knob", "served"), [
    ("0", 0), ("-5", -5), ("2.5", 2.5), ("soon", "soon"), ("", ""), ("null", None),
    ("inf", "inf"),
])
async def test_expires_in_override_is_served_as_given(make_sim: SimFactory, knob: str,
                                                      served: object) -> None:
    sim = await make_sim(token=False, expires_in=knob, token_ttl=300)
    body = orjson.loads(await (await sim.new_token()).read())
    assert body["expires_in"] == served
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 300, "the JWT's own lifetime is token_ttl"


async def test_expires_in_omit_leaves_the_field_out(make_sim: SimFactory) -> None:
    sim = await make_sim(token=False, expires_in="omit")
    body = orjson.loads(await (await sim.new_token()).read())
    assert "expires_in" not in body and body["access_token"]


async def test_expires_in_default_is_token_ttl(make_sim: SimFactory) -> None:
    sim = await make_sim(token=False, token_ttl=77)
    assert orjson.loads(await (await sim.new_token()).read())["expires_in"] == 77
