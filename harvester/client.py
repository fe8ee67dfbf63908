"""The HTTP client: the only module that touches aiohttp.

One :class:`ApiClient` per run owns the ``aiohttp.ClientSession`` (opened in
``__aenter__``, closed in ``__aexit__``), the token manager and one gate per endpoint
class. Each call goes: class gate (rate + 429 pause) -> concurrency cap -> a fresh token
-> send -> translate the outcome into a value or an ``errors.py`` exception. aiohttp and
timeout exceptions are translated in exactly one place (:func:`_translate`). Retries happen
in one loop (:func:`~harvester.policy.call_with_retries`, on the injected clock) with
:class:`~harvester.policy.RetryPolicy` deciding; the token fetch is one attempt inside the
API attempt that needed it, never a loop of its own. A 401 gets one token refresh and one
replay.

Every HTTP exchange has a total deadline (``api.request_timeout``) and every request a
life of at most ``retry.max_time``, the attempt in flight included. Bodies are read up to
``api.max_response_bytes`` counted after decompression, never more. A host that has never
answered gets a short retry budget, then one :class:`~harvester.errors.Unreachable` line.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from yarl import URL

from harvester import __version__
from harvester.auth import Grant, TokenManager, parse_grant
from harvester.config import Settings
from harvester.errors import (
    REASONS,
    ApiError,
    AuthError,
    ConnectError,
    ConnectionLost,
    Forbidden,
    GatewayError,
    HarvestError,
    InvalidPage,
    NestedTooDeep,
    NotFound,
    OutOfTime,
    PayloadError,
    RateLimited,
    ReadTimeout,
    RequestError,
    ResponseTooLarge,
    ServerError,
    Unauthorized,
    UnexpectedStatus,
    UnexpectedXML,
    Unreachable,
)
from harvester.models import Page, Response, detail_segment
from harvester.obs import REDACTOR, Stats, event
from harvester.paginate import PageRequest, parse_page
from harvester.policy import (
    Clock,
    Cutoff,
    OpenGate,
    RateGate,
    RetryPolicy,
    Sleep,
    advertised_wait,
    call_with_retries,
)

T = TypeVar("T")

USER_AGENT: Final = f"edx-harvester/{__version__} (+aiohttp)"
#: A token answer is ~1 KB; anything near this is not a token.
TOKEN_MAX_BYTES: Final = 64 * 1024
#: How deep a body may nest: orjson, which writes every output line, stops at 254 levels
#: (it parses up to 1024), and our own lines wrap a record in a few levels more.
MAX_JSON_DEPTH: Final = 200
_ENCODER_DEPTH: Final = 254
_MARKUP_RE: Final = re.compile(rb"\s*<")
_HTML_RE: Final = re.compile(rb"\s*<(?:!doctype\s+html|html|head|body)\b", re.I)


class ThrottleClass(StrEnum):
    """The throttle classes of requests, as the real service counts them: one budget each."""

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


def _markup(content_type: str, raw: bytes) -> str | None:
    """``"HTML"`` or ``"XML"`` when a body is markup rather than JSON, else None."""
    ctype = content_type.lower()
    if "html" in ctype or _HTML_RE.match(raw):
        return "HTML"
    if "xml" in ctype or _MARKUP_RE.match(raw):
        return "XML"
    return None


def _storable(body: Any, where: str, kw: dict[str, Any]) -> Any:
    """``body`` as the harvester may write it: re-encodable, and without our secrets.

    Encoded once inside enough padding that whatever passes fits in every line we write;
    the same canonical bytes are searched for the client secret and the tokens issued to
    us (a server that echoes them in data), and only a body holding one is rewritten.
    """
    padded = body
    for _ in range(_ENCODER_DEPTH - MAX_JSON_DEPTH):
        padded = [padded]
    try:
        canonical = orjson.dumps(padded)
    except orjson.JSONEncodeError:
        raise NestedTooDeep(f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep "
                            "cannot be stored", **kw) from None
    return REDACTOR.scrub_known(body) if REDACTOR.mentions(canonical) else body


def _headers(etag: str | None, last_mod: str | None) -> tuple[str | None, str | None]:
    """ETag and Last-Modified as we store them: without our secrets."""
    return (None if etag is None else REDACTOR.scrub_known(etag),
            None if last_mod is None else REDACTOR.scrub_known(last_mod))


def host_of(url: str) -> str:
    """``host[:port]`` of a URL, as errors name it."""
    return urlsplit(url).netloc


@contextmanager
def _translate(endpoint: str, url: str, deadline: asyncio.Timeout | None = None,
               limit: float = 0.0) -> Iterator[None]:
    """The one boundary where aiohttp/timeout errors become harvester errors.

    ``deadline`` is the exchange's own total timer (``limit`` seconds): when it is what
    fired, the error says so, since no read ever stalled long enough to trip a read timeout.
    """
    kw: dict[str, Any] = {"endpoint": endpoint, "url": url}
    try:
        yield
    except HarvestError:
        raise
    except aiohttp.ConnectionTimeoutError as exc:
        raise ConnectError(f"{endpoint}: timed out connecting to {host_of(url)} "
                           "(api.connect_timeout)", reason="timeout", **kw) from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        if deadline is not None and deadline.expired():
            raise ReadTimeout(f"{endpoint}: timed out: no complete answer within {limit:g} s "
                              "(api.request_timeout)", reason="timeout", **kw) from exc
        raise ReadTimeout(f"{endpoint}: timed out: no data within the read timeout "
                          "(api.read_timeout)", reason="timeout", **kw) from exc
    except aiohttp.ClientSSLError as exc:
        raise ConnectError(f"{endpoint}: TLS handshake with {host_of(url)} failed "
                           f"({_ssl_reason(exc)})", reason="tls", **kw) from exc
    except aiohttp.ClientConnectorDNSError as exc:
        raise ConnectError(f"{endpoint}: DNS lookup of {exc.host} failed", reason="dns",
                           **kw) from exc
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, ConnectionRefusedError):
            raise ConnectError(f"{endpoint}: connection refused by {exc.host}:{exc.port}",
                               reason="refused", **kw) from exc
        raise ConnectError(f"{endpoint}: cannot connect to {exc.host}:{exc.port} "
                           f"({exc.os_error.strerror or type(exc.os_error).__name__})",
                           reason="connect", **kw) from exc
    except aiohttp.ClientPayloadError as exc:
        raise ConnectionLost(f"{endpoint}: response body cut short", reason="truncated",
                             **kw) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise ConnectionLost(f"{endpoint}: connection lost ({type(exc).__name__})",
                             reason="reset", **kw) from exc
    except aiohttp.ClientResponseError as exc:  # malformed HTTP from the server
        raise ConnectionLost(f"{endpoint}: malformed HTTP response ({exc.message})",
                             reason="reset", **kw) from exc
    except aiohttp.ClientError as exc:
        raise RequestError(f"{endpoint}: request failed ({type(exc).__name__})", **kw) from exc


def _ssl_reason(exc: aiohttp.ClientSSLError) -> str:
    """The OpenSSL reason (``wrong version number``: the port speaks plain HTTP)."""
    err = exc.os_error
    reason = getattr(err, "reason", None) or getattr(err, "strerror", None)
    return str(reason or type(err).__name__).replace("_", " ").lower()


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """The body, decompressed, or None as soon as it exceeds ``cap`` bytes.

    aiohttp inflates incrementally as we read, so stopping here bounds memory at ``cap``
    however far a gzip body would inflate. A declared length over the cap (uncompressed)
    is refused before reading anything.
    """
    declared = resp.content_length
    if declared is not None and declared > cap and not resp.headers.get("Content-Encoding"):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(slots=True)
class _Story:
    """What one request's attempts went through, for the error that ends it."""

    gated: bool = False  #: the attempt in flight is waiting at its rate gate
    failed: RequestError | None = None  #: the last attempt that got no HTTP answer
    #: the clock time by which the try in flight must pass its gate (its retry budget's
    #: end), or None when only the run's cutoff bounds it
    admit_by: float | None = None
    spent: bool = False  #: the gate could not admit the try within ``admit_by``


class ClockTimeout:
    """``asyncio.timeout`` at a deadline on the injected clock, not the loop's.

    It wakes when the loop's time says the deadline may have come and fires only if the
    injected clock agrees; with the real clock that is one wake, with a test's fake clock
    it fires only once the fake time has passed the deadline, so no test waits on, or
    races against, real time.
    """

    def __init__(self, deadline: float, clock: Clock) -> None:
        self._deadline, self._clock = deadline, clock
        self._timer = asyncio.timeout(None)
        self._handle: asyncio.TimerHandle | None = None

    def expired(self) -> bool:
        """Whether this timer fired (as :meth:`asyncio.Timeout.expired`)."""
        return self._timer.expired()

    def _check(self) -> None:
        left = self._deadline - self._clock()
        loop = asyncio.get_running_loop()
        if left <= 0:
            self._timer.reschedule(loop.time())
        else:
            self._handle = loop.call_later(left, self._check)

    async def __aenter__(self) -> ClockTimeout:
        await self._timer.__aenter__()
        self._check()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.cancel()
        await self._timer.__aexit__(*exc)


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
        self._answered: set[str] = set()  # hosts that sent at least one whole answer
        self._inflight = asyncio.Semaphore(settings.limits.concurrency)
        self.gates: dict[ThrottleClass, RateGate | OpenGate] = {
            ThrottleClass.TOKEN: OpenGate(clock=clock, sleep=sleep),
            ThrottleClass.LMS: RateGate("lms", settings.limits.lms, clock=clock, sleep=sleep),
            ThrottleClass.CONTENT: OpenGate(clock=clock, sleep=sleep),
            ThrottleClass.LEARNERS: RateGate("learners", settings.limits.learners, clock=clock,
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
            headers={"Accept": "application/json", "User-Agent": USER_AGENT})  # no raise_for_status
        # aiohttp's own re-send on a reset keep-alive connection skips our gate and counter
        self._session._retry_connection = False  # no public switch; tests/faults/test_resets
        return self

    async def __aexit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- public calls --------------------------------------------------------------------

    async def get_json(
        self,
        endpoint: ThrottleClass,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        etag: str | None = None,
        cutoff: Cutoff | None = None,
    ) -> Response:
        """GET ``path`` and decode its JSON, with throttling, auth and retries.

        ``cutoff``: raise :class:`OutOfTime` rather than start the request too late, and
        give up retrying (the last error) rather than wait past its ``end_by``."""
        return await self._with_retries(endpoint, path, query, etag, lambda r: r, cutoff)

    async def get_page(self, endpoint: ThrottleClass, path: str, request: PageRequest) -> Page:
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
        endpoint: ThrottleClass,
        path: str,
        query: Mapping[str, str] | None,
        etag: str | None,
        parse: Callable[[Response], T],
        cutoff: Cutoff | None = None,
    ) -> T:
        url = self._base + path + ("?" + urlencode(query) if query else "")
        story = _Story()

        async def attempt() -> T:
            return parse(await self._attempt(endpoint, url, etag, story, cutoff))

        return await self._retrying(attempt, str(endpoint), path, story, cutoff)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], endpoint: str, path: str,
                        story: _Story, cutoff: Cutoff | None = None) -> T:
        """Run ``attempt`` in the one retry loop, each try bounded by what is left of
        ``retry.max_time`` (and by ``cutoff``); a host that never answered ends as
        :class:`Unreachable`."""
        policy = self.policy
        start = self._clock()
        cut: list[BaseException] = []  # the error whose retry the cutoff did not allow

        def budget(exc: BaseException) -> float:
            if isinstance(exc, ReadTimeout) and exc.reason == "gated":
                return 0.0  # the gate could not admit it within the budget: it is spent
            mine = self._budget(exc)
            if cutoff is None or cutoff.end_by - start >= mine:
                return mine
            cut[:] = [exc]
            return cutoff.end_by - start

        async def bounded(deadline: float) -> T:
            limit, name = policy.max_time, "retry.max_time"
            if cutoff is not None and cutoff.end_by < deadline:
                deadline, limit, name = cutoff.end_by, cutoff.end_by - start, "the deadline"
            if not self._answered and policy.first_contact_time < limit:
                # Nothing has answered yet: even the attempt in flight gets only the short
                # budget, so a silent host fails within it, not after one more read timeout.
                deadline -= limit - policy.first_contact_time
                limit, name = policy.first_contact_time, "retry.first_contact_time"
            # The gate refuses at once a try it could not admit in time (on the injected
            # clock); a try admitted in time is cut in flight by the same clock.
            story.admit_by, story.spent = (None if name == "the deadline" else deadline), False
            timer = ClockTimeout(deadline, self._clock)
            try:
                async with timer:
                    return await attempt()
            except (TimeoutError, OutOfTime) as exc:
                if isinstance(exc, OutOfTime) and not story.spent:
                    raise
                if isinstance(exc, TimeoutError) and not timer.expired():
                    raise
                if name == "the deadline":
                    raise OutOfTime(f"{endpoint} {path}: cut at the deadline") from None
                waiting = f" waiting for the {endpoint} rate limit" if story.gated else ""
                raise ReadTimeout(f"{endpoint} {path}: the request ran past {limit:g} s "
                                  f"({name}){waiting}", endpoint=endpoint, url=path,
                                  reason="gated" if story.gated else "timeout") from None

        def on_retry(exc: BaseException, cause: str, n: int, wait: float) -> None:
            self.stats.retries[cause] += 1
            if isinstance(exc, RequestError):
                story.failed = exc
            event("http.retry", endpoint=endpoint, path=path, attempt=n, cause=cause,
                  error=type(exc).__name__, wait=round(wait, 3))

        try:
            return await call_with_retries(bounded, self.policy, clock=self._clock,
                                           sleep=self._sleep, rand=self._rand,
                                           budget=budget, on_retry=on_retry)
        except (RequestError, ApiError) as exc:
            if cut and cut[0] is exc:
                raise OutOfTime(f"{endpoint} {path}: no time left to retry after "
                                f"{type(exc).__name__}") from exc
            if isinstance(exc, ApiError):
                raise
            host = self._host(exc)
            if host in self._answered:
                raise
            raise self._unreachable(host, exc, story) from exc

    @staticmethod
    def _unreachable(host: str, exc: RequestError, story: _Story) -> Unreachable:
        """The one-line error for a host that never answered, naming why the attempts
        failed: when the budget ran out at the rate gate, that is the last attempt's cause,
        not a timeout."""
        cause, said = exc, str(exc)
        if exc.reason == "gated" and story.failed is not None:
            cause = story.failed
            said = f"{cause}; then {str(exc).split(': ', 1)[-1]}"
        return Unreachable(f"cannot reach {host}: {REASONS[cause.reason]} ({said}); check the "
                           "API base URL (EDX_API_BASE, EDX_TOKEN_URL) and the network",
                           host=host, reason=cause.reason)

    def _host(self, exc: BaseException) -> str:
        """The host an error came from (errors without a full URL are the API base's)."""
        url = getattr(exc, "url", "")
        return host_of(url if "://" in url else self._base)

    def _budget(self, exc: BaseException) -> float:
        return self.policy.budget(exc, contacted=self._host(exc) in self._answered)

    async def _attempt(self, endpoint: ThrottleClass, url: str, etag: str | None,
                       story: _Story, cutoff: Cutoff | None = None) -> Response:
        gate = self.gates[endpoint]
        story.gated = True
        run_by = cutoff.admit_by if cutoff is not None else None
        own_by = story.admit_by
        binding = own_by is not None and (run_by is None or own_by < run_by)
        try:
            ticket = await gate.acquire(own_by if binding else run_by)
        except OutOfTime:
            story.spent = binding
            raise
        ticket.held = True  # until answered: see Ticket.held
        story.gated = False
        try:
            async with self._inflight:
                token = await self.tokens.token()
                ticket.stamp()
                sent = self._clock()
                refused: RateLimited | None = None
                try:
                    try:
                        return await self._send(endpoint, url, token, etag)
                    except Unauthorized:
                        # The token may have expired in flight or been revoked: refresh
                        # once and replay once. A 401 is not counted by the server's
                        # throttle (DRF authenticates first), so the replay reuses this slot.
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
                    self.stats.observe(str(endpoint), self._clock() - sent)
        finally:
            ticket.held = False  # answered, failed or cancelled: the stamp decides now

    async def _exchange(self, endpoint: str, method: str, url: URL, cap: int, **kw: Any
                        ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """One HTTP exchange under ``api.request_timeout``, its body read up to ``cap``.

        Returns (status, headers, body); raises :class:`ResponseTooLarge` past the cap.
        """
        assert self._session is not None, "use `async with ApiClient(...)`"
        limit = self.settings.api.request_timeout
        shown = str(url)
        timer = asyncio.timeout(limit)
        with _translate(endpoint, shown, timer, limit):
            async with timer, self._session.request(method, url, allow_redirects=False,
                                                    **kw) as resp:
                status, headers = resp.status, resp.headers
                raw = await _read_capped(resp, cap)
        self._answered.add(host_of(shown))
        self.stats.count_request(endpoint, status, cap if raw is None else len(raw))
        if raw is None:
            name = "api.max_response_bytes" if cap == self.settings.api.max_response_bytes \
                else "the token answer limit"
            raise ResponseTooLarge(f"{endpoint} {url.path}: answer larger than {cap} bytes "
                                   f"after decompression ({name})", status=status,
                                   endpoint=endpoint, url=shown)
        return status, headers, raw

    async def _send(self, endpoint: ThrottleClass, url: str, token: str, etag: str | None
                    ) -> Response:
        headers = {"Authorization": f"JWT {token}"}
        if etag:
            headers["If-None-Match"] = etag
        status, resp_headers, raw = await self._exchange(
            str(endpoint), "GET", URL(url, encoded=True), self.settings.api.max_response_bytes,
            headers=headers)
        return self._interpret(endpoint, url, status, resp_headers.get("Content-Type", ""), raw,
                               resp_headers.get("Retry-After"), resp_headers.get("ETag"),
                               resp_headers.get("Last-Modified"))

    def _interpret(self, endpoint: ThrottleClass, url: str, status: int, ctype: str, raw: bytes,
                   retry_after: str | None, etag: str | None, last_mod: str | None
                   ) -> Response:
        private = endpoint is ThrottleClass.LEARNERS
        where = f"{endpoint} {URL(url, encoded=True).path}"
        kw: dict[str, Any] = {"status": status, "endpoint": str(endpoint), "url": url}
        if 200 <= status < 300:
            markup = _markup(ctype, raw)
            if markup is not None:
                # A gateway's maintenance page is transient: retried like a bad body.
                raise UnexpectedXML(f"{where}: the server answered {markup} although the "
                                    "request sent Accept: application/json", **kw)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise PayloadError(f"{where}: invalid JSON in a {status} answer "
                                   f"({len(raw)} bytes)", **kw) from None
            return Response(status, _storable(body, where, kw), *_headers(etag, last_mod))
        if status == 304:
            return Response(status, None, *_headers(etag, last_mod))
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
        """POST the client-credentials form, once: a failure propagates to the retry loop
        of the API request that needed the token, the only loop that retries."""
        api = self.settings.api
        form = {"grant_type": "client_credentials", "client_id": api.client_id,
                "client_secret": api.client_secret.reveal(), "token_type": "jwt"}
        await self.gates[ThrottleClass.TOKEN].acquire()
        status, headers, raw = await self._exchange("token", "POST", URL(api.token_url),
                                                    TOKEN_MAX_BYTES, data=form)
        if status in (400, 401, 403):
            reason = _excerpt(raw, private=False) or f"HTTP {status}"
            raise AuthError(f"the token endpoint refused the client credentials "
                            f"({reason}); check EDX_CLIENT_ID / EDX_CLIENT_SECRET")
        kw: dict[str, Any] = {"status": status, "endpoint": "token", "url": api.token_url}
        if status == 429:
            wait = advertised_wait(headers.get("Retry-After"),
                                   raw.decode("utf-8", "replace")[:500])
            if wait is not None:
                self.gates[ThrottleClass.TOKEN].pause(self.policy.clamp_wait(wait))
            raise RateLimited("token: HTTP 429", retry_after=wait, **kw)
        if status >= 500:
            raise ServerError(f"token: HTTP {status}", **kw)
        if status != 200:
            raise AuthError(f"the token endpoint answered HTTP {status}")
        markup = _markup(headers.get("Content-Type", ""), raw)
        if markup is not None:  # a maintenance page: retried with the API request
            raise UnexpectedXML(f"token: the server answered {markup} although the request "
                                "sent Accept: application/json", **kw)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            # A cut body: retried with the API request.
            raise PayloadError(f"token: invalid JSON in a {status} answer ({len(raw)} bytes)",
                               **kw) from None
        grant = parse_grant(body)
        REDACTOR.add(grant.access_token)
        self.stats.tokens += 1
        event("auth.token", expires_in=grant.expires_in)
        return grant
