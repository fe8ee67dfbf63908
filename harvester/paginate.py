"""Page-number pagination as a small state machine with no I/O.

The API's lists are DRF ``PageNumberPagination`` behind a gateway: ``page`` and
``page_size`` work, the documented ``limit`` is dropped by the gateway (we send it anyway,
so a server that honours it also gives us big pages), ``page_size`` is silently clamped
(100 on catalog content), ``next`` may be ``null``, ``""`` or template junk, and its host is
the gateway's, not necessarily ours. So :class:`ListingPlan` learns ``count`` and the page
size the server really used from page 1, then plans every remaining page by number, to be
fetched concurrently. Where ``count`` is missing it falls back to walking one page at a
time, taking only the page number from ``next``.

A sample page it consumes::

    {"count": 250, "next": "https://api.edx.org/enterprise/v2/enterprise-catalogs/3f..?page=2&page_size=100",
     "previous": null, "results": [{...}, ...100 items]}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from harvester.errors import PayloadError
from harvester.models import Page


@dataclass(frozen=True, slots=True)
class PageRequest:
    """One page to fetch: number and the page size we ask for."""

    page: int
    page_size: int

    def query(self, *, send_limit: bool = True) -> dict[str, str]:
        """Query parameters: ``page``, ``page_size`` and (for doc-faithful servers) ``limit``."""
        q = {"page": str(self.page), "page_size": str(self.page_size)}
        if send_limit:
            q["limit"] = str(self.page_size)
        return q


def next_query(value: object) -> str | None:
    """The query string of a ``next`` link, or None at the end of the list.

    ``null``, ``""``, whitespace and anything that is not a URL (a gateway template that
    failed to render) all mean "no next page". The host is ignored on purpose.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    if text.startswith("?"):
        return text[1:] or None
    parts = urlsplit(text)
    is_url = (parts.scheme in ("http", "https") and bool(parts.netloc)) or text.startswith("/")
    if not is_url or not parts.query:
        return None
    return parts.query


def page_number_in(query: str | None) -> int | None:
    """The ``page`` parameter of a query string, if it is a positive integer."""
    if not query:
        return None
    values = parse_qs(query).get("page")
    if not values:
        return None
    try:
        number = int(values[0])
    except ValueError:
        return None
    return number if number > 0 else None


def parse_page(number: int, body: Any) -> Page:
    """Validate a DRF list body and turn it into a :class:`Page`.

    Raises PayloadError when ``results`` is missing or not a list of objects; ``count``
    is optional (the gateway keeps it, but we do not depend on it).
    """
    if not isinstance(body, dict):
        raise PayloadError(f"page {number}: expected a JSON object with 'results'", status=200)
    results = body.get("results")
    if not isinstance(results, list):
        raise PayloadError(f"page {number}: 'results' is missing or not a list", status=200)
    good = [r for r in results if isinstance(r, dict)]
    if len(good) != len(results):
        raise PayloadError(f"page {number}: 'results' holds non-objects", status=200)
    count = body.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        count = None
    return Page(number=number, count=count, results=good, next_query=next_query(body.get("next")))


@dataclass(slots=True)
class ListingPlan:
    """The page plan for one walk of one list. Fresh per walk; holds no records.

    Use: ``first()``; after page 1 arrives, ``learn(page1)``; fetch ``planned()`` pages in
    any order and concurrency; for every page call ``after(page)``, which returns the
    page to fetch next when the list turned out longer than planned (or when there is no
    ``count`` to plan with), else None.
    """

    requested: int
    count: int | None = None
    page_size: int = 0  #: the size the server really used (0 until learned)
    total_pages: int | None = None
    clamped: bool = False
    _requested_extra: set[int] = field(default_factory=set)

    def first(self) -> PageRequest:
        """The first page, at the requested size."""
        return PageRequest(1, self.requested)

    def learn(self, first: Page) -> None:
        """Learn ``count`` and the real page size from page 1."""
        n = len(first.results)
        self.count = first.count
        more = first.next_query is not None and n > 0
        if first.count is not None and n < first.count:
            more = n > 0
        elif first.count is None and n > 0:
            # Neither a count nor a usable `next` (the gateway can render it as "" or as
            # template junk): probe the next page by number; a 404 "Invalid page." or a
            # short page ends the walk. One extra request at worst, never lost items.
            more = True
        self.page_size = n if more else max(n, 1)
        if more and n < self.requested and (first.next_query is not None or first.count):
            self.clamped = True  # the server said there is more, in smaller pages
        if not more:
            self.total_pages = 1
        elif self.count is not None:
            self.total_pages = max(1, math.ceil(self.count / self.page_size))
        else:
            self.total_pages = None  # walk by `next`, one page at a time

    def planned(self) -> range:
        """Pages 2..N to fetch concurrently (empty without a count)."""
        if self.total_pages is None:
            return range(0)
        return range(2, self.total_pages + 1)

    def request(self, page: int) -> PageRequest:
        """The request for page ``page`` at the size that keeps page boundaries aligned.

        Once the server's size is known we ask for exactly that, so a server that
        honours our size and one that clamps it cut the list at the same places.
        """
        return PageRequest(page, self.page_size if self.page_size else self.requested)

    def is_last(self, page: Page) -> bool:
        """Whether ``page`` ends the list: short, no ``next``, or ``count`` reached."""
        if not page.results:
            return True
        if self.page_size and len(page.results) < self.page_size:
            return True
        count = page.count if page.count is not None else self.count
        if page.next_query is None:
            return count is not None  # without a count, a full page may not be the last
        return count is not None and page.number * self.page_size >= count

    def after(self, page: Page) -> PageRequest | None:
        """The page to fetch after ``page`` beyond the plan, or None."""
        planned_last = self.total_pages if self.total_pages is not None else 0
        if page.number < planned_last or self.is_last(page):
            return None
        nxt = page_number_in(page.next_query) or page.number + 1
        if nxt <= page.number or nxt in self._requested_extra:
            nxt = page.number + 1
        if nxt in self._requested_extra:
            return None  # never loop on a server that repeats its `next`
        self._requested_extra.add(nxt)
        return self.request(nxt)
