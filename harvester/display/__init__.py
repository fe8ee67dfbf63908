"""What a person sees: the live progress and the end-of-run summary of every command.

Reads runs only through their ``progress()`` snapshots, their live per-item records,
their results and their manifests. ``rich`` is imported when something is drawn, never
at import time. Must not change a run, decide an exit code or log.

::

    text.py       term_text, cell: the one gate from server text to a terminal
    live.py       when a live display is shown; CatalogBars, the live learner and tenant tables
    summaries.py  the end-of-run lines and tables (harvest, learners, sync, plan, export, tenants)
"""

from harvester.display.live import (
    CatalogBars,
    ProgressSource,
    harvest_progress,
    harvest_view,
    learners_progress,
    learners_table,
    live,
    show_progress,
    tenants_progress,
    tenants_table,
)
from harvester.display.summaries import (
    export_summary,
    harvest_summary,
    learners_summary,
    plan_summary,
    print_harvest_summary,
    sync_summary,
    tenants_plan_summary,
    tenants_summary,
)
from harvester.display.text import term_text

__all__ = ["CatalogBars", "ProgressSource", "export_summary", "harvest_progress",
           "harvest_summary", "harvest_view", "learners_progress", "learners_summary",
           "learners_table", "live", "plan_summary", "print_harvest_summary", "show_progress",
           "sync_summary", "tenants_plan_summary", "tenants_progress", "tenants_summary",
           "tenants_table", "term_text"]
