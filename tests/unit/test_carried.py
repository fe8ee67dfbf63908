"""harvester.carried: a failed catalog's carried lines are cut back to the mark taken
before them; lines an earlier session fetched for it stay, done (a real writer and
ledger on disk, no sockets)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from harvester.carried import carry_mark, cut, plan_cut, to_cut
from harvester.messages import Write
from harvester.models import key_digest
from harvester.partfile import iter_lines
from harvester.run import CatalogState, Phase
from harvester.state import Checkpoint, Ledger
from harvester.writer import Writer

CAT = "11111111-2222-3333-4444-555555555555"


def line(ctype: str, key: str, **extra: object) -> bytes:
    rec = {"key": key, "_harvest": {"catalog_uuid": CAT, "content_type": ctype, "key": key,
                                    **extra}}
    return orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE)


def write(writer: Writer, ctype: str, key: str, **extra: object) -> None:
    writer.apply(Write(("out", CAT, ctype), line(ctype, key, **extra),
                       done=(CAT, key_digest(ctype, key))))


@pytest.mark.parametrize("gz", [False, True])
def test_a_cut_keeps_what_came_before_the_mark_and_undoes_the_rest(tmp_path: Path,
                                                                   gz: bool) -> None:
    ledger = Ledger(tmp_path)
    writer = Writer(tmp_path, ledger, compress=gz)
    write(writer, "course", "fresh-1")
    write(writer, "course", "fresh-2")
    writer.checkpoint()
    mark = carry_mark(ledger, writer, CAT)
    assert [lines for _, lines in mark.values()] == [2]  # the courses file, 2 lines
    for key in ("old-1", "old-2"):
        write(writer, "course", key, stale=True)
    write(writer, "program", "old-3", stale=True)  # a file with no line before the mark
    writer.checkpoint()

    cs = CatalogState(CAT, "", phase=Phase.LISTING)
    cs.carried_from = mark
    assert to_cut([cs]) == [cs]
    cp, forget = Checkpoint.empty(), []
    undone = plan_cut(writer, [cs], cp, forget)
    assert sorted(undone) == sorted([(CAT, key_digest("course", "old-1")),
                                     (CAT, key_digest("course", "old-2")),
                                     (CAT, key_digest("program", "old-3"))])
    ledger.reopen(relist=set(), undone=undone, forget=forget, cp=cp)
    cut(writer, [cs])
    assert cs.carried_from is None and to_cut([cs]) == []

    courses = writer.part_path(("out", CAT, "course"))
    kept = [orjson.loads(raw)["key"] for raw in iter_lines(courses, compressed=gz)]
    assert kept == ["fresh-1", "fresh-2"]
    assert not writer.part_path(("out", CAT, "program")).exists()
    assert ledger.done(CAT) == {key_digest("course", "fresh-1"),
                                key_digest("course", "fresh-2")}
    assert {k: list(v) for k, v in ledger.files().items()} == mark
    # The writer reopens the cut file at the mark and appends after the kept lines.
    writer.retrack()
    writer.reopen_tracked([("out", CAT, "course")])
    write(writer, "course", "new")
    writer.close()
    assert [orjson.loads(raw)["key"] for raw in iter_lines(courses, compressed=gz)] == [
        "fresh-1", "fresh-2", "new"]
    ledger.close()


def test_only_a_listing_catalog_with_a_mark_is_cut() -> None:
    states = [CatalogState(CAT, "", phase=p) for p in Phase]
    for cs in states:
        cs.carried_from = {}
    assert [cs.phase for cs in to_cut(states)] == [Phase.LISTING]
    assert to_cut([CatalogState(CAT, "", phase=Phase.LISTING)]) == []
