"""Tenants' run summary, secret files and config errors under hostile input: a FIFO
where a secret or the config belongs, a secret pasted where a name belongs, a refused
credential's hint, a restricted rerun's summary, a publish next to planted files."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from harvester import cli
from harvester.sim import SimServer
from tests.integration.helpers import LoopThread
from tests.integration.test_tenants import api_requests, config, harvest, load, start

PASTED = "c24cee8d9f0a4b1e8c7d6e5f4a3b2c1d"


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def sim(loop: LoopThread) -> Iterator[SimServer]:
    srv = start(loop)
    yield srv
    loop.run(srv.close())


def test_a_fifo_secret_file_is_refused_at_once_naming_the_tenant(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    tables = (f'[[tenants]]\nname = "a"\nclient_id_env = "A_ID"\n'
              f'client_secret_file = "{fifo}"\n')
    monkeypatch.setenv("A_ID", "x")
    cfg = config(tmp_path, sim, monkeypatch, tables=tables)
    capsys.readouterr()
    assert harvest(cfg, tmp_path / "out", sim) == 2  # on old main: blocks in os.open
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tenant 'a': client_secret_file" in err, err
    assert "not a regular file" in err and api_requests(sim) == 0


def test_a_linked_secret_file_is_followed_as_kubernetes_mounts_them(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "..data"
    data.mkdir()
    _, env = sim.tenant_config()
    (data / "secret").write_text(env["SIM_0_CLIENT_SECRET"])
    (tmp_path / "secret").symlink_to("..data/secret")
    tables = (f'[[tenants]]\nname = "a"\nclient_id_env = "SIM_0_CLIENT_ID"\n'
              f'client_secret_file = "{tmp_path / "secret"}"\n')
    cfg = config(tmp_path, sim, monkeypatch, tables=tables)
    assert harvest(cfg, tmp_path / "out", sim) == 0


def test_a_fifo_config_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "cfg.toml"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "harvester", "plan", "--config", str(fifo)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "not a regular file" in proc.stderr


@pytest.mark.parametrize(("line", "says"), [
    (f'client_secret_env = "{PASTED}"', "client_secret_env: the variable it names is not set"),
    (f'client_secret_env = "9{PASTED}-x"', "client_secret_env must be an environment"),
    (f'client_secret_file = "{PASTED}"', "client_secret_file: the secret file it names"),
    ('client_secret_env = "A_S"\nrate_lms = "fast"', "tenants[a].rate_lms: "),
])
def test_a_secret_where_a_name_belongs_is_never_echoed(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], line: str, says: str) -> None:
    monkeypatch.setenv("A_ID", "x")
    monkeypatch.setenv("A_S", "y")
    cfg = config(tmp_path, sim, monkeypatch,
                 tables=f'[[tenants]]\nname = "a"\nclient_id_env = "A_ID"\n{line}\n')
    capsys.readouterr()
    assert harvest(cfg, tmp_path / "out", sim) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert PASTED not in err and api_requests(sim) == 0


def test_a_refused_tenant_credential_names_its_own_settings(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg, out = config(tmp_path, sim, monkeypatch), tmp_path / "out"
    monkeypatch.setenv("SIM_1_CLIENT_SECRET", "wrong-secret-value")
    assert harvest(cfg, out, sim, "--tenant", "sim-1") == 3
    hint = "check SIM_1_CLIENT_ID / SIM_1_CLIENT_SECRET"
    assert hint in load(out / "manifest.json")["tenants"]["sim-1"]["message"]
    assert hint in capsys.readouterr().err
    assert "EDX_CLIENT" not in (out / "manifest.json").read_text()


def test_verify_into_a_closed_pipe_exits_quietly(sim: SimServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    assert harvest(config(tmp_path, sim, monkeypatch), out, sim) == 0
    for item in out.glob("tenant=*/catalog=*/courses.ndjson"):
        item.write_bytes(item.read_bytes()[:-10])  # one problem line each on stdout
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line, as `| head -1` ends up
    try:
        proc = subprocess.run([sys.executable, "-m", "harvester", "verify", str(out)],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
                              check=False)
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_publish_sends_only_the_files_the_manifests_name(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files a user put in OUT that only look like ours (a change feed in a harvest, a
    ``.gz`` item file in a plain run, a catalog directory the run never wrote) stay
    local: the published prefix is exactly what the manifests describe, and verifies."""
    cfg, out = config(tmp_path, sim, monkeypatch), tmp_path / "out"
    assert harvest(cfg, out, sim) == 0
    base = out / "tenant=sim-0"
    real = next(base.glob("catalog=*"))
    planted = [real / "changes.ndjson", real / "courses.ndjson.gz",
               base / "catalog=00000000-0000-4000-8000-000000000000" / "courses.ndjson"]
    for path in planted:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b'{"planted": true}\n')
    remote = tmp_path / "remote"
    remote.mkdir()
    assert harvest(cfg, out, sim, "--publish", f"file://{remote}") == 0
    for path in planted:
        assert not (remote / path.relative_to(out)).exists(), path
    published = {p.relative_to(remote / "tenant=sim-0").as_posix()
                 for p in (remote / "tenant=sim-0").rglob("*") if p.is_file()}
    manifest = load(base / "manifest.json")
    named = {"manifest.json", *manifest["files"]} | {
        f"{c['dir']}/{f}" for c in manifest["catalogs"].values() for f in c["files"]}
    assert published - {".harvester-publish.json"} == named
    assert cli.main(["verify", f"file://{remote}"]) == 0


def test_a_restricted_rerun_keeps_every_tenants_status_in_the_summary(
        loop: LoopThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sim-1 is forbidden (partial); a rerun of sim-0 alone exits 0 for what it ran, but
    the summary still lists sim-1 as partial and is not complete; verify agrees."""
    srv = start(loop, forbid_tenants=("1",))
    try:
        cfg, out = config(tmp_path, srv, monkeypatch), tmp_path / "out"
        assert harvest(cfg, out, srv) == 3
        assert harvest(cfg, out, srv, "--tenant", "sim-0") == 0  # what it ran: complete
        summary = load(out / "manifest.json")
        assert {n: r["status"] for n, r in summary["tenants"].items()} == {
            "sim-0": "complete", "sim-1": "partial", "sim-2": "complete"}
        assert summary["status"] == "partial" and summary["exit_code"] == 3
        assert summary["tenants"]["sim-1"]["carried"] is True
        remote = tmp_path / "remote"
        remote.mkdir()
        assert harvest(cfg, out, srv, "--tenant", "sim-0", "--publish",
                       f"file://{remote}") == 0
        assert load(remote / "manifest.json")["status"] == "partial"
        assert cli.main(["verify", str(out)]) == 0
        forged = {**summary, "status": "complete", "exit_code": 0}
        forged["tenants"]["sim-1"] = {**summary["tenants"]["sim-1"], "status": "complete",
                                      "exit_code": 0}
        (out / "manifest.json").write_bytes(orjson.dumps(forged))
        assert cli.main(["verify", str(out)]) != 0  # the summary lies about sim-1
    finally:
        loop.run(srv.close())


def test_a_restricted_sync_and_learners_summary_keep_every_tenant(
        loop: LoopThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = start(loop, forbid_tenants=("1",))
    try:
        cfg, store = config(tmp_path, srv, monkeypatch), tmp_path / "store"
        base = ["--config", str(cfg), "--api-base", srv.base_url, "--rate-lms", "2000/s"]
        assert cli.main(["sync", *base, "--store", str(store)]) == 3
        assert cli.main(["sync", *base, "--store", str(store), "--tenant", "sim-0"]) == 0
        summary = load(store / "manifest.json")
        assert set(summary["tenants"]) == {"sim-0", "sim-1", "sim-2"}
        assert summary["tenants"]["sim-1"]["status"] == "partial"
        assert summary["status"] == "partial"
        toml, _ = srv.tenant_config()
        tables = "".join(
            "[[tenants]]" + chunk.replace(f'name = "sim-{t.index}"',
                                          f'name = "sim-{t.index}"\nenterprises = '
                                          f'["{t.enterprise_uuid}"]')
            for t, chunk in zip(srv.tenants, toml.split("[[tenants]]")[1:], strict=True))
        cfg = config(tmp_path, srv, monkeypatch, tables=tables)
        base[1] = str(cfg)
        out = tmp_path / "out"
        assert cli.main(["learners", *base, "--out", str(out), "--pii", "drop"]) == 0
        assert cli.main(["learners", *base, "--out", str(out), "--pii", "drop",
                         "--tenant", "sim-2"]) == 0
        learners = load(out / "learners-manifest.json")
        assert set(learners["tenants"]) == {"sim-0", "sim-1", "sim-2"}
        assert learners["tenants"]["sim-0"]["carried"] is True
    finally:
        loop.run(srv.close())
