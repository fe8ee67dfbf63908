"""``--pii hash|drop`` against servers that spell person fields their own way.

A proxy in front of the simulator adds to every learner row the fields an adversarial
server sent (camelCase, run-together, bare ``name``/``mail``), and objects nested under
fields that are not personal themselves. Under hash and drop, in the NDJSON and the CSV,
no raw value of any of them may remain.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from harvester.learners import PiiMode, PiiPolicy, is_pii
from tests.faults.test_learners_faults import learner_files, run_cli, start_proxy, world
from tests.integration.test_learners import KEY, World, mac

__all__ = ["run_cli", "world"]  # fixtures, imported for pytest

Row = dict[str, Any]

#: The fields the adversary's server sent, with values found nowhere else in a row.
ADVERSARY = {
    "firstName": "Alicia-PII", "lastname": "Smithers-PII", "fullname": "Alicia Smithers-PII",
    "surname": "Smithers2-PII", "displayName": "Alicia S-PII", "mail": "alicia@corp.example",
    "externalUid": "U-777-PII", "clientIp": "10.1.2.3", "name": "Alicia Name-PII",
}
#: Person fields nested inside fields that are not personal by name.
NESTED = {
    "manager": {"email": "boss@corp.example", "Phone": "+1-555-0100", "title": "Head"},
    "contacts": [{"givenName": "Bobby-PII", "ipAddress": "192.0.2.77"}, "plain"],
    "meta": {"deeper": {"user": {"id": 424242}, "LoginName": "bobby_login_PII"}},
}
RAW = [*ADVERSARY.values(), "boss@corp.example", "+1-555-0100", "Bobby-PII", "192.0.2.77",
       "424242", "bobby_login_PII"]


def adversary_fields(row: Row) -> Row:
    return {**row, **ADVERSARY, **NESTED}


@pytest.mark.parametrize("name", [*ADVERSARY, "FirstName", "first-name", "FIRST_NAME",
                                  "userName", "emailAddress", "ssoSubject", "idpGuid",
                                  "remoteIP", "IPAddress", "givenName", "middleName",
                                  "nickname", "dateOfBirth", "DOB", "phoneNumber",
                                  "learnerId", "Username", "e-mail"])
def test_camel_case_and_run_together_person_fields_are_personal(name: str) -> None:
    assert is_pii(name), name


@pytest.mark.parametrize("name", ["courseName", "programTitle", "catalogUuid", "lessonCount",
                                  "className", "course_start", "subsidyType", "shipDate"])
def test_course_fields_in_any_spelling_are_kept(name: str) -> None:
    assert not is_pii(name), name


def test_nested_person_fields_are_hashed_or_dropped_at_any_depth() -> None:
    row = {"course_title": "T", **NESTED}
    dropped = PiiPolicy(PiiMode.DROP).apply(row)
    assert dropped == {"course_title": "T", "manager": {"title": "Head"},
                       "contacts": [{}, "plain"], "meta": {"deeper": {}}}
    hashed = PiiPolicy(PiiMode.HASH, KEY.encode()).apply(row)
    assert hashed["manager"] == {"email": mac("boss@corp.example"),
                                 "Phone": mac("+1-555-0100"), "title": "Head"}
    assert hashed["contacts"][0]["ipAddress"] == mac("192.0.2.77")
    assert hashed["meta"]["deeper"]["LoginName"] == mac("bobby_login_PII")
    assert row["manager"]["email"] == "boss@corp.example"  # input not mutated


def test_a_row_nested_past_the_inspected_depth_is_not_written() -> None:
    deep: Any = {"email": "deep@corp.example"}
    for _ in range(100):
        deep = {"wrap": deep}
    out = PiiPolicy(PiiMode.DROP).apply({"course_title": "T", "x": deep})
    assert "deep@corp.example" not in repr(out)


@pytest.mark.parametrize("mode", ["hash", "drop"])
def test_adversary_person_fields_never_reach_the_files(world: World, run_cli: Any,
                                                        tmp_path: Path, mode: str) -> None:
    """The adversary's server rows, exported with --csv: no raw value in NDJSON or CSV;
    hash gives the keyed HMAC of each, drop leaves none of the fields."""
    srv = world.sim(learners=40)
    proxy = start_proxy(world, srv, extra=adversary_fields)
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--pii", mode, "--csv",
                  key=KEY, base=proxy.base_url, out=tmp_path / mode)
    assert res.code == 0, res.err
    files = learner_files(res.root)
    assert {p.name for p in files} == {"learner_summary.ndjson", "learner_summary.csv"}
    text = "".join(p.read_text("utf-8") for p in files)
    for value in RAW:
        assert value not in text, value
    rows = res.rows(srv.enterprise_uuid)
    assert len(rows) == 40
    header = next(csv.reader(io.StringIO(
        (res.edir(srv.enterprise_uuid) / "learner_summary.csv").read_text("utf-8"))))
    for row in rows:
        if mode == "drop":
            assert not set(ADVERSARY) & set(row)
            assert row["manager"] == {"title": "Head"}
        else:
            assert all(row[k] == mac(v) for k, v in ADVERSARY.items())
            assert row["manager"]["email"] == mac("boss@corp.example")
    assert ("firstName" in header) is (mode == "hash")
    assert "manager" in header


# --- a failed enterprise keeps the previous good export ----------------------------------

def _maintenance_for(failing: set[str]) -> Any:
    from aiohttp import web

    from tests.faults.test_learners_faults import MAINTENANCE

    def fault(ent: str, page: int, n: int) -> web.Response | None:
        if ent in failing:
            return web.Response(status=200, body=MAINTENANCE, content_type="text/html")
        return None

    return fault


def _forbidden_for(failing: set[str]) -> Any:
    from aiohttp import web

    def fault(ent: str, page: int, n: int) -> web.Response | None:
        return web.json_response({"detail": "no"}, status=403) if ent in failing else None

    return fault


@pytest.mark.parametrize("fault", [_maintenance_for, _forbidden_for])
def test_a_failed_enterprise_keeps_its_previous_files_marked_stale(
        world: World, run_cli: Any, tmp_path: Path, fault: Any) -> None:
    """A complete drop export of two enterprises, then a drop rerun in which the second's
    page 1 keeps answering a maintenance page (or a 403): its files stay byte for byte,
    the new manifest lists them with their sha256 as carried from the first run, stale."""
    import uuid

    from tests.faults.test_learners_faults import assert_manifest_matches_files, sha

    srv = world.sim(learners=60)
    second = str(uuid.UUID(int=31))
    failing: set[str] = set()
    proxy = start_proxy(world, srv, aliases=(second,), fault=fault(failing))
    out = tmp_path / "out"
    args = ("--enterprise", srv.enterprise_uuid, "--enterprise", second, "--pii", "drop")
    first = run_cli(srv, *args, base=proxy.base_url, out=out)
    assert first.code == 0, first.err
    before = {p: sha(p) for p in learner_files(first.root) if second in str(p)}
    first_manifest = first.manifest
    assert before
    failing.add(second)
    res = run_cli(srv, *args, base=proxy.base_url, out=out)
    assert res.code in (2, 3), res.err
    assert "Traceback" not in res.err
    assert {p: sha(p) for p in learner_files(res.root) if second in str(p)} == before
    m = assert_manifest_matches_files(res.root)
    entry = m["enterprises"][second]
    assert entry["status"] == "failed" and m["status"] == "partial"
    assert entry["files"] == first_manifest["enterprises"][second]["files"]
    prev = entry["previous_files"]
    assert prev["carried"] and prev["stale"] and prev["pii"] == "drop"
    assert prev["from_run"] == first_manifest["run_id"]
    assert m["enterprises"][srv.enterprise_uuid]["status"] == "complete"


@pytest.mark.parametrize(("before_mode", "after_mode", "carried"),
                         [("hash", "drop", False), ("drop", "hash", True),
                          ("keep", "hash", False), ("hash", "hash", True)])
def test_previous_files_less_strict_than_the_run_are_removed(
        world: World, run_cli: Any, tmp_path: Path, before_mode: str, after_mode: str,
        carried: bool) -> None:
    """The failed enterprise's previous files stay only if their PII mode is at least as
    strict as this run's (keep < hash < drop); the manifest records which happened."""
    import uuid

    from tests.faults.test_learners_faults import assert_manifest_matches_files

    srv = world.sim(learners=30)
    second = str(uuid.UUID(int=32))
    failing: set[str] = set()
    proxy = start_proxy(world, srv, aliases=(second,), fault=_maintenance_for(failing))
    out = tmp_path / "out"
    ents = ("--enterprise", srv.enterprise_uuid, "--enterprise", second)
    first = run_cli(srv, *ents, "--pii", before_mode, key=KEY, base=proxy.base_url, out=out)
    assert first.code == 0, first.err
    failing.add(second)
    res = run_cli(srv, *ents, "--pii", after_mode, key=KEY, base=proxy.base_url, out=out)
    assert res.code == 3, res.err
    m = assert_manifest_matches_files(res.root)
    entry = m["enterprises"][second]
    assert entry["previous_files"]["carried"] is carried
    assert bool(entry["files"]) is carried
    assert res.edir(second).exists() is carried


def test_a_run_that_exports_nothing_leaves_the_previous_export_byte_identical(
        world: World, run_cli: Any, tmp_path: Path) -> None:
    """Every enterprise fails (maintenance pages on page 1): the previous files and the
    previous manifest are byte-identical, and stderr says so in one line."""
    from tests.faults.test_learners_faults import sha

    srv = world.sim(learners=30)
    failing: set[str] = set()
    proxy = start_proxy(world, srv, fault=_maintenance_for(failing))
    out = tmp_path / "out"
    first = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--pii", "drop",
                    base=proxy.base_url, out=out)
    assert first.code == 0, first.err
    before = {p: sha(p) for p in first.root.rglob("*") if p.is_file()}
    failing.add(srv.enterprise_uuid)
    res = run_cli(srv, "--enterprise", srv.enterprise_uuid, "--pii", "drop",
                  base=proxy.base_url, out=out)
    assert res.code == 3, res.err
    assert {p: sha(p) for p in res.root.rglob("*") if p.is_file()} == before
    lines = [ln for ln in res.err.splitlines() if "unchanged" in ln]
    assert len(lines) == 1 and "previous export" in lines[0]
