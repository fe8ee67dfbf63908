"""``--publish``: harvests, sync nights and learner exports uploaded to object storage.

The harvester runs as a real process against the simulator, and publishes through s3fs
to moto's S3 server on loopback (through :class:`~tests.features.s3kit.S3Proxy`, which
counts PUTs and can hold uploads so a kill lands mid-publish at a known point), or to a
``file://`` directory. Nothing in boto or fsspec is patched.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import harvester
from harvester import cli
from harvester.publish import INDEX_NAME
from harvester.sim import SimConfig, SimServer
from tests.features.s3kit import CREDENTIALS, Moto, S3Proxy, objects, s3_env
from tests.integration.helpers import LoopThread


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def sim(loop: LoopThread) -> Iterator[SimServer]:
    srv = SimServer(SimConfig(catalogs=3, items=12, rate_lms="0", rate_learners="0",
                              detail_404_rate=0), port=0)
    loop.run(srv.start())
    yield srv
    loop.run(srv.close())


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    server = Moto()
    yield server
    server.stop()


@pytest.fixture
def proxy(moto: Moto, loop: LoopThread) -> Iterator[S3Proxy]:
    p = S3Proxy(moto.endpoint, loop).start()
    yield p
    p.close()


@pytest.fixture
def bucket(moto: Moto) -> str:
    name = f"edx-{uuid.uuid4().hex[:12]}"
    moto.fs().mkdir(name)
    return name


def requests_made(srv: SimServer) -> int:
    snap = srv.state.stats.snapshot()
    return sum(sum(by.values()) for by in snap["requests"].values()) + int(
        snap["tokens_issued"])


def command(sim: SimServer, tmp: Path, verb: str, *args: str) -> list[str]:
    cfg = tmp / "h.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n")
    return [sys.executable, "-m", "harvester", verb, "--api-base", sim.base_url,
            "--config", str(cfg), "--rate-lms", "1000/s", "--progress", "off", "--quiet",
            *args]


def env_for(sim: SimServer, endpoint: str) -> dict[str, str]:
    return {**s3_env(endpoint), "EDX_CLIENT_ID": sim.client_id,
            "EDX_CLIENT_SECRET": sim.client_secret}


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def published_locally(root: Path, skip: Callable[[str], bool] = lambda _: False
                      ) -> dict[str, bytes]:
    """What a publish of ``root`` must upload: no state, temp, partial or index files."""
    out: dict[str, bytes] = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(p.startswith(".") for p in rel.split("/")) \
                and not rel.startswith("index.sqlite") and not skip(rel):
            out[rel] = path.read_bytes()
    return out


def wait_until(cond: Callable[[], bool], proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 60
    while not cond():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"never {what} (exit {proc.returncode}): {err[-800:]}")
        time.sleep(0.01)


def index_of(moto: Moto, prefix: str) -> dict[str, Any]:
    fs = moto.fs()
    path = f"{prefix}/{INDEX_NAME}"
    return dict(orjson.loads(fs.cat_file(path))["files"]) if fs.exists(path) else {}


# --- harvest ----------------------------------------------------------------------------


def test_harvest_is_published_then_an_unchanged_rerun_uploads_nothing(
        sim: SimServer, proxy: S3Proxy, moto: Moto, bucket: str, tmp_path: Path) -> None:
    out, url = tmp_path / "out", f"s3://{bucket}/edx/nightly"
    cmd = command(sim, tmp_path, "harvest", "--out", str(out), "--publish", url)
    env = env_for(sim, proxy.url)
    first = run(cmd, env)
    assert first.returncode == 0, first.stderr

    local = published_locally(out)
    remote = objects(moto.fs(), f"{bucket}/edx/nightly")
    index = orjson.loads(remote.pop(INDEX_NAME))["files"]
    assert remote == local, "the bucket must hold exactly the output's files, byte for byte"
    assert {"manifest.json", "catalogs.ndjson", "errors.ndjson"} <= set(remote)
    assert not any(".state" in k or k.endswith(".part") for k in remote)
    assert index == {k: [len(v), hashlib.sha256(v).hexdigest()] for k, v in local.items()}
    assert proxy.puts()[-1].endswith("/manifest.json"), "the manifest is uploaded last"

    # Unchanged: nothing is uploaded again (the run itself is already complete).
    before = len(proxy.puts())
    again = run(cmd, env)
    assert again.returncode == 0, again.stderr
    assert proxy.puts()[before:] == []

    # An object lost or altered in the bucket is uploaded again, and only it.
    fs = moto.fs()
    cat_dir = next(k for k in local if k.startswith("catalog=")).split("/")[0]
    fs.rm_file(f"{bucket}/edx/nightly/catalogs.ndjson")
    fs.pipe_file(f"{bucket}/edx/nightly/{cat_dir}/courses.ndjson", b"tampered\n")
    before = len(proxy.puts())
    healed = run(cmd, env)
    assert healed.returncode == 0, healed.stderr
    assert sorted(p.split("/", 2)[2] for p in proxy.puts()[before:]) == sorted(
        [f"edx/nightly/{cat_dir}/courses.ndjson", "edx/nightly/catalogs.ndjson"])
    assert objects(moto.fs(), f"{bucket}/edx/nightly").keys() - {INDEX_NAME} == local.keys()
    checked = run([sys.executable, "-m", "harvester", "verify", url], s3_env(moto.endpoint))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_killed_publish_resumes_where_it_stopped(
        sim: SimServer, proxy: S3Proxy, moto: Moto, bucket: str, tmp_path: Path) -> None:
    out, url = tmp_path / "out", f"s3://{bucket}/edx"
    cmd = command(sim, tmp_path, "harvest", "--out", str(out), "--publish", url)
    env = env_for(sim, proxy.url)
    proxy.hold_after = 3
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_until(lambda: proxy.held >= 1 and len(index_of(moto, f"{bucket}/edx")) >= 3, proc,
               "held a data upload with 3 recorded")
    assert not moto.fs().exists(f"{bucket}/edx/manifest.json"), "manifest before the data"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    proxy.hold_after = None
    proxy.release()  # the dead client's held uploads never land

    done = set(index_of(moto, f"{bucket}/edx"))
    assert len(done) == 3
    before = len(proxy.puts())
    rerun = run(cmd, env)
    assert rerun.returncode == 0, rerun.stderr
    local = published_locally(out)
    uploaded = {p.split("/", 3)[3] for p in proxy.puts()[before:]}
    assert uploaded == set(local) - done, "the rerun must upload exactly what was missing"
    remote = objects(moto.fs(), f"{bucket}/edx")
    remote.pop(INDEX_NAME)
    assert remote == local


def test_sigterm_mid_publish_is_143_and_a_rerun_finishes_it(
        sim: SimServer, proxy: S3Proxy, moto: Moto, bucket: str, tmp_path: Path) -> None:
    out, url = tmp_path / "out", f"s3://{bucket}/edx"
    cmd = command(sim, tmp_path, "harvest", "--out", str(out), "--publish", url)
    env = env_for(sim, proxy.url)
    proxy.hold_after = 2
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_until(lambda: proxy.held >= 1, proc, "held a data upload")
    proc.send_signal(signal.SIGTERM)
    proxy.hold_after = None
    proxy.release("forward")  # the uploads in flight finish; no new one starts
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == ("harvester: interrupted; the local output is "
                                            "intact; rerun the same command to resume the "
                                            "publish"), err
    assert not moto.fs().exists(f"{bucket}/edx/manifest.json"), "a stopped publish "\
        "must not write the manifest"
    again = run(cmd, env)
    assert again.returncode == 0, again.stderr
    remote = objects(moto.fs(), f"{bucket}/edx")
    remote.pop(INDEX_NAME)
    assert remote == published_locally(out)


def test_failed_publish_is_exit_3_with_the_local_output_intact(
        sim: SimServer, proxy: S3Proxy, moto: Moto, bucket: str, tmp_path: Path) -> None:
    out, url = tmp_path / "out", f"s3://{bucket}/edx"
    prom = tmp_path / "edx.prom"
    cmd = command(sim, tmp_path, "harvest", "--out", str(out), "--publish", url,
                  "--metrics-file", str(prom))
    env = env_for(sim, proxy.url)
    proxy.hold_after = 0
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_until(lambda: proxy.held >= 1, proc, "started uploading")
    moto.fs().rmdir(bucket)  # the bucket goes away between the check and the upload
    proxy.hold_after = None
    proxy.release("forward")
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 3, err
    assert len(lines) == 1 and url in lines[0] and "local output is intact" in lines[0], err
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["status"] == "complete"
    # Not a success for alerting either: the data never reached its readers.
    metrics = prom.read_text()
    assert 'edx_harvester_run_status{command="harvest",status="partial"} 1.0' in metrics
    assert 'edx_harvester_last_success_timestamp_seconds{command="harvest"}' not in metrics
    local = published_locally(out)

    moto.fs().mkdir(bucket)
    again = run(cmd, env)
    assert again.returncode == 0, again.stderr
    remote = objects(moto.fs(), f"{bucket}/edx")
    remote.pop(INDEX_NAME)
    assert remote == local


def test_store_going_down_mid_publish_is_exit_3(sim: SimServer, loop: LoopThread,
                                                 tmp_path: Path) -> None:
    server = Moto()
    name = "edx-down"
    server.fs().mkdir(name)
    proxy = S3Proxy(server.endpoint, loop).start()
    try:
        out = tmp_path / "out"
        cmd = command(sim, tmp_path, "harvest", "--out", str(out), "--publish",
                      f"s3://{name}/x")
        proxy.hold_after = 0
        proc = subprocess.Popen(cmd, env=env_for(sim, proxy.url), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        wait_until(lambda: proxy.held >= 1, proc, "started uploading")
        server.stop()
        proxy.hold_after = None
        proxy.release("drop")
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 3, err
        assert len(err.strip().splitlines()) == 1 and f"s3://{name}/x" in err, err
        assert orjson.loads((out / "manifest.json").read_bytes())["status"] == "complete"
    finally:
        proxy.close()


# --- sync ---------------------------------------------------------------------------------


def latest(moto: Moto, prefix: str) -> dict[str, Any]:
    return dict(orjson.loads(moto.fs().cat_file(f"{prefix}/latest.json")))


def test_sync_latest_json_moves_last_and_readers_never_see_a_mix(
        sim: SimServer, proxy: S3Proxy, moto: Moto, bucket: str, tmp_path: Path) -> None:
    store, url = tmp_path / "store", f"s3://{bucket}/store"
    env = env_for(sim, proxy.url)

    def night(day: str) -> list[str]:
        return command(sim, tmp_path, "sync", "--store", str(store), "--publish", url,
                       "--as-of", day)

    first = run(night("2026-01-01"), env)
    assert first.returncode == 0, first.stderr
    one = latest(moto, f"{bucket}/store")
    snap1 = store / "snapshots" / one["snapshot"]
    assert one["manifest"] == f"snapshots/{snap1.name}/manifest.json"
    assert (store / "latest").resolve() == snap1.resolve()

    def reader_sees_night_one() -> None:
        pointer = latest(moto, f"{bucket}/store")
        assert pointer == one
        remote = objects(moto.fs(), f"{bucket}/store/{pointer['path']}")
        remote.pop(INDEX_NAME)
        assert remote == published_locally(snap1)

    reader_sees_night_one()
    proxy.hold_after = proxy.admitted + 2
    proc = subprocess.Popen(night("2026-01-02"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_until(lambda: proxy.held >= 1, proc, "held a snapshot upload")
    reader_sees_night_one()  # half of night two is up: latest.json still names night one
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    proxy.hold_after = None
    proxy.release()
    reader_sees_night_one()

    third = run(night("2026-01-03"), env)
    assert third.returncode == 0, third.stderr
    three = latest(moto, f"{bucket}/store")
    assert three["snapshot"] != one["snapshot"] and three["status"] == "complete"
    snap3 = store / "snapshots" / three["snapshot"]
    remote = objects(moto.fs(), f"{bucket}/store/{three['path']}")
    remote.pop(INDEX_NAME)
    assert remote == published_locally(snap3)
    assert not any(k.startswith("index.sqlite") for k in remote), "the sync index stays local"
    assert proxy.puts()[-1].endswith("/latest.json"), "latest.json is written last of all"
    # `harvester verify` reads the published store as a downstream job would.
    checked = run([sys.executable, "-m", "harvester", "verify", url], s3_env(moto.endpoint))
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- file://, learners, config ------------------------------------------------------------


def test_file_url_mirrors_the_output_and_skips_by_index(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDX_CLIENT_ID", sim.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", sim.client_secret)
    out, dest = tmp_path / "out", tmp_path / "bucket" / "edx"
    (tmp_path / "bucket").mkdir()
    argv = command(sim, tmp_path, "harvest", "--out", str(out), "--publish",
                   f"file://{dest}")[3:]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert published_locally(dest, lambda rel: rel == INDEX_NAME) == published_locally(out)
    stamps = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    assert cli.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()
            if p.name != INDEX_NAME} == {p: t for p, t in stamps.items()
                                         if p.name != INDEX_NAME}, "unchanged files rewritten"
    assert not [p for p in dest.rglob(".*") if p.name != INDEX_NAME], "temp files left"
    assert cli.main(["verify", f"file://{dest}"]) == 0, capsys.readouterr().out


def test_learners_publish_under_learners_and_harvest_never_includes_them(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDX_CLIENT_ID", sim.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", sim.client_secret)
    out, dest = tmp_path / "out", tmp_path / "pub"
    enterprise = sim.enterprise_uuid
    learners = command(sim, tmp_path, "learners", "--out", str(out), "--enterprise",
                       str(enterprise), "--publish", f"file://{dest}")[3:]
    assert cli.main(learners) == 0, capsys.readouterr().err
    assert published_locally(dest / "learners", lambda r: r == INDEX_NAME) == \
        published_locally(out / "learners")
    harvest = command(sim, tmp_path, "harvest", "--out", str(out), "--publish",
                      f"file://{dest}")[3:]
    assert cli.main(harvest) == 0, capsys.readouterr().err
    index = orjson.loads((dest / INDEX_NAME).read_bytes())["files"]
    assert index and not any(k.startswith("learners/") for k in index)
    assert (dest / "learners" / "manifest.json").exists(), "a harvest publish removed them"


def test_storage_options_from_the_config_file_reach_s3fs(
        sim: SimServer, moto: Moto, bucket: str, tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'[publish]\nurl = "s3://{bucket}/cfg"\n'
                   f'storage_options = {{ endpoint_url = "{moto.endpoint}", key = "testing", '
                   'secret = "testing" }\n[retry]\nbackoff_base = 0\nbackoff_cap = 0\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"EDX_CLIENT_ID": sim.client_id, "EDX_CLIENT_SECRET": sim.client_secret,
            "AWS_DEFAULT_REGION": "us-east-1"}
    done = run([sys.executable, "-m", "harvester", "harvest", "--api-base", sim.base_url,
                "--config", str(cfg), "--out", str(tmp_path / "out"), "--progress", "off",
                "--quiet"], env)
    assert done.returncode == 0, done.stderr
    assert moto.fs().exists(f"{bucket}/cfg/manifest.json")


# --- bad input: exit 2, one line naming the URL, before any request ----------------------


@pytest.mark.parametrize(("url", "says"), [
    ("ftp://host/x", "unknown URL scheme ftp://"),
    ("bucket/prefix", "unknown URL scheme"),
    ("gs://some-bucket/x", "pip install 'edx-harvester[gcs]'"),
    ("s3://no-such-bucket-here/x", "the bucket does not exist"),
    ("s3://user:pw@bkt/x", "credentials"),
    ("file://relative/x", "absolute path"),
])
def test_bad_publish_url_is_exit_2_before_any_request(
        sim: SimServer, moto: Moto, tmp_path: Path, url: str, says: str) -> None:
    before = requests_made(sim)
    done = run(command(sim, tmp_path, "harvest", "--out", str(tmp_path / "out"),
                       "--publish", url), env_for(sim, moto.endpoint))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and says in lines[0] and "--publish" in lines[0], done.stderr
    assert url.split("@")[-1].split("/")[0].split(":")[-1] in lines[0] or "pw" not in url
    assert "pw" not in lines[0]
    assert requests_made(sim) == before
    assert not (tmp_path / "out").exists()


def test_missing_s3fs_names_the_extra(sim: SimServer, tmp_path: Path) -> None:
    # A process where s3fs cannot be imported, as on an install without the [s3] extra.
    code = ("import sys; sys.modules['s3fs'] = None; from harvester.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    argv = command(sim, tmp_path, "sync", "--store", str(tmp_path / "s"), "--publish",
                   "s3://bkt/x")[3:]
    before = requests_made(sim)
    done = run([sys.executable, "-c", code, *argv], env_for(sim, "http://127.0.0.1:9"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("harvester: --publish s3://bkt/x: s3:// needs the s3fs "
                                   "package (pip install 'edx-harvester[s3]')")
    assert requests_made(sim) == before and not (tmp_path / "s").exists()


def test_refused_storage_credentials_are_exit_2(sim: SimServer, tmp_path: Path) -> None:
    # A second moto that checks credentials (IAM auth on from the first request).
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto_bin = Path(sys.executable).with_name("moto_server")
    server = subprocess.Popen([str(moto_bin), "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto_server never listened"
                time.sleep(0.05)
        before = requests_made(sim)
        done = run(command(sim, tmp_path, "harvest", "--out", str(tmp_path / "out"),
                           "--publish", "s3://locked/x"), env_for(sim, endpoint))
        assert done.returncode == 2, done.stderr
        line = done.stderr.strip()
        assert "\n" not in line and "s3://locked/x" in line and "access refused" in line, line
        assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in line.replace("s3://", "")
        assert requests_made(sim) == before
    finally:
        server.kill()
        server.wait()


# --- the Python API publishes like the CLI -------------------------------------------------


def test_python_api_harvest_and_sync_publish(sim: SimServer, tmp_path: Path) -> None:
    dest = tmp_path / "lake"
    dest.mkdir()
    base = {"api.base": sim.base_url, "api.client_id": sim.client_id,
            "api.client_secret": sim.client_secret, "retry.backoff_base": 0,
            "retry.backoff_cap": 0, "rates.lms": "1000/s"}
    out = tmp_path / "out"
    settings = harvester.Settings.load(environ={}, overrides={
        **base, "output.out": str(out), "publish.url": f"file://{dest}/run"})
    result = harvester.harvest(settings)
    assert result.status == "complete"
    assert published_locally(dest / "run", lambda r: r == INDEX_NAME) == published_locally(out)

    store = tmp_path / "store"
    night = harvester.sync(harvester.Settings.load(environ={}, overrides={
        **base, "publish.url": f"file://{dest}/store"}), store=store)
    assert night.promoted
    pointer = orjson.loads((dest / "store" / "latest.json").read_bytes())
    assert pointer["snapshot"] == night.snapshot.name and pointer["run_id"] == \
        night.manifest.run_id

    with pytest.raises(harvester.ConfigError, match="--publish gs://b/x: gs:// needs"):
        harvester.harvest(harvester.Settings.load(environ={}, overrides={
            **base, "output.out": str(tmp_path / "o2"), "publish.url": "gs://b/x"}))
    assert not (tmp_path / "o2").exists()
