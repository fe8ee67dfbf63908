"""Content negotiation, the XML renderer's shape, and learner-summary rows."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import orjson
import pytest
from simkit import Sim, SimFactory

from harvester.sim.render import negotiate, xml_bytes

LEARNER_FIELDS = [
    "enrollment_id",
    "enterprise_enrollment_id",
    "is_consent_granted",
    "paid_by",
    "user_current_enrollment_mode",
    "enrollment_date",
    "unenrollment_date",
    "unenrollment_end_within_date",
    "is_refunded",
    "seat_delivery_method",
    "offer_id",
    "offer_name",
    "offer_type",
    "coupon_code",
    "coupon_name",
    "contract_id",
    "course_list_price",
    "amount_learner_paid",
    "course_key",
    "courserun_key",
    "course_title",
    "course_pacing_type",
    "course_start_date",
    "course_end_date",
    "course_duration_weeks",
    "course_max_effort",
    "course_min_effort",
    "course_primary_program",
    "primary_program_type",
    "course_primary_subject",
    "has_passed",
    "last_activity_date",
    "progress_status",
    "passed_date",
    "current_grade",
    "letter_grade",
    "enterprise_user_id",
    "user_email",
    "user_account_creation_date",
    "user_country_code",
    "user_username",
    "user_first_name",
    "user_last_name",
    "enterprise_name",
    "enterprise_customer_uuid",
    "enterprise_sso_uid",
    "created",
    "course_api_url",
    "total_learning_time_hours",
    "is_subsidy",
    "course_product_line",
    "budget_id",
    "enterprise_flex_group_name",
    "enterprise_flex_group_uuid",
    "course_progress",
    "course_passing_grade",
]


def learners_path(sim: Sim, enterprise: str | None = None) -> str:
    ent = enterprise or sim.srv.enterprise_uuid
    return f"/enterprise/v3/enterprise-customer/{ent}/learner-summary"


def test_xml_renderer_shape() -> None:
    body = xml_bytes({"a": True, "b": False, "c": None, "d": [1, {"e": "x<y&z"}], "f": 1.5})
    assert body == (
        b'<?xml version="1.0" encoding="utf-8"?>\n<root><a>True</a><b>False</b><c></c>'
        b"<d><list-item>1</list-item><list-item><e>x&lt;y&amp;z</e></list-item></d>"
        b"<f>1.5</f></root>"
    )


@pytest.mark.parametrize(
    ("accept", "mode", "xml_capable", "expected"),
    [
        (None, "doc", True, "xml"),
        ("*/*", "doc", True, "xml"),
        ("application/json", "doc", True, "json"),
        ("text/html, application/json;q=0.9", "doc", True, "json"),
        (None, "backend", True, "json"),
        ("*/*", "backend", True, "json"),
        ("application/xml", "backend", True, "xml"),
        ("text/csv", "backend", True, None),
        ("application/xml", "doc", False, None),
        (None, "doc", False, "json"),
    ],
)
def test_negotiation(accept: str | None, mode: str, xml_capable: bool, expected: str) -> None:
    assert negotiate(accept, mode, xml_capable).kind == expected


async def test_xml_is_the_default(sim: Sim) -> None:
    resp = await sim.get(sim.content_path(), headers=sim.headers(accept=None), page_size=3)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/xml; charset=utf-8"
    raw = await resp.read()
    assert raw.startswith(b'<?xml version="1.0" encoding="utf-8"?>\n<root><next>http')
    assert b"<previous></previous><count>120</count><num_pages>40</num_pages>" in raw
    assert b"<current_page>1</current_page><start>0</start><results><list-item>" in raw
    assert raw.count(b"<aggregation_key>") == 3
    # Booleans as True/False; null as an empty element.
    assert b">True</" in raw
    assert b"<parent_content_key></parent_content_key>" in raw or b"<end></end>" in raw
    # Like drf-xml, dict keys become element names verbatim, even run keys
    # (normalized_metadata_by_run), which makes the real XML ill-formed for courses.
    if b"<normalized_metadata_by_run>" in raw:
        assert b"<course-v1:" in raw


async def test_xml_catalog_list_parses(sim: Sim) -> None:
    resp = await sim.get("/enterprise/v1/enterprise-catalogs", headers=sim.headers(accept=None))
    root = ET.fromstring(await resp.read())
    tags = [child.tag for child in root]
    assert tags == ["next", "previous", "count", "num_pages", "current_page", "start", "results"]
    assert root.findtext("next") == ""
    assert root.findtext("count") == "2"
    results = root.find("results")
    assert results is not None
    assert [child.tag for child in results] == ["list-item"] * 2


async def test_json_when_asked_and_backend_mode(make_sim: SimFactory) -> None:
    sim = await make_sim()
    resp = await sim.get(sim.content_path(), headers=sim.headers("application/json"))
    assert resp.content_type == "application/json"
    backend = await make_sim(accept_mode="backend")
    resp = await backend.get(backend.content_path(), headers=backend.headers(accept=None))
    assert resp.content_type == "application/json"
    resp = await backend.get(backend.content_path(), headers=backend.headers("application/xml"))
    assert resp.content_type == "application/xml"
    resp = await backend.get(backend.content_path(), headers=backend.headers("text/csv"))
    assert resp.status == 406


async def test_learner_summary_rows(sim: Sim) -> None:
    body = await sim.get_json(learners_path(sim), page_size=60)
    assert list(body) == ["count", "next", "previous", "results"]
    assert body["count"] == 60
    rows = body["results"]
    assert all(list(row) == LEARNER_FIELDS for row in rows)
    dates = [row["last_activity_date"] for row in rows]
    present = [d for d in dates if d is not None]
    assert present == sorted(present, reverse=True)
    assert dates[-1] is None
    assert all(d is None for d in dates[len(present) :])
    assert all(row["user_email"].endswith("@example.com") for row in rows)
    assert {row["enterprise_customer_uuid"] for row in rows} == {sim.srv.enterprise_uuid}


async def test_learner_summary_ties(make_sim: SimFactory) -> None:
    sim = await make_sim(learners=2000, rate_learners="0")
    body = await sim.get_json(learners_path(sim), page_size=5000)
    rows = body["results"]
    assert len(rows) == 1000  # learner_max_page_size
    dates = [r["last_activity_date"] for r in rows]
    assert len(set(dates)) < len(dates) // 2  # many ties
    assert len((await sim.get_json(learners_path(sim)))["results"]) == 10


async def test_learner_summary_rejects_xml_and_other_enterprises(sim: Sim) -> None:
    resp = await sim.get(learners_path(sim), headers=sim.headers("application/xml"))
    assert resp.status == 406
    body = orjson.loads(await resp.read())
    assert body == {"detail": "Could not satisfy the request Accept header."}
    resp = await sim.get(learners_path(sim, sim.srv.catalog_uuids[0]))
    assert resp.status == 403
    assert "detail" in orjson.loads(await resp.read())
    # Without Accept the learner endpoint answers JSON (it has no XML renderer).
    resp = await sim.get(learners_path(sim), headers=sim.headers(accept=None))
    assert resp.content_type == "application/json"
