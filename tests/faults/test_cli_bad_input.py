"""Bad input an adversarial tester found to end in a traceback (or to be silently
accepted): each is one line and the exit code of the README's table, before any request,
leaving nothing on disk.

URLs that parse but cannot be used (a port out of range, an unclosed bracket), config
files that are not UTF-8 or nest 5000 arrays, ``--as-of`` dates outside the calendar in
UTC, names no filesystem can hold, export sources that are not JSON or are cut short, bad
index names, a bad value in a layer that a flag or the environment overrides, and an
environment variable that is set but empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harvester import cli
from harvester.sim import SimServer
from tests.faults.test_cli_config import loop, requests_made, sim

__all__ = ["loop", "sim"]  # module fixtures, imported for pytest

ENTERPRISE = "0f8fad5b-d9cb-469f-a165-70867728950e"
LONG = "n" * 300


@dataclass(frozen=True)
class Case:
    """argv (``{tmp}`` is the test's directory), an optional config file (bytes), the
    environment to add, and a word the one line must say."""

    argv: tuple[str, ...]
    says: str
    config: bytes | None = None
    env: dict[str, str] = field(default_factory=dict)
    code: int = 2


H = ("harvest", "--out", "{tmp}/out", "--progress", "off")
E = ("export", "{tmp}/good.ndjson", "--format", "es-bulk")

CASES: dict[str, Case] = {
    "api base port out of range": Case(
        (*H, "--api-base", "http://127.0.0.1:99999"), "api.base"),
    "api base unclosed bracket": Case((*H, "--api-base", "http://[::1"), "api.base"),
    "api base host with a space": Case((*H, "--api-base", "http://bad host/"), "api.base"),
    "token url negative port": Case((*H, "--token-url", "http://127.0.0.1:-1/"),
                                    "token_url"),
    "token url bad bracket host in config": Case(
        H, "token_url", config=b'[api]\ntoken_url = "http://[zz]/"\n'),
    "config not utf-8": Case(H, "UTF-8", config=b'[output]\nout = "\xff\xfe"\n'),
    "config nested 5000 arrays": Case(
        H, "nested", config=b"[api]\nbase = " + b"[" * 5000 + b"]" * 5000 + b"\n"),
    "as-of past year 9999 in UTC": Case(
        ("sync", "--store", "{tmp}/st", "--as-of", "9999-12-31T23:59:59-14:00"), "as-of"),
    "as-of before year 1 in UTC": Case(
        ("sync", "--store", "{tmp}/st", "--as-of", "0001-01-01T00:00:00+14:00"), "as-of"),
    "learners out name too long": Case(
        ("learners", "--enterprise", ENTERPRISE, "--out", f"{{tmp}}/{LONG}"), "255"),
    "export out name too long": Case((*E, "--out", f"{{tmp}}/{LONG}"), "255"),
    "export out is the root": Case((*E, "--out", "/"), "--out"),
    "export out is the cwd": Case((*E, "--out", "."), "--out"),
    "export source not json": Case(
        ("export", "{tmp}/bad.ndjson", "--format", "jsonl", "--out", "{tmp}/x"), "JSON"),
    "export source cut short": Case(
        ("export", "{tmp}/cut.ndjson", "--format", "jsonl", "--out", "{tmp}/x"), "cut short"),
    "export index empty": Case((*E, "--out", "{tmp}/x", "--index", ""), "index"),
    "export index with a newline": Case((*E, "--out", "{tmp}/x", "--index", "a\nb"), "index"),
    "config out not a string, flag given": Case(H, "output.out",
                                                config=b"[output]\nout = 5\n"),
    "config secret not a string": Case(H, "client_secret",
                                       config=b"[api]\nclient_secret = 12345\n"),
    "config base file url, env set": Case(
        H, "api.base", config=b'[api]\nbase = "file:///etc"\n',
        env={"EDX_API_BASE": "http://127.0.0.1:9"}),
    "env api base empty": Case(H, "EDX_API_BASE", env={"EDX_API_BASE": ""}),
    "env api base blank": Case(H, "EDX_API_BASE", env={"EDX_API_BASE": "  "}),
    "env token url empty": Case(H, "EDX_TOKEN_URL", env={"EDX_TOKEN_URL": ""}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_its_exit_code(
        name: str, sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    monkeypatch.setenv("EDX_CLIENT_ID", sim.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", sim.client_secret)
    monkeypatch.setenv("EDX_API_BASE", sim.base_url)
    for var, value in case.env.items():
        monkeypatch.setenv(var, value)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (tmp_path / "good.ndjson").write_text(
        '{"op":"delete","catalog_uuid":"c","content_type":"course","key":"k"}\n')
    (tmp_path / "bad.ndjson").write_text("not json\n")
    (tmp_path / "cut.ndjson").write_text(
        '{"op":"delete","catalog_uuid":"c","content_type":"course","key":"k"}\n{"op":"up')
    argv = [a.replace("{tmp}", str(tmp_path)) for a in case.argv]
    if case.config is not None:
        (tmp_path / "cfg.toml").write_bytes(case.config)
        argv += ["--config", str(tmp_path / "cfg.toml")]
    before = requests_made(sim)
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert (code, len(lines)) == (case.code, 1), err
    assert case.says.lower() in lines[0].lower(), lines[0]
    assert requests_made(sim) == before
    left = {p.name for p in tmp_path.iterdir()} - {"work", "good.ndjson", "bad.ndjson",
                                                    "cut.ndjson", "cfg.toml"}
    assert not left and not list(work.iterdir()), left


def test_export_reads_a_good_source_after_the_checks(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The checks refuse only bad input: a valid feed and index still export."""
    src = tmp_path / "feed.ndjson"
    src.write_text('{"op":"delete","catalog_uuid":"c","content_type":"course","key":"k"}\n')
    out = tmp_path / "bulk.ndjson"
    assert cli.main(["export", str(src), "--format", "es-bulk", "--out", str(out),
                     "--index", "courses.v2"]) == 0
    assert out.read_text().count('"_index":"courses.v2"') == 1
    capsys.readouterr()
