"""Child processes of the benchmark: the simulator and the harvester (or a baseline loop).

Every process is started here and stopped here: :class:`Simulator` is a context manager
that SIGTERMs (then SIGKILLs) its child on exit, and :func:`run_child` kills its child if
anything goes wrong while waiting for it. CPU time and peak RSS come from ``os.wait4``,
i.e. from the kernel's accounting of that one child, not from sampling.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import psutil  # type: ignore[import-untyped]

ROOT: Final = Path(__file__).resolve().parent.parent
PYTHON: Final = sys.executable
HARVESTER: Final = str(Path(PYTHON).with_name("harvester"))
_START_TIMEOUT: Final = 60.0
#: How often a running child is checked for exit: the resolution of measured wall times.
_REAP_EVERY: Final = 0.005


class BenchError(RuntimeError):
    """A benchmark step could not run (a child failed, a sanity check did not hold)."""


def _terminate(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM ``proc``, then SIGKILL it after ``grace`` seconds; always reap it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


@dataclass(frozen=True, slots=True)
class SimInfo:
    """What the simulator printed on start."""

    base_url: str
    client_id: str
    client_secret: str


class Simulator:
    """``python -m harvester.sim`` as a separate process, for a ``with`` block.

    Args:
        workdir: where the simulator's stderr is kept (shown if it dies).
        **flags: SimConfig fields, e.g. ``catalogs=2, rate_lms="20/s"``; ``True``/``False``
            become ``--flag``/``--no-flag``.
    """

    def __init__(self, workdir: Path, **flags: object) -> None:
        self.flags = flags
        self.workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None
        self._info: SimInfo | None = None
        self._cpu_mark = 0.0
        #: the lines after the first (``--tenants N``: the [[tenants]] config, the env)
        self.banner = ""

    def _argv(self) -> list[str]:
        argv = [PYTHON, "-m", "harvester.sim", "--port", "0"]
        for name, value in self.flags.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is False:
                argv.append("--no-" + name.replace("_", "-"))
            else:
                argv += [flag, str(value)]
        return argv

    def __enter__(self) -> Simulator:
        self.workdir.mkdir(parents=True, exist_ok=True)
        errlog = (self.workdir / "sim.stderr").open("wb")
        try:
            self._proc = subprocess.Popen(
                self._argv(), stdout=subprocess.PIPE, stderr=errlog, cwd=ROOT)
        finally:
            errlog.close()
        try:
            self._info = self._read_banner()
        except BaseException:
            self.close()
            raise
        return self

    def _read_banner(self) -> SimInfo:
        assert self._proc is not None
        assert self._proc.stdout is not None
        deadline = time.monotonic() + _START_TIMEOUT
        line = b""
        end = b"# end of tenants\n" if int(str(self.flags.get("tenants", 1))) > 1 else b"\n"
        while not line.endswith(end):
            left = deadline - time.monotonic()
            if left <= 0 or self._proc.poll() is not None:
                err = (self.workdir / "sim.stderr").read_text(errors="replace")[-2000:]
                raise BenchError(f"simulator did not start ({self._argv()}): {err}")
            ready, _, _ = select.select([self._proc.stdout], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self._proc.stdout.fileno(), 4096)
                if not chunk:
                    continue
                line += chunk
        first, _, self.banner = line.decode().partition("\n")
        fields = dict(part.split("=", 1) for part in first.split())
        return SimInfo(fields["base_url"], fields["client_id"], fields["client_secret"])

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the simulator (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc)
            if proc.stdout is not None:
                proc.stdout.close()

    @property
    def info(self) -> SimInfo:
        """Base URL and credentials."""
        if self._info is None:
            raise BenchError("simulator not started")
        return self._info

    @property
    def pid(self) -> int:
        """The simulator's process id."""
        if self._proc is None:
            raise BenchError("simulator not started")
        return self._proc.pid

    def stats(self) -> dict[str, Any]:
        """``GET /__stats``."""
        with urllib.request.urlopen(self.info.base_url + "/__stats", timeout=10) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return data

    def reset(self) -> None:
        """``POST /__reset``: zero the counters and the throttle logs; mark CPU time."""
        req = urllib.request.Request(self.info.base_url + "/__reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
        self._cpu_mark = self.cpu_seconds()

    def cpu_seconds(self) -> float:
        """user+sys CPU seconds the simulator has used so far."""
        t = psutil.Process(self.pid).cpu_times()
        return float(t.user + t.system)

    def cpu_since_reset(self) -> float:
        """user+sys CPU seconds used since the last :meth:`reset`."""
        return self.cpu_seconds() - self._cpu_mark

    def env(self) -> dict[str, str]:
        """An environment carrying the simulator's credentials for the harvester."""
        env = dict(os.environ)
        env["EDX_CLIENT_ID"] = self.info.client_id
        env["EDX_CLIENT_SECRET"] = self.info.client_secret
        return env


@dataclass(slots=True)
class ChildRun:
    """How one benchmarked child process went."""

    argv: list[str]
    returncode: int
    wall: float  #: seconds from spawn to exit
    cpu_user: float
    cpu_sys: float
    max_rss: int  #: bytes, the kernel's high-water mark for this process
    samples: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    stdout: str = ""

    @property
    def cpu(self) -> float:
        """user + sys CPU seconds."""
        return self.cpu_user + self.cpu_sys


def run_child(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    workdir: Path,
    sample: Callable[[], dict[str, Any]] | None = None,
    every: float = 0.25,
    timeout: float = 900.0,
    check: bool = True,
    track_rss: bool = False,
) -> ChildRun:
    """Run ``argv`` to completion; measure wall, CPU and peak RSS with ``os.wait4``.

    ``sample`` (e.g. the simulator's ``/__stats``) is called every ``every`` seconds while
    the child runs, and once after it exits; the results come back with their time offset.
    With ``track_rss`` each running sample also carries the child's RSS as ``_rss``.
    The child is killed if it outlives ``timeout`` or if anything here raises.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = workdir / "child.stdout", workdir / "child.stderr"
    samples: list[tuple[float, dict[str, Any]]] = []
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, env=env, cwd=ROOT)
    usage = None
    next_sample = t0
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            now = time.monotonic()
            if pid:
                wall = now - t0
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if now - t0 > timeout:
                raise BenchError(f"{argv[0]} still running after {timeout:.0f} s")
            if sample is not None and now >= next_sample:
                snapshot = sample()
                if track_rss:
                    with contextlib.suppress(psutil.Error):
                        snapshot["_rss"] = psutil.Process(proc.pid).memory_info().rss
                samples.append((now - t0, snapshot))
                next_sample += every
            time.sleep(_REAP_EVERY)
    except BaseException:
        _terminate(proc)
        raise
    if sample is not None:
        samples.append((wall, sample()))
    assert usage is not None
    run = ChildRun(list(argv), proc.returncode, wall, usage.ru_utime, usage.ru_stime,
                   usage.ru_maxrss * 1024, samples, out_path.read_text(errors="replace"))
    if check and run.returncode != 0:
        tail = err_path.read_text(errors="replace")[-3000:]
        raise BenchError(f"{' '.join(argv[:3])}... exited {run.returncode}: {tail}")
    return run


def harvester_argv(sim: Simulator, out: Path, *, rate: str, concurrency: int,
                   details: bool = True, extra: Sequence[str] = ()) -> list[str]:
    """The ``harvester harvest`` command line used by every scenario."""
    argv = [HARVESTER, "harvest", "--out", str(out), "--api-base", sim.info.base_url,
            "--rate-lms", rate, "--concurrency", str(concurrency), "--progress", "off",
            "--quiet", "--restart"]
    if not details:
        argv.append("--no-details")
    return argv + list(extra)


def read_manifest(out: Path) -> dict[str, Any]:
    """The ``manifest.json`` of a finished harvest."""
    data: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return data


@contextlib.contextmanager
def scratch(path: Path) -> Iterator[Path]:
    """A directory that is removed afterwards (harvest outputs reach gigabytes)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
