"""The listing's dedupe rules, fed plain dicts: versions of a key, winners, spool reading."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson

from harvester.listing import Seen, spool_winners, version_of, winner_key
from harvester.spool import Spool


def rec(title: str, clm: str | None) -> dict[str, object]:
    out: dict[str, object] = {"key": "edX+A", "content_type": "course", "title": title}
    if clm is not None:
        out["content_last_modified"] = clm
    return out


def v(r: dict[str, object]) -> int:
    return version_of(orjson.dumps(r))


def test_same_content_is_a_duplicate_other_content_a_version() -> None:
    seen = Seen()
    a, b = rec("a", "2025-01-01T00:00:00Z"), rec("b", "2025-01-02T00:00:00Z")
    assert seen.add(1, v(a)) == "new"
    assert seen.add(1, v(a)) == "duplicate"
    assert seen.add(1, v(b)) == "version"
    assert seen.add(1, v(b)) == "duplicate"
    assert seen.add(2, v(a)) == "new"  # identity is the digest, not the content
    assert len(seen.ids) == 2


def test_winner_is_newest_then_smallest_hash() -> None:
    old, new = rec("old", "2025-01-01T00:00:00.000000Z"), rec("new", "2025-01-02T00:00:00Z")
    assert min([old, new], key=winner_key) is new
    naive = rec("naive", "2025-01-03T00:00:00")  # no zone: read as UTC
    assert min([new, naive], key=winner_key) is naive
    undated, junk = rec("undated", None), rec("junk", "yesterday")
    assert min([undated, old], key=winner_key) is old  # a dated record beats an undated one
    tie = sorted([undated, junk], key=winner_key)
    assert tie == sorted([junk, undated], key=winner_key)  # ties: by hash, order-free


def write_spool(path: Path, entries: list[tuple[int, dict[str, object]]]) -> None:
    path.write_bytes(b"".join(Spool.line(d, "course", str(r["key"]), orjson.dumps(r))
                              for d, r in entries))


def test_spool_winners_is_the_same_whatever_the_arrival_order(tmp_path: Path) -> None:
    versions = [rec("a", "2025-01-01T00:00:00Z"), rec("b", "2025-01-03T00:00:00Z"),
                rec("c", "2025-01-02T00:00:00Z")]
    other = {"key": "edX+B", "content_type": "course", "title": "only"}
    kept = set()
    for order in itertools.permutations(versions):
        path = tmp_path / "spool"
        write_spool(path, [(7, order[0]), (9, other), (7, order[1]), (7, order[2])])
        got = list(spool_winners(path))
        assert [e.digest for e in got].count(7) == 1 and len(got) == 2
        kept.add(next(e.record["title"] for e in got if e.digest == 7))
    assert kept == {"b"}


def test_spool_digest_reads_the_prefix_and_survives_odd_keys(tmp_path: Path) -> None:
    line = Spool.line(123, "course", 'a,"r":{', b'{"x":1}')
    assert orjson.loads(line) == {"d": 123, "t": "course", "k": 'a,"r":{', "r": {"x": 1}}
    assert Spool.digest_of(line) == 123
    assert Spool.digest_of(orjson.dumps({"t": "x", "d": 5})) == 5
    assert list(spool_winners(tmp_path / "missing")) == []
