"""``--publish`` with ``[[tenants]]``: each tenant that finished is published under
``URL/tenant=<name>/`` as it would be alone (a store's ``latest.json`` per tenant), the
run summary last of all, and a tenant that failed publishes nothing. Against
``harvester sim --tenants N`` over loopback, to moto's S3 server through s3fs or to a
``file://`` directory; ``harvester verify`` then reads the published prefix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from harvester import cli
from harvester.publish import INDEX_NAME
from harvester.sim import SimServer
from tests.features.s3kit import CREDENTIALS, Moto, S3Proxy, objects
from tests.integration.helpers import LoopThread
from tests.integration.test_tenants import config, harvest, load, start


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def sim(loop: LoopThread) -> Iterator[SimServer]:
    srv = start(loop)
    yield srv
    loop.run(srv.close())


def tenant_files(root: Path, tenant: str) -> dict[str, bytes]:
    """What a tenant's harvest publishes: its manifest, catalogs, errors, item files."""
    base = root / f"tenant={tenant}"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in base.rglob("*")
            if p.is_file() and ".state" not in p.parts and "learners" not in p.parts}


def test_a_tenants_harvest_publishes_each_finished_tenant_then_the_summary(
        sim: SimServer, loop: LoopThread, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    moto = Moto()
    proxy = S3Proxy(moto.endpoint, loop).start()
    try:
        moto.fs().mkdir("edx-tenants")
        for k, v in {**CREDENTIALS, "AWS_ENDPOINT_URL": proxy.url}.items():
            monkeypatch.setenv(k, v)
        cfg, out, url = config(tmp_path, sim, monkeypatch), tmp_path / "out", \
            "s3://edx-tenants/run"
        monkeypatch.setenv("SIM_1_CLIENT_SECRET", "wrong-secret-value")
        assert harvest(cfg, out, sim, "--publish", url) == 3  # sim-1 refused
        remote = objects(moto.fs(), "edx-tenants/run")
        assert orjson.loads(remote["manifest.json"]) == load(out / "manifest.json")
        for name in ("sim-0", "sim-2"):
            mine = {k: v for k, v in remote.items()
                    if k.startswith(f"tenant={name}/") and not k.endswith(INDEX_NAME)}
            assert mine == tenant_files(out, name)
        assert not any(k.startswith("tenant=sim-1/") for k in remote), "a failed tenant"
        assert proxy.puts()[-1] == "/edx-tenants/run/manifest.json", "the summary is last"
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
        assert cli.main(["verify", url]) == 0

        # The refused tenant heals; the rerun publishes it, and nothing else again.
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("SIM_1_CLIENT_SECRET", sim.tenant_config()[1]["SIM_1_CLIENT_SECRET"])
        before = len(proxy.puts())
        assert harvest(cfg, out, sim, "--publish", url) == 0
        again = proxy.puts()[before:]
        assert again and all(p.startswith("/edx-tenants/run/tenant=sim-1/")
                             for p in again[:-1]), again
        assert again[-1] == "/edx-tenants/run/manifest.json"
    finally:
        proxy.close()
        moto.stop()


def test_a_tenants_sync_and_learner_export_publish_per_tenant(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml, _ = sim.tenant_config()
    tables = "".join(
        chunk.replace(f'name = "sim-{t.index}"',
                      f'name = "sim-{t.index}"\nenterprises = ["{t.enterprise_uuid}"]')
        for t, chunk in zip(sim.tenants, toml.split("[[tenants]]")[1:], strict=True)
        for chunk in ["[[tenants]]" + chunk])
    cfg = config(tmp_path, sim, monkeypatch, extra='[learners]\npii = "drop"\n',
                 tables=tables)
    store, out, lake = tmp_path / "store", tmp_path / "out", tmp_path / "lake"
    lake.mkdir()
    assert cli.main(["sync", "--config", str(cfg), "--store", str(store), "--api-base",
                     sim.base_url, "--rate-lms", "2000/s", "--as-of", "2026-01-01",
                     "--publish", f"file://{lake}/store"]) == 0
    for t in sim.tenants:
        local = store / f"tenant=sim-{t.index}"
        pointer = orjson.loads((lake / "store" / f"tenant=sim-{t.index}" / "latest.json")
                               .read_bytes())
        assert pointer["snapshot"] == (local / "latest").resolve().name
        assert (lake / "store" / f"tenant=sim-{t.index}" / pointer["manifest"]).exists()
    assert orjson.loads((lake / "store" / "manifest.json").read_bytes())["kind"] == "sync"
    assert cli.main(["verify", f"file://{lake}/store"]) == 0

    assert cli.main(["learners", "--config", str(cfg), "--out", str(out), "--api-base",
                     sim.base_url, "--rate-learners", "2000/s",
                     "--publish", f"file://{lake}/out"]) == 0
    for t in sim.tenants:
        published = lake / "out" / f"tenant=sim-{t.index}" / "learners"
        assert (published / "manifest.json").read_bytes() == \
            (out / f"tenant=sim-{t.index}" / "learners" / "manifest.json").read_bytes()
    assert (lake / "out" / "learners-manifest.json").read_bytes() == \
        (out / "learners-manifest.json").read_bytes()
    assert cli.main(["verify", f"file://{lake}/out"]) == 0
