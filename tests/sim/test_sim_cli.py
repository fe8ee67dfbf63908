"""``python -m harvester.sim``: the one-line banner, serving, clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from harvester.sim import SimConfig
from harvester.sim.__main__ import build_parser, config_from_args, main

ROOT = Path(__file__).resolve().parents[2]


async def test_cli_prints_one_line_serves_and_exits_cleanly() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harvester.sim",
        "--port",
        "0",
        "--items",
        "50",
        "--seed",
        "7",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=20)).decode()
        match = re.fullmatch(r"base_url=(\S+) client_id=(\S+) client_secret=(\S+)\n", line)
        assert match, line
        base, client_id, secret = match.groups()
        assert base.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as session:
            form = {
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
                "token_type": "jwt",
            }
            async with session.post(base + "/oauth2/v1/access_token", data=form) as resp:
                assert resp.status == 200
                token = (await resp.json())["access_token"]
            headers = {"Authorization": f"JWT {token}", "Accept": "application/json"}
            async with session.get(
                base + "/enterprise/v1/enterprise-catalogs", headers=headers
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["count"] == 3
            async with session.get(base + "/__info") as resp:
                assert (await resp.json())["config"]["seed"] == 7
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=20) == 0
        rest = await proc.stdout.read()
        assert rest == b""  # exactly one line
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_credentials_are_deterministic_from_seed() -> None:
    parser = build_parser()
    one = config_from_args(parser.parse_args(["--seed", "3"]))
    assert one == SimConfig(seed=3)


def test_every_config_field_is_a_flag() -> None:
    parser = build_parser()
    argv = [
        "--seed",
        "9",
        "--catalogs",
        "4",
        "--items",
        "10",
        "--learners",
        "5",
        "--epoch",
        "1",
        "--mutation-rate",
        "0.1",
        "--client-id",
        "cid",
        "--client-secret",
        "sec",
        "--token-ttl",
        "60",
        "--max-page-size",
        "50",
        "--learner-max-page-size",
        "500",
        "--rate-lms",
        "20/s",
        "--rate-learners",
        "none",
        "--limit-mode",
        "doc",
        "--accept-mode",
        "backend",
        "--end-marker",
        "empty",
        "--public-base",
        "https://api.edx.org",
        "--strip-retry-after",
        "--gateway-remap",
        "--latency-ms",
        "5",
        "--jitter-ms",
        "1",
        "--fault-rate",
        "0.1",
        "--fault-kinds",
        "500,reset",
        "--fault-token",
        "--fault-scope",
        "details",
        "--detail-404-rate",
        "0.2",
        "--detail-404-mode",
        "permanent",
        "--detail-404-times",
        "3",
        "--shuffle",
        "--churn",
        "0.5",
        "--etag",
        "--forbid-catalogs",
        "1",
        "--echo-token",
        "--expires-in",
        "soon",
        "--omit-count",
        "--detail-403-rate",
        "0.05",
        "--detail-403-keys",
        "edX+DemoX",
        "--drop-catalog-at-epoch",
        "1:2",
        "--case-twin-catalogs",
        "--lie-count",
        "2000",
        "--keyless-items",
        "2",
        "--dup-keys",
        "3",
        "--head-inserts",
        "4",
        "--head-insert-every",
        "5",
        "--slow-drip-ms",
        "20",
        "--slow-drip-rate",
        "0.5",
        "--bomb-rate",
        "0.1",
        "--bomb-mb",
        "8",
        "--tenants",
        "3",
        "--tenant-rate-lms",
        "1:5/min",
        "--forbid-tenants",
        "2",
        "--fault-tenants",
        "1",
    ]
    cfg = config_from_args(parser.parse_args(argv))
    defaults = SimConfig()
    for field in dataclasses.fields(SimConfig):
        assert getattr(cfg, field.name) != getattr(defaults, field.name), field.name
    assert cfg.fault_kinds == ("500", "reset")


def test_invalid_flag_values_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--fault-kinds", "boom"])
    assert info.value.code == 2
    assert "fault_kinds" in capsys.readouterr().err
