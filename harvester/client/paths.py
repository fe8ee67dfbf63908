"""Where requests go: the throttle classes and the API's URL paths.

Pure: no I/O, no aiohttp. Every path is percent-encoded here, so an id or key taken from
the server's data can never add a path segment or a query.
"""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import quote, urlsplit

from harvester.models import detail_segment


class ThrottleClass(StrEnum):
    """The throttle classes of requests, as the real service counts them: one budget each."""

    TOKEN = "token"
    LMS = "lms"  #: v1 catalog list + course / course run / program details: one budget
    CONTENT = "content"  #: v2 catalog content pages: not throttled, concurrency-bounded
    LEARNERS = "learners"  #: v3 learner-summary: its own budget


def _seg(value: str, safe: str = "") -> str:
    """One path segment, percent-encoded; ``.``/``..`` cannot become dot-segments."""
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return quote(value, safe=safe)


def catalogs_path() -> str:
    """The v1 catalog list."""
    return "/enterprise/v1/enterprise-catalogs"


def content_path(catalog_uuid: str) -> str:
    """A catalog's content list (v2)."""
    return f"/enterprise/v2/enterprise-catalogs/{_seg(catalog_uuid)}"


def detail_path(catalog_uuid: str, content_type: str, key: str) -> str | None:
    """The detail URL path of an item, or None if its type has no detail endpoint.

    Keys keep ``:`` and ``+`` literal (a ``+`` in a path is a plus, and Django matches
    the decoded path); everything else that is not unreserved is percent-encoded, so a
    key can never add a path segment or a query.
    """
    segment = detail_segment(content_type)
    if segment is None:
        return None
    return (f"/enterprise/v2/enterprise-catalogs/{_seg(catalog_uuid)}/{segment}/"
            f"{_seg(key, safe=':+')}")


def learners_path(enterprise_uuid: str) -> str:
    """An enterprise's learner summary (v3)."""
    return f"/enterprise/v3/enterprise-customer/{_seg(enterprise_uuid)}/learner-summary"


def host_of(url: str) -> str:
    """``host[:port]`` of a URL, as errors name it."""
    return urlsplit(url).netloc
