"""Learner export, pure parts: PII modes, options, identity, CSV cells and columns."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from harvester.errors import ConfigError
from harvester.learners import (
    FIELD_ORDER,
    PII_FIELDS,
    LearnerOptions,
    PiiMode,
    PiiPolicy,
    Tally,
    csv_cell,
    enrollment_identity,
    is_pii,
    write_csv,
)
from harvester.partfile import PartFile
from harvester.redact import REDACTOR

KEY = "k3y-for-unit-tests-0123456789"
ENT = "6f1c2a55-0b7e-4d1a-9d5e-1c2b3a4d5e6f"

#: edx-api-behaviour.md §6, EnterpriseLearnerEnrollmentSerializer, in its order.
SPEC_ORDER = [
    "enrollment_id", "enterprise_enrollment_id", "is_consent_granted", "paid_by",
    "user_current_enrollment_mode", "enrollment_date", "unenrollment_date",
    "unenrollment_end_within_date", "is_refunded", "seat_delivery_method", "offer_id",
    "offer_name", "offer_type", "coupon_code", "coupon_name", "contract_id", "course_list_price",
    "amount_learner_paid", "course_key", "courserun_key", "course_title", "course_pacing_type",
    "course_start_date", "course_end_date", "course_duration_weeks", "course_max_effort",
    "course_min_effort", "course_primary_program", "primary_program_type",
    "course_primary_subject", "has_passed", "last_activity_date", "progress_status", "passed_date",
    "current_grade", "letter_grade", "enterprise_user_id", "user_email",
    "user_account_creation_date", "user_country_code", "user_username", "user_first_name",
    "user_last_name", "enterprise_name", "enterprise_customer_uuid", "enterprise_sso_uid",
    "created", "course_api_url", "total_learning_time_hours", "is_subsidy", "course_product_line",
    "budget_id", "enterprise_flex_group_name", "enterprise_flex_group_uuid", "course_progress",
    "course_passing_grade",
]


def row(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "enrollment_id": 5000007,
        "enterprise_enrollment_id": 90001,
        "is_consent_granted": True,
        "courserun_key": "course-v1:edX+DemoX+1T2024",
        "has_passed": False,
        "progress_status": "In Progress",
        "current_grade": 0.41,
        "enterprise_user_id": 10_007,
        "user_email": "ada.lovelace@example.com",
        "user_account_creation_date": "2021-03-04T05:06:07Z",
        "user_country_code": "GB",
        "user_username": "ada_l",
        "user_first_name": "Ada",
        "user_last_name": "Lovelace",
        "enterprise_name": "Analytical Engines",
        "enterprise_sso_uid": None,
        "user_current_enrollment_mode": "verified",
    }
    base.update(over)
    return base


def mac(value: str) -> str:
    return hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


def test_field_order_is_the_serializer_order() -> None:
    """CSV columns follow the serializer, field for field."""
    assert list(FIELD_ORDER) == SPEC_ORDER


def test_hash_mode_replaces_each_pii_field_with_its_hmac() -> None:
    """hash: HMAC-SHA256(key, original) per PII field; nothing else changes, order kept."""
    original = row(user_country="United Kingdom")
    out = PiiPolicy(PiiMode.HASH, KEY.encode()).apply(original)
    assert list(out) == list(original)
    assert out["user_email"] == mac("ada.lovelace@example.com")
    assert out["user_username"] == mac("ada_l")
    assert out["user_first_name"] == mac("Ada")
    assert out["user_last_name"] == mac("Lovelace")
    assert out["user_country_code"] == mac("GB")
    assert out["user_country"] == mac("United Kingdom")
    assert out["user_account_creation_date"] == mac("2021-03-04T05:06:07Z")
    assert out["enterprise_user_id"] == mac("10007")  # an int hashes as its decimal text
    assert out["enrollment_id"] == mac("5000007")  # record ids resolve to one person
    assert out["enterprise_enrollment_id"] == mac("90001")
    assert out["enterprise_sso_uid"] is None  # null stays null
    for name in ("courserun_key", "current_grade", "has_passed",
                 "enterprise_name", "user_current_enrollment_mode", "progress_status"):
        assert out[name] == original[name]
    assert original["user_email"] == "ada.lovelace@example.com"  # input not mutated


def test_hash_mode_is_stable_per_key_and_differs_between_keys() -> None:
    """The same key gives the same hashes (joins work); another key gives others."""
    a = PiiPolicy(PiiMode.HASH, KEY.encode()).apply(row())
    b = PiiPolicy(PiiMode.HASH, KEY.encode()).apply(row())
    c = PiiPolicy(PiiMode.HASH, (KEY + "x").encode()).apply(row())
    assert a == b
    assert a["user_email"] != c["user_email"]


def test_drop_mode_removes_pii_fields_only() -> None:
    """drop: the listed fields (and unlisted user_*/email fields) are absent."""
    original = row(user_country="GB", user_phone="+44 1", manager_email="x@y.z", extra=1)
    out = PiiPolicy(PiiMode.DROP).apply(original)
    for name in (*PII_FIELDS, "user_phone", "manager_email"):
        assert name not in out
    assert list(out) == [k for k in original if k in out]
    assert out["user_current_enrollment_mode"] == "verified"
    assert out["extra"] == 1
    assert "enterprise_enrollment_id" not in out and "enrollment_id" not in out
    assert out["courserun_key"] == "course-v1:edX+DemoX+1T2024"


def test_keep_mode_is_identical() -> None:
    """keep: the row unchanged, as a copy."""
    original = row()
    out = PiiPolicy(PiiMode.KEEP).apply(original)
    assert out == original and list(out) == list(original)
    assert out is not original


def test_is_pii_fails_closed_for_unlisted_user_fields() -> None:
    """Unknown user_* or *email* fields count as personal; known non-PII ones do not."""
    assert is_pii("user_email") and is_pii("enterprise_user_id")
    assert is_pii("user_middle_name") and is_pii("secondary_email")
    assert not is_pii("user_current_enrollment_mode")
    assert not is_pii("course_title")


def test_hash_mode_refuses_a_missing_or_short_key() -> None:
    """No key (or a guessable one) means no run: nothing is written unhashed."""
    with pytest.raises(ConfigError, match="HARVESTER_PII_KEY"):
        PiiPolicy.from_env(PiiMode.HASH, {})
    with pytest.raises(ConfigError, match="at least 16"):
        PiiPolicy.from_env(PiiMode.HASH, {"HARVESTER_PII_KEY": "short"})
    assert PiiPolicy.from_env(PiiMode.KEEP, {}).mode is PiiMode.KEEP
    assert PiiPolicy.from_env(PiiMode.DROP, {}).mode is PiiMode.DROP


def test_the_key_never_shows() -> None:
    """repr hides the key, the key id does not contain it, logs would mask it."""
    policy = PiiPolicy.from_env(PiiMode.HASH, {"HARVESTER_PII_KEY": KEY})
    assert KEY not in repr(policy)
    key_id = policy.key_id
    assert key_id is not None and len(key_id) == 12 and key_id not in KEY
    assert key_id == PiiPolicy(PiiMode.HASH, KEY.encode()).key_id
    assert key_id != PiiPolicy(PiiMode.HASH, (KEY + "x").encode()).key_id
    assert REDACTOR.scrub(f"key={KEY}") == "key=***"
    assert PiiPolicy(PiiMode.KEEP).key_id is None


def test_identity_prefers_enterprise_enrollment_id() -> None:
    """enterprise_enrollment_id decides; else enrollment_id + courserun_key; else the row."""
    assert enrollment_identity(row()) == enrollment_identity(row(user_email="other"))
    assert enrollment_identity(row()) == enrollment_identity(
        row(enterprise_enrollment_id="90001"))
    assert enrollment_identity(row()) != enrollment_identity(row(enterprise_enrollment_id=2))
    a = row(enterprise_enrollment_id=None)
    assert enrollment_identity(a) == enrollment_identity({**a, "current_grade": 1.0})
    assert enrollment_identity(a) != enrollment_identity(
        {**a, "courserun_key": "course-v1:edX+DemoX+2T2024"})
    bare = {"user_email": "a@b.c", "course_title": "T"}
    assert enrollment_identity(bare) == enrollment_identity(dict(bare))
    assert enrollment_identity(bare) != enrollment_identity({**bare, "course_title": "U"})
    assert 0 <= enrollment_identity(row()) < 2**63


def test_columns_follow_the_serializer_then_sorted_extras() -> None:
    """Known fields in serializer order, unknown ones appended sorted; drop removes PII."""
    keep = PiiPolicy(PiiMode.KEEP).columns({"zeta", "alpha", "user_country", "_harvest"})
    assert keep == [*FIELD_ORDER, "alpha", "user_country", "zeta"]
    drop = PiiPolicy(PiiMode.DROP).columns({"zeta", "alpha"})
    assert drop == [f for f in FIELD_ORDER if f not in PII_FIELDS] + ["alpha", "zeta"]
    assert drop[0] == "is_consent_granted" and "user_email" not in drop


def test_csv_cells() -> None:
    """null empty, booleans lower-case, nested JSON, formulas neutralised."""
    assert csv_cell(None) == ""
    assert csv_cell(True) == "true" and csv_cell(False) == "false"
    assert csv_cell(0.7) == "0.7" and csv_cell(12) == "12"
    assert csv_cell({"a": [1]}) == '{"a":[1]}'
    assert csv_cell("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    assert csv_cell("@SUM(A1)") == "'@SUM(A1)" and csv_cell("+1") == "'+1"
    assert csv_cell("Lovelace") == "Lovelace"


def test_write_csv_round_trips(tmp_path: Path) -> None:
    """A header, then one record per line, in column order; commas and quotes survive."""
    lines = [orjson.dumps({"b": 'x, "y"', "a": 1, "_harvest": {}}) + b"\n",
             orjson.dumps({"a": None, "b": "line\nbreak"}) + b"\n"]
    part = PartFile(tmp_path / "t.csv", private=True)
    write_csv(lines, ["a", "b"], part)
    info = part.commit()
    got = list(csv.reader(io.StringIO((tmp_path / "t.csv").read_text("utf-8"), newline="")))
    assert got == [["a", "b"], ["1", 'x, "y"'], ["", "line\nbreak"]]
    assert info.lines == 3
    assert (tmp_path / "t.csv").stat().st_mode & 0o777 == 0o600


def test_options_precedence_and_validation() -> None:
    """CLI beats file; UUIDs are canonicalised and deduped; bad values are ConfigErrors."""
    upper = ENT.upper()
    file_layer = {"learners.enterprises": [upper, ENT], "learners.pii": "drop",
                  "learners.csv": True, "sync.other": 1, "api.base": "x"}
    opts = LearnerOptions.load(file_layer, {"learners.pii": "hash"})
    assert opts.enterprises == (ENT,)
    assert opts.pii is PiiMode.HASH and opts.csv and not opts.consented_only
    assert opts.max_rewalks == 2
    cli = LearnerOptions.load(file_layer, {"learners.enterprises": [str(ENT).replace("-", "")]})
    assert cli.enterprises == (ENT,) and cli.pii is PiiMode.DROP
    with pytest.raises(ConfigError, match="no enterprise"):
        LearnerOptions.load({})
    with pytest.raises(ConfigError, match="not an enterprise customer UUID"):
        LearnerOptions.load({"learners.enterprises": ["../../etc"]})
    with pytest.raises(ConfigError, match="keep, hash or drop"):
        LearnerOptions.load({"learners.enterprises": [ENT], "learners.pii": "mask"})
    with pytest.raises(ConfigError, match=r"unknown setting 'learners\.pii_key'"):
        LearnerOptions.load({"learners.enterprises": [ENT], "learners.pii_key": "x"})
    with pytest.raises(ConfigError, match=r"learners\.csv"):
        LearnerOptions.load({"learners.enterprises": [ENT], "learners.csv": "maybe"})
    with pytest.raises(ConfigError, match="max_rewalks"):
        LearnerOptions.load({"learners.enterprises": [ENT], "learners.max_rewalks": -1})


def test_tally_counts_outcomes_and_distinct_learners() -> None:
    """passed from has_passed or status; in progress / failed from progress_status."""
    t = Tally()
    t.add(row(has_passed=True, progress_status="Passed"))
    t.add(row(has_passed=True, progress_status=None, enterprise_user_id=2))
    t.add(row(progress_status="In Progress"))
    t.add(row(progress_status="Failed", enterprise_user_id=3))
    t.add(row(progress_status=None, enterprise_user_id=None))
    assert t.as_dict() == {"learners": 3, "enrollments": 5, "passed": 2, "in_progress": 1,
                           "failed": 1}


#: The API reference's learner-summary table names a few fields differently from the
#: serializer (course_duration, course_end, course_start, user_country).
REFERENCE_ONLY = ["course_duration", "course_end", "course_start", "user_country"]

#: Every field the serializer, the reference or the simulator sends that does NOT identify
#: a person, with why (the README's table says the same).
NOT_PERSONAL = {
    # what the enrollment is: course, run, dates of the course
    "course_key", "courserun_key", "course_title", "course_pacing_type", "course_start_date",
    "course_end_date", "course_duration_weeks", "course_max_effort", "course_min_effort",
    "course_primary_program", "primary_program_type", "course_primary_subject",
    "course_api_url", "course_product_line", "course_passing_grade", "course_duration",
    "course_end", "course_start",
    # progress and outcome: what the export is for
    "has_passed", "last_activity_date", "progress_status", "passed_date", "current_grade",
    "letter_grade", "course_progress", "total_learning_time_hours",
    "user_current_enrollment_mode", "enrollment_date", "unenrollment_date",
    "unenrollment_end_within_date", "is_consent_granted", "is_refunded",
    # money and subsidy: shared by many learners
    "paid_by", "seat_delivery_method", "offer_id", "offer_name", "offer_type", "coupon_name",
    "contract_id", "course_list_price", "amount_learner_paid", "is_subsidy", "budget_id",
    "enterprise_flex_group_name", "enterprise_flex_group_uuid",
    # the enterprise itself, and when the report row was built
    "enterprise_name", "enterprise_customer_uuid", "created",
}
PERSONAL = {
    "user_email", "user_username", "user_first_name", "user_last_name", "enterprise_sso_uid",
    "enterprise_user_id", "enrollment_id", "enterprise_enrollment_id", "coupon_code",
    "user_account_creation_date", "user_country_code", "user_country",
}


def test_every_field_sent_is_classified_as_personal_or_not() -> None:
    """Each field of the serializer, the API reference and the simulator's rows is either
    hashed/dropped or deliberately kept; a new field fails this test until classified."""
    from harvester.sim import SimConfig
    from harvester.sim.data import Dataset

    sim_fields = list(Dataset(SimConfig(learners=3)).learner_row(1, 0))
    every = set(SPEC_ORDER) | set(REFERENCE_ONLY) | set(sim_fields)
    assert PERSONAL.isdisjoint(NOT_PERSONAL)
    assert every == PERSONAL | NOT_PERSONAL
    assert {f for f in every if is_pii(f)} == PERSONAL
    assert set(PII_FIELDS) >= PERSONAL


@pytest.mark.parametrize("name", [
    "lms_user_id", "user_id", "userid", "enterprise_customer_user_id", "learner_uuid",
    "enterprise_user_uuid", "manager_email", "student_id", "employee_number", "sso_subject",
    "idp_uid", "first_name", "full_name", "display_name", "phone", "ip_address",
    "date_of_birth"])
def test_unlisted_person_fields_fail_closed(name: str) -> None:
    """Fields no serializer lists but that name a person or one of their ids."""
    assert is_pii(name)
    assert name not in PiiPolicy(PiiMode.DROP).apply(row(**{name: 1}))


@pytest.mark.parametrize("name", ["course_slug", "program_title", "last_modified",
                                  "catalog_uuid", "subsidy_type"])
def test_unlisted_course_fields_are_kept(name: str) -> None:
    assert not is_pii(name)


def test_small_integer_ids_are_not_reversible_without_the_key() -> None:
    """An unkeyed sha256 of lms_user_id is a lookup table over a few million integers; the
    keyed HMAC matches no such table, and only the key holder can rebuild it."""
    policy = PiiPolicy(PiiMode.HASH, KEY.encode())
    ids = range(10_000, 12_000)
    out = [policy.apply(row(lms_user_id=i, enterprise_user_id=i))["lms_user_id"] for i in ids]
    table = {hashlib.sha256(str(i).encode()).hexdigest() for i in ids}
    assert table.isdisjoint(out)
    assert out == [mac(str(i)) for i in ids]
    other = PiiPolicy(PiiMode.HASH, (KEY + "x").encode())
    assert {other.hash_value(i) for i in ids}.isdisjoint(out)
