"""The page planner, fed plain dicts: no HTTP."""

from __future__ import annotations

import pytest

from harvester.errors import PayloadError
from harvester.paginate import ListingPlan, PageRequest, next_query, page_number_in, parse_page

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
    assert page_number_in("page=7&page_size=100") == 7
    assert page_number_in("page=last") is None


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
    assert plan.is_last(page) and plan.after(page) is None


def test_empty_catalog() -> None:
    plan = ListingPlan(250)
    plan.learn(parse_page(1, body(0, 0, None)))
    assert plan.total_pages == 1


@pytest.mark.parametrize(("n", "count", "nxt", "last"), [
    (100, 1000, "?page=4", False),   # full page, more to come
    (60, 1000, "?page=4", True),     # short page
    (100, 1000, "", True),           # empty next
    (100, 300, "?page=4", True),     # count reached (page 3 of 100)
    (0, 1000, "?page=4", True),      # empty page
])
def test_stop_rules(n: int, count: int, nxt: str, last: bool) -> None:
    plan = ListingPlan(100)
    plan.learn(parse_page(1, body(100, count, "?page=2")))
    assert plan.is_last(parse_page(3, body(n, count, nxt))) is last


def test_list_that_grew_is_followed_past_the_plan() -> None:
    """If the last planned page is full and `next` says more, keep going one by one."""
    plan = ListingPlan(100)
    plan.learn(parse_page(1, body(100, 200, "?page=2")))
    assert plan.total_pages == 2
    grown = parse_page(2, body(100, 250, "?page=3"))
    assert plan.after(grown) == PageRequest(3, 100)
    assert plan.after(grown) is None  # never asks for the same page twice


def test_without_count_walk_by_next() -> None:
    """No `count`: nothing planned; each page says what comes next."""
    plan = ListingPlan(100)
    first = parse_page(1, body(100, None, "?page=2"))
    plan.learn(first)
    assert plan.total_pages is None and list(plan.planned()) == []
    assert plan.after(first) == PageRequest(2, 100)
    assert plan.after(parse_page(2, body(100, None, "?page=3"))) == PageRequest(3, 100)
    assert plan.after(parse_page(3, body(7, None, None))) is None


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
    plan = ListingPlan(100)
    first = parse_page(1, body(100, None, "$inputRoot.next"))
    plan.learn(first)
    assert plan.total_pages is None and not plan.clamped
    assert plan.after(first) == PageRequest(2, 100)
    second = parse_page(2, body(100, None, ""))
    assert plan.after(second) == PageRequest(3, 100)
    assert plan.after(parse_page(3, body(40, None, ""))) is None
