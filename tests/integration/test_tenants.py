"""Many tenants in one process, end to end against ``harvester sim --tenants N`` over
loopback: distinct credentials, catalogs and budgets; isolation of a tenant's refused
secret, 403s, outage and 429 storm; the layout, the run summary, reruns, --tenant,
shards over tenants, sync and learners per tenant."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from harvester import cli
from harvester.sim import SimConfig, SimServer
from harvester.tenants import in_shard
from tests.integration.helpers import LoopThread

TENANTS = 3


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def start(loop: LoopThread, **knobs: Any) -> SimServer:
    cfg = SimConfig(**{"tenants": TENANTS, "catalogs": 2, "items": 30, "rate_lms": "0",
                       "rate_learners": "0", "learners": 20, **knobs})
    srv = SimServer(cfg, port=0)
    loop.run(srv.start())
    return srv


@pytest.fixture
def sim(loop: LoopThread) -> Iterator[SimServer]:
    srv = start(loop)
    yield srv
    loop.run(srv.close())


def config(tmp_path: Path, srv: SimServer, monkeypatch: pytest.MonkeyPatch,
           extra: str = "", tables: str | None = None) -> Path:
    toml, env = srv.tenant_config()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "tenants.toml"
    path.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\nmax_tries = 2\n"
                    f"[output]\nprogress = \"off\"\n{extra}\n"
                    + (toml if tables is None else tables))
    return path


def harvest(cfg: Path, out: Path, srv: SimServer, *extra: str) -> int:
    return cli.main(["harvest", "--config", str(cfg), "--out", str(out), "--api-base",
                     srv.base_url, "--rate-lms", "2000/s", *extra])


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    return data


def api_requests(srv: SimServer) -> int:
    return sum(n for k, v in srv.state.stats.requests.items() if k != "other"
               for n in v.values())


def test_every_tenant_harvests_its_own_catalogs_into_its_own_directory(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    assert harvest(config(tmp_path, sim, monkeypatch), out, sim) == 0
    summary = load(out / "manifest.json")
    assert summary["status"] == "complete" and summary["exit_code"] == 0
    assert set(summary["tenants"]) == {f"sim-{t}" for t in range(TENANTS)}
    for t in sim.tenants:
        tdir = out / f"tenant=sim-{t.index}"
        m = load(tdir / "manifest.json")
        assert m["status"] == "complete"
        own = {sim.state.data.catalog_uuids[c] for c in t.catalogs}
        assert set(m["catalogs"]) == own  # its credential's catalogs, no other tenant's
        assert summary["tenants"][f"sim-{t.index}"]["run_id"] == m["run_id"]
        assert (tdir / ".state").is_dir() and (tdir / "errors.ndjson").exists()
    shared = sim.state.data.catalog_uuids[1]  # tenant 0's last is tenant 1's first
    assert shared in load(out / "tenant=sim-0" / "manifest.json")["catalogs"]
    assert shared in load(out / "tenant=sim-1" / "manifest.json")["catalogs"]
    # each credential got its own tokens: one per tenant
    assert set(sim.state.stats.by_client) == {t.client_id for t in sim.tenants}
    before = api_requests(sim)
    assert harvest(config(tmp_path, sim, monkeypatch), out, sim) == 0
    assert api_requests(sim) == before  # complete tenants make no requests
    assert cli.main(["verify", str(out)]) == 0  # the summary and every tenant check out


def test_a_refused_secret_fails_that_tenant_only_and_a_rerun_retries_it(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg, out = config(tmp_path, sim, monkeypatch), tmp_path / "out"
    good = os.environ["SIM_1_CLIENT_SECRET"]
    monkeypatch.setenv("SIM_1_CLIENT_SECRET", "wrong-secret-value")
    assert harvest(cfg, out, sim) == 3
    summary = load(out / "manifest.json")
    assert summary["tenants"]["sim-1"]["status"] == "failed"
    assert summary["tenants"]["sim-1"]["exit_code"] == 3
    assert "refused" in summary["tenants"]["sim-1"]["message"]
    for name in ("sim-0", "sim-2"):
        assert summary["tenants"][name]["status"] == "complete"
        assert load(out / f"tenant={name}" / "manifest.json")["status"] == "complete"
    assert "wrong-secret-value" not in (out / "manifest.json").read_text()
    assert "tenant sim-1: failed (exit 3)" in capsys.readouterr().out
    monkeypatch.setenv("SIM_1_CLIENT_SECRET", good)
    sim.state.stats.reset()
    assert harvest(cfg, out, sim) == 0
    assert set(sim.state.stats.by_client) == {sim.tenants[1].client_id}  # only the failed one
    assert load(out / "manifest.json")["status"] == "complete"


def test_a_forbidden_tenant_is_partial_and_the_others_complete(
        loop: LoopThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = start(loop, forbid_tenants=("2",))
    try:
        out = tmp_path / "out"
        assert harvest(config(tmp_path, srv, monkeypatch), out, srv) == 3
        summary = load(out / "manifest.json")
        assert {n: r["status"] for n, r in summary["tenants"].items()} == {
            "sim-0": "complete", "sim-1": "complete", "sim-2": "partial"}
        errors = (out / "tenant=sim-2" / "errors.ndjson").read_text().splitlines()
        assert errors and all(orjson.loads(e)["kind"] == "catalog_failed" for e in errors)
        assert (out / "tenant=sim-0" / "errors.ndjson").read_text() == ""
    finally:
        loop.run(srv.close())


def test_one_tenants_outage_and_429_storm_leave_the_others_untouched(
        loop: LoopThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tenant 1's backend fails every request; tenant 2's server budget is a hundredth of
    what it is configured for (429 after 429). Tenant 0 sees neither: no 429, no fault,
    no retry, complete; tenant 2 still ends with everything (its gate learns the budget)."""
    srv = start(loop, fault_tenants=("1",), fault_rate=1.0, fault_kinds=("503",),
                tenant_rate_lms=("2:20/s",))
    try:
        out = tmp_path / "out"
        code = harvest(config(tmp_path, srv, monkeypatch), out, srv)
        assert code == 1  # tenant 1: its catalog list fails (exit 1, as alone): the worst
        summary = load(out / "manifest.json")
        assert {n: r["exit_code"] for n, r in summary["tenants"].items()} == {
            "sim-0": 0, "sim-1": 1, "sim-2": 0}
        m0 = load(out / "tenant=sim-0" / "manifest.json")
        assert m0["totals"]["throttled_429"] == 0 and not m0["totals"]["retries"]
        m2 = load(out / "tenant=sim-2" / "manifest.json")
        assert m2["status"] == "complete" and m2["totals"]["throttled_429"] > 0
        by = srv.state.stats.by_client
        assert by[srv.tenants[2].client_id]["lms:429"] > 0
        assert not any(k.endswith((":503", ":429")) for k in by[srv.tenants[0].client_id])
    finally:
        loop.run(srv.close())


def test_tenant_budgets_are_per_credential(
        loop: LoopThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tenant's rate_lms is its own gate: the simulator allows tenant 1 only 5
    LMS requests in any minute, tenant 1's config says so, and it gets no 429 while
    the others run at their unthrottled budget."""
    srv = start(loop, items=2, catalogs=1, tenant_rate_lms=("1:10/min",))
    try:
        toml, _ = srv.tenant_config()
        tables = toml.replace('name = "sim-1"', 'name = "sim-1"\nrate_lms = "10/min"')
        out = tmp_path / "out"
        assert harvest(config(tmp_path, srv, monkeypatch, tables=tables), out, srv,
                       "--no-details") == 0
        assert load(out / "tenant=sim-1" / "manifest.json")["config"]["limits"]["lms"] \
            == "10/min"
        assert load(out / "tenant=sim-0" / "manifest.json")["config"]["limits"]["lms"] \
            == "2000/s"
        assert srv.state.stats.throttled_429 == 0
    finally:
        loop.run(srv.close())


def test_shards_split_the_tenants_and_auto_reads_the_job_index(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(tmp_path, sim, monkeypatch)
    names = {f"sim-{t}" for t in range(TENANTS)}
    seen: set[str] = set()
    for i in range(2):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(i))
        out = tmp_path / f"shard{i}"
        assert harvest(cfg, out, sim, "--shard", "auto/2") == 0
        got = set(load(out / "manifest.json")["tenants"])
        assert got == {n for n in names if in_shard(n, f"{i}/2")}
        assert load(out / "manifest.json")["shard"] == f"{i}/2"
        assert not seen & got
        seen |= got
    assert seen == names


@pytest.mark.parametrize(("tables", "env", "says"), [
    ('[[tenants]]\nname = "a"\nclient_id_env = "A_ID"\nclient_secret_env = "A_S"\n'
     '[[tenants]]\nname = "a"\nclient_id_env = "A_ID"\nclient_secret_env = "A_S"\n',
     {"A_ID": "x", "A_S": "y"}, "tenant 'a': the name is used twice"),
    ('[[tenants]]\nname = "Acme"\nclient_id_env = "A_ID"\nclient_secret_env = "A_S"\n',
     {}, "tenants[0]: name must be"),
    ('[[tenants]]\nname = "a"\nclient_id_env = "A_ID"\nclient_secret_env = "A_S"\n',
     {"A_ID": "x"}, "tenant 'a': client_secret_env: environment variable A_S is not set"),
    ('[[tenants]]\nname = "a"\nclient_id_env = "A_ID"\nclient_secret = "hunter2"\n',
     {"A_ID": "x"}, "tenant 'a': a literal client_secret is not allowed"),
    ('[[tenants]]\nname = "a"\nclient_id_env = "A_ID"\nclient_secret_file = "/nonexistent/s"\n',
     {"A_ID": "x"}, "tenant 'a': client_secret_file: the secret file it names does not exist"),
    ('[[tenants]]\nname = "a"\nclient_id_env = "A_ID"\nclient_secret_env = "A_S"\n'
     'client_secret_file = "/x"\n', {"A_ID": "x"}, "set exactly one of client_secret_env"),
    ('[tenants]\nname = "a"\n', {}, "must be [[tenants]] tables"),
])
def test_bad_tenant_config_is_one_line_exit_2_before_any_request(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tables: str, env: dict[str, str],
        says: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = tmp_path / "bad.toml"
    cfg.write_text(tables)
    capsys.readouterr()
    assert harvest(cfg, tmp_path / "out", sim) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert "hunter2" not in err
    assert api_requests(sim) == 0 and not (tmp_path / "out").exists()


def test_unreadable_secret_file_unknown_tenant_and_missing_job_index_exit_2(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret"
    secret.write_text(sim.tenants[0].client_secret + "\n")
    tables = (f'[[tenants]]\nname = "a"\nclient_id_file = "{secret}"\n'
              f'client_secret_file = "{secret}"\n')
    cfg = config(tmp_path, sim, monkeypatch, tables=tables)
    capsys.readouterr()
    assert harvest(cfg, tmp_path / "out", sim, "--tenant", "b") == 2
    assert "--tenant 'b': no such tenant" in capsys.readouterr().err
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    assert harvest(cfg, tmp_path / "out", sim, "--shard", "auto/3") == 2
    assert "JOB_COMPLETION_INDEX" in capsys.readouterr().err
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "x1")
    assert harvest(cfg, tmp_path / "out", sim, "--shard", "auto/3") == 2
    assert "must be a whole number" in capsys.readouterr().err
    if os.geteuid() != 0:  # root reads any file
        secret.chmod(0)
        assert harvest(cfg, tmp_path / "out", sim) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "tenant 'a': client_id_file: cannot read the " \
            "secret file it names" in err
        secret.chmod(stat.S_IRUSR)
    capsys.readouterr()
    assert harvest(cfg, tmp_path / "out", sim, "--publish", "ftp://host/x") == 2
    assert "unknown URL scheme ftp://" in capsys.readouterr().err
    assert api_requests(sim) == 0


def test_secret_files_work_and_a_single_tenant_out_is_refused(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "id").write_text(sim.tenants[2].client_id + "\n")
    (tmp_path / "secret").write_text(sim.tenants[2].client_secret)
    tables = (f'[[tenants]]\nname = "acme"\nclient_id_file = "{tmp_path / "id"}"\n'
              f'client_secret_file = "{tmp_path / "secret"}"\n')
    cfg = config(tmp_path, sim, monkeypatch, tables=tables)
    out = tmp_path / "out"
    assert harvest(cfg, out, sim) == 0
    assert load(out / "tenant=acme" / "manifest.json")["status"] == "complete"
    single = tmp_path / "single"
    (single / ".state").mkdir(parents=True)
    capsys.readouterr()
    assert harvest(cfg, single, sim) == 2
    assert "holds a single-tenant harvest" in capsys.readouterr().err


def test_sync_and_learners_run_per_tenant(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml, _ = sim.tenant_config()
    tables = "".join(
        chunk.replace(f'name = "sim-{t.index}"',
                      f'name = "sim-{t.index}"\nenterprises = ["{t.enterprise_uuid}"]')
        for t, chunk in zip(sim.tenants, toml.split("[[tenants]]")[1:], strict=True)
        for chunk in ["[[tenants]]" + chunk])
    cfg = config(tmp_path, sim, monkeypatch, extra='[learners]\npii = "drop"\n',
                 tables=tables)
    store = tmp_path / "store"
    assert cli.main(["sync", "--config", str(cfg), "--store", str(store), "--api-base",
                     sim.base_url, "--rate-lms", "2000/s", "--as-of", "2026-01-01"]) == 0
    summary = load(store / "manifest.json")
    assert summary["kind"] == "sync" and summary["status"] == "complete"
    for t in sim.tenants:
        row = summary["tenants"][f"sim-{t.index}"]
        assert row["promoted"] is True
        assert (store / f"tenant=sim-{t.index}" / "latest").exists()
    out = tmp_path / "out"
    assert cli.main(["learners", "--config", str(cfg), "--out", str(out), "--api-base",
                     sim.base_url, "--rate-learners", "2000/s"]) == 0
    assert load(out / "learners-manifest.json")["status"] == "complete"
    for t in sim.tenants:
        files = list((out / f"tenant=sim-{t.index}" / "learners").glob(
            "enterprise=*/learner_summary.ndjson"))
        assert len(files) == 1 and t.enterprise_uuid in str(files[0])
        first = orjson.loads(files[0].read_bytes().splitlines()[0])
        assert first["enterprise_customer_uuid"] == t.enterprise_uuid
    assert cli.main(["verify", str(store)]) == 0
    assert cli.main(["verify", str(out)]) == 0


def test_python_api_and_logs_name_the_tenant(
        sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import harvester

    _, env = sim.tenant_config()
    cfg = config(tmp_path, sim, monkeypatch)
    settings = harvester.Settings.load(cfg, environ={"EDX_API_BASE": sim.base_url}, overrides={
        "rates.lms": "2000/s", "output.out": str(tmp_path / "api")})
    result = harvester.harvest(settings, tenants=["sim-2"], environ=env)
    assert (result.status, result.exit_code) == ("complete", 0)
    assert result.manifest is not None and list(result.manifest["tenants"]) == ["sim-2"]
    assert result.out == tmp_path / "api"
    capsys.readouterr()
    assert harvest(cfg, tmp_path / "cli", sim, "--log-format", "json", "--tenant",
                   "sim-0") == 0
    events = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    done = [e for e in events if e["event"] == "harvest.catalog_done"]
    assert done and all(e["tenant"] == "sim-0" for e in done)
    assert any(e["event"] == "tenant.done" and e["tenant"] == "sim-0" for e in events)


def _learner_tables(sim: SimServer) -> str:
    toml, _ = sim.tenant_config()
    return "".join(
        chunk.replace(f'name = "sim-{t.index}"',
                      f'name = "sim-{t.index}"\nenterprises = ["{t.enterprise_uuid}"]')
        for t, chunk in zip(sim.tenants, toml.split("[[tenants]]")[1:], strict=True)
        for chunk in ["[[tenants]]" + chunk])


@pytest.mark.parametrize("pii", ["keep", "drop"])
def test_learners_of_many_tenants_say_pii_keep_once_naming_them(
        pii: str, sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, sim, monkeypatch, tables=_learner_tables(sim))
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli.main(["learners", "--config", str(cfg), "--out", str(out), "--api-base",
                     sim.base_url, "--rate-learners", "2000/s", "--pii", pii,
                     "--tenant", "sim-0", "--tenant", "sim-2"]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "personal data" in line]
    if pii == "drop":
        assert said == []
        return
    assert len(said) == 1, err
    assert "sim-0" in said[0] and "sim-2" in said[0] and "sim-1" not in said[0]
    assert said[0].startswith("harvester: note:") and str(out) in said[0]
