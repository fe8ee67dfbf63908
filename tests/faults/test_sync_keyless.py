"""Keyless rows on a sync night: listed, never a gap, and never a false delete.

A row with neither ``key`` nor ``uuid`` may be an item the previous snapshot holds under
its key. Such a night's listing is complete (keyless rows count as listed), but the items
of that content type it could not match by key are not known to be gone: their deletes are
held pending until a night without keyless rows of that type settles them. Other content
types settle that same night. Checked over several nights against the simulator's
``/__changes`` ground truth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from harvester.changes import write_changes
from harvester.delta import SnapshotIndex
from harvester.sim import SimConfig, SimServer
from tests.faults.test_sync_store import FeedKey, call, feed, latest, manifest, sync
from tests.integration.helpers import LoopThread, read_lines


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def start(loop: LoopThread) -> Iterator[Callable[..., SimServer]]:
    running: list[SimServer] = []

    def go(**kw: Any) -> SimServer:
        srv = SimServer(SimConfig(**{"catalogs": 1, "rate_lms": "0", **kw}), port=0)
        loop.run(srv.start())
        running.append(srv)
        return srv

    yield go
    for srv in running:
        loop.run(srv.close())


def truth_deletes(loop: LoopThread, srv: SimServer, start: int, stop: int) -> set[FeedKey]:
    return {(c["catalog_uuid"], c["content_type"], c["key"])
            for c in call(loop, srv, "GET", f"/__changes?from={start}&to={stop}")
            if c["op"] == "delete"}


def night(monkeypatch: pytest.MonkeyPatch, loop: LoopThread, srv: SimServer, store: Path,
          day: int, *, epoch: int, keyless: int) -> Path:
    call(loop, srv, "POST", "/__epoch", json={"epoch": epoch})
    call(loop, srv, "POST", "/__config", json={"keyless_items": keyless})
    assert sync(monkeypatch, srv, store, f"2026-11-{day}") == 0
    return latest(store)


def keyless_types(snap: Path) -> set[str]:
    return {e["content_type"] for e in read_lines(snap / "errors.ndjson")
            if e["kind"] == "no_key"}


def test_keyless_rows_hold_deletes_of_their_type_until_a_night_without_them(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, start: Callable[..., SimServer],
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Night 2 lists two items keyless. It used to delete them (and every other unmatched
    item), and night 3 upserted them back. Now night 2 deletes only what is really gone
    of the types without keyless rows; the rest waits for night 3, which has none."""
    srv = start(items=40, seed=2, mutation_rate=0.25)
    truth = truth_deletes(loop, srv, 0, 1)
    store = tmp_path / "store"
    first = night(monkeypatch, loop, srv, store, 20, epoch=0, keyless=0)
    assert feed(first, "delete") == set()
    capsys.readouterr()
    second = night(monkeypatch, loop, srv, store, 21, epoch=1, keyless=2)
    said = capsys.readouterr().out
    types = keyless_types(second)
    held = {k for k in truth if k[1] in types}
    free = truth - held
    assert held and free  # the scenario needs both kinds of content type
    assert feed(second, "delete") == free  # no false delete, other types settled
    entry = next(iter(manifest(second)["catalogs"].values()))
    assert (entry["gaps"], entry["keyless"]) == (0, 2)
    assert entry["sync"]["deletes_pending"] >= len(held)
    assert entry["sync"]["deletes_held_types"] == sorted(types)
    assert f"(keyless {', '.join(sorted(types))} rows)" in said
    third = night(monkeypatch, loop, srv, store, 22, epoch=1, keyless=0)
    assert keyless_types(third) == set()
    assert feed(third, "delete") == held  # settled on the first night without them
    entry = next(iter(manifest(third)["catalogs"].values()))
    assert entry["sync"]["deletes_pending"] == 0
    fourth = night(monkeypatch, loop, srv, store, 23, epoch=1, keyless=0)
    assert feed(fourth, "delete") == set()  # nothing emitted twice


def _index(path: Path, items: list[tuple[str, str]]) -> SnapshotIndex:
    lines = path.with_suffix(".ndjson")
    lines.write_bytes(b"".join(orjson.dumps({"key": k, "_harvest": {
        "catalog_uuid": "cat", "content_type": t, "key": k, "source": "detail"}}) + b"\n"
        for t, k in items))
    index = SnapshotIndex(path)
    index.rebuild("cat", None, [lines], compressed=False)
    return index


@pytest.mark.parametrize(("keyless", "deleted", "held"), [
    ((), {"course:B", "program:P"}, set()),
    (("course",), {"program:P"}, {"course:B"}),
    (("unknown",), set(), {"course:B", "program:P"}),  # a row of unknown type: any type
])
def test_keyless_types_decide_which_deletes_wait(
        tmp_path: Path, keyless: tuple[str, ...], deleted: set[str], held: set[str]) -> None:
    previous = _index(tmp_path / "a.sqlite", [("course", "A"), ("course", "B"),
                                              ("program", "P")])
    current = _index(tmp_path / "b.sqlite", [("course", "A")])
    counts = write_changes(current, previous, "cat", tmp_path / "changes.ndjson",
                           listing_complete=True, keyless_types=keyless)
    feed_rows = read_lines(tmp_path / "changes.ndjson")
    assert {f"{c['content_type']}:{c['key']}" for c in feed_rows} == deleted
    assert {f"{t}:{k}" for _, t, k in current.pending("cat")} == held
    assert (counts.deletes, counts.deletes_pending) == (len(deleted), len(held))
    assert counts.deletes_suppressed is False
    previous.close()
    current.close()
