"""The HTTP client: the only module that touches aiohttp.

One :class:`ApiClient` per run owns the ``aiohttp.ClientSession`` (opened in
``__aenter__``, closed in ``__aexit__``), the token manager and one gate per endpoint
class. Each call goes: class gate (rate + 429 pause) -> concurrency cap -> a fresh token
-> send -> translate the outcome into a value or an ``errors.py`` exception. aiohttp and
timeout exceptions are translated in exactly one place (:func:`_translate`). Retries are
driven by ``backoff`` with :class:`~harvester.policy.RetryPolicy` deciding; a 401 gets one
token refresh and one replay.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, Final, TypeVar
from urllib.parse import quote, urlencode

import aiohttp
import backoff
import orjson
from yarl import URL

from harvester import __version__
from harvester.auth import Grant, TokenManager, parse_grant
from harvester.config import Settings
from harvester.errors import (
    ApiError,
    AuthError,
    ConnectError,
    ConnectionLost,
    Forbidden,
    GatewayError,
    HarvestError,
    InvalidPage,
    NotFound,
    PayloadError,
    RateLimited,
    ReadTimeout,
    RequestError,
    ServerError,
    Unauthorized,
    UnexpectedStatus,
    UnexpectedXML,
)
from harvester.models import Page, Response, detail_segment
from harvester.obs import REDACTOR, Stats, event
from harvester.paginate import PageRequest, parse_page
from harvester.policy import Clock, OpenGate, RateGate, RetryPolicy, Sleep, advertised_wait

T = TypeVar("T")

USER_AGENT: Final = f"edx-harvester/{__version__} (+aiohttp)"


class Endpoint(StrEnum):
    """Endpoint classes, as the real service counts them for throttling."""

    TOKEN = "token"
    LMS = "lms"  #: v1 catalog list + course / course run / program details: one budget
    CONTENT = "content"  #: v2 catalog content pages: not throttled, concurrency-bounded
    LEARNERS = "learners"  #: v3 learner-summary: its own budget


# --- paths: pure, percent-encoded ---------------------------------------------------------

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


def _excerpt(raw: bytes, *, private: bool) -> str:
    """A short, safe description of an error body: DRF's ``detail``/``message`` only."""
    if private or not raw:
        return ""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "non-JSON body"
    if isinstance(body, dict):
        for k in ("detail", "message", "error"):
            v = body.get(k)
            if isinstance(v, str):
                return REDACTOR.scrub(v)[:200]  # before cutting: a cut token looks like none
    return ""


def _looks_xml(content_type: str, raw: bytes) -> bool:
    return "xml" in content_type.lower() or raw.lstrip()[:1] == b"<"


@contextmanager
def _translate(endpoint: str, url: str) -> Iterator[None]:
    """The one boundary where aiohttp/timeout errors become harvester errors."""
    try:
        yield
    except HarvestError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise ReadTimeout(f"{endpoint}: no answer within the read timeout", endpoint=endpoint,
                          url=url) from exc
    except aiohttp.ClientConnectorError as exc:
        raise ConnectError(f"{endpoint}: cannot connect to {exc.host}:{exc.port}",
                           endpoint=endpoint, url=url) from exc
    except aiohttp.ClientPayloadError as exc:
        raise ConnectionLost(f"{endpoint}: response body cut short", endpoint=endpoint,
                             url=url) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise ConnectionLost(f"{endpoint}: connection lost ({type(exc).__name__})",
                             endpoint=endpoint, url=url) from exc
    except aiohttp.ClientResponseError as exc:  # malformed HTTP from the server
        raise ConnectionLost(f"{endpoint}: malformed HTTP response ({exc.message})",
                             endpoint=endpoint, url=url) from exc
    except aiohttp.ClientError as exc:
        raise RequestError(f"{endpoint}: request failed ({type(exc).__name__})",
                           endpoint=endpoint, url=url) from exc


class ApiClient:
    """Authenticated, throttled, retrying GETs against the edX Enterprise API."""

    def __init__(
        self,
        settings: Settings,
        *,
        stats: Stats | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.stats = stats or Stats()
        self.policy = RetryPolicy.from_config(settings.retry)
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._base = settings.api.base
        self._session: aiohttp.ClientSession | None = None
        self._inflight = asyncio.Semaphore(settings.limits.concurrency)
        self.gates: dict[Endpoint, RateGate | OpenGate] = {
            Endpoint.TOKEN: OpenGate(clock=clock, sleep=sleep),
            Endpoint.LMS: RateGate("lms", settings.limits.lms, clock=clock, sleep=sleep),
            Endpoint.CONTENT: OpenGate(clock=clock, sleep=sleep),
            Endpoint.LEARNERS: RateGate("learners", settings.limits.learners, clock=clock,
                                        sleep=sleep),
        }
        self.tokens = TokenManager(self._fetch_token, clock=clock)
        if settings.api.client_secret:
            REDACTOR.add(settings.api.client_secret.reveal())

    def __repr__(self) -> str:
        return f"ApiClient(base={self._base!r}, open={self._session is not None})"

    async def __aenter__(self) -> ApiClient:
        if self._session is not None:
            raise RuntimeError("ApiClient is already open")
        api = self.settings.api
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=api.connect_timeout,
                                          sock_read=api.read_timeout),
            connector=aiohttp.TCPConnector(limit=self.settings.limits.concurrency + 4,
                                           ttl_dns_cache=300),
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            raise_for_status=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- public calls --------------------------------------------------------------------

    async def get_json(
        self,
        endpoint: Endpoint,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        etag: str | None = None,
    ) -> Response:
        """GET ``path`` and decode its JSON, with throttling, auth and retries."""
        return await self._with_retries(endpoint, path, query, etag, lambda r: r)

    async def get_page(self, endpoint: Endpoint, path: str, request: PageRequest) -> Page:
        """GET one page of a DRF list; a malformed page is retried like a bad body."""
        def parse(resp: Response) -> Page:
            try:
                return parse_page(request.page, resp.body)
            except PayloadError as exc:
                raise PayloadError(f"{endpoint}: {exc}", status=200, endpoint=endpoint,
                                   url=path) from None
        return await self._with_retries(endpoint, path, request.query(), None, parse)

    # --- machinery -----------------------------------------------------------------------

    async def _with_retries(
        self,
        endpoint: Endpoint,
        path: str,
        query: Mapping[str, str] | None,
        etag: str | None,
        parse: Callable[[Response], T],
    ) -> T:
        url = self._base + path + ("?" + urlencode(query) if query else "")

        async def attempt() -> T:
            return parse(await self._attempt(endpoint, url, etag))

        return await self._retrying(attempt, str(endpoint), path)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], endpoint: str, path: str
                        ) -> T:
        """Run ``attempt`` under ``backoff``, with the retry policy deciding everything."""
        # Fast path: almost every call succeeds at once, and building the backoff wrapper
        # (decorator, functools.wraps, coroutine checks) costs more than the request's own
        # bookkeeping. Only a retryable failure pays for it, and is replayed through it so
        # waits, history, counters and max_tries are exactly what they were.
        try:
            return await attempt()
        except (RequestError, ApiError) as exc:
            if not self.policy.should_retry(exc, ()):
                raise
            replay: list[BaseException] = [exc]

        async def attempt_after_first() -> T:
            if replay:
                raise replay.pop()
            return await attempt()

        history: list[str] = []

        def giveup(exc: Exception) -> bool:
            return not self.policy.should_retry(exc, tuple(history))

        def on_backoff(details: Any) -> None:
            exc = details.get("exception")
            cause = (self.policy.cause(exc) if isinstance(exc, BaseException) else None) or "?"
            history.append(cause)
            self.stats.retries[cause] += 1
            event("http.retry", endpoint=endpoint, path=path, attempt=details.get("tries"),
                  cause=cause, error=type(exc).__name__,
                  wait=round(float(details.get("wait") or 0.0), 3))

        retrying = backoff.on_exception(
            self.policy.wait_gen(self._rand),
            (RequestError, ApiError),
            max_tries=self.policy.max_tries,
            max_time=self.policy.max_time,
            giveup=giveup,
            on_backoff=on_backoff,
            jitter=None,
            raise_on_giveup=True,
        )(attempt_after_first)
        result: T = await retrying()
        return result

    async def _attempt(self, endpoint: Endpoint, url: str, etag: str | None) -> Response:
        gate = self.gates[endpoint]
        ticket = await gate.acquire()
        async with self._inflight:
            token = await self.tokens.token()
            ticket.stamp()
            refused: RateLimited | None = None
            try:
                try:
                    return await self._send(endpoint, url, token, etag)
                except Unauthorized:
                    # The token may have expired in flight or been revoked: refresh once and
                    # replay once. A 401 is not counted by the server's throttle (DRF
                    # authenticates first), so the replay reuses this slot.
                    token = await self.tokens.rejected(token)
                    ticket.stamp()
                    return await self._send(endpoint, url, token, etag)
            except RateLimited as exc:
                refused = exc
                raise
            finally:
                ticket.stamp()  # the server counted it before answering: never earlier
                if refused is not None:
                    gate.refused(ticket, refused.retry_after)  # learn the server's budget
                else:
                    ticket.counted = True

    async def _send(self, endpoint: Endpoint, url: str, token: str, etag: str | None
                    ) -> Response:
        assert self._session is not None, "use `async with ApiClient(...)`"
        headers = {"Authorization": f"JWT {token}"}
        if etag:
            headers["If-None-Match"] = etag
        with _translate(str(endpoint), url):
            async with self._session.get(URL(url, encoded=True), headers=headers,
                                         allow_redirects=False) as resp:
                raw = await resp.read()
                status = resp.status
                ctype = resp.headers.get("Content-Type", "")
                retry_after = resp.headers.get("Retry-After")
                resp_etag = resp.headers.get("ETag")
                last_mod = resp.headers.get("Last-Modified")
        self.stats.count_request(str(endpoint), status, len(raw))
        return self._interpret(endpoint, url, status, ctype, raw, retry_after, resp_etag,
                               last_mod)

    def _interpret(self, endpoint: Endpoint, url: str, status: int, ctype: str, raw: bytes,
                   retry_after: str | None, etag: str | None, last_mod: str | None
                   ) -> Response:
        private = endpoint is Endpoint.LEARNERS
        where = f"{endpoint} {URL(url, encoded=True).path}"
        kw: dict[str, Any] = {"status": status, "endpoint": str(endpoint), "url": url}
        if 200 <= status < 300:
            if _looks_xml(ctype, raw):
                raise UnexpectedXML(f"{where}: the server answered XML although the request "
                                    "sent Accept: application/json", **kw)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise PayloadError(f"{where}: invalid JSON in a {status} answer "
                                   f"({len(raw)} bytes)", **kw) from None
            return Response(status, body, etag, last_mod)
        if status == 304:
            return Response(status, None, etag, last_mod)
        detail = _excerpt(raw, private=private)
        kw["detail"] = detail
        msg = f"{where}: HTTP {status}" + (f" {detail!r}" if detail else "")
        if status == 429:
            body_text = raw.decode("utf-8", "replace")[:500] if not private else \
                _excerpt(raw, private=False)
            wait = advertised_wait(retry_after, body_text)
            clamped = self.policy.clamp_wait(wait) if wait is not None else None
            self.gates[endpoint].pause(
                clamped if clamped is not None else self.policy.backoff(1, self._rand()))
            event("http.throttled", endpoint=str(endpoint), wait=clamped)
            raise RateLimited(msg, retry_after=clamped, **kw)
        if status == 401:
            raise Unauthorized(msg, **kw)
        if status == 403:
            raise Forbidden(msg, **kw)
        if status == 404:
            if detail == "Invalid page.":
                raise InvalidPage(msg, **kw)
            raise NotFound(msg, **kw)
        if status == 400:
            raise GatewayError(msg, **kw)
        if status >= 500:
            raise ServerError(msg, **kw)
        raise UnexpectedStatus(msg, **kw)

    async def _fetch_token(self) -> Grant:
        """POST the client-credentials form; retried like any request, except refusals."""
        api = self.settings.api
        form = {"grant_type": "client_credentials", "client_id": api.client_id,
                "client_secret": api.client_secret.reveal(), "token_type": "jwt"}
        async def attempt() -> Grant:
            assert self._session is not None
            await self.gates[Endpoint.TOKEN].acquire()
            with _translate("token", api.token_url):
                async with self._session.post(api.token_url, data=form,
                                              allow_redirects=False) as resp:
                    raw = await resp.read()
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
            self.stats.count_request("token", status, len(raw))
            if status in (400, 401, 403):
                reason = _excerpt(raw, private=False) or f"HTTP {status}"
                raise AuthError(f"the token endpoint refused the client credentials "
                                f"({reason}); check EDX_CLIENT_ID / EDX_CLIENT_SECRET")
            if status == 429:
                wait = advertised_wait(retry_after, raw.decode("utf-8", "replace")[:500])
                if wait is not None:
                    self.gates[Endpoint.TOKEN].pause(self.policy.clamp_wait(wait))
                raise RateLimited("token: HTTP 429", retry_after=wait, status=429,
                                  endpoint="token", url=api.token_url)
            if status >= 500:
                raise ServerError(f"token: HTTP {status}", status=status, endpoint="token",
                                  url=api.token_url)
            if status != 200:
                raise AuthError(f"the token endpoint answered HTTP {status}")
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise PayloadError("token: invalid JSON", status=200, endpoint="token",
                                   url=api.token_url) from None
            grant = parse_grant(body)
            REDACTOR.add(grant.access_token)
            self.stats.tokens += 1
            event("auth.token", expires_in=grant.expires_in)
            return grant

        return await self._retrying(attempt, "token", "")
