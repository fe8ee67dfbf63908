"""The run's typed records and its session, without sockets: the phase machine, the
persisted counters, the manifest round trip, and RunSession's resume decisions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from harvester.errors import IllegalPhase, StateError
from harvester.manifest import CatalogEntry, Manifest, Totals
from harvester.pipeline.session import RunSession
from harvester.run import CatalogCounts, CatalogState, Phase
from harvester.store import usable

from .stagekit import settings

ALL_PHASES = list(Phase)


def test_a_catalog_walks_the_happy_path() -> None:
    cs = CatalogState("c", "t")
    for phase in (Phase.LISTING, Phase.LISTED, Phase.DETAILS, Phase.DONE):
        cs.advance(phase)
    assert cs.phase == Phase.DONE and cs.settled


@pytest.mark.parametrize("start", ALL_PHASES)
def test_a_failed_catalog_never_becomes_done_without_succeeding(start: Phase) -> None:
    """The failure-paths contract: failed -> done is refused from wherever it failed;
    the only way on is listing it again."""
    cs = CatalogState("c", "t", phase=start)
    if start != Phase.DONE:
        cs.advance(Phase.FAILED)
        for illegal in (Phase.DONE, Phase.LISTED, Phase.DETAILS, Phase.COMMITTING):
            with pytest.raises(IllegalPhase, match="failed -> "):
                cs.advance(illegal)
        cs.advance(Phase.LISTING)
    else:
        with pytest.raises(IllegalPhase):
            cs.advance(Phase.FAILED)  # a done catalog is reopened, never failed


def test_skipping_a_phase_is_refused_and_staying_put_is_allowed() -> None:
    cs = CatalogState("c", "t")
    with pytest.raises(IllegalPhase):
        cs.advance(Phase.DONE)
    cs.advance(Phase.NEW)
    assert cs.phase == Phase.NEW


def test_persisted_counters_round_trip_and_hold_nothing_live() -> None:
    cs = CatalogState("c", "t", phase=Phase.DETAILS)
    cs.unique, cs.error, cs.sync = 7, "boom", {"carried": 2}
    info = cs.info()
    assert set(info) == {f for f in CatalogCounts.__dataclass_fields__}
    assert orjson.loads(orjson.dumps(info)) == info  # JSON-clean: no events, no queues
    back = CatalogState("c", "t")
    back.load({**info, "unknown_key": 1})
    assert back.info() == info


def entry(**over: object) -> CatalogEntry:
    cs = CatalogState("c1", "Title", phase=Phase.DONE)
    cs.unique, cs.files = 3, {"courses.ndjson": {"lines": 3, "bytes": 9, "sha256": "x"}}
    e = CatalogEntry.of(cs)
    return CatalogEntry.from_json({**e.to_json(), **over})


def manifest(**over: object) -> Manifest:
    fields: dict[str, object] = dict(
        run_id="r", started_at="a", ended_at="b", status="complete", config={"x": 1},
        catalogs={"c1": entry()}, files={"errors.ndjson": {"lines": 0}},
        totals=Totals(1, 3, 3, 0, 0, 0, 0, stats={"wall_seconds": 1.5}))
    fields.update(over)
    return Manifest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("extra", [{}, {"sync": {"stale": {"items": 0, "catalogs": []},
                                                 "gone_catalogs": {"g": {"deletes": 4}}}}])
def test_the_manifest_round_trips_through_json(extra: dict[str, object]) -> None:
    m = manifest(**extra)
    data = orjson.loads(orjson.dumps(m.to_json()))
    assert Manifest.from_json(data) == m
    assert data["catalogs"]["c1"]["lines"] == {"courses.ndjson": 3}
    assert data["totals"]["wall_seconds"] == 1.5  # stats sit beside the counts
    assert ("gone_catalogs" in data) == bool(extra)


def test_a_snapshot_is_usable_only_when_every_catalog_is_done_or_carried() -> None:
    assert usable(manifest())
    assert not usable(manifest(catalogs={"c1": entry(status="failed")}))
    assert usable(manifest(catalogs={"c1": entry(status="failed",
                                                 sync={"carried_forward": False})}))
    assert not usable(manifest(catalogs={"c1": entry(gaps=1)}))


def test_a_session_starts_refuses_mixed_settings_and_says_when_nothing_is_left(
        tmp_path: Path) -> None:
    first = RunSession(settings(tmp_path), restart=False, now=lambda: "T0")
    with first.hold():
        assert first.open() is None
        assert first.run_id and not first.resumed
        (tmp_path / "errors.ndjson").write_bytes(b"")  # as the writer commits it
        empty = {"lines": 0, "bytes": 0, "sha256": hashlib.sha256(b"").hexdigest()}
        result = first.finish([], [], errors=0, errors_file=empty, stats={}, extra={},
                              keep_spool=True)
    assert (result.status, result.exit_code) == ("complete", 0)
    assert orjson.loads((tmp_path / "manifest.json").read_bytes())["run_id"] == first.run_id
    again = RunSession(settings(tmp_path), restart=False, now=lambda: "T1")
    with again.hold():
        done = again.open()
    assert done is not None and "nothing to do" in done.message
    other = RunSession(settings(tmp_path, **{"harvest.page_size": 7}), restart=False,
                       now=lambda: "T2")
    with other.hold(), pytest.raises(StateError, match="--page-size"):
        other.open()


def test_a_partial_session_is_resumed_and_a_second_holder_is_refused(tmp_path: Path) -> None:
    first = RunSession(settings(tmp_path), restart=False, now=lambda: "T0")
    with first.hold():
        first.open()
        failed = CatalogState("c", "t", phase=Phase.FAILED)
        result = first.finish([], [failed], errors=1, errors_file={}, stats={}, extra={},
                              keep_spool=True)
        with pytest.raises(StateError, match="another harvester"):
            RunSession(settings(tmp_path), restart=False, now=lambda: "T").hold().__enter__()
    assert (result.status, result.exit_code) == ("partial", 3)
    again = RunSession(settings(tmp_path), restart=False, now=lambda: "T1")
    with again.hold():
        assert again.open() is None
        assert again.resumed and again.run_id == first.run_id
    assert not (tmp_path / "manifest.json").exists()  # reopened: nothing looks complete


async def test_the_emitter_records_only_legal_moves() -> None:
    """A phase reaches the ledger's queue only through the phase machine."""
    import asyncio

    from harvester.messages import Message, PhaseChange
    from harvester.obs import Stats
    from harvester.pipeline.emit import Emitter

    queue: asyncio.Queue[Message | None] = asyncio.Queue()
    emit = Emitter(queue, stats=Stats(), now=lambda: "T")
    cs = CatalogState("c", "t", phase=Phase.FAILED)
    with pytest.raises(IllegalPhase):
        await emit.advance(cs, Phase.DONE)
    assert queue.empty() and cs.phase == Phase.FAILED
    await emit.advance(cs, Phase.LISTING)
    assert queue.get_nowait() == PhaseChange("c", Phase.LISTING)
