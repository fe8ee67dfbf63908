"""Page-number pagination as a small state machine with no I/O.

The API's lists are DRF ``PageNumberPagination`` behind a gateway: ``page`` and
``page_size`` work, the documented ``limit`` is dropped by the gateway (we send it anyway,
so a server that honours it also gives us big pages), ``page_size`` is silently clamped
(100 on catalog content), ``next`` may be ``null``, ``""`` or template junk, and its host is
the gateway's, not necessarily ours. So :class:`ListingPlan` learns ``count`` and the page
size the server really used from page 1, then plans every remaining page by number, to be
fetched concurrently, handing page numbers out lazily and stopping at the first sign of
the real end (``Invalid page.``, an empty or short page), so a lying ``count`` costs a
few requests, not millions. Where ``count`` is missing it walks one page at a time by
number; ``next`` only says whether more may follow, and a ``next`` that jumps ahead is
never followed (pages would be skipped silently).

A sample page it consumes::

    {"count": 250, "next": "https://api.edx.org/enterprise/v2/enterprise-catalogs/3f..?page=2&page_size=100",
     "previous": null, "results": [{...}, ...100 items]}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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

    Use: ``first()``; after page 1 arrives, ``learn(page1)`` then ``took(page1)``; then any
    number of workers loop on ``next_request()`` until it returns None, reporting every
    page with ``took(page)`` and every 404 ``Invalid page.`` with ``invalid(number)``.

    Page numbers are handed out lazily and in order, never from a list of all pages, so a
    ``count`` of 10**9 costs nothing until pages really come back. The walk ends at the
    first ``Invalid page.``, empty page or short page (shorter than the size in use):
    whatever ``count`` claimed, nothing lies beyond it, and the shortfall is the caller's
    gap to report. Past the planned pages (the list grew, or there is no ``count``) one
    page at a time is allowed, each only after the page before it came back full. Page
    numbers always go up by one: a ``next`` that skips ahead is never followed.
    """

    requested: int
    count: int | None = None
    page_size: int = 0  #: the size the server really used (0 until learned)
    total_pages: int | None = None
    clamped: bool = False
    #: the highest page number that may be handed out now
    limit: int = 1
    #: the first page number known to lie past the end of the list, once one is seen
    end: int | None = None
    _cursor: int = 2
    _skip: frozenset[int] = frozenset()

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
            self.total_pages = None  # walk one page at a time
        self.limit = self.total_pages or 1

    def resume(self, skip: set[int]) -> None:
        """Continue a walk whose page 1 is done; ``skip`` holds the pages already taken."""
        self._skip = frozenset(skip)
        self.limit = max(self.limit, self.total_pages or 1)
        if self._skip and max(self._skip) >= self.limit:
            # The walk had gone past its plan; what followed its last page is unknown,
            # so ask for one more (an "Invalid page." at worst).
            self.limit = max(self._skip) + 1

    def planned(self) -> range:
        """Pages 2..N of the plan (empty without a count). Informational: fetch with
        :meth:`next_request`, which stops early at the real end of the list."""
        if self.total_pages is None:
            return range(0)
        return range(2, self.total_pages + 1)

    def request(self, page: int) -> PageRequest:
        """The request for page ``page`` at the size that keeps page boundaries aligned.

        Once the server's size is known we ask for exactly that, so a server that
        honours our size and one that clamps it cut the list at the same places.
        """
        return PageRequest(page, self.page_size if self.page_size else self.requested)

    def next_request(self) -> PageRequest | None:
        """The next page to fetch, or None when nothing may be fetched now."""
        while True:
            n = self._cursor
            if n > self.limit or (self.end is not None and n >= self.end):
                return None
            self._cursor += 1
            if n not in self._skip:
                return self.request(n)

    def took(self, page: Page) -> None:
        """Record a page that came back: it may end the list or let the walk go on."""
        if page.count is not None and (self.count is None or page.count > self.count):
            self.count = page.count  # the list grew while we walked it
        if self.end is not None and page.number >= self.end:
            return  # fetched concurrently with the page that ended the list
        if self.is_short(page) or (page.number >= self.limit and self.is_last(page)):
            # Nothing lies past a short page, whatever `count` claims.
            self.end = page.number + 1
        elif page.number >= self.limit:
            self.limit = page.number + 1

    def invalid(self, number: int) -> None:
        """Page ``number`` answered 404 ``Invalid page.``: the list ends before it."""
        self.end = number if self.end is None else min(self.end, number)

    def is_short(self, page: Page) -> bool:
        """Whether ``page`` holds fewer items than the page size in use (or none)."""
        return not page.results or (self.page_size > 0 and len(page.results) < self.page_size)

    def is_last(self, page: Page) -> bool:
        """Whether ``page`` ends the list: short or empty, or full with ``count`` reached
        and no ``next``. A full page with a usable ``next`` is never the last."""
        if self.is_short(page):
            return True
        if page.next_query is not None:
            return False
        count = page.count if page.count is not None else self.count
        # Without a count, a full page may not be the last: probe the next one.
        return count is not None and page.number * self.page_size >= count
