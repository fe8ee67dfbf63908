"""Planted paths at the sync store's own names, and what `harvester verify` says of them.

A sync writes only inside its store and never through a link: ``snapshots/`` (and with
it every snapshot, ``--keep`` pruning, the feeds and pending deletes) that is a symbolic
link, or a ``latest`` / ``.latest.tmp`` that is not one of our symlinks, is refused with
one line and exit 2 before any request, leaving the store as it was. `verify` reports
every link it meets and never calls a store in which nothing was checked clean.
Each test drives ``cli.main`` exactly as from a shell, against the simulator.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harvester import cli
from harvester.sim import SimConfig, SimServer
from tests.integration.helpers import LoopThread


@pytest.fixture
def srv() -> Iterator[SimServer]:
    loop = LoopThread()
    server = SimServer(SimConfig(catalogs=2, items=10, seed=23, rate_lms="0",
                                 rate_learners="0"), port=0)
    loop.run(server.start())
    yield server
    loop.run(server.close())
    loop.close()


@pytest.fixture
def sync(srv: SimServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
         ) -> Callable[..., int]:
    monkeypatch.setenv("EDX_CLIENT_ID", srv.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", srv.client_secret)
    cfg = tmp_path / "fast.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")

    def run(store: Path, day: str, *extra: str) -> int:
        return cli.main(["sync", "--store", str(store), "--api-base", srv.base_url,
                         "--rate-lms", "2000/s", "--progress", "off", "--no-details",
                         "--config", str(cfg), "--as-of", day, *extra])
    return run


def tree(root: Path) -> dict[str, Any]:
    """Every path under ``root`` (links not followed) with what it is."""
    out: dict[str, Any] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = (os.readlink(p) if p.is_symlink() else
                                             p.stat().st_size if p.is_file() else "dir")
    return out


def one_line_refusal(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("harvester: ")]
    assert len(lines) == 1, err
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


# --- (1) a symlinked STORE/snapshots -----------------------------------------------------

@pytest.mark.parametrize("where", ["outside", "inside"])
def test_a_symlinked_snapshots_directory_is_refused(
        where: str, sync: Callable[..., int], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The adversary's repro: the night's snapshot (and --keep's pruning) would go through
    the link, outside the store or to another of its directories."""
    store = tmp_path / "s"
    assert sync(store, "2026-01-01") == 0
    elsewhere = tmp_path / "elsewhere" if where == "outside" else store / "elsewhere"
    elsewhere.mkdir()
    for snap in (store / "snapshots").iterdir():
        shutil.move(snap, elsewhere / snap.name)
    (store / "snapshots").rmdir()
    (store / "snapshots").symlink_to(elsewhere)
    before, latest = tree(elsewhere), os.readlink(store / "latest")
    capsys.readouterr()
    assert sync(store, "2026-01-02", "--keep", "1") == 2
    one_line_refusal(capsys, str(store / "snapshots"), "symbolic link")
    assert tree(elsewhere) == before  # no snapshot written, none pruned
    assert os.readlink(store / "latest") == latest


# --- (3) planted paths where `latest` is promoted ---------------------------------------

@pytest.mark.parametrize(("name", "plant"), [
    ("latest", "dir"), ("latest", "file"), (".latest.tmp", "dir"), (".latest.tmp", "file")])
def test_a_planted_path_at_latest_or_its_temp_is_refused_before_the_night(
        name: str, plant: str, sync: Callable[..., int], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A directory (or a file) someone put at ``latest`` or ``.latest.tmp`` is not ours: a
    one-line refusal, exit 2, before any request; what was there and every snapshot stay."""
    store = tmp_path / "s"
    assert sync(store, "2026-01-01") == 0
    path = store / name
    if path.is_symlink():
        path.unlink()
    if plant == "dir":
        path.mkdir()
        (path / "keep.txt").write_text("mine")
    else:
        path.write_text("mine")
    before = tree(store)
    capsys.readouterr()
    assert sync(store, "2026-01-02") == 2
    one_line_refusal(capsys, str(path))
    assert tree(store) == before


# --- (2) verify meets a link, or nothing to check ----------------------------------------

def test_verify_reports_a_symlinked_snapshots_directory(
        sync: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s"
    assert sync(store, "2026-01-01") == 0
    elsewhere = tmp_path / "elsewhere"
    shutil.move(store / "snapshots", elsewhere)
    (store / "snapshots").symlink_to(elsewhere)
    capsys.readouterr()
    assert cli.main(["verify", str(store)]) == 1
    out, err = capsys.readouterr()
    assert f"{store / 'snapshots'}: a symbolic link" in out
    assert "clean" not in err


def test_verify_reports_a_symlinked_snapshot(
        sync: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``latest`` pointing at a snapshot that is a link: the link is reported as a link
    (not as a missing snapshot), and the snapshot behind it is not counted as checked."""
    store = tmp_path / "s"
    assert sync(store, "2026-01-01") == 0
    snap = (store / "latest").resolve()
    shutil.move(snap, tmp_path / "away")
    snap.symlink_to(tmp_path / "away")
    capsys.readouterr()
    assert cli.main(["verify", str(store)]) == 1
    out, _err = capsys.readouterr()
    assert f"{snap}: a symbolic link" in out
    assert "does not exist" not in out


def test_verify_of_an_out_with_nothing_checked_is_not_clean(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An OUT whose learner export holds only its ``.state`` (no manifest, no files):
    nothing at all was checked, which is not "clean"."""
    out = tmp_path / "out"
    (out / "learners" / ".state").mkdir(parents=True)
    assert cli.main(["verify", str(out)]) == 1
    printed, err = capsys.readouterr()
    assert "nothing" in printed
    assert "clean" not in err


def test_a_latest_leading_through_a_symlinked_snapshot_is_refused(
        sync: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``snapshots/<id>`` replaced by a link to a copy elsewhere: the night would compare
    against (and --keep spare) a snapshot outside the store; refused, store untouched."""
    store = tmp_path / "s"
    assert sync(store, "2026-01-01") == 0
    snap = (store / "latest").resolve()
    shutil.move(snap, tmp_path / "away")
    snap.symlink_to(tmp_path / "away")
    before, away = tree(store), tree(tmp_path / "away")
    capsys.readouterr()
    assert sync(store, "2026-01-02", "--keep", "1") == 2
    one_line_refusal(capsys, str(store / "latest"))
    assert tree(store) == before
    assert tree(tmp_path / "away") == away


def test_keep_never_clears_a_spool_through_a_linked_state_directory(
        sync: Callable[..., int], tmp_path: Path) -> None:
    """Pruning removes what a sync wrote in the old snapshot, by name, never through a
    link: a snapshot's ``.state`` replaced by a link leaves the files behind it alone."""
    store = tmp_path / "s"
    assert sync(store, "2026-01-01") == 0
    old = (store / "latest").resolve()
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "spool").mkdir(parents=True)
    (elsewhere / "spool" / "precious").write_text("mine")
    (elsewhere / "lock").write_text("mine too")
    shutil.rmtree(old / ".state")
    (old / ".state").symlink_to(elsewhere)
    assert sync(store, "2026-01-02", "--keep", "1") == 0
    assert (store / "latest").resolve() != old
    assert (elsewhere / "spool" / "precious").read_text() == "mine"
    assert (elsewhere / "lock").read_text() == "mine too"


# --- (4) a symbolic link loop at latest or at a snapshot ---------------------------------

def make_loop(store: Path, where: str) -> Path:
    """``latest`` made a link to itself, or the snapshot it points to replaced by a link
    to itself; the looping path is returned."""
    if where == "latest":
        (store / "latest").unlink()
        (store / "latest").symlink_to("latest")
        return store / "latest"
    snap = store / "snapshots" / os.readlink(store / "latest").rsplit("/", 1)[-1]
    shutil.rmtree(snap)
    snap.symlink_to(snap.name)
    return snap


@pytest.mark.parametrize("where", ["latest", "snapshot"])
@pytest.mark.parametrize("command", ["sync", "export", "plan"])
def test_a_symlink_loop_in_the_store_is_refused_in_one_line(
        where: str, command: str, sync: Callable[..., int], srv: SimServer,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A loop used to crash each command with a traceback (RuntimeError from resolve):
    now one line naming the loop, exit 2, and the store as it was."""
    store = tmp_path / "s"
    assert sync(store, "2026-01-01") == 0
    assert sync(store, "2026-01-02") == 0
    loop = make_loop(store, where)
    before = tree(store)
    capsys.readouterr()
    if command == "sync":
        code = sync(store, "2026-01-03", "--keep", "1")
    elif command == "export":
        code = cli.main(["export", str(store), "--format", "jsonl",
                         "--out", str(tmp_path / "x.jsonl")])
    else:
        code = cli.main(["plan", "--store", str(store), "--api-base", srv.base_url,
                         "--rate-lms", "2000/s", "--progress", "off", "--no-details"])
    assert code == 2
    line = one_line_refusal(capsys, "loop")
    assert str(loop) in line or str(store / "latest") in line, line
    assert tree(store) == before
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("where", ["latest", "snapshot"])
def test_verify_names_a_symlink_loop(
        where: str, sync: Callable[..., int], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s"
    assert sync(store, "2026-01-01") == 0
    make_loop(store, where)
    capsys.readouterr()
    assert cli.main(["verify", str(store)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert "symbolic link loop" in out, out
