"""Request throttles: small gates on the injected clock, one per endpoint class.

Owns :class:`RateGate` (a budget of N per period, as DRF's sliding log means it, with a
:class:`LeakyBucket` holding the long-run rate and 429s teaching it the server's real
budget), :class:`OpenGate` (no budget of ours, only a 429's pause), :class:`Ticket` and the
deadline arithmetic (:class:`Cutoff`, :func:`admission_schedule`). It must not do I/O,
retry, or read the loop's real time: every wait goes through the injected ``sleep``.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from harvester.config import Rate
from harvester.errors import OutOfTime

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: Quiet windows after which a gate that learned a lower budget from 429s probes upward.
RECOVER_WINDOWS: Final = 10
#: DRF advertises waits in whole seconds.
WAIT_RESOLUTION: Final = 1.0


class Ticket:
    """One granted request slot in a gate's sliding log.

    ``stamp()`` moves the entry to now. The client stamps right before sending and again
    when the response (or the failure) arrives: the server counted the request at some
    moment in between, so our record is never earlier than the server's, and the slot is
    only reused once the server has surely forgotten it, whatever the latency."""

    __slots__ = ("_clock", "_held", "_settled", "at", "counted")

    def __init__(self, at: float, clock: Clock, settled: asyncio.Event | None = None) -> None:
        self.at = at
        self._clock = clock
        self._settled = settled
        self.counted = False  #: answered by the server with anything but a 429
        self._held = False

    @property
    def held(self) -> bool:
        """Granted and not yet answered: the slot stays taken however long that lasts (a
        token fetch or a busy loop between grant and send can outlast the window)."""
        return self._held

    @held.setter
    def held(self, value: bool) -> None:
        self._held = value
        if not value and self._settled is not None:
            self._settled.set()  # wakes a gate waiting for an in-flight slot to settle

    def stamp(self) -> None:
        """Record now as this request's send time (never earlier than the grant)."""
        self.at = max(self.at, self._clock())


def window_budget(rate: Rate) -> tuple[int, float]:
    """The rate as a sliding log keeps it: at most ``n`` requests in any ``window`` seconds.

    From 1 per period up, ``n`` is the count rounded down over the same period: a shard's
    ``7.5/min`` never sends an eighth request in a minute, whatever the others do. Below 1,
    the window stretches instead: ``0.5/s`` is one request in any 2 s (``1/2s``), which
    is 30/min without bursts, never more than the budget in any window.
    """
    if rate.count >= 1:
        return math.floor(rate.count), rate.period
    return 1, rate.period / rate.count


@dataclass(frozen=True, slots=True)
class Cutoff:
    """A request's deadline (clock times): admitted by ``admit_by``, ended by ``end_by``."""

    admit_by: float
    end_by: float


def gate_margin(period: float) -> float:
    """Seconds a gate adds to its window (clock granularity and DRF's "<=" edge)."""
    return min(0.25, 0.01 + 0.002 * period)


def admission_schedule(requests: int, rate: Rate, *, concurrency: int, request_time: float,
                       busy_until: list[float] | None = None) -> float:
    """Seconds until ``requests`` requests through a :class:`RateGate` at ``rate`` have
    all been answered, each taking ``request_time``, at most ``concurrency`` in flight.

    The gate's real behaviour, replayed: the whole budget goes out at once when the
    window is empty, and each slot is reused one window after its answer arrived (the
    entry is stamped then). ``busy_until`` are slots already taken at time 0 (the
    catalog list), free again at those times. Used by ``harvester plan`` and by the
    deadline, so both predict the run the gate will really make.
    """
    if requests <= 0:
        return 0.0
    full, period = window_budget(rate)
    window = period + gate_margin(period)
    slots = sorted((busy_until or [])[:full]) + [0.0] * max(0, full - len(busy_until or []))
    heapq.heapify(slots)
    workers = [0.0] * max(1, concurrency)
    end = 0.0
    for _ in range(requests):
        at = max(heapq.heappop(slots), heapq.heappop(workers))
        done = at + request_time
        heapq.heappush(slots, done + window)
        heapq.heappush(workers, done)
        end = done
    return end


class LeakyBucket:
    """``capacity`` grants at once, then one every ``period / capacity`` seconds, on the
    injected clock (aiolimiter's shape; aiolimiter itself runs on the loop's real time,
    which a test's fake clock cannot move)."""

    __slots__ = ("_at", "_level", "capacity", "period")

    def __init__(self, capacity: int, period: float) -> None:
        self.capacity, self.period = capacity, period
        self._level, self._at = 0.0, -math.inf

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until one more grant fits (0: it fits now)."""
        rate = self.capacity / self.period
        self._level = max(0.0, self._level - (now - self._at) * rate)
        self._at = now
        return max(0.0, (self._level + 1 - self.capacity) / rate)

    def take(self) -> None:
        """Count one grant (after :meth:`wait` said 0)."""
        self._level += 1


class RateGate:
    """An endpoint class's request budget, shared by every worker of that class."""

    def __init__(
        self,
        name: str,
        rate: Rate,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        margin: float | None = None,
        smooth: bool = True,
    ) -> None:
        self.name = name
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._full, self._period = window_budget(rate)
        # Entries are stamped at response time (see Ticket), so the margin only covers
        # clock granularity and DRF's "<=" edge: ~0.2% of throughput.
        self.margin = margin if margin is not None else gate_margin(self._period)
        self._window = self._period + self.margin
        self._capacity = self._full
        self._learned = 0  # the server's budget as seen in the current 429 episode
        self._step = 1  # the next upward probe
        self._learned_at = -math.inf
        self._log: list[Ticket] = []
        self._lock = asyncio.Lock()
        self._settled = asyncio.Event()  # set when a held ticket is answered
        self._pause_until = 0.0
        # The leaky bucket lets a fresh budget go out at once and then drains at the
        # budget's rate; the log below stops it from ever exceeding N per window.
        self._spacer = LeakyBucket(self._full, self._period) if smooth else None

    @property
    def budget(self) -> int:
        """Requests currently granted per window (lower than the rate's after 429s taught
        the gate that the server allows fewer)."""
        return self._capacity

    def pause(self, seconds: float) -> None:
        """Stop every caller of this gate for ``seconds`` from now (a 429's advice)."""
        until = self._clock() + seconds
        self._pause_until = max(self._pause_until, until)

    def refused(self, ticket: Ticket, wait: float | None = None) -> None:
        """The server answered ``ticket`` with a 429 (advising ``wait`` seconds): its
        budget may be smaller than ours.

        DRF does not record a refused request, so its entry leaves the log; and the
        requests the server did accept within the window are what its budget really is:
        the gate never grants more than that per window again (each later 429 of the
        same episode can only raise the estimate, as more of those answers arrive).
        """
        if ticket in self._log:
            self._log.remove(ticket)
        now = self._clock()
        horizon = now - self._window
        counted = sum(1 for t in self._log if t.counted and t.at > horizon)
        if counted * 2 < self._capacity:
            # We barely used this window ourselves: the server's log holds requests we
            # never sent (a run that just ended, another tool). That says nothing about
            # its budget; the 429's pause is all that applies.
            return
        if wait is not None and self._period >= 10 * WAIT_RESOLUTION:
            # DRF's wait is when the oldest request in its window expires. If none of ours
            # is that old, the window also holds requests we did not send: no evidence.
            server_oldest = now + wait - self._period
            if not any(t.counted and t.at <= server_oldest + WAIT_RESOLUTION
                       for t in self._log):
                return
        self._step = 1
        if now - self._learned_at > self._window:
            self._learned = counted
        else:
            self._learned = max(self._learned, counted)
        self._learned_at = now
        capacity = max(1, min(self._full, self._learned))
        if capacity != self._capacity:
            self._capacity = capacity
            if self._spacer is not None:
                self._spacer = LeakyBucket(capacity, self._period)

    def _recover(self, now: float) -> None:
        """After ``RECOVER_WINDOWS`` windows without a 429, probe upward: +1, then +2, +4...
        while it keeps working, since whoever shared the credential may have stopped (or
        the estimate was low). When the server's budget really is lower, this costs at
        most one refused request per ten windows; a wrong estimate recovers in a few
        probes."""
        full = self._full
        if self._capacity < full and now - self._learned_at > RECOVER_WINDOWS * self._window:
            self._capacity = min(full, self._capacity + self._step)
            self._step *= 2
            self._learned_at = now
            if self._spacer is not None:
                self._spacer = LeakyBucket(self._capacity, self._period)

    async def acquire(self, admit_by: float | None = None) -> Ticket:
        """Wait until one more request fits the budget; return its ticket.

        ``admit_by`` (clock time): raise :class:`OutOfTime` at once, without waiting,
        when the request could not be admitted by then (a run's deadline)."""
        _in_time(self._clock(), admit_by)
        async with self._lock:  # FIFO: one waiter computes its slot at a time
            while True:
                now = self._clock()
                _in_time(now, admit_by)
                if now < self._pause_until:
                    _in_time(self._pause_until, admit_by)
                    await self._sleep(self._pause_until - now)
                    continue
                self._recover(now)
                spaced = self._spacer.wait(now) if self._spacer is not None else 0.0
                if spaced > 0:
                    _in_time(now + spaced, admit_by)
                    await self._sleep(spaced)
                    continue
                # Stamps move later while requests are in flight, so the log is not
                # sorted: scan it, but only once it is full (a budget far above what we
                # use, such as a disabled one, never pays for the scan).
                if len(self._log) >= self._capacity:
                    horizon = now - self._window
                    self._log = [t for t in self._log if t.at > horizon or t.held]
                if len(self._log) < self._capacity:
                    ticket = Ticket(now, self._clock, self._settled)
                    self._log.append(ticket)
                    if self._spacer is not None:
                        self._spacer.take()
                    return ticket
                oldest = min(t.at for t in self._log)
                _in_time(oldest + self._window, admit_by)
                wait = oldest + self._window - now
                if wait <= 0 and any(t.held for t in self._log):
                    # Full of requests still in flight: wait for one to be answered (an
                    # event, not a poll, so no clock spins while the network works).
                    self._settled.clear()
                    await self._settled.wait()
                    continue
                await self._sleep(max(0.001, wait))


def _in_time(admission: float, admit_by: float | None) -> None:
    if admit_by is not None and admission > admit_by:
        raise OutOfTime("the next request would start too late for the deadline")


class OpenGate:
    """The gate for endpoint classes the server does not throttle (content pages)."""

    name = "content"

    def __init__(self, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._pause_until = 0.0

    def pause(self, seconds: float) -> None:
        """Honour a 429 even here: a gateway-level throttle may answer one."""
        self._pause_until = max(self._pause_until, self._clock() + seconds)

    def refused(self, ticket: Ticket, wait: float | None = None) -> None:
        """Nothing to learn: this class has no budget of ours."""

    async def acquire(self, admit_by: float | None = None) -> Ticket:
        """Grant at once unless a 429 pause is in force (see :meth:`RateGate.acquire`
        for ``admit_by``)."""
        now = self._clock()
        _in_time(max(now, self._pause_until), admit_by)
        if now < self._pause_until:
            await self._sleep(self._pause_until - now)
        return Ticket(self._clock(), self._clock)
