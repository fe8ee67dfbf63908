"""`harvester export` stopped by SIGTERM tells the truth about what it wrote.

A signal once the commit has started renaming used to abandon it half way and say "F was
not written" although F (and F.deletes.json) already held the new export. Now the commit
finishes, the run exits 0 and one stderr line names the files that hold the new export; a
signal before the commit still replaces nothing (exit 143). Each test runs the export in
a subprocess and delivers SIGTERM from inside, at an exact point of the commit: no timing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from harvester import cli

#: Runs `harvester export ARGV...` after planting a hook that sends the process SIGTERM
#: at one point: after the N-th rename, during the first hash, or once export() returned.
_RUNNER = r"""
import os, signal, sys
import harvester.partfile as partfile
from harvester import cli
from harvester.cli import tools

where, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
calls = []

def fire():
    print("HOOK", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

if where == "rename":
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == n:
            fire()
    os.replace = replace
elif where == "hash":
    real_hash = partfile.sha256_file
    def sha256_file(path):
        calls.append(path)
        if len(calls) == n:
            fire()
        return real_hash(path)
    partfile.sha256_file = sha256_file
elif where == "late":
    real_export = tools.export
    def export(*args, **kw):
        counts = real_export(*args, **kw)
        fire()
        return counts
    tools.export = export
elif where == "early":
    real_checkpoint = partfile.PartFile.checkpoint
    def checkpoint(self):
        calls.append(self)
        if len(calls) == n:
            fire()
        return real_checkpoint(self)
    partfile.PartFile.checkpoint = checkpoint
sys.exit(cli.main(["export", *argv]))
"""


def write_feed(path: Path, rows: list[tuple[str, str]]) -> Path:
    lines = []
    for op, key in rows:
        row: dict[str, Any] = {"op": op, "catalog_uuid": "cat", "content_type": "course",
                               "key": key}
        if op == "upsert":
            row["record"] = {"key": key, "_harvest": {"key": key, "content_type": "course"}}
        lines.append(orjson.dumps(row))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.parent.iterdir())}


def export_under_signal(tmp_path: Path, fmt: str, where: str, n: int
                        ) -> tuple[subprocess.CompletedProcess[str], Path, dict[str, bytes],
                                   dict[str, bytes]]:
    """Export feed A, then feed B with SIGTERM at ``where``; also B into a clean place.
    Returns the run, the output path, the files after it and B's clean files."""
    old = write_feed(tmp_path / "a.ndjson", [("upsert", "A"), ("delete", "Z")])
    new = write_feed(tmp_path / "b.ndjson", [("upsert", "B"), ("upsert", "C"),
                                             ("delete", "A")])
    (tmp_path / "out").mkdir()
    (tmp_path / "ref").mkdir()
    out, ref = tmp_path / "out" / "docs.ndjson", tmp_path / "ref" / "docs.ndjson"
    assert cli.main(["export", str(old), "--format", fmt, "--out", str(out)]) == 0
    assert cli.main(["export", str(new), "--format", fmt, "--out", str(ref)]) == 0
    assert files_of(out) != files_of(ref)
    run = subprocess.run(
        [sys.executable, "-c", _RUNNER, where, str(n), str(new), "--format", fmt,
         "--out", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert "HOOK" in run.stderr, run.stderr  # the signal was really sent there
    assert "Traceback" not in run.stderr, run.stderr
    return run, out, files_of(out), files_of(ref)


@pytest.mark.parametrize(("fmt", "where", "n"), [
    ("meili", "rename", 1),  # between the deletes file's rename and the documents'
    ("meili", "rename", 2),  # after both renames, while the second one is synced
    ("meili", "hash", 1),  # hashing the first committed file
    ("es-bulk", "rename", 1),  # one file, already renamed
    ("meili", "late", 0),  # export() returned, the summary not yet printed
])
def test_a_signal_once_the_commit_started_lets_it_finish_and_says_so(
        tmp_path: Path, fmt: str, where: str, n: int) -> None:
    run, out, after, clean = export_under_signal(tmp_path, fmt, where, n)
    assert after == clean  # the whole new export is in place, no .part left
    assert run.returncode == 0, run.stderr
    assert "was not written" not in run.stderr
    said = [ln for ln in run.stderr.splitlines() if ln.startswith("harvester:")]
    assert len(said) == 1 and "SIGTERM" in said[0] and str(out) in said[0]
    if fmt == "meili":
        assert f"{out}.deletes.json" in said[0]
    assert run.stdout.startswith(f"{out}: 2 upserts, 1 deletes")


@pytest.mark.parametrize("n", [1, 2])
def test_a_signal_before_the_commit_replaces_nothing(tmp_path: Path, n: int) -> None:
    """SIGTERM while the pair is being fsynced: exit 143, the previous pair untouched."""
    old = write_feed(tmp_path / "a.ndjson", [("upsert", "A"), ("delete", "Z")])
    run, out, after, _clean = export_under_signal(tmp_path, "meili", "early", n)
    assert run.returncode == 143
    assert f"{out} was not written" in run.stderr
    (tmp_path / "again").mkdir()
    again = tmp_path / "again" / "docs.ndjson"
    assert cli.main(["export", str(old), "--format", "meili", "--out", str(again)]) == 0
    assert after == files_of(again)


def test_an_error_between_the_renames_names_the_file_already_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The documents' rename fails after the deletes file was replaced: the error says
    which file holds the new export and which the previous one."""
    old = write_feed(tmp_path / "a.ndjson", [("upsert", "A"), ("delete", "Z")])
    new = write_feed(tmp_path / "b.ndjson", [("upsert", "B"), ("delete", "A")])
    out = tmp_path / "docs.ndjson"
    assert cli.main(["export", str(old), "--format", "meili", "--out", str(out)]) == 0
    before = out.read_bytes()
    real_replace = os.replace
    renames: list[str] = []

    def replace(src: Any, dst: Any) -> None:
        renames.append(str(dst))
        if len(renames) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    capsys.readouterr()
    assert cli.main(["export", str(new), "--format", "meili", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{out}.deletes.json already hold(s) the new export, {out} the previous one" in err
    assert out.read_bytes() == before
    assert orjson.loads(Path(f"{out}.deletes.json").read_bytes()) != []
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
