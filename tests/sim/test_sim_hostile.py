"""Hostile-server knobs: maintenance pages, slow-drip bodies and gzip bombs."""

from __future__ import annotations

import zlib

import aiohttp
import orjson
from simkit import SimFactory


async def test_maintenance_fault_is_a_200_html_page(make_sim: SimFactory) -> None:
    sim = await make_sim(fault_rate=1.0, fault_kinds=("maintenance",))
    resp = await sim.get(sim.content_path())
    assert resp.status == 200
    assert resp.content_type == "text/html"
    body = await resp.read()
    assert body.lstrip().lower().startswith(b"<!doctype html") and b"maintenance" in body


async def test_slow_drip_sends_the_same_body_with_its_length(make_sim: SimFactory) -> None:
    plain = await make_sim(items=3)
    expected = await plain.get_json(plain.content_path())
    sim = await make_sim(items=3, slow_drip_ms=0.01)
    resp = await sim.get(sim.content_path())
    assert resp.status == 200
    assert resp.content_length is not None and resp.content_length > 100
    assert orjson.loads(await resp.read()) == expected


async def test_slow_drip_rate_zero_drips_nothing(make_sim: SimFactory) -> None:
    """A drip of 1000 s a byte at rate 0 leaves every answer whole and immediate."""
    sim = await make_sim(items=3, slow_drip_ms=1e6, slow_drip_rate=0.0)
    assert len((await sim.get_json(sim.content_path()))["results"]) == 3


async def test_gzip_bomb_inflates_to_bomb_mb_of_valid_json(make_sim: SimFactory) -> None:
    plain = await make_sim(items=3)
    expected = await plain.get_json(plain.content_path())
    sim = await make_sim(items=3, bomb_rate=1.0, bomb_mb=2)
    url = sim.base + sim.content_path()
    async with aiohttp.ClientSession(auto_decompress=False) as raw_session, \
            raw_session.get(url, headers=sim.headers()) as resp:
        assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
        wire = await resp.read()
    assert len(wire) < 64 * 1024
    inflated = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = inflated.decompress(wire)
    while inflated.unused_data:  # the padding is a second gzip member
        rest = inflated.unused_data
        inflated = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += inflated.decompress(rest)
    assert len(out) >= 2 * 1024 * 1024
    assert orjson.loads(out) == expected


async def test_bombs_spare_the_token_endpoint_and_errors(make_sim: SimFactory) -> None:
    sim = await make_sim(bomb_rate=1.0, bomb_mb=1)
    assert "Content-Encoding" not in (await sim.new_token()).headers
    resp = await sim.get(sim.content_path(), page=99)  # 404 Invalid page.
    assert resp.status == 404 and "Content-Encoding" not in resp.headers
