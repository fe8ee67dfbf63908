"""The page walker: one DRF list walked page by page, and re-walked until complete.

Used by catalog listings and by the learner export alike. Owns the page workers (the
only tasks created outside :mod:`harvester.pipeline.harvest`) and the rule for when a
re-walk is worth it. Must not write files, dedupe items or know what a page holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from harvester.client import ApiClient, ThrottleClass
from harvester.errors import (
    ApiError,
    Forbidden,
    HarvestError,
    InvalidPage,
    RequestError,
    Unauthorized,
    UnexpectedXML,
)
from harvester.models import Page
from harvester.obs import event
from harvester.paginate import ListingPlan


def leading_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error to handle from a TaskGroup's group.

    An interrupt (not an ``Exception``) wins, then a harvester error, then anything else.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    interrupts = [e for e in leaves if not isinstance(e, Exception)]
    ours = [e for e in leaves if isinstance(e, HarvestError)]
    return (interrupts or ours or leaves)[0]


async def walk_pages(
    client: ApiClient,
    throttle: ThrottleClass,
    path: str,
    page_size: int,
    take: Callable[[Page], Awaitable[None]],
    *,
    parallel: int,
    plan: ListingPlan | None = None,
    skip: set[int] | None = None,
    on_plan: Callable[[ListingPlan], Awaitable[None]] | None = None,
    on_page_error: Callable[[int, HarvestError], Awaitable[None]] | None = None,
    fatal: tuple[type[HarvestError], ...] = (Forbidden, Unauthorized, UnexpectedXML),
) -> ListingPlan | None:
    """Walk a DRF list: page 1, then the planned pages concurrently by number, then
    any pages beyond the plan one at a time. ``take`` gets each page in arrival order.

    The walk stops at the first 404 ``Invalid page.``, empty page or short page (see
    :class:`ListingPlan`), so a ``count`` that lies costs at most ``parallel`` wasted
    requests. ``plan`` resumes a walk whose page 1 is done; ``skip`` lists pages already
    taken. A page that fails after its retries goes to ``on_page_error`` (or raises,
    without one); ``fatal`` errors (by default 401, 403 and XML) always raise, since
    every other page would fail the same way. Returns the plan (its ``count`` is the
    largest any page reported), or None when page 1 itself was past the end.
    """
    if plan is None:
        plan = await _first_page(client, throttle, path, page_size, take, on_plan)
        if plan is None:
            return None
    else:
        plan.resume(skip or set())
        if on_plan is not None:
            await on_plan(plan)
    walking = plan

    async def worker() -> None:
        while (req := walking.next_request()) is not None:
            try:
                page = await client.get_page(throttle, path, req)
            except InvalidPage:
                walking.invalid(req.page)
                continue
            except (ApiError, RequestError) as exc:
                if on_page_error is None or isinstance(exc, fatal):
                    raise
                await on_page_error(req.page, exc)
                continue
            client.stats.pages += 1
            walking.took(page)  # before take(): idle workers learn of the end sooner
            await take(page)

    try:
        async with asyncio.TaskGroup() as tg:
            for i in range(max(1, parallel)):
                tg.create_task(worker(), name=f"pages-{i}")
    except BaseExceptionGroup as group:
        # Callers catch Forbidden, SinkError...: never make them unwrap a group.
        raise leading_error(group) from None
    return plan


async def _first_page(client: ApiClient, throttle: ThrottleClass, path: str, page_size: int,
                      take: Callable[[Page], Awaitable[None]],
                      on_plan: Callable[[ListingPlan], Awaitable[None]] | None
                      ) -> ListingPlan | None:
    """Page 1: it teaches the plan. None when the list has no page 1."""
    plan = ListingPlan(page_size)
    try:
        first = await client.get_page(throttle, path, plan.first())
    except InvalidPage:
        return None
    client.stats.pages += 1
    plan.learn(first)
    if on_plan is not None:
        await on_plan(plan)
    plan.took(first)
    await take(first)
    return plan


async def walk_until_complete(
    walk: Callable[[int], Awaitable[bool | None]],
    found: Callable[[], tuple[int, int | None]],
    *,
    first: int,
    max_rewalks: int,
    event_name: str,
    **context: str,
) -> int:
    """Walk a list (walk ``first``, then more) until the items found reach the server's
    ``count``, a re-walk finds nothing new, or ``max_rewalks`` extra walks are spent;
    return the last walk.

    The service's order is unstable, so one walk can skip items that moved between
    pages; a new walk, deduplicated against what was found, picks them up. While walks
    keep finding items (a list that keeps moving) walking on is worth it; a re-walk that
    looked at the whole list and added nothing shows the rest of the gap is not coming
    (``count`` lies, or items are hidden), and more walks would only repeat it. ``walk``
    returns False when it was cut short (a page failed): that proves nothing either way.
    """
    n = first
    before = found()[0]
    while True:
        looked = await walk(n)
        unique, count = found()
        if count is None or unique >= count or n > max_rewalks:
            return n
        if n > 1 and unique <= before and looked is not False:
            return n
        before = unique
        fields: dict[str, Any] = {**context, "walk": n + 1, "unique": unique, "count": count}
        event(event_name, **fields)
        n += 1
