"""Bad command lines and config files: each is exit 2, one line, before any request.

Every case runs ``harvester`` in-process (as from a shell) against a live simulator whose
request counters must stay at zero, and must leave nothing on disk: not OUT, not the
store. An exception escaping ``cli.main`` (a traceback from a shell) fails the case.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import get_type_hints

import pytest

from harvester import cli
from harvester.config import MAX_CONCURRENCY, SCHEMA, LearnersConfig, Settings
from harvester.pipeline import Harvest
from harvester.sim import SimConfig, SimServer
from tests.conftest import SimStarter, settings_for
from tests.integration.helpers import LoopThread, assert_exactly_once, truth

ENTERPRISE = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def sim(loop: LoopThread) -> Iterator[SimServer]:
    srv = SimServer(SimConfig(catalogs=2, items=5, rate_lms="0", rate_learners="0"), port=0)
    loop.run(srv.start())
    yield srv
    loop.run(srv.close())


def requests_made(srv: SimServer) -> int:
    snap = srv.state.stats.snapshot()
    return sum(sum(by_status.values()) for by_status in snap["requests"].values()) + int(
        snap["tokens_issued"])


@dataclass(frozen=True)
class Case:
    """One bad invocation: the argv after the command's own target flags, and a config."""

    command: str
    args: tuple[str, ...] = ()
    config: str | None = None  # TOML text; "<dir>" passes a directory as --config
    env: bool = True  # credentials in the environment
    says: str = ""  # a word the one line must contain


CASES: dict[str, Case] = {
    # --- numbers out of range, or not numbers -------------------------------------------
    "concurrency zero": Case("harvest", ("--concurrency", "0"), says="concurrency"),
    "concurrency negative": Case("harvest", ("--concurrency", "-3"), says="concurrency"),
    "concurrency not a number": Case("harvest", ("--concurrency", "many"), says="concurrency"),
    "concurrency unbounded": Case("harvest", ("--concurrency", "200000"), says="1000"),
    "concurrency just over": Case("sync", ("--concurrency", str(MAX_CONCURRENCY + 1)),
                                  says="concurrency"),
    "page concurrency unbounded": Case("harvest", ("--page-concurrency", "5000"),
                                       says="page_concurrency"),
    "page size zero": Case("harvest", ("--page-size", "0"), says="page_size"),
    "page size negative": Case("harvest", ("--page-size", "-1"), says="page_size"),
    "page size float": Case("harvest", ("--page-size", "2.5"), says="page-size"),
    "shard index >= N": Case("harvest", ("--shard", "3/2"), says="shard"),
    "shard of zero": Case("harvest", ("--shard", "0/0"), says="shard"),
    "shard nonsense": Case("harvest", ("--shard", "half"), says="shard"),
    "rate nonsense": Case("harvest", ("--rate-lms", "fast"), says="rates.lms"),
    "rate zero": Case("harvest", ("--rate-lms", "0/s"), says="rates.lms"),
    "keep zero": Case("sync", ("--keep", "0"), says="keep"),
    "keep not a number": Case("sync", ("--keep", "all"), says="keep"),
    "max-age inf": Case("sync", ("--max-age", "inf"), says="max-age"),
    "max-age overflows": Case("sync", ("--max-age", "1e308d"), says="max-age"),
    "max-age nan": Case("sync", ("--max-age", "nan"), says="max-age"),
    "max-age zero": Case("sync", ("--max-age", "0d"), says="max-age"),
    "max-age negative": Case("sync", ("--max-age", "-1d"), says="max-age"),
    "as-of nonsense": Case("sync", ("--as-of", "yesterday"), says="as-of"),
    "demo items negative": Case("demo", ("--items", "-1"), says="items"),
    # --- empty values (an unset shell variable) -------------------------------------------
    "catalog empty": Case("harvest", ("--catalog", ""), says="catalog"),
    "catalog blank": Case("sync", ("--catalog", "  "), says="catalog"),
    "catalog empty among real": Case("harvest", ("--catalog", ENTERPRISE, "--catalog", ""),
                                     says="catalog"),
    "out empty": Case("harvest", ("--out", ""), says="out"),
    "store empty": Case("sync", ("--store", ""), says="store"),
    "shard empty": Case("harvest", ("--shard", ""), says="shard"),
    "token url empty": Case("harvest", ("--token-url", ""), says="token_url"),
    "enterprise empty": Case("learners", ("--enterprise", ""), says="enterprise"),
    "catalogs list with a blank": Case("harvest", config='[harvest]\ncatalogs = [""]\n',
                                       says="catalogs"),
    # --- config files ---------------------------------------------------------------------
    "unknown key": Case("harvest", config="[harvest]\nconcurency = 4\n", says="concurency"),
    "unknown section": Case("harvest", config="[harvset]\npage_size = 5\n", says="harvset"),
    "sync typo on harvest": Case("harvest", config='[sync]\nmax_agee = "7d"\n',
                                 says="max_agee"),
    "sync typo on sync": Case("sync", config="[sync]\nkeeep = 3\n", says="keeep"),
    "learners typo on harvest": Case("harvest", config='[learners]\npii_mode = "hash"\n',
                                     says="pii_mode"),
    "learners typo on sync": Case("sync", config="[learners]\ncvs = true\n", says="cvs"),
    "sync bad max_age": Case("sync", config='[sync]\nmax_age = "forever"\n',
                             says="sync.max_age"),
    "sync infinite max_age": Case("sync", config="[sync]\nmax_age = inf\n",
                                  says="sync.max_age"),
    "sync bad keep": Case("harvest", config="[sync]\nkeep = 0\n", says="sync.keep"),
    "learners bad pii on harvest": Case("harvest", config='[learners]\npii = "maybe"\n',
                                        says="learners.pii"),
    "section not a table": Case("harvest", config="sync = 3\n", says="sync"),
    "bad toml": Case("harvest", config="[harvest\nconcurrency = 4\n", says="TOML"),
    "config is a directory": Case("harvest", config="<dir>", says="config"),
    "config missing": Case("harvest", config="<missing>", says="not found"),
    "retries that overflow the back-off": Case("harvest", config="[retry]\nmax_tries = 5000\n",
                                               says="max_tries"),
    "concurrency from config": Case("harvest", config="[harvest]\nconcurrency = 100000\n",
                                    says="concurrency"),
    # --- environment -----------------------------------------------------------------------
    "no credentials harvest": Case("harvest", env=False, says="EDX_CLIENT_ID"),
    "no credentials sync": Case("sync", env=False, says="EDX_CLIENT_ID"),
    "no credentials learners": Case("learners", ("--enterprise", ENTERPRISE), env=False,
                                    says="EDX_CLIENT_ID"),
}


def argv_for(case: Case, tmp_path: Path, srv: SimServer) -> list[str]:
    target = {"harvest": ["--out", str(tmp_path / "out")],
              "sync": ["--store", str(tmp_path / "store")],
              "learners": ["--out", str(tmp_path / "out")],
              "demo": ["--out", str(tmp_path / "out")]}[case.command]
    # The case's own flags come last, so they override the target (e.g. --out "").
    argv = [case.command, *target]
    if case.command != "demo":
        argv += ["--api-base", srv.base_url, "--progress", "off"]
    if case.config is not None:
        path = tmp_path / "cfg.toml"
        if case.config == "<dir>":
            path = tmp_path / "cfgdir"
            path.mkdir()
        elif case.config != "<missing>":
            path.write_text(case.config)
        argv += ["--config", str(path)]
    return argv + list(case.args)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_value_is_exit_2_one_line_no_request(
        name: str, sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    if case.env:
        monkeypatch.setenv("EDX_CLIENT_ID", sim.client_id)
        monkeypatch.setenv("EDX_CLIENT_SECRET", sim.client_secret)
    monkeypatch.chdir(tmp_path)  # an empty --out/--store must not land in the cwd either
    before = requests_made(sim)
    capsys.readouterr()
    code = cli.main(argv_for(case, tmp_path, sim))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert case.says.lower() in lines[0].lower(), lines[0]
    assert requests_made(sim) == before, "a request was made before the value was checked"
    left = sorted(p.name for p in tmp_path.iterdir()) if tmp_path.exists() else []
    assert not set(left) - {"cfg.toml", "cfgdir"}, f"files left behind: {left}"


def test_one_schema_covers_every_section_setting() -> None:
    """Every field of every Settings section has exactly one key in the one schema (so a
    [learners] or [sync] typo is an error for every command, and nothing drifts)."""
    by_field = {(section, attr) for section, attr, _ in SCHEMA.values()}
    assert len(by_field) == len(SCHEMA)
    sections = get_type_hints(Settings)
    assert sections["learners"] is LearnersConfig
    assert {(name, f.name) for name, cls in sections.items() for f in fields(cls)} == by_field


# --- [sync] is wired up: defaults from the file, flags override ---------------------------

def test_sync_section_supplies_store_keep_and_max_age(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDX_CLIENT_ID", sim.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", sim.client_secret)
    store = tmp_path / "from-config"
    cfg = tmp_path / "cfg.toml"
    # max_age = 1s: every detail is due again the next night.
    cfg.write_text(f'[sync]\nstore = "{store}"\nkeep = 1\nmax_age = "1s"\n'
                   "[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
    base = ["sync", "--api-base", sim.base_url, "--progress", "off", "--quiet",
            "--config", str(cfg)]

    def night(day: str, *flags: str) -> int:
        before = sim.state.stats.detail_requests
        assert cli.main([*base, "--as-of", day, *flags]) == 0
        return sim.state.stats.detail_requests - before

    first = night("2026-01-01")
    assert first > 0 and night("2026-01-02") == first  # all refreshed: max_age from [sync]
    assert sorted(p.name for p in (store / "snapshots").iterdir()) == ["20260102T000000Z"]
    # Flags beat the file: another store, keep 5, and a max_age that refreshes little.
    flag_store = tmp_path / "from-flag"
    flags = ("--store", str(flag_store), "--keep", "5", "--max-age", "30d")
    first = night("2026-01-03", *flags)
    assert night("2026-01-04", *flags) < first
    assert len(list((flag_store / "snapshots").iterdir())) == 2
    assert len(list((store / "snapshots").iterdir())) == 1
    capsys.readouterr()


def test_sync_without_a_store_anywhere_is_a_usage_error(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDX_CLIENT_ID", sim.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", sim.client_secret)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["sync", "--api-base", sim.base_url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--store" in err[0] and "[sync]" in err[0]
    assert list(tmp_path.iterdir()) == []


# --- workers are created lazily -------------------------------------------------------------

async def test_workers_are_never_more_than_the_jobs(start_sim: SimStarter,
                                                    tmp_path: Path) -> None:
    srv = await start_sim(catalogs=1, items=5)
    expected = await truth(srv)
    harvest = Harvest(settings_for(srv, tmp_path, **{"harvest.concurrency": MAX_CONCURRENCY}))
    result = await harvest.run()
    assert result.status == "complete"
    assert_exactly_once(tmp_path, expected)
    assert 1 <= harvest.workers_started <= 5
