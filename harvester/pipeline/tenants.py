"""Every tenant at once: one task per tenant under one TaskGroup, each tenant isolated.

:class:`TenantRun` drives one unit of work per tenant (a :class:`Harvest`, a sync night
or a learner export, built by the caller on that tenant's own settings) concurrently.
A tenant's failure is that tenant's outcome, never its neighbours': a refused
credential is exit 3 for that tenant (the others complete), a usage or state error
exit 2, anything else the harvester raises exit 1; the run's exit code is the worst.
Each task carries its tenant's name in :data:`~harvester.obs.TENANT`, so every event
it (and every task it creates) logs names the tenant. At the end the run summary is
written to ``ROOT/manifest.json`` (``learners-manifest.json`` for a learner export,
beside the harvest's), atomically. Must not read secrets or pick tenants:
:mod:`harvester.tenants` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import orjson

from harvester.errors import (
    AuthError,
    ConfigError,
    HarvestError,
    SinkError,
    StateError,
    UnsafePath,
)
from harvester.obs import TENANT, event
from harvester.redact import REDACTOR
from harvester.run import (
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    RunResult,
    SyncResult,
    now_iso,
)
from harvester.sinks import ensure_dir, read_ours, write_json_atomic
from harvester.tenants import DEFAULT_SOURCE, Tenant, summary, tenant_dirname, worst_exit

__all__ = ["TenantOutcome", "TenantRun", "TenantWork", "TenantsResult"]


class TenantWork(Protocol):
    """One tenant's run: a ``Harvest``, a ``SyncNight`` or a ``LearnerExport``."""

    async def run(self) -> RunResult | SyncResult:
        """Run to the end; failures raise the ``HarvestError`` tree."""
        ...

    def progress(self) -> dict[str, Any]:
        """Counters for the live display."""
        ...


@dataclass(slots=True)
class TenantOutcome:
    """Where one tenant stands: ``pending``, ``running``, then its final status."""

    name: str
    status: str = "pending"
    exit_code: int | None = None
    message: str = ""
    result: RunResult | SyncResult | None = None

    def as_dict(self) -> dict[str, Any]:
        """The tenant's entry in the run summary."""
        row: dict[str, Any] = {"name": self.name, "status": self.status,
                               "exit_code": self.exit_code, "dir": tenant_dirname(self.name)}
        if self.message:
            row["message"] = self.message
        res = self.result
        if isinstance(res, SyncResult):
            row.update(snapshot=res.snapshot.name, promoted=res.promoted)
        elif res is not None and res.manifest is not None:
            row["run_id"] = res.manifest.get("run_id")
        return row


@dataclass(frozen=True, slots=True)
class TenantsResult:
    """How a run of many tenants ended: each tenant's outcome, the worst exit code and
    the summary written to ``ROOT/manifest.json``."""

    outcomes: list[TenantOutcome]
    exit_code: int
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``complete``, ``partial`` or ``failed``: the summary's status."""
        return str(self.manifest.get("status", "failed"))


#: Tenants start spread over this many seconds: started together, every credential's
#: budget window would open at the same instant, and the bursts (every tenant's whole
#: budget at once) would queue behind each other on both ends of the connection.
STAGGER: Final = 1.0


#: Where a tenant's own manifest is under its directory, by the kind of run.
_OWN_MANIFEST: Final = {"harvest": "manifest.json", "sync": "latest/manifest.json",
                        "learners": "learners/manifest.json"}
_STATUS_EXIT: Final = {"complete": EXIT_OK, "partial": EXIT_PARTIAL}


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object written by an earlier run, or ``{}`` (missing, unreadable, not one)."""
    try:
        data = orjson.loads(read_ours(path))
    except (OSError, SinkError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _classify(exc: HarvestError) -> int:
    """A tenant's exit code for what its run raised."""
    if isinstance(exc, AuthError):
        return EXIT_PARTIAL  # this credential was refused; the other tenants go on
    if isinstance(exc, ConfigError | StateError | UnsafePath):
        return EXIT_USAGE
    return EXIT_UNEXPECTED


class TenantRun:
    """Run one unit of work per tenant, concurrently, and write the run summary."""

    def __init__(self, tenants: list[Tenant], make: Callable[[Tenant], TenantWork], *,
                 kind: str, root: Path, shard: str = "",
                 summary_name: str = "manifest.json") -> None:
        self.kind, self.root, self.shard = kind, root, shard
        self.summary_name = summary_name
        self.units: dict[str, TenantWork] = {t.name: make(t) for t in tenants}
        self.outcomes = {t.name: TenantOutcome(t.name) for t in tenants}
        self.sources = {t.name: t.source for t in tenants}

    async def run(self) -> TenantsResult:
        """Every tenant to its end (a failed tenant is an outcome, not an exception)."""
        started = now_iso()
        spread = len(self.units)
        async with asyncio.TaskGroup() as tg:
            for i, (name, unit) in enumerate(self.units.items()):
                tg.create_task(self._one(name, unit, STAGGER * i / spread),
                               name=f"tenant-{name}")
        rows = [o.as_dict() for o in self.outcomes.values()]
        rows += self._not_run()
        manifest = summary(self.kind, rows, shard=self.shard, started_at=started,
                           ended_at=now_iso())
        write_json_atomic(self.root / self.summary_name, REDACTOR.scrub_obj(manifest),
                          root=self.root)
        return TenantsResult(list(self.outcomes.values()),
                             worst_exit([o.exit_code or 0 for o in self.outcomes.values()]),
                             manifest)

    def _not_run(self) -> list[dict[str, Any]]:
        """The summary rows of the tenants present under the root that this run did not
        drive (``--tenant``, a shard): each keeps its last recorded status, read from its
        own manifest, so the summary never says ``complete`` while one of them is not."""
        previous = _read_json(self.root / self.summary_name).get("tenants")
        previous = previous if isinstance(previous, dict) else {}
        rows: list[dict[str, Any]] = []
        for sub in sorted(self.root.glob(tenant_dirname("*"))):
            name = sub.name.removeprefix(tenant_dirname(""))
            if name in self.outcomes or not sub.is_dir() or sub.is_symlink():
                continue
            last = previous.get(name)
            own = _read_json(sub / _OWN_MANIFEST[self.kind])
            if not own and not isinstance(last, dict):
                continue  # nothing of this kind recorded (a harvest-only tenant's learners)
            row: dict[str, Any] = dict(last) if isinstance(last, dict) else {
                "name": name, "dir": sub.name, "status": "unknown", "exit_code": None}
            # A store's latest snapshot is its last promoted night, not its last night:
            # the summary's own row for it is newer when there is one.
            newer = self.kind == "sync" and isinstance(last, dict)
            if own.get("status") in _STATUS_EXIT and not newer:
                row["status"] = own["status"]
                row["exit_code"] = _STATUS_EXIT[own["status"]]
                row["run_id"] = own.get("run_id", row.get("run_id"))
            if not isinstance(row.get("exit_code"), int):
                row["exit_code"] = EXIT_UNEXPECTED  # no record of how it ended
            row.update(name=name, carried=True)  # not run this time: its last status
            rows.append(row)
        return rows

    async def _one(self, name: str, unit: TenantWork, delay: float) -> None:
        TENANT.set(name)  # this task's context: every event below names the tenant
        if delay > 0:
            await asyncio.sleep(delay)
        outcome = self.outcomes[name]
        outcome.status = "running"
        try:
            ensure_dir(self.root / tenant_dirname(name), root=self.root)
            result = await unit.run()
        except HarvestError as exc:
            outcome.status, outcome.exit_code = "failed", _classify(exc)
            message = str(exc)
            if isinstance(exc, AuthError):  # name this tenant's own variables or files
                message = message.replace(DEFAULT_SOURCE, self.sources[name])
            outcome.message = REDACTOR.scrub(message)
            event("tenant.failed", exit_code=outcome.exit_code, error=type(exc).__name__,
                  message=outcome.message)
            return
        outcome.result = result
        outcome.status, outcome.exit_code = result.status, result.exit_code
        run = result.run if isinstance(result, SyncResult) else result
        outcome.message = REDACTOR.scrub(run.message)
        event("tenant.done", status=outcome.status, exit_code=outcome.exit_code)

    def progress(self) -> dict[str, Mapping[str, Any]]:
        """Each tenant's status and its run's counters, for the live display."""
        return {name: {"status": self.outcomes[name].status, **unit.progress()}
                for name, unit in self.units.items()}
