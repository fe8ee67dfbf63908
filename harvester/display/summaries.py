"""The end of every command: what a run did, printed once it is over.

Owns the summaries of a harvest (a table, its totals and where the output is), a learner
export, a sync night, ``harvester plan`` (one store or many tenants), ``harvester
export`` and a run of many tenants. Reads runs only through their results, manifests and
plans; every server string goes through :func:`~harvester.display.text.term_text`.
``rich`` is imported when something is drawn, never at import time. Must not change a
run, draw live progress, decide an exit code or log.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from harvester.display.text import cell, term_text

if TYPE_CHECKING:
    from rich.table import Table

    from harvester.planning import Plan, TenantsPlan
    from harvester.run import RunResult, SyncResult

__all__ = ["export_summary", "harvest_summary", "learners_summary", "plan_summary",
           "print_harvest_summary", "sync_summary", "tenants_plan_summary", "tenants_summary"]


def harvest_summary(result: RunResult) -> Table:
    """The end-of-run table of a harvest (or a sync's snapshot): one row per catalog."""
    from rich.table import Table

    manifest = result.manifest or {}
    table = Table(title=cell(f"harvest {manifest.get('run_id', '')}: {result.status}"))
    for col in ("catalog", "title", "count", "unique", "dupes", "details", "not found",
                "gaps", "status"):
        table.add_column(col, justify="right" if col not in ("catalog", "title") else "left")
    for uuid, c in (manifest.get("catalogs") or {}).items():
        table.add_row(*map(cell, (
            uuid[:8], term_text(c.get("title", ""))[:28], c.get("count_reported"),
            c.get("unique_found"), c.get("duplicates_dropped"), c.get("details_fetched"),
            c.get("not_found"), c.get("gaps"), c.get("status"))))
    return table


def print_harvest_summary(result: RunResult, *, stream: TextIO | None = None) -> None:
    """Print a harvest's summary table, request totals and where the output is."""
    from rich.console import Console

    out = stream or sys.stdout
    console = Console(file=out, width=None if out.isatty() else 110)
    console.print(harvest_summary(result))
    totals = (result.manifest or {}).get("totals") or {}
    console.print(cell(f"requests {totals.get('requests_total')}  retries "
                        f"{totals.get('retries')}  429s {totals.get('throttled_429')}  wall "
                        f"{totals.get('wall_seconds')} s"))
    console.print(cell(f"output: {result.out.resolve()}  (manifest.json, catalogs.ndjson, "
                        "catalog=<uuid>/*.ndjson, errors.ndjson)"))


def learners_summary(result: RunResult) -> str:
    """The short end-of-run summary of a learner export, for stdout."""
    from harvester.learners.files import MANIFEST_NAME, NDJSON_NAME

    m = result.manifest or {}
    t = m.get("totals") or {}
    lines = [f"learners {m.get('run_id', '')}: {result.status}"]
    for uuid, e in (m.get("enterprises") or {}).items():
        lines.append(f"  {uuid}  {e['status']:<8}  count {e['count_reported']}  "
                     f"written {e['rows_written']}  duplicates {e['duplicates_dropped']}  "
                     f"gaps {e['gaps']}")
    lines += [
        f"learners     {t.get('learners')}",
        f"enrollments  {t.get('enrollments')}",
        f"passed       {t.get('passed')}",
        f"in progress  {t.get('in_progress')}",
        f"failed       {t.get('failed')}",
        f"requests {t.get('requests_total')}  retries {t.get('retries')}  "
        f"429s {t.get('throttled_429')}  wall {t.get('wall_seconds')} s",
        f"output: {result.out.resolve()} ({MANIFEST_NAME}, enterprise=<uuid>/{NDJSON_NAME})",
    ]
    return "\n".join(term_text(line) for line in lines)


def sync_summary(night: SyncResult) -> list[str]:
    """What a sync night did to its store, one line per fact (after the harvest table)."""
    from harvester.store import sync_totals

    m, snap, previous = night.manifest, night.snapshot, night.previous
    cats = m.catalogs
    suppressed = [u[:8] for u, c in cats.items() if c.sync.get("deletes_suppressed")]
    held = [f"{u[:8]} (keyless {', '.join(c.sync['deletes_held_types'])} rows)"
            for u, c in cats.items()
            if c.sync.get("deletes_held_types") and not c.sync.get("deletes_suppressed")]
    pending = sum(int(c.sync.get("deletes_pending", 0)) for c in cats.values())
    carried = f"{pending} carried to the next night"
    lines = [f"sync {snap.name} (previous: {previous.name if previous else 'none'}): "
             + ", ".join(f"{k} {v}" for k, v in sync_totals(m).items())
             + (f"; deletes withheld for {', '.join(suppressed)} (listing incomplete; "
                f"{carried})" if suppressed else "")
             + (f"; deletes held for {', '.join(held)}" + ("" if suppressed else f"; {carried}")
                if held else "")]
    gone = m.sync.get("gone_catalogs") or {}
    if gone:
        lines.append(f"gone from the catalog list (all items deleted): "
                     f"{', '.join(u[:8] for u in gone)}")
    deferred = m.sync.get("deferred") or {}
    if deferred.get("items"):
        lines.append(f"deferred by the deadline (first in line next night, not failures): "
                     f"{deferred['items']} items ({deferred.get('new', 0)} new, written from "
                     "the listing; the rest kept from the previous snapshot)")
    stale = m.sync.get("stale") or {}
    if stale.get("items") or stale.get("catalogs"):
        lines.append("kept stale from the previous snapshot (failed tonight, retried next "
                     f"night): {stale.get('items', 0)} items"
                     + (f"; catalogs {', '.join(u[:8] for u in stale['catalogs'])}"
                        if stale.get("catalogs") else ""))
    lines.append(f"latest -> {snap.name}" if night.promoted else
                 f"latest unchanged: {snap.name} is not a good snapshot (see errors.ndjson)")
    if night.pruned:
        lines.append(f"pruned: {', '.join(night.pruned)}")
    return [term_text(line) for line in lines]


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else \
        f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{seconds:.1f}s"


def plan_summary(plan: Plan) -> list[str]:
    """``harvester plan``'s text: per catalog its items and requests, then the ETAs."""
    lines = [f"plan at {plan.rate} (LMS budget); listing took {plan.listing_seconds:.1f}s, "
             f"{plan.catalog_list_requests} catalog-list request(s)"]
    for c in plan.catalogs:
        types = ", ".join(f"{t} {n}" for t, n in sorted(c.items.items())) or "no items"
        line = (f"  {c.uuid}  {c.status:<6}  {types}  -> {c.detail_requests} detail "
                "requests")
        if c.sync is not None:
            line += ("; tonight: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                               for k, v in c.sync.items()))
        lines.append(line)
    lines.append(f"full harvest: {plan.detail_requests} detail requests, ETA "
                 f"{_hms(plan.harvest_eta_seconds)}")
    if plan.store is not None:
        lines.append(f"tonight's sync of {plan.store} (previous: {plan.previous or 'none'}): "
                     f"{plan.sync_requests()} detail requests, ETA "
                     f"{_hms(plan.sync_eta_seconds or 0.0)}")
    if not plan.complete:
        lines.append("some catalogs or pages could not be listed: these numbers are a lower "
                     "bound")
    return [term_text(line) for line in lines]


def tenants_plan_summary(plan: TenantsPlan) -> list[str]:
    """``harvester plan``'s text with ``[[tenants]]``: each tenant's plan under its name,
    then the run's ETA, the slowest tenant's (each has its own budget)."""
    lines: list[str] = []
    for name, one in plan.plans.items():
        lines.append(term_text(f"tenant {name}:"))
        lines.extend("  " + line for line in plan_summary(one))
    for name, why in plan.failed.items():
        lines.append(term_text(f"tenant {name}: not planned: {why}"))
    slow, harvest_eta = plan.slowest()
    lines.append(term_text(
        f"{len(plan.plans)} tenant(s) planned, full harvest: "
        f"{sum(p.detail_requests for p in plan.plans.values())} detail requests, ETA "
        f"{_hms(harvest_eta)} (slowest tenant: {slow or 'none'})"))
    if any(p.store is not None for p in plan.plans.values()):
        slow, sync_eta = plan.slowest(sync=True)
        lines.append(term_text(
            f"tonight's sync: {sum(p.sync_requests() or 0 for p in plan.plans.values())} "
            f"detail requests, ETA {_hms(sync_eta)} (slowest tenant: {slow or 'none'})"))
    return lines


def export_summary(out: Path, upserts: int, deletes: int, fmt: str) -> str:
    """The one line ``harvester export`` prints."""
    return term_text(f"{out}: {upserts} upserts, {deletes} deletes ({fmt})")


def tenants_summary(manifest: Mapping[str, Any]) -> list[str]:
    """The end-of-run lines of a run of many tenants: one per tenant, then the total."""
    tenants: Mapping[str, Mapping[str, Any]] = manifest.get("tenants") or {}
    lines = []
    for name, row in tenants.items():
        tail = f"  {row['message']}" if row.get("message") else ""  # may quote a server
        lines.append(f"tenant {name}: {row['status']} (exit {row['exit_code']}){tail}")
    shard = f" (shard {manifest['shard']})" if manifest.get("shard") else ""
    lines.append(f"{manifest.get('kind', 'run')} of {len(tenants)} tenant(s){shard}: "
                 f"{manifest.get('status')} (exit {manifest.get('exit_code')})")
    return [term_text(line) for line in lines]
