"""What an answer means: a decoded :class:`~harvester.models.Response`, a token
:class:`~harvester.auth.Grant`, or the :mod:`harvester.errors` exception it amounts to.

Pure: status, headers and body in, a value or an error out. No I/O, no aiohttp, and no
throttling: a 429 becomes :class:`~harvester.errors.RateLimited` carrying the advertised
wait (clamped by the policy for API requests); pausing the gate is the caller's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson
from yarl import URL

from harvester.auth import Grant, parse_grant
from harvester.client.bodies import excerpt, markup, storable, storable_headers
from harvester.client.paths import ThrottleClass
from harvester.errors import (
    ApiError,
    AuthError,
    Forbidden,
    GatewayError,
    InvalidPage,
    NotFound,
    PayloadError,
    RateLimited,
    ServerError,
    Unauthorized,
    UnexpectedStatus,
    UnexpectedXML,
)
from harvester.models import Response
from harvester.policy import RetryPolicy, advertised_wait

#: The refusals below 500 that have their own class (a 404 may be DRF's "Invalid page.").
_REFUSALS: Final[Mapping[int, type[ApiError]]] = {
    400: GatewayError, 401: Unauthorized, 403: Forbidden, 404: NotFound,
}


def json_body(where: str, status: int, content_type: str, raw: bytes,
              kw: dict[str, Any]) -> Any:
    """The decoded JSON of a 2xx answer; markup or broken JSON is a (retried) bad body."""
    found = markup(content_type, raw)
    if found is not None:
        # A gateway's maintenance page is transient: retried like a bad body.
        raise UnexpectedXML(f"{where}: the server answered {found} although the "
                            "request sent Accept: application/json", **kw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise PayloadError(f"{where}: invalid JSON in a {status} answer "
                           f"({len(raw)} bytes)", **kw) from None


def _throttle_text(raw: bytes, *, private: bool) -> str:
    """The part of a 429 body searched for DRF's "Expected available in N seconds"."""
    return excerpt(raw, private=False) if private else raw.decode("utf-8", "replace")[:500]


def api_answer(endpoint: ThrottleClass, url: str, status: int, headers: Mapping[str, str],
               raw: bytes, policy: RetryPolicy) -> Response:
    """A 2xx or 304 answer as a :class:`Response`; any other status raises its error."""
    where = f"{endpoint} {URL(url, encoded=True).path}"
    kw: dict[str, Any] = {"status": status, "endpoint": str(endpoint), "url": url}
    if 200 <= status < 300:
        body = json_body(where, status, headers.get("Content-Type", ""), raw, kw)
        return Response(status, storable(body, where, kw), *storable_headers(headers))
    if status == 304:
        return Response(status, None, *storable_headers(headers))
    raise _refusal(endpoint, status, headers, raw, where, kw, policy)


def _refusal(endpoint: ThrottleClass, status: int, headers: Mapping[str, str], raw: bytes,
             where: str, kw: dict[str, Any], policy: RetryPolicy) -> ApiError:
    """The error an API answer other than 2xx/304 amounts to."""
    private = endpoint is ThrottleClass.LEARNERS
    detail = excerpt(raw, private=private)
    kw["detail"] = detail
    msg = f"{where}: HTTP {status}" + (f" {detail!r}" if detail else "")
    if status == 429:
        wait = advertised_wait(headers.get("Retry-After"), _throttle_text(raw, private=private))
        return RateLimited(msg, retry_after=None if wait is None else policy.clamp_wait(wait),
                           **kw)
    if status == 404 and detail == "Invalid page.":
        return InvalidPage(msg, **kw)
    if status in _REFUSALS:
        return _REFUSALS[status](msg, **kw)
    return (ServerError if status >= 500 else UnexpectedStatus)(msg, **kw)


def token_answer(status: int, headers: Mapping[str, str], raw: bytes, token_url: str
                 ) -> Grant:
    """The grant in a token endpoint's answer, or the error it amounts to.

    Refused credentials are an :class:`AuthError` (not retried); a 429 carries the
    advertised wait unclamped; 5xx, markup and broken JSON are retried with the API
    request that needed the token.
    """
    if status in (400, 401, 403):
        reason = excerpt(raw, private=False) or f"HTTP {status}"
        raise AuthError(f"the token endpoint refused the client credentials "
                        f"({reason}); check EDX_CLIENT_ID / EDX_CLIENT_SECRET")
    kw: dict[str, Any] = {"status": status, "endpoint": "token", "url": token_url}
    if status == 429:
        wait = advertised_wait(headers.get("Retry-After"), _throttle_text(raw, private=False))
        raise RateLimited("token: HTTP 429", retry_after=wait, **kw)
    if status >= 500:
        raise ServerError(f"token: HTTP {status}", **kw)
    if status != 200:
        raise AuthError(f"the token endpoint answered HTTP {status}")
    return parse_grant(json_body("token", status, headers.get("Content-Type", ""), raw, kw))
