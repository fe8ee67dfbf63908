"""One ``harvester learners`` run: walk each enterprise's learner summary, stage, publish.

:class:`LearnerExport` exports enterprises one after another under the learner-summary
budget, through the harvest's client and page walker
(:func:`harvester.pipeline.walk_pages`, :func:`~harvester.pipeline.walk_until_complete`),
deduplicating by enrollment identity, applying ``--pii`` before anything is written, and
publishing every file with the manifest last (see the package docstring). Creates no
tasks itself (the walker does). Must not print, draw progress or parse flags.

It shares the run id (:func:`~harvester.run.new_run_id`), the walker, the walk counters
and the error records with the catalog harvest, but not
:class:`~harvester.pipeline.session.RunSession`: that session is a resume ledger, a
settings fingerprint and a writer's reopen, and a learner export has none of them (no
resume by design: a run starts over and publishes whole).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from harvester import __version__
from harvester.client import ApiClient, ThrottleClass, learners_path
from harvester.config import Settings
from harvester.errors import (
    ApiError,
    ConfigError,
    Forbidden,
    HarvestError,
    RequestError,
    Unauthorized,
)
from harvester.learners.csv import write_csv
from harvester.learners.files import (
    CSV_NAME,
    LEARNERS_DIR,
    MANIFEST_NAME,
    NDJSON_NAME,
    STAGING_DIR,
    check_out,
    files_intact,
    previous_manifest,
    private_dir,
    publish,
    remove_staging,
    unlink,
)
from harvester.learners.options import LearnerOptions
from harvester.learners.pii import KNOWN_FIELDS, PII_FIELDS, PiiMode, PiiPolicy
from harvester.learners.state import EnterpriseState, enrollment_identity
from harvester.models import Page
from harvester.obs import REDACTOR, Stats, event
from harvester.paginate import ListingPlan
from harvester.pipeline import walk_pages, walk_until_complete
from harvester.policy import Clock, Sleep
from harvester.run import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, RunResult, new_run_id, now_iso
from harvester.sinks import (
    FileInfo,
    PartFile,
    disk_errors,
    encode_item,
    ensure_dir,
    iter_lines,
    write_json_atomic,
)
from harvester.state import STATE_DIR, RunLock

__all__ = ["PAGE_SIZE", "LearnerExport"]

PAGE_SIZE: Final = 1000  #: the endpoint's max_page_size
_PROGRESS_EVERY: Final = 10.0
#: Request statistics copied into the manifest's totals.
#: PII modes from most to least revealing: a failed enterprise keeps its previous files
#: only if they were written under a mode at least as strict as this run's.
_STRICTNESS: Final = {"keep": 0, "hash": 1, "drop": 2}
_STAT_TOTALS: Final = ("requests", "requests_total", "retries", "retries_by_cause",
                       "throttled_429", "transport_errors", "bytes_in", "tokens_issued", "pages")


class LearnerExport:
    """One ``harvester learners`` run: enterprises one after another, one budget."""

    def __init__(
        self,
        settings: Settings,
        options: LearnerOptions,
        pii: PiiPolicy,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        stats: Stats | None = None,
    ) -> None:
        if pii.mode is not options.pii:
            raise ConfigError(f"the PII policy ({pii.mode}) does not match --pii "
                              f"({options.pii})")
        self.settings = settings
        self.options = options
        self.pii = pii
        self.out = settings.output.out
        self.root = self.out / LEARNERS_DIR
        self.staging = self.root / STATE_DIR / STAGING_DIR
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self.stats = stats or Stats()
        self.enterprises = [EnterpriseState(u) for u in options.enterprises]
        self.run_id = ""
        self.started_at = ""
        self._previous: dict[str, Any] | None = None
        self._last_progress = 0.0

    def pii_notice(self) -> str | None:
        """The one-line stderr notice for ``--pii keep``, else None."""
        if self.pii.mode is not PiiMode.KEEP:
            return None
        return (f"harvester: note: {self.root}/ will hold personal data (emails, names, "
                "usernames, SSO ids, grades); files are private (0600). Use --pii hash or "
                "--pii drop to pseudonymise or remove identifying fields.")

    async def run(self) -> RunResult:
        """Export every enterprise into staging, then publish; the manifest is written last."""
        self.settings.api.require_credentials()
        check_out(self.out)
        ensure_dir(self.out)
        private_dir(self.root)
        private_dir(self.root / STATE_DIR)  # before RunLock makes it with default modes
        lock = RunLock(self.root)
        lock.acquire()
        with disk_errors(lock.path):
            lock.path.chmod(0o600)
        try:
            remove_staging(self.staging)  # what a killed run left: never published
            self._previous = previous_manifest(self.root)
            private_dir(self.staging)
            self.run_id = new_run_id()
            self.started_at = now_iso()
            event("learners.start", run_id=self.run_id, enterprises=len(self.enterprises),
                  pii=self.pii.mode.value, csv=self.options.csv,
                  consented_only=self.options.consented_only)
            t0 = self._clock()
            self._last_progress = t0
            async with ApiClient(self.settings, stats=self.stats, clock=self._clock,
                                 sleep=self._sleep, rand=self._rand) as client:
                for es in self.enterprises:
                    await self._export(client, es)
            return self._finish(self._clock() - t0)
        finally:
            remove_staging(self.staging)  # empty after a publish; else unfinished PII
            lock.release()

    async def _export(self, client: ApiClient, es: EnterpriseState) -> None:
        directory = private_dir(self.staging / es.dirname)
        part = PartFile(directory / NDJSON_NAME, private=True)
        committed = False
        es.status = "listing"
        event("learners.enterprise_start", enterprise=es.uuid)
        try:
            try:
                await self._walks(client, es, part)
            except (ApiError, RequestError) as exc:  # 401/403, or nothing arrived at all
                self._fail(es, exc)
                return
            self._commit(es, part, directory)
            committed = True
        finally:
            if not committed:
                part.abandon()
                unlink(part.path)
        event("learners.enterprise_done", enterprise=es.uuid, status=es.status,
              count=es.count_reported, written=es.rows_written, duplicates=es.duplicates,
              gaps=es.gaps, walks=es.walks, pages=es.pages)

    def _fail(self, es: EnterpriseState, exc: ApiError | RequestError) -> None:
        es.status = "failed"
        es.error = REDACTOR.scrub(str(exc))
        es.access_denied = isinstance(exc, Forbidden | Unauthorized)
        es.record_error("enterprise_failed", exc)
        event("learners.enterprise_failed", logging.WARNING, enterprise=es.uuid,
              error=type(exc).__name__, status=getattr(exc, "status", None))

    async def _walks(self, client: ApiClient, es: EnterpriseState, part: PartFile) -> None:
        seen: set[int] = set()
        broken: list[ApiError | RequestError] = []

        async def walk(n: int) -> bool:
            es.walks = n
            try:
                await self._walk(client, es, part, seen, seen if n == 1 else set())
                return True
            except (Forbidden, Unauthorized):
                raise  # these credentials may not read it: no page will do better
            except (ApiError, RequestError) as exc:
                # A page the walk could not go on without (page 1, or a later page that
                # broke the walk): keep every row so far; a rewalk may find the rest.
                broken.append(exc)
                es.page_errors += 1
                es.record_error("walk_failed", exc, page=_page_of(exc))
                event("learners.walk_failed", logging.WARNING, enterprise=es.uuid, walk=n,
                      error=type(exc).__name__, status=getattr(exc, "status", None))
                return False  # cut short: it cannot show that the gap is persistent

        await walk_until_complete(walk, lambda: (es.unique, es.count_reported), first=1,
                                  max_rewalks=self.options.max_rewalks,
                                  event_name="learners.rewalk", enterprise=es.uuid)
        if broken and es.rows_received == 0:
            raise broken[0]  # nothing arrived at all: the enterprise failed
        es.gaps = max(0, (es.count_reported or 0) - es.unique)
        unjudged = es.count_reported is None and es.page_errors > 0
        es.status = "partial" if es.gaps or unjudged else "complete"
        if es.gaps:
            event("learners.gaps", logging.WARNING, enterprise=es.uuid, gaps=es.gaps,
                  count=es.count_reported, walks=es.walks)

    async def _walk(self, client: ApiClient, es: EnterpriseState, part: PartFile,
                    seen: set[int], walk_seen: set[int]) -> None:
        async def on_plan(plan: ListingPlan) -> None:
            es.planned(plan)

        async def on_page_error(number: int, exc: HarvestError) -> None:
            es.page_errors += 1
            es.record_error("page_failed", exc, page=number)
            event("learners.page_failed", logging.WARNING, enterprise=es.uuid, page=number,
                  error=type(exc).__name__)

        async def take(page: Page) -> None:
            self._take(es, part, page, seen, walk_seen)

        # Only a refusal ends the walk: a page that keeps answering markup (a maintenance
        # page) is one failed page, not a reason to drop the others. The walker raises
        # the leading error of its page workers, never a group.
        await walk_pages(client, ThrottleClass.LEARNERS, learners_path(es.uuid), PAGE_SIZE,
                         take, parallel=self.settings.limits.page_concurrency,
                         on_plan=on_plan, on_page_error=on_page_error,
                         fatal=(Forbidden, Unauthorized))

    def _take(self, es: EnterpriseState, part: PartFile, page: Page, seen: set[int],
              walk_seen: set[int]) -> None:
        meta = {"enterprise_uuid": es.uuid, "fetched_at": now_iso(), "pii": self.pii.mode.value}
        for row in page.results:
            es.rows_received += 1
            digest = enrollment_identity(row)
            if digest in walk_seen:
                es.duplicates += 1  # the page boundaries moved within this walk
                continue
            new = digest not in seen  # else written by an earlier walk
            walk_seen.add(digest)
            seen.add(digest)
            if not new:
                continue
            es.unique += 1
            if self.options.consented_only and row.get("is_consent_granted") is not True:
                es.not_consented += 1
                continue
            es.tally.add(row)
            out = self.pii.apply(row)
            es.extra_fields.update(k for k in out if k not in KNOWN_FIELDS)
            part.write(encode_item(out, meta))
            es.rows_written += 1
            self.stats.items_written += 1
        es.pages += 1
        now = self._clock()
        if now - self._last_progress >= _PROGRESS_EVERY:
            self._last_progress = now
            event("learners.progress", **self.progress())

    def _commit(self, es: EnterpriseState, part: PartFile, directory: Path) -> None:
        """Write the CSV from the NDJSON ``.part``, then rename both.

        Runs on the event loop on purpose: enterprises are exported one at a time, so
        nothing else is waiting, and a thread could outlive a cancelled run.
        """
        part.checkpoint()
        csv_part: PartFile | None = None
        try:
            if self.options.csv:
                csv_part = PartFile(directory / CSV_NAME, private=True)
                write_csv(iter_lines(part.path), self.pii.columns(es.extra_fields), csv_part)
            infos: list[FileInfo] = [part.commit()]
            if csv_part is not None:
                infos.append(csv_part.commit())
                csv_part = None
        finally:
            if csv_part is not None:
                csv_part.abandon()
                unlink(csv_part.path)
        es.files = {i.name: i.as_dict() for i in infos}

    def _outcome(self) -> tuple[str, int, int]:
        """``(status, exit code, enterprises done)``."""
        done = sum(es.status in ("complete", "partial") for es in self.enterprises)
        if all(es.status == "complete" for es in self.enterprises):
            return "complete", EXIT_OK, done
        if done:
            return "partial", EXIT_PARTIAL, done
        denied = all(es.access_denied for es in self.enterprises)
        return "failed", EXIT_USAGE if denied else EXIT_PARTIAL, done

    def _totals(self, done: int, wall: float) -> dict[str, Any]:
        ents = self.enterprises
        totals: dict[str, Any] = {
            "enterprises": len(ents),
            "enterprises_done": done,
            "rows_written": sum(es.rows_written for es in ents),
            "duplicates_dropped": sum(es.duplicates for es in ents),
            "not_consented_dropped": sum(es.not_consented for es in ents),
            "gaps": sum(es.gaps for es in ents),
            "learners": sum(len(es.tally.learners) for es in ents),
            **{k: sum(getattr(es.tally, k) for es in ents)
               for k in ("enrollments", "passed", "in_progress", "failed")},
        }
        stats = self.stats.as_dict()
        totals.update({k: stats[k] for k in _STAT_TOTALS})
        totals["wall_seconds"] = round(wall, 3)
        return totals

    def _manifest(self, status: str, totals: dict[str, Any]) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at,
            "ended_at": now_iso(),
            "status": status,
            "version": __version__,
            "pii": {"mode": self.pii.mode.value, "fields": list(PII_FIELDS),
                    "key_id": self.pii.key_id},
            "consented_only": self.options.consented_only,
            "csv": self.options.csv,
            "config": {"api_base": self.settings.api.base,
                       "rate_learners": str(self.settings.limits.learners),
                       "page_size": PAGE_SIZE, "max_rewalks": self.options.max_rewalks},
            "enterprises": {es.uuid: es.manifest() for es in self.enterprises},
            "totals": totals,
        }

    def _finish(self, wall: float) -> RunResult:
        status, code, done = self._outcome()
        kept = {es.dirname: list(es.files) for es in self.enterprises if self._carry(es)}
        totals = self._totals(done, wall)
        manifest = self._manifest(status, totals)
        # Nothing exported: the previous export and its manifest stay byte for byte.
        unchanged = not done and self._previous is not None
        if not unchanged:
            publish(self.root, self.staging,
                    [(es.dirname, es.files) for es in self.enterprises],
                    [es.dirname for es in self.enterprises], kept)
            write_json_atomic(self.root / MANIFEST_NAME, manifest, private=True)
        event("learners.done", run_id=self.run_id, status=status,
              rows=totals["rows_written"], gaps=totals["gaps"], published=not unchanged)
        message = ""
        if code == EXIT_USAGE:
            first, more = self.enterprises[0], len(self.enterprises) - 1
            message = (f"no enterprise could be exported: these credentials may not read "
                       f"the learner summary of {first.uuid}"
                       + (f" and {more} more" if more else "") + f" ({first.error})")
        elif not done:
            message = "no enterprise could be exported (see the errors above)"
        if unchanged:
            message += f"; the previous export in {self.root} and its manifest are unchanged"
        return RunResult(status, code, self.root, manifest, message)

    def _carry(self, es: EnterpriseState) -> bool:
        """Whether a failed enterprise keeps the previous run's files (recorded in
        ``es``): only files its manifest vouches for (sha256), written under a PII mode
        and consent filter at least as strict as this run's; else they go."""
        prev = self._previous
        entry = (prev or {}).get("enterprises", {}).get(es.uuid) if es.status == "failed" else None
        if prev is None or not isinstance(entry, dict) or not entry.get("files"):
            return False
        origin = entry.get("previous_files") or {}
        pii = origin.get("pii") or (prev.get("pii") or {}).get("mode")
        consented = origin.get("consented_only", prev.get("consented_only"))
        why = None
        if _STRICTNESS.get(str(pii), -1) < _STRICTNESS[self.pii.mode.value]:
            why = f"written under --pii {pii}, less strict than this run's {self.pii.mode}"
        elif self.options.consented_only and consented is not True:
            why = "written without --consented-only, which this run asks for"
        elif not files_intact(self.root / es.dirname, entry["files"]):
            why = "not as the previous manifest describes them"
        if why is not None:
            es.previous_files = {"carried": False, "removed": True, "reason": why}
            return False
        es.files = dict(entry["files"])
        es.previous_files = {
            "carried": True, "stale": True,
            "from_run": origin.get("from_run") or prev.get("run_id"), "pii": pii,
            "key_id": origin.get("key_id", (prev.get("pii") or {}).get("key_id")),
            "consented_only": consented}
        return True

    def progress(self) -> dict[str, Any]:
        """A snapshot for progress displays and the periodic log event."""
        return {
            "enterprises_done": sum(es.settled for es in self.enterprises),
            "enterprises": len(self.enterprises),
            "rows": sum(es.rows_written for es in self.enterprises),
            "pages": sum(es.pages for es in self.enterprises),
            "requests": self.stats.total_requests(),
            "throttled": self.stats.throttled,
        }


def _page_of(exc: ApiError | RequestError) -> int | None:
    """The page number a failed request asked for (from its URL), if any."""
    values = parse_qs(urlsplit(exc.url).query).get("page")
    return int(values[0]) if values and values[0].isdigit() else None
