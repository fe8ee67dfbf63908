"""The life of one request: its tries through the one retry loop, each bounded in time.

:func:`~harvester.policy.call_with_retries` is the loop that sleeps and
:class:`~harvester.policy.RetryPolicy` decides; :class:`Retries` bounds each try by what
is left of ``retry.max_time`` (a run's :class:`~harvester.policy.Cutoff` and, for a host
that never answered, ``retry.first_contact_time`` may bound it sooner), on the injected
clock, and names the error that ends a request: :class:`~harvester.errors.OutOfTime` when
the cutoff left no time, :class:`~harvester.errors.Unreachable` for a host that never
answered. It knows no URL layout, reads no body and touches no aiohttp.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeVar

from harvester.client.paths import host_of
from harvester.errors import (
    REASONS,
    ApiError,
    HarvestError,
    OutOfTime,
    ReadTimeout,
    RequestError,
    Unreachable,
)
from harvester.obs import Stats, event
from harvester.policy import Clock, Cutoff, RetryPolicy, Sleep, call_with_retries

T = TypeVar("T")

#: What bounds a try when the run's cutoff comes before the request's own budget.
_CUTOFF: Final = "the deadline"


@dataclass(slots=True)
class Story:
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


@dataclass(slots=True)
class _Request:
    """One request on its way through the loop."""

    endpoint: str
    path: str
    story: Story
    cutoff: Cutoff | None
    start: float  #: the clock time of its first try
    cut: BaseException | None = None  #: the error whose retry the cutoff did not allow


class Retries:
    """Runs a client's requests through the one retry loop; remembers which hosts answered.

    ``answered`` holds the ``host[:port]`` of every host that sent at least one whole
    answer: until the API's host is in it, requests get the short first-contact budget.
    """

    def __init__(self, policy: RetryPolicy, base: str, *, stats: Stats, clock: Clock,
                 sleep: Sleep, rand: Callable[[], float]) -> None:
        self.policy = policy
        self.answered: set[str] = set()
        self._base, self._stats = base, stats
        self._clock, self._sleep, self._rand = clock, sleep, rand

    async def run(self, attempt: Callable[[], Awaitable[T]], endpoint: str, path: str,
                  story: Story, cutoff: Cutoff | None = None) -> T:
        """Run ``attempt`` until it returns or the policy gives up, each try bounded by
        what is left of ``retry.max_time`` (and by ``cutoff``); a host that never
        answered ends as :class:`Unreachable`."""
        req = _Request(endpoint, path, story, cutoff, self._clock())
        try:
            return await call_with_retries(
                partial(self._bounded, req, attempt), self.policy, clock=self._clock,
                sleep=self._sleep, rand=self._rand, budget=partial(self._budget, req),
                on_retry=partial(self._on_retry, req))
        except (RequestError, ApiError) as exc:
            final = self._final(req, exc)
            if final is None:
                raise
            raise final from exc

    def _budget(self, req: _Request, exc: BaseException) -> float:
        """How long after the first try a retry after ``exc`` may still start."""
        if isinstance(exc, ReadTimeout) and exc.reason == "gated":
            return 0.0  # the gate could not admit it within the budget: it is spent
        mine = self.policy.budget(exc, contacted=self._host(exc) in self.answered)
        if req.cutoff is None or req.cutoff.end_by - req.start >= mine:
            return mine
        req.cut = exc
        return req.cutoff.end_by - req.start

    def _bound(self, req: _Request, deadline: float) -> tuple[float, float, str]:
        """When the try in flight must end: (clock time, seconds, the setting that says)."""
        policy = self.policy
        limit, name = policy.max_time, "retry.max_time"
        if req.cutoff is not None and req.cutoff.end_by < deadline:
            deadline, limit, name = req.cutoff.end_by, req.cutoff.end_by - req.start, _CUTOFF
        if not self.answered and policy.first_contact_time < limit:
            # Nothing has answered yet: even the attempt in flight gets only the short
            # budget, so a silent host fails within it, not after one more read timeout.
            deadline -= limit - policy.first_contact_time
            limit, name = policy.first_contact_time, "retry.first_contact_time"
        return deadline, limit, name

    async def _bounded(self, req: _Request, attempt: Callable[[], Awaitable[T]],
                       deadline: float) -> T:
        """One try, cut when its bound passes on the injected clock."""
        deadline, limit, name = self._bound(req, deadline)
        story = req.story
        # The gate refuses at once a try it could not admit in time (on the injected
        # clock); a try admitted in time is cut in flight by the same clock.
        story.admit_by, story.spent = (None if name == _CUTOFF else deadline), False
        timer = ClockTimeout(deadline, self._clock)
        try:
            async with timer:
                return await attempt()
        except (TimeoutError, OutOfTime) as exc:
            if isinstance(exc, OutOfTime) and not story.spent:
                raise
            if isinstance(exc, TimeoutError) and not timer.expired():
                raise
            raise self._ran_out(req, limit, name) from None

    @staticmethod
    def _ran_out(req: _Request, limit: float, name: str) -> HarvestError:
        """The error of a try cut at its bound."""
        endpoint, path = req.endpoint, req.path
        if name == _CUTOFF:
            return OutOfTime(f"{endpoint} {path}: cut at the deadline")
        waiting = f" waiting for the {endpoint} rate limit" if req.story.gated else ""
        return ReadTimeout(f"{endpoint} {path}: the request ran past {limit:g} s "
                           f"({name}){waiting}", endpoint=endpoint, url=path,
                           reason="gated" if req.story.gated else "timeout")

    def _on_retry(self, req: _Request, exc: BaseException, cause: str, n: int,
                  wait: float) -> None:
        self._stats.retries[cause] += 1
        if isinstance(exc, RequestError):
            req.story.failed = exc
        event("http.retry", endpoint=req.endpoint, path=req.path, attempt=n, cause=cause,
              error=type(exc).__name__, wait=round(wait, 3))

    def _final(self, req: _Request, exc: RequestError | ApiError) -> HarvestError | None:
        """What the request ends with after ``exc``, its last try; None: ``exc`` itself."""
        if req.cut is exc:
            return OutOfTime(f"{req.endpoint} {req.path}: no time left to retry after "
                             f"{type(exc).__name__}")
        if isinstance(exc, ApiError):
            return None
        host = self._host(exc)
        if host in self.answered:
            return None
        return _unreachable(host, exc, req.story)

    def _host(self, exc: BaseException) -> str:
        """The host an error came from (errors without a full URL are the API base's)."""
        url = getattr(exc, "url", "")
        return host_of(url if "://" in url else self._base)


def _unreachable(host: str, exc: RequestError, story: Story) -> Unreachable:
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
