"""Scenario 6 (issue #13): what ``--publish`` costs over a plain copy of the same bytes.

A listing-only harvest of ``items`` items (``catalogs`` catalogs) is written once. Then,
against moto's S3 server running as its own process on loopback, each round times:

* the baseline: ``s3fs.S3FileSystem().put(files, keys)`` of exactly the files a publish
  uploads, in a fresh interpreter, timed around the ``put`` call alone;
* ``harvester harvest --out SAME --publish s3://...`` on that (already complete) output:
  the publish's own ``seconds`` from its ``publish.done`` log event (listing the prefix,
  reading the index, hashing every file, the uploads, index checkpoints and the manifest).

Each to a fresh prefix, alternating, best of ``rounds``. Then an unchanged re-publish is
timed for information (it hashes everything and uploads nothing).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bench.procs import HARVESTER, PYTHON, BenchError, Simulator, harvester_argv, run_child

if TYPE_CHECKING:
    from bench.scenarios import Context

PUBLISH: Final[dict[str, Any]] = {"catalogs": 4, "items": 25_000, "rounds": 3,
                                  "target": 1.2}
_AWS: Final = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1"}
_BASELINE: Final = """
import json, sys, time
import s3fs
lpaths, rpaths = json.load(open(sys.argv[1]))
fs = s3fs.S3FileSystem()
t0 = time.perf_counter()
fs.put(lpaths, rpaths)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


class MotoServer:
    """``moto_server`` on 127.0.0.1 as its own process, for a ``with`` block."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MotoServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [str(Path(PYTHON).with_name("moto_server")), "-H", "127.0.0.1", "-p",
             str(self.port)], stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "moto.stderr").open("wb"))
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self.__exit__()
                    raise BenchError("moto_server did not start") from None
                time.sleep(0.05)

    def __exit__(self, *_: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        return {**(base or os.environ), **_AWS, "AWS_ENDPOINT_URL": self.endpoint}


def _publishable(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(out).parts))


def _publish_seconds(stderr: Path) -> dict[str, Any]:
    for line in stderr.read_text().splitlines():
        if '"publish.done"' in line:
            data: dict[str, Any] = json.loads(line)
            return data
    raise BenchError(f"no publish.done event in {stderr}")


def publish_cost(ctx: Context) -> None:
    """Scenario 6: publish wall / s3fs.put wall of the same bytes."""
    c = PUBLISH
    work = ctx.work / "publish"
    with Simulator(work / "sim", seed=1, catalogs=c["catalogs"], items=c["items"],
                   rate_lms="0") as sim, MotoServer(work / "moto") as moto:
        import s3fs  # the bench's own client, only to create the bucket

        s3fs.S3FileSystem(key="bench", secret="bench", endpoint_url=moto.endpoint,
                          skip_instance_cache=True).mkdir("bench")
        out = work / "out"
        run_child(harvester_argv(sim, out, rate="100000/s", concurrency=16, details=False),
                  env=sim.env(), workdir=work / "harvest")
        files = _publishable(out)

        def publish(url: str) -> list[str]:  # the same command: the run is already complete
            return [HARVESTER, "harvest", "--out", str(out), "--api-base", sim.info.base_url,
                    "--no-details", "--publish", url, "--progress", "off", "--log-format",
                    "json"]

        size = sum(p.stat().st_size for p in files)
        env = moto.env(sim.env())
        base_s, pub_s = [], []
        for n in range(c["rounds"]):
            plan = work / f"plan{n}.json"
            plan.write_text(json.dumps([[str(p) for p in files],
                                        [f"s3://bench/base{n}/{p.relative_to(out).as_posix()}"
                                         for p in files]]))
            base = run_child([PYTHON, "-c", _BASELINE, str(plan)], env=env,
                             workdir=work / f"base{n}")
            base_s.append(json.loads(base.stdout)["seconds"])
            run_child(publish(f"s3://bench/pub{n}"), env=env, workdir=work / f"pub{n}")
            pub_s.append(_publish_seconds(work / f"pub{n}" / "child.stderr")["seconds"])
        run_child(publish("s3://bench/pub0"), env=env, workdir=work / "again")
        again = _publish_seconds(work / "again" / "child.stderr")
    ratio = min(pub_s) / min(base_s)
    label = f"6. publish, {c['catalogs'] * c['items']:,} items to local S3 (moto)"
    ctx.add(label, "publish wall / s3fs.put wall (same bytes)",
            f"{ratio:.2f} ({min(pub_s):.2f} s / {min(base_s):.2f} s)",
            f"<= {c['target']}", ratio <= c["target"],
            f"{len(files)} files, {size / 1e6:.0f} MB; best of {c['rounds']}; publish = "
            "list + index + sha256 + uploads + manifest")
    ctx.add(label, "unchanged re-publish wall", f"{again['seconds']:.2f} s", "(info)", None,
            f"{again['uploaded']} uploaded, {again['skipped']} skipped")
    ctx.facts["publish"] = {"files": len(files), "bytes": size, "base": base_s,
                            "pub": pub_s, "again": again["seconds"]}
