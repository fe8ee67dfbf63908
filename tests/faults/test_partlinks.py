"""A hard link or a FIFO in place of a file of ours is never written through, never read,
and never blocks the run.

A hard link shares its bytes with a file the harvester did not create: reopening it for
appending writes into that file. A FIFO blocks any ``open`` until a writer comes, and the
run (holding OUT's lock) would wait for ever, deaf to SIGTERM. Each is handled where a
symbolic link at the same name is: a file the resume ledger counts on (a tracked ``.part``,
a committed catalog file being reopened, the ledger, the lock) is refused with one line and
exit 2; a file rebuilt from the ledger (``errors.ndjson``) or read for information only
(``manifest.json``) is discarded and written again.

The reruns are subprocesses bounded by a generous timeout: a hang fails the test instead of
blocking the suite (the timeout is a guard, not a measurement).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
from pathlib import Path

import pytest

from harvester.errors import StateError
from harvester.metrics import MetricsFile, read_last_success
from harvester.pipeline import Harvest
from harvester.sim import SimServer
from harvester.state import Ledger, RunLock
from tests.conftest import SimStarter, settings_for
from tests.integration.test_resume import spawn, wait_for

OUTSIDE = "outside"
GUARD_S = 60.0


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    """The exit code and stderr of a rerun; a rerun that hangs is killed and fails."""
    try:
        _, err = await asyncio.wait_for(proc.communicate(), GUARD_S)
    except TimeoutError:
        proc.send_signal(signal.SIGKILL)
        await proc.communicate()
        pytest.fail("the rerun hung on a planted file")
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def bind_socket(path: Path) -> None:
    """Put a Unix socket at ``path`` (bound from its directory: a socket's address has
    room for about 100 bytes, less than a pytest tmp path)."""
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path.name)
    finally:
        os.chdir(here)


def plant(path: Path, how: str, tmp: Path) -> Path | None:
    """Replace ``path`` by a hard link to a copy outside OUT (returned), by a FIFO or by a
    Unix socket."""
    if how in ("fifo", "socket"):
        path.unlink()
        os.mkfifo(path) if how == "fifo" else bind_socket(path)
        return None
    outside = tmp / OUTSIDE / path.name
    outside.parent.mkdir(exist_ok=True)
    outside.write_bytes(path.read_bytes())
    path.unlink()
    os.link(outside, path)
    return outside


async def killed_mid_run(start_sim: SimStarter, tmp: Path) -> tuple[SimServer, Path, Path]:
    """A run killed by SIGKILL during details; its tracked ``courses.ndjson.part``."""
    srv = await start_sim(catalogs=2, items=150, latency_ms=2)
    out = tmp / "out"
    proc = await spawn(srv, out, tmp)
    await wait_for(lambda: bool(courses_tracked(out)), proc)
    proc.kill()
    await proc.communicate()
    return srv, out, out / courses_tracked(out)[0]


def courses_tracked(out: Path) -> list[str]:
    """The ``courses.ndjson.part`` files the ledger has checkpointed (read-only: a reader
    beside the running writer)."""
    path = out / ".state" / "ledger.sqlite"
    if not path.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT path FROM files WHERE path LIKE '%/courses.ndjson.part'"
                              ).fetchall()
    except sqlite3.Error:
        return []  # not created yet
    return [r[0] for r in rows]


KIND = {"hardlink": "hard link", "fifo": "FIFO", "socket": "a socket"}


@pytest.mark.parametrize("how", ["hardlink", "fifo", "socket"])
async def test_a_tracked_part_that_is_not_ours_is_refused(
        start_sim: SimStarter, tmp_path: Path, how: str) -> None:
    """A socket cannot even be opened (ENXIO): still the same refusal, never "cannot
    write ... rerun to resume", which no rerun would ever get past."""
    srv, out, part = await killed_mid_run(start_sim, tmp_path)
    outside = plant(part, how, tmp_path)
    before = outside.read_bytes() if outside else b""
    code, err = await finish(await spawn(srv, out, tmp_path))
    line = one_line(err)
    assert code == 2 and str(part.name) in line, err
    assert KIND[how] in line and "--restart" in line, line
    if outside is not None:
        assert outside.read_bytes() == before and outside.stat().st_nlink == 2


async def test_a_socket_at_a_tracked_spool_part_is_refused(
        start_sim: SimStarter, tmp_path: Path) -> None:
    srv, out, _ = await killed_mid_run(start_sim, tmp_path)
    spools = sorted((out / ".state" / "spool").glob("*.part"))
    assert spools
    plant(spools[0], "socket", tmp_path)
    code, err = await finish(await spawn(srv, out, tmp_path))
    line = one_line(err)
    assert code == 2 and spools[0].name in line and "a socket" in line, err
    assert "--restart" in line, line


def test_a_socket_at_the_lock_is_refused_as_not_a_regular_file(tmp_path: Path) -> None:
    state = tmp_path / "out" / ".state"
    state.mkdir(parents=True)
    bind_socket(state / "lock")
    with pytest.raises(StateError, match="not a regular file \\(a socket\\)"):
        RunLock(tmp_path / "out").acquire()


async def partial_run(start_sim: SimStarter, tmp: Path) -> tuple[SimServer, Path]:
    """A finished run that ended partial (permanent 404s): a rerun reopens its files."""
    srv = await start_sim(catalogs=2, items=60, seed=4, detail_404_rate=0.2,
                          detail_404_mode="permanent")
    out = tmp / "out"
    result = await Harvest(settings_for(srv, out, **{"harvest.detail_404_retries": 0})).run()
    assert result.exit_code == 3
    return srv, out


@pytest.mark.parametrize("how", ["hardlink", "fifo"])
async def test_a_committed_catalog_file_that_is_not_ours_is_not_reopened(
        start_sim: SimStarter, tmp_path: Path, how: str) -> None:
    srv, out = await partial_run(start_sim, tmp_path)
    final = sorted(out.glob("catalog=*/courses.ndjson"))[0]
    outside = plant(final, how, tmp_path)
    before = outside.read_bytes() if outside else b""
    code, err = await finish(await spawn(srv, out, tmp_path))
    line = one_line(err)
    assert code == 2 and "courses.ndjson" in line, err
    if outside is not None:
        assert outside.read_bytes() == before and outside.stat().st_nlink == 2
        assert "hard link" in line, line


async def test_a_fifo_at_errors_part_is_replaced_not_read(
        start_sim: SimStarter, tmp_path: Path) -> None:
    srv, out = await partial_run(start_sim, tmp_path)
    os.mkfifo(out / "errors.ndjson.part")
    code, err = await finish(await spawn(srv, out, tmp_path))
    assert code == 3, err  # still partial: the permanent 404s are retried from the ledger
    assert (out / "errors.ndjson").is_file() and not (out / "errors.ndjson.part").exists()
    assert (out / "errors.ndjson").read_bytes().count(b"\n") > 0


async def test_a_fifo_at_the_manifest_of_a_complete_run_does_not_block(
        start_sim: SimStarter, tmp_path: Path) -> None:
    srv = await start_sim(catalogs=1, items=20)
    out = tmp_path / "out"
    assert (await Harvest(settings_for(srv, out)).run()).exit_code == 0
    (out / "manifest.json").unlink()
    os.mkfifo(out / "manifest.json")
    code, err = await finish(await spawn(srv, out, tmp_path))
    assert code == 0, err


@pytest.mark.parametrize("name", ["lock", "ledger.sqlite"])
def test_a_hard_link_at_the_lock_or_ledger_is_refused(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    state = out / ".state"
    state.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.write_bytes(b"")
    os.link(outside, state / name)
    with pytest.raises(StateError, match="hard link"):
        RunLock(out).acquire() if name == "lock" else Ledger(out)
    assert outside.read_bytes() == b""


def test_a_hard_linked_metrics_file_is_neither_read_nor_written_through(
        tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    clock = iter([100.0, 200.0, 300.0, 400.0]).__next__
    MetricsFile(path, "sync", clock=clock).finish("complete", {})  # last success: 200
    outside = tmp_path / OUTSIDE
    outside.write_bytes(path.read_bytes().replace(b" 200.0", b" 999.0"))
    path.unlink()
    os.link(outside, path)
    before = outside.read_bytes()
    assert read_last_success(path) == {}  # another file's numbers are not our last run's
    MetricsFile(path, "sync", clock=clock).finish("partial", {})
    assert outside.read_bytes() == before and outside.stat().st_nlink == 1
    assert path.stat().st_nlink == 1 and b"999" not in path.read_bytes()


async def test_a_fifo_at_the_spool_directory_is_refused_before_any_work(
        start_sim: SimStarter, tmp_path: Path) -> None:
    """Found by an adversary: a FIFO planted at ``.state/spool`` after a partial run was
    met only at finish, after manifest.json said complete, and exited 1 on every rerun."""
    from harvester.errors import UnsafePath

    srv = await start_sim(catalogs=2, items=20, forbid_catalogs=("1",))
    out = tmp_path / "out"
    first = await Harvest(settings_for(srv, out)).run()
    assert first.exit_code == 3
    before = (out / "manifest.json").read_bytes()
    spool = out / ".state" / "spool"
    for f in spool.iterdir():
        f.unlink()
    spool.rmdir()
    os.mkfifo(spool)
    requests = srv.state.stats.detail_requests + sum(
        sum(v.values()) for v in srv.state.stats.requests.values())
    with pytest.raises(UnsafePath, match="spool: it is not a directory"):
        await Harvest(settings_for(srv, out)).run()
    assert (out / "manifest.json").read_bytes() == before  # still says partial
    assert srv.state.stats.detail_requests + sum(
        sum(v.values()) for v in srv.state.stats.requests.values()) == requests
    spool.unlink()
    healed = await Harvest(settings_for(srv, out)).run()
    assert healed.exit_code == 3  # catalog 1 still forbidden: partial, truthfully
