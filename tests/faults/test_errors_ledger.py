"""The ledger, not ``errors.ndjson``, is the record of what failed.

The list of work to retry lived only in ``errors.ndjson``: deleted, truncated or replaced
after a partial run, the run stayed partial forever (the not-found counts stayed) and
never asked for those details again, even once the server healed. Failures are now
recorded in the ledger in the same transaction as the progress they belong to, and
``errors.ndjson`` is rendered from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harvester.pipeline import Harvest
from harvester.sim import SimServer
from tests.conftest import SimStarter, settings_for
from tests.faults.test_lifecycle import assert_errors_describe_output, errors, post_config
from tests.integration.helpers import assert_exactly_once, truth


def detail_404s(srv: SimServer) -> int:
    return int(srv.state.stats.snapshot()["requests"].get("lms", {}).get("404", 0))


def tamper(out: Path, how: str, outside: Path) -> None:
    path = out / "errors.ndjson"
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "link":
        path.unlink()
        path.symlink_to(outside)


@pytest.mark.parametrize("how", ["deleted", "truncated", "emptied", "link"])
async def test_a_rerun_retries_from_the_ledger_whatever_happened_to_errors_ndjson(
        start_sim: SimStarter, tmp_path: Path, how: str) -> None:
    srv = await start_sim(catalogs=3, items=60, seed=4, detail_404_rate=0.2,
                          detail_404_mode="permanent")
    out = tmp_path / "out"
    outside = tmp_path / "not-ours.ndjson"
    outside.write_bytes(b'{"kind": "gap", "catalog_uuid": "x", "message": "not ours"}\n')
    settings = settings_for(srv, out, **{"harvest.detail_404_retries": 0})
    first = await Harvest(settings).run()
    assert first.exit_code == 3
    missing = sorted((e["catalog_uuid"], e["key"]) for e in errors(out))
    assert missing and {e["kind"] for e in errors(out)} == {"not_found"}
    tamper(out, how, outside)
    asked = detail_404s(srv)
    again = await Harvest(settings).run()
    assert (again.exit_code, again.status) == (3, "partial")
    assert detail_404s(srv) - asked == len(missing), "the failed details were not retried"
    assert not (out / "errors.ndjson").is_symlink()
    assert sorted((e["catalog_uuid"], e["key"]) for e in errors(out)) == missing
    assert_errors_describe_output(out)
    await post_config(srv, detail_404_rate=0.0)
    healed = await Harvest(settings).run()
    assert (healed.exit_code, healed.status) == (0, "complete")
    assert_exactly_once(out, await truth(srv))
    assert errors(out) == []
    assert outside.read_bytes().startswith(b'{"kind": "gap"')  # never written through


async def test_a_failed_catalog_is_retried_after_errors_ndjson_is_deleted(
        start_sim: SimStarter, tmp_path: Path) -> None:
    srv = await start_sim(catalogs=2, items=30, forbid_catalogs=("1",))
    out = tmp_path / "out"
    assert (await Harvest(settings_for(srv, out)).run()).exit_code == 3
    (out / "errors.ndjson").unlink()
    again = await Harvest(settings_for(srv, out)).run()
    assert again.exit_code == 3
    lines: list[dict[str, Any]] = errors(out)
    assert [(e["catalog_uuid"], e["kind"]) for e in lines] == [
        (srv.catalog_uuids[1], "catalog_failed")]
    await post_config(srv, forbid_catalogs=[])
    assert (await Harvest(settings_for(srv, out)).run()).exit_code == 0
    assert_exactly_once(out, await truth(srv))
