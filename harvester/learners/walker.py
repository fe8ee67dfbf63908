"""One enterprise's learner summary, walked into its staging directory.

:class:`EnterpriseWalker` walks an enterprise's pages through the harvest's client and page
walker (:func:`harvester.pipeline.walk_pages`, rewalks by
:func:`~harvester.pipeline.walk_until_complete`), deduplicates by enrollment identity,
applies ``--pii`` before a row is written, and commits the NDJSON (and the CSV) in
staging once the walk is over. What it found is kept in the enterprise's
:class:`~harvester.learners.state.EnterpriseState`.

Writes only under the staging directory it is given: publishing, the manifest and the
previous run's files are :mod:`harvester.learners.export`'s. Creates no tasks itself (the
walker does). Must not print, draw progress or parse flags.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, urlsplit

from harvester.client import ApiClient, ThrottleClass, learners_path
from harvester.errors import ApiError, Forbidden, HarvestError, RequestError, Unauthorized
from harvester.learners.csv import write_csv
from harvester.learners.files import CSV_NAME, NDJSON_NAME, private_dir, unlink
from harvester.learners.options import LearnerOptions
from harvester.learners.pii import KNOWN_FIELDS, PiiPolicy
from harvester.learners.state import EnterpriseState, enrollment_identity
from harvester.models import Page
from harvester.obs import Stats, event
from harvester.paginate import ListingPlan
from harvester.partfile import FileInfo, PartFile, iter_lines
from harvester.pipeline import walk_pages, walk_until_complete
from harvester.redact import REDACTOR
from harvester.run import now_iso
from harvester.sinks import encode_item

__all__ = ["PAGE_SIZE", "EnterpriseWalker"]

PAGE_SIZE: Final = 1000  #: the endpoint's max_page_size


class EnterpriseWalker:
    """Exports enterprises, one at a time, into ``staging/enterprise=<uuid>/``.

    ``on_page`` is called after every page taken (the run's periodic progress event).
    """

    def __init__(self, client: ApiClient, staging: Path, *, options: LearnerOptions,
                 pii: PiiPolicy, stats: Stats, page_concurrency: int,
                 on_page: Callable[[], None]) -> None:
        self.client = client
        self.staging = staging
        self.options = options
        self.pii = pii
        self.stats = stats
        self.page_concurrency = page_concurrency
        self.on_page = on_page

    async def export(self, es: EnterpriseState) -> None:
        """Walk one enterprise and commit its files in staging; a refusal (401/403) or a
        walk that got nothing at all fails it and leaves no file."""
        directory = private_dir(self.staging / es.dirname)
        part = PartFile(directory / NDJSON_NAME, private=True)
        committed = False
        es.status = "listing"
        event("learners.enterprise_start", enterprise=es.uuid)
        try:
            try:
                await self._walks(es, part)
            except (ApiError, RequestError) as exc:  # 401/403, or nothing arrived at all
                _fail(es, exc)
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

    async def _walks(self, es: EnterpriseState, part: PartFile) -> None:
        seen: set[int] = set()
        broken: list[ApiError | RequestError] = []

        async def walk(n: int) -> bool:
            es.walks = n
            try:
                await self._walk(es, part, seen, seen if n == 1 else set())
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

    async def _walk(self, es: EnterpriseState, part: PartFile, seen: set[int],
                    walk_seen: set[int]) -> None:
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
        await walk_pages(self.client, ThrottleClass.LEARNERS, learners_path(es.uuid),
                         PAGE_SIZE, take, parallel=self.page_concurrency,
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
        self.on_page()

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


def _fail(es: EnterpriseState, exc: ApiError | RequestError) -> None:
    es.status = "failed"
    es.error = REDACTOR.scrub(str(exc))
    es.access_denied = isinstance(exc, Forbidden | Unauthorized)
    es.record_error("enterprise_failed", exc)
    event("learners.enterprise_failed", logging.WARNING, enterprise=es.uuid,
          error=type(exc).__name__, status=getattr(exc, "status", None))


def _page_of(exc: ApiError | RequestError) -> int | None:
    """The page number a failed request asked for (from its URL), if any."""
    values = parse_qs(urlsplit(exc.url).query).get("page")
    return int(values[0]) if values and values[0].isdigit() else None
