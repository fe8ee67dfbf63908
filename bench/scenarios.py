"""The benchmark scenarios of issue #7 (and #13's tenant fan-out, in bench/tenants.py).
Each appends measured :class:`Row` s.

Every number reported is measured in the current run; targets are ratios so they hold on
a noisy machine. Sizes are chosen so that the whole suite fits in about five minutes on
two cores (see :data:`SIZES`); ``--full`` runs the memory scenario at 1,000,000 items.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.procs import (
    PYTHON,
    BenchError,
    ChildRun,
    Simulator,
    harvester_argv,
    read_manifest,
    run_child,
    scratch,
)
from bench.publish import publish_cost
from bench.tenants import tenant_fanout

#: Dataset sizes and knobs per scenario (all in one place, all echoed in the report).
SIZES: Final[dict[str, Any]] = {
    "throttled": {"catalogs": 3, "items": 400, "rate": 20, "latency_ms": 2, "jitter_ms": 1,
                  "unscaled_latency_ms": 20, "unscaled_jitter_ms": 5, "concurrency": 16},
    "unthrottled": {"catalogs": 4, "items": 1000, "latency_ms": 20, "concurrency": 64,
                    "serial_budget_s": 8.0, "rounds": 2},
    "memory": {"small": 100_000, "large": 250_000, "full": 1_000_000, "target": 1_000_000,
               "details_items": 20_000, "concurrency": 16},
}
#: The harvester cannot switch its LMS gate off; this budget never binds.
UNLIMITED: Final = "100000/s"
MB: Final = 1024 * 1024


@dataclass(slots=True)
class Row:
    """One line of the results table. ``ok`` is None for figures without a target."""

    scenario: str
    metric: str
    measured: str
    target: str
    ok: bool | None
    note: str = ""


@dataclass(slots=True)
class Context:
    """Shared by the scenarios: scratch space, options, and everything measured."""

    work: Path
    full: bool = False
    rows: list[Row] = field(default_factory=list)
    #: run label -> [(seconds, LMS 2xx so far, LMS 429 so far)] sampled from /__stats
    series: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, *args: Any, **kwargs: Any) -> None:
        """Append a :class:`Row`."""
        self.rows.append(Row(*args, **kwargs))


def _lms(stats: dict[str, Any]) -> tuple[int, int, int]:
    """(2xx, 429, total) LMS-class requests in a ``/__stats`` snapshot."""
    by_status: dict[str, int] = stats.get("requests", {}).get("lms", {})
    ok = sum(n for s, n in by_status.items() if s.startswith("2"))
    return ok, by_status.get("429", 0), sum(by_status.values())


def _requests(stats: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Requests by class and status, without the ``other`` class (ops endpoints)."""
    return {k: v for k, v in stats.get("requests", {}).items() if k != "other"}


def probe_throttle(sim: Simulator, n: int) -> tuple[int, int]:
    """Fire ``n`` back-to-back LMS calls; return (answered 200, answered 429).

    A sanity check that the simulator really enforces its budget, so "zero 429s" means
    something. The counters and throttle log are reset afterwards.
    """
    base = sim.info.base_url
    form = urllib.parse.urlencode({"grant_type": "client_credentials",
                                   "client_id": sim.info.client_id,
                                   "client_secret": sim.info.client_secret,
                                   "token_type": "jwt"}).encode()
    with urllib.request.urlopen(base + "/oauth2/v1/access_token", data=form, timeout=10) as r:
        token = json.loads(r.read())["access_token"]
    ok = throttled = 0
    for _ in range(n):
        req = urllib.request.Request(base + "/enterprise/v1/enterprise-catalogs",
                                     headers={"Authorization": f"JWT {token}",
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()
                ok += resp.status == 200
        except urllib.error.HTTPError as exc:
            throttled += exc.code == 429
    sim.reset()
    return ok, throttled


# --- 1. throttled ----------------------------------------------------------------------------

def throttled(ctx: Context) -> None:
    """Full harvest against a scaled LMS budget: matched, then configured 2x too fast.

    The budget is scaled from 60/min to ``rate``/s, i.e. time is compressed 60x; the
    network round trip is compressed the same way (``latency_ms``), so that its share of
    a throttle window stays what it is against the real API. The matched run is repeated
    with the unscaled 20 ms latency, for information: a cost paid once per window weighs
    60x more there than in production.
    """
    cfg = SIZES["throttled"]
    rate = cfg["rate"]
    work = ctx.work / "throttled"
    runs = (("matched", 1, cfg["latency_ms"], cfg["jitter_ms"]),
            ("2x", 2, cfg["latency_ms"], cfg["jitter_ms"]),
            ("matched-20ms", 1, cfg["unscaled_latency_ms"], cfg["unscaled_jitter_ms"]))
    for label, factor, latency, jitter in runs:
        with Simulator(work / f"sim-{label}", seed=1, catalogs=cfg["catalogs"],
                       items=cfg["items"], rate_lms=f"{rate}/s", latency_ms=latency,
                       jitter_ms=jitter) as sim:
            if label == "matched":
                probe_ok, probe_429 = probe_throttle(sim, rate + 5)
                if probe_429 == 0:
                    raise BenchError("the simulator answered no 429 to a burst over its budget")
                ctx.facts["probe"] = (rate + 5, probe_ok, probe_429)
            sim.reset()
            with scratch(work / label) as tmp:
                out = tmp / "out"
                argv = harvester_argv(sim, out, rate=f"{rate * factor}/s",
                                      concurrency=cfg["concurrency"])
                run = run_child(argv, env=sim.env(), workdir=tmp / "proc", sample=sim.stats)
                manifest = read_manifest(out)
        final = run.samples[-1][1]
        ok, n429, total = _lms(final)
        floor = ok / rate
        ratio = run.wall / floor
        series = [(t, *_lms(s)[:2]) for t, s in run.samples]
        ctx.series[label] = series
        ctx.facts[f"throttled_{label}"] = {
            "lms_ok": ok, "lms_429": n429, "lms_total": total, "floor": floor,
            "wall": run.wall, "harvest_wall": manifest["totals"]["wall_seconds"],
            "items": manifest["totals"]["items"],
            "details": manifest["totals"]["details_fetched"],
            "harvester_429": manifest["totals"]["throttled_429"], "latency": latency,
            "jitter": jitter, "status": manifest["status"], "requests": _requests(final),
            **_phases(series, rate)}
        name = {"matched": f"1. throttled, matched ({rate}/s vs {rate}/s)",
                "2x": f"1. throttled, 2x too fast ({rate * factor}/s vs {rate}/s)",
                "matched-20ms": f"1. throttled, matched, unscaled {latency:g} ms latency"}[label]
        wall_target = 1.05 if factor == 1 else 1.2
        informative = label == "matched-20ms"
        ctx.add(name, "wall / floor", f"{ratio:.4f} ({run.wall:.2f} s / {floor:.2f} s)",
                "(info)" if informative else f"<= {wall_target}",
                None if informative else ratio <= wall_target,
                f"floor = {ok} LMS requests / {rate} per s; wall = process spawn to exit")
        if factor == 1:
            ctx.add(name, "429 answers", f"{n429} of {total} LMS requests", "0", n429 == 0)
        else:
            share = n429 / total if total else 0.0
            ctx.add(name, "share of LMS requests answered 429",
                    f"{share:.1%} ({n429} of {total})", "<= 2%", share <= 0.02)


def _phases(series: list[tuple[float, int, int]], rate: int) -> dict[str, float]:
    """Where a throttled run's time went, from its ``/__stats`` samples.

    ``first_detail``: when the first detail answer was counted (process start-up, token,
    catalog list and listing come before it); ``sustained``: LMS 2xx answers per second
    from then to the end; ``early_429``: 429s in the first two windows, ``late_429``:
    after them (a client that learns the budget stops collecting them).
    """
    start = next((t for t, ok, _ in series if ok >= 2), series[-1][0])
    end_t, end_ok, end_429 = series[-1]
    ok_at_start = next(ok for t, ok, _ in series if t >= start)
    horizon = start + 2.0
    early = max((n for t, _, n in series if t <= horizon), default=0)
    span = end_t - start
    return {"first_detail": start,
            "sustained": (end_ok - ok_at_start) / span if span > 0 else float("nan"),
            "early_429": early, "late_429": end_429 - early, "budget": rate}


# --- 2. unthrottled --------------------------------------------------------------------------

def _baseline(sim: Simulator, mode: str, workdir: Path, **opts: object) -> tuple[ChildRun,
                                                                                  dict[str, Any]]:
    argv = [PYTHON, "-m", "bench.baseline", mode, "--base", sim.info.base_url]
    for name, value in opts.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    run = run_child(argv, env=sim.env(), workdir=workdir)
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return run, result


def unthrottled(ctx: Context) -> None:
    """No budget, 20 ms latency: the harvester vs a bare aiohttp loop and a serial loop.

    The harvester and the bare loop run alternately, ``rounds`` times each, and the best
    wall of each counts: the machine is shared, and a best-of-N is the least noisy
    estimate of what a client can do.
    """
    cfg = SIZES["unthrottled"]
    conc = cfg["concurrency"]
    work = ctx.work / "unthrottled"
    h_runs: list[tuple[ChildRun, dict[str, Any], float]] = []
    b_runs: list[tuple[ChildRun, dict[str, Any], float]] = []
    with Simulator(work, seed=1, catalogs=cfg["catalogs"], items=cfg["items"], rate_lms="0",
                   latency_ms=cfg["latency_ms"]) as sim:
        for i in range(cfg["rounds"]):
            sim.reset()
            b, bare = _baseline(sim, "bare", work / f"bare-{i}", concurrency=conc)
            b_runs.append((b, sim.stats(), sim.cpu_since_reset()))
            sim.reset()
            with scratch(work / f"harvest-{i}") as tmp:
                argv = harvester_argv(sim, tmp / "out", rate=UNLIMITED, concurrency=conc)
                h = run_child(argv, env=sim.env(), workdir=tmp / "proc")
                manifest = read_manifest(tmp / "out")
            h_runs.append((h, sim.stats(), sim.cpu_since_reset()))
        sim.reset()
        _, serial = _baseline(sim, "serial", work / "serial",
                              time_budget=cfg["serial_budget_s"])
    for (_, h_stats, _), (_, b_stats, _) in zip(h_runs, b_runs, strict=True):
        if _requests(h_stats) != _requests(b_stats):
            raise BenchError(f"bare loop made other requests than the harvester: "
                             f"{_requests(h_stats)} vs {_requests(b_stats)}")
    h, h_stats, h_sim_cpu = min(h_runs, key=lambda r: r[0].wall)
    b, b_stats, b_sim_cpu = min(b_runs, key=lambda r: r[0].wall)
    items = manifest["totals"]["items"]
    bare_items = bare["items"]
    h_rate, b_rate = items / h.wall, bare_items / b.wall
    s_rate = serial["items"] / serial["wall"]
    ctx.facts["unthrottled"] = {
        "items": items, "bare_items": bare_items, "harvester": h, "bare": b,
        "serial": serial, "h_walls": [r[0].wall for r in h_runs],
        "b_walls": [r[0].wall for r in b_runs], "h_requests": _requests(h_stats),
        "h_sim_cpu": h_sim_cpu, "b_sim_cpu": b_sim_cpu,
        "h_peak": h_stats["peak_concurrency"]["overall"],
        "b_peak": b_stats["peak_concurrency"]["overall"]}
    name = f"2. unthrottled, {cfg['latency_ms']} ms latency, concurrency {conc}"
    overhead = h.wall / b.wall
    ctx.add(name, "harvester wall / bare aiohttp wall",
            f"{overhead:.2f} ({h.wall:.2f} s / {b.wall:.2f} s)", "<= 1.3", overhead <= 1.3,
            f"{items} items, {h_rate:.0f} vs {b_rate:.0f} items/s; identical requests; "
            f"best of {cfg['rounds']}")
    # The simulator serves from one Python thread: items per second of its CPU bound what
    # any client can get from it, however concurrent.
    ceiling = bare_items / b_sim_cpu if b_sim_cpu > 0 else float("inf")
    ctx.facts["unthrottled"]["ceiling"] = ceiling
    speedup = h_rate / s_rate
    ctx.add(name, "harvester items/s / serial loop items/s",
            f"{speedup:.1f}x ({h_rate:.0f} vs {s_rate:.1f})", ">= 20x", speedup >= 20,
            f"bare aiohttp / serial: {b_rate / s_rate:.1f}x; simulator CPU ceiling "
            f"{ceiling:.0f} items/s = {ceiling / s_rate:.1f}x serial")


# --- 3 + 4. memory and CPU -------------------------------------------------------------------

def _harvest_once(ctx: Context, label: str, items: int, *, details: bool) -> dict[str, Any]:
    """One catalog of ``items`` on an instant simulator; peak RSS and CPU of the harvester."""
    cfg = SIZES["memory"]
    work = ctx.work / label
    with Simulator(work, seed=1, catalogs=1, items=items, rate_lms="0") as sim, \
            scratch(work / "h") as tmp:
        sim.reset()
        argv = harvester_argv(sim, tmp / "out", rate=UNLIMITED, concurrency=cfg["concurrency"],
                              details=details)
        run = run_child(argv, env=sim.env(), workdir=tmp / "proc", sample=sim.stats,
                        every=0.5, track_rss=True)
        totals = read_manifest(tmp / "out")["totals"]
        sim_cpu = sim.cpu_since_reset()
    # RSS against items served so far (content pages x their size), while the run goes.
    size = totals["items"] / max(1, totals["pages"] - 1)  # pages includes the catalog list
    points = [(s["requests"].get("content", {}).get("200", 0) * size, s["_rss"])
              for _, s in run.samples if "_rss" in s]
    if totals["items"] != items:
        raise BenchError(f"{label}: harvested {totals['items']} of {items} items")
    return {"items": items, "written": totals["items_written"], "wall": run.wall,
            "cpu": run.cpu, "user": run.cpu_user, "sys": run.cpu_sys, "rss": run.max_rss,
            "details": totals["details_fetched"], "sim_cpu": sim_cpu,
            "requests": totals["requests_total"], "slope": _slope(points, items)}


def _slope(points: list[tuple[float, int]], items: int) -> float:
    """Least-squares bytes of RSS per item over the second half of a listing run.

    Peak RSS also holds whatever sits in the harvester's bounded queues at that moment
    (up to megabytes of encoded lines, depending on scheduling), which makes the
    two-run difference noisy; within one run that part is steady, so the slope of RSS
    against items listed isolates what grows with the catalog (the dedupe set).
    """
    half = [(x, y) for x, y in points if items / 2 <= x < items]
    if len(half) < 4:
        return float("nan")
    mx = sum(x for x, _ in half) / len(half)
    my = sum(y for _, y in half) / len(half)
    sxx = sum((x - mx) ** 2 for x, _ in half)
    return sum((x - mx) * (y - my) for x, y in half) / sxx if sxx else float("nan")


def memory_and_cpu(ctx: Context) -> None:
    """Peak RSS of listing-only harvests at two sizes, one with details; CPU per 1k items."""
    cfg = SIZES["memory"]
    small_n = cfg["small"]
    large_n = cfg["full"] if ctx.full else cfg["large"]
    small = _harvest_once(ctx, "mem-small", small_n, details=False)
    large = _harvest_once(ctx, "mem-large", large_n, details=False)
    det = _harvest_once(ctx, "mem-details", cfg["details_items"], details=True)
    ctx.facts["memory"] = {"small": small, "large": large, "details": det}

    growth = (large["rss"] - small["rss"]) / (large_n - small_n)
    target_n = cfg["target"]
    measured_at_target = large_n == target_n
    at_target = large["rss"] + growth * (target_n - large_n)
    name = "3. memory, listing only, 1 catalog"
    ctx.add(name, f"peak RSS at {small_n:,} items", f"{small['rss'] / MB:.1f} MB", "-", None,
            f"{small['wall']:.1f} s")
    ctx.add(name, f"peak RSS at {large_n:,} items", f"{large['rss'] / MB:.1f} MB",
            "<= 200 MB" if measured_at_target else "-",
            at_target <= 200 * MB if measured_at_target else None, f"{large['wall']:.1f} s")
    if not measured_at_target:
        ctx.add(name, f"peak RSS at {target_n:,} items (extrapolated)",
                f"{at_target / MB:.1f} MB", "<= 200 MB", at_target <= 200 * MB,
                f"linear from the two runs above (a 1M run takes ~{_eta(small, target_n)}; "
                "`make bench BENCH_ARGS=--full` measures it)")
    ctx.add(name, f"RSS growth per item, {small_n:,} -> {large_n:,} (peak RSS difference)",
            f"{growth:.1f} B/item", "<= 100 B/item", growth <= 100,
            "includes queue contents at the peak moment: noisy by tens of B/item")
    slope = large["slope"]
    ctx.add(name, f"RSS growth per item, within the {large_n:,} run (slope, 2nd half)",
            f"{slope:.1f} B/item", "(info)", None,
            "least squares of sampled RSS against items listed")
    ctx.add("3. memory, with details (instant sim)",
            f"peak RSS at {det['items']:,} items", f"{det['rss'] / MB:.1f} MB", "-", None,
            f"{det['details']} details in {det['wall']:.1f} s")

    for label, r in (("listing only", small), ("listing only", large),
                     ("with details", det)):
        per_k = r["cpu"] / r["written"] * 1000
        ctx.add(f"4. CPU, {label} (instant sim)", f"CPU s per 1,000 items ({r['items']:,})",
                f"{per_k:.3f} s", "-", None,
                f"user {r['user']:.1f} + sys {r['sys']:.1f} s; simulator {r['sim_cpu']:.1f} s")


def _eta(small: dict[str, Any], n: int) -> str:
    """Expected wall time of a run of ``n`` items, from a smaller one."""
    seconds = small["wall"] * n / small["items"]
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


from bench.deadline_wall import deadline_wall  # noqa: E402  (imports Context from here)
from bench.plan_eta import plan_eta  # noqa: E402  (it imports Context from here)

ALL: Final = (throttled, unthrottled, memory_and_cpu, plan_eta, publish_cost, tenant_fanout,
              deadline_wall)


def run_all(ctx: Context, only: set[str] | None = None) -> None:
    """Run every scenario (or those named in ``only``), timing each."""
    for scenario in ALL:
        if only and scenario.__name__ not in only:
            continue
        t0 = time.monotonic()
        print(f"[bench] {scenario.__name__} ...", flush=True)
        scenario(ctx)
        ctx.facts.setdefault("durations", {})[scenario.__name__] = time.monotonic() - t0
        print(f"[bench] {scenario.__name__}: {time.monotonic() - t0:.0f} s", flush=True)
