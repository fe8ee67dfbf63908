"""The run lifecycle under failure: reruns, resume and ``errors.ndjson`` (issues 10, 11)."""

from __future__ import annotations

from pathlib import Path

from harvester.state import Ledger
from harvester.writer import ERRORS_KEY, Write, Writer


def test_commit_errors_checkpoints_its_pending_lines(tmp_path: Path) -> None:
    """The last error line may still be pending when errors.ndjson is committed."""
    ledger = Ledger(tmp_path)
    writer = Writer(tmp_path, ledger)
    writer.apply(Write(ERRORS_KEY, b'{"kind": "catalog_failed"}\n'))
    info = writer.commit_errors()
    writer.close()  # a final checkpoint must not look for the committed part
    assert info.lines == 1
    assert (tmp_path / "errors.ndjson").read_bytes() == b'{"kind": "catalog_failed"}\n'
    assert ledger.files() == {}
    ledger.close()
