"""The HTTP request path under hostile servers: drips, bombs, dead hosts, maintenance pages.

Every test talks real HTTP over loopback (the simulator, or a bare socket server for a host
that accepts and never answers). Back-off runs on a fake clock. Where a real socket timeout
must fire it is set to a few hundredths of a second on a server that drips, and the test
asserts on the error, never on elapsed time. ``no_hang`` is only a safety net: on code that
ignores the deadlines these tests would otherwise wait for minutes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from harvester import cli
from harvester.client import ApiClient, ThrottleClass, catalogs_path, content_path
from harvester.errors import (
    ConnectError,
    ReadTimeout,
    ResponseTooLarge,
    UnexpectedXML,
    Unreachable,
)
from harvester.learners import LearnerExport, LearnerOptions, PiiMode, PiiPolicy
from harvester.obs import Stats
from harvester.pipeline import Harvest
from tests.conftest import FakeTime, SimStarter, settings_for
from tests.integration.helpers import assert_exactly_once, read_lines, truth

T = TypeVar("T")


async def no_hang(coro: Coroutine[Any, Any, T], seconds: float = 30.0) -> T:
    """Run ``coro``; a hang (the bug these tests catch) fails the test instead of CI."""
    try:
        async with asyncio.timeout(seconds):
            return await coro
    except TimeoutError:
        pytest.fail(f"still waiting after {seconds} s: the request has no deadline")


def errors_of(out: Path) -> list[dict[str, Any]]:
    path = out / "errors.ndjson"
    return read_lines(path) if path.exists() else []


# --- #10.6: every attempt has a deadline; max_time bounds the attempt in flight ----------

async def test_slow_drip_trips_the_per_attempt_deadline(start_sim: SimStarter,
                                                        tmp_path: Path) -> None:
    """A body dripped a byte every 200 ms never trips sock_read; the total deadline does."""
    srv = await start_sim(catalogs=1, items=5, slow_drip_ms=200)
    settings = settings_for(srv, tmp_path, **{"api.request_timeout": 0.05,
                                              "retry.max_tries": 2})
    async with ApiClient(settings) as client:
        with pytest.raises(ReadTimeout, match=r"api\.request_timeout") as info:
            await no_hang(client.get_json(ThrottleClass.CONTENT,
                                          content_path(srv.catalog_uuids[0])))
    assert "0.05" in str(info.value)


async def test_some_dripping_answers_still_give_every_item_once(start_sim: SimStarter,
                                                                tmp_path: Path) -> None:
    """A slow-drip server on 5% of answers: those attempts time out, are retried, and the
    run completes with every item exactly once."""
    srv = await start_sim(catalogs=2, items=60, slow_drip_ms=200, slow_drip_rate=0.05)
    expected = await truth(srv)
    stats = Stats()
    result = await no_hang(Harvest(settings_for(srv, tmp_path, **{"api.request_timeout": 0.05}),
                                   stats=stats).run())
    assert result.exit_code == 0 and result.status == "complete"
    assert_exactly_once(tmp_path, expected)
    assert stats.retries["transport"] > 0, "no answer was dripped: the test proves nothing"


async def test_max_time_bounds_the_attempt_in_flight(start_sim: SimStarter,
                                                     tmp_path: Path) -> None:
    """retry.max_time is the whole life of a request, including the attempt in flight."""
    srv = await start_sim(catalogs=1, items=5, slow_drip_ms=200)
    fake = FakeTime()
    settings = settings_for(srv, tmp_path, **{"retry.max_time": 0.05})  # request_timeout 60
    async with ApiClient(settings, clock=fake, sleep=fake.sleep) as client:
        request = asyncio.ensure_future(client.get_json(ThrottleClass.CONTENT,
                                                        content_path(srv.catalog_uuids[0])))
        async def dripping() -> None:
            while not srv.state.stats.requests["content"]:  # answered: its body drips now
                await asyncio.sleep(0)
        await no_hang(dripping())
        fake.now += 1.0  # the injected clock passes max_time with the attempt in flight
        with pytest.raises(ReadTimeout, match=r"retry\.max_time"):
            await no_hang(request)


async def test_token_endpoint_has_the_same_deadline(start_sim: SimStarter,
                                                    tmp_path: Path) -> None:
    """A token endpoint that drips is cut off too; it never answered, so: fail fast."""
    srv = await start_sim(catalogs=1, items=5, slow_drip_ms=200, fault_token=True)
    fake = FakeTime()
    settings = settings_for(srv, tmp_path, **{"api.request_timeout": 0.05})
    async with ApiClient(settings, clock=fake, sleep=fake.sleep) as client:
        with pytest.raises(Unreachable, match="timed out"):
            await no_hang(client.get_json(ThrottleClass.LMS, catalogs_path()))


# --- #10.7: a response size cap, measured after decompression ---------------------------

async def test_gzip_bomb_fails_as_too_large_and_a_rerun_completes(start_sim: SimStarter,
                                                                  tmp_path: Path) -> None:
    """64 MiB inflated from a small gzip body: over the 32 MiB default cap, the item is
    recorded failed (not retried), the run is partial; once the server behaves, a fresh
    run completes with every item exactly once. (Rerun semantics are the pipeline's.)"""
    srv = await start_sim(catalogs=1, items=40, bomb_rate=0.1, bomb_mb=64, seed=3)
    expected = await truth(srv)
    settings = settings_for(srv, tmp_path)
    first = await Harvest(settings).run()
    bombs = srv.state.stats.faults["bomb"]
    assert bombs > 0, "no bomb was served: the test proves nothing"
    assert first.exit_code == 3 and first.status == "partial"
    errors = errors_of(tmp_path)
    assert len(errors) == bombs  # one line per bomb: never retried
    assert {e["error"] for e in errors} == {"ResponseTooLarge"}
    assert {e["kind"] for e in errors} <= {"detail_failed", "page_failed"}
    assert all("api.max_response_bytes" in e["message"] for e in errors)

    srv.state.cfg = dataclasses.replace(srv.state.cfg, bomb_rate=0.0)
    second = await Harvest(settings, restart=True).run()
    assert second.exit_code == 0
    assert_exactly_once(tmp_path, expected)
    assert errors_of(tmp_path) == []


async def test_cap_is_configurable_and_token_answers_are_capped(start_sim: SimStarter,
                                                                tmp_path: Path) -> None:
    """A 2 MiB answer passes the default cap but not a 1 MiB one; a bombed token answer
    is refused as too large rather than inflated."""
    srv = await start_sim(catalogs=1, items=5, bomb_rate=1.0, bomb_mb=2)
    async with ApiClient(settings_for(srv, tmp_path)) as client:
        resp = await client.get_json(ThrottleClass.CONTENT, content_path(srv.catalog_uuids[0]))
        assert resp.body["count"] == 5
    small = settings_for(srv, tmp_path, **{"api.max_response_bytes": 1 << 20})
    stats = Stats()
    async with ApiClient(small, stats=stats) as client:
        with pytest.raises(ResponseTooLarge, match="1048576"):
            await client.get_json(ThrottleClass.CONTENT, content_path(srv.catalog_uuids[0]))
    assert stats.total_requests("content") == 1  # not retried

    bombed_token = await start_sim(catalogs=1, items=5, bomb_rate=1.0, bomb_mb=2,
                                   fault_token=True)
    async with ApiClient(settings_for(bombed_token, tmp_path)) as client:
        with pytest.raises(ResponseTooLarge, match="token"):
            await client.get_json(ThrottleClass.LMS, catalogs_path())


# --- #10.9: retries in one place; fail fast on a host that never answered ----------------

def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


class SilentHost(str):
    """The URL of a host that never answers; ``accepted`` counts its connections."""

    accepted = 0


@pytest.fixture
async def silent_host() -> AsyncIterator[SilentHost]:
    """A server that accepts connections and never answers (until the client hangs up)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host.accepted += 1
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    host = SilentHost(f"http://127.0.0.1:{port}")
    yield host
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("cause", ["refused", "dns", "tls", "timeout"])
async def test_a_host_that_never_answered_fails_fast_naming_the_cause(
        cause: str, start_sim: SimStarter, silent_host: str, tmp_path: Path) -> None:
    """Wrong base URL: one clear line within 60 s (fake clock), whatever max_tries says."""
    srv = await start_sim(catalogs=1, items=5)
    base, host, wording = {
        "refused": (f"http://127.0.0.1:{(p := closed_port())}", f"127.0.0.1:{p}",
                    "connection refused"),
        "dns": ("https://api.example.invalid", "api.example.invalid", "DNS"),
        "tls": (srv.base_url.replace("http://", "https://"),
                srv.base_url.removeprefix("http://"), "TLS"),
        "timeout": (silent_host, silent_host.removeprefix("http://"), "timed out"),
    }[cause]
    fake = FakeTime()
    stats = Stats()
    settings = settings_for(srv, tmp_path, **{
        "api.base": base, "api.read_timeout": 0.05, "retry.max_tries": 50,
        "retry.backoff_base": 0.5, "retry.backoff_cap": 60.0})
    with pytest.raises(Unreachable) as info:
        await no_hang(Harvest(settings, clock=fake, sleep=fake.sleep, rand=lambda: 1.0,
                              stats=stats).run())
    message = str(info.value)
    assert host in message and wording in message and "\n" not in message
    assert 0 < sum(fake.slept) <= 60.0
    # One retry loop: every retry is one back-off sleep (the token fetch does not nest
    # its own loop inside each API attempt).
    assert sum(stats.retries.values()) == len(fake.slept)
    others = {"refused": "connection refused", "dns": "DNS", "tls": "TLS",
              "timeout": "timed out"}
    assert not any(w in message for c, w in others.items() if c != cause)


async def test_a_silent_host_is_cut_off_at_the_first_contact_budget(
        start_sim: SimStarter, silent_host: SilentHost, tmp_path: Path) -> None:
    """With the default 35 s read timeout, the attempt in flight is what must be cut: a
    host that never answered gets retry.first_contact_time for everything."""
    srv = await start_sim(catalogs=1, items=5)
    settings = settings_for(srv, tmp_path, **{"api.base": silent_host,
                                              "retry.first_contact_time": 0.05})
    fake = FakeTime()
    async with ApiClient(settings, clock=fake, sleep=fake.sleep) as client:
        request = asyncio.ensure_future(client.get_json(ThrottleClass.LMS, catalogs_path()))

        async def connected() -> None:
            while not silent_host.accepted:
                await asyncio.sleep(0)
        await no_hang(connected())
        fake.now += 1.0  # the injected clock passes the budget with the attempt in flight
        with pytest.raises(Unreachable, match=r"timed out.*retry\.first_contact_time"):
            await no_hang(request)


def test_cli_exits_1_with_one_line_for_a_wrong_base(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    config = tmp_path / "h.toml"
    config.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
    monkeypatch.setenv("EDX_CLIENT_ID", "cid")
    monkeypatch.setenv("EDX_CLIENT_SECRET", "secret-value")
    monkeypatch.setenv("EDX_API_BASE", f"http://127.0.0.1:{port}")
    code = cli.main(["harvest", "--out", str(tmp_path / "out"), "--config", str(config),
                     "--progress", "off", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.count("\n") == 0 and "Traceback" not in err
    assert f"127.0.0.1:{port}" in err and "connection refused" in err


async def test_learners_export_fails_fast_too(start_sim: SimStarter, tmp_path: Path) -> None:
    """The learner export does not turn a dead host into a 'partial' enterprise."""
    srv = await start_sim(catalogs=1, items=5)
    fake = FakeTime()
    settings = settings_for(srv, tmp_path, **{"api.base": f"http://127.0.0.1:{closed_port()}",
                                              "retry.backoff_base": 0.5})
    export = LearnerExport(settings, LearnerOptions(enterprises=(srv.enterprise_uuid,)),
                           PiiPolicy(PiiMode.KEEP), clock=fake, sleep=fake.sleep)
    with pytest.raises(Unreachable, match="connection refused"):
        await no_hang(export.run())
    assert sum(fake.slept) <= 60.0


async def test_an_outage_after_contact_keeps_the_long_budget(start_sim: SimStarter,
                                                             tmp_path: Path) -> None:
    """Once the host has answered, a later outage is retried for up to retry.max_time."""
    srv = await start_sim(catalogs=1, items=5)
    fake = FakeTime()
    stats = Stats()
    settings = settings_for(srv, tmp_path, **{"retry.max_tries": 50, "retry.max_time": 300,
                                              "retry.backoff_base": 0.5,
                                              "retry.backoff_cap": 60.0})
    async with ApiClient(settings, clock=fake, sleep=fake.sleep, rand=lambda: 1.0,
                         stats=stats) as client:
        await client.get_json(ThrottleClass.LMS, catalogs_path())
        await srv.close()
        with pytest.raises(ConnectError, match="connection refused"):
            await no_hang(client.get_json(ThrottleClass.LMS, catalogs_path()))
    assert 60.0 < sum(fake.slept) <= 300.0


# --- #10.15: a maintenance page on a JSON request is a bad body, retried ----------------

async def test_maintenance_pages_are_retried_in_a_harvest(start_sim: SimStarter,
                                                          tmp_path: Path) -> None:
    srv = await start_sim(catalogs=2, items=150, fault_rate=0.02,
                          fault_kinds=("maintenance",))
    expected = await truth(srv)
    srv.state.stats.reset()
    result = await Harvest(settings_for(srv, tmp_path)).run()
    assert srv.state.stats.faults["maintenance"] > 0, "no fault served: proves nothing"
    assert result.exit_code == 0 and result.status == "complete"
    assert_exactly_once(tmp_path, expected)
    assert errors_of(tmp_path) == []


async def test_maintenance_pages_are_retried_in_a_learner_export(start_sim: SimStarter,
                                                                 tmp_path: Path) -> None:
    srv = await start_sim(catalogs=1, items=5, learners=5000, learner_max_page_size=50,
                          fault_rate=0.02, fault_kinds=("maintenance",))
    export = LearnerExport(settings_for(srv, tmp_path),
                           LearnerOptions(enterprises=(srv.enterprise_uuid,)),
                           PiiPolicy(PiiMode.KEEP))
    result = await export.run()
    assert srv.state.stats.faults["maintenance"] > 0, "no fault served: proves nothing"
    assert result.exit_code == 0
    rows = read_lines(tmp_path / "learners" / f"enterprise={srv.enterprise_uuid}"
                      / "learner_summary.ndjson")
    ids = [orjson.dumps(sorted((k, v) for k, v in r.items() if k != "_harvest"))
           for r in rows]
    assert len(rows) == 5000 and len(set(ids)) == 5000


async def test_markup_every_time_is_still_the_clear_xml_error(start_sim: SimStarter,
                                                              tmp_path: Path) -> None:
    """When every retry gets markup, the caller gets UnexpectedXML naming the endpoint."""
    srv = await start_sim(catalogs=1, items=5, fault_rate=1.0, fault_kinds=("maintenance",))
    stats = Stats()
    settings = settings_for(srv, tmp_path, **{"retry.max_tries": 3})
    async with ApiClient(settings, stats=stats) as client:
        with pytest.raises(UnexpectedXML, match=r"enterprise-catalogs.*HTML"):
            await client.get_json(ThrottleClass.LMS, catalogs_path())
    assert stats.total_requests("lms") == 3
