"""One ``harvester learners`` run: each enterprise walked into staging, then published.

:class:`LearnerExport` owns the run around the walks: the lock, the staging directory (a
killed run's is removed; it is never published), one client under the learner-summary
budget, the outcome and exit code, which failed enterprises keep the previous run's files,
and publishing every file with the manifest last (see the package docstring). The walk of
one enterprise (dedupe, ``--pii``, the staged files) is
:class:`~harvester.learners.walker.EnterpriseWalker`'s. Must not print, draw progress or
parse flags.

It shares the run id (:func:`~harvester.run.new_run_id`), the walker, the walk counters
and the error records with the catalog harvest, but not
:class:`~harvester.pipeline.session.RunSession`: that session is a resume ledger, a
settings fingerprint and a writer's reopen, and a learner export has none of them (no
resume by design: a run starts over and publishes whole).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, Final

from harvester import __version__
from harvester.client import ApiClient
from harvester.config import Settings
from harvester.errors import ConfigError
from harvester.learners.files import (
    LEARNERS_DIR,
    MANIFEST_NAME,
    STAGING_DIR,
    check_out,
    files_intact,
    previous_manifest,
    private_dir,
    publish,
    remove_staging,
)
from harvester.learners.options import LearnerOptions
from harvester.learners.pii import PII_FIELDS, PiiMode, PiiPolicy
from harvester.learners.state import EnterpriseState
from harvester.learners.walker import PAGE_SIZE, EnterpriseWalker
from harvester.obs import Stats, event
from harvester.policy import Clock, Sleep
from harvester.run import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, RunResult, new_run_id, now_iso
from harvester.sinks import disk_errors, ensure_dir, write_json_atomic
from harvester.state import STATE_DIR, RunLock

__all__ = ["LearnerExport"]

_PROGRESS_EVERY: Final = 10.0
#: PII modes from most to least revealing: a failed enterprise keeps its previous files
#: only if they were written under a mode at least as strict as this run's.
_STRICTNESS: Final = {"keep": 0, "hash": 1, "drop": 2}
#: Request statistics copied into the manifest's totals.
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
                walker = EnterpriseWalker(
                    client, self.staging, options=self.options, pii=self.pii,
                    stats=self.stats, page_concurrency=self.settings.limits.page_concurrency,
                    on_page=self._page_taken)
                for es in self.enterprises:
                    await walker.export(es)
            return self._finish(self._clock() - t0)
        finally:
            remove_staging(self.staging)  # empty after a publish; else unfinished PII
            lock.release()


    def _page_taken(self) -> None:
        now = self._clock()
        if now - self._last_progress >= _PROGRESS_EVERY:
            self._last_progress = now
            event("learners.progress", **self.progress())

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
