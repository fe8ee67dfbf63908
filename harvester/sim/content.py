"""Catalog content items as served: the listing form per epoch, and the detail form.

An item is a pure function of its global id ``gid``, its *version* (how many real changes
it has had) and the *epoch* (which only moves volatile fields: ``modified``,
``content_last_modified``, enrollment counts, ratings). Identity lives in :mod:`.keys`
and the version-dependent fields in :mod:`.bodies`; this module adds the volatile fields
and derives the detail form. It keeps no state: caching is :mod:`.data`'s.
"""

from __future__ import annotations

import random
from typing import Any, Final

from harvester.sim.bodies import ItemBodies
from harvester.sim.hashing import BASE_TIME, days, iso, mix, unit
from harvester.sim.keys import T_ITEM, T_VOL, ContentKeys

__all__ = ["DETAIL_DROPPED_FIELDS", "Content"]

Json = dict[str, Any]

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


class Content(ContentKeys):
    """Generates items for one simulated world (one seed, one enterprise)."""

    def __init__(self, seed: int, enterprise_uuid: str, enterprise_slug: str) -> None:
        super().__init__(seed)
        self.enterprise_uuid = enterprise_uuid
        self.slug = enterprise_slug
        self._bodies = ItemBodies(self, enterprise_slug)

    def item(self, gid: int, version: int, changed_epoch: int, epoch: int) -> Json:
        """The catalog-listing form of item ``gid`` (as served by enterprise-catalog)."""
        body = self._bodies.build(gid, random.Random(mix(self.seed, T_ITEM, gid)), version)
        stamp = BASE_TIME + days(epoch) + days(unit(self.seed, T_VOL, gid, epoch) / 24)
        # The catalog service bumps these on every refresh whether or not anything changed.
        body["modified"] = iso(stamp)
        body["content_last_modified"] = iso(stamp + days(1 / 48))
        body["data_modified_timestamp"] = iso(BASE_TIME + days(changed_epoch))
        if body["content_type"] in {"course", "courserun"}:
            self._drift_counters(body, gid, epoch)
        return body

    def _drift_counters(self, body: Json, gid: int, epoch: int) -> None:
        # Volatile counters drift daily; they are not "real" changes.
        vol = random.Random(mix(self.seed, T_VOL, gid, epoch, 1))
        base = mix(self.seed, T_VOL, gid) % 400_000
        body["enrollment_count"] = base + epoch * vol.randint(0, 40)
        body["recent_enrollment_count"] = vol.randint(0, 900)
        if body["content_type"] == "course":
            body["avg_course_rating"] = round(vol.uniform(3.2, 5.0), 2)
            body["reviews_count"] = vol.randint(0, 5000)

    def detail(self, listed: Json, catalog_uuid: str) -> Json:
        """The live "discovery" form of a listed item, as the LMS detail endpoints return it."""
        out = _served(listed)
        ctype = listed["content_type"]
        ident = listed["uuid"] if ctype == "program" else listed["key"]
        kind = "program" if ctype == "program" else "course"
        out["marketing_url"] = _strip_query(listed["marketing_url"])
        out["enrollment_url"] = self._enroll(kind, ident, catalog_uuid)
        if "course_runs" in out:
            out["course_runs"] = [self._detail_run(r, catalog_uuid) for r in out["course_runs"]]
        if "courses" in out:
            out["courses"] = [self._detail_member(c, catalog_uuid) for c in out["courses"]]
        return out

    def _detail_member(self, course: Json, catalog_uuid: str) -> Json:
        out = _served(course)
        out["enrollment_url"] = self._enroll("course", course["key"], catalog_uuid)
        out["course_runs"] = [self._detail_run(r, catalog_uuid) for r in course["course_runs"]]
        return out

    def _detail_run(self, run: Json, catalog_uuid: str) -> Json:
        out = _served(run)
        if "marketing_url" in out:
            out["marketing_url"] = _strip_query(out["marketing_url"])
        out["enrollment_url"] = self._enroll("course", run["key"], catalog_uuid)
        return out

    def _enroll(self, kind: str, ident: str, catalog_uuid: str) -> str:
        return (
            f"https://courses.edx.org/enterprise/{self.enterprise_uuid}/{kind}/{ident}/enroll/"
            f"?catalog={catalog_uuid}&utm_medium=enterprise&utm_source={self.slug}"
        )


def _served(listed: Json) -> Json:
    """A copy without the fields only the catalog service adds."""
    return {k: v for k, v in listed.items() if k not in DETAIL_DROPPED_FIELDS}


def _strip_query(url: str | None) -> str | None:
    return None if url is None else url.split("?", 1)[0]
