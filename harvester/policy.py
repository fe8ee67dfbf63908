"""Retry policy: whether to retry, how long to wait, and the one loop that retries.

* :class:`RetryPolicy` decides *whether* to retry and *how long* to wait, from the error
  and the causes of earlier retries. It is immutable and does no I/O.
  :func:`call_with_retries` is the one loop that sleeps, on the injected clock: every
  request (the token fetch included, inside its API attempt) is retried there and only
  there.
* The servers' advertised waits (``Retry-After``, DRF's throttle body) are parsed here.

It must not throttle (the gates live in :mod:`harvester.gate`, re-exported here for the
old import path), do I/O, or read real time: ``clock``/``sleep`` are injected.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Final, TypeVar

from harvester.config import RetryConfig
from harvester.errors import (
    ApiError,
    GatewayError,
    PayloadError,
    RateLimited,
    RequestError,
    ServerError,
    UnexpectedStatus,
)
from harvester.gate import (  # re-exported: the throttles' old import path
    RECOVER_WINDOWS,
    WAIT_RESOLUTION,
    Clock,
    Cutoff,
    LeakyBucket,
    OpenGate,
    RateGate,
    Sleep,
    Ticket,
    admission_schedule,
    gate_margin,
    window_budget,
)

T = TypeVar("T")

_BODY_WAIT_RE: Final = re.compile(r"Expected available in (\d+(?:\.\d+)?) seconds?", re.I)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date.

    Returns None when the header is absent or unparsable; negative waits become 0.
    ``now`` is wall-clock epoch seconds (injected for tests).
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        wall = time.time() if now is None else now
        seconds = when.timestamp() - wall
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def parse_throttle_body(text: str | None) -> float | None:
    """The N of DRF's ``Request was throttled. Expected available in N seconds.``."""
    if not text:
        return None
    m = _BODY_WAIT_RE.search(text)
    return float(m.group(1)) if m else None


def advertised_wait(header: str | None, body: str | None, *, now: float | None = None
                    ) -> float | None:
    """The server's requested wait: the header first, else the DRF body text.

    A wait of 0 means "no advice" (back off normally), so it is returned as None:
    retrying at once would only burn the attempts (cf. dlt#4036).
    """
    wait = parse_retry_after(header, now=now)
    if wait is None:
        wait = parse_throttle_body(body)
    if wait is None or wait <= 0:
        return None
    return wait


# --- retry policy ----------------------------------------------------------------------

#: Causes a request can be retried for, as recorded in a call's history.
CAUSE_TRANSPORT: Final = "transport"
CAUSE_PAYLOAD: Final = "payload"
CAUSE_SERVER: Final = "server"
CAUSE_GATEWAY_400: Final = "gateway_400"
CAUSE_THROTTLED: Final = "throttled"


@dataclass(frozen=True, slots=True)
class RetryPolicy(RetryConfig):
    """What to retry and how long to wait. Immutable; no I/O.

    The numbers, their defaults and their checks are :class:`~harvester.config.RetryConfig`'s
    (``retry.*`` in the config file); this class adds the decisions.

    Retried: no response (connect, timeout, reset, truncated body), invalid JSON on a 2xx,
    5xx, 429 and, a few times only, a 400 on a well-formed GET (the gateway maps upstream
    errors to 400). Never retried: 401 (the client refreshes and replays once itself),
    403, 404 (detail 404s are retried later by the pipeline, not here), a body over the
    size cap. Markup on a JSON request (XML, or a gateway's HTML maintenance page) is a bad
    body like truncated JSON: retried, and reported as such only if it persists.

    ``max_time`` bounds a request's whole life, the attempt in flight included; a host
    that has never answered gets only ``first_contact_time`` (a wrong base URL fails in
    a minute, not in fifteen).
    """

    @classmethod
    def from_config(cls, cfg: RetryConfig) -> RetryPolicy:
        """Build the policy from validated config numbers."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(RetryConfig)})

    @staticmethod
    def cause(error: BaseException) -> str | None:
        """The retry cause for an error, or None when it must not be retried."""
        if isinstance(error, RequestError):
            return CAUSE_TRANSPORT
        if isinstance(error, PayloadError):  # UnexpectedXML included
            return CAUSE_PAYLOAD
        if isinstance(error, RateLimited):
            return CAUSE_THROTTLED
        if isinstance(error, ServerError):
            return CAUSE_SERVER
        if isinstance(error, GatewayError):
            return CAUSE_GATEWAY_400
        if isinstance(error, UnexpectedStatus) and error.status in (408, 409, 425):
            return CAUSE_SERVER
        return None

    def should_retry(self, error: BaseException, history: tuple[str, ...]) -> bool:
        """Whether another attempt is allowed after ``error``, given earlier retry causes."""
        cause = self.cause(error)
        if cause is None:
            return False
        if len(history) + 1 >= self.max_tries:
            return False
        if cause == CAUSE_GATEWAY_400:
            return history.count(CAUSE_GATEWAY_400) < self.gateway_400_retries
        return True

    def backoff(self, attempt: int, rand: float) -> float:
        """Exponential back-off with jitter for retry number ``attempt`` (1-based).

        Half fixed, half random ("equal jitter"): never zero unless the base is zero, so a
        fleet of workers does not retry in lock-step.
        """
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** max(0, attempt - 1))
        return ceiling / 2 + ceiling / 2 * rand

    def delay(self, error: BaseException, attempt: int, rand: float) -> float:
        """How long the retry loop itself sleeps before retry ``attempt``.

        A 429 that advertised a wait sleeps 0 here: the endpoint class's :class:`RateGate`
        pauses every worker for that wait (clamped to ``max_wait``), this one included.
        """
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return 0.0
        return self.backoff(attempt, rand)

    def clamp_wait(self, wait: float) -> float:
        """An advertised wait, bounded so a hostile header cannot park us for a day."""
        return min(max(0.0, wait), self.max_wait)

    def budget(self, error: BaseException, *, contacted: bool) -> float:
        """Seconds from a request's first attempt after which no retry starts."""
        if isinstance(error, RequestError) and not contacted:
            return min(self.max_time, self.first_contact_time)
        return self.max_time


RetryHook = Callable[[BaseException, str, int, float], None]


async def call_with_retries(
    attempt: Callable[[float], Awaitable[T]],
    policy: RetryPolicy,
    *,
    clock: Clock,
    sleep: Sleep,
    rand: Callable[[], float],
    budget: Callable[[BaseException], float] | None = None,
    on_retry: RetryHook | None = None,
) -> T:
    """Call ``attempt(deadline)`` until it returns or ``policy`` gives up; re-raise the
    last error then.

    ``deadline`` is the clock time ``max_time`` after the first call: the attempt must
    end by then (the caller enforces it on the attempt in flight). ``budget(error)`` is
    how long after the first call a retry may still start (default ``max_time``); a wait
    that would end past it is not slept. ``on_retry(error, cause, retry_number, wait)``
    runs before each wait.
    """
    start = clock()
    deadline = start + policy.max_time
    history: list[str] = []
    while True:
        try:
            return await attempt(deadline)
        except (RequestError, ApiError) as exc:
            cause = policy.cause(exc)
            if cause is None or not policy.should_retry(exc, tuple(history)):
                raise
            wait = policy.delay(exc, len(history) + 1, rand())
            # A 429's advertised pause happens in the gate, but is spent all the same.
            paused = exc.retry_after if isinstance(exc, RateLimited) else None
            limit = policy.max_time if budget is None else budget(exc)
            if clock() - start + max(wait, paused or 0.0) >= limit:
                raise
            history.append(cause)
            if on_retry is not None:
                on_retry(exc, cause, len(history), wait)
            if wait > 0:
                await sleep(wait)


__all__ = [
    "RECOVER_WINDOWS", "WAIT_RESOLUTION", "Clock", "Cutoff", "LeakyBucket", "OpenGate",
    "RateGate", "Sleep", "Ticket", "admission_schedule", "gate_margin", "window_budget",
]
