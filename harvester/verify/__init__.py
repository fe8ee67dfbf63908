"""``harvester verify``: are the files a downstream job will load exactly what was written?

:func:`verify` takes an output directory (``harvest --out``), a sync store, a learner
export, a directory of ``tenant=<name>/`` outputs, or a URL of a published prefix
(``file://``, ``s3://``... read through fsspec), and returns a :class:`Report` with one
line per problem. Every file a manifest names is read again, streamed in 1 MiB chunks, and
its bytes, sha256 and lines compared with the manifest: bytes and sha256 are those of the
file as stored (compressed, for ``.ndjson.gz``), lines are those of its content (gzip
members inflated; a CSV's are records, quoted newlines included). It also reports a
leftover ``.part`` or temp file, a file no manifest names (``.state/`` is the harvester's
own), an ``errors.ndjson`` or ``changes.ndjson`` line that is not the JSON the README
documents, a symbolic link, and for a store a ``latest`` link (or a published store's
``latest.json``) that does not resolve to a snapshot with a manifest. A target in which
no manifest could be read is a problem, never clean. Read only: it never writes, and
never follows a link.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Final, TypeGuard

from harvester.errors import ConfigError
from harvester.outputs import catalog_dirname
from harvester.verify.check import PUBLISH_INDEX, Check, Report
from harvester.verify.trees import FsspecTree, LocalTree, Tree, open_tree

__all__ = ["FsspecTree", "LocalTree", "Report", "Tree", "open_tree", "verify"]

_ERROR_KEYS: Final = ("catalog_uuid", "kind", "message", "at")
_CHANGE_OPS: Final = frozenset({"upsert", "delete"})
#: A sync's change feed per catalog (its sync block measures it; older ones did not).
_FEED: Final = "changes.ndjson"
#: A run of many tenants' summaries (``tenant=<name>/`` beside them): a harvest's or a
#: sync's, and a learner export's.
_TENANT_SUMMARIES: Final = ("manifest.json", "learners-manifest.json")
_FINISHED: Final = ("complete", "partial")  #: a run's statuses that leave its output
#: A tenant's own manifest under ``tenant=<name>/``, by the summary's kind (a sync
#: store's is its latest snapshot's, the last promoted night: not compared).
_OWN_MANIFEST: Final = {"harvest": "manifest.json", "learners": "learners/manifest.json"}
#: A published store's ``latest`` (``--publish``: object storage has no links).
_POINTER: Final = "latest.json"
#: A local snapshot's index, which no manifest names (and --publish does not upload).
_SNAPSHOT_EXTRAS: Final = ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm",
                           "index.sqlite-journal")


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _safe_name(name: object) -> TypeGuard[str]:
    """A manifest's file or directory name that stays inside its output."""
    return (isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name
            and name not in (".", ".."))


def _error_line(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return "not a JSON object"
    missing = [k for k in _ERROR_KEYS if not isinstance(rec.get(k), str)]
    return f"an errors.ndjson line without {', '.join(missing)}" if missing else None


def _change_line(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return "not a JSON object"
    if rec.get("op") not in _CHANGE_OPS:
        return f"op {rec.get('op')!r} is neither upsert nor delete"
    missing = [k for k in ("catalog_uuid", "content_type", "key")
               if not isinstance(rec.get(k), str)]
    if rec["op"] == "upsert" and not isinstance(rec.get("record"), dict):
        missing.append("record")
    return f"a change without {', '.join(missing)}" if missing else None


def _parts(c: Check, rel: str, data: dict[str, Any], kind: str, expected: dict[str, Any]
           ) -> list[tuple[str, dict[str, Any]]]:
    """The catalogs (or enterprises) a manifest lists, as (dir, entry), their files added
    to ``expected``; a part without a usable dir, or a file name that would leave it, is a
    problem."""
    found: list[tuple[str, dict[str, Any]]] = []
    parts = data.get(f"{kind}s")
    if not isinstance(parts, dict):
        c.problem(_join(rel, "manifest.json"), f"has no {kind}s")
        parts = {}
    for uuid, part in parts.items():
        d = part.get("dir") if isinstance(part, dict) else None
        if not _safe_name(d):
            c.problem(_join(rel, "manifest.json"), f"{kind} {uuid!r} has no usable dir")
            continue
        for name, spec in (part.get("files") or {}).items():
            if _safe_name(name):
                expected[_join(rel, d, name)] = spec
            else:
                c.problem(_join(rel, "manifest.json"), f"names a file outside {d}: {name!r}")
        found.append((d, part))
    return found


def _named(c: Check, rel: str, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The files a harvest or snapshot manifest names, with their entries; and the change
    feeds it names without one (a snapshot written before feeds were measured)."""
    expected: dict[str, Any] = {}
    for name, spec in (data.get("files") or {}).items():
        if _safe_name(name):
            expected[_join(rel, name)] = spec
        else:
            c.problem(_join(rel, "manifest.json"), f"names a file outside it: {name!r}")
    unmeasured: list[str] = []
    feeds = {_join(rel, catalog_dirname(u), _FEED): g.get("feed")
             for u, g in (data.get("gone_catalogs") or {}).items() if isinstance(g, dict)}
    for d, cat in _parts(c, rel, data, "catalog", expected):
        if isinstance(cat.get("sync"), dict):
            feeds[_join(rel, d, _FEED)] = cat["sync"].get("feed")
    for path, spec in feeds.items():
        if spec:
            expected[path] = spec
        elif c.tree.kind(path) is not None:
            unmeasured.append(path)
    return expected, unmeasured


def _output(c: Check, rel: str, data: dict[str, Any], *, skip: frozenset[str]) -> None:
    """A harvest output or a sync snapshot: its files, its errors and change feeds, and
    nothing else in it (``skip``: sub-trees verified on their own, like ``learners``)."""
    expected, unmeasured = _named(c, rel, data)
    for path, spec in expected.items():
        c.file(path, spec)
    c.lines(_join(rel, "errors.ndjson"), _error_line)
    for feed in unmeasured:  # no lines/bytes/sha256 to compare: check every line instead
        c.lines(feed, _change_line)
    allowed = {*expected, *unmeasured, _join(rel, "manifest.json")}
    if c.tree.kind(_join(rel, "index.sqlite")) == "file":  # a sync snapshot's own index
        allowed |= {_join(rel, n) for n in _SNAPSHOT_EXTRAS}
    ours = {_join(rel, ".state"), *(_join(rel, s) for s in skip)}
    c.stray(rel, allowed, lambda p: any(p == o or p.startswith(o + "/") for o in ours))


def _learners(c: Check, rel: str, data: dict[str, Any]) -> None:
    """A learner export (``OUT/learners``): the files of each enterprise, nothing else."""
    expected: dict[str, Any] = {}
    _parts(c, rel, data, "enterprise", expected)
    for path, spec in expected.items():
        c.file(path, spec)
    state = _join(rel, ".state")
    c.stray(rel, set(expected) | {_join(rel, "manifest.json")},
            lambda p: p.startswith(state + "/"))


def _latest(c: Check, rel: str) -> str | None:
    """The snapshot ``latest`` (a local store's link) or ``latest.json`` (a published
    store's pointer) names, if it resolves to one with a manifest (else the problem is
    reported and None returned)."""
    link, pointer = _join(rel, "latest"), _join(rel, _POINTER)
    named: list[tuple[str, str | None]] = []
    if c.tree.kind(link) is not None:
        target = c.tree.readlink(link)
        parts = PurePosixPath(target).parts if target else ()
        ok = bool(parts) and parts[:-1] in ((), ("snapshots",))
        named.append((link, parts[-1] if ok else None))
    if c.tree.kind(pointer) is not None:
        data = c.json(pointer)
        name = data.get("snapshot") if isinstance(data, dict) else None
        named.append((pointer, name if isinstance(name, str) else None))
    if not named:
        c.problem(link, f"missing (nor {_POINTER}): no snapshot of this store was ever "
                  "promoted")
        return None
    resolved = None
    for where, name in named:
        if where == link and c.tree.loops(link):
            c.problem(link, "a symbolic link loop: following it never reaches a snapshot")
            continue
        if not _safe_name(name):
            c.problem(where, "does not name a snapshot in snapshots/")
            continue
        snap = _join(rel, "snapshots", name)
        if "link" in (c.tree.kind(_join(rel, "snapshots")), c.tree.kind(snap)):
            c.problem(where, f"points to snapshots/{name} through a symbolic link (never "
                      "followed)")
        elif c.tree.kind(snap) != "dir":
            c.problem(where, f"dangling: it points to snapshots/{name}, which does not "
                      "exist")
        elif c.tree.kind(_join(snap, "manifest.json")) != "file":
            c.problem(where, f"points to snapshots/{name}, which has no manifest.json "
                      "(unfinished)")
        else:
            resolved = name
    return resolved


def _store(c: Check, rel: str) -> None:
    """A sync store: ``latest`` resolves, every finished snapshot verifies."""
    _latest(c, rel)
    snaps = _join(rel, "snapshots")
    if c.tree.kind(snaps) not in (None, "dir"):
        c.unexpected(snaps)  # a link is reported, never followed
    names = c.tree.children(snaps) if c.tree.kind(snaps) == "dir" else []
    for name in names:
        snap = _join(snaps, name)
        manifest = _join(snap, "manifest.json")
        if c.tree.kind(snap) != "dir":
            c.unexpected(snap)
        elif c.tree.kind(manifest) is None:  # a night still running, or killed: not kept
            c.report.notes.append(f"{c.tree.show(snap)}: unfinished snapshot (no "
                                  "manifest; the next sync resumes or abandons it)")
        elif (data := c.manifest(manifest)) is not None:
            _output(c, snap, data, skip=frozenset())
    for name in c.tree.children(rel):
        sub = _join(rel, name)
        if name not in ("snapshots", "latest", _POINTER, ".state"):
            if c.tree.kind(sub) == "dir":
                c.stray(sub, set(), lambda _p: False)
            else:
                c.unexpected(sub)


def _tenants(c: Check, rel: str, summary: dict[str, Any] | None = None) -> bool:
    """``tenant=<name>/`` outputs under ``rel`` (a run of many tenants), each verified as
    what it holds. A tenant the run summary says ran to the end must hold its output;
    one that failed (refused credentials, say) may hold nothing."""
    rows = summary.get("tenants") if summary else None
    ran = {n: r.get("status") for n, r in rows.items() if isinstance(r, dict)} \
        if isinstance(rows, dict) else {}
    found = False
    for name in c.tree.children(rel):
        sub = _join(rel, name)
        if not (name.startswith("tenant=") and c.tree.kind(sub) == "dir"):
            continue
        found = True
        failed = ran.get(name.removeprefix("tenant="), "complete") not in _FINISHED
        if not _dispatch(c, sub) and not failed:
            c.problem(sub, "no manifest.json, sync store or learner export in it")
    for tenant, status in ran.items():
        where = _join(rel, f"tenant={tenant}")
        if status in _FINISHED and c.tree.kind(where) is None:
            c.problem(where, "missing (named in the run summary)")
    if summary:
        _summary_agrees(c, rel, summary, ran)
    return found


def _summary_agrees(c: Check, rel: str, summary: dict[str, Any],
                    ran: dict[str, Any]) -> None:
    """A run summary covers every tenant under ``rel``, says what each tenant's own
    manifest says, and says ``complete`` only if every tenant is."""
    own_name = _OWN_MANIFEST.get(str(summary.get("kind")))
    complete = summary.get("status") == "complete"
    for name in c.tree.children(rel):
        if not name.startswith("tenant=") or c.tree.kind(_join(rel, name)) != "dir":
            continue
        tenant = name.removeprefix("tenant=")
        own = _join(rel, name, own_name) if own_name else ""
        if own and c.tree.kind(own) == "file":
            if tenant not in ran:
                c.problem(_join(rel, name), "not in the run summary")
                continue
            status = (c.json(own) or {}).get("status")
            if status in _FINISHED and ran[tenant] in _FINISHED and status != ran[tenant]:
                c.problem(own, f"says {status}; the run summary says {ran[tenant]}")
    if complete and any(status != "complete" for status in ran.values()):
        c.problem(_join(rel, _TENANT_SUMMARIES[0] if summary.get("kind") != "learners"
                        else _TENANT_SUMMARIES[1]),
                  "says complete, but not every tenant is")


def _tenant_root(c: Check, rel: str, summary: dict[str, Any]) -> None:
    """A run of many tenants: the summary, each tenant, nothing else at the top."""
    _tenants(c, rel, summary)
    for name in c.tree.children(rel):
        if name.startswith("tenant=") or name in (*_TENANT_SUMMARIES, ".state",
                                                  PUBLISH_INDEX):
            continue
        sub = _join(rel, name)
        if c.tree.kind(sub) == "dir":
            c.stray(sub, set(), lambda _p: False)
        else:
            c.unexpected(sub)


def _dispatch(c: Check, rel: str) -> bool:
    """Verify whatever ``rel`` holds; False if it holds nothing the harvester writes."""
    manifest = _join(rel, "manifest.json")
    learners = _join(rel, "learners")
    if c.tree.kind(manifest) is not None:
        data = c.manifest(manifest)
        if data is not None and "tenants" in data and "catalogs" not in data:
            _tenant_root(c, rel, data)
            return True
        if data is not None and "enterprises" in data:
            _learners(c, rel, data)
            return True
        skip = frozenset({"learners"} if c.tree.kind(learners) == "dir" else ())
        if data is not None:
            _output(c, rel, data, skip=skip)
        if skip:
            _dispatch_learners(c, learners)
        return True
    if c.tree.kind(_join(rel, "snapshots")) == "dir" or c.tree.kind(
            _join(rel, "latest")) is not None:
        _store(c, rel)
        return True
    if c.tree.kind(learners) == "dir":
        _dispatch_learners(c, learners)
        return True
    learners_summary = _join(rel, _TENANT_SUMMARIES[1])
    if c.tree.kind(learners_summary) is not None:
        if (data := c.manifest(learners_summary)) is not None:
            _tenant_root(c, rel, data)
        return True
    return _tenants(c, rel)


def _dispatch_learners(c: Check, rel: str) -> None:
    manifest = _join(rel, "manifest.json")
    if c.tree.kind(manifest) is None:
        if any(not p.startswith(_join(rel, ".state") + "/") for p in c.tree.files(rel)):
            c.problem(manifest, "missing, but the export's files are there (an export "
                      "killed while publishing; rerun it)")
        return
    if (data := c.manifest(manifest)) is not None:
        _learners(c, rel, data)


def verify(target: str) -> Report:
    """Verify a directory or published prefix (see the module docstring).

    Raises :class:`ConfigError` (exit 2) when ``target`` cannot be read or holds nothing
    the harvester writes (no manifest: a first run still in progress has none yet).
    """
    report = Report()
    check = Check(open_tree(target), report)
    if not _dispatch(check, ""):
        raise ConfigError(f"verify: {target} holds no manifest.json (nor a sync store, a "
                          "learner export or tenant=<name>/ outputs); a run still in "
                          "progress or interrupted has none yet")
    if report.outputs == 0:  # a store or OUT of which nothing could be read is not clean
        check.problem("", "nothing could be checked: no manifest was read")
    return report
