"""Who may see what: the caller's tenant, its catalogs, and the knobs that refuse access.

Owns the decisions behind a 403 or 404 that the data alone would not give: another
tenant's or a forbidden catalog (``forbid_catalogs``, ``forbid_tenants``), a catalog that
left the lists (``drop_catalog_at_epoch``), and the per-item detail knobs
(``detail_403_*``, ``detail_404_*``). It answers with indexes, flags and text, never with
a response; the only state it changes is the count of transient detail 404s served.
"""

from __future__ import annotations

from typing import Final

from harvester.sim.data import SimTenant
from harvester.sim.hashing import unit
from harvester.sim.reply import Ctx

__all__ = [
    "detail_403_knob",
    "detail_404_knob",
    "dropped_catalog",
    "forbidden_detail",
    "listed_catalogs",
    "own_catalog",
    "tenant",
]

_T_D404: Final = 400
_T_D403: Final = 403


def tenant(ctx: Ctx) -> SimTenant:
    """The credential's tenant (``--tenants``; tenant 0 is the only one by default)."""
    data = ctx.state.data
    return data.tenant_by_id.get(ctx.user, data.tenants[0])


def listed_catalogs(ctx: Ctx) -> list[int]:
    """Own catalog indexes still in the catalog lists (``drop_catalog_at_epoch``)."""
    st = ctx.state
    return [c for c in tenant(ctx).catalogs if not st.cfg.dropped(c, st.epoch)]


def dropped_catalog(ctx: Ctx) -> bool:
    """Whether the request names an own catalog that has left the lists (deleted)."""
    c = ctx.state.data.catalog_index(ctx.params["uuid"])
    return c is not None and ctx.state.cfg.dropped(c, ctx.state.epoch)


def own_catalog(ctx: Ctx) -> int | None:
    """The index of the catalog the request names, or ``None`` when the caller may not
    read it (unknown, foreign, forbidden, or another tenant's)."""
    c = ctx.state.data.catalog_index(ctx.params["uuid"])
    if c is None or c == ctx.state.data.foreign_index or ctx.state.cfg.forbids(c):
        return None
    own = tenant(ctx)
    if c not in own.catalogs or str(own.index) in ctx.state.cfg.forbid_tenants:
        return None  # another tenant's catalog, or a credential without the role
    return c


def forbidden_detail(ctx: Ctx, detail: str) -> str:
    """A 403's ``detail``; the ``echo_token`` knob puts the caller's credential first (a
    hostile or debugging server), so a client that truncates it keeps a token prefix."""
    if not ctx.state.cfg.echo_token:
        return detail
    return f"{ctx.request.headers.get('Authorization', '')} is refused. {detail}"


def detail_404_knob(ctx: Ctx, c: int, key: str) -> bool:
    """Whether the "discovery is flaky" knob hides this listed item right now."""
    st = ctx.state
    rate = st.cfg.detail_404_rate
    if rate <= 0 or unit(st.cfg.seed, _T_D404, int.from_bytes(key.encode(), "big")) >= rate:
        return False
    if st.cfg.detail_404_mode == "permanent":
        return True
    served = st.detail_404_served.get((c, key), 0)
    if served >= st.cfg.detail_404_times:
        return False
    st.detail_404_served[(c, key)] = served + 1
    return True


def detail_403_knob(ctx: Ctx, key: str) -> bool:
    """Whether this item's detail is persistently forbidden (``detail_403_*`` knobs)."""
    cfg = ctx.state.cfg
    if key in cfg.detail_403_keys:
        return True
    rate = cfg.detail_403_rate
    return rate > 0 and unit(cfg.seed, _T_D403, int.from_bytes(key.encode(), "big")) < rate
