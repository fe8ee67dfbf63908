"""The writer and ledger across a crash between a rename and its record."""

from __future__ import annotations

from pathlib import Path

import pytest

from harvester.errors import SinkError
from harvester.messages import Write
from harvester.partfile import PartFile
from harvester.state import Checkpoint, Ledger
from harvester.writer import Writer

CAT = "3f56a21c-76c8-47c0-add8-a99714d40d94"


def test_commit_renamed_but_not_recorded_is_kept(tmp_path: Path) -> None:
    """Killed after os.replace and before the ledger forgot the .part: the resumed
    writer must keep the committed file, not reopen an empty one over it."""
    ledger = Ledger(tmp_path)
    w = Writer(tmp_path, ledger)
    for i in range(3):
        w.apply(Write(("out", CAT, "course"), f'{{"i":{i}}}\n'.encode(), done=(CAT, i)))
    w.checkpoint()
    part = w._files[("out", CAT, "course")]
    part.commit()  # renamed to courses.ndjson; the ledger still tracks the .part
    ledger.close()

    ledger = Ledger(tmp_path)
    resumed = Writer(tmp_path, ledger)
    resumed.reopen_tracked([("out", CAT, "course")])
    infos = resumed.commit_catalog(CAT)
    final = tmp_path / f"catalog={CAT}" / "courses.ndjson"
    assert final.read_bytes().count(b"\n") == 3
    assert infos["courses.ndjson"].lines == 3
    assert ledger.files() == {}
    assert ledger.done(CAT) == {0, 1, 2}


def test_missing_tracked_part_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="missing although the resume ledger tracks it"):
        PartFile(tmp_path / "x.ndjson", resume_at=(10, 1))


def test_ledger_checkpoint_roundtrip(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.save_catalogs([(CAT, {"uuid": CAT, "title": "t"})])
    cp = Checkpoint.empty()
    cp.pages.append((CAT, 1, 3))
    cp.done.append((CAT, 2**62))
    cp.phases[CAT] = "details"
    cp.infos[CAT] = {"unique": 5}
    ledger.record(cp)
    assert ledger.pages_done(CAT, 1) == {3}
    assert ledger.done(CAT) == {2**62}
    assert ledger.catalogs()[0][2:] == ("details", {"unique": 5})


def _item(i: int) -> bytes:
    return (b'{"i":%d,"_harvest":{"catalog_uuid":"%s","content_type":"course","key":"K+%d"}}\n'
            % (i, CAT.encode(), i))


@pytest.mark.parametrize("compress", [False, True])
def test_lines_written_after_the_last_checkpoint_survive_a_kill(tmp_path: Path,
                                                                compress: bool) -> None:
    """kill -9 loses nothing the OS already has: complete lines past the checkpoint are
    kept and their items marked done; the torn last line is cut."""
    from harvester.models import key_digest

    ledger = Ledger(tmp_path)
    w = Writer(tmp_path, ledger, compress=compress)
    key = ("out", CAT, "course")
    w.apply(Write(key, _item(0), done=(CAT, key_digest("course", "K+0"))))
    w.checkpoint()
    for i in (1, 2):
        w.apply(Write(key, _item(i), done=(CAT, key_digest("course", f"K+{i}"))))
    w._flush_dirty()  # what the writer does whenever its queue goes idle
    part = w._files[key]
    part._raw.write(b'{"i":3,"_harv')  # torn: the process died mid-line
    part._raw.flush()
    part._gz = None
    part._raw.close()  # the kernel closes a killed process's files; nothing more is written
    ledger.close()  # no checkpoint: items 1 and 2 are not in the ledger

    ledger = Ledger(tmp_path)
    assert ledger.done(CAT) == {key_digest("course", "K+0")}
    resumed = Writer(tmp_path, ledger, compress=compress)
    resumed.reopen_tracked([key])
    assert len(resumed.recovered) == 2
    assert ledger.done(CAT) == {key_digest("course", f"K+{i}") for i in range(3)}
    infos = resumed.commit_catalog(CAT)
    name = "courses.ndjson.gz" if compress else "courses.ndjson"
    assert infos[name].lines == 3
    from harvester.partfile import iter_lines
    got = list(iter_lines(tmp_path / f"catalog={CAT}" / name, compressed=compress))
    assert got == [_item(0), _item(1), _item(2)]
