"""``harvester plan``: what a harvest (or tonight's sync) will cost, before running it.

The plan runs the real pipeline with details off (``--no-details``) into a scratch
directory: the same catalog list, walker, re-walks and dedupe as a harvest, and no detail
request. From the listing it counts per catalog the items by type and the detail requests
a full harvest makes (types with a detail endpoint, routable keys: what the detail stage
would queue). With a store it asks the sync's own :class:`~harvester.delta.RefreshRules`
what tonight's sync would fetch (new, changed, due for refresh, stale retries). The ETA
replays the LMS rate gate (:func:`~harvester.policy.admission_schedule`) after the
listing time this plan measured. Must not write outside its scratch directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import orjson

from harvester.client import ThrottleClass
from harvester.config import Settings
from harvester.delta import (
    CARRY,
    FETCH_CHANGED,
    FETCH_NEW,
    REFRESH,
    RETRY,
    RefreshRules,
    SyncOptions,
)
from harvester.models import detail_segment, key_digest
from harvester.pipeline import Harvest
from harvester.pipeline.records import routable
from harvester.policy import Clock, Sleep, admission_schedule, gate_margin, window_budget
from harvester.sinks import iter_lines
from harvester.store import Store

#: Version of ``harvester plan --json`` (README "Plan a run" documents it).
SCHEMA_VERSION: Final = 1
_SYNC_NAMES: Final = {RETRY: "stale_retries", FETCH_NEW: "new", FETCH_CHANGED: "changed",
                      REFRESH: "refresh", CARRY: "carried"}


@dataclass(slots=True)
class CatalogPlan:
    """One catalog's listing and what it costs."""

    uuid: str
    title: str
    status: str  #: "listed", or "failed" (its numbers are then a lower bound)
    count_reported: int | None
    keyless: int = 0  #: rows listed without key or uuid (never fetched, never counted)
    items: dict[str, int] = field(default_factory=dict)  #: unique items by content type
    detail_requests: int = 0  #: what a full harvest requests
    sync: dict[str, int] | None = None  #: tonight's sync: new, changed, refresh...

    def as_dict(self) -> dict[str, Any]:
        """This catalog in the ``--json`` schema."""
        return {"uuid": self.uuid, "title": self.title, "status": self.status,
                "count_reported": self.count_reported, "keyless": self.keyless,
                "items": dict(sorted(self.items.items())),
                "items_total": sum(self.items.values()),
                "detail_requests": self.detail_requests, "sync": self.sync}


@dataclass(slots=True)
class Plan:
    """The whole plan: per catalog, and the run's totals and ETAs."""

    catalogs: list[CatalogPlan]
    rate: str
    listing_seconds: float
    catalog_list_requests: int
    request_seconds: float
    harvest_eta_seconds: float
    store: Path | None = None
    previous: str | None = None
    sync_eta_seconds: float | None = None
    complete: bool = True
    startup_seconds: float = 0.0  #: the process's start-up (the run pays it too)

    @property
    def detail_requests(self) -> int:
        """Detail requests of a full harvest, all catalogs."""
        return sum(c.detail_requests for c in self.catalogs)

    def sync_requests(self) -> int | None:
        """Detail requests of tonight's sync (None without a store)."""
        if self.store is None:
            return None
        return sum(_sync_requests(c.sync or {}) for c in self.catalogs)

    def as_dict(self) -> dict[str, Any]:
        """The ``harvester plan --json`` document (schema ``SCHEMA_VERSION``)."""
        items: Counter[str] = Counter()
        for c in self.catalogs:
            items.update(c.items)
        totals: dict[str, Any] = {
            "catalogs": len(self.catalogs), "items": dict(sorted(items.items())),
            "items_total": sum(items.values()), "detail_requests": self.detail_requests,
            "catalog_list_requests": self.catalog_list_requests,
            "harvest_eta_seconds": round(self.harvest_eta_seconds, 1)}
        sync: dict[str, Any] | None = None
        if self.store is not None:
            summed: Counter[str] = Counter()
            for c in self.catalogs:
                summed.update(c.sync or {})
            sync = {"store": str(self.store), "previous": self.previous,
                    **{n: summed.get(n, 0) for n in _SYNC_NAMES.values()},
                    "detail_requests": self.sync_requests(),
                    "eta_seconds": round(self.sync_eta_seconds or 0.0, 1)}
        return {"schema": SCHEMA_VERSION, "complete": self.complete, "rate_lms": self.rate,
                "startup_seconds": round(self.startup_seconds, 3),
                "listing_seconds": round(self.listing_seconds, 3),
                "request_seconds": round(self.request_seconds, 4),
                "catalogs": [c.as_dict() for c in self.catalogs], "totals": totals,
                "sync": sync}


def _sync_requests(sync: dict[str, int]) -> int:
    return sum(sync.get(n, 0) for n in ("stale_retries", "new", "changed", "refresh"))


async def make_plan(settings: Settings, *, store: Path | None = None,
                    max_age: float = 7 * 86400.0, as_of: float | None = None,
                    clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> Plan:
    """List every catalog (no detail request) and work out what a run would cost."""
    startup = process_age()
    scratch = Path(tempfile.mkdtemp(prefix="harvester-plan-"))
    try:
        out = scratch / "listing"
        listing = replace(settings, output=replace(settings.output, out=out),
                          harvest=replace(settings.harvest, details=False))
        harvest = Harvest(listing, restart=True, clock=clock, sleep=sleep)
        t0 = clock()
        result = await harvest.run()
        took = clock() - t0
        assert result.manifest is not None
        rules = None
        previous = Store(store).latest() if store is not None else None
        if store is not None:
            rules = RefreshRules(SyncOptions(previous, max_age, as_of))
        try:
            catalogs = [_catalog(out, uuid, entry, rules, compressed=settings.output.gzip,
                                 details=settings.harvest.details)
                        for uuid, entry in result.manifest["catalogs"].items()]
        finally:
            if rules is not None:
                rules.close()
        typical = harvest.stats.typical(ThrottleClass.LMS) or 0.0
        cat_requests = harvest.stats.total_requests(ThrottleClass.LMS)
        rate = settings.limits.lms
        plan = Plan(catalogs, f"{rate.count:g}/{rate.period:g}s", took, cat_requests, typical, 0.0,
                    store=store, previous=previous.name if previous else None,
                    complete=result.status == "complete", startup_seconds=startup)
        plan.harvest_eta_seconds = eta(settings, plan, plan.detail_requests)
        if store is not None:
            plan.sync_eta_seconds = eta(settings, plan, plan.sync_requests() or 0)
        return plan
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def process_age() -> float:
    """Seconds since this process started (0 where ``/proc`` cannot tell): the plan's
    own start-up, which the run it plans pays too."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(stat[19]) / os.sysconf("SC_CLK_TCK")
        return max(0.0, float(Path("/proc/uptime").read_text().split()[0]) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


def eta(settings: Settings, plan: Plan, requests: int) -> float:
    """Seconds a run making ``requests`` detail requests takes: the listing this plan
    measured (token, catalog list, content pages, files), then the requests through the
    LMS gate, whose window still holds the catalog-list requests."""
    rate = settings.limits.lms
    _, period = window_budget(rate)
    window = period + gate_margin(period)
    busy = [max(0.0, window - plan.listing_seconds)] * plan.catalog_list_requests
    return plan.startup_seconds + plan.listing_seconds + admission_schedule(
        requests, rate, concurrency=settings.limits.concurrency,
        request_time=plan.request_seconds, busy_until=busy)


def _catalog(out: Path, uuid: str, entry: dict[str, Any], rules: RefreshRules | None, *,
             compressed: bool, details: bool) -> CatalogPlan:
    """Count one listed catalog's items from the scratch listing records."""
    plan = CatalogPlan(uuid, str(entry.get("title") or ""),
                       "listed" if entry.get("status") == "done" else "failed",
                       entry.get("count_reported"), int(entry.get("keyless") or 0))
    sync: Counter[str] = Counter()
    for name in entry.get("files") or {}:
        path = out / str(entry.get("dir", "")) / name
        if not path.is_file() or name == "changes.ndjson":
            continue
        for line in iter_lines(path, compressed=compressed):
            rec = orjson.loads(line)
            h = rec.pop("_harvest")
            ctype, key = str(h["content_type"]), str(h["key"])
            plan.items[ctype] = plan.items.get(ctype, 0) + 1
            if not details or detail_segment(ctype) is None or not routable(ctype, key):
                continue  # written from the listing by the run too: no request
            plan.detail_requests += 1
            if rules is not None:
                decision, _ = rules.decide(uuid, key_digest(ctype, key), rec)
                sync[_SYNC_NAMES[decision]] += 1
    if rules is not None:
        plan.sync = {n: sync.get(n, 0) for n in _SYNC_NAMES.values()}
    return plan
