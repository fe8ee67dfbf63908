"""We write only files we created, only inside OUT, never through a link.

Every test plants something in OUT the way another local user (or a stale tool) could: a
symlink where a temp file, a lock, a ledger or a catalog directory will go. The harvester
must never write through it: the link's target stays byte-for-byte unchanged, and an
output is never left as a link. Directories we create are never group- or world-writable,
whatever the umask. Catalog ids that differ only in case get their own directories.

The CLI runs in-process against a simulator on a background loop (real HTTP on loopback).
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from harvester import cli
from harvester.errors import SinkError
from harvester.outputs import catalog_dirname
from harvester.partfile import PartFile
from harvester.pipeline import Harvest
from harvester.sim import SimConfig, SimServer
from harvester.sinks import write_json_atomic
from harvester.state import Ledger, RunLock
from tests.conftest import SimStarter, settings_for
from tests.integration.helpers import LoopThread, assert_exactly_once, read_lines, truth

VICTIM = b"precious data that is not the harvester's\n"


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def sim(loop: LoopThread) -> Iterator[SimServer]:
    srv = SimServer(SimConfig(catalogs=2, items=20, seed=7, rate_lms="0", rate_learners="0"),
                    port=0)
    loop.run(srv.start())
    yield srv
    loop.run(srv.close())


@pytest.fixture
def victims(tmp_path: Path) -> Path:
    """A directory outside OUT holding files nobody may overwrite."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    return d


def victim(where: Path, name: str, data: bytes = VICTIM) -> Path:
    path = where / name
    path.write_bytes(data)
    return path


def plant(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def harvest(monkeypatch: pytest.MonkeyPatch, srv: SimServer, out: Path, *extra: str,
            cfg_dir: Path | None = None) -> int:
    monkeypatch.setenv("EDX_CLIENT_ID", srv.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", srv.client_secret)
    cfg = (cfg_dir or out.parent) / "fast.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
    return cli.main(["harvest", "--out", str(out), "--api-base", srv.base_url, "--rate-lms",
                     "2000/s", "--progress", "off", "--quiet", "--config", str(cfg), *extra])


def requests_made(srv: SimServer) -> int:
    """Every request the simulator answered, token requests included."""
    snap = srv.state.stats.snapshot()
    return sum(sum(by_status.values()) for by_status in snap["requests"].values()) + int(
        snap["tokens_issued"])


def no_links_under(out: Path) -> None:
    links = [p for p in out.rglob("*") if p.is_symlink()]
    assert not links, f"links left in OUT: {links}"


# --- PartFile and write_json_atomic: the two ways every output file is created -------------

def test_part_file_never_writes_through_a_planted_link(tmp_path: Path, victims: Path) -> None:
    target = victim(victims, "target")
    final = tmp_path / "out" / "courses.ndjson"
    plant(final.with_name("courses.ndjson.part"), target)
    part = PartFile(final)
    part.write(b'{"a": 1}\n')
    part.commit()
    assert target.read_bytes() == VICTIM
    assert not final.is_symlink() and final.read_bytes() == b'{"a": 1}\n'


def test_part_file_refuses_to_resume_through_a_link(tmp_path: Path, victims: Path) -> None:
    target = victim(victims, "target")
    final = tmp_path / "out" / "courses.ndjson"
    plant(final.with_name("courses.ndjson.part"), target)
    with pytest.raises(SinkError, match="link"):
        PartFile(final, resume_at=(5, 1))
    assert target.read_bytes() == VICTIM


def test_final_name_that_is_a_link_is_replaced_not_followed(tmp_path: Path,
                                                            victims: Path) -> None:
    target = victim(victims, "target")
    final = tmp_path / "out" / "errors.ndjson"
    plant(final, target)
    part = PartFile(final)
    part.write(b"{}\n")
    part.commit()
    assert target.read_bytes() == VICTIM
    assert not final.is_symlink() and final.read_bytes() == b"{}\n"


def test_manifest_temp_link_is_not_followed(tmp_path: Path, victims: Path) -> None:
    target = victim(victims, "target")
    manifest = tmp_path / "out" / "manifest.json"
    plant(manifest.with_name(".manifest.json.tmp"), target)
    write_json_atomic(manifest, {"status": "complete"})
    assert target.read_bytes() == VICTIM
    assert not manifest.is_symlink()
    assert orjson.loads(manifest.read_bytes()) == {"status": "complete"}


def test_a_linked_parent_directory_is_refused(tmp_path: Path, victims: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    plant(out / "catalog=x", victims)
    with pytest.raises(SinkError, match="link"):
        PartFile(out / "catalog=x" / "courses.ndjson", root=out)
    assert list(victims.iterdir()) == []


def test_lock_and_ledger_links_are_refused(tmp_path: Path, victims: Path) -> None:
    from harvester.errors import StateError

    for name in ("lock", "ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-journal"):
        out = tmp_path / name
        target = victim(victims, name, b"")
        plant(out / ".state" / name, target)
        opener = RunLock(out).acquire if name == "lock" else functools.partial(Ledger, out)
        with pytest.raises(StateError, match="link"):
            opener()
        assert target.read_bytes() == b"", name


# --- the whole CLI, with links planted in OUT -----------------------------------------------

def test_planted_output_links_never_written_through(
        monkeypatch: pytest.MonkeyPatch, sim: SimServer, tmp_path: Path, victims: Path) -> None:
    out = tmp_path / "out"
    cat = sim.catalog_uuids[0]
    targets = {rel: victim(victims, rel.replace("/", "_"))
               for rel in ("catalogs.ndjson.part", "errors.ndjson.part", ".manifest.json.tmp",
                           f"{catalog_dirname(cat)}/courses.ndjson.part",
                           f"{catalog_dirname(cat)}/programs.ndjson",
                           f"{catalog_dirname(cat)}/learner_pathways.ndjson")}
    for rel, target in targets.items():
        plant(out / rel, target)
    code = harvest(monkeypatch, sim, out)
    for rel, target in targets.items():
        assert target.read_bytes() == VICTIM, rel
    # A run with no ledger may refuse a non-empty OUT (exit 2); if it ran, nothing it
    # wrote may be a link.
    assert code in (0, 2)
    if code == 0:
        no_links_under(out)
        assert len(read_lines(out / "catalogs.ndjson")) == 2


def test_planted_manifest_temp_link_on_restart(
        monkeypatch: pytest.MonkeyPatch, sim: SimServer, tmp_path: Path, victims: Path) -> None:
    out = tmp_path / "out"
    assert harvest(monkeypatch, sim, out) == 0
    target = victim(victims, "manifest")
    plant(out / ".manifest.json.tmp", target)
    assert harvest(monkeypatch, sim, out, "--restart") == 0
    assert target.read_bytes() == VICTIM
    no_links_under(out)


@pytest.mark.parametrize("name", ["lock", "ledger.sqlite", "ledger.sqlite-wal"])
def test_planted_state_file_links_are_refused(
        monkeypatch: pytest.MonkeyPatch, sim: SimServer, tmp_path: Path, victims: Path,
        capsys: pytest.CaptureFixture[str], name: str) -> None:
    out = tmp_path / "out"
    target = victim(victims, name, b"")
    plant(out / ".state" / name, target)
    capsys.readouterr()
    assert harvest(monkeypatch, sim, out) == 2
    err = capsys.readouterr().err.strip()
    assert "link" in err and len(err.splitlines()) == 1, err
    assert target.read_bytes() == b""
    assert requests_made(sim) == 0


@pytest.mark.parametrize("where", ["catalog", ".state", "spool"])
def test_planted_directory_links_are_refused(
        monkeypatch: pytest.MonkeyPatch, sim: SimServer, tmp_path: Path, victims: Path,
        capsys: pytest.CaptureFixture[str], where: str) -> None:
    out = tmp_path / "out"
    keep = victim(victims, "someone-elses.ndjson")
    rel = {"catalog": catalog_dirname(sim.catalog_uuids[0]), ".state": ".state",
           "spool": ".state/spool"}[where]
    plant(out / rel, victims)
    capsys.readouterr()
    code = harvest(monkeypatch, sim, out, "--restart")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "link" in err and len(err.splitlines()) == 1, (code, err)
    assert sorted(p.name for p in victims.iterdir()) == ["someone-elses.ndjson"]
    assert keep.read_bytes() == VICTIM


def test_export_part_link_is_not_followed(
        monkeypatch: pytest.MonkeyPatch, sim: SimServer, tmp_path: Path, victims: Path) -> None:
    out = tmp_path / "out"
    assert harvest(monkeypatch, sim, out) == 0
    dest = tmp_path / "exports" / "docs.json"
    targets = [victim(victims, "export"), victim(victims, "deletes")]
    plant(dest.with_name("docs.json.part"), targets[0])
    plant(dest.with_name("docs.json.deletes.json.part"), targets[1])
    assert cli.main(["export", str(out), "--format", "meili", "--out", str(dest)]) == 0
    assert all(t.read_bytes() == VICTIM for t in targets)
    assert not dest.is_symlink() and dest.stat().st_size > 0


def test_a_planted_snapshot_link_in_a_store_is_neither_resumed_nor_pruned(
        monkeypatch: pytest.MonkeyPatch, sim: SimServer, tmp_path: Path, victims: Path) -> None:
    store = tmp_path / "store"
    # Looks like an unfinished snapshot (ledger, no manifest) newer than any real one, and
    # holds a finished one's manifest in a subdirectory nobody may delete.
    (victims / ".state").mkdir()
    victim(victims / ".state", "ledger.sqlite", b"")
    keep = victim(victims, "someone-elses.ndjson")
    plant(store / "snapshots" / "20991231T000000Z", victims)
    before = sorted((str(p.relative_to(victims)), p.read_bytes()) for p in victims.rglob("*")
                    if p.is_file())
    monkeypatch.setenv("EDX_CLIENT_ID", sim.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", sim.client_secret)
    cfg = tmp_path / "fast.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
    for day in ("2026-01-01", "2026-01-02"):
        assert cli.main(["sync", "--store", str(store), "--api-base", sim.base_url,
                         "--progress", "off", "--quiet", "--config", str(cfg), "--keep", "1",
                         "--as-of", day]) == 0
    after = sorted((str(p.relative_to(victims)), p.read_bytes()) for p in victims.rglob("*")
                   if p.is_file())
    assert after == before and keep.read_bytes() == VICTIM
    assert os.readlink(store / "latest") == "snapshots/20260102T000000Z"


# --- directory modes under a permissive umask ------------------------------------------------

@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_no_group_or_world_writable_directory_under_umask_000(
        monkeypatch: pytest.MonkeyPatch, sim: SimServer, tmp_path: Path,
        permissive_umask: None) -> None:
    out = tmp_path / "nested" / "out"
    assert harvest(monkeypatch, sim, out, "--gzip", cfg_dir=tmp_path) == 0
    dest = tmp_path / "exports" / "deep" / "bulk.ndjson"
    assert cli.main(["export", str(out), "--format", "es-bulk", "--out", str(dest)]) == 0
    store = tmp_path / "stores" / "edx"
    assert cli.main(["sync", "--store", str(store), "--api-base", sim.base_url, "--rate-lms",
                     "2000/s", "--progress", "off", "--quiet", "--config",
                     str(tmp_path / "fast.toml"), "--as-of", "2026-01-01"]) == 0
    created = [tmp_path / "nested", *tmp_path.joinpath("nested").rglob("*"),
               tmp_path / "exports", *tmp_path.joinpath("exports").rglob("*"),
               tmp_path / "stores", *tmp_path.joinpath("stores").rglob("*")]
    writable = [(str(p), oct(stat.S_IMODE(p.lstat().st_mode))) for p in created
                if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) & 0o022]
    assert not writable, writable


def test_an_existing_group_writable_directory_of_ours_is_tightened(tmp_path: Path,
                                                                     permissive_umask: None
                                                                     ) -> None:
    out = tmp_path / "out"
    cat_dir = out / "catalog=x"
    cat_dir.mkdir(parents=True)
    cat_dir.chmod(0o777)
    PartFile(cat_dir / "courses.ndjson", root=out).commit()
    assert stat.S_IMODE(cat_dir.stat().st_mode) & 0o022 == 0
    assert stat.S_IMODE((cat_dir / "courses.ndjson").stat().st_mode) & 0o022 == 0


# --- catalog ids that differ only in case ---------------------------------------------------

async def test_case_twin_catalogs_each_get_their_own_directory(start_sim: SimStarter,
                                                              tmp_path: Path) -> None:
    srv = await start_sim(catalogs=2, items=40, case_twin_catalogs=True)
    lower, upper = srv.catalog_uuids
    assert lower.lower() == upper.lower() and lower != upper
    expected = await truth(srv)
    result = await Harvest(settings_for(srv, tmp_path)).run()
    assert result.status == "complete" and result.exit_code == 0
    assert_exactly_once(tmp_path, expected)
    dirs = {c["uuid"]: c["_harvest"]["dir"] for c in read_lines(tmp_path / "catalogs.ndjson")}
    assert dirs[lower] == f"catalog={lower}"  # ordinary lowercase UUIDs keep their name
    assert dirs[upper] != dirs[lower] and dirs[upper].casefold() != dirs[lower].casefold()
    for uuid, name in dirs.items():
        for f in (tmp_path / name).glob("*.ndjson"):
            assert {r["_harvest"]["catalog_uuid"] for r in read_lines(f)} == {uuid}, f
    manifest = orjson.loads((tmp_path / "manifest.json").read_bytes())
    assert manifest["catalogs"][upper]["dir"] == dirs[upper]


def test_catalog_dirname_is_one_to_one_stable_and_safe() -> None:
    lower = "0f8fad5b-d9cb-469f-a165-70867728950e"
    ids = [lower, lower.upper(), lower[:9] + lower[9:].upper(), "Cat", "cat", "CAT", "c/at",
           "c%2Fat", "..", ".", "x-cat", "cat-" + "a" * 200, "cat-" + "a" * 201, "é", "e\u0301"]
    names = [catalog_dirname(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert len({n.casefold() for n in names}) == len(ids)  # case-insensitive filesystems too
    assert catalog_dirname(lower) == f"catalog={lower}"
    assert names == [catalog_dirname(i) for i in ids]
    for name in names:
        assert "/" not in name and "\0" not in name and len(name.encode()) <= 255
        assert name.startswith("catalog=") and name not in ("catalog=.", "catalog=..")
