"""verify's file measurement without sockets: what the manifest's numbers describe for
each file kind, streamed in bounded memory."""

from __future__ import annotations

import gzip
import hashlib
import random
import tracemalloc
from pathlib import Path

from harvester.partfile import PartFile
from harvester.verify import LocalTree
from harvester.verify.check import measure


def test_a_checkpointed_gzip_is_several_members_and_all_its_lines_count(
        tmp_path: Path) -> None:
    part = PartFile(tmp_path / "courses.ndjson.gz", compress=True)
    rng = random.Random(7)  # incompressible enough that the file spans several reads
    for i in range(3000):  # the writer ends a gzip member at every checkpoint
        part.write(b'{"i": %d, "pad": "%s"}\n' % (i, rng.randbytes(600).hex().encode()))
        if i % 700 == 0:
            part.checkpoint()
    info = part.commit()
    raw = (tmp_path / "courses.ndjson.gz").read_bytes()
    assert raw.count(b"\x1f\x8b\x08") >= 5 and len(raw) > 1 << 20  # > one chunk
    size, digest, lines, why = measure(LocalTree(tmp_path), "courses.ndjson.gz")
    assert (size, digest, lines, why) == (info.bytes, info.sha256, info.lines, None)
    assert hashlib.sha256(raw).hexdigest() == digest


def test_a_gzip_cut_between_members_or_inside_one(tmp_path: Path) -> None:
    one, two = gzip.compress(b"a\nb\n"), gzip.compress(b"c\n")
    (tmp_path / "whole.ndjson.gz").write_bytes(one + two)
    (tmp_path / "cut.ndjson.gz").write_bytes(one + two[:-3])
    (tmp_path / "junk.ndjson.gz").write_bytes(one + b"\0junk")
    tree = LocalTree(tmp_path)
    assert measure(tree, "whole.ndjson.gz")[2:] == (3, None)
    assert measure(tree, "cut.ndjson.gz")[2:] == (None, "the gzip stream is cut short")
    lines, why = measure(tree, "junk.ndjson.gz")[2:]
    assert lines is None and why is not None and why.startswith("not a valid gzip stream")


def test_csv_lines_are_records_as_the_learner_export_counts_them(tmp_path: Path) -> None:
    data = b'a,b\r\n1,"two\r\nlines"\r\n3,4\r\n'
    (tmp_path / "x.csv").write_bytes(data)
    size, _, lines, why = measure(LocalTree(tmp_path), "x.csv")
    assert data.count(b"\n") == 4
    assert (size, lines, why) == (len(data), 3, None)  # 4 physical lines, 3 records


def test_memory_stays_flat_on_a_large_file(tmp_path: Path) -> None:
    big = tmp_path / "big.ndjson"
    line = b'{"k": "' + b"x" * 1000 + b'"}\n'
    with big.open("wb") as fh:
        for _ in range(40):
            fh.write(line * 1000)  # 40 MB
    tracemalloc.start()
    try:
        size, _, lines, _ = measure(LocalTree(tmp_path), "big.ndjson")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (size, lines) == (big.stat().st_size, 40_000)
    assert peak < 4 << 20  # a chunk or two, not the file
