"""Failure paths of the sync store and of `harvester export` (issues 10 and 11).

Each test drives `harvester sync` / `harvester export` through ``cli.main`` exactly as from
a shell, against the simulator on a background loop, and asserts the store contract:
`--keep` never removes `latest`, an interrupted night never blocks the next one, the
resume fingerprint covers what gives a snapshot its meaning, deletes withheld on a night
without `count` reach the feed as soon as a night can settle them, and export files are
whole or absent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from harvester import cli
from harvester import export as export_mod
from harvester.pipeline.lister import CatalogLister
from harvester.sim import SimConfig, SimServer
from harvester.store import Store
from tests.integration.helpers import LoopThread, read_lines

FeedKey = tuple[str, str, str]


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def start(loop: LoopThread) -> Iterator[Callable[..., SimServer]]:
    running: list[SimServer] = []

    def go(**kw: Any) -> SimServer:
        cfg = {"catalogs": 1, "items": 40, "seed": 3, "rate_lms": "0", "rate_learners": "0",
               **kw}
        srv = SimServer(SimConfig(**cfg), port=0)
        loop.run(srv.start())
        running.append(srv)
        return srv

    yield go
    for srv in running:
        loop.run(srv.close())


def call(loop: LoopThread, srv: SimServer, method: str, path: str, **kw: Any) -> Any:
    async def go() -> Any:
        async with aiohttp.ClientSession() as s, s.request(method, srv.base_url + path,
                                                           **kw) as r:
            assert r.status == 200, await r.text()
            return await r.json()
    return loop.run(go())


def sync(monkeypatch: pytest.MonkeyPatch, srv: SimServer, store: Path, day: str,
         *extra: str) -> int:
    monkeypatch.setenv("EDX_CLIENT_ID", srv.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", srv.client_secret)
    cfg = Path(os.path.abspath(store)).parent / "fast.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
    return cli.main(["sync", "--store", str(store), "--api-base", srv.base_url,
                     "--rate-lms", "2000/s", "--progress", "off", "--config", str(cfg),
                     "--as-of", day, *extra])


def interrupted_sync(monkeypatch: pytest.MonkeyPatch, srv: SimServer, store: Path, day: str,
                     *extra: str) -> Path:
    """A sync that gets SIGINT after its first content page; returns its snapshot."""
    original = CatalogLister._take_page
    fired: list[bool] = []

    async def take_then_interrupt(self: CatalogLister, *args: Any) -> None:
        await original(self, *args)
        if not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as m:
        m.setattr(CatalogLister, "_take_page", take_then_interrupt)
        assert sync(monkeypatch, srv, store, day, *extra) == 130
    left = [s for s in (store / "snapshots").iterdir() if not (s / "manifest.json").exists()]
    assert len(left) == 1
    return left[0]


def manifest(snap: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((snap / "manifest.json").read_bytes())
    return data


def previous_of(snap: Path) -> set[str | None]:
    return {c["sync"]["previous"] for c in manifest(snap)["catalogs"].values()}


def feed(snap: Path, op: str) -> set[FeedKey]:
    return {(c["catalog_uuid"], c["content_type"], c["key"])
            for f in snap.glob("catalog=*/changes.ndjson") for c in read_lines(f)
            if c["op"] == op}


def latest(store: Path) -> Path:
    target = (store / "latest").resolve()
    assert (target / "manifest.json").exists(), f"latest dangles: {target}"
    return target


# --- (#10.3) --keep and latest ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["relative", "symlink"])
def test_keep_never_prunes_the_snapshot_latest_points_to(
        kind: str, monkeypatch: pytest.MonkeyPatch, start: Callable[..., SimServer],
        tmp_path: Path) -> None:
    """A backfill (`--as-of` before latest) becomes latest although its name sorts first;
    `--keep 1` must keep it, whatever way the store path is spelled."""
    srv = start()
    if kind == "relative":
        monkeypatch.chdir(tmp_path)
        store = Path("store")
    else:
        (tmp_path / "real").mkdir()
        (tmp_path / "link").symlink_to(tmp_path / "real")
        store = tmp_path / "link"
    assert sync(monkeypatch, srv, store, "2026-11-21", "--keep", "1") == 0
    assert sync(monkeypatch, srv, store, "2026-11-20", "--keep", "1") == 0
    backfill = latest(store)
    assert backfill.name.startswith("20261120")
    assert sync(monkeypatch, srv, store, "2026-11-22", "--keep", "1") == 0
    assert previous_of(latest(store)) == {backfill.name}  # not "none"


# --- (#11.3, #11.7) an interrupted night and changed settings ---------------------------------

def run_id(snap: Path) -> str:
    db = sqlite3.connect(snap / ".state" / "ledger.sqlite")
    try:
        return str(db.execute("SELECT value FROM meta WHERE key='run_id'").fetchone()[0])
    finally:
        db.close()


@pytest.mark.parametrize(("first", "second"), [
    (("--page-size", "20"), ("--page-size", "25")),
    (("--max-age", "3d"), ()),
    (("--no-details",), ()),
])
def test_interrupted_sync_with_changed_settings_is_abandoned_and_started_anew(
        first: tuple[str, ...], second: tuple[str, ...], monkeypatch: pytest.MonkeyPatch,
        start: Callable[..., SimServer], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    srv = start()
    store = tmp_path / "store"
    assert sync(monkeypatch, srv, store, "2026-11-20") == 0
    night1 = latest(store)
    unfinished = interrupted_sync(monkeypatch, srv, store, "2026-11-21", *first)
    old_run = run_id(unfinished)
    capsys.readouterr()
    code = sync(monkeypatch, srv, store, "2026-11-21", *second)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "--restart" not in err and "--out" not in err
    said = [line for line in (out + err).splitlines() if "abandon" in line]
    assert len(said) >= 1 and unfinished.name in said[0]
    night2 = latest(store)
    assert night2 != night1 and night1.is_dir()
    assert manifest(night2)["run_id"] != old_run
    assert previous_of(night2) == {night1.name}
    assert [s for s in (store / "snapshots").iterdir()
            if not (s / "manifest.json").exists()] == []


def test_a_snapshot_kept_only_for_a_users_file_is_abandoned_once(
        monkeypatch: pytest.MonkeyPatch, start: Callable[..., SimServer], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Abandon keeps a directory that holds a file we did not write; the nights after it
    neither abandon it again nor touch the file."""
    srv = start()
    store = tmp_path / "store"
    assert sync(monkeypatch, srv, store, "2026-11-20") == 0
    unfinished = interrupted_sync(monkeypatch, srv, store, "2026-11-21", "--page-size", "20")
    (unfinished / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert sync(monkeypatch, srv, store, "2026-11-21", "--page-size", "25") == 0
    out, err = capsys.readouterr()
    assert unfinished.name in out + err and "abandon" in out + err
    assert sorted(p.name for p in unfinished.iterdir()) == ["notes.txt"]
    for day in ("2026-11-22", "2026-11-23"):
        assert sync(monkeypatch, srv, store, day, "--page-size", "25") == 0
        out, err = capsys.readouterr()
        assert "abandon" not in out + err, day
    assert Store(store).unfinished() is None
    assert (unfinished / "notes.txt").read_text() == "mine"


def test_interrupted_sync_with_the_same_settings_resumes(
        monkeypatch: pytest.MonkeyPatch, start: Callable[..., SimServer],
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    srv = start()
    store = tmp_path / "store"
    unfinished = interrupted_sync(monkeypatch, srv, store, "2026-11-21", "--max-age", "3d")
    old_run = run_id(unfinished)
    capsys.readouterr()
    assert sync(monkeypatch, srv, store, "2026-11-21", "--max-age", "3d") == 0
    out, err = capsys.readouterr()
    assert "abandon" not in out + err
    assert latest(store) == unfinished.resolve()
    assert manifest(unfinished)["run_id"] == old_run


def test_a_nightly_run_does_not_resume_an_interrupted_backfill(
        monkeypatch: pytest.MonkeyPatch, start: Callable[..., SimServer],
        tmp_path: Path) -> None:
    srv = start()
    store = tmp_path / "store"
    backfill = interrupted_sync(monkeypatch, srv, store, "2026-11-01")
    assert sync(monkeypatch, srv, store, "2026-11-21") == 0
    night = latest(store)
    assert night.name.startswith("20261121")
    assert not backfill.exists()
    assert all(r["_harvest"]["fetched_at"].startswith("2026-11-21")
               for f in night.glob("catalog=*/course.ndjson") for r in read_lines(f))


def test_a_torn_previous_marker_never_means_no_previous(
        monkeypatch: pytest.MonkeyPatch, start: Callable[..., SimServer],
        tmp_path: Path) -> None:
    """A kill while `.state/previous` was being written leaves it empty (plain write); the
    resumed night must still compare against latest, not against nothing."""
    srv = start()
    store = tmp_path / "store"
    assert sync(monkeypatch, srv, store, "2026-11-20") == 0
    night1 = latest(store)
    unfinished = interrupted_sync(monkeypatch, srv, store, "2026-11-21")
    (unfinished / ".state" / "previous").write_bytes(b"")
    assert sync(monkeypatch, srv, store, "2026-11-21") == 0
    assert previous_of(latest(store)) == {night1.name}


# --- (#11.4) deletes withheld without `count` are carried, then emitted --------------------

def nights(monkeypatch: pytest.MonkeyPatch, loop: LoopThread, srv: SimServer, store: Path,
           plan: list[tuple[int, bool]]) -> list[Path]:
    """One sync per (epoch, count shown?) step, one day apart; the snapshots made."""
    snaps = []
    for day, (epoch, with_count) in enumerate(plan, start=20):
        call(loop, srv, "POST", "/__epoch", json={"epoch": epoch})
        call(loop, srv, "POST", "/__config", json={"omit_count": not with_count})
        assert sync(monkeypatch, srv, store, f"2026-11-{day}") == 0
        snaps.append(latest(store))
    return snaps


def test_deletes_withheld_without_count_are_emitted_on_the_first_settled_night(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, start: Callable[..., SimServer],
        tmp_path: Path) -> None:
    srv = start(items=60, seed=4, mutation_rate=0.25)
    truth = {(c["catalog_uuid"], c["content_type"], c["key"])
             for c in call(loop, srv, "GET", "/__changes?from=0&to=2") if c["op"] == "delete"}
    assert truth  # the scenario needs deletes
    snaps = nights(monkeypatch, loop, srv, tmp_path / "store",
                   [(0, True), (1, False), (2, False), (2, True)])
    for snap in snaps[1:3]:  # no count: deletes withheld, and said so
        assert feed(snap, "delete") == set()
        entry = next(iter(manifest(snap)["catalogs"].values()))
        assert entry["sync"]["deletes_suppressed"] is True
        assert entry["sync"]["deletes_pending"] > 0
    settled = next(iter(manifest(snaps[3])["catalogs"].values()))["sync"]
    assert feed(snaps[3], "delete") == truth
    assert settled["deletes_suppressed"] is False and settled["deletes_pending"] == 0


def test_a_withheld_delete_whose_item_reappears_is_never_emitted(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, start: Callable[..., SimServer],
        tmp_path: Path) -> None:
    srv = start(items=60, seed=4, mutation_rate=0.25)
    gone = {(c["catalog_uuid"], c["content_type"], c["key"])
            for c in call(loop, srv, "GET", "/__changes?from=0&to=1") if c["op"] == "delete"}
    assert gone
    back = {(c["catalog_uuid"], c["content_type"], c["key"])  # what 1 -> 0 really deletes
            for c in call(loop, srv, "GET", "/__changes?from=1&to=0") if c["op"] == "delete"}
    assert back
    snaps = nights(monkeypatch, loop, srv, tmp_path / "store",
                   [(0, True), (1, False), (0, False), (0, True)])
    assert gone <= feed(snaps[2], "upsert")  # back in the index after a night away
    # Night 4 settles night 2's and night 3's withheld deletes: the items epoch 1 added
    # and epoch 0 dropped again, but none of those that came back.
    assert feed(snaps[3], "delete") == back and not back & gone


# --- (#11.17) the lock message names the store -------------------------------------------------

def test_a_busy_store_is_named_in_the_lock_message(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A second sync while the first one runs: exit 2, one line naming the store."""
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # hold the connection until the client goes away
        writer.close()

    server = loop.run(asyncio.start_server(never_answer, "127.0.0.1", 0))
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    store = tmp_path / "store"
    env = {**os.environ, "EDX_CLIENT_ID": "id", "EDX_CLIENT_SECRET": "secret"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harvester", "sync", "--store", str(store), "--api-base", base,
         "--progress", "off", "--quiet"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(store.glob("snapshots/*/.state/ledger.sqlite")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        monkeypatch.setenv("EDX_CLIENT_ID", "id")
        monkeypatch.setenv("EDX_CLIENT_SECRET", "secret")
        capsys.readouterr()
        code = cli.main(["sync", "--store", str(store), "--api-base", base,
                         "--progress", "off"])
        err = capsys.readouterr().err
        assert code == 2
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert str(store) in err and "--out" not in err
    finally:
        proc.kill()
        proc.wait()

        async def stop() -> None:
            server.close()

        loop.run(stop())


# --- store mechanics: durable promote ---------------------------------------------------------

def test_promote_fsyncs_the_store_directory(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    store = Store(tmp_path)
    snap = store.new_snapshot(0.0)
    (snap / "manifest.json").write_text("{}")
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store.promote(snap)
    assert (tmp_path / "latest").resolve() == snap.resolve()
    assert tmp_path.stat().st_ino in synced


# --- export: whole files or none ----------------------------------------------------------------

def write_feed(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = []
    for op, ctype, key in rows:
        row: dict[str, Any] = {"op": op, "catalog_uuid": "cat", "content_type": ctype,
                               "key": key}
        if op == "upsert":
            row["record"] = {"key": key, "_harvest": {"key": key, "content_type": ctype}}
        lines.append(orjson.dumps(row))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_meili_documents_and_deletes_are_committed_as_a_pair(tmp_path: Path) -> None:
    """If the deletes file cannot be written, the documents file is not replaced either."""
    out = tmp_path / "out" / "docs.ndjson"
    out.parent.mkdir()
    first = write_feed(tmp_path / "a.ndjson", [("upsert", "course", "A"),
                                                ("delete", "course", "B")])
    second = write_feed(tmp_path / "b.ndjson", [("upsert", "course", "C"),
                                                 ("delete", "course", "D")])
    assert cli.main(["export", str(first), "--format", "meili", "--out", str(out)]) == 0
    side = out.with_name(out.name + ".deletes.json")
    before = (out.read_bytes(), side.read_bytes())
    (side.parent / (side.name + ".part")).mkdir()  # the deletes file cannot be written
    assert cli.main(["export", str(second), "--format", "meili", "--out", str(out)]) != 0
    assert (out.read_bytes(), side.read_bytes()) == before
    assert [p.name for p in out.parent.iterdir() if p.name.endswith(".part")] == \
        [side.name + ".part"]


class _Terminated(Exception):
    pass


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("fmt", ["meili", "es-bulk"])
def test_export_interrupted_exits_cleanly_and_leaves_no_part(
        signum: int, code: int, fmt: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    source = write_feed(tmp_path / "feed.ndjson",
                        [("upsert", "course", f"K{i}") for i in range(5)]
                        + [("delete", "course", "Z")])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    original = export_mod.document
    calls: list[int] = []

    def document_then_signal(ev: export_mod.Event) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)
        return original(ev)

    def terminated(*_: Any) -> None:
        raise _Terminated  # stands in for the default action (the test process dies)

    monkeypatch.setattr(export_mod, "document", document_then_signal)
    saved = signal.signal(signal.SIGTERM, terminated)
    try:
        got = cli.main(["export", str(source), "--format", fmt,
                        "--out", str(out_dir / "x.ndjson")])
    except (KeyboardInterrupt, _Terminated) as exc:
        pytest.fail(f"{type(exc).__name__} escaped the export")
    finally:
        signal.signal(signal.SIGTERM, saved)
    err = capsys.readouterr().err
    assert got == code
    assert "Traceback" not in err and "interrupted" in err
    assert list(out_dir.iterdir()) == []


def test_meili_ids_are_clean_and_unique_whatever_the_content_type(tmp_path: Path) -> None:
    types = ["video/mp4 clip", "video/mp4_clip", "video/mp4-clip", "vidéo", "course", "",
             "x" * 600]
    source = write_feed(tmp_path / "feed.ndjson",
                        [("upsert", t, "K") for t in types] + [("delete", "a b", "K")])
    out = tmp_path / "docs.ndjson"
    assert cli.main(["export", str(source), "--format", "meili", "--out", str(out)]) == 0
    ids = [orjson.loads(x)["id"] for x in out.read_bytes().splitlines()]
    ids += orjson.loads(out.with_name(out.name + ".deletes.json").read_bytes())
    assert len(ids) == len(set(ids)) == len(types) + 1
    for ident in ids:
        assert ident and len(ident.encode()) <= 511
        assert all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in ident), ident
    assert ids[types.index("course")].startswith("course-")  # stable for the usual types


def test_es_and_jsonl_ids_never_merge_two_items(tmp_path: Path) -> None:
    """`cat:x:y` + key `k` and `cat:x` + key `y:k` read the same as plain text."""
    source = write_feed(tmp_path / "feed.ndjson", [("upsert", "x:y", "k"), ("upsert", "x", "y:k"),
                                                    ("upsert", "course", "K")])
    out = tmp_path / "feed.jsonl"
    assert cli.main(["export", str(source), "--format", "jsonl", "--out", str(out)]) == 0
    ids = [orjson.loads(x)["id"] for x in out.read_bytes().splitlines()]
    assert len(set(ids)) == 3
    assert ids[2] == "cat:course:K"  # readable ids of ordinary items stay as they were
