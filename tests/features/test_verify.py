"""``harvester verify`` against real outputs: a harvest (plain and gzip), a sync store of
two nights and a learner export, all written by the CLI from the simulator over loopback.

Each test copies the pristine outputs, damages one thing the way a disk, a copy job or a
killed run would, and asserts that ``verify`` names exactly that file (exit 1), while an
undamaged output exits 0 with nothing on stdout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from harvester import cli
from harvester.config import PublishConfig
from harvester.publish import check_target, publish_snapshot
from harvester.sim import SimConfig, SimServer
from tests.features.s3kit import CREDENTIALS, Moto, s3_env
from tests.integration.helpers import LoopThread


async def _post(url: str, body: dict[str, int]) -> None:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as resp:
        assert resp.status == 200


@dataclass(frozen=True)
class Outputs:
    harvest: Path
    gz: Path
    store: Path
    learners: Path  # OUT of `harvester learners`: the export is OUT/learners


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outputs]:
    root = tmp_path_factory.mktemp("pristine")
    loop = LoopThread()
    srv = SimServer(SimConfig(catalogs=3, items=40, seed=7, rate_lms="0", rate_learners="0",
                              learners=60, mutation_rate=0.05,
                              drop_catalog_at_epoch=("2:1",)), port=0)
    loop.run(srv.start())
    env = {"EDX_CLIENT_ID": srv.client_id, "EDX_CLIENT_SECRET": srv.client_secret}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cfg = root / "fast.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
    common = ["--api-base", srv.base_url, "--rate-lms", "2000/s", "--rate-learners", "2000/s",
              "--progress", "off", "--quiet", "--config", str(cfg)]
    try:
        out = Outputs(root / "h", root / "hz", root / "store", root / "l")
        assert cli.main(["harvest", "--out", str(out.harvest), *common]) == 0
        assert cli.main(["harvest", "--out", str(out.gz), "--gzip", *common]) == 0
        assert cli.main(["sync", "--store", str(out.store), "--as-of", "2026-01-01",
                         *common]) == 0
        loop.run(_post(f"{srv.base_url}/__epoch", {"epoch": 1}))  # night 2 has changes
        assert cli.main(["sync", "--store", str(out.store), "--as-of", "2026-01-02",
                         *common]) == 0
        assert cli.main(["learners", "--out", str(out.learners), "--enterprise",
                         srv.enterprise_uuid, "--csv", *common]) == 0
        yield out
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        loop.run(srv.close())
        loop.close()


@pytest.fixture
def outs(pristine: Outputs, tmp_path: Path) -> Outputs:
    """A private copy of the pristine outputs (links copied as links)."""
    copies = []
    for src in (pristine.harvest, pristine.gz, pristine.store, pristine.learners):
        dst = tmp_path / src.name
        shutil.copytree(src, dst, symlinks=True)
        copies.append(dst)
    return Outputs(*copies)


def run_verify(capsys: pytest.CaptureFixture[str], target: Path | str
               ) -> tuple[int, list[str], str]:
    code = cli.main(["verify", str(target)])
    cap = capsys.readouterr()
    return code, cap.out.splitlines(), cap.err


def catalog_file(out: Path, name: str = "courses.ndjson", n: int = 0) -> Path:
    return sorted(out.glob(f"catalog=*/{name}"))[n]


def latest(store: Path) -> Path:
    return store / "snapshots" / os.readlink(store / "latest").split("/")[-1]


def test_clean_outputs_exit_0_with_nothing_on_stdout(
        outs: Outputs, capsys: pytest.CaptureFixture[str]) -> None:
    snapshots = sorted((outs.store / "snapshots").iterdir())
    assert len(snapshots) == 2
    for target in (outs.harvest, outs.gz, outs.store, outs.learners,
                   outs.learners / "learners", snapshots[0], f"file://{outs.store}",
                   f"file://{outs.gz}"):
        code, lines, err = run_verify(capsys, target)
        assert (code, lines) == (0, []), target
        assert err.strip().endswith("clean")
    code, _, err = run_verify(capsys, outs.store)
    assert "2 manifest(s)" in err  # every kept snapshot was verified


@pytest.mark.parametrize("which", ["harvest", "gz", "learners"])
def test_a_flipped_byte_is_named(outs: Outputs, capsys: pytest.CaptureFixture[str],
                                 which: str) -> None:
    if which == "learners":
        victim = next((outs.learners / "learners").glob("enterprise=*/*.ndjson"))
    else:
        victim = catalog_file(getattr(outs, which),
                              "courses.ndjson.gz" if which == "gz" else "courses.ndjson")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    code, lines, _ = run_verify(capsys, outs.learners if which == "learners"
                                else getattr(outs, which))
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(f"{victim}: ")
    assert "sha256" in lines[0] and "bytes" not in lines[0]  # same size, other content


@pytest.mark.parametrize("which", ["harvest", "gz"])
def test_a_truncated_file_is_named(outs: Outputs, capsys: pytest.CaptureFixture[str],
                                   which: str) -> None:
    out = getattr(outs, which)
    victim = catalog_file(out, "courses.ndjson.gz" if which == "gz" else "courses.ndjson")
    size = victim.stat().st_size
    os.truncate(victim, size - 100)
    code, lines, _ = run_verify(capsys, out)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(f"{victim}: ")
    assert f"{size - 100} bytes, the manifest says {size} (truncated)" in lines[0]
    if which == "gz":
        assert "gzip stream is cut short" in lines[0]
    else:
        assert "lines, the manifest says" in lines[0]


def test_a_missing_file_is_named(outs: Outputs, capsys: pytest.CaptureFixture[str]) -> None:
    victim = catalog_file(outs.harvest, "programs.ndjson", 1)
    victim.unlink()
    code, lines, _ = run_verify(capsys, outs.harvest)
    assert (code, lines) == (1, [f"{victim}: missing (named in the manifest)"])


def test_a_leftover_part_is_named(outs: Outputs, capsys: pytest.CaptureFixture[str]) -> None:
    final = catalog_file(outs.harvest)
    part = final.with_name(final.name + ".part")
    shutil.copy(final, part)  # what a rerun killed mid-catalog leaves next to the old one
    tmp = outs.store / "snapshots" / latest(outs.store).name / ".manifest.json.tmp"
    tmp.write_bytes(b"{")
    assert run_verify(capsys, outs.harvest)[:2] == (1, [
        f"{part}: leftover partial file (a run was interrupted, or is still running)"])
    assert run_verify(capsys, outs.store)[:2] == (1, [
        f"{tmp}: leftover partial file (a run was interrupted, or is still running)"])


def test_strays_links_and_bad_error_lines_are_named(
        outs: Outputs, capsys: pytest.CaptureFixture[str]) -> None:
    stray = catalog_file(outs.harvest).with_name("extra.ndjson")
    stray.write_bytes(b"{}\n")
    link = outs.harvest / "catalog=planted"
    link.mkdir()
    (link / "x.ndjson").symlink_to("/etc/hostname")
    (outs.harvest / ".state" / "anything").write_bytes(b"ours")  # .state is not output
    errors = outs.harvest / "errors.ndjson"
    errors.write_bytes(b'{"kind": "gap", "at": "now"}\n[1]\n{not json\n')
    code, lines, _ = run_verify(capsys, outs.harvest)
    assert code == 1
    assert lines[0].startswith(f"{errors}: ")  # no longer what the manifest says
    assert lines[1:] == [
        f"{errors}:1: an errors.ndjson line without catalog_uuid, message",
        f"{errors}:2: not a JSON object",
        f"{errors}:3: not JSON",
        f"{stray}: not named in the manifest",
        f"{link / 'x.ndjson'}: a symbolic link (the harvester never writes one)",
    ]


def test_a_dangling_or_unfinished_latest_is_named(
        outs: Outputs, capsys: pytest.CaptureFixture[str]) -> None:
    link = outs.store / "latest"
    link.unlink()
    link.symlink_to("snapshots/20990101T000000Z")
    code, lines, _ = run_verify(capsys, outs.store)
    assert (code, lines) == (1, [f"{link}: dangling: it points to "
                                 "snapshots/20990101T000000Z, which does not exist"])
    assert run_verify(capsys, f"file://{outs.store}")[:2] == (1, [
        f"file://{link}: dangling: it points to snapshots/20990101T000000Z, which does "
        "not exist"])
    unfinished = outs.store / "snapshots" / "20990101T000000Z"
    unfinished.mkdir()
    code, lines, _ = run_verify(capsys, outs.store)
    assert lines == [f"{link}: points to snapshots/20990101T000000Z, which has no "
                     "manifest.json (unfinished)"]
    link.unlink()
    code, lines, _ = run_verify(capsys, outs.store)
    assert lines == [f"{link}: missing (nor latest.json): no snapshot of this store was "
                     "ever promoted"]


def test_an_unfinished_snapshot_is_a_note_and_old_snapshots_are_verified(
        outs: Outputs, capsys: pytest.CaptureFixture[str]) -> None:
    night = outs.store / "snapshots" / "20990101T000000Z"  # a night killed mid-run
    (night / "catalog=x").mkdir(parents=True)
    (night / "catalog=x" / "courses.ndjson.part").write_bytes(b"{}\n")
    code, lines, err = run_verify(capsys, outs.store)
    assert (code, lines) == (0, [])
    assert f"note: {night}: unfinished snapshot" in err
    oldest = sorted((outs.store / "snapshots").iterdir())[0]
    victim = next(oldest.glob("catalog=*/changes.ndjson"))
    victim.write_bytes(victim.read_bytes() + b'{"op": "move"}\n')
    code, lines, _ = run_verify(capsys, outs.store)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"{victim}: ") and "lines, the manifest says" in lines[0]


def test_change_feeds_are_measured_and_a_gone_catalogs_feed_is_named(
        outs: Outputs, capsys: pytest.CaptureFixture[str]) -> None:
    night2 = latest(outs.store)
    m = orjson.loads((night2 / "manifest.json").read_bytes())
    (gone, entry), = m["gone_catalogs"].items()
    feed = night2 / f"catalog={gone}" / "changes.ndjson"
    assert entry["feed"]["lines"] == entry["deletes"] > 0 and feed.exists()
    feed.unlink()
    assert run_verify(capsys, outs.store)[:2] == (1, [
        f"{feed}: missing (named in the manifest)"])
    # a snapshot written before feeds were measured: its feed lines are checked instead
    for cat in m["catalogs"].values():
        cat["sync"].pop("feed")
    m["gone_catalogs"] = {}
    (night2 / "manifest.json").write_bytes(orjson.dumps(m))
    victim = next(night2.glob("catalog=*/changes.ndjson"))
    victim.write_bytes(victim.read_bytes() + b'{"op": "move"}\n')
    code, lines, _ = run_verify(capsys, outs.store)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"{victim}:") and "op 'move'" in lines[0]


def test_learner_export_strays_and_a_missing_csv(
        outs: Outputs, capsys: pytest.CaptureFixture[str]) -> None:
    root = outs.learners / "learners"
    manifest = orjson.loads((root / "manifest.json").read_bytes())
    assert manifest["pii"]["mode"] == "keep"
    csv_file = next(root.glob("enterprise=*/learner_summary.csv"))
    csv_file.unlink()
    (root / ".state" / "staging").mkdir(parents=True, exist_ok=True)
    (root / ".state" / "staging" / "left.ndjson").write_bytes(b"ours")
    code, lines, _ = run_verify(capsys, outs.learners)
    assert (code, lines) == (1, [f"{csv_file}: missing (named in the manifest)"])


def test_bad_usage_is_exit_2_with_one_line(
        outs: Outputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    running = tmp_path / "running"  # a first harvest still running has no manifest yet
    (running / "catalog=x").mkdir(parents=True)
    (running / "catalog=x" / "courses.ndjson.part").write_bytes(b"")
    for target, says in ((tmp_path / "nope", "does not exist"),
                         (outs.harvest / "catalogs.ndjson", "is not a directory"),
                         (running, "holds no manifest.json"),
                         ("gopher://host/x", "cannot open gopher://host/x"),
                         (f"file://{tmp_path}/nope", "does not exist"),
                         ("", "an empty path")):
        code, lines, err = run_verify(capsys, target)
        assert (code, lines) == (2, []), target
        assert err.count("\n") == 1 and says in err, err


def test_the_demo_points_at_verify_and_its_output_verifies(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--catalogs", "1", "--items", "12"]) == 0
    assert f"harvester verify {out}" in capsys.readouterr().out
    assert run_verify(capsys, out)[:2] == (0, [])


def test_a_published_store_resolves_latest_json(
        outs: Outputs, capsys: pytest.CaptureFixture[str]) -> None:
    # --publish's layout on object storage: no links (latest.json names the snapshot), no
    # index.sqlite, and its own record of what it uploaded in each prefix.
    night2 = latest(outs.store)
    (outs.store / "latest").unlink()
    for snap in (outs.store / "snapshots").iterdir():
        for f in snap.glob("index.sqlite*"):
            f.unlink()
        (snap / ".harvester-publish.json").write_bytes(b'{"files": {}}')
    pointer = outs.store / "latest.json"
    pointer.write_bytes(orjson.dumps({"snapshot": night2.name,
                                      "path": f"snapshots/{night2.name}/"}))
    code, lines, err = run_verify(capsys, f"file://{outs.store}")
    assert (code, lines) == (0, []) and "2 manifest(s)" in err
    pointer.write_bytes(orjson.dumps({"snapshot": "20990101T000000Z"}))
    assert run_verify(capsys, f"file://{outs.store}")[:2] == (1, [
        f"file://{pointer}: dangling: it points to snapshots/20990101T000000Z, which does "
        "not exist"])
    pointer.write_bytes(b"[]")
    assert run_verify(capsys, f"file://{outs.store}")[:2] == (1, [
        f"file://{pointer}: not a JSON object",
        f"file://{pointer}: does not name a snapshot in snapshots/"])


def test_a_run_of_many_tenants_is_verified_tenant_by_tenant(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    loop = LoopThread()
    srv = SimServer(SimConfig(tenants=2, catalogs=2, items=20, rate_lms="0",
                              rate_learners="0"), port=0)
    loop.run(srv.start())
    try:
        toml, env = srv.tenant_config()
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        cfg = tmp_path / "tenants.toml"
        cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n[output]\n"
                       f"progress = \"off\"\nquiet = true\n{toml}")
        out, store = tmp_path / "out", tmp_path / "store"
        common = ["--config", str(cfg), "--api-base", srv.base_url, "--rate-lms", "2000/s"]
        assert cli.main(["harvest", "--out", str(out), *common]) == 0
        assert cli.main(["sync", "--store", str(store), *common]) == 0
    finally:
        loop.run(srv.close())
        loop.close()
    capsys.readouterr()
    assert run_verify(capsys, out)[:2] == (0, [])
    assert run_verify(capsys, store)[:2] == (0, [])
    victim = catalog_file(out / "tenant=sim-1")
    data = bytearray(victim.read_bytes())
    data[10] ^= 0x20
    victim.write_bytes(bytes(data))
    (out / "notes.txt").write_bytes(b"?")
    code, lines, _ = run_verify(capsys, out)
    assert code == 1 and len(lines) == 2
    assert lines[0].startswith(f"{victim}: sha256 ")
    assert lines[1] == f"{out / 'notes.txt'}: not named in the manifest"
    link = store / "tenant=sim-0" / "latest"
    link.unlink()
    link.symlink_to("snapshots/20990101T000000Z")
    assert run_verify(capsys, store)[:2] == (1, [
        f"{link}: dangling: it points to snapshots/20990101T000000Z, which does not exist"])
    shutil.rmtree(out / "tenant=sim-0")  # the summary says it ran: it must be there
    assert f"{out / 'tenant=sim-0'}: missing (named in the run summary)" in \
        run_verify(capsys, out)[1]


def test_a_manifest_naming_paths_outside_its_output_is_not_followed(
        outs: Outputs, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = outs.harvest / "manifest.json"
    m = orjson.loads(manifest.read_bytes())
    m["files"]["../../etc/passwd"] = {"lines": 1, "bytes": 1, "sha256": "0"}
    next(iter(m["catalogs"].values()))["dir"] = ".."
    manifest.write_bytes(orjson.dumps(m))
    code, lines, _ = run_verify(capsys, outs.harvest)
    assert code == 1
    assert f"{manifest}: names a file outside it: '../../etc/passwd'" in lines
    assert any(line.startswith(f"{manifest}: catalog ") and "has no usable dir" in line
               for line in lines)
    assert not any("passwd:" in line for line in lines)  # never opened


def test_names_planted_on_disk_reach_the_terminal_inert(
        outs: Outputs, capsys: pytest.CaptureFixture[str]) -> None:
    (outs.harvest / "evil\x1b]0;pwned\x07.ndjson").write_bytes(b"{}\n")
    (outs.store / "snapshots" / "x\x1b[2J").mkdir()  # an unfinished "snapshot": a note
    code, lines, err = run_verify(capsys, outs.harvest)
    assert code == 1 and len(lines) == 1 and "\x1b" not in lines[0] and "\x07" not in lines[0]
    assert lines[0].endswith("evil]0;pwned.ndjson: not named in the manifest")
    code, lines, err = run_verify(capsys, outs.store)
    assert (code, lines) == (0, []) and "note: " in err and "\x1b" not in err


def test_a_store_published_to_s3_is_verified_through_s3fs(
        outs: Outputs, monkeypatch: pytest.MonkeyPatch) -> None:
    # Both nights published by --publish's own code to a real S3 server (moto, loopback);
    # verify runs as a downstream job would, in its own process, on the s3:// URL.
    moto = Moto()
    try:
        fs = moto.fs()
        bucket = f"edx-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        env = s3_env(moto.endpoint)
        for k in ("AWS_ENDPOINT_URL", *CREDENTIALS):
            monkeypatch.setenv(k, env[k])
        url = f"s3://{bucket}/store"
        target = check_target(PublishConfig(url=url))
        assert target is not None
        for snap in sorted((outs.store / "snapshots").iterdir()):
            publish_snapshot(target, outs.store, snap,
                             orjson.loads((snap / "manifest.json").read_bytes()))

        def check() -> tuple[int, list[str]]:
            done = subprocess.run([sys.executable, "-m", "harvester", "verify", url],
                                  env=env, capture_output=True, text=True, timeout=120,
                                  check=False)
            return done.returncode, done.stdout.splitlines()

        assert check() == (0, [])
        night2 = latest(outs.store)
        rel = catalog_file(night2).relative_to(outs.store).as_posix()
        data = bytearray(fs.cat_file(f"{bucket}/store/{rel}"))
        data[len(data) // 3] ^= 0x01
        fs.pipe_file(f"{bucket}/store/{rel}", bytes(data))
        code, lines = check()
        assert code == 1 and len(lines) == 1
        assert lines[0].startswith(f"{url}/{rel}: sha256 ")
        fs.pipe_file(f"{bucket}/store/latest.json", b'{"snapshot": "20990101T000000Z"}')
        assert check()[1][0] == (f"{url}/latest.json: dangling: it points to "
                                 "snapshots/20990101T000000Z, which does not exist")
    finally:
        moto.stop()
