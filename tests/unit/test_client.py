"""The client's translation of answers into values and errors (aioresponses, no sockets)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import aiohttp
import orjson
import pytest
from aioresponses import aioresponses

from harvester.client import ApiClient, ThrottleClass
from harvester.config import load_settings
from harvester.errors import AuthError, Forbidden, UnexpectedXML
from harvester.obs import Stats
from harvester.outputs import catalog_dirname
from harvester.pipeline import Harvest


class CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without the ``stream_writer`` aiohttp 3.14
    requires (pnuckowski/aioresponses#289, fix pending in #288); aiohttp only reads its
    ``output_size``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", Mock(output_size=0))
        super().__init__(*args, **kwargs)


class mocked(aioresponses):
    """aioresponses with :class:`CompatResponse` as every mock's response class."""

    def add(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("response_class", CompatResponse)
        super().add(*args, **kwargs)


BASE = "https://api.test"
TOKEN_URL = f"{BASE}/oauth2/v1/access_token"


def settings(out: Path | None = None, **extra: object):  # type: ignore[no-untyped-def]
    layer: dict[str, object] = {"api.base": BASE, "api.client_id": "cid",
                                "api.client_secret": "very-secret-value",
                                "retry.backoff_base": 0.0, "rates.lms": "1000/s",
                                "output.progress": "off"}
    if out is not None:
        layer["output.out"] = str(out)
    layer.update(extra)
    return load_settings(cli=layer, environ={}, config_file=None)[0]


def token(m: mocked, n: int = 1) -> None:
    for i in range(n):
        m.post(TOKEN_URL, payload={"access_token": f"tok-{i}-abcdef", "token_type": "JWT",
                                   "expires_in": 180})


async def test_xml_answer_names_the_endpoint() -> None:
    with mocked() as m:
        token(m)
        m.get(re.compile(r".*/courses/.*"), status=200, body="<?xml version='1.0'?><root/>",
              content_type="application/xml", repeat=True)  # XML on every retry
        async with ApiClient(settings()) as c:
            with pytest.raises(UnexpectedXML, match=r"courses/edX\+X.*answered XML"):
                await c.get_json(ThrottleClass.LMS,
                                 "/enterprise/v2/enterprise-catalogs/c/courses/edX+X")


async def test_401_refreshes_once_and_replays() -> None:
    with mocked() as m:
        token(m, 2)
        url = f"{BASE}/enterprise/v1/enterprise-catalogs"
        m.get(url, status=401, payload={"detail": "Invalid token."})
        m.get(url, status=200, payload={"count": 0, "next": None, "results": []})
        stats = Stats()
        async with ApiClient(settings(), stats=stats) as c:
            resp = await c.get_json(ThrottleClass.LMS, "/enterprise/v1/enterprise-catalogs")
        assert resp.status == 200 and stats.tokens == 2


async def test_403_is_never_retried() -> None:
    with mocked() as m:
        token(m)
        m.get(re.compile(r".*"), status=403,
              payload={"detail": "Missing: enterprise.can_view_catalog"})
        stats = Stats()
        async with ApiClient(settings(), stats=stats) as c:
            with pytest.raises(Forbidden, match="can_view_catalog"):
                await c.get_json(ThrottleClass.CONTENT, "/enterprise/v2/enterprise-catalogs/x")
        assert stats.total_requests("content") == 1


async def test_invalid_json_and_5xx_are_retried() -> None:
    with mocked() as m:
        token(m)
        url = re.compile(r".*/enterprise-catalogs/x.*")
        m.get(url, status=200, body=b'{"count": 1, "resu')
        m.get(url, status=502, body=b"bad gateway")
        m.get(url, status=400, payload={"message": "upstream"})
        m.get(url, status=200, payload={"count": 0, "next": None, "results": []})
        stats = Stats()
        async with ApiClient(settings(), stats=stats) as c:
            resp = await c.get_json(ThrottleClass.CONTENT, "/enterprise/v2/enterprise-catalogs/x")
        assert resp.body["count"] == 0 and sum(stats.retries.values()) == 3


async def test_bad_credentials_are_an_auth_error_without_the_secret() -> None:
    with mocked() as m:
        m.post(TOKEN_URL, status=401, payload={"error": "invalid_client"})
        async with ApiClient(settings()) as c:
            with pytest.raises(AuthError) as info:
                await c.get_json(ThrottleClass.LMS, "/enterprise/v1/enterprise-catalogs")
        assert "invalid_client" in str(info.value)
        assert "very-secret-value" not in str(info.value)


async def test_hostile_catalog_ids_stay_inside_out(tmp_path: Path) -> None:
    """A server that names catalogs '../../evil' cannot make us write outside OUT."""
    out = tmp_path / "out"
    hostile = ["../../evil", "/etc/passwd", "a/../../b"]
    with mocked() as m:
        token(m)
        m.get(re.compile(r".*/enterprise/v1/enterprise-catalogs.*"), payload={
            "count": 3, "next": None, "results": [{"uuid": u, "title": "t"} for u in hostile]})
        for _ in hostile:
            m.get(re.compile(r".*/enterprise/v2/enterprise-catalogs/.*"), payload={
                "count": 1, "next": None,
                "results": [{"content_type": "course", "key": "edX+Demo",
                             "aggregation_key": "course:edX+Demo"}]})
        result = await Harvest(settings(out, **{"harvest.details": False})).run()
    assert result.exit_code == 0
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(out in p.parents for p in written)
    for u in hostile:
        assert (out / catalog_dirname(u) / "courses.ndjson").exists()
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert set(manifest["catalogs"]) == set(hostile)


async def test_no_count_and_junk_next_still_gets_every_page(tmp_path: Path) -> None:
    """A gateway that drops `count` and renders `next` as template junk: pages are
    probed by number until 404 "Invalid page.", and nothing is lost."""
    out = tmp_path / "out"
    cat = "3f56a21c-76c8-47c0-add8-a99714d40d94"

    def page(start: int, n: int) -> dict[str, object]:
        return {"next": "$inputRoot.next", "previous": "", "results": [
            {"content_type": "course", "key": f"Org+C{start + i}",
             "aggregation_key": f"course:Org+C{start + i}"} for i in range(n)]}

    with mocked() as m:
        token(m)
        m.get(re.compile(r".*/enterprise/v1/enterprise-catalogs.*"),
              payload={"count": 1, "next": None, "results": [{"uuid": cat, "title": "t"}]})
        content = re.compile(rf".*/enterprise/v2/enterprise-catalogs/{cat}\?.*")
        m.get(content, payload=page(0, 100))
        m.get(content, payload=page(100, 100))
        m.get(content, payload=page(200, 100))
        m.get(content, status=404, payload={"detail": "Invalid page."})
        result = await Harvest(settings(out, **{"harvest.details": False})).run()
    assert result.exit_code == 0
    lines = (out / f"catalog={cat}" / "courses.ndjson").read_bytes().splitlines()
    assert len(lines) == 300


async def test_a_detail_for_another_item_is_not_filed_under_this_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cat = "3f56a21c-76c8-47c0-add8-a99714d40d94"
    with mocked() as m:
        token(m)
        m.get(re.compile(r".*/enterprise/v1/enterprise-catalogs.*"),
              payload={"count": 1, "next": None, "results": [{"uuid": cat, "title": "t"}]})
        m.get(re.compile(rf".*/enterprise/v2/enterprise-catalogs/{cat}\?.*"), payload={
            "count": 2, "next": None, "results": [
                {"content_type": "course", "key": "Org+A", "aggregation_key": "course:Org+A"},
                {"content_type": "course", "key": "Org+B", "aggregation_key": "course:Org+B"}]})
        m.get(re.compile(r".*/courses/Org\+A$"), payload={"key": "Org+A", "title": "A"})
        m.get(re.compile(r".*/courses/Org\+B$"), payload={"key": "Org+Z", "title": "Z"})
        result = await Harvest(settings(out)).run()
    assert result.exit_code == 3
    lines = [orjson.loads(x) for x in
             (out / f"catalog={cat}" / "courses.ndjson").read_bytes().splitlines()]
    assert [x["key"] for x in lines] == ["Org+A"]
    errors = [orjson.loads(x) for x in (out / "errors.ndjson").read_bytes().splitlines()]
    assert [(e["kind"], e["key"]) for e in errors] == [("detail_failed", "Org+B")]
    assert "answered for 'Org+Z'" in errors[0]["message"]


async def test_an_empty_200_and_a_maintenance_page_are_retried_as_bad_bodies() -> None:
    with mocked() as m:
        token(m)
        url = re.compile(r".*/enterprise-catalogs/x.*")
        m.get(url, status=200, body=b"")
        m.get(url, status=200, body=b"<html><body>Service under maintenance</body></html>",
              content_type="text/html")
        m.get(url, status=200, payload={"count": 0, "next": None, "results": []})
        stats = Stats()
        async with ApiClient(settings(), stats=stats) as c:
            resp = await c.get_json(ThrottleClass.CONTENT, "/enterprise/v2/enterprise-catalogs/x")
        assert resp.body["count"] == 0 and stats.retries["payload"] == 2
