"""``--metrics-file``: harvest and sync against the simulator, via the CLI.

The textfile is parsed with prometheus_client's own parser and compared with the run's
manifest (one source of truth) and with the simulator's own counters (``/__stats``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import stat
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harvester import cli
from harvester.cli import jobs
from harvester.metrics import STATUSES, MetricsFile
from harvester.models import CONTENT_TYPES
from harvester.sim import SimConfig, SimServer
from tests.integration.helpers import LoopThread

STEM_TYPE = {stem: ctype for ctype, (stem, _) in CONTENT_TYPES.items()} | {"other": "other"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def sim_on(loop: LoopThread, **cfg: Any) -> SimServer:
    srv = SimServer(SimConfig(**{"catalogs": 2, "items": 60, "rate_lms": "0",
                                 "rate_learners": "0", **cfg}), port=0)
    loop.run(srv.start())
    return srv


def run(monkeypatch: pytest.MonkeyPatch, srv: SimServer, command: str, *args: str,
        rate: str = "2000/s") -> int:
    monkeypatch.setenv("EDX_CLIENT_ID", srv.client_id)
    monkeypatch.setenv("EDX_CLIENT_SECRET", srv.client_secret)
    return cli.main([command, *args, "--api-base", srv.base_url, "--rate-lms", rate,
                     "--progress", "off", "--quiet"])


def samples(path: Path) -> Samples:
    """Every sample of the textfile, parsed by prometheus_client's own parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def pick(got: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in got.items() if n == name and want <= lab}


def one(got: Samples, name: str, **labels: str) -> float:
    found = pick(got, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return next(iter(found.values()))


def status_of(got: Samples, command: str) -> str:
    on = [s for s in STATUSES
          if one(got, "edx_harvester_run_status", command=command, status=s) == 1]
    assert len(on) == 1, on
    return on[0]


def by_label(got: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(dict(lab)[k] for k in keys): v for lab, v in pick(got, name).items()}


def manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((out / "manifest.json").read_bytes())
    return data


def assert_matches_manifest(got: Samples, m: dict[str, Any], command: str) -> None:
    """Every number the textfile shares with the manifest is the manifest's."""
    t = m["totals"]
    assert by_label(got, "edx_harvester_requests_total", "class", "status") == {
        (k, code): n for k, codes in t["requests"].items() for code, n in codes.items()}
    assert one(got, "edx_harvester_throttled_responses_total") == t["throttled_429"]
    assert by_label(got, "edx_harvester_retries_total", "cause") == {
        (c,): n for c, n in t["retries_by_cause"].items()}
    assert one(got, "edx_harvester_response_bytes_total") == t["bytes_in"]
    assert by_label(got, "edx_harvester_items", "catalog", "type") == {
        (u, STEM_TYPE[name.split(".")[0]]): f["lines"] for u, c in m["catalogs"].items()
        for name, f in c["files"].items() if name.split(".")[0] in STEM_TYPE}
    files = [f for c in m["catalogs"].values() for f in c["files"].values()]
    files += list(m["files"].values())
    files += [c["sync"]["feed"] for c in m["catalogs"].values() if "sync" in c]
    assert one(got, "edx_harvester_written_bytes_total", tenant="default") == \
        sum(f["bytes"] for f in files)
    assert status_of(got, command) == m["status"]


def test_harvest_metrics_equal_the_manifest_and_the_servers_counts(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path) -> None:
    """Configured 2x too fast, so there are 429s and retries to count."""
    srv = sim_on(loop, catalogs=2, items=60, rate_lms="30/s")
    out, prom = tmp_path / "out", tmp_path / "textfile" / "edx_harvester.prom"
    prom.parent.mkdir()
    try:
        assert run(monkeypatch, srv, "harvest", "--out", str(out), "--metrics-file",
                   str(prom), rate="60/s") == 0
        server = srv.state.stats.snapshot()
    finally:
        loop.run(srv.close())
    got, m = samples(prom), manifest(out)
    assert_matches_manifest(got, m, "harvest")
    items = by_label(got, "edx_harvester_items", "catalog", "type")
    assert sum(items.values()) == m["totals"]["items"] == 120
    assert {t for _, t in items} <= {"course", "courserun", "program", "learnerpathway"}
    # The server saw exactly what the file says was asked and answered.
    assert one(got, "edx_harvester_throttled_responses_total") == server["throttled_429"] > 0
    requests = by_label(got, "edx_harvester_requests_total", "class", "status")
    for klass in ("token", "lms", "content"):
        assert {code: n for (k, code), n in requests.items() if k == klass} == \
            {code: float(n) for code, n in server["requests"][klass].items()}
    on_disk = sum(p.stat().st_size for p in out.rglob("*.ndjson") if ".state" not in p.parts)
    assert one(got, "edx_harvester_written_bytes_total") == on_disk
    end = one(got, "edx_harvester_run_end_timestamp_seconds", command="harvest")
    assert one(got, "edx_harvester_run_start_timestamp_seconds", command="harvest") <= end
    assert one(got, "edx_harvester_last_success_timestamp_seconds", command="harvest") == end
    assert sorted(p.name for p in prom.parent.iterdir()) == ["edx_harvester.prom"]


def test_sync_metrics_count_the_detail_requests_it_saved(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path) -> None:
    srv = sim_on(loop, catalogs=2, items=80, seed=4, mutation_rate=0.05)
    store, prom = tmp_path / "store", tmp_path / "sync.prom"
    try:
        assert run(monkeypatch, srv, "sync", "--store", str(store), "--as-of", "2026-11-20",
                   "--metrics-file", str(prom)) == 0
        first = samples(prom)
        srv.state.epoch = 1
        srv.state.stats.reset()
        assert run(monkeypatch, srv, "sync", "--store", str(store), "--as-of", "2026-11-21",
                   "--metrics-file", str(prom)) == 0
        server = srv.state.stats.snapshot()
        got, m = samples(prom), manifest((store / "latest").resolve())
        # Without the textfile, a failed night still knows the last success: the store's.
        prom.unlink()
        monkeypatch.setenv("EDX_CLIENT_SECRET", "wrong-secret")
        assert cli.main(["sync", "--store", str(store), "--api-base", srv.base_url,
                         "--progress", "off", "--quiet", "--metrics-file", str(prom)]) == 2
    finally:
        loop.run(srv.close())
    failed = samples(prom)
    assert status_of(failed, "sync") == "failed"
    assert one(failed, "edx_harvester_last_success_timestamp_seconds") == \
        datetime.fromisoformat(m["ended_at"].replace("Z", "+00:00")).timestamp()
    assert_matches_manifest(got, m, "sync")
    snap = (store / "latest").resolve()
    assert one(got, "edx_harvester_written_bytes_total") == sum(
        p.stat().st_size for p in snap.rglob("*.ndjson") if ".state" not in p.parts)
    carried = sum(c["sync"].get("carried", 0) for c in m["catalogs"].values())
    assert one(got, "edx_harvester_sync_detail_requests_saved_total") == carried > 0
    assert one(first, "edx_harvester_sync_detail_requests_saved_total") == 0
    detail_200 = sum(n for (k, code), n in by_label(
        got, "edx_harvester_requests_total", "class", "status").items()
        if k == "lms" and code == "200") - 1  # the catalog list is the other lms request
    assert detail_200 == server["detail_requests"]
    assert one(got, "edx_harvester_deferred_items") == 0
    assert one(got, "edx_harvester_last_success_timestamp_seconds", command="sync") > \
        one(first, "edx_harvester_last_success_timestamp_seconds", command="sync")


def test_a_failed_run_keeps_the_last_success_and_says_partial_or_failed(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        loop: LoopThread, tmp_path: Path) -> None:
    srv = sim_on(loop, catalogs=2, items=20, forbid_catalogs=("1",))
    prom = tmp_path / "edx.prom"
    try:
        assert run(monkeypatch, srv, "harvest", "--out", str(tmp_path / "a"),
                   "--catalog", srv.catalog_uuids[0], "--metrics-file", str(prom)) == 0
        success = one(samples(prom), "edx_harvester_last_success_timestamp_seconds")
        # A partial run: catalog 1 answers 403.
        assert run(monkeypatch, srv, "harvest", "--out", str(tmp_path / "b"),
                   "--metrics-file", str(prom)) == 3
        got = samples(prom)
        assert status_of(got, "harvest") == "partial"
        assert one(got, "edx_harvester_run_errors") == manifest(tmp_path / "b")["totals"][
            "errors"] == 1
        assert one(got, "edx_harvester_last_success_timestamp_seconds") == success
        assert one(got, "edx_harvester_run_end_timestamp_seconds") > success
        # A failed run: the credentials are refused before anything is written.
        monkeypatch.setenv("EDX_CLIENT_SECRET", "wrong-secret")
        capsys.readouterr()
        assert cli.main(["harvest", "--out", str(tmp_path / "c"), "--api-base",
                         srv.base_url, "--progress", "off", "--metrics-file", str(prom)]) == 2
        assert len(capsys.readouterr().err.splitlines()) == 1
    finally:
        loop.run(srv.close())
    got = samples(prom)
    assert status_of(got, "harvest") == "failed"
    assert one(got, "edx_harvester_last_success_timestamp_seconds") == success
    assert pick(got, "edx_harvester_requests_total", status="401")


def test_the_file_is_written_periodically_during_the_run(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path) -> None:
    """The ticker's sleep is injected: it returns once the server has answered a few
    detail requests, so the write it lets through lands mid-run, then it never returns."""
    srv = sim_on(loop, catalogs=2, items=60)
    prom = tmp_path / "edx.prom"
    seen: list[Samples] = []
    intervals: list[float] = []

    async def ticker_sleep(seconds: float) -> None:
        intervals.append(seconds)
        if prom.exists():
            seen.append(samples(prom))
        if len(intervals) > 1:
            await asyncio.Event().wait()  # cancelled when the run ends
        while srv.state.stats.detail_requests < 20:
            await asyncio.sleep(0)

    monkeypatch.setattr(jobs, "MetricsFile", functools.partial(
        MetricsFile, every=7.0, sleep=ticker_sleep))
    try:
        assert run(monkeypatch, srv, "harvest", "--out", str(tmp_path / "out"),
                   "--metrics-file", str(prom)) == 0
    finally:
        loop.run(srv.close())
    assert intervals == [7.0, 7.0]
    [mid] = seen
    assert status_of(mid, "harvest") == "running"
    assert not pick(mid, "edx_harvester_run_end_timestamp_seconds")
    lms = by_label(mid, "edx_harvester_requests_total", "class", "status")[("lms", "200")]
    final = samples(prom)
    # 20 details asked, at most --concurrency (8) of them still in flight
    assert 12 <= lms < by_label(final, "edx_harvester_requests_total", "class",
                                "status")[("lms", "200")]
    assert status_of(final, "harvest") == "complete"


@pytest.mark.parametrize("where", ["dir", "missing-parent", "empty"])
def test_a_bad_metrics_file_is_exit_2_before_any_request(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        loop: LoopThread, tmp_path: Path, where: str) -> None:
    srv = sim_on(loop)
    path = {"dir": str(tmp_path), "missing-parent": str(tmp_path / "no" / "m.prom"),
            "empty": ""}[where]
    try:
        for command, args in (("harvest", ["--out", str(tmp_path / "out")]),
                              ("sync", ["--store", str(tmp_path / "store")])):
            capsys.readouterr()
            assert run(monkeypatch, srv, command, *args, "--metrics-file", path) == 2
            err = capsys.readouterr().err
            assert len(err.splitlines()) == 1 and "metrics-file" in err, err
        assert srv.state.stats.snapshot()["requests"] == {}
    finally:
        loop.run(srv.close())
    assert not (tmp_path / "out").exists() and not (tmp_path / "store").exists()


@pytest.mark.parametrize("where", ["fifo", "socket", "trailing-slash"])
def test_a_metrics_path_that_is_not_a_regular_file_is_refused_untouched(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        loop: LoopThread, tmp_path: Path, where: str) -> None:
    """A FIFO/socket stands in for a device: the temp must never be renamed over it, and
    opening it must never block (the test holds the FIFO open read-write, so a main that
    opens it does not hang but replaces it, and fails the regular-file check below)."""
    import socket
    srv = sim_on(loop, catalogs=1, items=5)
    target, holders = tmp_path / "m.prom", []
    if where == "fifo":
        os.mkfifo(target)
        holders.append(os.open(target, os.O_RDWR | os.O_NONBLOCK))
    elif where == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(target))
        holders.append(sock.detach())
    arg = str(target) + ("/" if where == "trailing-slash" else "")
    try:
        for command, args in (("harvest", ["--out", str(tmp_path / "out")]),
                              ("sync", ["--store", str(tmp_path / "store")])):
            capsys.readouterr()
            assert run(monkeypatch, srv, command, *args, "--metrics-file", arg) == 2
            assert "metrics-file" in capsys.readouterr().err
        assert srv.state.stats.snapshot()["requests"] == {}
    finally:
        loop.run(srv.close())
        for fd in holders:
            os.close(fd)
    if where == "trailing-slash":
        assert os.listdir(tmp_path) == []
    else:
        assert not stat.S_ISREG(os.lstat(target).st_mode)
        assert os.listdir(tmp_path) == ["m.prom"]


@pytest.mark.parametrize("name", ["manifest.json", "x.prom", "sub/x.prom"])
def test_a_metrics_file_inside_out_or_the_store_is_refused(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        loop: LoopThread, tmp_path: Path, name: str) -> None:
    srv = sim_on(loop, catalogs=1, items=5)
    out, store = tmp_path / "out", tmp_path / "store"
    (out / "sub").mkdir(parents=True)
    (store / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(out)  # resolved: a way in through a link is inside too
    try:
        for command, args, prom in (
                ("harvest", ["--out", str(out)], out / name),
                ("harvest", ["--out", str(out)], tmp_path / "link" / name),
                ("sync", ["--store", str(store)], store / name)):
            capsys.readouterr()
            assert run(monkeypatch, srv, command, *args, "--metrics-file", str(prom)) == 2
            err = capsys.readouterr().err
            assert len(err.splitlines()) == 1 and "inside" in err, err
        assert srv.state.stats.snapshot()["requests"] == {}
    finally:
        loop.run(srv.close())
    assert sorted(p.name for p in out.rglob("*")) == ["sub"]
    assert sorted(p.name for p in store.rglob("*")) == ["sub"]


def test_a_link_at_the_path_or_the_temp_path_is_replaced_not_followed(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path) -> None:
    srv = sim_on(loop, catalogs=1, items=10)
    victim, prom = tmp_path / "victim.txt", tmp_path / "edx.prom"
    victim.write_text("precious\n")
    prom.symlink_to(victim)
    (tmp_path / ".edx.prom.tmp").symlink_to(victim)
    try:
        assert run(monkeypatch, srv, "harvest", "--out", str(tmp_path / "out"),
                   "--metrics-file", str(prom)) == 0
    finally:
        loop.run(srv.close())
    assert victim.read_text() == "precious\n"
    assert not prom.is_symlink() and status_of(samples(prom), "harvest") == "complete"
    assert sorted(os.listdir(tmp_path)) == ["edx.prom", "out", "victim.txt"]


def test_a_link_to_a_directory_at_the_path_is_replaced_as_a_link(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path) -> None:
    srv = sim_on(loop, catalogs=1, items=5)
    (tmp_path / "d").mkdir()
    prom = tmp_path / "edx.prom"
    prom.symlink_to(tmp_path / "d")
    try:
        assert run(monkeypatch, srv, "harvest", "--out", str(tmp_path / "out"),
                   "--metrics-file", str(prom)) == 0
    finally:
        loop.run(srv.close())
    assert os.listdir(tmp_path / "d") == [] and not prom.is_symlink()
    assert status_of(samples(prom), "harvest") == "complete"


def test_a_signal_mid_run_writes_interrupted_with_the_counts_so_far(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path) -> None:
    """SIGINT arrives from the ticker's first sleep: deterministic, mid-run."""
    srv = sim_on(loop, catalogs=2, items=60)
    prom = tmp_path / "edx.prom"

    async def ticker_sleep(seconds: float) -> None:
        while srv.state.stats.detail_requests < 5:
            await asyncio.sleep(0)
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.Event().wait()

    monkeypatch.setattr(jobs, "MetricsFile", functools.partial(MetricsFile, sleep=ticker_sleep))
    try:
        assert run(monkeypatch, srv, "harvest", "--out", str(tmp_path / "out"),
                   "--metrics-file", str(prom)) == 130
    finally:
        loop.run(srv.close())
    got = samples(prom)
    assert status_of(got, "harvest") == "interrupted"
    assert pick(got, "edx_harvester_run_end_timestamp_seconds")
    assert not pick(got, "edx_harvester_last_success_timestamp_seconds")
    assert by_label(got, "edx_harvester_requests_total", "class", "status")[("lms", "200")] > 0
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_learners_and_export_write_their_own_metrics(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path) -> None:
    srv = sim_on(loop, learners=30, rate_learners="0")
    prom = tmp_path / "edx.prom"
    out = tmp_path / "out"
    try:
        monkeypatch.setenv("EDX_CLIENT_ID", srv.client_id)
        monkeypatch.setenv("EDX_CLIENT_SECRET", srv.client_secret)
        assert cli.main(["learners", "--out", str(out), "--api-base", srv.base_url,
                         "--enterprise", srv.enterprise_uuid, "--progress", "off",
                         "--quiet", "--metrics-file", str(prom)]) == 0
        learners = samples(prom)
        assert run(monkeypatch, srv, "harvest", "--out", str(out), "--metrics-file",
                   str(prom)) == 0
    finally:
        loop.run(srv.close())
    m: dict[str, Any] = orjson.loads((out / "learners" / "manifest.json").read_bytes())
    assert status_of(learners, "learners") == "complete"
    assert by_label(learners, "edx_harvester_items", "catalog", "type") == {
        (srv.enterprise_uuid, "learner_summary"): m["totals"]["rows_written"]}
    assert by_label(learners, "edx_harvester_requests_total", "class", "status") == {
        (k, code): n for k, codes in m["totals"]["requests"].items()
        for code, n in codes.items()}
    target = tmp_path / "bulk.ndjson"
    assert cli.main(["export", str(out), "--format", "es-bulk", "--out", str(target),
                     "--metrics-file", str(prom)]) == 0
    got = samples(prom)
    assert status_of(got, "export") == "complete"
    assert one(got, "edx_harvester_written_bytes_total") == target.stat().st_size > 0
    # One file, several commands: each keeps its own last success.
    assert {dict(lab)["command"] for lab in pick(
        got, "edx_harvester_last_success_timestamp_seconds")} == {"learners", "harvest",
                                                                  "export"}


def test_a_metrics_file_that_cannot_be_written_is_a_warning_not_the_exit_code(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        loop: LoopThread, tmp_path: Path) -> None:
    srv = sim_on(loop, catalogs=1, items=10)
    textdir = tmp_path / "textfile"
    textdir.mkdir()

    async def ticker_sleep(seconds: float) -> None:
        if not textdir.is_file():  # the directory is replaced by a file mid-run
            textdir.rmdir()
            textdir.write_text("not a directory\n")
            return
        await asyncio.Event().wait()

    monkeypatch.setattr(jobs, "MetricsFile", functools.partial(MetricsFile, sleep=ticker_sleep))
    try:
        monkeypatch.setenv("EDX_CLIENT_ID", srv.client_id)
        monkeypatch.setenv("EDX_CLIENT_SECRET", srv.client_secret)
        code = cli.main(["harvest", "--out", str(tmp_path / "out"), "--api-base",
                         srv.base_url, "--progress", "off", "--metrics-file",
                         str(textdir / "edx.prom")])
    finally:
        loop.run(srv.close())
    err = capsys.readouterr().err
    assert code == 0 and manifest(tmp_path / "out")["status"] == "complete"
    assert err.count("metrics.write_failed") == 1, err
    assert [line for line in err.splitlines() if line.startswith("harvester:")] == [
        line for line in err.splitlines() if "--metrics-file not written" in line] != []


def test_verify_writes_clean_as_complete_and_problems_as_failed(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        loop: LoopThread, tmp_path: Path) -> None:
    srv = sim_on(loop, catalogs=1, items=10)
    out, prom = tmp_path / "out", tmp_path / "verify.prom"
    try:
        assert run(monkeypatch, srv, "harvest", "--out", str(out)) == 0
    finally:
        loop.run(srv.close())
    assert cli.main(["verify", str(out), "--quiet", "--metrics-file", str(prom)]) == 0
    clean = samples(prom)
    assert status_of(clean, "verify") == "complete"
    assert one(clean, "edx_harvester_run_errors") == 0
    (out / "catalogs.ndjson").write_bytes(b"")  # truncated
    (out / "stray.ndjson.part").write_bytes(b"x")
    capsys.readouterr()
    assert cli.main(["verify", str(out), "--quiet", "--metrics-file", str(prom)]) == 1
    problems = capsys.readouterr().out.splitlines()
    got = samples(prom)
    assert status_of(got, "verify") == "failed"
    assert one(got, "edx_harvester_run_errors") == len(problems) >= 2
    assert one(got, "edx_harvester_last_success_timestamp_seconds") == \
        one(clean, "edx_harvester_run_end_timestamp_seconds")


def test_a_deadline_night_reports_its_deferred_items(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path) -> None:
    """A 3 s budget for ~70 detail requests at 10/s: the rest is deferred, not failed."""
    srv = sim_on(loop, catalogs=2, items=90, seed=11, mutation_rate=0.25)
    store, prom = tmp_path / "store", tmp_path / "sync.prom"
    try:
        assert run(monkeypatch, srv, "sync", "--store", str(store), "--as-of",
                   "2026-11-20") == 0
        srv.state.epoch = 1
        assert run(monkeypatch, srv, "sync", "--store", str(store), "--as-of", "2026-11-21",
                   "--time-budget", "3s", "--metrics-file", str(prom), rate="10/s") == 0
    finally:
        loop.run(srv.close())
    got, m = samples(prom), manifest((store / "latest").resolve())
    assert_matches_manifest(got, m, "sync")
    assert one(got, "edx_harvester_deferred_items", tenant="default") == \
        m["deferred"]["items"] > 0
    assert one(got, "edx_harvester_run_errors") == 0


def test_many_tenants_each_get_their_own_labels_matching_their_manifests(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path) -> None:
    srv = sim_on(loop, tenants=3, catalogs=2, items=30)
    toml, env = srv.tenant_config()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = tmp_path / "tenants.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\n" + toml)
    out, prom = tmp_path / "out", tmp_path / "edx.prom"
    try:
        assert cli.main(["harvest", "--config", str(cfg), "--out", str(out), "--api-base",
                         srv.base_url, "--rate-lms", "2000/s", "--progress", "off",
                         "--quiet", "--metrics-file", str(prom)]) == 0
        by_client = srv.state.stats.snapshot()["by_client"]
    finally:
        loop.run(srv.close())
    got = samples(prom)
    assert status_of(got, "harvest") == "complete"
    names = {f"sim-{t.index}": t.client_id for t in srv.tenants}
    assert {dict(lab)["tenant"] for lab in pick(got, "edx_harvester_requests_total")} == \
        set(names)
    for name, client_id in names.items():
        m = manifest(out / f"tenant={name}")
        items = {(dict(lab)["catalog"], dict(lab)["type"]): v for lab, v in pick(
            got, "edx_harvester_items", tenant=name).items()}
        assert sum(items.values()) == m["totals"]["items"] > 0
        assert {u for u, _ in items} == set(m["catalogs"])
        requests = {(dict(lab)["class"], dict(lab)["status"]): v for lab, v in pick(
            got, "edx_harvester_requests_total", tenant=name).items()}
        assert requests == {(k, code): n for k, codes in m["totals"]["requests"].items()
                            for code, n in codes.items()}
        # What the server counted for this credential (authenticated API calls).
        assert {f"{k}:{code}": n for (k, code), n in requests.items() if k != "token"} == \
            by_client[client_id]


def test_metrics_file_as_a_config_setting_with_the_flags_validation(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        loop: LoopThread, tmp_path: Path) -> None:
    srv = sim_on(loop)
    prom, flag = tmp_path / "cfg.prom", tmp_path / "flag.prom"
    cfg, bad = tmp_path / "h.toml", tmp_path / "bad.toml"
    cfg.write_text(f'[output]\nmetrics_file = "{prom}"\n')
    bad.write_text(f'[output]\nmetrics_file = "{tmp_path}"\n')
    try:
        capsys.readouterr()
        assert run(monkeypatch, srv, "harvest", "--out", str(tmp_path / "bad-out"),
                   "--config", str(bad)) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "output.metrics_file" in err, err
        assert srv.state.stats.snapshot()["requests"] == {}
        out = tmp_path / "out"
        assert run(monkeypatch, srv, "harvest", "--out", str(out), "--config", str(cfg)) == 0
        assert_matches_manifest(samples(prom), manifest(out), "harvest")
        prom.unlink()
        assert run(monkeypatch, srv, "harvest", "--out", str(out), "--config", str(cfg),
                   "--metrics-file", str(flag)) == 0
    finally:
        loop.run(srv.close())
    assert not (tmp_path / "bad-out").exists()
    assert not prom.exists() and status_of(samples(flag), "harvest") == "complete"


def test_a_tenants_sync_falls_back_to_its_tenant_stores_last_success(
        monkeypatch: pytest.MonkeyPatch, loop: LoopThread, tmp_path: Path) -> None:
    srv = sim_on(loop, tenants=3, catalogs=2, items=20)
    toml, env = srv.tenant_config()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    store, prom = tmp_path / "store", tmp_path / "sync.prom"
    cfg = tmp_path / "tenants.toml"
    cfg.write_text("[retry]\nbackoff_base = 0\nbackoff_cap = 0\nmax_tries = 2\n"
                   f'[output]\nmetrics_file = "{prom}"\n' + toml)

    def sync(day: str) -> int:
        return cli.main(["sync", "--config", str(cfg), "--store", str(store), "--api-base",
                         srv.base_url, "--rate-lms", "2000/s", "--progress", "off",
                         "--quiet", "--as-of", day])
    try:
        assert sync("2026-11-20") == 0
        assert sync("2026-11-21") == 0
        ends = [datetime.fromisoformat(manifest((store / f"tenant=sim-{t.index}" / "latest")
                                                .resolve())["ended_at"].replace("Z", "+00:00"))
                .timestamp() for t in srv.tenants]
        # Without the textfile, a night where one tenant's secret is refused still knows
        # when all tenants last synced: the oldest of their stores' latest manifests.
        prom.unlink()
        monkeypatch.setenv(sorted(k for k in env if "SECRET" in k)[0], "wrong-secret")
        assert sync("2026-11-22") == 3
    finally:
        loop.run(srv.close())
    got = samples(prom)
    assert status_of(got, "sync") == "partial"
    assert one(got, "edx_harvester_last_success_timestamp_seconds", command="sync") == \
        min(ends)
