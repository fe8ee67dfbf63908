"""Keyless rows never mask missing keyed items.

A keyless row (no ``key``, no ``uuid``) counts as listed, so a catalog whose count is
reached is complete. A keyless item listed twice with different content (re-indexed
while we walk) was two keyless rows, padding the count: shuffled walks that missed a
keyed item still reached it, and the run said ``complete`` with items missing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harvester.pipeline import Harvest
from tests.conftest import SimStarter, settings_for
from tests.integration.helpers import harvested, read_lines, truth


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6, 7, 8])
async def test_keyless_rows_listed_twice_never_make_a_run_complete_with_items_missing(
        start_sim: SimStarter, tmp_path: Path, seed: int) -> None:
    srv = await start_sim(catalogs=2, items=300, keyless_items=3, dup_keys=3, seed=seed)
    keyed = {cat: {k for k in keys if k[1] != "None"}
             for cat, keys in (await truth(srv)).items()}
    assert all(len(keys) == 297 for keys in keyed.values())
    # Walked plainly for the truth above; shuffled (seeded) for the harvest.
    srv.state.cfg = dataclasses.replace(srv.state.cfg, shuffle=True)
    result = await Harvest(settings_for(srv, tmp_path, **{
        "harvest.details": False, "harvest.page_concurrency": 1})).run()
    got = harvested(tmp_path)
    gaps = [e for e in read_lines(tmp_path / "errors.ndjson") if e["kind"] == "gap"]
    for cat in srv.catalog_uuids:
        entry = result.manifest["catalogs"][cat]  # type: ignore[index]
        missing = keyed[cat] - set(got.get(cat, []))
        assert entry["keyless"] == 3  # three keyless items, each listed twice
        if missing:
            assert result.status == "partial" and result.exit_code == 3, (seed, missing)
            assert entry["gaps"] >= len(missing)
            assert any(g["catalog_uuid"] == cat for g in gaps)
    if result.status == "complete":
        assert all(keyed[cat] <= set(got[cat]) for cat in srv.catalog_uuids)
