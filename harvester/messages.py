"""What flows to the writer: file keys and the messages on its queue, as plain data.

Stages upstream build these (through ``pipeline/emit.py``); only the writer
(``writer.py``) acts on them. :func:`error_rows` reads an error line the way the ledger
records it. No I/O here: nothing in this module opens a file or touches the ledger.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from harvester.partfile import FileInfo
from harvester.run import Phase
from harvester.state import WalkRecord

#: ("out", catalog, content_type) | ("spool", catalog) | ("errors",)
FileKey = tuple[str, ...]
ERRORS_KEY: Final[FileKey] = ("errors",)


@dataclass(slots=True)
class Write:
    """Append ``data`` (one or more complete lines) to a file; ``done`` marks an item
    ``(catalog, digest)`` as finished once these bytes are durable."""

    key: FileKey
    data: bytes
    done: tuple[str, int] | None = None


@dataclass(slots=True)
class PageDone:
    """Every item of this page has been sent to the writer before this message."""

    catalog: str
    walk: int
    page: int


@dataclass(slots=True)
class WalkPlanned:
    """Page 1 of a walk arrived; remember its plan."""

    catalog: str
    walk: int
    plan: WalkRecord


@dataclass(slots=True)
class CatalogInfo:
    """The latest counters of a catalog (for the manifest and resume)."""

    catalog: str
    info: dict[str, Any]


@dataclass(slots=True)
class PhaseChange:
    """A catalog moved to another phase (``listed``, ``failed``...)."""

    catalog: str
    phase: Phase


@dataclass(slots=True)
class Barrier:
    """Checkpoint now and resolve the future (used before reading a spool back)."""

    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop()
                                       .create_future())


@dataclass(slots=True)
class CommitErrors:
    """Commit ``errors.ndjson`` (the last message of a run)."""

    done: asyncio.Future[FileInfo] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(slots=True)
class CommitCatalog:
    """Commit a finished catalog's files under their final names."""

    catalog: str
    done: asyncio.Future[dict[str, FileInfo]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


Message = (Write | PageDone | WalkPlanned | CatalogInfo | PhaseChange | Barrier | CommitCatalog
           | CommitErrors)



def error_rows(data: bytes) -> list[tuple[str | None, str | None, bytes]]:
    """``(catalog, kind, line)`` of each error line in ``data``, for the ledger."""
    rows: list[tuple[str | None, str | None, bytes]] = []
    for line in data.splitlines(keepends=True):
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            rec = None
        rec = rec if isinstance(rec, dict) else {}
        cat, kind = rec.get("catalog_uuid"), rec.get("kind")
        rows.append((cat if isinstance(cat, str) else None,
                     kind if isinstance(kind, str) else None, line))
    return rows
