"""Server text in logs: never a secret in any encoding, never terminal control.

* A secret is masked however it travels or is echoed back: form-encoded as the token
  request sent it, percent-encoded (either hex case), base64 of it or of HTTP Basic's
  ``id:secret``, inside a JSON string or a Python repr; in log lines, errors.ndjson and
  the manifest.
* A text log line shows what a server sent as inert, visible escapes: no ESC, BEL, CR,
  no newline that forges a second line, no C1, bidi override/isolate, zero-width or
  line/paragraph separator. JSON log lines escape the same characters and still parse
  to the values that were logged. The terminal gate (``term_text``) and the log lines use
  one definition of those characters. errors.ndjson and manifest.json, which people show
  on a terminal, hold them as JSON escapes.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote, quote_plus

import orjson
import pytest
from aiohttp import web
from yarl import URL

from harvester import cli
from harvester.display import term_text
from harvester.obs import event, setup_logging
from harvester.redact import Redactor
from harvester.sim import SimConfig, SimServer
from tests.faults.test_tokens_redaction import everything_under
from tests.integration.helpers import LoopbackProxy, LoopThread, read_lines

SECRET = 'Ab+/c=d%e&f"g\\h s3cretZ9'
CLIENT_ID = "harvest-client"
#: What a terminal would act on: an OSC title, a bell, colour, a CR, a newline that starts
#: a forged log line, a bidi override, a C1 CSI, a line separator and a bidi isolate.
EVIL_TAIL = ("\x1b]0;pwned\x07\x1b[31mRED\x1b[0m\r\n2099 FAKE info harvest.done\u202e"
             "\x9b1m\u2028\u2066")
EVIL = "evil" + EVIL_TAIL
UNSAFE = "\x00\x07\x08\x09\x0a\x0d\x1b\x7f\x85\x9b\u061c\u200b\u200e\u200f\u202a\u202e" \
         "\u2028\u2029\u2060\u2066\u2069\ufeff\U000e0001"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def b64_after(prefix: str, secret: str) -> str:
    """The characters of base64(prefix + secret) that encode only the secret's bytes."""
    skip = -(-len(prefix.encode()) * 8 // 6)
    return base64.b64encode((prefix + secret).encode()).decode()[skip:]


def encoded_forms(secret: str, client_id: str = CLIENT_ID) -> dict[str, str]:
    """Every way a server may echo the secret back, each as the part that encodes only
    the secret (what must not survive the redactor)."""
    pct = quote(secret, safe="")
    return {
        "form body (quote_plus, as aiohttp sends it)": quote_plus(secret),
        "percent-encoded": pct,
        "percent-encoded, path-safe": quote(secret),
        "percent-encoded, lower-case hex": re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), pct),
        "base64": b64(secret),
        "base64, unpadded url-safe": base64.urlsafe_b64encode(secret.encode()).decode()
        .rstrip("="),
        "HTTP Basic id:secret": b64_after(f"{client_id}:", secret),
        "HTTP Basic, form-encoded (RFC 6749)": b64_after(f"{client_id}:", quote_plus(secret)),
        "base64 of x + secret": b64_after("x", secret),
        "base64 of xy + secret": b64_after("xy", secret),
        "JSON string": orjson.dumps(secret).decode()[1:-1],
        "Python repr": repr(secret)[1:-1],
    }


def leaked(form: str, text: str) -> bool:
    """Whether any 8 characters of ``form`` survive in ``text`` (the first and last few
    characters of a base64 form also encode its neighbours, so they may)."""
    return any(form[i:i + 8] in text for i in range(len(form) - 7))


# --- unit: the redactor --------------------------------------------------------------------

@pytest.mark.parametrize(("how", "form"), sorted(encoded_forms(SECRET).items()))
def test_the_redactor_masks_every_encoded_form_of_a_secret(how: str, form: str) -> None:
    r = Redactor()
    r.add(SECRET)
    text = f"HTTP 403 'denied: got Basic aGFydmVzdC1{form}== from you'"
    assert not leaked(form, r.scrub(text)), (how, r.scrub(text))
    assert "***" in r.scrub(text)
    line = orjson.loads(r.scrub_known_line(orjson.dumps({"message": text})))["message"]
    assert not leaked(form, line) and line.startswith("HTTP 403"), (how, line)
    assert not leaked(form, r.scrub_known({"m": [text]})["m"][0]), how


def test_encoded_forms_of_a_token_are_masked_and_plain_text_is_not() -> None:
    r = Redactor()
    tok = "opaque-token-value-0123456789"
    r.add(tok)
    assert "***" in r.scrub(f"Basic {b64('u:' + tok)}") and tok not in r.scrub(tok)
    assert r.scrub("a plain sentence, nothing to hide") == "a plain sentence, nothing to hide"
    r.add("short")  # too short to be a real secret: its forms are not registered either
    assert r.scrub(f"short {b64('short')}") == f"short {b64('short')}"


# --- unit: the formatters ------------------------------------------------------------------

def logged(fmt: str, **fields: object) -> str:
    buf = io.StringIO()
    setup_logging(fmt=fmt, stream=buf)
    event("harvest.catalog_failed", **fields)
    return buf.getvalue()


def test_a_text_log_line_escapes_what_a_terminal_would_act_on() -> None:
    line = logged("text", catalog=EVIL, error=f"content /x/{EVIL}: HTTP 403 {EVIL!r}")
    assert line.count("\n") == 1 and line.endswith("\n"), line
    assert not any(ch in line[:-1] for ch in UNSAFE), ascii(line)
    # Shown, not dropped: a reader sees what the server sent.
    assert "catalog=evil\\x1b]0;pwned\\x07" in line and "\\r\\n2099 FAKE" in line, line
    assert "\\u202e" in line and "\\u2028" in line, line


def test_a_json_log_line_escapes_them_and_keeps_the_values() -> None:
    line = logged("json", catalog=EVIL, all=UNSAFE)
    assert line.count("\n") == 1, line
    assert not any(ch in line[:-1] for ch in UNSAFE), ascii(line)
    data = orjson.loads(line)
    assert data["catalog"] == EVIL and data["all"] == UNSAFE


@pytest.mark.parametrize("ch", list(UNSAFE), ids=lambda ch: f"U+{ord(ch):04X}")
def test_the_terminal_gate_and_log_lines_agree_on_what_is_unsafe(ch: str) -> None:
    assert term_text(f"a{ch}b") == "ab"
    assert ch not in logged("text", v=f"a{ch}b")[:-1]


def test_printable_text_passes_every_gate_unchanged() -> None:
    text = "Café — 東京 مرحبا [bold]x[/] tab-less  nbsp\u00a0"
    assert term_text(text) == text
    assert f"v={text}" in logged("text", v=text)
    assert orjson.loads(logged("json", v=text))["v"] == text


# --- end to end: a hostile server echoes what it was sent ----------------------------------

class EchoingProxy(LoopbackProxy):
    """Forwards to the simulator, adds a catalog whose id is :data:`EVIL`, and answers
    that catalog with a 403 whose detail echoes the token request's own form value of
    the secret, its base64 and the HTTP Basic header a client might have sent."""

    def __init__(self, srv: SimServer) -> None:
        super().__init__()
        self.srv = srv
        self.sent_secret = ""  # as the harvester's token request form-encoded it

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        if request.path.endswith("/access_token"):
            raw = body.decode()
            self.sent_secret = raw.split("client_secret=")[1].split("&")[0]
            assert parse_qs(raw)["client_secret"] == [SECRET]
        if "/evil" in request.raw_path:
            echo = (f"denied {EVIL_TAIL} form {self.sent_secret} pct {quote(SECRET, safe='')}"
                    f" b64 {b64(SECRET)} basic Basic {b64(CLIENT_ID + ':' + SECRET)}")
            return web.json_response({"detail": echo}, status=403)
        headers = {k: request.headers[k] for k in ("Authorization", "Accept", "Content-Type")
                   if k in request.headers}
        url = URL(self.srv.base_url + request.raw_path, encoded=True)
        async with self._session.request(request.method, url, data=body or None,
                                         headers=headers, allow_redirects=False) as up:
            raw_up, status, ctype = await up.read(), up.status, up.content_type
        if request.path.rstrip("/").endswith("/enterprise-catalogs") and status == 200:
            data = orjson.loads(raw_up)
            data["results"].append({**data["results"][0], "uuid": EVIL, "title": EVIL})
            data["count"] += 1
            raw_up = orjson.dumps(data)
        return web.Response(status=status, body=raw_up, content_type=ctype)


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_hostile_server_echoing_the_secret_and_control_chars_is_inert_and_masked(
        log_format: str, loop: LoopThread, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    srv = SimServer(SimConfig(catalogs=1, items=10, rate_lms="0", client_id=CLIENT_ID,
                              client_secret=SECRET), port=0)
    loop.run(srv.start())
    proxy = EchoingProxy(srv)
    loop.run(proxy.start())
    try:
        out = tmp_path / "out"
        code, err = harvest_once(proxy.base_url, out, log_format, monkeypatch, capsys)
    finally:
        loop.run(proxy.close())
        loop.run(srv.close())
    assert code == 3, err
    assert proxy.sent_secret == quote_plus(SECRET)
    errors = read_lines(out / "errors.ndjson")
    assert [(e["kind"], e["catalog_uuid"]) for e in errors] == [("catalog_failed", EVIL)]
    assert EVIL in orjson.loads((out / "manifest.json").read_bytes())["catalogs"]
    for name in ("errors.ndjson", "manifest.json"):  # people cat these: the same values,
        text = (out / name).read_text()                # every unsafe character escaped
        assert not any(ch in text for ch in UNSAFE if ch != "\n"), (name, ascii(text))
    forms = {**encoded_forms(SECRET), "echoed form body": proxy.sent_secret}
    for name, data in [*everything_under(out), ("stderr", err.encode())]:
        text = data.decode(errors="replace")
        assert not [how for how, form in forms.items() if leaked(form, text)], (name, text)
    assert "harvest.catalog_failed" in err and "***" in err, err
    for line in err.splitlines():
        assert not any(ch in line for ch in UNSAFE), ascii(line)
        if log_format == "text":
            assert re.match(r"\d\d:\d\d:\d\d (info|warning|error) ", line), ascii(line)
        else:
            orjson.loads(line)


def test_inert_json_escapes_unsafe_characters_and_keeps_the_values() -> None:
    from harvester.obs import inert_json

    value = {"t": f"Café {UNSAFE} 東京", EVIL: [1, "\u00a0"]}
    data = orjson.dumps(value, option=orjson.OPT_INDENT_2)
    assert not any(ch in inert_json(data).decode() for ch in UNSAFE if ch != "\n")
    assert orjson.loads(inert_json(data)) == value
    assert inert_json(b'{"a": 1}\n') == b'{"a": 1}\n'


def harvest_once(base: str, out: Path, log_format: str, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str], client: tuple[str, str] = (CLIENT_ID, SECRET)
                 ) -> tuple[int, str]:
    """One listing-only ``harvester harvest`` in-process with two fast tries, as
    ``client`` (id, secret): its exit code and stderr."""
    monkeypatch.setenv("EDX_CLIENT_ID", client[0])
    monkeypatch.setenv("EDX_CLIENT_SECRET", client[1])
    cfg = out.parent / "fast.toml"
    cfg.write_text("[retry]\nmax_tries = 2\nbackoff_base = 0\nbackoff_cap = 0\n")
    code = cli.main(["harvest", "--out", str(out), "--api-base", base, "--progress", "off",
                     "--no-details", "--config", str(cfg), "--log-format", log_format])
    return code, capsys.readouterr().err
