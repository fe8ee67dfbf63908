"""The page planner, fed plain dicts: no HTTP."""

from __future__ import annotations

import pytest

from harvester.errors import PayloadError
from harvester.paginate import ListingPlan, PageRequest, next_query, parse_page

BASE = "https://api.edx.org/enterprise/v2/enterprise-catalogs/abc"


def body(n: int, count: int | None, nxt: object) -> dict[str, object]:
    data: dict[str, object] = {"next": nxt, "previous": None,
                               "results": [{"key": f"k{i}"} for i in range(n)]}
    if count is not None:
        data["count"] = count
    return data


@pytest.mark.parametrize("value", [None, "", "   ", "null", "$inputRoot.next", 5, f"{BASE}"])
def test_next_query_end_markers(value: object) -> None:
    """null, "", junk, non-strings and a URL without a query all mean: no next page."""
    assert next_query(value) is None


def test_next_query_keeps_only_the_query() -> None:
    """The host of `next` is never used: only its query string."""
    assert next_query("https://evil.example/x?page=2&page_size=100") == "page=2&page_size=100"
    assert next_query("/enterprise/v2/x?page=3") == "page=3"


def test_request_sends_page_size_and_limit() -> None:
    """Both `page_size` (what the server honours) and `limit` (what the doc says) are sent."""
    assert PageRequest(3, 250).query() == {"page": "3", "page_size": "250", "limit": "250"}


def test_clamp_is_learned_from_page_one() -> None:
    """Asked 250, got 100 with more to come: the real size is 100, pages planned by count."""
    plan = ListingPlan(250)
    plan.learn(parse_page(1, body(100, 1234, f"{BASE}?page=2&page_size=250")))
    assert plan.clamped and plan.page_size == 100
    assert plan.total_pages == 13
    assert list(plan.planned()) == list(range(2, 14))
    assert plan.request(5) == PageRequest(5, 100)


def test_honoured_page_size_is_not_a_clamp() -> None:
    plan = ListingPlan(250)
    plan.learn(parse_page(1, body(250, 600, f"{BASE}?page=2")))
    assert not plan.clamped and plan.total_pages == 3


def test_single_page_list() -> None:
    """A list that fits page 1 plans nothing more."""
    plan = ListingPlan(250)
    page = parse_page(1, body(40, 40, None))
    plan.learn(page)
    assert plan.total_pages == 1 and list(plan.planned()) == []
    assert plan.is_last(page)
    plan.took(page)
    assert plan.next_request() is None


def test_empty_catalog() -> None:
    plan = ListingPlan(250)
    plan.learn(parse_page(1, body(0, 0, None)))
    assert plan.total_pages == 1


@pytest.mark.parametrize(("n", "count", "nxt", "last"), [
    (100, 1000, "?page=4", False),   # full page, more to come
    (60, 1000, "?page=4", True),     # short page
    (100, 1000, "", False),          # empty next, but count says more: not the end
    (100, 300, "", True),            # count reached (page 3 of 100), no next
    (100, 300, "?page=4", False),    # count reached but `next` says more: probe one page
    (0, 1000, "?page=4", True),      # empty page
])
def test_stop_rules(n: int, count: int, nxt: str, last: bool) -> None:
    plan = ListingPlan(100)
    plan.learn(parse_page(1, body(100, count, "?page=2")))
    assert plan.is_last(parse_page(3, body(n, count, nxt))) is last


def walk(plan: ListingPlan, pages: dict[int, dict[str, object]], *,
         parallel: int = 1) -> list[int]:
    """Drive a plan against a list given as {page number: body}; a missing number is a
    404 "Invalid page.". ``parallel`` requests are handed out before any answer comes
    back, as concurrent workers would. Returns the page numbers requested, in order."""
    asked = [1]
    first = parse_page(1, pages[1])
    plan.learn(first)
    plan.took(first)
    while True:
        batch = []
        while len(batch) < parallel and (req := plan.next_request()) is not None:
            batch.append(req.page)
        if not batch:
            return asked
        asked.extend(batch)
        for n in batch:
            if n in pages:
                plan.took(parse_page(n, pages[n]))
            else:
                plan.invalid(n)


def listing(total: int, size: int, *, count: int | None, nxt: bool = True
            ) -> dict[int, dict[str, object]]:
    """The pages of a list of ``total`` items at ``size`` per page, reporting ``count``."""
    pages: dict[int, dict[str, object]] = {}
    number = 1
    while True:
        n = max(0, min(size, total - (number - 1) * size))
        more = number * size < total
        pages[number] = body(n, count, f"?page={number + 1}" if more and nxt else None)
        if not more:
            return pages
        number += 1


def test_exact_count_walks_every_page_once() -> None:
    """The common case: 250 items, count 250: pages 1-3, nothing more."""
    assert walk(ListingPlan(100), listing(250, 100, count=250), parallel=4) == [1, 2, 3]
    assert walk(ListingPlan(100), listing(300, 100, count=300), parallel=4) == [1, 2, 3]


@pytest.mark.parametrize("lie", [2000, 10**9])
def test_a_lying_count_stops_at_the_first_invalid_page(lie: int) -> None:
    """5 items that claim `count: 2000` (or 10**9): page 1, then at most one batch of
    concurrent probes, every one past the end; no queue of all the claimed pages."""
    plan = ListingPlan(250)
    asked = walk(plan, listing(5, 250, count=lie), parallel=4)
    assert asked == [1, 2, 3, 4, 5]
    assert plan.end == 2 and plan.count == lie
    assert plan.next_request() is None


def test_a_lying_count_stops_at_the_first_short_page() -> None:
    """250 real items under `count: 10**9`, pages of 100: page 3 is short, so nothing
    after it is asked, though the plan had 10**7 pages."""
    plan = ListingPlan(100)
    asked = walk(plan, listing(250, 100, count=10**9), parallel=1)
    assert asked == [1, 2, 3]
    assert plan.total_pages == 10**7 and plan.end == 4


def test_an_empty_page_ends_the_walk() -> None:
    pages = {1: body(100, 1000, "?page=2"), 2: body(100, 1000, "?page=3"),
             3: body(0, 1000, "?page=4"), 4: body(100, 1000, "?page=5")}
    assert walk(ListingPlan(100), pages) == [1, 2, 3]


def test_a_short_page_in_the_middle_ends_the_walk() -> None:
    """The list shrank under us: pages after a short one are not asked for."""
    pages = listing(1000, 100, count=1000)
    pages[4] = body(30, 1000, "?page=5")
    assert walk(ListingPlan(100), pages) == [1, 2, 3, 4]


def test_list_that_grew_is_followed_past_the_plan() -> None:
    """If the last planned page is full and `next` says more, keep going one by one."""
    pages = listing(200, 100, count=200)
    pages[2] = body(100, 250, "?page=3")
    pages[3] = body(50, 250, None)
    plan = ListingPlan(100)
    assert walk(plan, pages, parallel=4) == [1, 2, 3]
    assert plan.total_pages == 2 and plan.count == 250


def test_without_count_walk_by_number() -> None:
    """No `count`: nothing planned; pages one at a time until a short one."""
    plan = ListingPlan(100)
    assert walk(plan, listing(270, 100, count=None), parallel=4) == [1, 2, 3]
    assert plan.total_pages is None and list(plan.planned()) == []


def test_without_count_a_next_that_jumps_ahead_is_not_followed() -> None:
    """`next` on page 1 says page 50: pages 2.. are still asked in order, none skipped."""
    pages = listing(350, 100, count=None)
    pages[1] = body(100, None, "?page=50")
    assert walk(ListingPlan(100), pages) == [1, 2, 3, 4]


def test_without_count_a_full_last_page_costs_one_probe() -> None:
    assert walk(ListingPlan(100), listing(200, 100, count=None)) == [1, 2, 3]


def test_resume_skips_done_pages_and_never_builds_a_queue() -> None:
    plan = ListingPlan(100, count=10**9, page_size=100, total_pages=10**7)
    plan.resume({2, 3})
    assert plan.next_request() == PageRequest(4, 100)
    plan.took(parse_page(4, body(100, 10**9, "?page=5")))
    assert plan.next_request() == PageRequest(5, 100)
    plan.invalid(5)
    assert plan.next_request() is None


def test_resume_past_the_plan_probes_one_more_page() -> None:
    """A walk that had gone beyond its plan: the page after the last one taken is asked."""
    plan = ListingPlan(100, count=200, page_size=100, total_pages=2)
    plan.resume({2, 3})
    assert plan.next_request() == PageRequest(4, 100)
    assert plan.next_request() is None


@pytest.mark.parametrize("bad", [[], "x", {"results": None}, {"results": [1, 2]}, {}])
def test_malformed_pages_are_payload_errors(bad: object) -> None:
    with pytest.raises(PayloadError):
        parse_page(1, bad)


def test_count_is_optional_and_validated() -> None:
    assert parse_page(1, {"results": [], "count": "12"}).count is None
    assert parse_page(1, {"results": [], "count": -1}).count is None
    assert parse_page(1, {"results": [], "count": True}).count is None


def test_no_count_and_junk_next_probes_by_number() -> None:
    """No count and an unusable `next` on a full page: ask for the next page anyway
    (a 404 "Invalid page." or a short page ends it) rather than stop at page 1."""
    pages = {1: body(100, None, "$inputRoot.next"), 2: body(100, None, ""),
             3: body(40, None, "")}
    plan = ListingPlan(100)
    assert walk(plan, pages) == [1, 2, 3]
    assert plan.total_pages is None and not plan.clamped


def test_resume_without_count_continues_after_the_pages_taken() -> None:
    """A count-less walk resumed after page 1: it goes on by number (it used to stop,
    silently, with nothing planned)."""
    plan = ListingPlan(100, count=None, page_size=100, total_pages=None)
    plan.resume({1})
    assert plan.next_request() == PageRequest(2, 100)
    assert plan.next_request() is None  # one at a time until page 2 comes back
    plan.took(parse_page(2, body(100, None, "")))
    assert plan.next_request() == PageRequest(3, 100)
