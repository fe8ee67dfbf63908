"""Learner export failure paths: personal ids, manifests that must match their files, bad
``--out`` values, and pages that fail for good.

The simulator serves one enterprise; a small proxy in front of it (on its own loop thread,
like ``tests/integration/test_learners.py``) plays what the tests need around it: more
enterprises (aliases of the simulator's), extra person-id fields in rows, a page that keeps
answering a maintenance page or a 5xx, and a request held open so a subprocess can be
interrupted at an exact point without any timing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from yarl import URL

from harvester import cli
from harvester.sim import SimServer
from tests.integration.helpers import LoopbackProxy, LoopThread
from tests.integration.test_learners import (
    KEY,
    Outcome,
    World,
    assert_no_learner_data,
    assert_private_tree,
    mac,
)

Row = dict[str, Any]
#: (enterprise, page, how many times this page of this enterprise was asked) -> answer.
Fault = Callable[[str, int, int], web.Response | None]

MAINTENANCE = (b"<!DOCTYPE html>\n<html><head><title>Maintenance</title></head><body>"
               b"<h1>Service under maintenance</h1></body></html>\n")


class FaultProxy(LoopbackProxy):
    """Forwards to the simulator. Learner requests for any enterprise in ``aliases`` are
    served as the simulator's own enterprise; ``fault`` may answer a learner page instead;
    ``extra(row)`` may add fields to each row; requests for ``hold`` wait until
    ``release`` is set (``held`` is set when the first one arrives)."""

    decompress = False

    def __init__(self, srv: SimServer, *, aliases: tuple[str, ...] = (),
                 fault: Fault | None = None, extra: Callable[[Row], Row] | None = None,
                 hold: str | None = None) -> None:
        super().__init__()
        self.srv = srv
        self.aliases = aliases
        self.fault = fault
        self.extra = extra
        self.hold = hold
        self.held = threading.Event()
        self.release = threading.Event()
        self.calls: dict[tuple[str, int], int] = {}
        self.learner_requests = 0

    async def close(self) -> None:
        self.release.set()
        await super().close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        raw_path = request.raw_path
        learners = request.path.endswith("/learner-summary")
        if learners:
            self.learner_requests += 1
            ent = request.path.split("/")[-2]
            page = int(request.query.get("page", "1"))
            n = self.calls[(ent, page)] = self.calls.get((ent, page), 0) + 1
            if ent == self.hold:
                self.held.set()
                await asyncio.get_running_loop().run_in_executor(None, self.release.wait)
            if self.fault is not None and (answer := self.fault(ent, page, n)) is not None:
                return answer
            if ent in self.aliases:
                raw_path = raw_path.replace(ent, self.srv.enterprise_uuid)
        headers = {k: request.headers[k] for k in ("Authorization", "Accept", "Content-Type")
                   if k in request.headers}
        body = await request.read()
        url = URL(self.srv.base_url + raw_path, encoded=True)
        async with self._session.request(request.method, url, data=body or None,
                                         headers=headers, allow_redirects=False) as up:
            raw, status = await up.read(), up.status
            out_headers = {k: up.headers[k] for k in ("Content-Type", "Retry-After")
                           if k in up.headers}
        if learners and status == 200 and self.extra is not None:
            data = orjson.loads(raw)
            data["results"] = [self.extra(r) for r in data["results"]]
            raw = orjson.dumps(data)
        return web.Response(status=status, body=raw, headers=out_headers)


@pytest.fixture
def world() -> Iterator[World]:
    w = World(LoopThread())
    try:
        yield w
    finally:
        for close in reversed(w.closers):
            w.lt.run(close())
        w.lt.close()


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            tmp_path: Path) -> Callable[..., Outcome]:
    """``harvester learners`` in-process, as from a shell (zero backoff, 1000/s budget)."""
    retry_cfg = tmp_path / "fast-retries.toml"
    retry_cfg.write_text("[retry]\nbackoff_base = 0.0\nbackoff_cap = 0.0\n")

    def run(srv: SimServer, *args: str, base: str | None = None, out: Path | None = None,
            key: str | None = None) -> Outcome:
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
                         "--config", str(retry_cfg), *args])
        cap = capsys.readouterr()
        return Outcome(code, cap.out, cap.err, out / "learners")

    return run


def start_proxy(world: World, srv: SimServer, **kw: Any) -> FaultProxy:
    proxy = FaultProxy(srv, **kw)
    world.lt.run(proxy.start())
    world.closers.append(proxy.close)
    return proxy


def person_ids(row: Row) -> Row:
    """Fields older serializers and the LMS use for the same person (not in the v3 docs)."""
    uid = int(row["enterprise_user_id"]) - 7
    return {**row, "lms_user_id": uid, "user_id": uid, "enterprise_customer_user_id": uid + 3,
            "learner_uuid": str(uuid.UUID(int=uid))}


def learner_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and "learner_summary" in p.name)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_manifest_matches_files(root: Path) -> dict[str, Any]:
    """Every file the manifest lists is there with its sha256, and there is no other."""
    m: dict[str, Any] = orjson.loads((root / "manifest.json").read_bytes())
    listed = set()
    for ent, e in m["enterprises"].items():
        for name, info in e["files"].items():
            path = root / f"enterprise={ent}" / name
            assert sha(path) == info["sha256"], path
            listed.add(path)
    published = {p for p in learner_files(root) if ".state" not in p.relative_to(root).parts}
    assert published == listed
    return m


# --- #10.17: every person id is hashed (keyed) or dropped ------------------------------------

PERSON_ID_FIELDS = ("lms_user_id", "user_id", "enterprise_customer_user_id", "learner_uuid",
                    "enterprise_user_id", "enrollment_id", "enterprise_enrollment_id")


def test_hash_and_drop_leave_no_stable_person_id(world: World, run_cli: Any,
                                                 tmp_path: Path) -> None:
    """lms_user_id and the other per-person ids: keyed HMAC under hash, absent under drop;
    no raw value of any of them anywhere in the output."""
    srv = world.sim(learners=120)
    proxy = start_proxy(world, srv, extra=person_ids)
    hashed = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--pii", "hash", "--csv",
                     key=KEY, base=proxy.base_url, out=tmp_path / "h")
    dropped = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--pii", "drop", "--csv",
                      base=proxy.base_url, out=tmp_path / "d")
    kept = run_cli(srv, "--enterprise", srv.enterprise_uuid, base=proxy.base_url,
                   out=tmp_path / "k")
    assert (hashed.code, dropped.code, kept.code) == (0, 0, 0), hashed.err + dropped.err
    raw_rows = kept.rows(srv.enterprise_uuid)
    assert len(raw_rows) == 120 and all("lms_user_id" in r for r in raw_rows)

    for raw, row in zip(raw_rows, hashed.rows(srv.enterprise_uuid), strict=True):
        for name in PERSON_ID_FIELDS:
            assert row[name] == mac(raw[name]), name
            # unkeyed digests of a small integer space are a lookup table away
            assert row[name] != hashlib.sha256(str(raw[name]).encode()).hexdigest()
    for row in dropped.rows(srv.enterprise_uuid):
        assert not set(PERSON_ID_FIELDS) & set(row)
    for res in (hashed, dropped):
        files = b"".join(p.read_bytes() for p in learner_files(res.root))
        for raw in raw_rows:
            for name in ("lms_user_id", "learner_uuid", "user_email"):
                assert f'"{name}":{orjson.dumps(raw[name]).decode()}'.encode() not in files
            assert raw["learner_uuid"].encode() not in files
    assert "lms_user_id" in hashed.manifest["pii"]["fields"]


# --- #11.8: a manifest never describes files it did not write --------------------------------

def spawn_learners(srv: SimServer, base: str, out: Path, tmp: Path, *args: str,
                   preexec: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    cfg = tmp / "fast.toml"
    cfg.write_text("[retry]\nbackoff_base = 0.0\nbackoff_cap = 0.0\n")
    env = {**os.environ, "EDX_CLIENT_ID": srv.client_id, "EDX_CLIENT_SECRET": srv.client_secret,
           "HARVESTER_PII_KEY": KEY}
    return subprocess.Popen(
        [sys.executable, "-m", "harvester", "learners", "--out", str(out), "--config", str(cfg),
         "--api-base", base, "--rate-learners", "1000/s", "--progress", "off", "--quiet",
         *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_keep_run_leaves_the_hash_export_as_it_was(
        world: World, run_cli: Any, tmp_path: Path, sig: signal.Signals, code: int) -> None:
    """hash run, then a keep run interrupted while its second enterprise is in flight (the
    first one is done): the files are still the hash run's, matching its manifest; no raw
    email anywhere under OUT."""
    srv = world.sim(learners=300)
    second = str(uuid.UUID(int=12))
    proxy = start_proxy(world, srv, aliases=(second,))
    out = tmp_path / "out"
    root = out / "learners"
    first = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--enterprise", second,
                    "--pii", "hash", key=KEY, base=proxy.base_url, out=out)
    assert first.code == 0, first.err
    before = {p: sha(p) for p in learner_files(root)}
    before_manifest = (root / "manifest.json").read_bytes()
    assert len(before) == 2
    proxy.hold = second  # the keep run's second enterprise waits for the signal

    proc = spawn_learners(srv, proxy.base_url, out, tmp_path, "--enterprise",
                          srv.enterprise_uuid, "--enterprise", second, "--pii", "keep")
    try:
        assert proxy.held.wait(60), "the second enterprise was never requested"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proxy.release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err.decode()
    assert b"Traceback" not in err
    assert {p: sha(p) for p in learner_files(root)} == before
    assert (root / "manifest.json").read_bytes() == before_manifest
    m = assert_manifest_matches_files(root)
    assert m["pii"]["mode"] == "hash" and m["status"] == "complete"
    truth = world.truth(srv)
    everything = "".join(p.read_text("utf-8", "replace") for p in root.rglob("*")
                         if p.is_file())
    assert_no_learner_data(everything, truth)
    assert_private_tree(root)


def test_kill_9_leaves_the_old_export_and_the_next_run_clears_the_staged_files(
        world: World, run_cli: Any, tmp_path: Path) -> None:
    """SIGKILL while the second enterprise is in flight: the published export and its
    manifest are untouched; the killed run's staged file stays private under .state and
    the next run removes it before publishing its own."""
    srv = world.sim(learners=300)
    second = str(uuid.UUID(int=13))
    proxy = start_proxy(world, srv, aliases=(second,))
    out = tmp_path / "out"
    root = out / "learners"
    first = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--enterprise", second,
                    "--pii", "drop", base=proxy.base_url, out=out)
    assert first.code == 0, first.err
    before_manifest = (root / "manifest.json").read_bytes()
    proxy.hold = second
    proc = spawn_learners(srv, proxy.base_url, out, tmp_path, "--enterprise",
                          srv.enterprise_uuid, "--enterprise", second, "--pii", "keep")
    try:
        assert proxy.held.wait(60), "the second enterprise was never requested"
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        proxy.release.set()
    assert (root / "manifest.json").read_bytes() == before_manifest
    assert_manifest_matches_files(root)
    staged = [p for p in learner_files(root) if ".state" in p.parts]
    assert staged, "the killed run had staged its first enterprise"
    assert_private_tree(root)

    proxy.hold = None
    again = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--pii", "drop",
                    base=proxy.base_url, out=out)
    assert again.code == 0, again.err
    assert not [p for p in root.rglob("*") if ".state" in p.parts and "staging" in p.parts]
    m = assert_manifest_matches_files(root)
    assert list(m["enterprises"]) == [srv.enterprise_uuid]


def _small_disk() -> None:
    """In the child: files may not grow past 150 kB, as on a disk that fills up."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))


def test_a_full_disk_is_one_line_and_leaves_the_previous_export(
        world: World, run_cli: Any, tmp_path: Path) -> None:
    """A keep run that runs out of disk: exit 1, one line saying the previous export is
    unchanged; it is, with its manifest; nothing staged is left."""
    srv = world.sim(learners=2300)
    proxy = start_proxy(world, srv)
    out = tmp_path / "out"
    root = out / "learners"
    first = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--pii", "drop",
                    base=proxy.base_url, out=out)
    assert first.code == 0, first.err
    before = {p: sha(p) for p in learner_files(root)}
    before_manifest = (root / "manifest.json").read_bytes()
    proc = spawn_learners(srv, proxy.base_url, out, tmp_path, "--enterprise",
                          srv.enterprise_uuid, preexec=_small_disk)
    _, err = proc.communicate(timeout=120)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1, err.decode()
    assert len(lines) == 2 and "personal data" in lines[0], lines  # the keep notice, then
    assert "File too large" in lines[1] and "previous export" in lines[1]
    assert "Traceback" not in err.decode()
    assert {p: sha(p) for p in learner_files(root)} == before
    assert (root / "manifest.json").read_bytes() == before_manifest


def test_a_failed_enterprise_under_drop_leaves_no_raw_file(
        world: World, run_cli: Any, tmp_path: Path) -> None:
    """keep run of two enterprises, then a drop run in which one fails (403): that
    enterprise's raw file is gone, the other holds drop rows, the manifest says exactly
    that, and an enterprise the new run does not list is not left behind either."""
    srv = world.sim(learners=200)
    second, gone = str(uuid.UUID(int=21)), str(uuid.UUID(int=22))
    refused: set[str] = set()

    def fault(ent: str, page: int, n: int) -> web.Response | None:
        if ent in refused:
            return web.json_response({"detail": "no"}, status=403)
        return None

    proxy = start_proxy(world, srv, aliases=(second, gone), fault=fault)
    out = tmp_path / "out"
    first = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--enterprise", second,
                    "--enterprise", gone, "--csv", base=proxy.base_url, out=out)
    assert first.code == 0, first.err
    assert len(learner_files(first.root)) == 6

    refused.add(second)
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--enterprise", second,
                  "--pii", "drop", base=proxy.base_url, out=out)
    assert res.code == 3, res.err
    m = assert_manifest_matches_files(res.root)
    assert m["pii"]["mode"] == "drop" and m["status"] == "partial"
    assert m["enterprises"][second]["status"] == "failed"
    assert m["enterprises"][second]["files"] == {}
    assert learner_files(res.root) == [res.edir(srv.enterprise_uuid) / "learner_summary.ndjson"]
    assert all("user_email" not in r for r in res.rows(srv.enterprise_uuid))
    assert_no_learner_data("".join(p.read_text() for p in learner_files(res.root)),
                           world.truth(srv))
    assert_private_tree(res.root)


# --- #11.9: bad --out values ------------------------------------------------------------------

def _file(tmp: Path) -> Path:
    (tmp / "file").write_text("not a directory\n")
    return tmp / "file"


def _under_file(tmp: Path) -> Path:
    return _file(tmp) / "sub"


def _symlink(tmp: Path) -> Path:
    (tmp / "real").mkdir()
    (tmp / "link").symlink_to(tmp / "real")
    return tmp / "link"


def _learners_symlink(tmp: Path) -> Path:
    (tmp / "elsewhere").mkdir()
    (tmp / "out").mkdir()
    (tmp / "out" / "learners").symlink_to(tmp / "elsewhere")
    return tmp / "out"


@pytest.mark.parametrize(("make", "words"), [
    (_file, "not a directory"), (_under_file, "not a directory"),
    (_symlink, "symbolic link"), (_learners_symlink, "symbolic link")])
def test_a_bad_out_exits_2_with_one_line_before_any_request(
        world: World, run_cli: Any, tmp_path: Path, make: Callable[[Path], Path],
        words: str) -> None:
    """A file, a path under a file, a link: exit 2, one line naming --out, nothing made."""
    srv = world.sim(learners=10)
    proxy = start_proxy(world, srv)
    out = make(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid, base=proxy.base_url, out=out)
    assert res.code == 2, res.err
    lines = res.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("harvester: --out") and words in lines[0]
    assert "resume" not in res.err
    assert proxy.learner_requests == 0
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_out_exits_2(world: World, run_cli: Any, tmp_path: Path) -> None:
    srv = world.sim(learners=10)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid, out=locked / "out")
    assert res.code == 2 and len(res.err.splitlines()) == 1, res.err
    assert "not writable" in res.err or "Permission denied" in res.err


# --- #10.15 in the learner export: one bad page does not lose the rest ------------------------

def test_a_page_that_keeps_answering_markup_loses_only_itself(
        world: World, run_cli: Any) -> None:
    """Page 2 of 3 answers a maintenance page on every try: exit 3, the rows of pages 1
    and 3 are written and described, the failed page is recorded, no .part is left."""
    srv = world.sim(learners=2300)
    truth = world.truth(srv)

    def fault(ent: str, page: int, n: int) -> web.Response | None:
        if page == 2:
            return web.Response(status=200, body=MAINTENANCE, content_type="text/html")
        return None

    proxy = start_proxy(world, srv, fault=fault)
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid, base=proxy.base_url)
    assert res.code == 3, res.err
    m = assert_manifest_matches_files(res.root)
    e = m["enterprises"][srv.enterprise_uuid]
    assert m["status"] == "partial" and e["status"] == "partial"
    want = {r["enterprise_enrollment_id"] for r in truth[:1000] + truth[2000:]}
    got = {r["enterprise_enrollment_id"] for r in res.rows(srv.enterprise_uuid)}
    assert got == want
    assert e["rows_written"] == 1300 and e["gaps"] == 1000
    assert e["errors"] and all(err.get("page") == 2 for err in e["errors"])
    assert "Service under maintenance" not in orjson.dumps(m).decode()
    assert not [p for p in res.root.rglob("*.part")]
    assert "Traceback" not in res.err


def test_a_rewalk_that_fails_keeps_what_the_first_walk_wrote(
        world: World, run_cli: Any) -> None:
    """Walk 1 misses a row (so a rewalk starts); the rewalk's page 1 then fails with 503
    after every retry. The 2299 rows of walk 1 are committed, exit 3, the gap reported."""
    srv = world.sim(learners=2300)
    truth = world.truth(srv)
    hidden = truth[1500]["enterprise_enrollment_id"]

    def fault(ent: str, page: int, n: int) -> web.Response | None:
        if page == 1 and n > 1:
            return web.json_response({"detail": "upstream down"}, status=503)
        return None

    def hide(row: Row) -> Row:
        return truth[1499] if row["enterprise_enrollment_id"] == hidden else row

    proxy = start_proxy(world, srv, fault=fault, extra=hide)
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid, base=proxy.base_url)
    assert res.code == 3, res.err
    m = assert_manifest_matches_files(res.root)
    e = m["enterprises"][srv.enterprise_uuid]
    assert (e["status"], e["rows_written"], e["gaps"]) == ("partial", 2299, 1)
    assert [err["status"] for err in e["errors"]] == [503, 503]  # walks 2 and 3
    assert proxy.calls[(srv.enterprise_uuid, 1)] > 2  # the rewalk's page 1 was retried


def test_maintenance_pages_on_learner_pages_are_retried_in_place(
        world: World, run_cli: Any) -> None:
    """The learner export goes through the client's one retry path: 200 + HTML pages on
    half of the requests are retried like a bad body; every row once, one walk, exit 0."""
    srv = world.sim(learners=5000, fault_rate=0.5, fault_kinds=("maintenance",))
    truth = world.truth(srv)
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid)
    assert res.code == 0, res.err
    m = assert_manifest_matches_files(res.root)
    e = m["enterprises"][srv.enterprise_uuid]
    assert (e["status"], e["rows_written"], e["walks"], e["errors"]) == (
        "complete", 5000, 1, [])
    assert srv.state.stats.faults["maintenance"] > 0
    assert m["totals"]["retries"] >= srv.state.stats.faults["maintenance"]
    want = {r["enterprise_enrollment_id"] for r in truth}
    got = [r["enterprise_enrollment_id"] for r in res.rows(srv.enterprise_uuid)]
    assert len(got) == 5000 and set(got) == want
    assert "Service under maintenance" not in res.err
