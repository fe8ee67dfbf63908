"""What a person sees: the live progress and the end-of-run summary of every command.

Owns the rich progress tables (harvest and sync share one, learners has its own), the
summaries printed when a run ends (harvest, sync, learners, export) and the rule for
when a live display is shown. Reads runs only through their ``progress()`` snapshots,
their live per-item records and their manifests. ``rich`` is imported when something is
drawn, never at import time. Must not change a run, decide an exit code or log.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.progress import Progress, ProgressColumn, Task
    from rich.table import Table
    from rich.text import Text

    from harvester.config import Settings
    from harvester.learners.state import EnterpriseState
    from harvester.planning import Plan, TenantsPlan
    from harvester.run import CatalogState, RunResult, SyncResult

__all__ = ["CatalogBars", "ProgressSource", "export_summary", "harvest_progress", "harvest_summary",
           "harvest_table", "learners_progress", "learners_summary", "learners_table",
           "live", "plan_summary", "print_harvest_summary", "show_progress", "sync_summary",
           "tenants_progress", "tenants_summary", "tenants_table", "term_text"]

#: Rows a live table shows at most (a terminal is not a report).
_ROWS = 20
#: What a terminal would act on rather than show: C0/C1 controls (escape sequences, bells,
#: carriage returns), DEL, and the zero-width and bidi controls that hide or reorder text.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


def term_text(value: object) -> str:
    """A value as it may reach a terminal: every control character removed. The one
    gate for what a server sends (titles, ids, types, error text) on its way to a screen;
    rich cells also go through :func:`_cell`, so ``[bold]`` stays text, not markup."""
    return _CONTROLS.sub("", str(value))


def _cell(value: object) -> Text:
    """A table cell: :func:`term_text`, never read as rich markup."""
    from rich.text import Text

    return Text(term_text(value))


class ProgressSource(Protocol):
    """A run a live display can watch: a snapshot of numbers, on demand."""

    def progress(self) -> dict[str, Any]:
        """Counters for the title line (``requests``, ``throttled``...)."""
        ...


def show_progress(settings: Settings, stream: TextIO | None = None) -> bool:
    """A live display: forced on, or 'auto' on a TTY unless --quiet."""
    mode = settings.output.progress
    tty = (stream or sys.stderr).isatty()
    return mode == "on" or (mode == "auto" and tty and not settings.output.quiet)


def live(render: Any, enabled: bool, console: Console | None = None
         ) -> AbstractContextManager[Any]:
    """A rich ``Live`` redrawing ``render()`` 4 times a second on stderr, or a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    from rich.console import Console
    from rich.live import Live

    return Live(console=console or Console(stderr=True), get_renderable=render,
                refresh_per_second=4, transient=True)


def _eta(seconds: int | None) -> str:
    return "-" if seconds is None else f"{seconds // 60}m{seconds % 60:02d}s"


def harvest_table(p: Mapping[str, Any], catalogs: Iterable[CatalogState],
                  rate: float) -> Table:
    """The live table of a harvest or sync: one row per catalog (the first 20)."""
    from rich.table import Table

    t = Table(title=f"items {p['items']}  written {p['written']}  requests "
                    f"{p['requests']} ({rate:.1f}/s)  429s {p['throttled']}  "
                    f"ETA {_eta(p['eta_s'])}")
    for col in ("catalog", "phase", "pages", "items", "details", "not found"):
        t.add_column(col)
    for cs in list(catalogs)[:_ROWS]:
        t.add_row(*map(_cell, (cs.uuid[:13], cs.phase, f"{cs.pages}/{cs.pages_planned or '?'}",
                               cs.unique, cs.details_done, cs.not_found)))
    return t


class _Rate:
    """Requests per second over the last second or more, smoothed."""

    def __init__(self) -> None:
        self.when, self.requests, self.rate = time.monotonic(), 0, 0.0

    def update(self, requests: int) -> float:
        now = time.monotonic()
        if now - self.when >= 1.0:
            rate = (requests - self.requests) / (now - self.when)
            self.rate = 0.5 * self.rate + 0.5 * rate if self.rate else rate
            self.when, self.requests = now, requests
        return self.rate


class CatalogBars:
    """Two bars per catalog, listing (content pages) and details, each with percent and
    ETA, as data tools draw them (rich ``Progress``, redrawn from the run's state).

    The listing ETA is rich's estimate from the pace so far (content pages are not
    throttled). The details ETA comes from the LMS budget: what is left of the catalog
    over its share of the budget (shared by every catalog fetching details), so it holds
    from the first second instead of waiting for a pace to settle. At most ``_ROWS`` bars:
    unsettled catalogs first; the rest are counted on one line.
    """

    def __init__(self, *, details: bool, get_time: Callable[[], float] | None = None
                 ) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn

        self.details = details
        self.progress: Progress = Progress(
            "{task.description}", BarColumn(), TaskProgressColumn(), MofNCompleteColumn(),
            _eta_column(), auto_refresh=False, get_time=get_time)
        self._tasks: dict[tuple[str, str], Any] = {}
        self.hidden = 0  #: catalogs without bars (past ``_ROWS`` bars)

    def _bar(self, cs: CatalogState, phase: str, completed: int, total: int | None,
             eta: float | None, visible: bool) -> None:
        key = (cs.uuid, phase)
        if key not in self._tasks:
            from rich.markup import escape  # a description is read as markup

            self._tasks[key] = self.progress.add_task(
                escape(term_text(f"{cs.uuid[:13]} {phase:<8}")), total=None, eta=None)
        task = self._tasks[key]
        self.progress.update(task, completed=completed, visible=visible, eta=eta)
        if total:  # unknown until page 1 (listing) or the listing's end (details)
            self.progress.update(task, total=max(total, completed))

    def update(self, catalogs: Iterable[CatalogState], lms_per_s: float | None) -> None:
        """Bring every bar to the catalogs' current counts."""
        cats = list(catalogs)
        per_bar = 2 if self.details else 1
        if len(cats) * per_bar > _ROWS:  # the work still going on first (sort is stable)
            cats.sort(key=lambda c: c.settled)
        fetching = sum(c.phase == "details" for c in cats) or 1
        shown = 0
        for cs in cats:
            visible = shown + per_bar <= _ROWS
            shown += per_bar if visible else 0
            listed = cs.phase not in ("new", "listing")
            self._bar(cs, "listing", cs.pages, cs.pages if listed else cs.pages_planned,
                      None, visible)
            if self.details:
                handled = min(cs.unique, cs.details_done + cs.listing_only + cs.not_found
                              + cs.failed + int(cs.sync.get("carried", 0)))
                left = cs.unique - handled
                eta = left / (lms_per_s / fetching) if lms_per_s and listed else None
                self._bar(cs, "details", handled, cs.unique if listed else None,
                          0.0 if cs.settled else eta, visible)
        self.hidden = len(cats) - shown // per_bar

    def renderable(self) -> RenderableType:
        """The bars (and a line for the catalogs not shown)."""
        from rich.console import Group

        table = self.progress.make_tasks_table(self.progress.tasks)
        if not self.hidden:
            return table
        return Group(table, f"... and {self.hidden} more catalog(s)")


def _eta_column() -> ProgressColumn:
    """``ETA 0:01:40``: a bar's own ETA when it has one (details: the LMS budget), else
    rich's estimate from the pace so far."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class EtaColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            seconds = task.fields.get("eta")
            if seconds is None and not task.finished:
                seconds = task.time_remaining
            if task.finished or seconds == 0.0:
                return Text("done", style="progress.remaining")
            if seconds is None:
                return Text("ETA -:--:--", style="progress.remaining")
            s = int(seconds)
            return Text(f"ETA {s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}",
                        style="progress.remaining")

    return EtaColumn()


def harvest_view(p: Mapping[str, Any], bars: CatalogBars, rate: float) -> RenderableType:
    """The live view of a harvest or sync: the run's numbers, then each catalog's bars."""
    from rich.console import Group

    return Group(f"catalogs {p['catalogs_done']}/{p['catalogs']} done  items {p['items']}  "
                 f"written {p['written']}  requests {p['requests']} ({rate:.1f}/s)  "
                 f"429s {p['throttled']}  ETA {_eta(p['eta_s'])}", bars.renderable())


class _Harvest(ProgressSource, Protocol):
    catalogs: list[CatalogState]


def harvest_progress(harvest: _Harvest, enabled: bool, *, details: bool = True
                     ) -> AbstractContextManager[Any]:
    """The live per-catalog bars of a harvest or sync, or a no-op context."""
    rate = _Rate()
    bars = CatalogBars(details=details) if enabled else None

    def render() -> RenderableType:
        assert bars is not None
        p = harvest.progress()
        bars.update(harvest.catalogs, p.get("lms_per_s"))
        return harvest_view(p, bars, rate.update(p["requests"]))

    return live(render, enabled)


def learners_table(p: Mapping[str, Any], enterprises: Iterable[EnterpriseState]) -> Table:
    """The live table of a learner export: one row per enterprise (the first 20)."""
    from rich.table import Table

    t = Table(title=f"learners: rows {p['rows']}  requests {p['requests']}  "
                    f"429s {p['throttled']}")
    for col in ("enterprise", "status", "walk", "pages", "rows", "dupes"):
        t.add_column(col)
    for es in list(enterprises)[:_ROWS]:
        t.add_row(*map(_cell, (es.uuid[:13], es.status, es.walks,
                               f"{es.pages}/{es.pages_planned or '?'}", es.rows_written,
                               es.duplicates)))
    return t


class _Export(ProgressSource, Protocol):
    enterprises: list[EnterpriseState]


def learners_progress(export: _Export, enabled: bool) -> AbstractContextManager[Any]:
    """The live per-enterprise display of a learner export, or a no-op context."""
    return live(lambda: learners_table(export.progress(), export.enterprises), enabled)


def harvest_summary(result: RunResult) -> Table:
    """The end-of-run table of a harvest (or a sync's snapshot): one row per catalog."""
    from rich.table import Table

    manifest = result.manifest or {}
    table = Table(title=_cell(f"harvest {manifest.get('run_id', '')}: {result.status}"))
    for col in ("catalog", "title", "count", "unique", "dupes", "details", "not found",
                "gaps", "status"):
        table.add_column(col, justify="right" if col not in ("catalog", "title") else "left")
    for uuid, c in (manifest.get("catalogs") or {}).items():
        table.add_row(*map(_cell, (
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
    console.print(_cell(f"requests {totals.get('requests_total')}  retries "
                        f"{totals.get('retries')}  429s {totals.get('throttled_429')}  wall "
                        f"{totals.get('wall_seconds')} s"))
    console.print(_cell(f"output: {result.out.resolve()}  (manifest.json, catalogs.ndjson, "
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


# --- many tenants ---------------------------------------------------------------------------

class _Tenants(Protocol):
    def progress(self) -> Mapping[str, Mapping[str, Any]]: ...


def tenants_table(progress: Mapping[str, Mapping[str, Any]]) -> Table:
    """The live table of a run of many tenants: one row per tenant (the busiest 20)."""
    from rich.table import Table

    rows = sorted(progress.items(), key=lambda kv: (kv[1]["status"] != "running", kv[0]))
    done = sum(p["status"] not in ("pending", "running") for p in progress.values())
    requests = sum(int(p.get("requests") or 0) for p in progress.values())
    throttled = sum(int(p.get("throttled") or 0) for p in progress.values())
    t = Table(title=f"tenants {done}/{len(progress)} done  requests {requests}  "
                    f"429s {throttled}")
    for col in ("tenant", "status", "items", "written", "requests", "429s", "ETA"):
        t.add_column(col)
    for name, p in rows[:_ROWS]:
        items = p.get("items", p.get("rows", ""))
        t.add_row(name, str(p["status"]), str(items), str(p.get("written", "")),
                  str(p.get("requests", "")), str(p.get("throttled", "")),
                  _eta(p.get("eta_s")) if "eta_s" in p else "-")
    return t


def tenants_progress(run: _Tenants, enabled: bool) -> AbstractContextManager[Any]:
    """The live per-tenant display of a run of many tenants, or a no-op context."""
    return live(lambda: tenants_table(run.progress()), enabled)


def tenants_summary(manifest: Mapping[str, Any]) -> list[str]:
    """The end-of-run lines of a run of many tenants: one per tenant, then the total."""
    tenants: Mapping[str, Mapping[str, Any]] = manifest.get("tenants") or {}
    lines = []
    for name, row in tenants.items():
        tail = f"  {row['message']}" if row.get("message") else ""
        lines.append(f"tenant {name}: {row['status']} (exit {row['exit_code']}){tail}")
    shard = f" (shard {manifest['shard']})" if manifest.get("shard") else ""
    lines.append(f"{manifest.get('kind', 'run')} of {len(tenants)} tenant(s){shard}: "
                 f"{manifest.get('status')} (exit {manifest.get('exit_code')})")
    return lines
