"""Learner-summary rows: one enrollment of one learner per row, for every tenant.

Row ``i`` is a pure function of ``(seed, i, epoch)``, listed in the endpoint's default
``-last_activity_date`` order. Its fields come from one random stream drawn in a fixed
order: reordering a field or a draw changes every generated world, so :class:`_Draw`
takes the draws that several fields share, then each block draws its own top-down, in
the served key order. This module owns learner rows only; catalogs are :mod:`.data`'s.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from harvester.sim.config import SimConfig
from harvester.sim.content import Content
from harvester.sim.hashing import BASE_TIME, days, iso, iso_date, mix, unit

__all__ = ["LearnerRows"]

Json = dict[str, Any]

#: The learners' purpose tag (the dataset's tags are its neighbours, 200..206).
_T_LEARN: Final = 205
#: Learner rows of tenant t are rows t * this onward (an offset, so no two tenants share
#: a learner and tenant 0's rows stay what they always were).
_TENANT_LEARNERS: Final = 10**8

_FIRST: Final = (
    "Amélie",
    "Bjørn",
    "Chen",
    "Dana",
    "Émile",
    "Fatima",
    "Giulia",
    "Hiroshi",
    "Ines",
    "José",
    "Kwame",
    "Lena",
    "Mateo",
    "Nadia",
    "Oğuz",
    "Priya",
    "Zoë",
)
_LAST: Final = (
    "Álvarez",
    "Brown",
    "Nguyễn",
    "Dubois",
    "Eriksen",
    "Fischer",
    "García",
    "Horvát",
    "Ivanova",
    "Jäger",
    "Kowalski",
    "Li",
    "Müller",
    "O'Brien",
    "Sato",
)
_COUNTRIES: Final = ("US", "GB", "DE", "FR", "IN", "BR", "JP", "CN", "ES", "NG", "CA", None)


@dataclass(frozen=True, slots=True)
class _Draw:
    """What several blocks of one row share."""

    i: int
    today: datetime
    last_activity: str | None
    first: str
    last: str
    user_id: int
    gid: int
    course_key: str
    run: str
    enrolled: datetime
    start: datetime
    passed: bool
    grade: float
    unenrolled: str | None
    price: str
    paid_by: str
    enrich_ok: bool


class LearnerRows:
    """The learner-summary rows of every tenant of one simulated world."""

    def __init__(self, cfg: SimConfig, content: Content, enterprise_name: str,
                 enterprises: Sequence[str]) -> None:
        """``enterprises[t]`` is tenant ``t``'s enterprise UUID (0: the main one)."""
        self.seed = cfg.seed
        self.learners = cfg.learners
        self.items = cfg.items
        self.content = content
        self.enterprise_name = enterprise_name
        self.enterprises = list(enterprises)

    def row(self, i: int, epoch: int, tenant: int = 0) -> Json:
        """Row ``i`` of learner-summary in its default ``-last_activity_date`` order (of
        ``tenant``'s enterprise: other learners, same shape)."""
        row = self._row(i if tenant == 0 else i + tenant * _TENANT_LEARNERS, epoch)
        if tenant:
            ent = self.enterprises[tenant]
            row["enterprise_customer_uuid"] = ent
            row["course_api_url"] = row["course_api_url"].replace(self.enterprises[0], ent)
            row["enterprise_name"] = f"Tenant {tenant} Ltd."
        return row

    def _row(self, i: int, epoch: int) -> Json:
        rnd = random.Random(mix(self.seed, _T_LEARN, i))
        d = self._draw(i, epoch, rnd)
        return {
            **self._enrollment(rnd, d),
            **self._course(rnd, d),
            **self._progress(rnd, d),
            **self._user(rnd, d),
            **self._enterprise(rnd, d),
        }

    def _draw(self, i: int, epoch: int, rnd: random.Random) -> _Draw:
        today = BASE_TIME + days(epoch)
        first, last = rnd.choice(_FIRST), rnd.choice(_LAST)
        gid = mix(self.seed, _T_LEARN, i, 2) % max(1, self.items)
        run = f"{rnd.randint(1, 3)}T{rnd.randint(2021, 2025)}"
        enrolled = BASE_TIME - days(rnd.randint(20, 700))
        start = enrolled + days(rnd.randint(-30, 30))
        passed = rnd.random() < 0.35
        grade = round(rnd.uniform(0.7, 1.0) if passed else rnd.uniform(0.0, 0.69), 2)
        unenrolled = None if rnd.random() < 0.9 else iso_date(enrolled + days(rnd.randint(1, 60)))
        price = rnd.choice(("49.00", "99.00", "199.00", "349.00"))
        paid_by = rnd.choice(("enterprise", "enterprise", "learner"))
        return _Draw(
            i=i, today=today, last_activity=self._last_activity(i, today), first=first,
            last=last, user_id=10_000 + (mix(self.seed, _T_LEARN, i, 1) % 900_000), gid=gid,
            course_key=self.content.course_key(gid), run=run, enrolled=enrolled, start=start,
            passed=passed, grade=grade, unenrolled=unenrolled, price=price, paid_by=paid_by,
            # Snowflake enrichment fails now and then: two fields are null transiently.
            enrich_ok=unit(self.seed, _T_LEARN, i, epoch, 3) >= 0.05,
        )

    def _last_activity(self, i: int, today: datetime) -> str | None:
        # Monotone in i with ~n/365 rows per day: many ties; the last tenth has no activity.
        n = self.learners
        i_rank = i % _TENANT_LEARNERS
        nonnull = n - n // 10
        return None if i_rank >= nonnull else iso_date(today - days(i_rank * 365 // nonnull))

    def _enrollment(self, rnd: random.Random, d: _Draw) -> Json:
        """The enrollment, its refund window, how the seat was paid for."""
        return {
            "enrollment_id": 5_000_000 + d.i * 7 + self.seed % 7,
            "enterprise_enrollment_id": 90_000 + d.i,
            "is_consent_granted": rnd.random() < 0.95,
            "paid_by": d.paid_by,
            "user_current_enrollment_mode": rnd.choice(("verified", "audit")),
            "enrollment_date": iso_date(d.enrolled),
            "unenrollment_date": d.unenrolled,
            "unenrollment_end_within_date": iso_date(d.enrolled + days(14)),
            "is_refunded": None if d.unenrolled is None else rnd.random() < 0.5,
            "seat_delivery_method": rnd.choice(("Subscription", "Learner Credit", "Coupon")),
            "offer_id": None if rnd.random() < 0.7 else str(rnd.randint(1000, 9999)),
            "offer_name": None,
            "offer_type": None,
            "coupon_code": None if rnd.random() < 0.8 else f"CODE{rnd.randint(1000, 9999)}",
            "coupon_name": None,
            "contract_id": None,
            "course_list_price": d.price,
            "amount_learner_paid": d.price if d.paid_by == "learner" else "0.00",
        }

    @staticmethod
    def _course(rnd: random.Random, d: _Draw) -> Json:
        """The course run enrolled in."""
        return {
            "course_key": d.course_key,
            "courserun_key": f"course-v1:{d.course_key}+{d.run}",
            "course_title": f"Course {d.gid}",
            "course_pacing_type": rnd.choice(("self_paced", "instructor_paced")),
            "course_start_date": iso(d.start),
            "course_end_date": iso(d.start + days(7 * rnd.randint(4, 16))),
            "course_duration_weeks": str(rnd.randint(4, 16)),
            "course_max_effort": rnd.randint(5, 10),
            "course_min_effort": rnd.randint(1, 4),
            "course_primary_program": None,
            "primary_program_type": None,
            "course_primary_subject": rnd.choice(("computer-science", "business", "data")),
        }

    @staticmethod
    def _progress(rnd: random.Random, d: _Draw) -> Json:
        """Activity, grade and outcome."""
        return {
            "has_passed": d.passed,
            "last_activity_date": d.last_activity,
            "progress_status": "Passed" if d.passed else rnd.choice(("In Progress", "Failed")),
            "passed_date": iso(d.start + days(40)) if d.passed else None,
            "current_grade": d.grade,
            "letter_grade": "Pass" if d.passed else "Fail",
        }

    @staticmethod
    def _user(rnd: random.Random, d: _Draw) -> Json:
        """The learner's account (the PII that ``--pii`` governs)."""
        username = f"learner{d.user_id}"
        return {
            "enterprise_user_id": d.user_id + 7,
            "user_email": f"{username}@example.com",
            "user_account_creation_date": iso(d.enrolled - days(rnd.randint(1, 900))),
            "user_country_code": rnd.choice(_COUNTRIES),
            "user_username": username,
            "user_first_name": d.first,
            "user_last_name": d.last,
        }

    def _enterprise(self, rnd: random.Random, d: _Draw) -> Json:
        """The enterprise's view: SSO, subsidy, budget, and the enriched fields."""
        return {
            "enterprise_name": self.enterprise_name,
            "enterprise_customer_uuid": self.enterprises[0],
            "enterprise_sso_uid": None if rnd.random() < 0.5 else f"sso|{d.user_id:x}",
            "created": iso(d.today),
            "course_api_url": (
                f"/enterprise/v1/enterprise-catalogs/{self.enterprises[0]}/courses/"
                f"course-v1:{d.course_key}+{d.run}"
            ),
            "total_learning_time_hours": round(rnd.uniform(0, 60), 1),
            "is_subsidy": d.paid_by == "enterprise",
            "course_product_line": rnd.choice(("OCM", "Executive Education", "Degree")),
            "budget_id": None,
            "enterprise_flex_group_name": None,
            "enterprise_flex_group_uuid": None,
            "course_progress": round(rnd.uniform(0, 1), 2) if d.enrich_ok else None,
            "course_passing_grade": 0.7 if d.enrich_ok else None,
        }
