"""harvester.publish on ``file://`` (no sockets): what is published, in which order, what
is removed, and where ``latest.json`` goes."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from harvester.config import PublishConfig
from harvester.errors import ConfigError, PublishError
from harvester.publish import (
    INDEX_NAME,
    check_target,
    publish_result,
    publish_snapshot,
    publish_tenants,
)
from harvester.publish.mirror import _File, _manifest_order
from harvester.run import RunResult

CAT_A = "catalog=0b9a4d52-6a1e-4c1e-9f0e-5d2c7a1b3c4d"
CAT_B = "catalog=1c8b5e63-7b2f-4d2f-8a1f-6e3d8b2c4d5e"


def tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def remote(dest: Path) -> set[str]:
    return {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}


def finished(out: Path, status: str = "complete") -> RunResult:
    return RunResult(status, 0 if status == "complete" else 3, out, {"status": status})


OUTPUT = {
    "manifest.json": orjson.dumps({  # publish sends what the manifest names
        "files": {"catalogs.ndjson": {}, "errors.ndjson": {}, "index.sqlite": {}},
        "catalogs": {"a": {"dir": CAT_A, "files": {"courses.ndjson": {},
                                                   "programs.ndjson.part": {}}}}}),
    "catalogs.ndjson": b"c\n", "errors.ndjson": b"",
    f"{CAT_A}/courses.ndjson": b"x\n", f"{CAT_A}/programs.ndjson.part": b"half",
    ".state/ledger.sqlite": b"ledger", ".manifest.json.tmp": b"tmp",
    f"{CAT_A}/.courses.ndjson.tmp": b"tmp", "index.sqlite": b"idx", "index.sqlite-wal": b"w",
    "learners/enterprise=e/learner_summary.ndjson": b"pii\n",
    "learners/enterprise=e/notes.txt": b"someone else's", "NOTES.md": b"someone else's",
    f"{CAT_A}/README": b"someone else's", "catalog=mine/x.ndjson": b"someone else's",
}


def test_only_what_a_run_wrote_is_published_never_state_temp_or_a_users_files(
        tmp_path: Path) -> None:
    out, dest = tmp_path / "out", tmp_path / "dest"
    tree(out, OUTPUT)
    os.symlink("/etc/passwd", out / CAT_A / "link.ndjson")
    target = check_target(PublishConfig(url=f"file://{dest}"))
    report = publish_result(target, finished(out, "partial"))
    assert report is not None and report.uploaded == 4
    assert remote(dest) == {"manifest.json", "catalogs.ndjson", "errors.ndjson",
                            f"{CAT_A}/courses.ndjson", INDEX_NAME}
    learners = publish_result(target, finished(out / "learners"), learners=True)
    assert learners is not None and learners.uploaded == 1
    assert (dest / "learners" / "enterprise=e" / "learner_summary.ndjson").read_bytes() == \
        b"pii\n"


def test_a_finished_run_without_a_manifest_is_a_failed_publish_not_a_silent_one(
        tmp_path: Path) -> None:
    out, dest = tmp_path / "out", tmp_path / "dest"
    tree(out, {f"{CAT_A}/courses.ndjson": b"x\n"})
    target = check_target(PublishConfig(url=f"file://{dest}"))
    for status, code in (("partial", 3), ("complete", 0)):
        with pytest.raises(PublishError, match="no readable manifest"):
            publish_result(target, RunResult(status, code, out, None))
    assert publish_result(target, RunResult("failed", 2, out, None)) is None
    assert publish_result(None, finished(out)) is None
    assert remote(dest) == set()


def test_manifests_go_deepest_first_and_the_top_one_last() -> None:
    files = [_File(rel, Path(rel), 0) for rel in
             ("manifest.json", "tenant=b/manifest.json", "tenant=a/manifest.json",
              "tenant=a/learners/manifest.json")]
    assert [f.rel for f in _manifest_order(files)] == [
        "tenant=a/learners/manifest.json", "tenant=a/manifest.json",
        "tenant=b/manifest.json", "manifest.json"]


def test_republish_removes_only_what_it_published_that_is_gone(tmp_path: Path) -> None:
    out, dest = tmp_path / "out", tmp_path / "dest"
    def manifest(*dirs: str) -> bytes:
        return orjson.dumps({"catalogs": {d: {"dir": d, "files": {"courses.ndjson": {}}}
                                          for d in dirs}})

    tree(out, {"manifest.json": manifest(CAT_A, CAT_B), f"{CAT_A}/courses.ndjson": b"a\n",
               f"{CAT_B}/courses.ndjson": b"b\n"})
    target = check_target(PublishConfig(url=f"file://{dest}"))
    publish_result(target, finished(out))
    tree(dest, {"README.txt": b"someone else's"})
    (out / CAT_B / "courses.ndjson").unlink()
    (out / CAT_A / "courses.ndjson").write_bytes(b"a2\n")
    (out / "manifest.json").write_bytes(manifest(CAT_A))
    report = publish_result(target, finished(out))
    assert report is not None and (report.uploaded, report.skipped, report.deleted) == (2, 0, 1)
    assert remote(dest) == {"manifest.json", f"{CAT_A}/courses.ndjson", "README.txt",
                            INDEX_NAME}
    assert (dest / CAT_A / "courses.ndjson").read_bytes() == b"a2\n"
    index = orjson.loads((dest / INDEX_NAME).read_bytes())["files"]
    assert set(index) == {"manifest.json", f"{CAT_A}/courses.ndjson"}


def test_latest_json_sits_beside_the_store_that_promoted(tmp_path: Path) -> None:
    store, dest = tmp_path / "store", tmp_path / "dest"
    snap = store / "tenant=acme" / "snapshots" / "20260101T000000Z"
    tree(snap, {"manifest.json": b"{}", f"{CAT_A}/changes.ndjson": b"", "index.sqlite": b"i"})
    target = check_target(PublishConfig(url=f"file://{dest}"))
    assert target is not None
    report = publish_snapshot(target, store, snap, {"run_id": "r1", "status": "complete"})
    assert report.latest == snap.name
    pointer = orjson.loads((dest / "tenant=acme" / "latest.json").read_bytes())
    assert pointer["path"] == "snapshots/20260101T000000Z/"
    assert (dest / "tenant=acme" / pointer["manifest"]).exists()
    assert not (dest / "tenant=acme" / pointer["path"] / "index.sqlite").exists()
    assert not list(dest.rglob(".latest.json.tmp*"))


def test_verify_knows_the_publish_index_by_name() -> None:
    from harvester.verify.check import PUBLISH_INDEX

    assert PUBLISH_INDEX == INDEX_NAME


@pytest.mark.parametrize(("url", "says"), [
    ("s3://", "no bucket"), ("http://x/y", "unknown URL scheme http://"),
    ("s3://b/x?versionId=1", "do not belong"),
])
def test_bad_urls_are_config_errors(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        PublishConfig(url=url)


def test_a_file_url_whose_parent_is_missing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="parent directory does not exist"):
        check_target(PublishConfig(url=f"file://{tmp_path}/no/such/dir"))


def test_tenants_publish_each_finished_tenant_then_the_summary_last(tmp_path: Path) -> None:
    out, dest = tmp_path / "out", tmp_path / "dest"
    tree(out, {"manifest.json": b'{"tenants": {}}',
               "tenant=a/manifest.json": orjson.dumps({"catalogs": {"a": {
                   "dir": CAT_A, "files": {"courses.ndjson": {}}}}}),
               f"tenant=a/{CAT_A}/courses.ndjson": b"a\n",
               "tenant=a/learners/manifest.json": b"{}",
               f"tenant=b/{CAT_A}/courses.ndjson": b"left by a failed tenant\n"})
    target = check_target(PublishConfig(url=f"file://{dest}"))
    report = publish_tenants(target, kind="harvest", root=out, summary="manifest.json",
                             finished={"tenant=a": finished(out / "tenant=a")})
    assert report is not None and report.uploaded == 3
    assert remote(dest) == {"manifest.json", "tenant=a/manifest.json",
                            f"tenant=a/{CAT_A}/courses.ndjson", f"tenant=a/{INDEX_NAME}"}
    learners = publish_tenants(target, kind="learners", root=out,
                               summary="learners-manifest.json",
                               finished={"tenant=a": finished(out / "tenant=a" / "learners")})
    assert learners is not None and learners.uploaded == 1  # no summary file on disk here
    assert (dest / "tenant=a" / "learners" / "manifest.json").exists()
    assert publish_tenants(None, kind="harvest", root=out, summary="manifest.json",
                           finished={}) is None


def test_a_file_url_inside_the_output_it_publishes_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for inside in (out, out / "published"):
        with pytest.raises(ConfigError, match="inside"):
            check_target(PublishConfig(url=f"file://{inside}"), out)
    assert check_target(PublishConfig(url=f"file://{tmp_path}/beside"), out) is not None
