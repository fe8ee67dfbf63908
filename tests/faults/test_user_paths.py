"""User-named files outside OUT (``export --out``): never a device, FIFO or socket (the
temp would be renamed over it), never a trailing slash, never inside the source."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from harvester import cli

FEED = '{"op":"delete","catalog_uuid":"c","content_type":"course","key":"k"}\n'


@pytest.mark.parametrize("kind", ["fifo", "socket", "trailing-slash", "inside-source"])
def test_export_out_that_is_not_a_regular_file_is_refused_untouched(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    """A FIFO/socket stands in for a device such as /dev/null."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "changes.ndjson").write_text(FEED)
    out, fds = tmp_path / "x.ndjson", []
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(out))
        fds.append(sock.detach())
    arg = {"trailing-slash": f"{out}/", "inside-source": str(src / "x.ndjson")
           }.get(kind, str(out))
    try:
        source = src / "changes.ndjson" if kind != "inside-source" else src
        code = cli.main(["export", str(source), "--format", "jsonl", "--out", arg])
    finally:
        for fd in fds:
            os.close(fd)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--out" in err, err
    if kind in ("fifo", "socket"):
        assert not stat.S_ISREG(os.lstat(out).st_mode)
    assert sorted(os.listdir(src)) == ["changes.ndjson"]
    assert sorted(os.listdir(tmp_path)) == ["src"] + (["x.ndjson"] if kind in (
        "fifo", "socket") else [])
