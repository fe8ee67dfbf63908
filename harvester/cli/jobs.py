"""How every command runs its work: under SIGINT/SIGTERM (:func:`run_job`,
:class:`Interrupted`), inside its ``--metrics-file`` (:func:`metrics_file`), with a
publish step after it (:func:`publish_step`), and its one-line messages (:func:`say`).

The same rules for every command, so no command handles a signal its own way (``export``
aside: a started commit must finish). Must not parse flags or decide what a command does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

from harvester.cli.options import settings_of
from harvester.config import Settings
from harvester.display import term_text
from harvester.errors import ConfigError, HarvestError, PublishError
from harvester.export import SignalGuard
from harvester.metrics import MetricsFile
from harvester.obs import event
from harvester.pipeline import with_ticks
from harvester.publish import PublishReport
from harvester.redact import REDACTOR
from harvester.userpath import run_dirs

__all__ = ["EXIT_SIGINT", "EXIT_SIGTERM", "Interrupted", "metrics_file", "publish_step",
           "run_job", "say", "say_published", "signal_exit"]

T = TypeVar("T")
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def say(message: str) -> None:
    """One ``harvester: ...`` line on stderr: redacted, and without control characters
    (server text in an error must not drive the terminal)."""
    print(f"harvester: {term_text(REDACTOR.scrub(message))}", file=sys.stderr)


class Interrupted(Exception):
    """A command stopped by SIGINT/SIGTERM; ``code`` is its exit status (130/143)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def signal_exit(caught: list[int]) -> int:
    """The exit status for the first signal caught: 143 for SIGTERM, else 130."""
    return EXIT_SIGTERM if caught and caught[0] == signal.SIGTERM else EXIT_SIGINT


async def _cancel_on_signal(work: Callable[[], Awaitable[T]],
                            display: AbstractContextManager[Any], caught: list[int],
                            metrics: MetricsFile | None = None) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def on_signal(signum: int) -> None:
        if not caught:
            caught.append(signum)
            event("run.signal", signal=signal.Signals(signum).name)
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        with display:
            if metrics is None:
                return await work()
            return await with_ticks(work, metrics.tick, every=metrics.every,
                                    sleep=metrics.sleep)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_job(work: Callable[[], Awaitable[T]], *,
            display: AbstractContextManager[Any] | None = None,
            interrupted: str | None = None, metrics: MetricsFile | None = None) -> T:
    """Run one command's coroutine under SIGINT/SIGTERM handling, with its live display.

    A signal cancels ``work`` cleanly; then ``harvester: interrupted; <interrupted>``
    goes to stderr (when given) and :class:`Interrupted` carries 130 (SIGINT) or 143
    (SIGTERM) to :func:`~harvester.cli.main`: no traceback, and each command's own
    clean-up has already run. (``export`` has its own
    :class:`~harvester.export.SignalGuard`: a started commit must finish.) With
    ``metrics``, its textfile is written every ``metrics.every`` seconds meanwhile.
    """
    caught: list[int] = []
    try:
        return asyncio.run(_cancel_on_signal(work, display or contextlib.nullcontext(),
                                             caught, metrics))
    except (asyncio.CancelledError, KeyboardInterrupt):
        if interrupted is not None:
            print(f"harvester: interrupted; {interrupted}", file=sys.stderr)
        raise Interrupted(signal_exit(caught)) from None


@contextmanager
def metrics_file(ns: argparse.Namespace, command: str) -> Iterator[MetricsFile | None]:
    """``--metrics-file``: checked first (a bad path is exit 2 before anything runs),
    then written once more when the command ends, however it ends: the outcome the
    command set, else ``interrupted`` (a signal) or ``failed`` (an error)."""
    path, source = getattr(ns, "metrics_file", None), "--metrics-file"
    if path is None and hasattr(ns, "config"):  # else output.metrics_file in the config
        with contextlib.suppress(ConfigError):  # the command's own load says it, exit 2
            path, source = settings_of(ns).output.metrics_file, "output.metrics_file"
    if path is None:
        yield None
        return
    mf = MetricsFile(path, command, source=source, own=run_dirs(command, ns, settings_of))
    try:
        yield mf
    except Interrupted:
        mf.outcome = ("interrupted", None)
        raise
    finally:
        status, manifest = mf.outcome or ("failed", None)
        try:
            mf.finish(status, manifest)
        except HarvestError as exc:  # the run's own result stands
            say(f"--metrics-file not written: {exc}")


def publish_step(work: Callable[[], PublishReport | None],
                 metrics: MetricsFile | None) -> PublishReport | PublishError | None:
    """A publish step, inside the ``--metrics-file`` block: a failed publish is no
    success there either (the data did not reach its readers). Its error is returned, to
    be raised by :func:`say_published` once the run's summary is out. A signal stops it
    (the uploads in flight finish; 130/143, rerun to resume it)."""
    guard = SignalGuard()
    try:
        with guard:
            return work()
    except KeyboardInterrupt:
        print("harvester: interrupted; the local output is intact; rerun the same command "
              "to resume the publish", file=sys.stderr)
        raise Interrupted(signal_exit([guard.signal] if guard.signal else [])) from None
    except PublishError as exc:
        if metrics is not None and metrics.outcome is not None:
            metrics.outcome = ("partial", metrics.outcome[1])
        return exc


def say_published(settings: Settings, report: PublishReport | PublishError | None) -> None:
    """The publish step's line (unless quiet), or its error raised now."""
    if isinstance(report, PublishError):
        raise report
    if report is not None and not settings.output.quiet:
        print(f"published to {report.url}: {report.uploaded} uploaded "
              f"({report.bytes:,} bytes), {report.skipped} unchanged, {report.deleted} "
              "removed" + (f"; latest.json -> {report.latest}" if report.latest else ""))
