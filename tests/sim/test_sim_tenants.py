"""``harvester sim --tenants N``: N credentials, each with its own enterprise, catalogs
(neighbours share one), learners and budget; per-tenant faults and 403s; the start-up
banner carries the harvester's [[tenants]] config."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harvester.sim import SimConfig, SimServer
from tests.conftest import FakeTime, SimStarter


async def _token(s: aiohttp.ClientSession, srv: SimServer, cid: str, secret: str) -> Any:
    async with s.post(f"{srv.base_url}/oauth2/v1/access_token", data={
            "grant_type": "client_credentials", "client_id": cid, "client_secret": secret,
            "token_type": "jwt"}) as r:
        return r.status, (await r.json()).get("access_token")


async def _get(s: aiohttp.ClientSession, srv: SimServer, token: str, path: str
               ) -> tuple[int, Any]:
    async with s.get(srv.base_url + path, headers={"Authorization": f"JWT {token}",
                                                   "Accept": "application/json"}) as r:
        return r.status, await r.json()


async def test_each_tenant_sees_its_own_catalogs_and_learners(start_sim: SimStarter) -> None:
    srv = await start_sim(tenants=3, catalogs=2, items=10)
    uuids = srv.state.data.catalog_uuids
    async with aiohttp.ClientSession() as s:
        seen = []
        for t in srv.tenants:
            status, token = await _token(s, srv, t.client_id, t.client_secret)
            assert status == 200
            _, body = await _get(s, srv, token, "/enterprise/v1/enterprise-catalogs")
            seen.append([r["uuid"] for r in body["results"]])
            status, page = await _get(s, srv, token, f"/enterprise/v3/enterprise-customer/"
                                      f"{t.enterprise_uuid}/learner-summary")
            assert status == 200
            assert page["results"][0]["enterprise_customer_uuid"] == t.enterprise_uuid
            other = srv.tenants[(t.index + 1) % 3].enterprise_uuid
            status, _ = await _get(s, srv, token, f"/enterprise/v3/enterprise-customer/"
                                   f"{other}/learner-summary")
            assert status == 403
        assert seen == [[uuids[0], uuids[1]], [uuids[1], uuids[2]], [uuids[2], uuids[3]]]
        # tenant 0 cannot read tenant 2's own catalog; the wrong secret is refused
        _, tok0 = await _token(s, srv, srv.client_id, srv.client_secret)
        status, _ = await _get(s, srv, tok0, f"/enterprise/v2/enterprise-catalogs/{uuids[3]}")
        assert status == 403
        status, _ = await _token(s, srv, srv.tenants[1].client_id, srv.client_secret)
        assert status == 401
    assert len({t.enterprise_uuid for t in srv.tenants}) == 3


async def test_one_tenant_by_default_is_todays_simulator(start_sim: SimStarter) -> None:
    srv = await start_sim()
    assert len(srv.tenants) == 1 and srv.tenants[0].client_id == srv.client_id
    assert srv.catalog_uuids == srv.state.data.catalog_uuids[:2]
    assert "tenants" not in srv.state.info(srv.base_url)


async def test_budgets_are_per_credential(start_sim: SimStarter, fake_time: FakeTime) -> None:
    srv = await start_sim(clock=fake_time, tenants=2, rate_lms="5/min",
                          tenant_rate_lms=("1:2/min",))
    async with aiohttp.ClientSession() as s:
        codes = {}
        for t in srv.tenants:
            _, token = await _token(s, srv, t.client_id, t.client_secret)
            codes[t.index] = [(await _get(s, srv, token, "/enterprise/v1/enterprise-catalogs")
                               )[0] for _ in range(6)]
    assert codes[0] == [200] * 5 + [429]  # tenant 1's requests did not use tenant 0's
    assert codes[1] == [200] * 2 + [429] * 4
    by = srv.state.stats.snapshot()["by_client"]
    assert by[srv.tenants[1].client_id]["lms:429"] == 4
    assert by[srv.tenants[0].client_id]["lms:429"] == 1


async def test_forbid_and_fault_tenants_hit_only_those_tenants(start_sim: SimStarter) -> None:
    srv = await start_sim(tenants=2, catalogs=1, forbid_tenants=("1",), fault_rate=1.0,
                          fault_kinds=("503",), fault_tenants=("0",))
    async with aiohttp.ClientSession() as s:
        t0, t1 = srv.tenants
        _, tok0 = await _token(s, srv, t0.client_id, t0.client_secret)  # token: no fault
        _, tok1 = await _token(s, srv, t1.client_id, t1.client_secret)
        uuids = srv.state.data.catalog_uuids
        assert (await _get(s, srv, tok0, f"/enterprise/v2/enterprise-catalogs/{uuids[0]}"))[0] \
            == 503
        assert (await _get(s, srv, tok1, f"/enterprise/v2/enterprise-catalogs/{uuids[1]}"))[0] \
            == 403
        assert (await _get(s, srv, tok1, "/enterprise/v1/enterprise-catalogs"))[0] == 200
        async with s.post(srv.base_url + "/__config",
                          json={"forbid_tenants": [], "fault_tenants": ["1"]}) as r:
            assert r.status == 200
        assert (await _get(s, srv, tok0, f"/enterprise/v2/enterprise-catalogs/{uuids[0]}"))[0] \
            == 200


@pytest.mark.parametrize(("knobs", "says"), [
    ({"tenants": 0}, "tenants: must be in [1, 1000]"),
    ({"tenants": 600, "catalogs": 3}, "1000 distinct catalogs"),
    ({"tenants": 2, "forbid_tenants": ("2",)}, "forbid_tenants: must be tenant indexes"),
    ({"tenants": 2, "tenant_rate_lms": ("1-5/min",)}, "tenant_rate_lms: must be T:RATE"),
    ({"tenants": 2, "tenant_rate_lms": ("1:fast",)}, "tenant_rate_lms: rate must"),
])
def test_bad_tenant_knobs_are_refused(knobs: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("]", r"\]")):
        SimConfig(**knobs)


def test_banner_prints_a_tenant_config_the_harvester_loads(tmp_path: Path) -> None:
    from harvester.config import load_settings

    with subprocess.Popen([sys.executable, "-m", "harvester.sim", "--tenants", "2",
                           "--port", "0"], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("# end of tenants"):
                break
        proc.terminate()
    assert lines[0].startswith("base_url=")
    toml = "\n".join(x for x in lines[1:] if not x.startswith(("#", "export ")))
    env = dict(x.removeprefix("export ").split("=", 1) for x in lines
               if x.startswith("export "))
    assert [t["name"] for t in tomllib.loads(toml)["tenants"]] == ["sim-0", "sim-1"]
    cfg = tmp_path / "t.toml"
    cfg.write_text(toml)
    settings, _ = load_settings(cli={}, environ=env, config_file=cfg)
    assert [t.client_id_env for t in settings.tenants] == ["SIM_0_CLIENT_ID",
                                                          "SIM_1_CLIENT_ID"]
    assert set(env) == {"SIM_0_CLIENT_ID", "SIM_0_CLIENT_SECRET", "SIM_1_CLIENT_ID",
                        "SIM_1_CLIENT_SECRET"}
