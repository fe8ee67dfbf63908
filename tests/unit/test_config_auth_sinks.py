"""Config loading, token management, paths and sinks: no network."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import orjson
import pytest

from harvester.auth import Grant, TokenManager, parse_grant, refresh_margin
from harvester.client import content_path, detail_path, learners_path
from harvester.config import Rate, Secret, load_settings
from harvester.errors import AuthError, ConfigError
from harvester.outputs import catalog_dirname
from harvester.partfile import PartFile, iter_lines
from tests.conftest import FakeTime

# --- config ------------------------------------------------------------------------------


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "h.toml"
    cfg.write_text('[api]\nbase = "https://file.example"\n[harvest]\npage_size = 50\n'
                   'concurrency = 3\n[rates]\nlms = "30/min"\n')
    settings, _ = load_settings(
        cli={"harvest.page_size": 75},
        environ={"EDX_API_BASE": "https://env.example", "EDX_CLIENT_ID": "id",
                 "EDX_CLIENT_SECRET": "s3cr3t-value"},
        config_file=cfg)
    assert settings.api.base == "https://env.example"
    assert settings.harvest.page_size == 75
    assert settings.limits.concurrency == 3
    assert settings.limits.lms == Rate(30, 60)
    assert settings.api.token_url == "https://env.example/oauth2/v1/access_token"


def test_secret_never_shows(tmp_path: Path) -> None:
    settings, _ = load_settings(cli={}, environ={"EDX_CLIENT_SECRET": "s3cr3t-value"},
                                config_file=None)
    assert "s3cr3t" not in repr(settings)
    assert "s3cr3t" not in str(settings.public_dict())
    assert settings.api.client_secret.reveal() == "s3cr3t-value"
    assert repr(Secret("abc")) == "Secret('***')"


@pytest.mark.parametrize(("text", "needle"), [
    ('[harvest]\npage_sise = 3\n', "harvest.page_sise"),
    ('[rates]\nlms = "fast"\n', "rates.lms"),
    ('[harvest]\nconcurrency = 0\n', "harvest.concurrency"),
    ('[api]\nbase = "ftp://x"\n', "api.base"),
    ('[harvest]\ndetails = "maybe"\n', "harvest.details"),
    ('[nonsense]\na = 1\n', "nonsense"),
    ('page_size = 3\n', "page_size"),
    ('[api\n', "not valid TOML"),
])
def test_invalid_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        load_settings(cli={}, environ={}, config_file=cfg)
    assert needle in str(info.value)


def test_secret_value_not_echoed_in_config_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[api]\nclient_secret = 12345678\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cli={}, environ={}, config_file=cfg)
    assert "12345678" not in str(info.value)


def test_missing_credentials_is_a_clear_error() -> None:
    settings, _ = load_settings(cli={}, environ={}, config_file=None)
    with pytest.raises(ConfigError, match="EDX_CLIENT_ID and EDX_CLIENT_SECRET"):
        settings.api.require_credentials()


def test_example_config_is_valid() -> None:
    example = Path(__file__).parents[2] / "config" / "harvester.example.toml"
    settings, _ = load_settings(cli={}, environ={}, config_file=example)
    assert settings.harvest.page_size == 250


# --- auth --------------------------------------------------------------------------------


def test_parse_grant() -> None:
    g = parse_grant({"access_token": "abc.def.ghi", "token_type": "JWT", "expires_in": "180"})
    assert g.expires_in == 180.0 and "abc" not in repr(g)
    with pytest.raises(AuthError):
        parse_grant({"access_token": "x", "token_type": "Bearer", "expires_in": 10})
    with pytest.raises(AuthError):
        parse_grant({"token_type": "JWT"})


def test_refresh_margin() -> None:
    assert refresh_margin(180) == 18 and refresh_margin(20) == 5 and refresh_margin(4) == 2


async def test_hundred_waiters_one_token_request(fake_time: FakeTime) -> None:
    calls = 0

    async def fetch() -> Grant:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return Grant(f"tok{calls}", "JWT", 180.0)

    tm = TokenManager(fetch, clock=fake_time)
    tokens = await asyncio.gather(*(tm.token() for _ in range(100)))
    assert calls == 1 and set(tokens) == {"tok1"}
    fake_time.now += 170  # inside the refresh margin (18 s before expiry)
    assert await tm.token() == "tok2"
    # 401s for the same stale token from many workers: one refresh
    again = await asyncio.gather(*(tm.rejected("tok2") for _ in range(10)))
    assert calls == 3 and set(again) == {"tok3"}


# --- paths and sinks ---------------------------------------------------------------------


def test_detail_keys_are_encoded_for_a_path() -> None:
    cat = "3f56a21c-76c8-47c0-add8-a99714d40d94"
    assert detail_path(cat, "courserun", "course-v1:edX+DemoX+T1") == (
        f"/enterprise/v2/enterprise-catalogs/{cat}/course-runs/course-v1:edX+DemoX+T1")
    assert detail_path(cat, "course", "MyUni+Sport101x").endswith("/courses/MyUni+Sport101x")
    hostile = detail_path(cat, "course", "a/../b?x=1#f")
    assert hostile is not None and hostile.endswith("/courses/a%2F..%2Fb%3Fx%3D1%23f")
    assert detail_path(cat, "course", "..") is not None
    assert detail_path(cat, "course", "..").endswith("/courses/%2E%2E")  # type: ignore[union-attr]
    assert detail_path(cat, "learnerpathway", "x") is None
    assert content_path("a/b") == "/enterprise/v2/enterprise-catalogs/a%2Fb"
    assert learners_path("e f").endswith("/enterprise-customer/e%20f/learner-summary")


@pytest.mark.parametrize("hostile", ["../../etc", "/abs", "a/b", ".", "..", "x\x00y",
                                     "%2e%2e", "é" * 300, ""])
def test_catalog_dirname_cannot_escape(tmp_path: Path, hostile: str) -> None:
    name = catalog_dirname(hostile)
    assert "/" not in name and "\x00" not in name and name.startswith("catalog=")
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()
    assert len(name) < 255


def test_uuid_catalog_dirname_is_plain() -> None:
    u = "3f56a21c-76c8-47c0-add8-a99714d40d94"
    assert catalog_dirname(u) == f"catalog={u}"
    # An upper-case UUID is another id: it must not share the lowercase one's directory.
    assert catalog_dirname(u.upper()) != catalog_dirname(u)
    assert catalog_dirname("x") != catalog_dirname("y")


def test_part_file_resume_cuts_back_to_committed(tmp_path: Path) -> None:
    final = tmp_path / "c" / "courses.ndjson"
    f = PartFile(final)
    f.write(b'{"a":1}\n')
    size, lines = f.checkpoint()
    f.write(b'{"a":2}\n{"a":')  # written after the checkpoint, then the process "dies"
    f.checkpoint()
    f.abandon()
    again = PartFile(final, resume_at=(size, lines))
    again.write(b'{"a":3}\n')
    info = again.commit()
    assert final.read_bytes() == b'{"a":1}\n{"a":3}\n'
    assert info.lines == 2 and not final.with_name("courses.ndjson.part").exists()


def test_gzip_checkpoints_are_valid_members(tmp_path: Path) -> None:
    final = tmp_path / "c.ndjson.gz"
    f = PartFile(final, compress=True)
    f.write(b"1\n")
    cp = f.checkpoint()
    f.write(b"2\n")
    f.checkpoint()
    f.abandon()
    again = PartFile(final, compress=True, resume_at=cp)
    again.write(b"3\n")
    again.commit()
    assert gzip.decompress(final.read_bytes()) == b"1\n3\n"
    assert list(iter_lines(final, compressed=True)) == [b"1\n", b"3\n"]


@pytest.mark.parametrize("bad", ["3/3", "1", "a/b", "-1/2", "0/0"])
def test_bad_shard_names_the_key(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"harvest\.shard"):
        load_settings(cli={"harvest.shard": bad}, environ={}, config_file=None)


def test_redactor_finds_any_of_many_secrets_at_any_offset() -> None:
    """The one-pass pre-filter over data (a hundred tenants' secrets) misses nothing: a
    secret at every offset modulo the stride, a short one, a token among many; and data
    without one is left alone."""
    from harvester.redact import Redactor

    r = Redactor()
    secrets_ = [f"{i:02d}" + "abcdef0123456789" * 2 for i in range(100)]
    for s in secrets_:
        r.add(s)
    r.add("short7")
    for n in range(20):
        r.add(f"eyJhbGciOiJIUzI1NiJ9.payload{n:04d}.sig")
    clean = orjson.dumps({"title": "x" * 500, "body": "lorem ipsum dolor " * 50})
    assert not r.mentions(clean)
    for offset in range(9):
        for secret in (secrets_[57], "short7", "eyJhbGciOiJIUzI1NiJ9.payload0013.sig"):
            data = orjson.dumps({"t": "y" * offset + secret + "z" * 40})
            assert r.mentions(data), (offset, secret)
            assert secret.encode() not in r.scrub_known_line(data)
