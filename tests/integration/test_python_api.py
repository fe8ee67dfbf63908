"""The Python API end to end: ``harvester.harvest``, ``sync`` and ``export_learners``
called the way a scheduler calls them (a plain thread, no shell), against the simulator
on loopback in a background loop. Same runs as the CLI's, typed results, no exit codes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import harvester
from harvester.sim import SimConfig, SimServer
from tests.integration.helpers import LoopThread


@pytest.fixture
def sim() -> Iterator[SimServer]:
    lt = LoopThread()
    srv = SimServer(SimConfig(catalogs=2, items=40, rate_lms="0", rate_learners="0",
                              learners=30, fault_rate=0.0), port=0)
    lt.run(srv.__aenter__())
    try:
        yield srv
    finally:
        lt.run(srv.__aexit__(None, None, None))
        lt.close()


def _settings(srv: SimServer, tmp_path: Path, **overrides: object) -> harvester.Settings:
    cfg = tmp_path / "h.toml"
    cfg.write_text('[retry]\nbackoff_base = 0\nbackoff_cap = 0\n'
                   '[output]\nprogress = "off"\n'
                   f'[learners]\nenterprises = ["{srv.enterprise_uuid}"]\npii = "drop"\n')
    env = {"EDX_CLIENT_ID": srv.client_id, "EDX_CLIENT_SECRET": srv.client_secret,
           "EDX_API_BASE": srv.base_url}
    return harvester.Settings.load(cfg, environ=env, overrides={
        "rates.lms": "1000/s", "rates.learners": "1000/s",
        "output.out": str(tmp_path / "out"), **overrides})


def test_harvest_then_a_rerun_that_has_nothing_to_do(sim: SimServer, tmp_path: Path) -> None:
    settings = _settings(sim, tmp_path)
    result = harvester.harvest(settings)
    assert isinstance(result, harvester.RunResult)
    assert (result.status, result.exit_code) == ("complete", 0)
    assert result.manifest is not None
    assert result.manifest["totals"]["items"] == sum(
        c["unique_found"] for c in result.manifest["catalogs"].values()) > 0
    assert (tmp_path / "out" / "manifest.json").exists()
    again = harvester.harvest(settings)
    assert again.status == "complete" and "nothing to do" in again.message


def test_sync_promotes_a_good_night(sim: SimServer, tmp_path: Path) -> None:
    store = tmp_path / "store"
    night = harvester.sync(_settings(sim, tmp_path), store=store, as_of=1_767_225_600.0)
    assert isinstance(night, harvester.SyncResult)
    assert night.status == "complete" and night.exit_code == 0 and night.promoted
    assert night.previous is None and night.pruned == []
    assert (store / "latest").resolve() == night.snapshot.resolve()
    assert set(night.manifest.catalogs) == set(sim.catalog_uuids)


def test_export_learners_writes_the_drop_mode_export(sim: SimServer, tmp_path: Path) -> None:
    result = harvester.export_learners(_settings(sim, tmp_path))
    assert (result.status, result.exit_code) == ("complete", 0)
    assert result.manifest is not None
    assert result.manifest["pii"]["mode"] == "drop"
    assert result.manifest["totals"]["rows_written"] > 0
    ndjson = (tmp_path / "out" / "learners" / f"enterprise={sim.enterprise_uuid}"
              / "learner_summary.ndjson").read_text("utf-8")
    assert "user_email" not in ndjson
