"""A rerun of a finished run makes sure that what it reports is true.

A complete harvest whose ``manifest.json`` was gone answered "already holds a complete
harvest; nothing to do" (exit 0) from the ledger alone: the manifest was not rewritten
(``harvester verify`` then said "holds no manifest.json"), a planted ``errors.ndjson``
link stayed, and ``--publish`` silently uploaded nothing. Now a complete rerun checks the
output against the ledger first: what can be rebuilt from the ledger and verified files
(the manifest, ``catalogs.ndjson``, ``errors.ndjson``) is rebuilt without a request, and
a catalog whose files are missing, changed or links is harvested again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from harvester import cli
from harvester.config import load_settings
from harvester.errors import PublishError
from harvester.publish import check_target, publish_result
from harvester.run import RunResult
from harvester.sim import SimConfig, SimServer
from tests.integration.helpers import LoopThread, assert_exactly_once, truth


@dataclass
class World:
    lt: LoopThread
    srv: SimServer

    def requests(self) -> dict[str, int]:
        snap = self.srv.state.stats.snapshot()
        counts = {cls: sum(by.values()) for cls, by in snap["requests"].items()}
        return {**counts, "tokens": int(snap["tokens_issued"])}


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    lt = LoopThread()
    srv = SimServer(SimConfig(catalogs=2, items=10, seed=23, rate_lms="0",
                              rate_learners="0", detail_404_rate=0), port=0)
    lt.run(srv.start())
    try:
        yield World(lt, srv)
    finally:
        lt.run(srv.close())
        lt.close()


@pytest.fixture
def run_cli(world: World, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Callable[..., Outcome]:
    return cli_runner(world, monkeypatch, capsys, tmp_path)


def cli_runner(world: World, monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Callable[..., Outcome]:
    """A ``harvester`` command in-process, as from a shell (zero backoff, fast budget)."""
    cfg = tmp_path / "fast.toml"
    cfg.write_text("[retry]\nbackoff_base = 0.0\nbackoff_cap = 0.0\n")
    monkeypatch.setenv("EDX_CLIENT_ID", world.srv.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", world.srv.client_secret)

    def run(verb: str, *args: str) -> Outcome:
        capsys.readouterr()
        extra = [] if verb == "verify" else [
            "--api-base", world.srv.base_url, "--config", str(cfg), "--progress", "off",
            "--rate-lms", "1000/s"]
        code = cli.main([verb, *extra, *args])
        cap = capsys.readouterr()
        return Outcome(code, cap.out, cap.err)

    return run


def first_item_file(out: Path) -> Path:
    return sorted(out.glob("catalog=*/courses.ndjson"))[0]


def tamper(out: Path, how: str, outside: Path) -> None:
    """Damage a finished OUT the way ``how`` says (``outside``: a file not ours)."""
    for what in how.split("+"):
        if what == "manifest-gone":
            (out / "manifest.json").unlink()
        elif what == "manifest-link":
            (out / "manifest.json").unlink()
            (out / "manifest.json").symlink_to(outside)
        elif what == "errors-link":
            (out / "errors.ndjson").unlink()
            (out / "errors.ndjson").symlink_to(outside)
        elif what == "catalogs-gone":
            (out / "catalogs.ndjson").unlink()
        elif what == "catalogs-changed":
            (out / "catalogs.ndjson").write_bytes(b'{"uuid": "not-a-catalog-we-listed"}\n')
        elif what == "items-gone":
            first_item_file(out).unlink()
        elif what == "items-changed":
            path = first_item_file(out)
            data = path.read_bytes()
            path.write_bytes(data[: data.index(b"\n") + 1])  # one line of many left
        elif what == "items-link":
            path = first_item_file(out)
            path.unlink()
            path.symlink_to(outside)
        else:
            raise AssertionError(how)


REBUILT = ["manifest-gone", "manifest-gone+errors-link", "manifest-link", "errors-link",
           "catalogs-gone", "catalogs-changed"]
REDONE = ["items-gone", "items-changed", "items-link", "manifest-gone+items-gone"]


@pytest.mark.parametrize("how", REBUILT + REDONE)
def test_a_finished_run_that_lost_a_file_is_not_answered_complete_and_is_published(
        world: World, run_cli: Callable[..., Outcome], tmp_path: Path, how: str) -> None:
    out, pub = tmp_path / "o", tmp_path / "pub"
    outside = tmp_path / "not-ours.ndjson"
    outside.write_bytes(b'{"not": "ours"}\n')
    first = run_cli("harvest", "--out", str(out), "--no-details")
    assert first.code == 0, first.err
    before = orjson.loads((out / "manifest.json").read_bytes())
    tamper(out, how, outside)
    asked = world.requests()
    pub.mkdir()
    again = run_cli("harvest", "--out", str(out), "--no-details", "--publish",
                    f"file://{pub}")
    assert again.code == 0, again.err
    assert "nothing to do" not in again.err
    assert "published to" in again.out, again.out + again.err
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["status"] == "complete" and manifest["run_id"] == before["run_id"]
    redone = {u for u, c in manifest["catalogs"].items()
              if c["files"] != before["catalogs"][u]["files"]}
    assert redone == (set() if how in REBUILT else {first_item_file(out).parent.name[8:]})
    assert {u: c["lines"] for u, c in manifest["catalogs"].items()} == {
        u: c["lines"] for u, c in before["catalogs"].items()}, "the same items, described"
    for name in ("manifest.json", "errors.ndjson", "catalogs.ndjson"):
        assert not (out / name).is_symlink()
        assert (pub / name).read_bytes() == (out / name).read_bytes()
    assert outside.read_bytes() == b'{"not": "ours"}\n', "never written through a link"
    assert not any(p.is_symlink() for p in out.rglob("*"))
    checked = run_cli("verify", str(out))
    assert checked.code == 0, checked.out + checked.err
    assert run_cli("verify", f"file://{pub}").code == 0
    spent = {k: n - asked.get(k, 0) for k, n in world.requests().items()}
    if how in REBUILT:  # rebuilt from the ledger and the verified files alone
        assert not any(spent.values()), spent
    else:  # the damaged catalog was listed again, and only it
        assert spent["content"] == 1, spent
    assert_exactly_once(out, world.lt.run(truth(world.srv)))


def test_an_intact_finished_run_is_still_nothing_to_do_and_publishes(
        world: World, run_cli: Callable[..., Outcome], tmp_path: Path) -> None:
    out, pub = tmp_path / "o", tmp_path / "pub"
    assert run_cli("harvest", "--out", str(out), "--no-details").code == 0
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")
             if p.is_file() and ".state" not in p.parts}
    asked = world.requests()
    pub.mkdir()
    again = run_cli("harvest", "--out", str(out), "--no-details", "--publish",
                    f"file://{pub}")
    assert again.code == 0, again.err
    assert "already holds a complete harvest" in again.err
    assert "published to" in again.out
    assert world.requests() == asked
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp, "nothing rewritten"
    assert (pub / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()


def test_a_complete_answer_without_a_manifest_never_publishes_silently(
        tmp_path: Path) -> None:
    """The publish step itself: a finished run with no manifest to publish is a failed
    publish (exit 3), never "published nothing" with exit 0."""
    pub = tmp_path / "pub"
    pub.mkdir()
    settings, _ = load_settings(cli={"publish.url": f"file://{pub}",
                                     "output.out": str(tmp_path / "o")},
                                environ={}, config_file=None)
    target = check_target(settings.publish, tmp_path / "o")
    with pytest.raises(PublishError, match="manifest"):
        publish_result(target, RunResult("complete", 0, tmp_path / "o", None))
    assert os.listdir(pub) == []


def test_a_damaged_catalog_of_a_run_with_details_is_fetched_again_whole(
        world: World, run_cli: Callable[..., Outcome], tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert run_cli("harvest", "--out", str(out)).code == 0
    path = first_item_file(out)
    lines = path.read_bytes().count(b"\n")
    path.write_bytes(path.read_bytes().replace(b'"title"', b'"TITLE"', 1))  # same size
    asked = world.requests()
    again = run_cli("harvest", "--out", str(out))
    assert again.code == 0, again.err
    assert "nothing to do" not in again.err
    spent = {k: n - asked.get(k, 0) for k, n in world.requests().items()}
    assert spent["content"] == 1 and spent["lms"] >= lines, spent
    assert b'"TITLE"' not in path.read_bytes()
    assert run_cli("verify", str(out)).code == 0
    assert_exactly_once(out, world.lt.run(truth(world.srv)))
    assert "nothing to do" in run_cli("harvest", "--out", str(out)).err


def test_a_sync_store_whose_latest_lost_its_manifest_syncs_a_new_night(
        world: World, run_cli: Callable[..., Outcome], tmp_path: Path) -> None:
    """The latest snapshot finished, then lost its manifest: it is no unfinished run to
    resume or abandon (that refused the store every night, exit 2), and nothing of it is
    deleted; the next night is a new snapshot that becomes latest and is published."""
    store, pub = tmp_path / "store", tmp_path / "pub"
    assert run_cli("sync", "--store", str(store), "--no-details").code == 0
    old = (store / "latest").resolve()
    (old / "manifest.json").unlink()
    kept = sorted(p.relative_to(old) for p in old.rglob("*"))
    pub.mkdir()
    night = run_cli("sync", "--store", str(store), "--no-details", "--publish",
                    f"file://{pub}")
    assert night.code == 0, night.err
    assert "published to" in night.out and "latest.json" in night.out
    new = (store / "latest").resolve()
    assert new != old and orjson.loads((new / "manifest.json").read_bytes())[
        "status"] == "complete"
    assert sorted(p.relative_to(old) for p in old.rglob("*")) == kept, "left as it was"
    latest = orjson.loads((pub / "latest.json").read_bytes())
    assert latest["snapshot"] == new.name
    assert run_cli("verify", f"file://{pub}").code == 0


@pytest.mark.parametrize("name", ["catalogs.ndjson", "errors.ndjson", "manifest.json",
                                  "items"])
def test_a_hard_linked_file_of_a_finished_run_is_rebuilt_never_written_through(
        world: World, run_cli: Callable[..., Outcome], tmp_path: Path, name: str) -> None:
    """A second name of a finished run's file made every rerun refuse OUT (exit 2) until
    the user removed it by hand: it is damage like any other, rebuilt from the ledger
    under a name of its own, and the other name keeps its bytes."""
    out, elsewhere = tmp_path / "o", tmp_path / "elsewhere"
    assert run_cli("harvest", "--out", str(out), "--no-details").code == 0
    path = first_item_file(out) if name == "items" else out / name
    kept = path.read_bytes()
    os.link(path, elsewhere)
    again = run_cli("harvest", "--out", str(out), "--no-details")
    assert again.code == 0, again.err
    assert "nothing to do" not in again.err
    assert os.stat(path).st_nlink == 1 and os.stat(elsewhere).st_nlink == 1
    assert elsewhere.read_bytes() == kept, "never written through the other name"
    assert run_cli("verify", str(out)).code == 0
    assert_exactly_once(out, world.lt.run(truth(world.srv)))
    assert "nothing to do" in run_cli("harvest", "--out", str(out), "--no-details").err


def test_an_edited_manifest_of_a_finished_run_is_rewritten_as_the_run_wrote_it(
        world: World, run_cli: Callable[..., Outcome], tmp_path: Path) -> None:
    """A manifest whose counts or totals were changed was answered "nothing to do" (only
    its run_id, status and file entries were compared), and verified and published as
    is. The ledger keeps the bytes the run wrote; a rerun puts them back, no request."""
    out, pub = tmp_path / "o", tmp_path / "pub"
    assert run_cli("harvest", "--out", str(out), "--no-details").code == 0
    wrote = (out / "manifest.json").read_bytes()
    edited = orjson.loads(wrote)
    edited["catalogs"][next(iter(edited["catalogs"]))]["count_reported"] = 999
    edited["totals"] = {}
    (out / "manifest.json").write_bytes(orjson.dumps(edited, option=orjson.OPT_INDENT_2))
    asked = world.requests()
    pub.mkdir()
    again = run_cli("harvest", "--out", str(out), "--no-details", "--publish",
                    f"file://{pub}")
    assert again.code == 0, again.err
    assert "nothing to do" not in again.err
    assert (out / "manifest.json").read_bytes() == wrote
    assert (pub / "manifest.json").read_bytes() == wrote
    assert world.requests() == asked
    assert "nothing to do" in run_cli("harvest", "--out", str(out), "--no-details").err
