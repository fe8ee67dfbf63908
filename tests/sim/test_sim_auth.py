"""Token endpoint and JWT authentication, as the LMS and the gateway answer them."""

from __future__ import annotations

import jwt
import orjson
from simkit import Sim, SimFactory

CATALOGS = "/enterprise/v1/enterprise-catalogs"


async def test_token_is_a_real_jwt_with_expiry(sim: Sim) -> None:
    resp = await sim.new_token()
    body = await resp.json()
    assert resp.status == 200
    assert body["token_type"] == "JWT"
    assert body["expires_in"] == 180
    assert body["scope"] == "read write profile email"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 180
    assert claims["sub"] == sim.srv.client_id
    assert {"jti", "client_id"} <= claims.keys()
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"


async def test_token_ttl_is_configurable(make_sim: SimFactory) -> None:
    sim = await make_sim(token_ttl=42)
    assert (await (await sim.new_token()).json())["expires_in"] == 42


async def test_invalid_client_and_grant(sim: Sim) -> None:
    resp = await sim.new_token(client_secret="wrong")
    assert resp.status == 401
    assert orjson.loads(await resp.read()) == {"error": "invalid_client"}
    resp = await sim.new_token(client_id="nobody")
    assert resp.status == 401
    resp = await sim.new_token(grant_type="password")
    assert resp.status == 400
    assert orjson.loads(await resp.read()) == {"error": "unsupported_grant_type"}


async def test_without_token_type_jwt_the_token_is_useless(sim: Sim) -> None:
    resp = await sim.new_token(token_type="bearer")
    body = orjson.loads(await resp.read())
    assert body["token_type"] == "Bearer"
    sim.token = body["access_token"]
    assert (await sim.get(CATALOGS)).status == 401


async def test_valid_jwt_is_accepted(sim: Sim) -> None:
    assert (await sim.get(CATALOGS)).status == 200


async def test_missing_header_is_a_gateway_400(sim: Sim) -> None:
    resp = await sim.get(CATALOGS, headers={"Accept": "application/json"})
    assert resp.status == 400
    assert orjson.loads(await resp.read()) == {"message": "Missing Authentication Token"}


async def test_bearer_prefix_is_not_authenticated(sim: Sim) -> None:
    headers = {"Authorization": f"Bearer {sim.token}", "Accept": "application/json"}
    resp = await sim.get(CATALOGS, headers=headers)
    assert resp.status == 401
    body = orjson.loads(await resp.read())
    assert body == {"detail": "Authentication credentials were not provided."}


async def test_garbage_and_forged_tokens_are_invalid(sim: Sim) -> None:
    claims = jwt.decode(sim.token, options={"verify_signature": False})
    forged = jwt.encode(claims, "x" * 40, algorithm="HS256")
    for token in ("garbage", "a.b.c", forged, sim.token + "x"):
        headers = {"Authorization": f"JWT {token}", "Accept": "application/json"}
        resp = await sim.get(CATALOGS, headers=headers)
        assert resp.status == 401, token
        assert orjson.loads(await resp.read()) == {"detail": "Invalid token."}


async def test_token_expires_on_the_injected_clock(sim: Sim) -> None:
    sim.clock.now += 170
    assert (await sim.get(CATALOGS)).status == 200
    sim.clock.now += 15  # 185 s after issue: past exp (180) + leeway (1)
    resp = await sim.get(CATALOGS)
    assert resp.status == 401
    assert orjson.loads(await resp.read()) == {"detail": "Invalid token."}
    fresh = await sim.new_token()
    sim.token = (await fresh.json())["access_token"]
    assert (await sim.get(CATALOGS)).status == 200


async def test_token_of_another_simulator_is_rejected(make_sim: SimFactory) -> None:
    first = await make_sim(seed=1)
    second = await make_sim(seed=2)
    second.token = first.token
    assert (await second.get(CATALOGS)).status == 401


async def test_explicit_credentials(make_sim: SimFactory) -> None:
    sim = await make_sim(client_id="my-id", client_secret="my-secret")
    assert (sim.srv.client_id, sim.srv.client_secret) == ("my-id", "my-secret")
    assert (await sim.get(CATALOGS)).status == 200
