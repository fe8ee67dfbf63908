"""Connection resets: every attempt goes through our RateGate and retry counter.

aiohttp re-sends an idempotent GET once by itself when a reused keep-alive connection is
reset; those attempts reached the server without being gated or counted, so the
manifest's numbers did not match the server's."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from harvester.obs import Stats
from harvester.pipeline import Harvest
from tests.conftest import SimStarter, settings_for


async def test_aiohttp_still_has_the_hidden_resend_switch_we_turn_off() -> None:
    """ApiClient sets this private attribute (aiohttp has no public switch): if aiohttp
    renamed it, the assignment would silently do nothing; this fails first."""
    async with aiohttp.ClientSession() as session:
        assert session._retry_connection is True


async def test_every_attempt_under_resets_is_counted_as_the_server_saw_it(
        start_sim: SimStarter, tmp_path: Path) -> None:
    srv = await start_sim(catalogs=1, items=120, fault_rate=0.3, fault_kinds=("reset",),
                          fault_scope="details", seed=5)
    stats = Stats()
    result = await Harvest(settings_for(srv, tmp_path), stats=stats).run()
    server = srv.state.stats.snapshot()
    resets = server["faults"].get("reset", 0)
    assert resets > 10, server
    mine = stats.as_dict()
    answered = {c: n for c, n in server["requests"].get("lms", {}).items() if c != "fault"}
    assert mine["requests"].get("lms", {}) == answered, (mine, server)
    # every reset the server made is one attempt of ours, retried (or, after its last
    # try, the detail's failure)
    errors = tmp_path / "errors.ndjson"
    failed = len(errors.read_text().splitlines()) if errors.exists() else 0
    assert result.exit_code == (3 if failed else 0)
    assert mine["retries_by_cause"].get("transport", 0) + failed == resets, (mine, server)
