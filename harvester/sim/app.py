"""The aiohttp application: gateway behaviour, auth, throttles, faults and the handlers.

One catch-all route dispatches on the percent-*decoded* path (as Django does), so
``course-v1%3AedX%2BDemoX%2BT1`` and ``course-v1:edX+DemoX+T1`` reach the same handler and a
``+`` in the path stays a plus.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Any, Final

import orjson
from aiohttp import web

from harvester.sim.config import OMIT, SimConfig
from harvester.sim.content import Json
from harvester.sim.data import SimTenant
from harvester.sim.faults import DROPPED, fault_response
from harvester.sim.hashing import BASE_TIME, days, unit
from harvester.sim.hostile import bomb, drip
from harvester.sim.listing import listed_item
from harvester.sim.render import (
    InvalidPage,
    json_bytes,
    negotiate,
    page_body,
    page_links,
    paginate,
    parse_page_query,
    xml_bytes,
)
from harvester.sim.state import SimState
from harvester.sim.throttle import throttle_message

__all__ = ["STATE", "build_app"]

#: Where the :class:`SimState` lives on the application.
STATE: Final = web.AppKey("harvester_sim_state", SimState)

_GATEWAY_PASS: Final = frozenset({200, 304, 401, 403, 404, 429, 500})
_COURSE_KEY: Final = re.compile(r"[^/+]+\+[^/+]+")
_RUN_KEY: Final = re.compile(r"[^/+]+\+[^/+]+\+[^/?]+")
_T_D404: Final = 400
_T_D403: Final = 403
_HTML_404: Final = (
    b'<!doctype html>\n<html lang="en">\n<head><title>Not Found</title></head>\n'
    b"<body><h1>Not Found</h1><p>The requested resource was not found on this server.</p>"
    b"</body>\n</html>\n"
)


@dataclass(frozen=True, slots=True)
class Ctx:
    """One API request after routing, negotiation and authentication."""

    state: SimState
    request: web.Request
    params: dict[str, str]
    xml: bool
    user: str


Handler = Callable[[Ctx], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    """A public api.edx.org route as the gateway defines it."""

    method: str
    pattern: re.Pattern[str]
    klass: str
    handler: Handler | None  # None: the token endpoint (no auth, special body)
    xml_capable: bool = True


def _route(method: str, path: str, klass: str, handler: Handler | None, xml: bool = True) -> Route:
    return Route(method, re.compile(path + "/?"), klass, handler, xml)


# -- responses -------------------------------------------------------------------------------
def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=json_bytes(body), content_type="application/json", headers=headers
    )


def _drf(ctx: Ctx, status: int, body: Json, headers: dict[str, str] | None = None) -> web.Response:
    """A DRF response in the negotiated format (errors included, as DRF does)."""
    if ctx.xml:
        return web.Response(
            status=status,
            body=xml_bytes(body),
            headers=headers,
            content_type="application/xml",
            charset="utf-8",
        )
    return _json(status, body, headers)


def _throttled(ctx: Ctx, wait: int) -> web.Response:
    headers = None if ctx.state.cfg.strip_retry_after else {"Retry-After": str(wait)}
    return _drf(ctx, 429, {"detail": throttle_message(wait)}, headers)


def _paged(ctx: Ctx, body: bytes) -> web.Response:
    if ctx.xml:
        return web.Response(body=body, content_type="application/xml", charset="utf-8")
    return web.Response(body=body, content_type="application/json")


def _public_base(ctx: Ctx) -> str:
    st = ctx.state
    return st.cfg.public_base or st.base_url or f"{ctx.request.scheme}://{ctx.request.host}"


def _page_response(
    ctx: Ctx,
    path: str,
    count: int,
    fetch: Callable[[range], list[Any]],
    default_size: int,
    max_size: int | None,
    extra: Json | None = None,
    *,
    omit_count: bool = False,
    reported: int | None = None,
) -> web.Response:
    cfg = ctx.state.cfg
    pq = parse_page_query(ctx.request.query, default_size, max_size, cfg.limit_mode)
    try:
        page = paginate(count, pq.page, pq.size)
    except InvalidPage:
        return _drf(ctx, 404, {"detail": "Invalid page."})
    results = fetch(range(page.start, page.stop))
    links = page_links(_public_base(ctx), path, page, pq.forwarded)
    body = page_body(
        None if omit_count else count if reported is None else reported,
        links,
        results,
        end_marker=cfg.end_marker,
        xml=ctx.xml,
        page=page,
        size=pq.size,
        extra=extra,
    )
    return _paged(ctx, body)


# -- handlers --------------------------------------------------------------------------------
async def _catalogs_v1(ctx: Ctx) -> web.StreamResponse:
    st = ctx.state
    if (wait := st.lms_log.hit(ctx.user)) is not None:
        return _throttled(ctx, wait)
    own = _listed_catalogs(ctx)

    def fetch(rows: range) -> list[Any]:
        return [st.data.catalog_row_v1(own[i]) for i in rows]

    return _page_response(ctx, "/enterprise/v1/enterprise-catalogs", len(own), fetch, 10, 100)


async def _catalogs_v2(ctx: Ctx) -> web.StreamResponse:
    st = ctx.state

    own = _listed_catalogs(ctx)

    def fetch(rows: range) -> list[Any]:
        return [st.data.catalog_row_v2(own[i], st.epoch) for i in rows]

    # PageNumberWithSizePagination has no max_page_size.
    return _page_response(ctx, "/enterprise/v2/enterprise-catalogs", len(own), fetch, 10, None)


def _tenant(ctx: Ctx) -> SimTenant:
    """The credential's tenant (``--tenants``; tenant 0 is the only one by default)."""
    data = ctx.state.data
    return data.tenant_by_id.get(ctx.user, data.tenants[0])


def _listed_catalogs(ctx: Ctx) -> list[int]:
    """Own catalog indexes still in the catalog lists (``drop_catalog_at_epoch``)."""
    st = ctx.state
    return [c for c in _tenant(ctx).catalogs if not st.cfg.dropped(c, st.epoch)]


def _dropped_catalog(ctx: Ctx) -> bool:
    """Whether the request names an own catalog that has left the lists (deleted)."""
    c = ctx.state.data.catalog_index(ctx.params["uuid"])
    return c is not None and ctx.state.cfg.dropped(c, ctx.state.epoch)


def _own_catalog(ctx: Ctx) -> int | None:
    c = ctx.state.data.catalog_index(ctx.params["uuid"])
    if c is None or c == ctx.state.data.foreign_index or ctx.state.cfg.forbids(c):
        return None
    tenant = _tenant(ctx)
    if c not in tenant.catalogs or str(tenant.index) in ctx.state.cfg.forbid_tenants:
        return None  # another tenant's catalog, or a credential without the role
    return c


def _forbidden_detail(ctx: Ctx, detail: str) -> str:
    """A 403's ``detail``; the ``echo_token`` knob puts the caller's credential first (a
    hostile or debugging server), so a client that truncates it keeps a token prefix."""
    if not ctx.state.cfg.echo_token:
        return detail
    return f"{ctx.request.headers.get('Authorization', '')} is refused. {detail}"


def _forbidden_catalog(ctx: Ctx) -> web.Response:
    return _drf(ctx, 403, {"detail": _forbidden_detail(
        ctx, "Missing: enterprise.can_view_catalog")})


async def _content_page(ctx: Ctx) -> web.StreamResponse:
    st = ctx.state
    if _dropped_catalog(ctx):
        return _drf(ctx, 404, {"detail": "Not found."})
    c = _own_catalog(ctx)
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
    return _page_response(ctx, path, n + dups, fetch, 10, cfg.max_page_size, extra,
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


def _detail_404_knob(ctx: Ctx, c: int, key: str) -> bool:
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


def _detail_403_knob(ctx: Ctx, key: str) -> bool:
    """Whether this item's detail is persistently forbidden (``detail_403_*`` knobs)."""
    cfg = ctx.state.cfg
    if key in cfg.detail_403_keys:
        return True
    rate = cfg.detail_403_rate
    return rate > 0 and unit(cfg.seed, _T_D403, int.from_bytes(key.encode(), "big")) < rate


async def _detail(ctx: Ctx) -> web.StreamResponse:
    st = ctx.state
    st.stats.detail_requests += 1
    # DRF runs throttles in initial(); the can_view_catalog decorator runs inside the action.
    if (wait := st.lms_log.hit(ctx.user)) is not None:
        return _throttled(ctx, wait)
    if _dropped_catalog(ctx):
        return _drf(ctx, 404, {"detail": "Not found."})
    c = _own_catalog(ctx)
    if c is None:
        return _forbidden_catalog(ctx)
    kind, key = ctx.params["kind"], ctx.params["key"]
    if _detail_403_knob(ctx, key):
        return _drf(ctx, 403, {"detail": "You do not have permission to perform this action."})
    body = _find_detail(ctx, c, kind, key)
    if body is None or _detail_404_knob(ctx, c, key):
        return _drf(ctx, 404, {"detail": "Not found."})
    resp = _drf(ctx, 200, body)
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


async def _learners(ctx: Ctx) -> web.StreamResponse:
    st = ctx.state
    tenant = _tenant(ctx)
    if ctx.params["ent"].lower() != tenant.enterprise_uuid:
        return _json(403, {"detail": _forbidden_detail(
            ctx, "You do not have permission to perform this action.")})
    if (wait := st.learners_log.hit(ctx.user)) is not None:
        return _throttled(ctx, wait)
    epoch = st.epoch

    def fetch(rows: range) -> list[Any]:
        return [st.data.learner_row(i, epoch, tenant.index) for i in rows]

    path = f"/enterprise/v3/enterprise-customer/{tenant.enterprise_uuid}/learner-summary"
    max_size = st.cfg.learner_max_page_size
    return _page_response(ctx, path, st.cfg.learners, fetch, 10, max_size)


_CAT: Final = r"/enterprise/v2/enterprise-catalogs"
ROUTES: Final = (
    _route("POST", r"/oauth2/v1/access_token", "token", None, xml=False),
    _route("GET", r"/enterprise/v1/enterprise-catalogs", "lms", _catalogs_v1),
    _route("GET", _CAT, "content", _catalogs_v2),
    _route("GET", _CAT + r"/(?P<uuid>[^/]+)", "content", _content_page),
    _route(
        "GET",
        r"/enterprise/v[12]/enterprise-catalogs/(?P<uuid>[^/]+)/"
        r"(?P<kind>courses|course-runs|programs)/(?P<key>[^/]+)",
        "lms",
        _detail,
    ),
    _route(
        "GET",
        r"/enterprise/v3/enterprise-customer/(?P<ent>[^/]+)/learner-summary",
        "learners",
        _learners,
        xml=False,
    ),
)


# -- token -----------------------------------------------------------------------------------
async def _token(st: SimState, request: web.Request) -> web.StreamResponse:
    form = await request.post()
    grant = form.get("grant_type")
    if grant != "client_credentials":
        return _json(400, {"error": "unsupported_grant_type"})
    client_id, secret = form.get("client_id"), form.get("client_secret")
    tenant = st.data.tenant_by_id.get(client_id) if isinstance(client_id, str) else None
    if tenant is None or secret != tenant.client_secret:
        return _json(401, {"error": "invalid_client"})
    st.stats.tokens_issued += 1
    jwt_wanted = str(form.get("token_type", "")).lower() == "jwt"
    if not jwt_wanted:
        token = st.tokens.issue_opaque()
    elif tenant.index == 0:
        token = st.tokens.issue_jwt()
    else:  # --tenants: the same key signs every credential's JWT, with its own subject
        token = st.tokens.issue_jwt(tenant.client_id, tenant.enterprise_uuid)
    body: dict[str, object] = {
        "access_token": token,
        "token_type": "JWT" if jwt_wanted else "Bearer",
        "expires_in": st.cfg.expires_in_value(),
        "scope": "read write profile email",
    }
    if body["expires_in"] is OMIT:
        del body["expires_in"]
    return _json(200, body)


# -- dispatch --------------------------------------------------------------------------------
def _match(method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    """(route, params, method_ok) for a decoded path."""
    for route in ROUTES:
        m = route.pattern.fullmatch(path)
        if m is not None:
            return route, m.groupdict(), route.method == method
    return None, {}, False


async def _handle(st: SimState, request: web.Request) -> tuple[str, web.StreamResponse]:
    route, params, method_ok = _match(request.method, request.path)
    if route is None:
        return "other", web.Response(status=404, body=_HTML_404, content_type="text/html")
    klass = route.klass
    st.stats.enter(klass)
    try:
        # With fault_tenants, faults wait for the caller to be known (see _api).
        fault = (None if st.cfg.fault_tenants
                 else st.draw_fault(klass, detail=route.handler is _detail))
        if fault is not None:
            st.stats.faults[fault] += 1
            return klass, fault_response(request, fault)
        if (delay := st.latency()) > 0:
            await asyncio.sleep(delay)
        if not method_ok:
            body = {"detail": f'Method "{request.method}" not allowed.'}
            return klass, _json(405, body)
        if route.handler is None:
            return klass, await _token(st, request)
        return klass, await _api(st, request, route, params)
    finally:
        st.stats.leave(klass)


async def _api(
    st: SimState, request: web.Request, route: Route, params: dict[str, str]
) -> web.StreamResponse:
    header = request.headers.get("Authorization")
    if header is None:
        return _json(400, {"message": "Missing Authentication Token"})  # the gateway's answer
    if route.klass == "lms" and "key" in params:
        strict = _COURSE_KEY if params["kind"] == "courses" else _RUN_KEY
        if params["kind"] != "programs" and not strict.fullmatch(params["key"]):
            # No Django URL pattern matches: Django's own HTML 404, not DRF JSON.
            return web.Response(status=404, body=_HTML_404, content_type="text/html")
    negotiated = negotiate(request.headers.get("Accept"), st.cfg.accept_mode, route.xml_capable)
    if negotiated.kind is None:
        return _json(406, {"detail": "Could not satisfy the request Accept header."})
    ctx = Ctx(st, request, params, negotiated.kind == "xml", "")
    prefix, _, token = header.strip().partition(" ")
    if prefix.lower() != "jwt":
        return _drf(ctx, 401, {"detail": "Authentication credentials were not provided."})
    clients = st.data.tenant_by_id if st.cfg.tenants > 1 else None
    claims = st.tokens.verify(token.strip(), clients) if token.strip() else None
    if claims is None:
        return _drf(ctx, 401, {"detail": "Invalid token."})
    assert route.handler is not None
    ctx = Ctx(st, request, params, ctx.xml, str(claims["sub"]))
    if st.cfg.fault_tenants and str(_tenant(ctx).index) in st.cfg.fault_tenants:
        fault = st.draw_fault(route.klass, detail=route.handler is _detail)
        if fault is not None:
            st.stats.faults[fault] += 1
            return fault_response(request, fault)
    resp = await route.handler(ctx)
    if st.cfg.tenants > 1:
        st.stats.by_client[ctx.user][f"{route.klass}:{resp.status}"] += 1
    return resp


async def _dispatch(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    klass, resp = await _handle(st, request)
    status = resp.status
    if (
        st.cfg.gateway_remap
        and klass != "other"
        and status not in _GATEWAY_PASS
        and status != DROPPED
    ):
        # Every integration maps only 200/401/403/404/429/500; `default` becomes 400.
        resp = _json(400, {"message": f"Bad Request (backend status {status})"})
        status = 400
    hostile = resp if status != DROPPED and isinstance(resp, web.Response) else None
    if hostile is not None and 200 <= status < 300 and st.draw_hostile(klass, st.cfg.bomb_rate):
        st.stats.faults["bomb"] += 1
        resp = hostile = bomb(hostile, st.cfg.bomb_mb)
    # The connection was already dropped or truncated by a fault.
    label = "fault" if status == DROPPED else str(status)
    body = getattr(resp, "body", None)
    st.stats.record(klass, label, len(body) if isinstance(body, bytes) else 0)
    if (hostile is not None and st.cfg.slow_drip_ms > 0
            and st.draw_hostile(klass, st.cfg.slow_drip_rate)):
        st.stats.faults["drip"] += 1
        return await drip(request, hostile, st.cfg.slow_drip_ms)
    return resp


# -- ops endpoints ---------------------------------------------------------------------------
def _base(st: SimState, request: web.Request) -> str:
    return st.base_url or f"{request.scheme}://{request.host}"


async def _info(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    return _json(200, st.info(_base(st, request)))


async def _stats(request: web.Request) -> web.StreamResponse:
    return _json(200, request.app[STATE].stats.snapshot())


async def _reset(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    st.stats.reset()
    st.lms_log.reset()
    st.learners_log.reset()
    return _json(200, {"reset": True})


async def _set_epoch(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    try:
        epoch = orjson.loads(await request.read())["epoch"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return _json(400, {"detail": 'body must be {"epoch": N}'})
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= 10_000:
        return _json(400, {"detail": "epoch must be an integer in [0, 10000]"})
    st.epoch = epoch
    return _json(200, {"epoch": epoch})


#: Knobs that ``POST /__config`` may change at run time: those read per request. The data
#: shape (seed, catalogs, items...) and the throttle logs are built once and stay fixed.
_LIVE_KNOBS: Final = frozenset({
    "forbid_catalogs", "detail_403_rate", "detail_403_keys",
    "fault_rate", "fault_kinds", "fault_token", "fault_scope", "detail_404_rate",
    "detail_404_mode", "detail_404_times", "shuffle", "churn", "etag", "latency_ms",
    "jitter_ms", "strip_retry_after", "gateway_remap", "end_marker", "accept_mode",
    "limit_mode", "echo_token", "expires_in", "omit_count",
    "slow_drip_ms", "slow_drip_rate", "bomb_rate", "bomb_mb", "keyless_items",
    "forbid_tenants", "fault_tenants",
})


_KNOB_TYPES: Final = {f.name: str(f.type) for f in dataclasses.fields(SimConfig)}


def _knob_value(name: str, value: object) -> object:
    """A live knob's JSON value as its field's type; ValueError (a 400) when it is not
    one. JSON has numbers, so a catalog index may come as one: it becomes the string the
    flag would give. A bool is never a number here (``True`` is no index or rate)."""
    kind = _KNOB_TYPES[name]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "tuple[str, ...]":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(
                isinstance(i, str) or (isinstance(i, int) and not isinstance(i, bool))
                for i in items):
            raise ValueError(f"{name}: must be a list of strings (or integer indexes)")
        return tuple(str(i) for i in items)
    ok = {"bool": isinstance(value, bool), "float": number,
          "int": number and isinstance(value, int), "str": isinstance(value, str),
          "str | None": value is None or isinstance(value, str)}.get(kind, False)
    if not ok:
        raise ValueError(f"{name}: must be of type {kind}, not {type(value).__name__}")
    return value


async def _set_config(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    try:
        changes = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _json(400, {"detail": "body must be a JSON object of knobs"})
    if not isinstance(changes, dict) or not changes:
        return _json(400, {"detail": "body must be a non-empty JSON object of knobs"})
    unknown = sorted(set(changes) - _LIVE_KNOBS)
    if unknown:
        return _json(400, {"detail": f"not live knobs: {unknown}; live: {sorted(_LIVE_KNOBS)}"})
    try:
        values: dict[str, Any] = {k: _knob_value(k, v) for k, v in changes.items()}
        st.cfg = dataclasses.replace(st.cfg, **values)
    except (TypeError, ValueError, AttributeError) as exc:
        return _json(400, {"detail": str(exc)})
    return _json(200, {k: getattr(st.cfg, k) for k in changes})


async def _changes(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    try:
        start = int(request.query["from"])
        stop = int(request.query.get("to", str(st.epoch)))
    except (KeyError, ValueError):
        return _json(400, {"detail": "usage: /__changes?from=A&to=B (integers)"})
    if not (0 <= start <= 10_000 and 0 <= stop <= 10_000):
        return _json(400, {"detail": "epochs must be in [0, 10000]"})
    return _json(200, st.data.changes(start, stop))


def build_app(cfg: SimConfig, clock: Callable[[], float] | None = None) -> web.Application:
    """The simulator as an aiohttp application.

    Args:
        cfg: the world and its knobs.
        clock: monotonic seconds; drives throttle windows and token expiry. Tests pass a
            fake to move time by assignment. Defaults to :func:`time.monotonic`.
    """
    app = web.Application()
    app[STATE] = SimState(cfg, clock or time.monotonic)
    app.router.add_get("/__info", _info)
    app.router.add_get("/__stats", _stats)
    app.router.add_get("/__changes", _changes)
    app.router.add_post("/__reset", _reset)
    app.router.add_post("/__epoch", _set_epoch)
    app.router.add_post("/__config", _set_config)
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    return app
