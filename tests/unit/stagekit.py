"""Socket-free parts for testing pipeline stages: a scripted API client, settings, and a
real writer and ledger in a temporary OUT."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from harvester.client import ApiClient, ThrottleClass
from harvester.config import Settings, load_settings
from harvester.errors import HarvestError, InvalidPage
from harvester.messages import Message
from harvester.models import JSONDict, Page, Response
from harvester.obs import Stats
from harvester.paginate import PageRequest
from harvester.pipeline.emit import Emitter
from harvester.policy import Cutoff
from harvester.state import Ledger
from harvester.writer import Writer


def settings(out: Path, **extra: object) -> Settings:
    """Valid settings for OUT (no request is ever made with them)."""
    cli: dict[str, object] = {"api.client_id": "i", "api.client_secret": "s",
                              "output.out": str(out), **extra}
    return load_settings(cli=cli, environ={}, config_file=None)[0]


@dataclass
class ScriptedClient:
    """Answers like :class:`ApiClient`, from lists and dicts: ``rows`` is the content
    list (served in pages of the requested size, with an honest count), ``details``
    maps a key to a body or to an error to raise. ``count`` is what page 1 reports
    (the number of rows unless set)."""

    rows: list[JSONDict] = field(default_factory=list)
    count: int | None = None
    details: dict[str, JSONDict | HarvestError] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    asked: list[str] = field(default_factory=list)

    async def get_page(self, throttle: ThrottleClass, path: str, req: PageRequest) -> Page:
        start = (req.page - 1) * req.page_size
        chunk = self.rows[start:start + req.page_size]
        if not chunk and req.page > 1:
            raise InvalidPage("Invalid page.", status=404)
        more = start + req.page_size < len(self.rows)
        count = len(self.rows) if self.count is None else self.count
        return Page(req.page, count, chunk, f"page={req.page + 1}" if more else None)

    async def get_json(self, throttle: ThrottleClass, path: str,
                       etag: str | None = None, cutoff: Cutoff | None = None) -> Response:
        key = path.rstrip("/").rsplit("/", 1)[-1]
        self.asked.append(key)
        await asyncio.sleep(0)  # let other workers run, as a real request would
        answer = self.details[key]
        if isinstance(answer, HarvestError):
            raise answer
        return Response(200, answer)

    def as_client(self) -> ApiClient:
        """Typed as the real client (the stages use only these two methods and stats)."""
        return cast(ApiClient, self)


@dataclass
class Rig:
    """A writer running on its queue, its ledger, and an emitter in front of it."""

    writer: Writer
    ledger: Ledger
    emit: Emitter


@asynccontextmanager
async def rig(out: Path, catalogs: list[str], *, now: Callable[[], str] = lambda: "T"
              ) -> AsyncIterator[Rig]:
    """A ledger knowing ``catalogs`` and a running writer; drained and closed on exit."""
    ledger = Ledger(out)
    ledger.set_meta(fingerprint="f", run_id="r", status="running")
    ledger.save_catalogs((c, {"uuid": c}) for c in catalogs)
    writer = Writer(out, ledger)
    writer.reopen_tracked([])
    queue: asyncio.Queue[Message | None] = asyncio.Queue(maxsize=64)
    emit = Emitter(queue, stats=Stats(), now=now)
    task = asyncio.create_task(writer.run(queue))
    try:
        yield Rig(writer, ledger, emit)
        await emit.barrier()
    finally:
        await queue.put(None)
        await task
        ledger.close()


def row(key: str, **extra: Any) -> JSONDict:
    """A listed course row."""
    return {"key": key, "content_type": "course", "title": key, **extra}
