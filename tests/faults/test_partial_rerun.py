"""A rerun of a partial (or killed) run checks its committed catalogs, as a complete one does.

A run that ended partial (a catalog 403'd) and then lost a committed catalog's file was
rerun once the catalog was allowed again: the failed catalog was harvested and the run said
``complete`` (exit 0) while the lost file stayed lost (``harvester verify``: "missing
(named in the manifest)"). A rerun that reopened a committed file to append refetched
items, when that file had been deleted, ended up holding only the refetched lines. Now
every rerun compares the committed catalogs with the ledger first (sizes and sha256
recorded at commit), and harvests a damaged one again; intact ones are not refetched.
"""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from harvester.sim import SimConfig, SimServer
from tests.faults.test_finished_rerun import Outcome, World, cli_runner
from tests.integration.helpers import LoopThread, assert_exactly_once, truth


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    lt = LoopThread()
    srv = SimServer(SimConfig(catalogs=3, items=12, seed=5, rate_lms="0",
                              rate_learners="0", detail_404_rate=0), port=0)
    lt.run(srv.start())
    try:
        yield World(lt, srv)
    finally:
        lt.run(srv.close())
        lt.close()


def live(world: World, **knobs: Any) -> None:
    req = urllib.request.Request(f"{world.srv.base_url}/__config", method="POST",
                                 data=orjson.dumps(knobs),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 200


@pytest.fixture
def run_cli(world: World, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Iterator[Callable[..., Outcome]]:
    yield cli_runner(world, monkeypatch, capsys, tmp_path)
    live(world, forbid_catalogs=[], detail_403_keys=[])


def catalog_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("catalog=*") if p.is_dir())


def tamper(path: Path, how: str, outside: Path) -> None:
    data = path.read_bytes()
    if how == "gone":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: data.index(b"\n") + 1])
    elif how == "same-size":
        path.write_bytes(data.replace(b'"title"', b'"TITLE"', 1))
    elif how == "link":
        path.unlink()
        path.symlink_to(outside)
    elif how == "dir-gone":
        shutil.rmtree(path.parent)
    else:
        raise AssertionError(how)


def forbidden_uuid(world: World, out: Path) -> str:
    errors = [orjson.loads(line) for line in (out / "errors.ndjson").read_bytes().splitlines()]
    cats = {e["catalog_uuid"] for e in errors if e["kind"] == "catalog_failed"}
    assert len(cats) == 1, errors
    return cats.pop()


@pytest.mark.parametrize("how", ["gone", "truncated", "same-size", "link", "dir-gone"])
@pytest.mark.parametrize("details", [False, True])
def test_a_partial_rerun_never_reports_complete_over_a_lost_committed_file(
        world: World, run_cli: Callable[..., Outcome], tmp_path: Path, how: str,
        details: bool) -> None:
    out = tmp_path / "o"
    flags = ("--out", str(out), "--quiet") + (() if details else ("--no-details",))
    outside = tmp_path / "not-ours.ndjson"
    outside.write_bytes(b'{"not": "ours"}\n')
    live(world, forbid_catalogs=["2"])
    first = run_cli("harvest", *flags)
    assert first.code == 3, first.err
    failed = forbidden_uuid(world, out)
    done = [d for d in catalog_dirs(out) if d.name != f"catalog={failed}"]
    damaged, intact = done[0], done[1]
    intact_bytes = (intact / "courses.ndjson").read_bytes()
    tamper(damaged / "courses.ndjson", how, outside)
    live(world, forbid_catalogs=[])
    if how == "link":  # refused, as when a rerun reopens it: the run counts on its lines
        refused = run_cli("harvest", *flags)
        assert refused.code == 2, refused.err
        assert len(refused.err.strip().splitlines()) == 1, refused.err
        assert "courses.ndjson" in refused.err and "symbolic link" in refused.err
        assert outside.read_bytes() == b'{"not": "ours"}\n', "never read through a link"
        (damaged / "courses.ndjson").unlink()  # the user's fix: a file gone is redone
    asked = world.requests()
    again = run_cli("harvest", *flags)
    assert again.code == 0, again.err
    spent = {k: n - asked.get(k, 0) for k, n in world.requests().items()}
    # the failed catalog and the damaged one are listed again, the intact one is not
    assert spent["content"] == 2, spent
    assert (intact / "courses.ndjson").read_bytes() == intact_bytes
    assert outside.read_bytes() == b'{"not": "ours"}\n', "never written through a link"
    assert not any(p.is_symlink() for p in out.rglob("*"))
    checked = run_cli("verify", str(out))
    assert checked.code == 0, checked.out + checked.err
    assert_exactly_once(out, world.lt.run(truth(world.srv)))
    assert "nothing to do" in run_cli("harvest", *flags).err


def test_a_rerun_that_reopens_a_deleted_committed_file_refetches_its_catalog_whole(
        world: World, run_cli: Callable[..., Outcome], tmp_path: Path) -> None:
    """A detail failed in a committed catalog; its courses file is then deleted: the rerun
    must not append the refetched item to an empty file and call it complete."""
    out = tmp_path / "o"
    flags = ("--out", str(out), "--quiet")
    probe = run_cli("harvest", "--out", str(tmp_path / "probe"), "--quiet", "--no-details")
    assert probe.code == 0, probe.err
    path = sorted((tmp_path / "probe").glob("catalog=*/courses.ndjson"))[0]
    key = orjson.loads(path.read_bytes().splitlines()[0])["_harvest"]["key"]
    live(world, detail_403_keys=[key])
    assert run_cli("harvest", *flags).code == 3
    target = out / path.parent.name / "courses.ndjson"
    assert target.exists()
    target.unlink()
    live(world, detail_403_keys=[])
    again = run_cli("harvest", *flags)
    assert again.code == 0, again.err
    checked = run_cli("verify", str(out))
    assert checked.code == 0, checked.out + checked.err
    assert_exactly_once(out, world.lt.run(truth(world.srv)))
