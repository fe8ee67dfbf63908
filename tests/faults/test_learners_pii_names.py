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
