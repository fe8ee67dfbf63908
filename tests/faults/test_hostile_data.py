"""Hostile data inside good answers, and what a first contact failure is blamed on.

* A value nested deeper than the JSON encoder can write back (orjson stops at 254
  levels) costs only its item, page or learner page: one error line, exit 3, on every
  rerun, never a traceback that loses the other catalogs' work.
* A server that echoes the live token or the client secret *inside data* (a title) never
  gets either into a file: not the snapshot, catalogs.ndjson, the sync store's changes and
  ledger, nor the learner files.
* A host that refuses every connection is reported as refusing, even when the time
  allowed ran out while the rate limit held the next attempt back.

The simulator sits behind a small rewriting proxy (on its own loop thread, so the CLI can
run in-process); back-off is zero; no test waits on a rate.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from yarl import URL

from harvester import cli, errors
from harvester.client import ApiClient, ThrottleClass, catalogs_path, content_path
from harvester.config import Rate
from harvester.errors import UnexpectedXML, Unreachable
from harvester.policy import RateGate
from harvester.redact import REDACTOR
from harvester.sim import SimConfig, SimServer
from harvester.sinks import encode_item
from tests.conftest import SimStarter, settings_for
from tests.faults.test_tokens_redaction import everything_under, leaks, record_tokens
from tests.integration.helpers import LoopbackProxy, LoopThread, read_lines

Json = dict[str, Any]
#: (request, path, decoded 200 body) -> the body to send instead.
Rewrite = Callable[[web.Request, str, Any], Any]
#: request -> an ETag header to send with a 200 JSON answer, or None.
Tag = Callable[[web.Request], str | None]


def nested(depth: int) -> Any:
    """A value ``depth`` containers deep."""
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"n": value}
    return value


class RewriteProxy(LoopbackProxy):
    """Forwards everything to the simulator; ``rewrite`` may change any 200 JSON body.
    ``hits`` counts requests per path."""

    def __init__(self, srv: SimServer, rewrite: Rewrite, tag: Tag | None = None) -> None:
        super().__init__()
        self.srv = srv
        self.rewrite = rewrite
        self.tag = tag
        self.hits: dict[str, int] = {}


    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        headers = {k: request.headers[k] for k in ("Authorization", "Accept", "Content-Type")
                   if k in request.headers}
        url = URL(self.srv.base_url + request.raw_path, encoded=True)
        async with self._session.request(request.method, url, data=await request.read() or None,
                                         headers=headers, allow_redirects=False) as up:
            raw, status = await up.read(), up.status
            ctype = up.headers.get("Content-Type", "application/json")
        headers = {}
        if status == 200 and "json" in ctype and not request.path.endswith("access_token"):
            # The stdlib encoder: orjson itself refuses what these tests send.
            raw = json.dumps(self.rewrite(request, request.path, orjson.loads(raw))).encode()
            if self.tag is not None and (etag := self.tag(request)) is not None:
                headers["ETag"] = etag
        return web.Response(status=status, body=raw, content_type=ctype.split(";")[0],
                            headers=headers)


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def world(loop: LoopThread) -> Iterator[Callable[..., tuple[SimServer, RewriteProxy]]]:
    """``srv, proxy = world(rewrite, **sim_knobs)``: a simulator behind a proxy."""
    closers: list[Any] = []

    def start(rewrite: Rewrite, tag: Tag | None = None, **knobs: Any
              ) -> tuple[SimServer, RewriteProxy]:
        cfg = SimConfig(**{"catalogs": 3, "items": 30, "seed": 7, "rate_lms": "0",
                           "rate_learners": "0", "learners": 40, **knobs})
        srv = SimServer(cfg, port=0)
        loop.run(srv.start())
        closers.append(srv.close)
        proxy = RewriteProxy(srv, rewrite, tag)
        loop.run(proxy.start())
        closers.append(proxy.close)
        return srv, proxy

    yield start
    for close in reversed(closers):
        loop.run(close())


def run_cli(monkeypatch: pytest.MonkeyPatch, srv: SimServer, proxy: RewriteProxy, tmp: Path,
            *argv: str) -> int:
    monkeypatch.setenv("EDX_CLIENT_ID", srv.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", srv.client_secret)
    monkeypatch.setenv("HARVESTER_PII_KEY", "0123456789abcdef0123")
    cfg = tmp / "fast.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
    return cli.main([*argv, "--api-base", proxy.base_url, "--progress", "off",
                     "--rate-lms", "1000/s", "--rate-learners", "1000/s", "--config", str(cfg)])


def is_detail(path: str) -> bool:
    return path.count("/") > 5 and "/enterprise/v2/" in path


# --- 1. nesting the encoder cannot write back --------------------------------------------

def test_a_deeply_nested_detail_costs_only_that_item_on_every_run(
        world: Callable[..., tuple[SimServer, RewriteProxy]], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    victim: list[str] = []

    def deepen(_req: web.Request, path: str, body: Any) -> Any:
        if is_detail(path) and (not victim or victim[0] == path):
            victim[:1] = [path]
            body["extra"] = nested(260)  # orjson parses it; it cannot write it back
        return body

    srv, proxy = world(deepen)
    out = tmp_path / "out"
    for run in (1, 2):
        assert run_cli(monkeypatch, srv, proxy, tmp_path, "harvest", "--out", str(out)) == 3
        err = capsys.readouterr().err
        assert "Traceback" not in err and "Recursion limit" not in err
        errors = read_lines(out / "errors.ndjson")
        assert [e["kind"] for e in errors] == ["detail_failed"], errors
        assert errors[0]["key"] in victim[0]
        assert "nested more than 200 levels" in errors[0]["message"]
        manifest = orjson.loads((out / "manifest.json").read_bytes())
        assert manifest["status"] == "partial"
        assert all(c["status"] == "done" for c in manifest["catalogs"].values())
        # Deterministic, so not retried: one request per run.
        assert proxy.hits[victim[0]] == run
    lines = [r for f in out.glob("catalog=*/*.ndjson") for r in read_lines(f)]
    assert len(lines) == 3 * 30 - 1  # every other item, once


def test_a_deeply_nested_listing_row_costs_only_its_page(
        world: Callable[..., tuple[SimServer, RewriteProxy]], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target: list[str] = []

    def deepen(req: web.Request, path: str, body: Any) -> Any:
        if path.startswith("/enterprise/v2/") and not is_detail(path) and \
                req.query.get("page") == "2" and (not target or target[0] == path):
            target[:1] = [path]
            body["results"][3]["title"] = nested(258)
        return body

    srv, proxy = world(deepen)
    out = tmp_path / "out"
    assert run_cli(monkeypatch, srv, proxy, tmp_path, "harvest", "--out", str(out),
                   "--page-size", "10") == 3
    assert "Traceback" not in capsys.readouterr().err
    errors = read_lines(out / "errors.ndjson")
    # Each walk of that catalog records its page 2, and the items it hid are a gap.
    assert {e["kind"] for e in errors} == {"page_failed", "gap"}, errors
    assert {e["catalog_uuid"] for e in errors} == {target[0].rsplit("/", 1)[-1]}
    failed = [e for e in errors if e["kind"] == "page_failed"]
    assert all(e["page"] == 2 and "nested more than 200 levels" in e["message"]
               for e in failed), failed
    assert orjson.loads((out / "manifest.json").read_bytes())["status"] == "partial"
    hit = target[0].rsplit("/", 1)[-1]
    for cat in srv.catalog_uuids:  # the other catalogs' work is all there
        lines = [r for f in out.glob(f"catalog={cat}/*.ndjson") for r in read_lines(f)]
        assert len(lines) == (20 if cat == hit else 30), cat


def test_a_deeply_nested_learner_row_costs_only_its_page(
        world: Callable[..., tuple[SimServer, RewriteProxy]], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def deepen(_req: web.Request, path: str, body: Any) -> Any:
        if path.endswith("/learner-summary") and body.get("results"):
            body["results"][0]["course_title"] = nested(258)
        return body

    srv, proxy = world(deepen)
    code = run_cli(monkeypatch, srv, proxy, tmp_path, "learners", "--out",
                   str(tmp_path / "lrn"), "--enterprise", srv.enterprise_uuid)
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err, err[-2000:]
    assert err.strip().count("\n") < 40  # a run's log, not a dump


async def test_the_client_accepts_200_levels_and_refuses_201(start_sim: SimStarter,
                                                             tmp_path: Path) -> None:
    """The limit leaves room for our own wrapping: what the client accepts, we can write."""
    srv = await start_sim(catalogs=1, items=5)
    depth = {"now": 200}

    def deepen(_req: web.Request, _path: str, body: Any) -> Any:
        return _deep_page(body, depth["now"])

    proxy = RewriteProxy(srv, deepen)
    await proxy.start()
    try:
        settings = settings_for(srv, tmp_path, **{"api.base": proxy.base_url})
        async with ApiClient(settings) as client:
            resp = await client.get_json(ThrottleClass.CONTENT, content_path(srv.catalog_uuids[0]))
            line = encode_item(resp.body["results"][0], {"k": {"wrapped": [1]}})
            assert orjson.loads(line)["_harvest"]["k"] == {"wrapped": [1]}
            depth["now"] = 201
            with pytest.raises(errors.NestedTooDeep, match="more than 200 levels"):
                await client.get_json(ThrottleClass.CONTENT, content_path(srv.catalog_uuids[0]))
    finally:
        await proxy.close()


def _deep_page(body: Json, depth: int) -> Json:
    """``body`` whose first row makes the whole answer exactly ``depth`` containers deep
    (the page object and its results list are two of them)."""
    body["results"][0]["deep"] = nested(depth - 3)
    return body


def test_the_encoder_backstop_is_an_item_error_not_a_crash() -> None:
    with pytest.raises(errors.NestedTooDeep):
        encode_item({"key": "k", "x": nested(300)}, {"catalog_uuid": "c"})


# --- 2. credentials echoed inside data ---------------------------------------------------

def test_a_token_and_secret_echoed_in_titles_reach_no_file(
        world: Callable[..., tuple[SimServer, RewriteProxy]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    secret: list[str] = []

    def echo(req: web.Request, path: str, body: Any) -> Any:
        token = req.headers.get("Authorization", "").split()[-1]
        words = f"T JWT {token} s={secret[0]} {token}-x"
        rows = body.get("results") if isinstance(body, dict) else None
        for row in rows if isinstance(rows, list) else [body]:
            if isinstance(row, dict):
                row["title"] = words
                row["course_title"] = words
                row[f"k-{token}"] = {"etag": token}
        return body

    def tag(req: web.Request) -> str:
        return f'W/"{req.headers.get("Authorization", "").split()[-1]}"'

    srv, proxy = world(echo, tag)
    secret.append(srv.client_secret)
    tokens = record_tokens(srv)
    store = tmp_path / "store"
    assert run_cli(monkeypatch, srv, proxy, tmp_path, "harvest", "--out",
                   str(tmp_path / "h")) == 0
    assert run_cli(monkeypatch, srv, proxy, tmp_path, "harvest", "--out",
                   str(tmp_path / "gz"), "--gzip") == 0
    for as_of in ("2026-01-01", "2026-01-02"):
        assert run_cli(monkeypatch, srv, proxy, tmp_path, "sync", "--store", str(store),
                       "--as-of", as_of) == 0
    assert run_cli(monkeypatch, srv, proxy, tmp_path, "learners", "--out",
                   str(tmp_path / "lrn"), "--enterprise", srv.enterprise_uuid, "--csv",
                   "--pii", "keep") == 0
    assert tokens, "no token was issued?"
    checked = 0
    for path, data in everything_under(tmp_path):
        found = leaks(data, tokens, srv.client_secret)
        assert not found, (path, found)
        checked += b"T JWT ***" in data
    assert checked >= 5, "the echoed titles are not in the files: the test proves nothing"
    # The data is still data: the title is there, the credential is masked in place.
    catalogs = read_lines(tmp_path / "h" / "catalogs.ndjson")
    assert all(c["title"] == "T JWT *** s=*** ***-x" for c in catalogs)


def test_scrubbing_data_masks_only_registered_secrets() -> None:
    REDACTOR.add("s3cr3t-known-value-42")
    jwt_like = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"  # not ours: data
    body = {"a": ["x s3cr3t-known-value-42 y", {"s3cr3t-known-value-42": jwt_like}]}
    canonical = orjson.dumps(body)
    assert REDACTOR.mentions(canonical)
    assert REDACTOR.scrub_known(body) == {"a": ["x *** y", {"***": jwt_like}]}
    assert REDACTOR.scrub_known_line(canonical) == orjson.dumps(REDACTOR.scrub_known(body))
    assert not REDACTOR.mentions(orjson.dumps({"a": jwt_like}))


# --- 3. the cause of a failed first contact ----------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_refusing_host_is_blamed_on_refusal_when_the_rate_gate_ate_the_budget(
        start_sim: SimStarter, tmp_path: Path) -> None:
    """Attempt 1 is refused; attempt 2 waits an hour at the rate gate, so the first-contact
    budget runs out there. The error names the refusal, not a timeout."""
    srv = await start_sim(catalogs=1, items=5)
    settings = settings_for(srv, tmp_path, **{
        "api.base": f"http://127.0.0.1:{closed_port()}", "retry.first_contact_time": 1.0})
    async with ApiClient(settings) as client:
        client.gates[ThrottleClass.LMS] = RateGate("lms", Rate(1, 3600.0))
        with pytest.raises(Unreachable) as info:
            await client.get_json(ThrottleClass.LMS, catalogs_path())
    message = str(info.value)
    assert "connection refused" in message and "timed out" not in message, message
    assert "retry.first_contact_time" in message and "rate limit" in message
    assert info.value.reason == "refused"


# --- 4. a token endpoint that answers a web page -----------------------------------------

async def test_a_token_endpoint_answering_html_says_so(start_sim: SimStarter,
                                                       tmp_path: Path) -> None:
    srv = await start_sim(catalogs=1, items=5)

    async def page(_req: web.Request) -> web.Response:
        return web.Response(text="<!DOCTYPE html><html><body>Maintenance</body></html>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_post("/oauth2/v1/access_token", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        settings = settings_for(srv, tmp_path, **{
            "api.token_url": f"http://{host}:{port}/oauth2/v1/access_token",
            "retry.max_tries": 2})
        async with ApiClient(settings) as client:
            with pytest.raises(UnexpectedXML, match="token: the server answered HTML"):
                await client.get_json(ThrottleClass.LMS, catalogs_path())
    finally:
        await runner.cleanup()


# --- 5. the other values JSON allows and our encoder might not ----------------------------

@pytest.mark.parametrize("value", [10 ** 30, -(2 ** 70), float("nan"), float("inf"),
                                   "\ud800 lone surrogate"],
                         ids=["big-int", "big-negative", "NaN", "Infinity", "lone-surrogate"])
def test_other_values_json_allows_cost_at_most_their_item(
        world: Callable[..., tuple[SimServer, RewriteProxy]], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tmp_path: Path, value: Any) -> None:
    """Whatever orjson does with them (a float for a huge integer; NaN, Infinity and lone
    surrogates are refused as invalid JSON), the run writes or fails that one item."""
    victim: list[str] = []

    def spike(_req: web.Request, path: str, body: Any) -> Any:
        if is_detail(path) and (not victim or victim[0] == path):
            victim[:1] = [path]
            body["extra"] = {"v": [value]}
        return body

    srv, proxy = world(spike)
    out = tmp_path / "out"
    code = run_cli(monkeypatch, srv, proxy, tmp_path, "harvest", "--out", str(out))
    assert "Traceback" not in capsys.readouterr().err
    errors = read_lines(out / "errors.ndjson") if (out / "errors.ndjson").exists() else []
    assert (code, len(errors)) in ((0, 0), (3, 1)), errors
    assert all(e["kind"] == "detail_failed" for e in errors)
    lines = [r for f in out.glob("catalog=*/*.ndjson") for r in read_lines(f)]
    assert len(lines) == 3 * 30 - len(errors)
