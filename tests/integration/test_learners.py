"""``harvester learners`` end to end: the CLI against the simulator over loopback HTTP.

The simulator (and, where a test needs to bend the server's answers, a small proxy in front
of it) runs on its own event loop in a background thread, so ``cli.main`` runs exactly as
from a shell: its own ``asyncio.run``, signal handlers, logging to the captured stderr.
Ground truth comes from walking the simulator directly with plain aiohttp at
``page_size=1000``. The simulator's ``shuffle``/``churn`` knobs only move catalog content
pages, so the unstable learner order is played by the proxy instead.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import hmac
import logging
import os
import re
import signal
import stat
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from aiohttp import web
from yarl import URL

from harvester import cli
from harvester.learners import FIELD_ORDER, PII_FIELDS
from harvester.learners.walker import EnterpriseWalker
from harvester.sim import SimConfig, SimServer
from tests.integration.helpers import LoopbackProxy, LoopThread

T = TypeVar("T")
KEY = "integration-test-pii-key-0123456789"
Row = dict[str, Any]
Mutate = Callable[[int, list[Row]], list[Row]]


# --- a background loop for the simulator and the proxy ---------------------------------------

class Proxy(LoopbackProxy):
    """Forwards everything to the simulator; may rewrite learner-summary results.

    ``mutate(page, results)`` sees each 200 learner page; ``refuse(page)`` may answer a
    learner page with an error status instead; ``queries`` records what the harvester
    asked for.
    """

    decompress = False

    def __init__(self, upstream: str, mutate: Mutate | None,
                 refuse: Callable[[int], int | None] | None = None) -> None:
        super().__init__()
        self.upstream = upstream
        self.mutate = mutate
        self.refuse = refuse
        self.queries: list[dict[str, str]] = []


    async def handle(self, request: web.Request) -> web.Response:
        assert self._session is not None
        if request.path.endswith("/learner-summary") and self.refuse is not None:
            status = self.refuse(int(request.query.get("page", "1")))
            if status is not None:
                self.queries.append(dict(request.query))
                return web.json_response({"detail": "refused by the test proxy"},
                                         status=status)
        headers = {k: request.headers[k] for k in ("Authorization", "Accept", "Content-Type")
                   if k in request.headers}
        body = await request.read()
        url = URL(self.upstream + request.raw_path, encoded=True)
        async with self._session.request(request.method, url, data=body or None,
                                         headers=headers, allow_redirects=False) as up:
            raw, status = await up.read(), up.status
            out_headers = {k: up.headers[k] for k in ("Content-Type", "Retry-After")
                           if k in up.headers}
        if request.path.endswith("/learner-summary"):
            self.queries.append(dict(request.query))
            if status == 200 and self.mutate is not None:
                data = orjson.loads(raw)
                data["results"] = self.mutate(int(request.query.get("page", "1")),
                                              data["results"])
                raw = orjson.dumps(data)
        return web.Response(status=status, body=raw, headers=out_headers)


async def _walk_truth(srv: SimServer) -> list[Row]:
    """Every learner row in the server's order, fetched without any harvester code."""
    async with aiohttp.ClientSession() as s:
        form = {"grant_type": "client_credentials", "client_id": srv.client_id,
                "client_secret": srv.client_secret, "token_type": "jwt"}
        async with s.post(srv.base_url + "/oauth2/v1/access_token", data=form) as r:
            token = (await r.json())["access_token"]
        headers = {"Authorization": f"JWT {token}", "Accept": "application/json"}
        path = f"/enterprise/v3/enterprise-customer/{srv.enterprise_uuid}/learner-summary"
        rows: list[Row] = []
        page = 1
        while True:
            async with s.get(srv.base_url + path, headers=headers,
                             params={"page": str(page), "page_size": "1000"}) as r:
                assert r.status == 200
                body = orjson.loads(await r.read())
            rows.extend(body["results"])
            if len(rows) >= body["count"] or not body["results"]:
                return rows
            page += 1


@dataclass
class World:
    """Simulators and proxies started for one test; all closed at teardown."""

    lt: LoopThread
    closers: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)

    def sim(self, **cfg: Any) -> SimServer:
        config = SimConfig(**{"rate_learners": "0", "rate_lms": "0", "catalogs": 1,
                              "items": 50, **cfg})
        srv = SimServer(config, host="127.0.0.1", port=0)
        self.lt.run(srv.start())
        self.closers.append(srv.close)
        return srv

    def proxy(self, srv: SimServer, mutate: Mutate | None = None,
              refuse: Callable[[int], int | None] | None = None) -> Proxy:
        proxy = Proxy(srv.base_url, mutate, refuse)
        self.lt.run(proxy.start())
        self.closers.append(proxy.close)
        return proxy

    def truth(self, srv: SimServer) -> list[Row]:
        """The rows of ``srv``, read from a fault-free, unthrottled twin (same seed)."""
        twin = SimServer(dataclasses.replace(srv.cfg, fault_rate=0.0, rate_learners="0"),
                         host="127.0.0.1", port=0)
        self.lt.run(twin.start())
        try:
            return self.lt.run(_walk_truth(twin))
        finally:
            self.lt.run(twin.close())


@pytest.fixture
def world() -> Iterator[World]:
    lt = LoopThread()
    w = World(lt)
    try:
        yield w
    finally:
        for close in reversed(w.closers):
            lt.run(close())
        lt.close()




# --- running the CLI -------------------------------------------------------------------------

@dataclass
class Outcome:
    code: int
    out: str
    err: str
    root: Path

    @property
    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads((self.root / "manifest.json").read_bytes())
        return data

    def edir(self, enterprise: str) -> Path:
        return self.root / f"enterprise={enterprise}"

    def rows(self, enterprise: str) -> list[Row]:
        text = (self.edir(enterprise) / "learner_summary.ndjson").read_bytes()
        return [orjson.loads(line) for line in text.splitlines()]

    def summary(self, label: str) -> int:
        m = re.search(rf"^{label}\s+(\d+)$", self.out, re.M)
        assert m, f"no {label!r} line in the summary:\n{self.out}"
        return int(m.group(1))


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            tmp_path: Path) -> Callable[..., Outcome]:
    retry_cfg = tmp_path / "fast-retries.toml"
    retry_cfg.write_text("[retry]\nbackoff_base = 0.0\nbackoff_cap = 0.0\n")

    def run(srv: SimServer, *args: str, base: str | None = None, out: Path | None = None,
            key: str | None = None, config: Path | None = None) -> Outcome:
        monkeypatch.setenv("EDX_CLIENT_ID", srv.client_id)
        monkeypatch.setenv("EDX_CLIENT_SECRET", srv.client_secret)
        if key is None:
            monkeypatch.delenv("HARVESTER_PII_KEY", raising=False)
        else:
            monkeypatch.setenv("HARVESTER_PII_KEY", key)
        out = out or tmp_path / "out"
        capsys.readouterr()
        code = cli.main(["learners", "--out", str(out), "--api-base", base or srv.base_url,
                         "--rate-learners", "1000/s", "--progress", "off",
                         "--config", str(config or retry_cfg), *args])
        cap = capsys.readouterr()
        return Outcome(code, cap.out, cap.err, out / "learners")

    return run


# --- checks ----------------------------------------------------------------------------------

def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def mac(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    return hmac.new(KEY.encode(), text.encode(), hashlib.sha256).hexdigest()


def by_id(rows: list[Row]) -> dict[int, Row]:
    return {r["enterprise_enrollment_id"]: r for r in rows}


def strip_meta(rows: list[Row]) -> list[Row]:
    return [{k: v for k, v in r.items() if k != "_harvest"} for r in rows]


def assert_exactly_once(written: list[Row], truth: list[Row]) -> None:
    """Every true row once, nothing else, each identical to the server's, keys in order."""
    ids = Counter(r["enterprise_enrollment_id"] for r in written)
    assert [i for i, n in ids.items() if n > 1] == []
    assert set(ids) == {r["enterprise_enrollment_id"] for r in truth}
    want = by_id(truth)
    for r in strip_meta(written):
        assert list(r) == list(want[r["enterprise_enrollment_id"]])
        assert r == want[r["enterprise_enrollment_id"]]


def assert_no_learner_data(text: str, truth: list[Row]) -> None:
    """No email, username, SSO id or full name of any learner in ``text``."""
    assert text.strip(), "nothing was captured: the check would prove nothing"
    for r in truth:
        for name in ("user_email", "user_username", "enterprise_sso_uid"):
            value = r[name]
            assert value is None or value not in text, f"{name} leaked"
        assert f"{r['user_first_name']} {r['user_last_name']}" not in text


def assert_private_tree(root: Path) -> None:
    """OUT/learners and everything under it: directories 0700, files 0600."""
    assert mode(root) == 0o700
    for p in root.rglob("*"):
        assert mode(p) == (0o700 if p.is_dir() else 0o600), p


def expected_summary(rows: list[Row]) -> dict[str, int]:
    status = Counter(r["progress_status"] for r in rows if not r["has_passed"])
    return {"learners": len({r["enterprise_user_id"] for r in rows}),
            "enrollments": len(rows),
            "passed": sum(r["has_passed"] is True for r in rows),
            "in progress": status["In Progress"], "failed": status["Failed"]}


# --- tests -----------------------------------------------------------------------------------

def test_keep_mode_exports_every_row_once_privately(world: World, run_cli: Any) -> None:
    """Three pages of 1000, every row once as served, CSV in serializer order, 0600/0700."""
    srv = world.sim(learners=2300)
    truth = world.truth(srv)
    proxy = world.proxy(srv)
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--csv", base=proxy.base_url)

    assert res.code == 0, res.err
    assert proxy.queries and all(q["page_size"] == "1000" for q in proxy.queries)
    assert sorted(q["page"] for q in proxy.queries) == ["1", "2", "3"]
    rows = res.rows(srv.enterprise_uuid)
    assert_exactly_once(rows, truth)
    assert all(r["_harvest"]["enterprise_uuid"] == srv.enterprise_uuid
               and r["_harvest"]["pii"] == "keep" and r["_harvest"]["fetched_at"]
               for r in rows)
    assert list(rows[0])[-1] == "_harvest"

    edir = res.edir(srv.enterprise_uuid)
    assert sorted(p.name for p in edir.iterdir()) == ["learner_summary.csv",
                                                      "learner_summary.ndjson"]
    assert_private_tree(res.root)

    with (edir / "learner_summary.csv").open(encoding="utf-8", newline="") as fh:
        records = list(csv.reader(fh))
    assert records[0] == list(FIELD_ORDER)
    assert len(records) == 1 + len(truth)
    emails = {r["user_email"] for r in truth}
    assert {rec[FIELD_ORDER.index("user_email")] for rec in records[1:]} == emails

    m = res.manifest
    e = m["enterprises"][srv.enterprise_uuid]
    assert m["status"] == "complete" and m["pii"]["mode"] == "keep"
    assert (e["count_reported"], e["rows_written"], e["duplicates_dropped"], e["gaps"],
            e["pages"], e["walks"]) == (2300, 2300, 0, 0, 3, 1)
    for name, info in e["files"].items():
        data = (edir / name).read_bytes()
        assert info["bytes"] == len(data)
        assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert m["totals"]["requests_total"] >= 4 and m["totals"]["throttled_429"] == 0

    for label, n in expected_summary(truth).items():
        assert res.summary(label) == n
    notice = [line for line in res.err.splitlines() if "personal data" in line]
    assert len(notice) == 1 and notice[0] == res.err.splitlines()[0]
    assert_no_learner_data(res.err, truth)


def test_logs_and_manifest_hold_no_learner_data_through_faults(
        world: World, run_cli: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Faults, retries and a forbidden enterprise: logs name counts, never learners."""
    caplog.set_level(logging.DEBUG)  # also what libraries (backoff, aiohttp) log
    srv = world.sim(learners=2300, fault_rate=0.5,
                    fault_kinds=("500", "502", "503", "504", "reset", "truncate", "badjson"))
    foreign = str(uuid.UUID(int=7))
    cfg = tmp_path / "learners.toml"
    cfg.write_text("[retry]\nbackoff_base = 0.0\nbackoff_cap = 0.0\n\n"
                   f'[learners]\nenterprises = ["{srv.enterprise_uuid}", "{foreign}"]\n')
    res = run_cli(srv, "--log-format", "json", config=cfg)

    assert res.code == 3, res.err
    m = res.manifest
    assert m["status"] == "partial"
    own, other = m["enterprises"][srv.enterprise_uuid], m["enterprises"][foreign]
    assert own["status"] == "complete" and own["rows_written"] == 2300
    assert other["status"] == "failed" and other["errors"][0]["status"] == 403
    assert m["totals"]["retries"] > 0
    assert not res.edir(foreign).exists()
    assert '"event":"http.retry"' in res.err.replace(" ", "")
    truth = world.truth(srv)
    assert_exactly_once(res.rows(srv.enterprise_uuid), truth)
    assert_no_learner_data(res.err + res.out + caplog.text, truth)
    assert_no_learner_data((res.root / "manifest.json").read_text(), truth)


def test_hash_mode_is_the_keyed_hmac_and_stable_across_runs(
        world: World, run_cli: Any, tmp_path: Path) -> None:
    """Each PII field is HMAC-SHA256(key, original); two runs agree; the key never shows."""
    srv = world.sim(learners=300)
    # enterprise_enrollment_id is hashed too: find each row by the hash of its id
    truth = {mac(eid): row for eid, row in by_id(world.truth(srv)).items()}
    first = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--pii", "hash", "--csv",
                    key=KEY, out=tmp_path / "a")
    second = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--pii", "hash",
                     key=KEY, out=tmp_path / "b")
    assert (first.code, second.code) == (0, 0), first.err + second.err

    rows = by_id(first.rows(srv.enterprise_uuid))
    assert set(rows) == set(truth)
    checked = 0
    for eid, row in rows.items():
        orig = truth[eid]
        assert list(row) == [*orig, "_harvest"] and row["_harvest"]["pii"] == "hash"
        for name, value in orig.items():
            if name in PII_FIELDS:
                assert row[name] == (None if value is None else mac(value)), name
                checked += value is not None
            else:
                assert row[name] == value, name
    assert checked >= 300 * 7
    def untimed(res: Outcome) -> dict[str, Row]:
        return {r["enterprise_enrollment_id"]: {**r, "_harvest": {**r["_harvest"],
                                                                  "fetched_at": None}}
                for r in res.rows(srv.enterprise_uuid)}

    assert untimed(first) == untimed(second)

    assert first.manifest["pii"]["mode"] == "hash"
    assert first.manifest["pii"]["key_id"] == second.manifest["pii"]["key_id"]
    for res in (first, second):
        assert "personal data" not in res.err
        assert KEY not in res.err + res.out
        for p in res.root.rglob("*"):
            if p.is_file():
                assert KEY.encode() not in p.read_bytes(), p
        assert_no_learner_data(res.err, list(truth.values()))
        assert_private_tree(res.root)


def test_drop_mode_with_consent_filter_and_csv(world: World, run_cli: Any) -> None:
    """drop: PII fields absent from rows and CSV columns; only consented rows written."""
    srv = world.sim(learners=400)
    truth = world.truth(srv)
    consented = [r for r in truth if r["is_consent_granted"] is True]
    assert 0 < len(consented) < len(truth)
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--pii", "drop",
                  "--consented-only", "--csv")
    assert res.code == 0, res.err

    rows = res.rows(srv.enterprise_uuid)
    # No id of the person or the enrollment is left: compare rows as a multiset.
    want = [{k: v for k, v in orig.items() if k not in PII_FIELDS} for orig in consented]
    got = strip_meta(rows)
    assert sorted(orjson.dumps(r) for r in got) == sorted(orjson.dumps(r) for r in want)
    assert all("enterprise_enrollment_id" not in r for r in got)
    with (res.edir(srv.enterprise_uuid) / "learner_summary.csv").open(
            encoding="utf-8", newline="") as fh:
        records = list(csv.reader(fh))
    assert records[0] == [f for f in FIELD_ORDER if f not in PII_FIELDS]
    assert len(records) == 1 + len(consented)

    e = res.manifest["enterprises"][srv.enterprise_uuid]
    assert (e["unique_found"], e["rows_written"], e["not_consented_dropped"]) == (
        400, len(consented), 400 - len(consented))
    assert res.summary("enrollments") == len(consented)
    assert "personal data" not in res.err


@pytest.mark.parametrize("key", [None, "too-short"])
def test_hash_mode_without_a_usable_key_exits_2_before_any_request(
        world: World, run_cli: Any, key: str | None) -> None:
    """No key, no run: one line on stderr, no output, no request."""
    srv = world.sim(learners=10)
    proxy = world.proxy(srv)
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--pii", "hash", key=key,
                  base=proxy.base_url)
    assert res.code == 2
    assert res.err.count("\n") == 1 and "HARVESTER_PII_KEY" in res.err
    assert not res.root.exists()
    assert proxy.queries == []


def test_a_forbidden_enterprise_alone_exits_2(world: World, run_cli: Any) -> None:
    """403 for every enterprise: nothing exported, exit 2, a manifest saying so."""
    srv = world.sim(learners=10)
    foreign = str(uuid.UUID(int=9))
    res = run_cli(srv, "--enterprise", foreign)
    assert res.code == 2
    assert [ln for ln in res.err.splitlines() if ln.startswith("harvester: no enterprise")]
    assert res.out == ""
    assert res.manifest["status"] == "failed"
    assert res.manifest["enterprises"][foreign]["status"] == "failed"
    assert not res.edir(foreign).exists()


def test_unstable_order_is_deduped_and_the_rewalk_fills_the_gaps(
        world: World, run_cli: Any) -> None:
    """Walk 1 sees shifted pages (80 repeats, 80 missing); walk 2 finds the rest once."""
    srv = world.sim(learners=2300)
    truth = world.truth(srv)
    shifted: set[int] = set()
    shift = {1: 0, 2: 50, 3: -30}

    def mutate(page: int, results: list[Row]) -> list[Row]:
        if page in shifted:
            return results
        shifted.add(page)
        start = (page - 1) * 1000 + shift[page]
        return [truth[(start + i) % len(truth)] for i in range(len(results))]

    proxy = world.proxy(srv, mutate)
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid, base=proxy.base_url)
    assert res.code == 0, res.err
    e = res.manifest["enterprises"][srv.enterprise_uuid]
    assert (e["walks"], e["duplicates_dropped"], e["gaps"], e["rows_written"]) == (
        2, 80, 0, 2300)
    assert_exactly_once(res.rows(srv.enterprise_uuid), truth)


def test_a_row_that_never_appears_is_a_reported_gap(world: World, run_cli: Any) -> None:
    """One row hidden behind its neighbour on every walk: gap 1, exit 3. The re-walk
    finds nothing new, so there is no third walk (it would only repeat the second)."""
    srv = world.sim(learners=2300)
    truth = world.truth(srv)
    hidden = truth[1500]

    def mutate(page: int, results: list[Row]) -> list[Row]:
        return [truth[1499] if r["enterprise_enrollment_id"] ==
                hidden["enterprise_enrollment_id"] else r for r in results]

    proxy = world.proxy(srv, mutate)
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid, base=proxy.base_url)
    assert res.code == 3, res.err
    e = res.manifest["enterprises"][srv.enterprise_uuid]
    assert (e["status"], e["walks"], e["gaps"], e["duplicates_dropped"], e["rows_written"]) \
        == ("partial", 2, 1, 2, 2299)
    assert_exactly_once(res.rows(srv.enterprise_uuid), [r for r in truth if r is not hidden])
    assert res.edir(srv.enterprise_uuid).joinpath("learner_summary.ndjson").exists()


def test_429s_are_waited_out(world: World, run_cli: Any) -> None:
    """The server's learner budget (2/s) answers 429; the run waits and completes."""
    srv = world.sim(learners=2300, rate_learners="2/s")
    truth = world.truth(srv)
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid)
    assert res.code == 0, res.err
    assert res.manifest["totals"]["throttled_429"] >= 1
    assert_exactly_once(res.rows(srv.enterprise_uuid), truth)


def test_existing_dirs_are_tightened_and_stale_files_replaced(
        world: World, run_cli: Any, tmp_path: Path) -> None:
    """Pre-existing 0755 dirs become 0700; a stale 0644 .part and an old CSV are gone."""
    srv = world.sim(learners=50)
    out = tmp_path / "out"
    edir = out / "learners" / f"enterprise={srv.enterprise_uuid}"
    edir.mkdir(parents=True, mode=0o755)
    (out / "learners").chmod(0o755)
    edir.chmod(0o755)
    stale = edir / "learner_summary.ndjson.part"
    stale.write_text("stale\n")
    stale.chmod(0o644)
    (edir / "learner_summary.csv").write_text("old run\n")
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--quiet", out=out)
    assert res.code == 0, res.err
    assert res.out == ""
    assert sorted(p.name for p in edir.iterdir()) == ["learner_summary.ndjson"]
    assert len(res.rows(srv.enterprise_uuid)) == 50
    assert_private_tree(res.root)


@pytest.mark.parametrize("status", [403, 401])
def test_access_lost_after_page_one_fails_the_enterprise_cleanly(
        world: World, run_cli: Any, status: int) -> None:
    """A 403/401 on a later page (raised inside the page walkers) fails the enterprise:
    no traceback, no file left, exit 2 since nothing could be exported."""
    srv = world.sim(learners=2300)
    proxy = world.proxy(srv, refuse=lambda page: status if page == 3 else None)
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid, base=proxy.base_url)
    assert res.code == 2, res.err
    assert "Traceback" not in res.err
    e = res.manifest["enterprises"][srv.enterprise_uuid]
    assert e["status"] == "failed" and e["errors"][0]["status"] == status
    assert not res.edir(srv.enterprise_uuid).exists()
    assert_no_learner_data(res.err, world.truth(srv))


def test_sigint_mid_walk_exits_130_and_leaves_no_personal_data_behind(
        world: World, run_cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT after the first page: exit 130, no .part, no manifest; a rerun works."""
    srv = world.sim(learners=2300)
    original = EnterpriseWalker._take
    fired: list[bool] = []

    def take_then_interrupt(self: EnterpriseWalker, *args: Any) -> None:
        original(self, *args)
        if not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(EnterpriseWalker, "_take", take_then_interrupt)
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid)
    assert fired and res.code == 130, res.err
    assert "interrupted" in res.err
    assert not (res.root / "manifest.json").exists()
    assert [p for p in res.root.rglob("*") if "learner_summary" in p.name] == []

    monkeypatch.setattr(EnterpriseWalker, "_take", original)
    again = run_cli(srv, "--enterprise", srv.enterprise_uuid)
    assert again.code == 0, again.err
    assert len(again.rows(srv.enterprise_uuid)) == 2300
