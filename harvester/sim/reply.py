"""A routed API request (:class:`Ctx`) and the shapes an answer to it takes.

Owns the wire form of answers: plain JSON, DRF bodies in the negotiated format (errors
included), a 429 with its ``Retry-After``, and a page of results with its links. It never
decides *what* to answer (that is :mod:`.handlers` and :mod:`.access`), and never routes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from harvester.sim.content import Json
from harvester.sim.render import (
    InvalidPage,
    json_bytes,
    page_body,
    page_links,
    paginate,
    parse_page_query,
    xml_bytes,
)
from harvester.sim.state import SimState
from harvester.sim.throttle import throttle_message

__all__ = ["Ctx", "drf", "json_response", "page_response", "throttled"]


@dataclass(frozen=True, slots=True)
class Ctx:
    """One API request after routing, negotiation and authentication."""

    state: SimState
    request: web.Request
    params: dict[str, str]
    xml: bool
    user: str


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer whatever the request negotiated (gateway, OAuth and ops answers)."""
    return web.Response(
        status=status, body=json_bytes(body), content_type="application/json", headers=headers
    )


def drf(ctx: Ctx, status: int, body: Json, headers: dict[str, str] | None = None) -> web.Response:
    """A DRF response in the negotiated format (errors included, as DRF does)."""
    if ctx.xml:
        return web.Response(
            status=status,
            body=xml_bytes(body),
            headers=headers,
            content_type="application/xml",
            charset="utf-8",
        )
    return json_response(status, body, headers)


def throttled(ctx: Ctx, wait: int) -> web.Response:
    """DRF's 429 for a caller over its budget, ``wait`` seconds before a retry may pass."""
    headers = None if ctx.state.cfg.strip_retry_after else {"Retry-After": str(wait)}
    return drf(ctx, 429, {"detail": throttle_message(wait)}, headers)


def _paged(ctx: Ctx, body: bytes) -> web.Response:
    if ctx.xml:
        return web.Response(body=body, content_type="application/xml", charset="utf-8")
    return web.Response(body=body, content_type="application/json")


def _public_base(ctx: Ctx) -> str:
    st = ctx.state
    return st.cfg.public_base or st.base_url or f"{ctx.request.scheme}://{ctx.request.host}"


def page_response(
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
    """The page the request's query asks for out of ``count`` rows (404 past the end).

    ``fetch`` builds the rows of one page from their positions; ``reported`` is the
    ``count`` the body claims when it is not the truth, ``omit_count`` leaves it out.
    """
    cfg = ctx.state.cfg
    pq = parse_page_query(ctx.request.query, default_size, max_size, cfg.limit_mode)
    try:
        page = paginate(count, pq.page, pq.size)
    except InvalidPage:
        return drf(ctx, 404, {"detail": "Invalid page."})
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
