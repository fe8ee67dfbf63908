"""``--metrics-file``: a command's run as a node_exporter textfile (Prometheus text format).

One source of truth: every number comes from a manifest-shaped view, the finished run's
``manifest.json`` data or, while it runs (and when it fails before a manifest), the live
:class:`~harvester.obs.Stats` and catalog states shaped by the same
:class:`~harvester.manifest.CatalogEntry` / :class:`~harvester.manifest.Totals`. So the
file always agrees with the manifest and the summary.

The text is produced by ``prometheus_client`` (a registry with one collector,
``generate_latest``) and written with :func:`~harvester.sinks.write_bytes_atomic`: a new
temp file of ours next to it, fsync, rename. A link planted at the path or at the temp
path is replaced, never followed.

``edx_harvester_last_success_timestamp_seconds`` survives failed runs: each write reads
it back (for every command) from the previous textfile at the same path and only a
``complete`` run moves its own command's value. When that file says nothing for the
command (deleted, first run), a sync starts from its store's latest manifest, if
complete. Must not make requests or create tasks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from harvester.errors import ConfigError, HarvestError, SinkError
from harvester.manifest import CatalogEntry, Totals
from harvester.models import CONTENT_TYPES
from harvester.obs import Stats, event
from harvester.policy import Sleep
from harvester.redact import REDACTOR
from harvester.run import CatalogState, read_json
from harvester.sinks import open_ours, resolved, write_bytes_atomic
from harvester.userpath import refuse_special

__all__ = ["INTERVAL", "STATUSES", "MetricsFile", "Tenants", "check_metrics_path",
           "live_manifest", "manifest_success", "read_last_success", "single"]

#: Seconds between writes during a run.
INTERVAL: Final = 30.0
#: The values of ``edx_harvester_run_status``'s ``status`` label (one is 1, the rest 0).
STATUSES: Final = ("running", "complete", "partial", "failed", "interrupted")
#: The implicit tenant's label until a config names tenants.
DEFAULT_TENANT: Final = "default"
_PREFIX: Final = "edx_harvester_"
_LAST_SUCCESS: Final = f"{_PREFIX}last_success_timestamp_seconds"
_MAX_PREVIOUS: Final = 1 << 20  # a textfile of ours is a few KB; anything bigger is not
_STEM_TYPES: Final = {stem: ctype for ctype, (stem, _) in CONTENT_TYPES.items()}


def check_metrics_path(path: Path, name: str = "--metrics-file",
                       own: Iterable[Path | None] = ()) -> Path:
    """``--metrics-file``'s (or ``output.metrics_file``'s, ``name``) value, refused
    (:class:`ConfigError`) unless a file can be written there: its directory must exist,
    what is at the path (lstat: a link is replaced, never followed) must be a regular
    file or a link, and it must not lie inside one of the run's ``own`` directories (OUT,
    the store), whose files the textfile would replace or which it would clutter."""
    if not str(path).strip():
        raise ConfigError(f"{name}: expected a file path, got an empty value")
    refuse_special(path, name)
    if not path.parent.is_dir():
        raise ConfigError(f"{name}: the directory {path.parent} does not exist")
    where = resolved(path.parent) / path.name
    for root in own:
        if root is not None and where.is_relative_to(resolved(root)):
            raise ConfigError(f"{name}: {path} is inside {root}, which this run writes; "
                              "name a file outside it")
    return path


def read_last_success(path: Path) -> dict[str, float]:
    """Each command's last-success timestamp in the previous textfile at ``path``
    (empty when there is none, it is a link, symbolic or hard, or it does not parse)."""
    try:
        # Non-blocking, one name: a FIFO planted there since the check must not hang the
        # run's end, and a hard link's numbers are another file's, not our last run's.
        fd = open_ours(path)
    except (OSError, SinkError):
        return {}
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(_MAX_PREVIOUS + 1)
    try:
        families = list(text_string_to_metric_families(raw[:_MAX_PREVIOUS].decode()))
    except (UnicodeDecodeError, ValueError, TypeError):
        event("metrics.previous_unreadable", logging.WARNING, path=str(path))
        return {}
    return {s.labels["command"]: float(s.value) for f in families if f.name == _LAST_SUCCESS
            for s in f.samples if s.name == _LAST_SUCCESS and "command" in s.labels}


def manifest_success(directory: Path | None) -> float | None:
    """When the run whose ``manifest.json`` is in ``directory`` ended, if it was complete."""
    data = read_json(directory / "manifest.json") if directory is not None else None
    if not data or data.get("status") != "complete":
        return None
    try:
        return datetime.fromisoformat(str(data["ended_at"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None


def _item_type(filename: str) -> str | None:
    """The item type an NDJSON file holds (``courses.ndjson`` -> ``course``), or None
    for a file that does not count items (a CSV copy, a change feed)."""
    if filename.startswith("changes."):
        return None
    for ext in (".ndjson", ".ndjson.gz"):
        if filename.endswith(ext):
            stem = filename.removesuffix(ext)
            return _STEM_TYPES.get(stem, stem)
    return None


#: What one write reports: each tenant's manifest-shaped numbers, by tenant name.
Tenants = Mapping[str, Mapping[str, Any]]


def single(manifest: Mapping[str, Any] | None) -> Tenants:
    """The numbers of a run without ``[[tenants]]``: one tenant, ``default``."""
    return {DEFAULT_TENANT: manifest or {}}


@dataclass(frozen=True, slots=True)
class TenantView:
    """One tenant's manifest (``catalogs`` or ``enterprises``, ``totals``, ``files``)."""

    tenant: str
    manifest: Mapping[str, Any]

    @property
    def totals(self) -> Mapping[str, Any]:
        """The manifest's totals (counts and request statistics)."""
        return self.manifest.get("totals") or {}

    def groups(self) -> Mapping[str, Mapping[str, Any]]:
        """Catalogs (harvest, sync) or enterprises (learners), by UUID."""
        return self.manifest.get("catalogs") or self.manifest.get("enterprises") or {}

    def files(self) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
        """``(group uuid or "", file name, file info)`` for every file the view names."""
        for uuid, group in self.groups().items():
            for name, info in (group.get("files") or {}).items():
                yield uuid, name, info
            if feed := (group.get("sync") or {}).get("feed"):  # a sync's changes.ndjson
                yield uuid, "changes.ndjson", feed
        for uuid, gone in (self.manifest.get("gone_catalogs") or {}).items():
            if feed := gone.get("feed"):
                yield uuid, "changes.ndjson", feed
        for name, info in (self.manifest.get("files") or {}).items():
            if isinstance(info, Mapping):
                yield "", name, info

    def sync_sum(self, key: str) -> int:
        """A sync block count summed over the catalogs (0 for other commands)."""
        return sum(int((g.get("sync") or {}).get(key, 0)) for g in self.groups().values())


@dataclass(slots=True, eq=False)  # the registry keys collectors by identity
class _Families(Collector):
    """The collector: one run's families, built from its tenants' views at collect time."""

    command: str
    status: str
    views: list[TenantView]
    started: float
    ended: float | None
    last_success: Mapping[str, float]

    def collect(self) -> Iterable[Metric]:
        yield from self._run()
        yield from self._items()
        yield from self._requests()
        yield from self._sync()

    def _gauge(self, name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(_PREFIX + name, doc, labels=["command", *labels])

    def _counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
        return CounterMetricFamily(_PREFIX + name, doc, labels=["command", "tenant", *labels])

    def _run(self) -> Iterator[Metric]:
        cmd = self.command
        status = self._gauge("run_status", "1 for the run's current status (running, "
                             "complete, partial, failed, interrupted), 0 for the others",
                             ["status"])
        for s in STATUSES:
            status.add_metric([cmd, s], 1.0 if s == self.status else 0.0)
        yield status
        start = self._gauge("run_start_timestamp_seconds", "When the run started (Unix time)")
        start.add_metric([cmd], self.started)
        yield start
        if self.ended is not None:
            end = self._gauge("run_end_timestamp_seconds", "When the run ended (Unix time)")
            end.add_metric([cmd], self.ended)
            yield end
        last = GaugeMetricFamily(_LAST_SUCCESS, "When a run of this command last ended "
                                 "complete (Unix time); kept across failed runs",
                                 labels=["command"])
        for c, ts in sorted(self.last_success.items()):
            last.add_metric([c], ts)
        yield last
        wall = self._gauge("run_duration_seconds", "Wall time of the run so far")
        wall.add_metric([cmd], max((float(v.totals.get("wall_seconds", 0.0))
                                    for v in self.views), default=0.0))
        yield wall
        errors = self._gauge("run_errors", "Failures recorded in errors.ndjson by this run")
        errors.add_metric([cmd], float(sum(int(v.totals.get("errors", 0)) for v in self.views)))
        yield errors

    def _items(self) -> Iterator[Metric]:
        cmd = self.command
        items = self._gauge("items", "Items in the output files, by tenant, catalog (or "
                            "enterprise) and type", ["tenant", "catalog", "type"])
        listed = self._gauge("listed_items", "Unique items listed, by tenant and catalog",
                             ["tenant", "catalog"])
        written = self._counter("written_bytes", "Bytes of the files this run committed")
        for v in self.views:
            nbytes = 0
            for uuid, name, info in v.files():
                nbytes += int(info.get("bytes", 0))
                kind = _item_type(name)
                if uuid and kind is not None:
                    items.add_metric([cmd, v.tenant, uuid, kind], float(info.get("lines", 0)))
            written.add_metric([cmd, v.tenant], float(nbytes))
            for uuid, group in v.groups().items():
                listed.add_metric([cmd, v.tenant, uuid], float(group.get("unique_found", 0)))
        yield from (items, listed, written)

    def _requests(self) -> Iterator[Metric]:
        cmd = self.command
        requests = self._counter("requests", "HTTP responses, by throttle class and status",
                                 ["class", "status"])
        throttled = self._counter("throttled_responses", "429 Too Many Requests answers")
        retries = self._counter("retries", "Requests retried, by cause", ["cause"])
        received = self._counter("response_bytes", "Bytes of response bodies received")
        for v in self.views:
            t = v.totals
            for klass, by_status in sorted((t.get("requests") or {}).items()):
                for code, n in sorted(by_status.items()):
                    requests.add_metric([cmd, v.tenant, klass, str(code)], float(n))
            throttled.add_metric([cmd, v.tenant], float(t.get("throttled_429", 0)))
            for cause, n in sorted((t.get("retries_by_cause") or {}).items()):
                retries.add_metric([cmd, v.tenant, cause], float(n))
            received.add_metric([cmd, v.tenant], float(t.get("bytes_in", 0)))
        yield from (requests, throttled, retries, received)

    def _sync(self) -> Iterator[Metric]:
        cmd = self.command
        saved = self._counter("sync_detail_requests_saved", "Detail requests a sync did not "
                              "make: unchanged items carried from the previous snapshot")
        deferred = self._gauge("deferred_items", "Items a deadline left for the next run "
                               "(kept stale, first in line)", ["tenant"])
        for v in self.views:
            saved.add_metric([cmd, v.tenant], float(v.sync_sum("carried")))
            deferred.add_metric([cmd, v.tenant], float(v.sync_sum("deferred")))
        yield from (saved, deferred)


@dataclass(slots=True)
class MetricsFile:
    """The textfile of one command's run: :meth:`tick` while it runs, :meth:`finish` once.

    ``live`` gives the running view (set by the command once its job exists); ``every``
    and ``sleep`` pace the periodic writes; ``clock`` is wall time (Unix seconds).
    """

    path: Path
    command: str
    every: float = INTERVAL
    clock: Callable[[], float] = time.time
    sleep: Sleep = asyncio.sleep
    live: Callable[[], Tenants] | None = None
    started: float = 0.0
    #: the last success known elsewhere (a store's latest manifest), used when the
    #: previous textfile does not say (it was deleted, or this is its first run)
    known_success: float | None = None
    #: how the run ended, set by the command: (status, its tenants' manifests or None)
    outcome: tuple[str, Tenants | None] | None = None
    _warned: bool = field(default=False, init=False)

    #: where the path came from, for the error naming it
    source: str = "--metrics-file"
    #: the run's own directories (OUT, the store): the textfile must not be inside them
    own: tuple[Path | None, ...] = ()

    def __post_init__(self) -> None:
        check_metrics_path(self.path, self.source, self.own)
        self.started = self.started or self.clock()

    def tick(self) -> None:
        """A periodic write during the run (a failure is logged once, never raised)."""
        try:
            self.write("running")
        except HarvestError as exc:
            if not self._warned:
                self._warned = True
                event("metrics.write_failed", logging.WARNING, error=REDACTOR.scrub(str(exc)))

    def finish(self, status: str, tenants: Tenants | None = None) -> None:
        """The final write: the run's ``status``, from its manifests when it wrote them."""
        self.write(status, tenants, ended=self.clock())

    def write(self, status: str, tenants: Tenants | None = None, *,
              ended: float | None = None) -> None:
        """Write the textfile atomically (raises :class:`~harvester.errors.SinkError`)."""
        if tenants is None:
            tenants = self.live() if self.live is not None else single(None)
        last = read_last_success(self.path)
        if self.known_success is not None:
            last.setdefault(self.command, self.known_success)
        if status == "complete" and ended is not None:
            last[self.command] = ended
        views = [TenantView(name, m) for name, m in tenants.items()]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(self.command, status, views, self.started, ended, last))
        try:  # something else put there since the start is not ours to replace
            refuse_special(self.path, self.source)
        except ConfigError as exc:
            raise SinkError(str(exc)) from None
        write_bytes_atomic(self.path, generate_latest(registry))


def live_manifest(catalogs: Iterable[CatalogState], stats: Stats, *, errors: int = 0
                  ) -> dict[str, Any]:
    """A running harvest's numbers in the manifest's shape (the same CatalogEntry and
    Totals the manifest is made of)."""
    cats = list(catalogs)
    return {"catalogs": {cs.uuid: CatalogEntry.of(cs).to_json() for cs in cats},
            "totals": Totals.of(cats, errors=errors, stats=stats.as_dict()).to_json()}
