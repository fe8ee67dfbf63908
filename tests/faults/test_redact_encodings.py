"""A secret is masked in every common encoding a server may echo it back in.

Percent-encoding by any usual encoder (RFC 3986 strict with ``~`` as ``%7E``, Java's
form encoding, every byte as ``%XX``, either hex case, single or double), JSON with
escaped slashes (PHP) or every character ``\\u``-escaped, hex; and a base64 form is
masked with its whole run of base64 characters, so no edge character tells the
secret's last bits. In log lines, errors.ndjson, catalog files, manifests and names.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import orjson
import pytest
from aiohttp import web

from harvester.redact import Redactor
from tests.faults.test_log_safety import harvest_once
from tests.faults.test_tokens_redaction import everything_under
from tests.integration.helpers import LoopbackProxy, LoopThread

SECRET = "S3cr/et+x y&z=Q~k"
CLIENT_ID = "cid-odd"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def forms(secret: str) -> dict[str, str]:
    """The encodings the redactor on main let through, each spelled out by hand."""
    pct = quote(secret, safe="")
    return {
        "RFC-strict percent (~ as %7E)": pct.replace("~", "%7E"),
        "Java URLEncoder form": quote_plus(secret).replace("~", "%7E"),
        "lower-case hex, ~ as %7e": re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(),
                                           pct.replace("~", "%7E")),
        "JSON, escaped slashes (PHP)": orjson.dumps(secret).decode()[1:-1].replace(
            "/", "\\/"),
        "every byte as %XX": "".join(f"%{b:02X}" for b in secret.encode()),
        "every byte as %xx": "".join(f"%{b:02x}" for b in secret.encode()),
        "double percent-encoding": quote(pct, safe=""),
        "double, ~ as %7E": quote(pct.replace("~", "%7E"), safe=""),
        "every char \\u-escaped": "".join(f"\\u{ord(c):04x}" for c in secret),
        "every char \\u-escaped, upper hex": "".join(f"\\u{ord(c):04X}" for c in secret),
        "hex of the bytes": secret.encode().hex(),
    }


def leaked(form: str, text: str) -> bool:
    """Whether any 6 characters of ``form`` survive in ``text``."""
    return any(form[i:i + 6] in text for i in range(len(form) - 5))


@pytest.mark.parametrize(("how", "form"), sorted(forms(SECRET).items()))
def test_the_redactor_masks_the_secret_in_every_common_encoding(how: str, form: str) -> None:
    r = Redactor()
    r.add(SECRET)
    text = f"HTTP 403 denied: you sent <{form}> here"
    assert not leaked(form, r.scrub(text)), (how, r.scrub(text))
    line = orjson.loads(r.scrub_known_line(orjson.dumps({"m": text})))["m"]
    assert not leaked(form, line) and line.startswith("HTTP 403"), (how, line)
    assert not leaked(form, r.scrub_known({"m": [text]})["m"][0]), how
    assert r.mentions(orjson.dumps({"id": f"pct-{form}-id"})), how


@pytest.mark.parametrize("text", [
    f"b64 <{b64(SECRET)}>", f"x Basic {b64(CLIENT_ID + ':' + SECRET)} y",
    f"nopad {b64(CLIENT_ID + ':' + SECRET).rstrip('=')}.",
    f"url {base64.urlsafe_b64encode(SECRET.encode()).decode()}",
    f"php {b64(CLIENT_ID + ':' + SECRET).replace('/', chr(92) + '/')} end",
], ids=["b64", "basic", "basic-nopad", "b64url", "php-escaped-slash"])
def test_a_base64_form_is_masked_with_its_whole_run_edges_and_padding(text: str) -> None:
    r = Redactor()
    r.add(SECRET)
    out = r.scrub(text)
    run = re.search(r"(?:[A-Za-z0-9+/_=-]|\\/){12,}", text)
    assert run is not None
    assert "***" in out and not re.search(r"\*\*\*[A-Za-z0-9+/=_-]|[A-Za-z0-9+/_-]\*\*\*", out), out
    assert out.replace("***", run[0]) == text, out
    line = orjson.loads(r.scrub_known_line(orjson.dumps({"m": text})))["m"]
    assert line == out


def test_plain_words_and_tokens_collapse_to_few_forms() -> None:
    r = Redactor()
    r.add("opaque-token-value-0123456789")
    assert r.scrub("a plain sentence, 20% off, %41 %7E ~") == "a plain sentence, 20% off, %41 %7E ~"
    assert len(r._secrets) <= 24  # alphanumeric tokens: the variants collapse


# --- end to end: a hostile server echoes the secret in every encoding ------------------------

PCT_ID = f"pct-{quote(SECRET, safe='').replace('~', '%7E')}-id"
#: One denied catalog per form: an error excerpt is cut short, so each echoes only one.
ECHOES = {f"denied-{i:02d}": v for i, v in enumerate(
    [*forms(SECRET).values(), f"Basic {b64(CLIENT_ID + ':' + SECRET)}"])}


class HostileServer(LoopbackProxy):
    """A whole API: catalogs whose content 403s with the secret in one encoding each,
    and one whose id holds the RFC-strict percent form and lists one item."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.endswith("/access_token"):
            return web.json_response({"access_token": "tok-abcdefghijklmnop",
                                      "expires_in": 3600, "token_type": "JWT"})
        if path.rstrip("/").endswith("/enterprise-catalogs"):
            results = [{"uuid": u, "title": "t"} for u in (*ECHOES, PCT_ID)]
            return web.json_response({"count": len(results), "next": None,
                                      "results": results})
        for uuid, echo in ECHOES.items():
            if uuid in path:
                return web.json_response({"detail": f"you sent <{echo}>"}, status=403)
        item = {"content_type": "learnerpathway", "key": "k1", "uuid": "p1", "title": "x"}
        return web.json_response({"count": 1, "next": None, "results": [item]})


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_server_echoing_the_secret_in_every_encoding_leaks_it_nowhere(
        log_format: str, loop: LoopThread, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    server = HostileServer()
    loop.run(server.start())
    try:
        out = tmp_path / "out"
        code, err = harvest_once(server.base_url, out, log_format, monkeypatch, capsys,
                                 (CLIENT_ID, SECRET))
    finally:
        loop.run(server.close())
    assert code == 3, err
    assert "harvest.catalog_failed" in err and "***" in err, err
    every = {**forms(SECRET), "basic": b64(CLIENT_ID + ":" + SECRET)[4:-4]}
    seen = [(str(p.relative_to(out)), d.decode(errors="replace"))
            for p, d in everything_under(out)]
    for name, text in [*seen, ("stderr", err), ("names", "\n".join(n for n, _ in seen))]:
        assert not [how for how, f in every.items() if leaked(f, text)], (name, text)
    assert not re.search(r"\*\*\*[A-Za-z0-9+/=]|[A-Za-z0-9+/]\*\*\*", err), err
