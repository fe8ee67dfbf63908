"""What a server sends never drives the terminal: escape sequences, bells, carriage
returns and rich markup in catalog titles (or any other server string) are shown as
inert text in every summary, table and error line."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from yarl import URL

from harvester import cli, display
from harvester.run import CatalogState, RunResult
from harvester.sim import SimConfig, SimServer
from tests.integration.helpers import LoopbackProxy, LoopThread

HOSTILE = "T \u001b]0;pwned\u0007 \u001b[2J\u001b[31mRED\nfake line\rX [bold]B[/bold] \u009b1m"


def assert_inert(text: str) -> None:
    assert not any(ch in text for ch in "\u001b\u0007\r\u009b"), repr(text)
    assert "\nfake line" not in text


class TitleProxy(LoopbackProxy):
    """Forwards to the simulator; the catalog list's titles become :data:`HOSTILE`."""

    def __init__(self, srv: SimServer) -> None:
        super().__init__()
        self.srv = srv


    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: request.headers[k] for k in ("Authorization", "Accept", "Content-Type")
                   if k in request.headers}
        url = URL(self.srv.base_url + request.raw_path, encoded=True)
        async with self._session.request(request.method, url, data=await request.read() or None,
                                         headers=headers, allow_redirects=False) as up:
            raw, status, ctype = await up.read(), up.status, up.content_type
        if request.path.rstrip("/").endswith("/enterprise-catalogs") and status == 200:
            data = orjson.loads(raw)
            for cat in data["results"]:
                cat["title"] = HOSTILE
            raw = orjson.dumps(data)
        return web.Response(status=status, body=raw, content_type=ctype)


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def test_a_hostile_catalog_title_is_inert_in_the_harvest_summary(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    srv = SimServer(SimConfig(catalogs=1, items=20, rate_lms="0"), port=0)
    loop.run(srv.start())
    proxy = TitleProxy(srv)
    loop.run(proxy.start())
    try:
        monkeypatch.setenv("EDX_CLIENT_ID", srv.client_id)
        monkeypatch.setenv("EDX_CLIENT_SECRET", srv.client_secret)
        cfg = tmp_path / "fast.toml"
        cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
        code = cli.main(["harvest", "--out", str(tmp_path / "out"), "--api-base",
                         proxy.base_url, "--rate-lms", "2000/s", "--progress", "off",
                         "--no-details", "--config", str(cfg)])
        out = capsys.readouterr()
    finally:
        loop.run(proxy.close())
        loop.run(srv.close())
    assert code == 0, out.err
    assert "T ]0;pwned" in out.out  # the title is shown, minus what a terminal acts on
    assert_inert(out.out + out.err)


def test_every_display_string_from_a_server_is_inert() -> None:
    """The live tables, the summaries and the sync lines, fed hostile values."""
    manifest: dict[str, Any] = {
        "run_id": "r", "catalogs": {HOSTILE: {"title": HOSTILE, "status": HOSTILE}},
        "totals": {}, "enterprises": {HOSTILE: {"status": HOSTILE, "count_reported": 1,
                                                "rows_written": 1, "duplicates_dropped": 0,
                                                "gaps": 0}}}
    result = RunResult("partial", 3, Path("out"), manifest)
    buf = io.StringIO()
    display.print_harvest_summary(result, stream=buf)
    assert_inert(buf.getvalue())
    assert "[bold]B[/bold]" in buf.getvalue()
    assert_inert(display.learners_summary(result))
    from rich.console import Console

    console = Console(file=io.StringIO(), width=200, color_system=None)
    bars = display.CatalogBars(details=True)
    bars.update([CatalogState(HOSTILE, HOSTILE), CatalogState("\u001b[2J[red]x[/]", "t")], None)
    console.print(bars.renderable())
    assert isinstance(console.file, io.StringIO)
    assert_inert(console.file.getvalue())
    assert "[2J[red]x[/]" in console.file.getvalue()  # shown as text, not applied
    assert display.term_text(HOSTILE) == "T ]0;pwned [2J[31mREDfake lineX [bold]B[/bold] 1m"


def test_a_tenant_message_or_name_is_inert_in_its_table_and_summary() -> None:
    """A tenant's message carries a server's error text; its name comes from the config."""
    from rich.console import Console

    manifest = {"kind": "harvest", "status": "partial", "exit_code": 3,
                "tenants": {HOSTILE: {"status": "failed", "exit_code": 1, "message": HOSTILE}}}
    lines = display.tenants_summary(manifest)
    assert_inert("\n".join(lines))
    assert len(lines) == 2
    console = Console(file=io.StringIO(), width=300, color_system=None)
    console.print(display.tenants_table({HOSTILE: {"status": HOSTILE, "items": 1}}))
    assert isinstance(console.file, io.StringIO)
    assert_inert(console.file.getvalue())
    assert "[bold]B[/bold]" in console.file.getvalue()  # shown as text, not applied


def test_a_verify_read_error_and_a_publish_error_are_inert(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both quote text from elsewhere (a filesystem or an object store's error)."""
    import harvester.verify
    from harvester.errors import PublishError

    def unreadable(target: str) -> Any:
        raise OSError(HOSTILE)

    monkeypatch.setattr(harvester.verify, "verify", unreadable)
    assert cli.main(["verify", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert_inert(err)
    assert err.count("\n") == 1

    def refused(ns: object) -> int:
        raise PublishError(HOSTILE)

    monkeypatch.setitem(cli._COMMANDS, "verify", refused)
    assert cli.main(["verify", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert_inert(err)
    assert err.count("\n") == 1
