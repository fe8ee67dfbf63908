"""``--publish URL``: finished output uploaded to object storage, readers never see a mix.

The only package that writes to a store, through fsspec (``s3://`` through s3fs, ``gs://``
gcsfs, ``az://`` adlfs, ``file://``); ``harvester verify URL`` reads what it wrote.
Credentials come from each library's usual provider chain (for S3: ``AWS_*`` variables,
``~/.aws``, instance roles; ``AWS_ENDPOINT_URL`` for an S3-compatible server) or
``publish.storage_options``.

- :func:`check_target` runs before any API request: an unknown scheme, a missing
  library, a bucket that does not exist or refused credentials are a
  :class:`~harvester.errors.ConfigError` (exit 2) naming the URL. It writes and removes
  one empty probe object, the cheapest call that proves write access.
- :func:`publish_result` mirrors a finished OUT (or ``OUT/learners``) under the URL;
  :func:`publish_night` / :func:`publish_snapshot` put a sync snapshot under
  ``URL/snapshots/<id>/`` and then ``URL/latest.json``. Data files go first, every
  ``manifest.json`` after them (deepest first, the top one last), ``latest.json`` last.
- Only what a run finished is published: never ``.state`` or any dot-file (temp files),
  ``*.part``, or the sync index ``index.sqlite``: resume ledgers stay on local disk.
- Skipping and resuming: each published prefix holds ``.harvester-publish.json``,
  ``{path: [size, sha256]}`` of what this tool uploaded there, rewritten as uploads
  finish (at most once a second). An object whose local size and sha256 equal its entry,
  and whose listed size still matches, is not uploaded again, so a publish killed midway
  resumes where it was, and one that lost its disk re-uploads only what changed. This
  works alike on every backend (object metadata does not).

Any failure after the check is a :class:`~harvester.errors.PublishError` (exit 3); the
local output is never touched. Must not read settings other than ``[publish]``, run a
harvest, or print.

::

    target.py    Target (the fsspec filesystem of one URL), check_target, PublishReport
    mirror.py    one directory under a prefix: what, in which order, the index, removals
    __init__.py  what a finished run, sync night or run of many tenants publishes
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Final

import orjson

from harvester.errors import PublishError, SinkError
from harvester.learners.files import CSV_NAME, NDJSON_NAME
from harvester.outputs import CATALOG_FILES, TOP_FILES, catalog_dirname, is_catalog_dirname
from harvester.publish.mirror import INDEX_NAME, MANIFEST_NAME, guard, publish_dir
from harvester.publish.target import PublishReport, Target, check_target
from harvester.run import RunResult, SyncResult
from harvester.sinks import read_ours, resolved

__all__ = ["INDEX_NAME", "LATEST_NAME", "PublishReport", "Target", "check_target",
           "publish_night", "publish_result", "publish_snapshot", "publish_tenants"]

LATEST_NAME: Final = "latest.json"
#: A sync snapshot's change feed in a catalog directory (its manifest's ``sync.feed``).
FEED_NAME: Final = "changes.ndjson"


def publish_result(target: Target | None, result: RunResult, *,
                   learners: bool = False) -> PublishReport | None:
    """After a harvest (or, with ``learners``, a learner export, whose ``result.out`` is
    ``OUT/learners``): mirror what its manifest describes under the URL (``URL/learners``
    for learner data, which a harvest's publish never includes). A partial run is
    published too, its manifest saying ``partial`` and ``errors.ndjson`` beside it; a
    finished run without a manifest is a :class:`PublishError`, never "nothing
    published". None: no URL, or a run that did not finish."""
    if target is None or result.status not in ("complete", "partial"):
        return None
    if result.manifest is None:  # a finished run must have one: never "published nothing"
        raise PublishError(f"{result.out} holds no readable manifest.json to publish",
                           result=result)
    def work() -> PublishReport:
        assert target is not None
        if learners:
            return publish_dir(target, result.out, "learners", _learner_file)
        return publish_dir(target, result.out, "", _harvest_files(result.out))

    try:
        return guard(target, f"uploading {result.out}", work)
    except PublishError as exc:
        exc.result = result
        raise


def publish_tenants(target: Target | None, *, kind: str, root: Path, summary: str,
                    finished: Mapping[str, RunResult | SyncResult]) -> PublishReport | None:
    """After a run of many tenants (``finished``: each tenant that ended ``complete`` or
    ``partial``, by its directory ``tenant=<name>``): each tenant's output as one tenant
    alone would publish it, under ``URL/tenant=<name>/``, then the run summary
    (``ROOT/<summary>``) last of all. A tenant that failed publishes nothing."""
    if target is None:
        return None
    total = PublishReport(target.url)

    def add(part: PublishReport | None) -> None:
        if part is not None:
            for name in ("uploaded", "skipped", "deleted", "bytes"):
                setattr(total, name, getattr(total, name) + getattr(part, name))

    for dirname, result in sorted(finished.items()):
        add(_publish_tenant(target, kind, root, dirname, result))
    if (root / summary).is_file():
        data = read_ours(root / summary)
        guard(target, f"uploading {summary}",
               lambda: _summary_report(target, summary, data))
        total.uploaded += 1
        total.bytes += len(data)
    return total


def _publish_tenant(target: Target, kind: str, root: Path, dirname: str,
                    result: RunResult | SyncResult) -> PublishReport | None:
    if isinstance(result, SyncResult):
        return publish_night(target, result, store_root=root)
    if result.manifest is None or result.status not in ("complete", "partial"):
        return None
    learners = kind == "learners"  # result.out is then OUT/tenant=<name>/learners
    prefix = f"{dirname}/learners" if learners else dirname
    return guard(target, f"uploading {result.out}", lambda: publish_dir(
        target, result.out, prefix, _learner_file if learners else _harvest_files(result.out)))


def _learner_file(rel: PurePosixPath) -> bool:
    """What a learner export writes in ``OUT/learners``: its manifest and, in each
    ``enterprise=<uuid>``, the summary files; never a file of someone else's there."""
    parts = rel.parts
    if len(parts) == 1:
        return parts[0] == MANIFEST_NAME
    return (len(parts) == 2 and parts[0].startswith("enterprise=")
            and parts[1] in (NDJSON_NAME, CSV_NAME))


def _harvest_files(root: Path) -> Callable[[PurePosixPath], bool]:
    """What a harvest (or a sync snapshot) in ``root`` wrote: exactly the files its
    manifest names (top files, and each catalog's files in its ``dir``) and the manifest
    itself. A user's file that only looks like ours (a ``changes.ndjson`` in a harvest,
    a ``.gz`` name in a plain run, a ``catalog=<uuid>`` directory the run never wrote) is
    not named there, so it is never published; learner data never is either."""
    try:
        manifest = orjson.loads(read_ours(root / MANIFEST_NAME))
    except (OSError, SinkError, orjson.JSONDecodeError) as exc:
        raise PublishError(f"cannot read {root / MANIFEST_NAME}: {exc}") from None
    names = {MANIFEST_NAME}
    if isinstance(manifest, dict):
        names.update(_names(manifest.get("files"), "", TOP_FILES))
        catalogs = manifest.get("catalogs")
        for entry in catalogs.values() if isinstance(catalogs, dict) else ():
            where = entry.get("dir") if isinstance(entry, dict) else None
            if isinstance(where, str) and is_catalog_dirname(where):
                names.update(_names(entry.get("files"), f"{where}/", CATALOG_FILES))
                if isinstance(entry.get("sync"), dict):  # a snapshot's change feed
                    names.add(f"{where}/{FEED_NAME}")
        gone = manifest.get("gone_catalogs")
        for uuid in gone if isinstance(gone, dict) else ():  # their deletes' feed
            if isinstance(uuid, str) and is_catalog_dirname(where := catalog_dirname(uuid)):
                names.add(f"{where}/{FEED_NAME}")
    return lambda rel: rel.as_posix() in names


def _names(files: object, prefix: str, ours: Collection[str]) -> set[str]:
    """The names of a manifest's ``files`` table that are names we write (``ours``),
    under ``prefix``: a hand-edited manifest cannot name ``../x`` or a ledger."""
    if not isinstance(files, dict):
        return set()
    return {prefix + name for name in files if name in ours}


def _summary_report(target: Target, name: str, data: bytes) -> PublishReport:
    target.write_atomic(target.path(name), data)
    return PublishReport(target.url, uploaded=1, bytes=len(data))


def publish_night(target: Target | None, night: SyncResult, *,
                  store_root: Path | None = None) -> PublishReport | None:
    """After a sync night: publish its snapshot if it was promoted (see
    :func:`publish_snapshot`); a night that did not become latest publishes nothing."""
    if target is None or not night.promoted or night.run.manifest is None:
        return None
    try:
        return publish_snapshot(target, store_root or night.snapshot.parent.parent,
                                night.snapshot, night.run.manifest)
    except PublishError as exc:
        exc.result = night
        raise


def publish_snapshot(target: Target, store_root: Path, snapshot: Path,
                     manifest: Mapping[str, Any]) -> PublishReport:
    """Upload a promoted snapshot (``<store>/snapshots/<id>``) under the same path below
    the URL, then point ``latest.json`` beside it (where the store's ``latest`` link is)
    at it: a reader of ``latest.json`` sees the previous snapshot or this one, whole,
    never a mix. ``store_root`` is the top of the store (a store of many holds one per
    tenant)."""
    home = snapshot.parent.parent  # the store whose `latest` names this snapshot
    rel = resolved(snapshot).relative_to(resolved(store_root)).as_posix()
    home_rel = resolved(home).relative_to(resolved(store_root)).as_posix()
    home_rel = "" if home_rel == "." else home_rel
    in_home = f"{snapshot.parent.name}/{snapshot.name}"

    def work() -> PublishReport:
        report = publish_dir(target, snapshot, rel, _harvest_files(snapshot))
        pointer = {"snapshot": snapshot.name, "path": in_home + "/",
                   "manifest": f"{in_home}/{MANIFEST_NAME}", "run_id": manifest.get("run_id"),
                   "status": manifest.get("status"),
                   "published_at": datetime.now(UTC).isoformat(timespec="seconds")}
        target.write_atomic(target.path(home_rel, LATEST_NAME),
                            orjson.dumps(pointer, option=orjson.OPT_INDENT_2))
        report.latest = snapshot.name
        report.url = target.url
        return report

    return guard(target, f"uploading snapshot {snapshot.name}", work)
