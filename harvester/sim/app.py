"""The aiohttp application: routing, the gateway's behaviour, auth and injected faults.

Owns what happens to a request before and after its handler: the route table, the
gateway's answers (missing token, 406, Django's HTML 404, status remapping), JWT checks,
latency, faults, drips and bombs, and the stats of every API request. What an endpoint
answers is :mod:`.handlers`'s; the operator endpoints are :mod:`.ops`'s.

One catch-all route dispatches on the percent-*decoded* path (as Django does), so
``course-v1%3AedX%2BDemoX%2BT1`` and ``course-v1:edX+DemoX+T1`` reach the same handler and a
``+`` in the path stays a plus.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from harvester.sim import handlers
from harvester.sim.access import tenant
from harvester.sim.config import SimConfig
from harvester.sim.faults import DROPPED, fault_response
from harvester.sim.hostile import bomb, drip
from harvester.sim.ops import OPS, OpsHandler
from harvester.sim.render import negotiate
from harvester.sim.reply import Ctx, drf, json_response
from harvester.sim.state import SimState

__all__ = ["STATE", "build_app"]

#: Where the :class:`SimState` lives on the application.
STATE: Final = web.AppKey("harvester_sim_state", SimState)

_GATEWAY_PASS: Final = frozenset({200, 304, 401, 403, 404, 429, 500})
_COURSE_KEY: Final = re.compile(r"[^/+]+\+[^/+]+")
_RUN_KEY: Final = re.compile(r"[^/+]+\+[^/+]+\+[^/?]+")
_HTML_404: Final = (
    b'<!doctype html>\n<html lang="en">\n<head><title>Not Found</title></head>\n'
    b"<body><h1>Not Found</h1><p>The requested resource was not found on this server.</p>"
    b"</body>\n</html>\n"
)

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


_CAT: Final = r"/enterprise/v2/enterprise-catalogs"
ROUTES: Final = (
    _route("POST", r"/oauth2/v1/access_token", "token", None, xml=False),
    _route("GET", r"/enterprise/v1/enterprise-catalogs", "lms", handlers.catalogs_v1),
    _route("GET", _CAT, "content", handlers.catalogs_v2),
    _route("GET", _CAT + r"/(?P<uuid>[^/]+)", "content", handlers.content_page),
    _route(
        "GET",
        r"/enterprise/v[12]/enterprise-catalogs/(?P<uuid>[^/]+)/"
        r"(?P<kind>courses|course-runs|programs)/(?P<key>[^/]+)",
        "lms",
        handlers.detail,
    ),
    _route(
        "GET",
        r"/enterprise/v3/enterprise-customer/(?P<ent>[^/]+)/learner-summary",
        "learners",
        handlers.learners,
        xml=False,
    ),
)


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
                 else st.draw_fault(klass, detail=route.handler is handlers.detail))
        if fault is not None:
            st.stats.faults[fault] += 1
            return klass, fault_response(request, fault)
        if (delay := st.latency()) > 0:
            await asyncio.sleep(delay)
        if not method_ok:
            body = {"detail": f'Method "{request.method}" not allowed.'}
            return klass, json_response(405, body)
        if route.handler is None:
            return klass, await handlers.token(st, request)
        return klass, await _api(st, request, route, params)
    finally:
        st.stats.leave(klass)


async def _api(
    st: SimState, request: web.Request, route: Route, params: dict[str, str]
) -> web.StreamResponse:
    header = request.headers.get("Authorization")
    if header is None:
        # The gateway's own answer, before any backend sees the request.
        return json_response(400, {"message": "Missing Authentication Token"})
    if route.klass == "lms" and "key" in params:
        strict = _COURSE_KEY if params["kind"] == "courses" else _RUN_KEY
        if params["kind"] != "programs" and not strict.fullmatch(params["key"]):
            # No Django URL pattern matches: Django's own HTML 404, not DRF JSON.
            return web.Response(status=404, body=_HTML_404, content_type="text/html")
    negotiated = negotiate(request.headers.get("Accept"), st.cfg.accept_mode, route.xml_capable)
    if negotiated.kind is None:
        return json_response(406, {"detail": "Could not satisfy the request Accept header."})
    ctx = Ctx(st, request, params, negotiated.kind == "xml", "")
    prefix, _, token = header.strip().partition(" ")
    if prefix.lower() != "jwt":
        return drf(ctx, 401, {"detail": "Authentication credentials were not provided."})
    clients = st.data.tenant_by_id if st.cfg.tenants > 1 else None
    claims = st.tokens.verify(token.strip(), clients) if token.strip() else None
    if claims is None:
        return drf(ctx, 401, {"detail": "Invalid token."})
    assert route.handler is not None
    ctx = Ctx(st, request, params, ctx.xml, str(claims["sub"]))
    if st.cfg.fault_tenants and str(tenant(ctx).index) in st.cfg.fault_tenants:
        fault = st.draw_fault(route.klass, detail=route.handler is handlers.detail)
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
        resp = json_response(400, {"message": f"Bad Request (backend status {status})"})
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


def _with_state(handler: OpsHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request) -> web.StreamResponse:
        return await handler(request.app[STATE], request)

    return serve


def build_app(cfg: SimConfig, clock: Callable[[], float] | None = None) -> web.Application:
    """The simulator as an aiohttp application.

    Args:
        cfg: the world and its knobs.
        clock: monotonic seconds; drives throttle windows and token expiry. Tests pass a
            fake to move time by assignment. Defaults to :func:`time.monotonic`.
    """
    app = web.Application()
    app[STATE] = SimState(cfg, clock or time.monotonic)
    for method, path, handler in OPS:
        if method == "GET":
            app.router.add_get(path, _with_state(handler))  # HEAD too, as aiohttp does
        else:
            app.router.add_route(method, path, _with_state(handler))
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    return app
