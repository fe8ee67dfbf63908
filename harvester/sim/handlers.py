"""The API endpoints behind the gateway: catalog lists, content pages, details, learner
summaries and the OAuth token grant.

Each handler turns one routed, authenticated request (:class:`~.reply.Ctx`) into its answer,
throttling where the real backend does. Routing, authentication, injected faults and the
gateway's remapping are :mod:`.app`'s; who may see a catalog or an item is :mod:`.access`'s.
"""

from __future__ import annotations

import hashlib
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from harvester.sim.access import (
    detail_403_knob,
    detail_404_knob,
    dropped_catalog,
    forbidden_detail,
    listed_catalogs,
    own_catalog,
    tenant,
)
from harvester.sim.config import OMIT
from harvester.sim.content import Json
from harvester.sim.hashing import BASE_TIME, days
from harvester.sim.listing import listed_item
from harvester.sim.reply import Ctx, drf, json_response, page_response, throttled
from harvester.sim.state import SimState

__all__ = ["catalogs_v1", "catalogs_v2", "content_page", "detail", "learners", "token"]


async def catalogs_v1(ctx: Ctx) -> web.StreamResponse:
    """``GET /enterprise/v1/enterprise-catalogs``: the caller's catalogs (LMS, throttled)."""
    st = ctx.state
    if (wait := st.lms_log.hit(ctx.user)) is not None:
        return throttled(ctx, wait)
    own = listed_catalogs(ctx)

    def fetch(rows: range) -> list[Any]:
        return [st.data.catalog_row_v1(own[i]) for i in rows]

    return page_response(ctx, "/enterprise/v1/enterprise-catalogs", len(own), fetch, 10, 100)


async def catalogs_v2(ctx: Ctx) -> web.StreamResponse:
    """``GET /enterprise/v2/enterprise-catalogs``: the same list from enterprise-catalog."""
    st = ctx.state

    own = listed_catalogs(ctx)

    def fetch(rows: range) -> list[Any]:
        return [st.data.catalog_row_v2(own[i], st.epoch) for i in rows]

    # PageNumberWithSizePagination has no max_page_size.
    return page_response(ctx, "/enterprise/v2/enterprise-catalogs", len(own), fetch, 10, None)


def _forbidden_catalog(ctx: Ctx) -> web.Response:
    return drf(ctx, 403, {"detail": forbidden_detail(
        ctx, "Missing: enterprise.can_view_catalog")})


async def content_page(ctx: Ctx) -> web.StreamResponse:
    """One page of a catalog's content (order knobs, hidden heads, duplicated keys)."""
    st = ctx.state
    if dropped_catalog(ctx):
        return drf(ctx, 404, {"detail": "Not found."})
    c = own_catalog(ctx)
    if c is None:
        return _forbidden_catalog(ctx)
    epoch, data, cfg = st.epoch, st.data, st.cfg
    hidden = st.hidden_head(c)
    n = data.size(c, epoch) - hidden
    order = st.order_for(c, n)
    dups = min(cfg.dup_keys, n)

    def fetch(positions: range) -> list[Any]:
        rows: list[Any] = []
        for q in positions:
            p = hidden + (order.base_position(q) if q < n else q - n)
            item = listed_item(data.item(data.gid_at(c, p, epoch), epoch), p, cfg,
                               dup=None if q < n else q - n)
            rows.append(item)
        return rows

    row = data.catalog_row_v1(c)
    extra = {k: row[k] for k in ("uuid", "title", "enterprise_customer")}
    path = f"/enterprise/v2/enterprise-catalogs/{data.catalog_uuids[c]}"
    return page_response(ctx, path, n + dups, fetch, 10, cfg.max_page_size, extra,
                         omit_count=cfg.omit_count, reported=cfg.lie_count or n)


def _find_detail(ctx: Ctx, c: int, kind: str, key: str) -> Json | None:
    """The detail body of ``key`` in catalog ``c``, or ``None`` when not in the catalog.

    Keys embed the item id (see :mod:`.content`), so this never scans the catalog.
    """
    data, epoch = ctx.state.data, ctx.state.epoch
    content, cat_uuid = data.content, data.catalog_uuids[c]
    if kind == "programs":
        gid = content.gid_from_uuid(key)
        wanted = "program"  # learner pathways have no detail endpoint
    elif kind == "courses":
        gid = content.gid_from_course_key(key)
        wanted = "course"
    else:
        head, number, _run = key.split("+", 2)
        if not head.startswith("course-v1:"):
            return None
        gid = content.gid_from_course_key(f"{head.removeprefix('course-v1:')}+{number}")
        wanted = "courserun"
    if gid is None or not data.contains(c, gid, epoch):
        return None
    ctype = content.content_type(gid)
    if ctype == wanted and (wanted != "courserun" or content.content_key(gid) == key):
        return content.detail(data.item(gid, epoch), cat_uuid)
    if wanted == "courserun" and ctype == "course":
        # A run nested in a listed course is "in the catalog" too (contains_content_items).
        course = content.detail(data.item(gid, epoch), cat_uuid)
        for run in course["course_runs"]:
            if run["key"] == key:
                extra = {"course": course["key"], "short_description": course["short_description"]}
                return {**run, **extra}
    return None


async def detail(ctx: Ctx) -> web.StreamResponse:
    """A course, course run or program of a catalog (LMS, throttled; ETags with ``etag``)."""
    st = ctx.state
    st.stats.detail_requests += 1
    # DRF runs throttles in initial(); the can_view_catalog decorator runs inside the action.
    if (wait := st.lms_log.hit(ctx.user)) is not None:
        return throttled(ctx, wait)
    if dropped_catalog(ctx):
        return drf(ctx, 404, {"detail": "Not found."})
    c = own_catalog(ctx)
    if c is None:
        return _forbidden_catalog(ctx)
    kind, key = ctx.params["kind"], ctx.params["key"]
    if detail_403_knob(ctx, key):
        return drf(ctx, 403, {"detail": "You do not have permission to perform this action."})
    body = _find_detail(ctx, c, kind, key)
    if body is None or detail_404_knob(ctx, c, key):
        return drf(ctx, 404, {"detail": "Not found."})
    resp = drf(ctx, 200, body)
    if st.cfg.etag:
        assert isinstance(resp.body, bytes)
        etag = '"' + hashlib.blake2b(resp.body, digest_size=16).hexdigest() + '"'
        resp.headers["ETag"] = etag
        modified = BASE_TIME + days(st.epoch)
        resp.headers["Last-Modified"] = format_datetime(modified, usegmt=True)
        if _etag_matches(ctx.request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers={"ETag": etag})
    return resp


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


async def learners(ctx: Ctx) -> web.StreamResponse:
    """The caller's enterprise's learner summaries (403 for another enterprise's)."""
    st = ctx.state
    own = tenant(ctx)
    if ctx.params["ent"].lower() != own.enterprise_uuid:
        return json_response(403, {"detail": forbidden_detail(
            ctx, "You do not have permission to perform this action.")})
    if (wait := st.learners_log.hit(ctx.user)) is not None:
        return throttled(ctx, wait)
    epoch = st.epoch

    def fetch(rows: range) -> list[Any]:
        return [st.data.learner_row(i, epoch, own.index) for i in rows]

    path = f"/enterprise/v3/enterprise-customer/{own.enterprise_uuid}/learner-summary"
    max_size = st.cfg.learner_max_page_size
    return page_response(ctx, path, st.cfg.learners, fetch, 10, max_size)


async def token(st: SimState, request: web.Request) -> web.StreamResponse:
    """``POST /oauth2/v1/access_token``: a client-credentials grant, opaque or JWT."""
    form = await request.post()
    grant = form.get("grant_type")
    if grant != "client_credentials":
        return json_response(400, {"error": "unsupported_grant_type"})
    client_id, secret = form.get("client_id"), form.get("client_secret")
    client = st.data.tenant_by_id.get(client_id) if isinstance(client_id, str) else None
    if client is None or secret != client.client_secret:
        return json_response(401, {"error": "invalid_client"})
    st.stats.tokens_issued += 1
    jwt_wanted = str(form.get("token_type", "")).lower() == "jwt"
    if not jwt_wanted:
        issued = st.tokens.issue_opaque()
    elif client.index == 0:
        issued = st.tokens.issue_jwt()
    else:  # --tenants: the same key signs every credential's JWT, with its own subject
        issued = st.tokens.issue_jwt(client.client_id, client.enterprise_uuid)
    body: dict[str, object] = {
        "access_token": issued,
        "token_type": "JWT" if jwt_wanted else "Bearer",
        "expires_in": st.cfg.expires_in_value(),
        "scope": "read write profile email",
    }
    if body["expires_in"] is OMIT:
        del body["expires_in"]
    return json_response(200, body)
