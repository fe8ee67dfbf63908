"""The API client: authenticated, throttled, retrying GETs against the edX Enterprise API.

One :class:`ApiClient` per run owns the ``aiohttp.ClientSession`` (opened in
``__aenter__``, closed in ``__aexit__``), the token manager and one gate per endpoint
class. Each call goes: class gate (rate + 429 pause) -> concurrency cap -> a fresh token
-> send (:mod:`~harvester.client.translate` names what goes wrong on the wire) -> the
answer as a value or an ``errors.py`` exception (:mod:`~harvester.client.answers`).
Retries happen in one loop (:class:`~harvester.client.retries.Retries`, on the injected
clock) with :class:`~harvester.policy.RetryPolicy` deciding; the token fetch is one
attempt inside the API attempt that needed it, never a loop of its own. A 401 gets one
token refresh and one replay.

Every HTTP exchange has a total deadline (``api.request_timeout``) and every request a
life of at most ``retry.max_time``, the attempt in flight included. Bodies are read up to
``api.max_response_bytes`` counted after decompression, never more. A host that has never
answered gets a short retry budget, then one :class:`~harvester.errors.Unreachable` line.
It must not paginate, choose catalogs or write files.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar
from urllib.parse import urlencode

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from harvester import __version__
from harvester.auth import Grant, TokenManager
from harvester.client.answers import api_answer, token_answer
from harvester.client.bodies import read_capped
from harvester.client.paths import ThrottleClass, host_of
from harvester.client.retries import Retries, Story
from harvester.client.translate import translated
from harvester.config import Settings
from harvester.errors import OutOfTime, PayloadError, RateLimited, ResponseTooLarge, Unauthorized
from harvester.models import Page, Response
from harvester.obs import Stats, event
from harvester.paginate import PageRequest, parse_page
from harvester.policy import Clock, Cutoff, OpenGate, RateGate, RetryPolicy, Sleep
from harvester.redact import REDACTOR

T = TypeVar("T")

USER_AGENT: Final = f"edx-harvester/{__version__} (+aiohttp)"
#: A token answer is ~1 KB; anything near this is not a token.
TOKEN_MAX_BYTES: Final = 64 * 1024


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
        self._rand = rand
        self._base = settings.api.base
        self._session: aiohttp.ClientSession | None = None
        self.retries = Retries(self.policy, self._base, stats=self.stats, clock=clock,
                               sleep=sleep, rand=rand)
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
        story = Story()

        async def attempt() -> T:
            return parse(await self._attempt(endpoint, url, etag, story, cutoff))

        return await self.retries.run(attempt, str(endpoint), path, story, cutoff)

    async def _attempt(self, endpoint: ThrottleClass, url: str, etag: str | None,
                       story: Story, cutoff: Cutoff | None = None) -> Response:
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
        with translated(endpoint, shown, timer, limit):
            async with timer, self._session.request(method, url, allow_redirects=False,
                                                    **kw) as resp:
                status, headers = resp.status, resp.headers
                raw = await read_capped(resp, cap)
        self.retries.answered.add(host_of(shown))
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
        try:
            return api_answer(endpoint, url, status, resp_headers, raw, self.policy)
        except RateLimited as exc:
            # Every worker of the class waits, not only this one: the budget is shared.
            wait = exc.retry_after
            self.gates[endpoint].pause(
                wait if wait is not None else self.policy.backoff(1, self._rand()))
            event("http.throttled", endpoint=str(endpoint), wait=wait)
            raise

    async def _fetch_token(self) -> Grant:
        """POST the client-credentials form, once: a failure propagates to the retry loop
        of the API request that needed the token, the only loop that retries."""
        api = self.settings.api
        form = {"grant_type": "client_credentials", "client_id": api.client_id,
                "client_secret": api.client_secret.reveal(), "token_type": "jwt"}
        await self.gates[ThrottleClass.TOKEN].acquire()
        status, headers, raw = await self._exchange("token", "POST", URL(api.token_url),
                                                    TOKEN_MAX_BYTES, data=form)
        try:
            grant = token_answer(status, headers, raw, api.token_url)
        except RateLimited as exc:
            if exc.retry_after is not None:
                self.gates[ThrottleClass.TOKEN].pause(self.policy.clamp_wait(exc.retry_after))
            raise
        REDACTOR.add(grant.access_token)
        self.stats.tokens += 1
        event("auth.token", expires_in=grant.expires_in)
        return grant
