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
from harvester.errors import HarvestError
from harvester.models import detail_segment, key_digest
from harvester.partfile import iter_lines
from harvester.pipeline import Harvest
from harvester.pipeline.records import routable
from harvester.pipeline.tenants import STAGGER
from harvester.policy import Clock, Sleep, admission_schedule, gate_margin, window_budget
from harvester.redact import REDACTOR
from harvester.store import Store
from harvester.tenants import Tenant, tenant_dirname

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
    #: the listing's request statistics (``Stats.as_dict()``), for ``--metrics-file``
    stats: dict[str, Any] = field(default_factory=dict)

    def metrics_view(self) -> dict[str, Any]:
        """The plan's requests in the manifest shape :mod:`harvester.metrics` reads (no
        catalogs or files: a plan writes no output)."""
        keys = ("requests", "throttled_429", "retries_by_cause", "bytes_in", "wall_seconds")
        return {"totals": {k: self.stats[k] for k in keys if k in self.stats}}

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
                    clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep,
                    startup: float | None = None) -> Plan:
    """List every catalog (no detail request) and work out what a run would cost.
    ``startup``: what the run pays before this work starts (default: this process's
    start-up so far)."""
    startup = process_age() if startup is None else startup
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
                    complete=result.status == "complete", startup_seconds=startup,
                    stats=harvest.stats.as_dict())
        plan.harvest_eta_seconds = eta(settings, plan, plan.detail_requests)
        if store is not None:
            plan.sync_eta_seconds = eta(settings, plan, plan.sync_requests() or 0)
        return plan
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass(slots=True)
class TenantsPlan:
    """The plan of a run of many tenants: each tenant's own :class:`Plan` (its
    credential, its budget, its store), and the run's ETA, the slowest tenant's."""

    plans: dict[str, Plan]
    #: tenants that could not be planned (a refused credential...): their one-line error
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every tenant was planned and its listing was complete."""
        return not self.failed and all(p.complete for p in self.plans.values())

    def slowest(self, sync: bool = False) -> tuple[str | None, float]:
        """``(tenant, ETA)`` of the tenant that ends last (the run ends with it)."""
        etas = {n: (p.sync_eta_seconds or 0.0) if sync else p.harvest_eta_seconds
                for n, p in self.plans.items()}
        name = max(etas, key=lambda n: etas[n], default=None)
        return name, (etas[name] if name is not None else 0.0)

    def as_dict(self) -> dict[str, Any]:
        """Schema 1 extended: the top-level keys sum the tenants (each catalog names its
        tenant; an ETA is the slowest tenant's), and ``tenants`` holds each one's plan."""
        docs = {n: p.as_dict() for n, p in self.plans.items()}
        items: Counter[str] = Counter()
        totals: Counter[str] = Counter()
        for d in docs.values():
            items.update(d["totals"]["items"])
            totals.update({k: d["totals"][k] for k in ("catalogs", "detail_requests",
                                                       "catalog_list_requests")})
        rates = {d["rate_lms"] for d in docs.values()}
        sync: dict[str, Any] | None = None
        if any(d["sync"] is not None for d in docs.values()):
            summed: Counter[str] = Counter()
            for d in docs.values():
                summed.update({k: v for k, v in (d["sync"] or {}).items()
                               if isinstance(v, int) and k != "eta_seconds"})
            sync = {"store": None, "previous": None, **{n: summed.get(n, 0) for n in
                                                        (*_SYNC_NAMES.values(),
                                                         "detail_requests")},
                    "eta_seconds": round(self.slowest(sync=True)[1], 1),
                    "slowest_tenant": self.slowest(sync=True)[0]}
        return {"schema": SCHEMA_VERSION, "complete": self.complete,
                "rate_lms": rates.pop() if len(rates) == 1 else None,
                "startup_seconds": max((d["startup_seconds"] for d in docs.values()),
                                       default=0.0),
                "listing_seconds": max((d["listing_seconds"] for d in docs.values()),
                                       default=0.0),
                "request_seconds": max((d["request_seconds"] for d in docs.values()),
                                       default=0.0),
                "catalogs": [{**c, "tenant": n} for n, d in docs.items()
                             for c in d["catalogs"]],
                "totals": {**totals, "items": dict(sorted(items.items())),
                           "items_total": sum(items.values()),
                           "harvest_eta_seconds": round(self.slowest()[1], 1),
                           "slowest_tenant": self.slowest()[0]},
                "sync": sync, "tenants": docs, "failed_tenants": dict(self.failed)}


async def plan_tenants(tenants: list[Tenant], *, store: Path | None = None,
                       max_age: float = 7 * 86400.0, as_of: float | None = None,
                       clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
                       ) -> TenantsPlan:
    """Plan each tenant with its own settings (credential, budget, catalogs) and its own
    store ``STORE/tenant=<name>/``. One after another: each listing is timed alone, and
    its ETA starts where that tenant's run starts (start-up, then its stagger)."""
    startup = process_age()
    done = TenantsPlan({})
    for i, t in enumerate(tenants):
        try:
            done.plans[t.name] = await make_plan(
                t.settings, store=store / tenant_dirname(t.name) if store is not None
                else None, max_age=max_age, as_of=as_of, clock=clock, sleep=sleep,
                startup=startup + STAGGER * i / len(tenants))
        except HarvestError as exc:  # that tenant only, as in a run: the others go on
            done.failed[t.name] = REDACTOR.scrub(str(exc))
    return done


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
