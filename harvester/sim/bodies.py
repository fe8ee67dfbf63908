"""The listing form of each content type (course, courserun, program, pathway).

A body is a pure function of the item's ``gid``, its *version* (how many real changes it
has had) and the item's own random stream, drawn in a fixed order: reordering a field or
a draw changes every generated world, so each builder keeps the served key order and
draws top-down. This module owns only the version-dependent fields: the volatile ones
(``modified``, counters, ratings) and the detail form are :mod:`.content`'s.
"""

from __future__ import annotations

import random
import re
from typing import Any

from harvester.sim import vocab
from harvester.sim.hashing import BASE_TIME, days, iso, rand_uuid
from harvester.sim.keys import T_ITEM, T_ORG, T_TYPE, ContentKeys

__all__ = ["ItemBodies"]

Json = dict[str, Any]


class ItemBodies:
    """Builds listing bodies for one simulated world (one seed, one enterprise slug)."""

    def __init__(self, keys: ContentKeys, enterprise_slug: str) -> None:
        self.keys = keys
        self.seed = keys.seed
        self.slug = enterprise_slug

    def build(self, gid: int, rnd: random.Random, version: int) -> Json:
        """The body of ``gid`` for its content type."""
        ctype = self.keys.content_type(gid)
        if ctype == "course":
            return self.course(gid, rnd, version)
        if ctype == "courserun":
            return self.courserun(gid, rnd, version)
        if ctype == "program":
            return self.program(gid, rnd, version)
        return self.pathway(gid, rnd, version)

    # -- course ------------------------------------------------------------------------------
    def course(self, gid: int, rnd: random.Random, version: int) -> Json:
        """A course with one to four runs; its summary fields follow the latest run."""
        key = self.keys.course_key(gid)
        title = self._title(rnd)
        short, full = self._texts(rnd, version)
        year0 = 2019 + rnd.randint(0, 4)
        names = [f"{t % 3 + 1}T{year0 + t // 3}" for t in range(rnd.randint(1, 4))]
        runs = [self._run(gid, rnd, name, version, key) for name in names]
        for run in runs:
            run["title"] = title
        return {
            **self._course_offer(gid, key, title, runs),
            **self._course_copy(gid, rnd, key, short, full),
            **self._course_schedule(key, runs),
        }

    def _course_offer(self, gid: int, key: str, title: str, runs: list[Json]) -> Json:
        """Identity, runs and the entitlement priced as the latest run's seat."""
        return {
            "aggregation_key": f"course:{key}",
            "content_type": "course",
            "key": key,
            "uuid": rand_uuid(self.seed, T_ITEM, gid),
            "title": title,
            "course_runs": runs,
            "enrollment_url": self._utm(f"https://enterprise.edx.org/{self.slug}/course/{key}"),
            "entitlements": [
                {
                    "mode": "verified",
                    "price": runs[-1]["seats"][0]["price"],
                    "currency": "USD",
                    "sku": f"E{gid:X}",
                }
            ],
        }

    def _course_copy(self, gid: int, rnd: random.Random, key: str, short: str,
                     full: str) -> Json:
        """The marketing page: descriptions, media, owner, subjects, syllabus."""
        org = key.split("+", 1)[0]
        media = "https://prod-discovery.edx-cdn.org/media/course/image"
        return {
            "expected_learning_items": [rnd.choice(vocab.SENTENCES) for _ in range(3)],
            "full_description": full,
            "image": {"src": f"{media}/{gid}.jpg", "description": None, "height": 675,
                      "width": 1200},
            "level_type": rnd.choice(vocab.LEVELS),
            "marketing_url": self._utm(f"https://www.edx.org/learn/{_slug(key)}"),
            "original_image": f"{media}/{gid}.png",
            "outcome": f"<ul><li>{rnd.choice(vocab.SENTENCES)}</li></ul>",
            "owners": [
                {
                    "uuid": rand_uuid(self.seed, T_ORG, vocab.ORGS.index(org)),
                    "key": org,
                    "name": org.replace("x", "").replace("X", ""),
                }
            ],
            "prerequisites": [],
            "prerequisites_raw": "" if rnd.random() < 0.7 else "High-school algebra.",
            "programs": [],
            "short_description": short,
            "sponsors": [],
            "subjects": [{"name": rnd.choice(vocab.SUBJECTS)}],
            "syllabus_raw": "\n".join(f"Week {w}: {rnd.choice(vocab.TOPICS)}" for w in (1, 2)),
            "video": {"src": f"https://www.youtube.com/watch?v={gid:011X}", "image": None},
        }

    @staticmethod
    def _course_schedule(key: str, runs: list[Json]) -> Json:
        """The catalog service's additions, summarising the latest run."""
        latest = runs[-1]
        normalized = {
            "start_date": latest["start"],
            "end_date": latest["end"],
            "enroll_by_date": latest["enrollment_end"],
            "enroll_start_date": latest["enrollment_start"],
            "content_price": float(latest["seats"][0]["price"]),
        }
        return {
            "parent_content_key": None,
            "active": True,
            "xapi_activity_id": f"https://www.edx.org/xapi/activities/course/{key}",
            "seat_types": ["audit", "verified"],
            "end_date": latest["end"],
            "course_ends": "Future" if latest["end"] else "Past",
            "languages": [latest["language"]],
            "normalized_metadata": normalized,
            "normalized_metadata_by_run": {run["key"]: normalized for run in runs[-1:]},
        }

    def _run(self, gid: int, rnd: random.Random, run: str, version: int, course_key: str) -> Json:
        start = BASE_TIME + days(rnd.randint(-900, 400))
        weeks = rnd.randint(4, 16)
        end = None if rnd.random() < 0.12 else iso(start + days(7 * (weeks + version)))
        enroll_end = None if rnd.random() < 0.5 else iso(start + days(7 * weeks - 7))
        return {
            "key": self.keys.run_key(gid, run),
            "title": None,  # filled by the caller (runs share the course title)
            "start": iso(start),
            "end": end,
            "enrollment_start": iso(start - days(30)),
            "enrollment_end": enroll_end,
            "pacing_type": rnd.choice(("self_paced", "instructor_paced")),
            "type": rnd.choice(("verified", "audit", "professional")),
            "status": "published",
            "availability": "Upcoming" if start > BASE_TIME else "Current",
            "is_enrollable": True,
            "is_marketable": True,
            "min_effort": rnd.randint(1, 4),
            "max_effort": rnd.randint(5, 10),
            "weeks_to_complete": weeks,
            "language": rnd.choice(vocab.LANGS),
            "marketing_url": self._utm(f"https://www.edx.org/learn/{_slug(course_key)}/{run}"),
            "seats": [
                {
                    "type": "verified",
                    "price": f"{rnd.choice((49, 99, 199, 349))}.00",
                    "currency": "USD",
                    "upgrade_deadline": enroll_end,
                    "sku": f"{gid:X}{run}",
                }
            ],
            "parent_content_key": course_key,
        }

    # -- courserun ---------------------------------------------------------------------------
    def courserun(self, gid: int, rnd: random.Random, version: int) -> Json:
        """A single run listed on its own, under its parent course's key."""
        course_key = self.keys.course_key(gid)
        name = self.keys.single_run(gid)
        run = self._run(gid, rnd, name, version, course_key)
        short, full = self._texts(rnd, version)
        org, number = course_key.split("+", 1)
        return {
            "aggregation_key": f"courserun:{course_key}",
            "content_type": "courserun",
            "key": run["key"],
            "title": self._title(rnd),
            "authoring_organization_uuids": [rand_uuid(self.seed, T_ORG, gid)],
            "availability": run["availability"],
            "end": run["end"],
            "enrollment_end": run["enrollment_end"],
            "enrollment_start": run["enrollment_start"],
            "enrollment_url": self._utm(
                f"https://enterprise.edx.org/{self.slug}/course/{course_key}"
            ),
            "full_description": full,
            "has_enrollable_seats": rnd.random() < 0.9,
            "image_url": f"https://courses.edx.org/asset-v1:{org}+{number}+{name}+type@asset",
            "language": run["language"],
            "level_type": rnd.choice(vocab.LEVELS),
            "logo_image_urls": [f"https://www.edx.org/files/school/logo/{_slug(org)}.png"],
            "marketing_url": run["marketing_url"],
            "max_effort": run["max_effort"],
            "min_effort": run["min_effort"],
            "mobile_available": rnd.random() < 0.8,
            "number": number,
            "org": org,
            "pacing_type": run["pacing_type"],
            "partner": "edx",
            "program_types": [] if rnd.random() < 0.6 else [rnd.choice(vocab.PROGRAM_TYPES)],
            "published": True,
            "seat_types": ["audit", run["type"]],
            "short_description": short,
            "staff_uuids": [rand_uuid(self.seed, gid, i) for i in range(rnd.randint(0, 3))],
            "start": run["start"],
            "subject_uuids": [rand_uuid(self.seed, T_TYPE, rnd.randint(0, 6))],
            "transcript_languages": ["en"] if rnd.random() < 0.7 else [],
            "type": run["type"],
            "weeks_to_complete": run["weeks_to_complete"],
            "parent_content_key": course_key,
            "xapi_activity_id": f"https://www.edx.org/xapi/activities/courserun/{run['key']}",
        }

    # -- program and pathway -----------------------------------------------------------------
    def program(self, gid: int, rnd: random.Random, version: int) -> Json:
        """A program of two to four member courses outside the item space."""
        ident = self.keys.entity_uuid(gid)
        title = rnd.choice(vocab.TOPICS)
        ptype = rnd.choice(vocab.PROGRAM_TYPES)
        short, _full = self._texts(rnd, version)
        courses = [self._program_course(gid * 8 + i, f"{title} {i + 1}", short)
                   for i in range(rnd.randint(2, 4))]
        orgs = [{"uuid": rand_uuid(self.seed, T_ORG, gid), "key": rnd.choice(vocab.ORGS),
                 "name": rnd.choice(vocab.ORGS)}]
        return {
            "aggregation_key": f"program:{ident}",
            "content_type": "program",
            "uuid": ident,
            "title": f"{ptype} in {title}",
            "subtitle": short,
            "type": ptype,
            "authoring_organization_uuids": [o["uuid"] for o in orgs],
            "authoring_organizations": orgs,
            "card_image_url": f"https://prod-discovery.edx-cdn.org/media/programs/{ident}.jpg",
            "enrollment_url": None,
            "language": [rnd.choice(vocab.LANGS)],
            "marketing_url": self._utm(f"https://www.edx.org/{_slug(ptype)}/{_slug(title)}"),
            "max_hours_effort_per_week": rnd.randint(6, 12),
            "min_hours_effort_per_week": rnd.randint(2, 5),
            "partner": "edx",
            "published": True,
            "staff_uuids": [rand_uuid(self.seed, gid, 9)],
            "subject_uuids": [rand_uuid(self.seed, T_TYPE, rnd.randint(0, 6))],
            "weeks_to_complete_max": rnd.randint(20, 40) + version,
            "weeks_to_complete_min": rnd.randint(8, 19),
            "courses": courses,
            "parent_content_key": None,
        }

    def _program_course(self, member: int, title: str, short: str) -> Json:
        # Member ids (gid * 8 + i) lie outside the item space on purpose: no draws here.
        return {
            "key": self.keys.course_key(member),
            "uuid": rand_uuid(self.seed, T_ITEM, member),
            "title": title,
            "short_description": short,
            "course_runs": [
                {
                    "key": self.keys.run_key(member, "1T2025"),
                    "start": iso(BASE_TIME),
                    "end": None,
                    "type": "verified",
                    "status": "published",
                }
            ],
        }

    def pathway(self, gid: int, rnd: random.Random, version: int) -> Json:
        """A learner pathway: one to three steps of one course each."""
        ident = self.keys.entity_uuid(gid)
        short, _full = self._texts(rnd, version)
        return {
            "aggregation_key": f"learnerpathway:{ident}",
            "content_type": "learnerpathway",
            "uuid": ident,
            "title": rnd.choice(vocab.PATHWAY_TITLES),
            "overview": short,
            "status": "active",
            "card_image_url": f"https://prod-discovery.edx-cdn.org/media/pathways/{ident}.jpg",
            "steps": [
                {
                    "uuid": rand_uuid(self.seed, gid, 20 + i),
                    "min_requirement": 1,
                    "courses": [self.keys.course_key(gid * 8 + i)],
                    "programs": [],
                }
                for i in range(rnd.randint(1, 3))
            ],
            "visible_via_association": True,
            "created": iso(BASE_TIME - days(rnd.randint(30, 900))),
            "parent_content_key": None,
        }

    # -- shared pieces -----------------------------------------------------------------------
    def _utm(self, url: str) -> str:
        return f"{url}?utm_medium=enterprise&utm_source={self.slug}"

    @staticmethod
    def _title(rnd: random.Random) -> str:
        if rnd.random() < 0.2:
            return rnd.choice(vocab.UNICODE_TITLES)
        return rnd.choice(vocab.FORMS).format(t=rnd.choice(vocab.TOPICS))

    @staticmethod
    def _texts(rnd: random.Random, version: int) -> tuple[str, str]:
        # A version bump always picks the next sentence, so a real change really changes.
        first = rnd.randrange(len(vocab.SENTENCES))
        short = vocab.SENTENCES[(first + version) % len(vocab.SENTENCES)]
        extra = rnd.choice(vocab.SENTENCES)
        full = f"<p>{short}</p>\n<ul><li>{extra}</li><li>Revision {version}</li></ul>"
        return f"<p>{short}</p>", full


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
