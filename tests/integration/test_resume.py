"""Crash-exact resume: SIGTERM and SIGKILL mid-run, rerun, lose nothing, refetch little."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import orjson
import pytest

from harvester.errors import StateError
from harvester.pipeline import Harvest
from harvester.sim import SimServer
from tests.conftest import SimStarter, settings_for
from tests.integration.helpers import assert_exactly_once, truth

CONCURRENCY = 4


async def spawn(srv: SimServer, out: Path, tmp: Path, *extra: str
                ) -> asyncio.subprocess.Process:
    cfg = tmp / "h.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
    env = {**os.environ, "EDX_CLIENT_ID": srv.client_id, "EDX_CLIENT_SECRET": srv.client_secret}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harvester", "harvest", "--out", str(out), "--config", str(cfg),
        "--api-base", srv.base_url, "--rate-lms", "150/s", "--concurrency", str(CONCURRENCY),
        "--progress", "off", "--quiet", *extra, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def wait_for(cond: object, proc: asyncio.subprocess.Process, limit: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not cond():  # type: ignore[operator]
        if proc.returncode is not None or loop.time() > deadline:
            _, err = await proc.communicate()
            pytest.fail(f"harvester ended early ({proc.returncode}): {err.decode()[-800:]}")
        await asyncio.sleep(0.002)


def final_files(out: Path) -> list[Path]:
    return [p for p in out.glob("catalog=*/*") if not p.name.endswith(".part")]


async def test_sigterm_leaves_nothing_that_looks_complete(start_sim: SimStarter,
                                                          tmp_path: Path) -> None:
    srv = await start_sim(catalogs=2, items=150, latency_ms=2)
    expected = await truth(srv)
    out = tmp_path / "out"
    proc = await spawn(srv, out, tmp_path)
    await wait_for(lambda: srv.state.stats.detail_requests >= 40, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = await proc.communicate()
    assert proc.returncode == 143, err.decode()
    assert "resume" in err.decode()
    assert not (out / "manifest.json").exists()
    assert list(out.glob("catalog=*/*.part"))
    ledger_phases = {d.name for d in out.glob("catalog=*") if list(d.glob("*.part"))}
    assert ledger_phases, "the interrupted catalog must still be in .part files"
    # Rerun the same command: it resumes and ends exactly once.
    result = await Harvest(settings_for(srv, out, **{"rates.lms": "150/s"})).run()
    assert result.exit_code == 0
    assert_exactly_once(out, expected)


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_sigkill_at_random_moments_then_resume(start_sim: SimStarter, tmp_path: Path,
                                                     seed: int) -> None:
    """kill -9 during listing, details or finalising; every rerun continues; the end is
    exact, and only work that was in flight is fetched twice."""
    rng = random.Random(seed)
    srv = await start_sim(catalogs=2, items=160, latency_ms=1, seed=seed)
    expected = await truth(srv)
    n_details = sum(1 for keys in expected.values() for t, _ in keys if t != "learnerpathway")
    srv.state.stats.reset()
    out = tmp_path / "out"
    kills = 0
    stats = srv.state.stats
    for moment in ("listing", "details", "late"):
        proc = await spawn(srv, out, tmp_path)
        if moment == "listing":
            start = stats.snapshot()["requests"].get("content", {}).get("200", 0)
            await wait_for(lambda s=start: stats.snapshot()["requests"].get(  # type: ignore[misc]
                "content", {}).get("200", 0) >= s + 1, proc)
        else:
            target = stats.detail_requests + rng.randint(10, 120)
            await wait_for(lambda t=target: stats.detail_requests >= t, proc)  # type: ignore[misc]
        proc.kill()
        await proc.communicate()
        kills += 1
        # Whatever is final on disk must be a whole, committed catalog.
        for f in final_files(out):
            assert not f.name.endswith(".part")
    result = await Harvest(settings_for(srv, out, **{"rates.lms": "150/s"})).run()
    assert result.exit_code == 0
    assert_exactly_once(out, expected)
    refetched = srv.state.stats.detail_requests - n_details
    # Per kill: only the requests in flight (plus the one the writer was handed as the
    # signal landed). Lines already written are kept even if not yet checkpointed.
    assert refetched <= kills * (CONCURRENCY + 2), refetched
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    for cat, entry in manifest["catalogs"].items():
        assert sum(entry["lines"].values()) == len(expected[cat])
        assert entry["details_fetched"] + entry["listing_only"] == len(expected[cat])


async def test_changed_settings_refuse_to_resume(start_sim: SimStarter, tmp_path: Path) -> None:
    srv = await start_sim(catalogs=1, items=150, latency_ms=2)
    out = tmp_path / "out"
    proc = await spawn(srv, out, tmp_path)
    await wait_for(lambda: srv.state.stats.detail_requests >= 20, proc)
    proc.kill()
    await proc.communicate()
    with pytest.raises(StateError, match="--page-size"):
        await Harvest(settings_for(srv, out, **{"harvest.page_size": 50})).run()
    result = await Harvest(settings_for(srv, out, **{"harvest.page_size": 50}),
                           restart=True).run()
    assert result.exit_code == 0


def _small_disk() -> None:
    """In the child: files may not grow past 150 kB, as on a disk that fills up."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))


async def test_full_disk_is_one_line_and_loses_nothing(start_sim: SimStarter,
                                                       tmp_path: Path) -> None:
    srv = await start_sim(catalogs=2, items=150)
    expected = await truth(srv)
    out = tmp_path / "out"
    env = {**os.environ, "EDX_CLIENT_ID": srv.client_id, "EDX_CLIENT_SECRET": srv.client_secret}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harvester", "harvest", "--out", str(out), "--api-base",
        srv.base_url, "--rate-lms", "500/s", "--progress", "off", "--quiet", env=env,
        preexec_fn=_small_disk, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1
    assert len(lines) == 1 and "File too large" in lines[0] and "rerun" in lines[0]
    assert "Traceback" not in err.decode()
    assert not (out / "manifest.json").exists()
    # Room again: the same command resumes and ends exactly once.
    result = await Harvest(settings_for(srv, out)).run()
    assert result.exit_code == 0
    assert_exactly_once(out, expected)


async def _spawn_tenants(srv: SimServer, out: Path, tmp: Path) -> asyncio.subprocess.Process:
    toml, creds = srv.tenant_config()
    cfg = tmp / "tenants.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n" + toml)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harvester", "harvest", "--out", str(out), "--config", str(cfg),
        "--api-base", srv.base_url, "--rate-lms", "150/s", "--concurrency", str(CONCURRENCY),
        "--progress", "off", "--quiet", env={**os.environ, **creds},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
async def test_a_run_of_many_tenants_stopped_mid_run_resumes_each_exactly(
        start_sim: SimStarter, tmp_path: Path, how: signal.Signals) -> None:
    """SIGTERM (143, each tenant's files closed; checkpoints and commits were in worker
    threads) or SIGKILL in the middle of three tenants: the rerun of the same command
    completes every tenant exactly once, fetching again only what was in flight."""
    srv = await start_sim(tenants=3, catalogs=2, items=120, latency_ms=2)
    out = tmp_path / "out"
    proc = await _spawn_tenants(srv, out, tmp_path)
    await wait_for(lambda: srv.state.stats.detail_requests >= 150, proc)
    proc.send_signal(how)
    _, err = await proc.communicate()
    assert proc.returncode == (143 if how == signal.SIGTERM else -9), err.decode()
    assert not (out / "manifest.json").exists()
    proc = await _spawn_tenants(srv, out, tmp_path)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    summary = orjson.loads((out / "manifest.json").read_bytes())
    assert {r["status"] for r in summary["tenants"].values()} == {"complete"}
    data = srv.state.data
    for t in srv.tenants:
        tdir = out / f"tenant=sim-{t.index}"
        seen: dict[str, list[tuple[str, str]]] = {}
        for f in tdir.glob("catalog=*/*.ndjson"):
            for line in f.read_bytes().splitlines():
                h = orjson.loads(line)["_harvest"]
                seen.setdefault(h["catalog_uuid"], []).append((h["content_type"], h["key"]))
        assert set(seen) == {data.catalog_uuids[c] for c in t.catalogs}
        for keys in seen.values():
            assert len(keys) == len(set(keys)) == 120  # every item, once
