"""Response bodies: content negotiation, DRF page-number paging, the gateway rewrite, XML.

The JSON paging body is what the API Gateway's template leaves: exactly
``{"count", "next", "previous", "results"}``. The XML body is what
django-rest-framework-xml renders from the backend's full paginator dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode
from xml.sax.saxutils import escape

import orjson

__all__ = [
    "InvalidPage",
    "Negotiated",
    "Page",
    "PageQuery",
    "json_bytes",
    "negotiate",
    "page_links",
    "paginate",
    "parse_page_query",
    "xml_bytes",
]

JSON_TYPE: Final = "application/json"
XML_TYPE: Final = "application/xml"


class InvalidPage(Exception):
    """The requested page does not exist (DRF answers 404 ``Invalid page.``)."""


@dataclass(frozen=True, slots=True)
class Negotiated:
    """Outcome of content negotiation: ``"json"``, ``"xml"``, or ``None`` for 406."""

    kind: str | None


def negotiate(accept: str | None, mode: str, xml_capable: bool = True) -> Negotiated:
    """Pick the renderer the way the public doc ("doc") or DRF itself ("backend") does.

    ``doc``: XML unless ``application/json`` is acceptable (the documented default).
    ``backend``: DRF picks its first renderer (JSON) for a missing Accept or ``*/*``.
    Endpoints without an XML renderer (learner-summary) answer 406 when XML is demanded.
    """
    media = [part.split(";", 1)[0].strip().lower() for part in (accept or "").split(",")]
    media = [m for m in media if m]
    wants_json = JSON_TYPE in media or "application/*" in media
    wants_xml = XML_TYPE in media or "text/xml" in media
    anything = not media or "*/*" in media
    if not xml_capable:
        return Negotiated("json" if wants_json or anything else None)
    if wants_json:
        return Negotiated("json")
    if mode == "doc":
        return Negotiated("xml")
    if anything:
        return Negotiated("json")
    return Negotiated("xml" if wants_xml else None)


def json_bytes(data: Any) -> bytes:
    """Compact JSON, non-ASCII kept as UTF-8 like DRF's ``JSONRenderer``."""
    return orjson.dumps(data)


def xml_bytes(data: Any) -> bytes:
    """Render like ``rest_framework_xml.renderers.XMLRenderer``."""
    parts: list[str] = ['<?xml version="1.0" encoding="utf-8"?>\n<root>']
    _xml(parts, data)
    parts.append("</root>")
    return "".join(parts).encode()


def _xml(out: list[str], data: Any) -> None:
    if isinstance(data, Mapping):
        for key, value in data.items():
            out.append(f"<{key}>")
            _xml(out, value)
            out.append(f"</{key}>")
    elif isinstance(data, Sequence) and not isinstance(data, str | bytes):
        for value in data:
            out.append("<list-item>")
            _xml(out, value)
            out.append("</list-item>")
    elif data is None:
        return
    elif isinstance(data, bool):  # before int: bool is an int subclass
        out.append("True" if data else "False")
    else:
        out.append(escape(str(data)))


@dataclass(frozen=True, slots=True)
class PageQuery:
    """The paging inputs of one request, after the gateway's parameter filter."""

    page: str | None
    size: int
    #: query parameters that reach the backend and therefore reappear in links
    forwarded: dict[str, str]


def parse_page_query(
    query: Mapping[str, str], default_size: int, max_size: int | None, limit_mode: str
) -> PageQuery:
    """DRF ``get_page_size``: clamp silently, fall back to the default on junk or <= 0."""
    names = ["page", "page_size"] + (["limit"] if limit_mode == "doc" else [])
    forwarded = {name: query[name] for name in names if name in query}
    size: int | None = None
    candidates = ["limit", "page_size"] if limit_mode == "doc" else ["page_size"]
    if limit_mode == "doc":
        default_size = 20  # what the public doc promises for its `limit` parameter
    for name in candidates:
        if name in forwarded and size is None:
            size = _positive_int(forwarded[name])
    size = default_size if size is None else size
    if max_size is not None:
        size = min(size, max_size)
    return PageQuery(page=forwarded.get("page"), size=size, forwarded=forwarded)


def _positive_int(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None


@dataclass(frozen=True, slots=True)
class Page:
    """One resolved page: 1-based ``number`` of ``num_pages``, items ``[start, stop)``."""

    number: int
    num_pages: int
    start: int
    stop: int


def paginate(count: int, page: str | None, size: int) -> Page:
    """Django ``Paginator`` semantics (``allow_empty_first_page``, ``page=last``).

    Raises:
        InvalidPage: page 0, past the end or not an integer.
    """
    num_pages = max(1, math.ceil(count / size))
    if page is None:
        number = 1
    elif page == "last":
        number = num_pages
    else:
        try:
            number = int(page)
        except ValueError:
            raise InvalidPage(page) from None
    if not 1 <= number <= num_pages:
        raise InvalidPage(page)
    start = (number - 1) * size
    return Page(number, num_pages, start, min(count, start + size))


def page_links(
    base: str, path: str, page: Page, forwarded: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """``next`` / ``previous`` like DRF's ``replace_query_param`` after the gateway rewrite.

    The query is re-encoded sorted by key; a link to page 1 loses ``page`` entirely.
    """

    def build(number: int | None) -> str:
        params = {k: v for k, v in forwarded.items() if k != "page"}
        if number is not None:
            params["page"] = str(number)
        query = urlencode(sorted(params.items()))
        return f"{base.rstrip('/')}{path}" + (f"?{query}" if query else "")

    nxt = build(page.number + 1) if page.number < page.num_pages else None
    prev = None if page.number <= 1 else build(None if page.number == 2 else page.number - 1)
    return nxt, prev


def page_body(
    count: int | None,
    links: tuple[str | None, str | None],
    results: list[Any],
    *,
    end_marker: str,
    xml: bool,
    page: Page,
    size: int,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """The full response body of one page in the negotiated format (``count`` None:
    the body has no ``count`` at all)."""
    nxt, prev = links
    if not xml:
        if end_marker == "empty":
            # What the gateway's VTL template makes of a null link.
            nxt, prev = nxt or "", prev or ""
        plain: dict[str, Any] = {"count": count, "next": nxt, "previous": prev,
                                 "results": results}
        if count is None:
            del plain["count"]
        return json_bytes(plain)
    body: dict[str, Any] = {
        "next": nxt,
        "previous": prev,
        "count": count,
        "num_pages": page.num_pages,
        "current_page": page.number,
        "start": (page.number - 1) * size,
        "results": results,
    }
    body.update(extra or {})
    if count is None:
        del body["count"]
    return xml_bytes(body)
