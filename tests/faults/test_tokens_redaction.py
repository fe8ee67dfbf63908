"""Tokens, secrets and rates on failure paths (issue 10 #13, #14; issue 11 #10).

* Nothing a server sends reaches a file or a log unredacted: a hostile simulator echoes
  the caller's JWT in every 403, and after harvest, sync and learners runs no file under
  OUT, no log line and no terminal output holds a token, a piece of one, or the secret.
* A grant whose ``expires_in`` is 0, negative or not a number costs O(1) token requests
  (the JWT's ``exp`` is used), and a token that expires anyway is refreshed on the 401.
* Fractional rates (``0.5/s``, ``1/2s``, ``7.5/min``) work end to end; zero, negative and
  non-finite ones are exit 2 with one line.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from harvester import auth, cli
from harvester.auth import TokenManager, parse_grant
from harvester.config import Rate, build_settings
from harvester.errors import ConfigError, Forbidden, RequestError
from harvester.pipeline import Harvest
from harvester.policy import RateGate
from harvester.redact import REDACTOR, Redactor
from harvester.sim import SimConfig, SimServer
from tests.conftest import FakeTime, SimStarter, settings_for
from tests.integration.helpers import LoopThread, expire_tokens_after, read_lines

#: Anything shaped like the start of a JWT (base64url of '{"'): catches truncated ones too.
JWT_SHAPE = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}")


class SimClock:
    """The simulator's clock, moved by assignment (token expiry runs on it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- helpers -----------------------------------------------------------------------------

@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def record_tokens(srv: SimServer) -> list[str]:
    """Every JWT the simulator issues from now on."""
    issued: list[str] = []
    issuer = srv.state.tokens
    original = issuer.issue_jwt

    def issue() -> str:
        tok = original()
        issued.append(tok)
        return tok

    issuer.issue_jwt = issue  # type: ignore[method-assign]
    return issued


def everything_under(root: Path) -> Iterator[tuple[Path, bytes]]:
    """Every regular file under ``root`` (gzip ones also inflated), never through a link."""
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        yield path, data
        if path.suffix == ".gz":
            yield path, gzip.decompress(data)


def leaks(blob: bytes, tokens: list[str], secret: str) -> list[str]:
    """What of a credential ``blob`` holds: a token, a 16-char piece of one, the secret."""
    found = []
    if secret.encode() in blob:
        found.append("client secret")
    for tok in tokens:
        for part in tok.split(".")[1:]:  # payload and signature: the first is a constant
            pieces = {part[i:i + 16] for i in range(0, max(1, len(part) - 15), 16)}
            if any(p.encode() in blob for p in pieces):
                found.append(f"a piece of token {tok[-8:]}")
                break
    found += [m.group().decode()[:20] + "..." for m in JWT_SHAPE.finditer(blob)]
    return found


def env(monkeypatch: pytest.MonkeyPatch, srv: SimServer, tmp: Path) -> Path:
    monkeypatch.setenv("EDX_CLIENT_ID", srv.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", srv.client_secret)
    cfg = tmp / "fast.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
    return cfg


# --- 1. redaction (issue 10 #13) ---------------------------------------------------------

def test_a_token_echoed_by_a_hostile_server_reaches_no_file_and_no_log(
        loop: LoopThread, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    srv = SimServer(SimConfig(catalogs=3, items=30, seed=5, rate_lms="0", rate_learners="0",
                              forbid_catalogs=("1",), echo_token=True), port=0)
    loop.run(srv.start())
    try:
        tokens = record_tokens(srv)
        cfg = env(monkeypatch, srv, tmp_path)
        common = ["--api-base", srv.base_url, "--progress", "off", "--config", str(cfg)]
        out = tmp_path / "harvest"
        assert cli.main(["harvest", "--out", str(out), *common]) == 3
        assert cli.main(["harvest", "--out", str(tmp_path / "json"), "--log-format", "json",
                         *common]) == 3
        assert cli.main(["sync", "--store", str(tmp_path / "store"), "--as-of", "2026-01-01",
                         *common]) == 3
        foreign = "00000000-0000-0000-0000-00000000beef"
        code = cli.main(["learners", "--out", str(tmp_path / "lrn"), "--enterprise", foreign,
                         *common])
        assert code in (2, 3)
        said = capsys.readouterr()
    finally:
        loop.run(srv.close())

    assert tokens, "the runs used no token?"
    # The failure is still reported, with the server's words minus the credential.
    errors = read_lines(out / "errors.ndjson")
    failed = [e for e in errors if e["kind"] == "catalog_failed"]
    assert len(failed) == 1 and failed[0]["status"] == 403
    assert "HTTP 403" in failed[0]["message"] and "***" in failed[0]["message"]
    for path, data in everything_under(tmp_path):
        assert not leaks(data, tokens, srv.client_secret), (path, leaks(data, tokens,
                                                                      srv.client_secret))
    for name, text in (("stdout", said.out), ("stderr", said.err)):
        assert not leaks(text.encode(), tokens, srv.client_secret), (name, text[-2000:])
    assert "catalog_failed" in said.err, "the logs no longer say what failed"


def test_redactor_masks_tokens_old_and_new_jwt_shapes_and_auth_headers() -> None:
    r = Redactor()
    r.add("old-opaque-token-123")
    r.add("new-opaque-token-456")
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    text = (f"old-opaque-token-123 then new-opaque-token-456, {jwt}, cut {jwt[:30]}, "
            "Authorization: Bearer s3cr3t-bearer-value and JWT abc.def-ghi_jkl-mno-pqr, "
            "https://u:pa55word@h/x?access_token=qwerty1&page=2")
    got = r.scrub(text)
    for secret in ("old-opaque-token-123", "new-opaque-token-456", "eyJ", "s3cr3t",
                   "abc.def-ghi_jkl-mno-pqr", "pa55word", "qwerty1"):
        assert secret not in got, (secret, got)
    assert "Bearer ***" in got and "JWT ***" in got and "page=2" in got
    # What is not a credential stays readable.
    plain = ("detail: HTTP 403 'Missing: enterprise.can_view_catalog' at api.edx.org; the "
             "API needs JWT (the harvester asks with token_type=jwt); the JWT lifetime unknown, "
             "Token endpoint unreachable")
    assert r.scrub(plain) == plain


def test_error_messages_are_redacted_where_server_text_enters() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ5In0.c2lnbmF0dXJlLXNpZ25hdHVyZTI"
    exc = Forbidden(f"lms /x: HTTP 403 'JWT {jwt} is refused'", status=403, detail=jwt,
                    url=f"https://h/x?token={jwt}")
    assert "eyJ" not in str(exc) and "eyJ" not in exc.detail and "eyJ" not in exc.url
    REDACTOR.add("a-registered-token-789")
    assert "a-registered-token-789" not in str(RequestError("lost a-registered-token-789"))


def test_manifest_and_error_records_are_redacted_on_write(tmp_path: Path) -> None:
    """The last line: even a record built from a raw string is scrubbed by the writer."""
    from harvester.manifest import CatalogEntry, Manifest, Totals
    from harvester.run import CatalogState
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ6In0.c2lnbmF0dXJlLXNpZ25hdHVyZTM"
    cs = CatalogState("c1", f"title {jwt}")
    cs.error = f"HTTP 403 JWT {jwt}"
    manifest = Manifest(run_id="r", started_at="a", ended_at="b", status="partial",
                        config={"api": {"base": "https://h"}}, catalogs={"c1": CatalogEntry.of(cs)},
                        files={}, totals=Totals.of([cs], errors=1, stats={}))
    assert b"eyJ" not in orjson.dumps(manifest.to_json())


@pytest.mark.parametrize("setting", ["api.base", "api.token_url"])
def test_a_config_error_never_shows_a_password_in_a_url(setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_settings({setting: "ftp://user:hunter2-pass@example.com/"})
    assert "hunter2-pass" not in str(info.value) and setting in str(info.value)


def test_settings_repr_and_manifest_config_hold_no_secret() -> None:
    settings = build_settings({"api.client_id": "cid", "api.client_secret": "s3cr3t-value-1"})
    assert "s3cr3t-value-1" not in repr(settings)
    assert "s3cr3t-value-1" not in orjson.dumps(settings.public_dict()).decode()


# --- 2. expires_in (issue 10 #14) --------------------------------------------------------

@pytest.mark.parametrize("served", ["0", "-5", "soon", "", "null", "inf"])
async def test_a_useless_expires_in_costs_o1_token_requests(
        start_sim: SimStarter, tmp_path: Path, served: str) -> None:
    srv = await start_sim(catalogs=2, items=60, expires_in=served, token_ttl=600)
    result = await Harvest(settings_for(srv, tmp_path)).run()
    assert result.status == "complete"
    assert srv.state.stats.detail_requests >= 100
    assert srv.state.stats.tokens_issued == 1, "one token request per API call"


async def test_the_jwt_exp_fallback_still_refreshes_on_401(start_sim: SimStarter,
                                                           tmp_path: Path) -> None:
    clock = SimClock()
    srv = await start_sim(clock=clock, catalogs=1, items=120, expires_in="0", token_ttl=600,
                          latency_ms=1)
    import asyncio
    result, _ = await asyncio.gather(Harvest(settings_for(srv, tmp_path)).run(),
                                     expire_tokens_after(srv, clock, details=30))
    assert result.status == "complete"
    assert srv.state.stats.tokens_issued == 2, "the 401 refreshed once, nothing more"


def test_parse_grant_falls_back_to_exp_then_to_a_floor() -> None:
    import base64
    import time

    def jwt_with(claims: dict[str, Any]) -> str:
        body = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
        return f"eyJhbGciOiJIUzI1NiJ9.{body}.c2ln"

    exp = time.time() + 300
    grant = parse_grant({"access_token": jwt_with({"exp": exp}), "expires_in": 0})
    assert grant.expires_in is not None and 290 < grant.expires_in <= 300
    for served in (0, -5, "soon", "", float("nan"), None):
        g = parse_grant({"access_token": "opaque-token-value", "expires_in": served})
        assert g.expires_in == auth.FLOOR_LIFETIME if served is not None else g.expires_in is None
    # A JWT whose exp is already past (clock skew) is not a reason to refresh every call.
    past = parse_grant({"access_token": jwt_with({"exp": time.time() - 10}), "expires_in": 0})
    assert past.expires_in == auth.FLOOR_LIFETIME
    assert parse_grant({"access_token": "x-token", "expires_in": "120"}).expires_in == 120.0


async def test_token_manager_uses_the_floor_and_warns_once(
        fake_time: FakeTime, caplog: pytest.LogCaptureFixture) -> None:
    fetched = 0

    async def fetch() -> Any:
        nonlocal fetched
        fetched += 1
        return parse_grant({"access_token": f"opaque-token-{fetched}", "expires_in": 0})

    tm = TokenManager(fetch, clock=fake_time)
    with caplog.at_level(logging.WARNING, logger="harvester"):
        for _ in range(100):
            await tm.token()
        assert fetched == 1
        fake_time.now += auth.FLOOR_LIFETIME  # past the floor: one refresh, no second warning
        for _ in range(100):
            await tm.token()
    assert fetched == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "expires_in" in warnings[0].getMessage() + str(
        getattr(warnings[0], "fields", ""))


# --- 3. fractional rates (issue 11 #10) --------------------------------------------------

@pytest.mark.parametrize(("text", "count", "period"), [
    ("0.5/s", 0.5, 1.0), ("30/min", 30.0, 60.0), ("1/2s", 1.0, 2.0), ("7.5/min", 7.5, 60.0),
    (".25/s", 0.25, 1.0), ("3/1.5min", 3.0, 90.0), ("120/h", 120.0, 3600.0),
])
def test_fractional_rates_parse_and_print_back(text: str, count: float, period: float) -> None:
    rate = Rate.parse(text)
    assert (rate.count, rate.period) == (count, period)
    again = Rate.parse(str(rate))
    assert (again.count, again.period) == (count, period)


def admitted(gate: RateGate, clock: FakeTime, until: float, loop_run: Callable[..., Any]
             ) -> list[float]:
    times: list[float] = []

    async def go() -> None:
        while True:
            await gate.acquire()
            if clock.now >= until:
                return
            times.append(clock.now)

    loop_run(go())
    return times


@pytest.mark.parametrize(("text", "span", "expected", "window", "most"), [
    ("0.5/s", 60.0, 30, 2.0, 1),   # 30/min as one request every 2 s
    ("1/2s", 60.0, 30, 2.0, 1),
    ("0.25/s", 40.0, 10, 4.0, 1),
    ("7.5/min", 60.0, 7, 60.0, 7),  # never over budget in any minute: 7, not 8
    ("30/min", 60.0, 30, 60.0, 30),
])
def test_gate_admits_exactly_the_budget_with_a_fake_clock(
        text: str, span: float, expected: int, window: float, most: int) -> None:
    import asyncio
    clock = FakeTime(0.0)
    for smooth in (False, True):
        clock.now = 0.0
        gate = RateGate("lms", Rate.parse(text), clock=clock, sleep=clock.sleep, margin=0.0,
                        smooth=smooth)
        times = admitted(gate, clock, span, asyncio.run)
        assert len(times) == expected, times
        for i, t in enumerate(times):  # never more than `most` in any window
            assert sum(1 for u in times[i:] if u < t + window) <= most


def test_a_fractional_rate_runs_end_to_end(loop: LoopThread, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    srv = SimServer(SimConfig(catalogs=2, items=20, seed=3, rate_lms="0", rate_learners="0"),
                    port=0)
    loop.run(srv.start())
    try:
        cfg = env(monkeypatch, srv, tmp_path)
        code = cli.main(["harvest", "--out", str(tmp_path / "o"), "--api-base", srv.base_url,
                         "--rate-lms", "0.5/s", "--no-details", "--progress", "off",
                         "--config", str(cfg)])
        said = capsys.readouterr()
    finally:
        loop.run(srv.close())
    assert code == 0, said.err
    manifest = orjson.loads((tmp_path / "o" / "manifest.json").read_bytes())
    assert manifest["config"]["limits"]["lms"] == "0.5/s"


@pytest.mark.parametrize("bad", ["0/s", "-1/s", "0.0/min", "inf/s", "nan/s", "1/0s",
                                 "1e999/s", "1/infs", "/s", "0.5", "2/fortnight"])
def test_zero_negative_and_non_finite_rates_are_exit_2_in_one_line(
        bad: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDX_CLIENT_ID", "cid")
    monkeypatch.setenv("EDX_CLIENT_SECRET", "secret-value")
    code = cli.main(["harvest", "--out", str(tmp_path / "o"), "--api-base",
                     "http://127.0.0.1:9", f"--rate-lms={bad}", "--progress", "off"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("harvester: rates.lms:"), err
    assert "Traceback" not in err


def test_log_lines_are_redacted_whatever_the_field_holds() -> None:
    import io

    from harvester.obs import event, setup_logging

    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ3In0.c2lnbmF0dXJlLXNpZ25hdHVyZTQ"

    class Opaque:
        def __str__(self) -> str:
            return f"holds {jwt}"

    for fmt in ("text", "json"):
        buf = io.StringIO()
        setup_logging(fmt=fmt, stream=buf)
        event("t.event", listed=[jwt], obj=Opaque(), url="https://u:pw-123@h/p?token=abc")
        line = buf.getvalue()
        assert "eyJ" not in line and "pw-123" not in line and "abc" not in line, line
        if fmt == "json":
            orjson.loads(line)  # still one valid object
