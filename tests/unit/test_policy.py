"""Retry policy, wait parsing and the rate gate, with fake time."""

from __future__ import annotations

import asyncio
import email.utils
import math

import pytest

from harvester.config import Rate
from harvester.errors import (
    ConnectionLost,
    Forbidden,
    GatewayError,
    NotFound,
    PayloadError,
    RateLimited,
    ReadTimeout,
    ResponseTooLarge,
    ServerError,
    Unauthorized,
    UnexpectedXML,
)
from harvester.policy import (
    RateGate,
    RetryPolicy,
    advertised_wait,
    call_with_retries,
    parse_retry_after,
    parse_throttle_body,
)
from tests.conftest import FakeTime

POLICY = RetryPolicy(max_tries=5, gateway_400_retries=2, backoff_base=1.0, backoff_cap=8.0)


@pytest.mark.parametrize("error", [
    ReadTimeout("t"), ConnectionLost("r"), ServerError("5", status=503),
    PayloadError("j", status=200), RateLimited("429", retry_after=3.0, status=429),
    GatewayError("400", status=400), UnexpectedXML("maintenance page", status=200),
])
def test_retryable(error: Exception) -> None:
    assert POLICY.should_retry(error, ())


@pytest.mark.parametrize("error", [
    Forbidden("403", status=403), NotFound("404", status=404),
    Unauthorized("401", status=401), ResponseTooLarge("big", status=200),
])
def test_never_retried(error: Exception) -> None:
    """403 never; 404 and 401 are handled elsewhere; an oversized body stays oversized."""
    assert not POLICY.should_retry(error, ())


def test_caps_tries_and_gateway_400s() -> None:
    err = ServerError("503", status=503)
    assert POLICY.should_retry(err, ("server",) * 3)
    assert not POLICY.should_retry(err, ("server",) * 4)  # 5th attempt was the last
    gw = GatewayError("400", status=400)
    assert POLICY.should_retry(gw, ("gateway_400",))
    assert not POLICY.should_retry(gw, ("gateway_400", "gateway_400"))


def test_backoff_grows_with_jitter_and_cap() -> None:
    assert POLICY.backoff(1, 0.0) == 0.5 and POLICY.backoff(1, 1.0) == 1.0
    assert POLICY.backoff(3, 0.0) == 2.0
    assert POLICY.backoff(10, 1.0) == 8.0
    assert RetryPolicy(backoff_base=0.0).backoff(5, 1.0) == 0.0


def test_advertised_429_wait_is_left_to_the_gate() -> None:
    """The gate pauses every worker; the retry loop adds nothing on top."""
    assert POLICY.delay(RateLimited("x", retry_after=7.0, status=429), 1, 0.5) == 0.0
    assert POLICY.delay(RateLimited("x", retry_after=None, status=429), 2, 0.0) == 1.0
    assert POLICY.clamp_wait(10_000) == POLICY.max_wait


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30.0)


def test_parse_throttle_body() -> None:
    body = '{"detail":"Request was throttled. Expected available in 42 seconds."}'
    assert parse_throttle_body(body) == 42.0
    assert parse_throttle_body("Expected available in 1 second.") == 1.0
    assert parse_throttle_body("nope") is None


def test_advertised_wait_prefers_header_and_treats_zero_as_no_advice() -> None:
    body = "Expected available in 9 seconds."
    assert advertised_wait("3", body) == 3.0
    assert advertised_wait(None, body) == 9.0
    assert advertised_wait("0", None) is None  # back off normally (cf. dlt#4036)


async def test_retry_loop_sleeps_on_the_injected_clock(fake_time: FakeTime) -> None:
    """Waits come from the policy and are slept with the injected sleep, nowhere else."""
    calls: list[float] = []

    async def attempt(deadline: float) -> str:
        calls.append(deadline)
        if len(calls) < 3:
            raise ServerError("503", status=503)
        return "ok"

    start = fake_time.now
    got = await call_with_retries(attempt, POLICY, clock=fake_time, sleep=fake_time.sleep,
                                  rand=lambda: 0.0)
    assert got == "ok" and fake_time.slept == [0.5, 1.0]
    assert calls == [start + POLICY.max_time] * 3  # one deadline for the request's life


async def test_retry_loop_stops_before_a_wait_past_the_budget(fake_time: FakeTime) -> None:
    """No wait is slept that would end past the budget; the last error is raised."""
    policy = RetryPolicy(max_tries=100, backoff_base=4.0, backoff_cap=64.0, max_time=30.0)

    async def attempt(deadline: float) -> str:
        raise ReadTimeout("t")

    with pytest.raises(ReadTimeout):
        await call_with_retries(attempt, policy, clock=fake_time, sleep=fake_time.sleep,
                                rand=lambda: 1.0)
    assert fake_time.slept == [4.0, 8.0, 16.0]  # 28 s; the next (32 s) would pass 30
    fake_time.slept.clear()
    with pytest.raises(ReadTimeout):
        await call_with_retries(attempt, policy, clock=fake_time, sleep=fake_time.sleep,
                                rand=lambda: 1.0, budget=lambda e: 10.0)
    assert fake_time.slept == [4.0]


def test_budget_is_short_only_for_a_host_never_reached() -> None:
    policy = RetryPolicy(max_time=900.0, first_contact_time=60.0)
    assert policy.budget(ReadTimeout("t"), contacted=False) == 60.0
    assert policy.budget(ReadTimeout("t"), contacted=True) == 900.0
    assert policy.budget(ServerError("5", status=503), contacted=False) == 900.0


async def test_gate_never_exceeds_budget_in_any_window(fake_time: FakeTime) -> None:
    """5 per 10 s means at most 5 grants in any 10-second window, even when hammered."""
    gate = RateGate("lms", Rate(5, 10), clock=fake_time, sleep=fake_time.sleep, smooth=False,
                    margin=0.0)
    stamps = [(await gate.acquire()).at for _ in range(23)]
    for i, t in enumerate(stamps):
        assert sum(1 for s in stamps[i:] if s < t + 10) <= 5
    assert stamps[-1] - stamps[0] == pytest.approx(40.0)  # no slower than the budget


async def test_gate_margin_widens_the_window(fake_time: FakeTime) -> None:
    gate = RateGate("lms", Rate(2, 1), clock=fake_time, sleep=fake_time.sleep, smooth=False,
                    margin=0.05)
    stamps = [(await gate.acquire()).at for _ in range(3)]
    assert stamps[2] - stamps[0] == pytest.approx(1.05)


async def test_gate_pause_stops_everyone(fake_time: FakeTime) -> None:
    """A 429's wait applies to every worker of the class."""
    gate = RateGate("lms", Rate(100, 1), clock=fake_time, sleep=fake_time.sleep, smooth=False)
    gate.pause(30)
    t0 = fake_time.now
    tickets = await asyncio.gather(*(gate.acquire() for _ in range(3)))
    assert all(t.at >= t0 + 30 for t in tickets)


async def test_ticket_stamp_moves_to_send_time(fake_time: FakeTime) -> None:
    gate = RateGate("lms", Rate(1, 10), clock=fake_time, sleep=fake_time.sleep, smooth=False,
                    margin=0.0)
    ticket = await gate.acquire()
    fake_time.now += 4  # e.g. a token refresh between grant and send
    ticket.stamp()
    nxt = await gate.acquire()
    assert nxt.at == pytest.approx(ticket.at + 10)


async def test_gate_learns_a_smaller_server_budget_from_429s(fake_time: FakeTime) -> None:
    """We think 10 per second, the server allows 6: after one 429 we grant at most what
    the server accepted in that window, and refused requests leave our log."""
    gate = RateGate("lms", Rate(10, 1), clock=fake_time, sleep=fake_time.sleep, smooth=False,
                    margin=0.0)
    tickets = [await gate.acquire() for _ in range(7)]
    for t in tickets[:6]:
        t.counted = True
    gate.refused(tickets[6])
    fake_time.now += 1.0
    stamps = [(await gate.acquire()).at for _ in range(14)]
    for i, t in enumerate(stamps):
        assert sum(1 for s in stamps[i:] if s < t + 1.0) <= 6


async def test_gate_probes_back_up_after_quiet_windows(fake_time: FakeTime) -> None:
    gate = RateGate("lms", Rate(2, 1), clock=fake_time, sleep=fake_time.sleep, smooth=False,
                    margin=0.0)
    first = await gate.acquire()
    first.counted = True
    gate.refused(await gate.acquire())  # the server allows 1 per second, not 2
    fake_time.now += 1.0
    learned = [(await gate.acquire()).at for _ in range(3)]
    assert learned[1] - learned[0] >= 1.0  # one per window now
    fake_time.now += 30.0  # more than ten quiet windows
    burst = [(await gate.acquire()).at for _ in range(2)]
    assert burst[1] == burst[0]  # two fit in one window again


async def test_a_429_on_a_window_we_barely_used_does_not_shrink_the_budget(
        fake_time: FakeTime) -> None:
    """A run started right after another one finds the server's window full of requests
    it never sent: it pauses, but keeps its whole budget afterwards."""
    gate = RateGate("lms", Rate(10, 1), clock=fake_time, sleep=fake_time.sleep, smooth=False,
                    margin=0.0)
    gate.refused(await gate.acquire())
    fake_time.now += 1.0
    stamps = [(await gate.acquire()).at for _ in range(10)]
    assert stamps[-1] == stamps[0]  # all ten fit in one window


async def test_a_429_from_a_window_others_filled_teaches_nothing(fake_time: FakeTime) -> None:
    """60/min: we sent 40 in the last 20 s and got a 429 whose wait (30 s) says the
    server's oldest request is 10 s older than any of ours: someone else used the window
    (a run that just crashed). Pause, but keep the budget."""
    gate = RateGate("lms", Rate(60, 60), clock=fake_time, sleep=fake_time.sleep, smooth=False,
                    margin=0.0)
    for _ in range(40):
        (await gate.acquire()).counted = True
        fake_time.now += 0.5
    gate.refused(await gate.acquire(), wait=30.0)
    assert gate.budget == 60


async def test_a_429_from_our_own_window_teaches_the_budget(fake_time: FakeTime) -> None:
    """The server's oldest request is our own first one: its budget is what we got."""
    gate = RateGate("lms", Rate(60, 60), clock=fake_time, sleep=fake_time.sleep, smooth=False,
                    margin=0.0)
    start = fake_time.now
    for _ in range(40):
        (await gate.acquire()).counted = True
        fake_time.now += 0.5
    wait = start + 60 - fake_time.now
    gate.refused(await gate.acquire(), wait=float(math.ceil(wait)))
    assert gate.budget == 40


async def test_probing_back_up_doubles_its_step(fake_time: FakeTime) -> None:
    gate = RateGate("lms", Rate(64, 1), clock=fake_time, sleep=fake_time.sleep, smooth=False,
                    margin=0.0)
    for _ in range(33):
        (await gate.acquire()).counted = True
    gate.refused(await gate.acquire())
    assert gate.budget == 33
    budgets = []
    for _ in range(4):
        fake_time.now += 11.0
        await gate.acquire()
        budgets.append(gate.budget)
    assert budgets == [34, 36, 40, 48]


def test_policy_is_built_from_the_config_without_repeating_it() -> None:
    """RetryPolicy adds decisions, not numbers: same fields, defaults and checks."""
    from dataclasses import fields

    from harvester.config import RetryConfig
    from harvester.errors import ConfigError

    assert [f.name for f in fields(RetryPolicy)] == [f.name for f in fields(RetryConfig)]
    assert RetryPolicy() == RetryPolicy.from_config(RetryConfig())
    cfg = RetryConfig(max_tries=3, backoff_base=0.0, first_contact_time=5.0)
    assert RetryPolicy.from_config(cfg).max_tries == 3
    with pytest.raises(ConfigError, match="max_tries"):
        RetryPolicy(max_tries=0)


async def test_a_granted_request_not_yet_answered_keeps_its_slot(fake_time: FakeTime) -> None:
    """A request granted, then held up longer than the window before it is even sent (a
    slow token fetch, a loop busy with a hundred tenants), still holds its slot: the
    server counts it when it arrives. Before, the gate forgot it after one window and let
    a second request into the server's window with it (a 429)."""
    gate = RateGate("lms", Rate(1, 1), clock=fake_time, sleep=fake_time.sleep, smooth=False,
                    margin=0.0)
    first = await gate.acquire()
    first.held = True
    fake_time.now += 5  # granted 5 windows ago, still not answered
    waiting = asyncio.ensure_future(gate.acquire())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done() and fake_time.slept == []  # waits for the answer, no clock
    first.stamp()
    first.held = False  # the held request is finally answered
    nxt = await waiting
    assert nxt.at >= first.at + 1.0  # one full window after the server counted the first
