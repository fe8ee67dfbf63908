"""``--restart`` (and every other cleanup) removes only files the harvester writes.

It removed every ``catalog=*/*.ndjson``, ``.gz`` and ``.part`` in OUT: a user's archive
in ``catalog=my-archive/`` and notes kept next to a catalog's files went with them. Now
only the exact names a harvest writes, in the directories of catalogs it knows, go.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harvester.outputs import catalog_dirname
from harvester.pipeline import Harvest
from harvester.store import Store
from tests.conftest import SimStarter, settings_for
from tests.integration.helpers import read_lines, truth

OUR_NAMES = ("courses", "course_runs", "programs", "learner_pathways", "other")


def items(out: Path, catalogs: list[str]) -> dict[str, set[tuple[str, str]]]:
    got: dict[str, set[tuple[str, str]]] = {}
    for d in (out / catalog_dirname(c) for c in catalogs):
        for stem in OUR_NAMES:
            for f in (d / f"{stem}.ndjson", d / f"{stem}.ndjson.gz"):
                if f.exists():
                    for rec in read_lines(f):
                        h = rec["_harvest"]
                        got.setdefault(h["catalog_uuid"], set()).add(
                            (h["content_type"], h["key"]))
    return got


@pytest.mark.parametrize("gzip", [False, True])
async def test_restart_keeps_files_the_harvester_did_not_write(
        start_sim: SimStarter, tmp_path: Path, gzip: bool) -> None:
    srv = await start_sim(catalogs=2, items=30)
    out = tmp_path / "out"
    assert (await Harvest(settings_for(srv, out)).run()).exit_code == 0
    cat = out / catalog_dirname(srv.catalog_uuids[0])
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("mine\n")
    users = {
        out / "catalog=my-archive" / "2019-backup.ndjson": b"{}\n",
        out / "catalog=my-archive" / "courses.ndjson": b"{}\n",
        cat / "my-notes.ndjson": b"{}\n",
        cat / "courses.backup.ndjson": b"{}\n",
        cat / "old.ndjson.gz": b"x",
        cat / "notes.part": b"x",
        out / "notes.txt": b"mine\n",
    }
    for path, data in users.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    (cat / "my-link").symlink_to(outside)
    again = await Harvest(settings_for(srv, out, **{"output.gzip": gzip}), restart=True).run()
    assert (again.exit_code, again.status) == (0, "complete")
    for path, data in users.items():
        assert path.read_bytes() == data, path
    assert os.readlink(cat / "my-link") == str(outside)
    assert outside.read_text() == "mine\n"
    # Ours were replaced: the other format's files of the first run are gone.
    gone = ".ndjson" if gzip else ".ndjson.gz"
    assert not [c for c in srv.catalog_uuids
                if (out / catalog_dirname(c) / f"courses{gone}").exists()]
    assert items(out, srv.catalog_uuids) == await truth(srv)


UUID = "0b9a4d52-6a1e-4c1e-9f0e-5d2c7a1b3c4d"


def fake_snapshot(snap: Path, *, finished: bool) -> list[Path]:
    """A snapshot with every kind of file a sync writes; returns them."""
    cat = snap / catalog_dirname(UUID)
    ours = [snap / "catalogs.ndjson", snap / "errors.ndjson", snap / "index.sqlite",
            cat / "courses.ndjson", cat / "programs.ndjson.part", cat / "changes.ndjson",
            snap / ".state" / "ledger.sqlite", snap / ".state" / "lock",
            snap / ".state" / "previous", snap / ".state" / "spool" / "x.ndjson.part"]
    if finished:
        ours.append(snap / "manifest.json")
    for path in ours:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (snap / "catalogs.ndjson").write_text(f'{{"uuid": "{UUID}"}}\n')
    return ours


@pytest.mark.parametrize("how", ["abandon", "prune"])
def test_sync_cleanup_removes_only_what_a_sync_writes(tmp_path: Path, how: str) -> None:
    store = Store(tmp_path / "store")
    old, mine = store.snapshots / "20260101T000000Z", store.snapshots / "20260102T000000Z"
    ours = fake_snapshot(old, finished=how == "prune")
    fake_snapshot(mine, finished=how == "prune")
    users = [old / "README.txt", old / catalog_dirname(UUID) / "my-notes.ndjson",
             old / "catalog=my-archive" / "courses.ndjson"]
    for path in users:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"{}\n")
    if how == "abandon":
        store.abandon(old)
        store.abandon(mine)
    else:
        fake_snapshot(store.snapshots / "20260103T000000Z", finished=True)
        assert store.prune(1) == [old.name, mine.name]
    assert all(p.read_bytes() == b"{}\n" for p in users)
    assert not [p for p in ours if os.path.lexists(p)]
    assert not mine.exists()  # nothing of anyone else's: the directory went too
