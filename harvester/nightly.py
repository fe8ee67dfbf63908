"""What a finished sync night means for its store: promotion, pruning and the totals.

:func:`settle_night` reads the night's :class:`~harvester.manifest.Manifest`, promotes
the snapshot to ``latest`` only when it is usable, prunes old snapshots, and returns
the night's summary lines. Must not run a harvest, print, or decide a run's status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harvester.manifest import Manifest
from harvester.sync import Store

#: The sync block's counts summed over catalogs for the night's summary.
SYNC_TOTALS = ("carried", "fetched_new", "fetched_changed", "refreshed", "retried_stale",
               "not_modified", "upserts", "deletes")


@dataclass(frozen=True, slots=True)
class Night:
    """How a sync night ended for its store."""

    promoted: bool
    pruned: list[str]
    summary: list[str]


def usable(manifest: Manifest) -> bool:
    """Whether a finished snapshot may become ``latest``: every catalog done, or failed
    and carried forward from the previous snapshot (stale, no deletes), and no listing
    gaps. Failed details do not count against it: they are kept stale."""
    return all((c.status == "done" or "carried_forward" in c.sync) and not c.gaps
               for c in manifest.catalogs.values())


def sync_totals(manifest: Manifest) -> dict[str, int]:
    """The night's sync counts over every catalog, gone catalogs' deletes included."""
    cats = manifest.catalogs.values()
    totals = {k: sum(int(c.sync.get(k, 0)) for c in cats) for k in SYNC_TOTALS}
    gone: Mapping[str, Any] = manifest.sync.get("gone_catalogs") or {}
    totals["deletes"] += sum(int(g["deletes"]) for g in gone.values())
    return totals


def summary(manifest: Manifest, snap: Path, previous: Path | None) -> list[str]:
    """The night's summary, one line per fact."""
    cats = manifest.catalogs
    suppressed = [u[:8] for u, c in cats.items() if c.sync.get("deletes_suppressed")]
    pending = sum(int(c.sync.get("deletes_pending", 0)) for c in cats.values())
    lines = [f"sync {snap.name} (previous: {previous.name if previous else 'none'}): "
             + ", ".join(f"{k} {v}" for k, v in sync_totals(manifest).items())
             + (f"; deletes withheld for {', '.join(suppressed)} (listing incomplete; "
                f"{pending} carried to the next night)" if suppressed else "")]
    gone = manifest.sync.get("gone_catalogs") or {}
    if gone:
        lines.append(f"gone from the catalog list (all items deleted): "
                     f"{', '.join(u[:8] for u in gone)}")
    stale = manifest.sync.get("stale") or {}
    if stale.get("items") or stale.get("catalogs"):
        lines.append("kept stale from the previous snapshot (failed tonight, retried next "
                     f"night): {stale.get('items', 0)} items"
                     + (f"; catalogs {', '.join(u[:8] for u in stale['catalogs'])}"
                        if stale.get("catalogs") else ""))
    return lines


def settle_night(store: Store, snap: Path, manifest: Mapping[str, Any], *, keep: int,
                 previous: Path | None) -> Night:
    """Promote ``snap`` if it is usable, prune the store to ``keep`` snapshots."""
    night = Manifest.from_json(manifest)
    good = usable(night)
    if good:
        store.promote(snap)
    pruned = store.prune(keep, current=snap)
    return Night(good, pruned, summary(night, snap, previous))
