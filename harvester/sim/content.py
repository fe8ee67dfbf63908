"""Field-level generation of catalog content items (course, courserun, program, pathway).

An item is a pure function of its global id ``gid``, its *version* (how many real changes
it has had) and the *epoch* (which only moves volatile fields: ``modified``,
``content_last_modified``, enrollment counts, ratings). Identity (type and key) is cheap
and parseable back to the ``gid``, so detail lookups never scan a catalog.
"""

from __future__ import annotations

import random
import re
import uuid
from typing import Any, Final

from harvester.sim import vocab
from harvester.sim.hashing import BASE_TIME, days, iso, mix, rand_uuid, unit

__all__ = ["DETAIL_DROPPED_FIELDS", "Content"]

Json = dict[str, Any]

# Purpose tags keep the hash streams of different decisions independent.
_T_TYPE, _T_ORG, _T_NUM, _T_RUN, _T_ITEM, _T_UUID, _T_VOL, _T_MASK = range(100, 108)

# Detail endpoints serve live "discovery" payloads: none of the catalog service's additions.
DETAIL_DROPPED_FIELDS: Final = frozenset(
    {
        "content_type",
        "aggregation_key",
        "content_last_modified",
        "active",
        "xapi_activity_id",
        "normalized_metadata",
        "normalized_metadata_by_run",
        "parent_content_key",
    }
)

_NUM_RE: Final = re.compile(r"^([A-Za-z]+)(\d+)([A-Za-z]*)$")


class Content:
    """Generates items for one simulated world (one seed, one enterprise)."""

    def __init__(self, seed: int, enterprise_uuid: str, enterprise_slug: str) -> None:
        self.seed = seed
        self.enterprise_uuid = enterprise_uuid
        self.slug = enterprise_slug
        self._mask = mix(seed, _T_MASK) & ((1 << 62) - 1)

    # -- identity ----------------------------------------------------------------------------
    def content_type(self, gid: int) -> str:
        """60% course, 25% courserun, 12% program, 3% learnerpathway, by hash of the id."""
        bucket = mix(self.seed, _T_TYPE, gid) % 100
        if bucket < 60:
            return "course"
        if bucket < 85:
            return "courserun"
        return "program" if bucket < 97 else "learnerpathway"

    def course_key(self, gid: int) -> str:
        """``Org+Num`` for a course or a courserun's parent course; the number embeds ``gid``."""
        h = mix(self.seed, _T_NUM, gid)
        org = vocab.ORGS[mix(self.seed, _T_ORG, gid) % len(vocab.ORGS)]
        prefix = vocab.PREFIXES[h % len(vocab.PREFIXES)]
        suffix = vocab.SUFFIXES[(h >> 8) % len(vocab.SUFFIXES)]
        return f"{org}+{prefix}{gid}{suffix}"

    def run_key(self, gid: int, run: str) -> str:
        """``course-v1:Org+Num+Run``."""
        return f"course-v1:{self.course_key(gid)}+{run}"

    def entity_uuid(self, gid: int) -> str:
        """UUID of a program or pathway; its low bits carry ``gid`` so it can be parsed back."""
        hi = (mix(self.seed, _T_UUID, gid) & ~(0xF << 12)) | (0x4 << 12)  # version 4 nibble
        lo = (0b10 << 62) | (gid ^ self._mask)  # RFC 4122 variant bits, then the id
        return str(uuid.UUID(int=(hi << 64) | lo))

    def content_key(self, gid: int) -> str:
        """What the catalog service calls ``content_key``: ``key``, or ``uuid`` if keyless."""
        ctype = self.content_type(gid)
        if ctype == "course":
            return self.course_key(gid)
        if ctype == "courserun":
            return self.run_key(gid, self._single_run(gid))
        return self.entity_uuid(gid)

    def gid_from_course_key(self, key: str) -> int | None:
        """Inverse of :meth:`course_key` (``None`` if the key was never generated)."""
        _org, plus, number = key.partition("+")
        match = _NUM_RE.match(number) if plus else None
        if match is None:
            return None
        gid = int(match.group(2))
        return gid if self.course_key(gid) == key else None

    def gid_from_uuid(self, text: str) -> int | None:
        """Inverse of :meth:`entity_uuid`."""
        try:
            value = uuid.UUID(text).int
        except ValueError:
            return None
        gid = (value & ((1 << 62) - 1)) ^ self._mask
        return gid if self.entity_uuid(gid) == text.lower() else None

    # -- items -------------------------------------------------------------------------------
    def item(self, gid: int, version: int, changed_epoch: int, epoch: int) -> Json:
        """The catalog-listing form of item ``gid`` (as served by enterprise-catalog)."""
        ctype = self.content_type(gid)
        rnd = random.Random(mix(self.seed, _T_ITEM, gid))
        if ctype == "course":
            body = self._course(gid, rnd, version)
        elif ctype == "courserun":
            body = self._courserun(gid, rnd, version)
        elif ctype == "program":
            body = self._program(gid, rnd, version)
        else:
            body = self._pathway(gid, rnd, version)
        stamp = BASE_TIME + days(epoch) + days(unit(self.seed, _T_VOL, gid, epoch) / 24)
        # The catalog service bumps these on every refresh whether or not anything changed.
        body["modified"] = iso(stamp)
        body["content_last_modified"] = iso(stamp + days(1 / 48))
        body["data_modified_timestamp"] = iso(BASE_TIME + days(changed_epoch))
        if ctype in {"course", "courserun"}:
            # Volatile counters drift daily; they are not "real" changes.
            vol = random.Random(mix(self.seed, _T_VOL, gid, epoch, 1))
            base = mix(self.seed, _T_VOL, gid) % 400_000
            body["enrollment_count"] = base + epoch * vol.randint(0, 40)
            body["recent_enrollment_count"] = vol.randint(0, 900)
            if ctype == "course":
                body["avg_course_rating"] = round(vol.uniform(3.2, 5.0), 2)
                body["reviews_count"] = vol.randint(0, 5000)
        return body

    def detail(self, listed: Json, catalog_uuid: str) -> Json:
        """The live "discovery" form of a listed item, as the LMS detail endpoints return it."""
        out = {k: v for k, v in listed.items() if k not in DETAIL_DROPPED_FIELDS}
        ctype = listed["content_type"]
        ident = listed["uuid"] if ctype == "program" else listed["key"]
        kind = "program" if ctype == "program" else "course"
        out["marketing_url"] = _strip_query(listed["marketing_url"])
        out["enrollment_url"] = self._enroll(kind, ident, catalog_uuid)
        if "course_runs" in out:
            out["course_runs"] = [self._detail_run(r, catalog_uuid) for r in out["course_runs"]]
        if "courses" in out:
            courses = []
            for course in out["courses"]:
                course = {k: v for k, v in course.items() if k not in DETAIL_DROPPED_FIELDS}
                course["enrollment_url"] = self._enroll("course", course["key"], catalog_uuid)
                course["course_runs"] = [
                    self._detail_run(r, catalog_uuid) for r in course["course_runs"]
                ]
                courses.append(course)
            out["courses"] = courses
        return out

    def _detail_run(self, run: Json, catalog_uuid: str) -> Json:
        out = {k: v for k, v in run.items() if k not in DETAIL_DROPPED_FIELDS}
        if "marketing_url" in out:
            out["marketing_url"] = _strip_query(out["marketing_url"])
        out["enrollment_url"] = self._enroll("course", run["key"], catalog_uuid)
        return out

    def _enroll(self, kind: str, ident: str, catalog_uuid: str) -> str:
        return (
            f"https://courses.edx.org/enterprise/{self.enterprise_uuid}/{kind}/{ident}/enroll/"
            f"?catalog={catalog_uuid}&utm_medium=enterprise&utm_source={self.slug}"
        )

    def _utm(self, url: str) -> str:
        return f"{url}?utm_medium=enterprise&utm_source={self.slug}"

    def _single_run(self, gid: int) -> str:
        h = mix(self.seed, _T_RUN, gid)
        return f"{h % 3 + 1}T{2019 + (h >> 4) % 8}"

    def _title(self, rnd: random.Random) -> str:
        if rnd.random() < 0.2:
            return rnd.choice(vocab.UNICODE_TITLES)
        return rnd.choice(vocab.FORMS).format(t=rnd.choice(vocab.TOPICS))

    def _texts(self, rnd: random.Random, version: int) -> tuple[str, str]:
        # A version bump always picks the next sentence, so a real change really changes.
        first = rnd.randrange(len(vocab.SENTENCES))
        short = vocab.SENTENCES[(first + version) % len(vocab.SENTENCES)]
        extra = rnd.choice(vocab.SENTENCES)
        full = f"<p>{short}</p>\n<ul><li>{extra}</li><li>Revision {version}</li></ul>"
        return f"<p>{short}</p>", full

    def _run(self, gid: int, rnd: random.Random, run: str, version: int, course_key: str) -> Json:
        start = BASE_TIME + days(rnd.randint(-900, 400))
        weeks = rnd.randint(4, 16)
        end = None if rnd.random() < 0.12 else iso(start + days(7 * (weeks + version)))
        enroll_end = None if rnd.random() < 0.5 else iso(start + days(7 * weeks - 7))
        key = self.run_key(gid, run)
        status = "published"
        availability = "Upcoming" if start > BASE_TIME else "Current"
        return {
            "key": key,
            "title": None,  # filled by the caller (runs share the course title)
            "start": iso(start),
            "end": end,
            "enrollment_start": iso(start - days(30)),
            "enrollment_end": enroll_end,
            "pacing_type": rnd.choice(("self_paced", "instructor_paced")),
            "type": rnd.choice(("verified", "audit", "professional")),
            "status": status,
            "availability": availability,
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

    def _course(self, gid: int, rnd: random.Random, version: int) -> Json:
        key = self.course_key(gid)
        title = self._title(rnd)
        short, full = self._texts(rnd, version)
        year0 = 2019 + rnd.randint(0, 4)
        names = [f"{t % 3 + 1}T{year0 + t // 3}" for t in range(rnd.randint(1, 4))]
        runs = [self._run(gid, rnd, name, version, key) for name in names]
        for run in runs:
            run["title"] = title
        org = key.split("+", 1)[0]
        latest = runs[-1]
        normalized = {
            "start_date": latest["start"],
            "end_date": latest["end"],
            "enroll_by_date": latest["enrollment_end"],
            "enroll_start_date": latest["enrollment_start"],
            "content_price": float(latest["seats"][0]["price"]),
        }
        return {
            "aggregation_key": f"course:{key}",
            "content_type": "course",
            "key": key,
            "uuid": rand_uuid(self.seed, _T_ITEM, gid),
            "title": title,
            "course_runs": runs,
            "enrollment_url": self._utm(f"https://enterprise.edx.org/{self.slug}/course/{key}"),
            "entitlements": [
                {
                    "mode": "verified",
                    "price": latest["seats"][0]["price"],
                    "currency": "USD",
                    "sku": f"E{gid:X}",
                }
            ],
            "expected_learning_items": [rnd.choice(vocab.SENTENCES) for _ in range(3)],
            "full_description": full,
            "image": {
                "src": f"https://prod-discovery.edx-cdn.org/media/course/image/{gid}.jpg",
                "description": None,
                "height": 675,
                "width": 1200,
            },
            "level_type": rnd.choice(vocab.LEVELS),
            "marketing_url": self._utm(f"https://www.edx.org/learn/{_slug(key)}"),
            "original_image": f"https://prod-discovery.edx-cdn.org/media/course/image/{gid}.png",
            "outcome": f"<ul><li>{rnd.choice(vocab.SENTENCES)}</li></ul>",
            "owners": [
                {
                    "uuid": rand_uuid(self.seed, _T_ORG, vocab.ORGS.index(org)),
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

    def _courserun(self, gid: int, rnd: random.Random, version: int) -> Json:
        course_key = self.course_key(gid)
        name = self._single_run(gid)
        run = self._run(gid, rnd, name, version, course_key)
        short, full = self._texts(rnd, version)
        org, number = course_key.split("+", 1)
        return {
            "aggregation_key": f"courserun:{course_key}",
            "content_type": "courserun",
            "key": run["key"],
            "title": self._title(rnd),
            "authoring_organization_uuids": [rand_uuid(self.seed, _T_ORG, gid)],
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
            "subject_uuids": [rand_uuid(self.seed, _T_TYPE, rnd.randint(0, 6))],
            "transcript_languages": ["en"] if rnd.random() < 0.7 else [],
            "type": run["type"],
            "weeks_to_complete": run["weeks_to_complete"],
            "parent_content_key": course_key,
            "xapi_activity_id": f"https://www.edx.org/xapi/activities/courserun/{run['key']}",
        }

    def _program(self, gid: int, rnd: random.Random, version: int) -> Json:
        ident = self.entity_uuid(gid)
        title = rnd.choice(vocab.TOPICS)
        ptype = rnd.choice(vocab.PROGRAM_TYPES)
        short, _full = self._texts(rnd, version)
        courses = []
        for i in range(rnd.randint(2, 4)):
            member = gid * 8 + i  # member keys live outside the item space on purpose
            ckey = self.course_key(member)
            courses.append(
                {
                    "key": ckey,
                    "uuid": rand_uuid(self.seed, _T_ITEM, member),
                    "title": f"{title} {i + 1}",
                    "short_description": short,
                    "course_runs": [
                        {
                            "key": self.run_key(member, "1T2025"),
                            "start": iso(BASE_TIME),
                            "end": None,
                            "type": "verified",
                            "status": "published",
                        }
                    ],
                }
            )
        orgs = [
            {
                "uuid": rand_uuid(self.seed, _T_ORG, gid),
                "key": rnd.choice(vocab.ORGS),
                "name": rnd.choice(vocab.ORGS),
            }
        ]
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
            "subject_uuids": [rand_uuid(self.seed, _T_TYPE, rnd.randint(0, 6))],
            "weeks_to_complete_max": rnd.randint(20, 40) + version,
            "weeks_to_complete_min": rnd.randint(8, 19),
            "courses": courses,
            "parent_content_key": None,
        }

    def _pathway(self, gid: int, rnd: random.Random, version: int) -> Json:
        ident = self.entity_uuid(gid)
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
                    "courses": [self.course_key(gid * 8 + i)],
                    "programs": [],
                }
                for i in range(rnd.randint(1, 3))
            ],
            "visible_via_association": True,
            "created": iso(BASE_TIME - days(rnd.randint(30, 900))),
            "parent_content_key": None,
        }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _strip_query(url: str | None) -> str | None:
    return None if url is None else url.split("?", 1)[0]
