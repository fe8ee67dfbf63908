"""OUT's layout: which names a harvest writes there, and clearing them (``--restart``).

* :func:`catalog_dirname` routes a catalog to ``catalog=<uuid>``; anything that is not a
  canonical (lowercase) UUID is percent-encoded and tagged with a hash of the exact id, so
  nothing a server sends can name a path outside OUT and no two ids share a directory.
* :func:`output_path`, :data:`ITEM_NAMES`, :data:`CATALOG_FILES`, :data:`TOP_FILES`:
  every name of ours.
* :func:`leftovers` finds an earlier run's outputs; :func:`clear_outputs` removes exactly
  our names and nothing else. No link is followed.

Names only: files are written elsewhere (:mod:`harvester.sinks`, :mod:`harvester.partfile`);
the only things done to the disk here are looking at OUT, reading a finished run's lists
and unlinking files of ours.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Final
from urllib.parse import quote

import orjson

from harvester.errors import SinkError
from harvester.models import CONTENT_TYPES, OTHER_STEM, file_stem
from harvester.partfile import iter_lines
from harvester.sinks import PART, clear_dir, disk_errors, is_ours

_CANONICAL_UUID_RE: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def catalog_dirname(catalog_uuid: str) -> str:
    """``catalog=<uuid>`` for a canonical (lowercase) UUID; else a safe, unique encoding.

    One-to-one: any other id (an upper-case UUID included, so ids that differ only in case
    never share a directory, even on a case-insensitive filesystem) is percent-encoded,
    cut at 80 characters and tagged with 12 hex digits of the sha256 of the exact id.
    """
    if _CANONICAL_UUID_RE.fullmatch(catalog_uuid):
        return f"catalog={catalog_uuid}"
    digest = hashlib.sha256(catalog_uuid.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    safe = quote(catalog_uuid, safe="-_")[:80]  # encodes '/', '.', '%', NUL, ...
    return f"catalog=x-{safe}-{digest}"


def output_path(out: Path, catalog_uuid: str, content_type: str, *, compress: bool) -> Path:
    """Where a catalog's items of one content type go (the final name)."""
    ext = ".ndjson.gz" if compress else ".ndjson"
    return out / catalog_dirname(catalog_uuid) / f"{file_stem(content_type)}{ext}"


#: The content types whose items a catalog's files hold (``other`` for the rest).
ITEM_TYPES: Final = ("course", "courserun", "program", "learnerpathway", "other")
#: Their file stems (``changes`` and any other file there are not items).
ITEM_STEMS: Final = frozenset(stem for stem, _ in CONTENT_TYPES.values()) | {OTHER_STEM}
#: The committed item files' exact names (plain or gzip).
ITEM_NAMES: Final = frozenset(f"{stem}{ext}" for stem in ITEM_STEMS
                              for ext in (".ndjson", ".ndjson.gz"))
#: Every file a harvest writes in a catalog directory: the item files (plain or gzip) and
#: the change feed, each also as its ``.part``. Nothing else there is ours.
CATALOG_FILES: Final = frozenset(f"{name}{part}" for name in ITEM_NAMES for part in ("", PART)
                                 ) | {"changes.ndjson", "changes.ndjson" + PART} | {
    f".{name}{PART}.tmp" for name in ITEM_NAMES}  # a rewrite's (harvester.stalecut)
#: What a harvest writes at the top of OUT (besides catalog directories and ``.state``).
TOP_FILES: Final = ("manifest.json", ".manifest.json.tmp", "catalogs.ndjson",
                    "errors.ndjson", "catalogs.ndjson.part", "errors.ndjson.part",
                    ".errors.ndjson.part.tmp", "index.sqlite", "index.sqlite-wal",
                    "index.sqlite-shm", "index.sqlite-journal")
#: A catalog directory's name as :func:`catalog_dirname` makes it (either form).
_CATALOG_DIR_RE: Final = re.compile(
    f"catalog=(?:{_CANONICAL_UUID_RE.pattern}|x-[A-Za-z0-9%_-]{{0,80}}-[0-9a-f]{{12}})")


def is_catalog_dirname(name: str) -> bool:
    """Whether ``name`` is a catalog directory's name as :func:`catalog_dirname` makes it."""
    return _CATALOG_DIR_RE.fullmatch(name) is not None


def listed_catalogs(out: Path) -> set[str]:
    """The catalogs a finished run in ``out`` names (``manifest.json``, ``catalogs.ndjson``;
    never read through a link): whose directories it wrote."""
    found: set[object] = set()
    manifest, listed = out / "manifest.json", out / "catalogs.ndjson"
    with contextlib.suppress(OSError, orjson.JSONDecodeError, SinkError):
        if is_ours(manifest):
            data = orjson.loads(manifest.read_bytes())
            if isinstance(data, dict) and isinstance(data.get("catalogs"), dict):
                found |= set(data["catalogs"])
        if is_ours(listed):
            for line in iter_lines(listed):
                rec = orjson.loads(line)
                if isinstance(rec, dict):
                    found.add(rec.get("uuid"))
    return {u for u in found if isinstance(u, str) and u}


def clear_outputs(out: Path, catalogs: Iterable[str] = ()) -> None:
    """Remove a previous run's outputs from OUT (``--restart``): only the exact names a
    harvest writes (:data:`TOP_FILES`, :data:`CATALOG_FILES`), in the directory of each
    of ``catalogs`` and of each named as we name them; a catalog directory goes only if that
    leaves it empty. Any other file, however named, stays; no link is followed."""
    with disk_errors(out):
        if not out.is_dir():
            return
        dirs = {catalog_dirname(c) for c in catalogs}
        dirs |= {p.name for p in out.glob("catalog=*") if _CATALOG_DIR_RE.fullmatch(p.name)}
        for name in sorted(dirs):
            d = out / name
            if d.is_symlink() or not d.is_dir():
                continue
            for f in CATALOG_FILES:
                if (d / f).is_symlink() or (d / f).is_file():
                    (d / f).unlink()
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty: a user's files keep their directory
        for name in TOP_FILES:
            if (out / name).is_symlink() or (out / name).is_file():
                (out / name).unlink()
        if not (out / ".state").is_symlink():  # a spool behind a planted link is not ours
            clear_dir(out / ".state" / "spool")


#: Names a harvest writes at the top of OUT (besides ``catalog=*`` directories).
_TOP_NAMES: Final = ("manifest.json", ".manifest.json.tmp", "catalogs.ndjson",
                     "catalogs.ndjson.part", "errors.ndjson", "errors.ndjson.part",
                     ".errors.ndjson.part.tmp", "index.sqlite")


def leftovers(out: Path) -> list[str]:
    """Entries of OUT a harvest would write, by name: an earlier run's output, which a run
    without a ledger must not adopt (links count too; nothing is followed)."""
    if not out.is_dir():
        return []
    found = sorted(p.name for p in out.glob("catalog=*"))
    return [n for n in _TOP_NAMES if os.path.lexists(out / n)] + found
