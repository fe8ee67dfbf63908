"""A periodic side task next to a command's work (the ``--metrics-file`` writes).

:func:`with_ticks` runs ``work`` and, beside it, calls ``tick`` every ``every`` seconds
until the work ends, however it ends (result, error, cancellation by a signal). The
tick runs between awaits, so it sees counters in a consistent state; it must not raise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from harvester.policy import Sleep

T = TypeVar("T")


async def with_ticks(work: Callable[[], Awaitable[T]], tick: Callable[[], None], *,
                     every: float, sleep: Sleep = asyncio.sleep) -> T:
    """``await work()``, calling ``tick()`` every ``every`` seconds meanwhile."""

    async def ticker() -> None:
        while True:
            await sleep(every)
            tick()

    # Not a TaskGroup: it would wrap the work's own error in an ExceptionGroup, and the
    # CLI maps those errors to exit codes by type.
    task = asyncio.create_task(ticker(), name="metrics-ticker")
    try:
        return await work()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
