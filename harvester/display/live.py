"""The live progress of every command: what a run looks like while it runs.

Owns the rule for when a live display is shown, the rich ``Live`` that redraws it, the
per-catalog bars of a harvest or sync (:class:`CatalogBars`), and the live tables of a
learner export and of a run of many tenants. Reads runs only through their
``progress()`` snapshots and their live per-item records. ``rich`` is imported when
something is drawn, never at import time. Must not change a run, print a summary, decide
an exit code or log.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from harvester.display.text import cell, term_text

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.progress import Progress, ProgressColumn, Task
    from rich.table import Table
    from rich.text import Text

    from harvester.config import Settings
    from harvester.learners.state import EnterpriseState
    from harvester.run import CatalogState

__all__ = ["CatalogBars", "ProgressSource", "harvest_progress", "harvest_view",
           "learners_progress", "learners_table", "live", "show_progress", "tenants_progress",
           "tenants_table"]

#: Rows a live table shows at most (a terminal is not a report).
_ROWS = 20

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
        t.add_row(*map(cell, (es.uuid[:13], es.status, es.walks,
                               f"{es.pages}/{es.pages_planned or '?'}", es.rows_written,
                               es.duplicates)))
    return t


class _Export(ProgressSource, Protocol):
    enterprises: list[EnterpriseState]


def learners_progress(export: _Export, enabled: bool) -> AbstractContextManager[Any]:
    """The live per-enterprise display of a learner export, or a no-op context."""
    return live(lambda: learners_table(export.progress(), export.enterprises), enabled)


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
        t.add_row(*map(cell, (name, p["status"], items, p.get("written", ""),
                              p.get("requests", ""), p.get("throttled", ""),
                              _eta(p.get("eta_s")) if "eta_s" in p else "-")))
    return t


def tenants_progress(run: _Tenants, enabled: bool) -> AbstractContextManager[Any]:
    """The live per-tenant display of a run of many tenants, or a no-op context."""
    return live(lambda: tenants_table(run.progress()), enabled)
