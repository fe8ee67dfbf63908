"""The harvest core: stages a reader can find, wired by :class:`Harvest`.

::

    harvest.py   Harvest: the task topology (one TaskGroup) and the job of one catalog
    session.py   RunSession: lock, ledger, run id, resume decisions, status, manifest
    lister.py    discover_catalogs, CatalogLister: walks, dedupe, spooling
    details.py   DetailScheduler: detail queue, lazy workers, 404 passes
    syncing.py   DetailDecider: FetchAll (harvest) or SyncDecider (carry, stale, feeds)
    emit.py      Emitter: the typed front of the writer queue
    walk.py      walk_pages, walk_until_complete: the page walker (learners use it too)
    records.py   the _harvest block, routable keys, recounts from disk
    periodic.py  with_ticks: a side task beside a command's work (--metrics-file)
    tenants.py   TenantRun: one task per tenant, isolated outcomes, the run summary

Only this package creates tasks (``harvest.py``, ``tenants.py`` and the walker's page
workers). It
must not parse HTTP, format files or build output paths: ``client``, ``sinks``,
``spool`` and ``writer`` do.
"""

from harvester.pipeline.harvest import Harvest
from harvester.pipeline.periodic import with_ticks
from harvester.pipeline.tenants import TenantOutcome, TenantRun, TenantsResult
from harvester.pipeline.walk import leading_error, walk_pages, walk_until_complete

__all__ = ["Harvest", "TenantOutcome", "TenantRun", "TenantsResult", "leading_error",
           "walk_pages", "walk_until_complete", "with_ticks"]
