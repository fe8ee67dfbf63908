"""Scenario ``plan_eta``: does ``harvester plan``'s ETA match the run that follows it?

At a scaled budget (20/s instead of 60/min, so a run takes seconds, not hours) the plan is
made, then the harvest (or the sync) it planned is run as a separate process, and the
ratio ETA / wall time is reported. Target: within 10% (0.90 to 1.10). Wall time is the
child process's, start-up included, as a scheduler sees it.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bench.procs import HARVESTER, Simulator, harvester_argv, run_child, scratch

if TYPE_CHECKING:
    from bench.scenarios import Context

CFG: Final[dict[str, Any]] = {"catalogs": 2, "items": 250, "rate": "20/s", "latency_ms": 3,
                              "jitter_ms": 1, "concurrency": 8, "mutation_rate": 0.2,
                              "deadline_budget_s": 6}
DAY1, DAY2 = "2026-11-20", "2026-11-21"


def _common(sim: Simulator) -> list[str]:
    return ["--api-base", sim.info.base_url, "--rate-lms", CFG["rate"], "--concurrency",
            str(CFG["concurrency"]), "--progress", "off", "--quiet"]


def _plan(ctx: Context, sim: Simulator, label: str, *extra: str) -> dict[str, Any]:
    run = run_child([HARVESTER, "plan", "--json", *_common(sim), *extra], env=sim.env(),
                    workdir=ctx.work / "plan_eta" / f"plan-{label}")
    doc: dict[str, Any] = json.loads(run.stdout)
    return doc


def _row(ctx: Context, metric: str, eta: float, wall: float, note: str) -> None:
    ratio = eta / wall
    ctx.add("plan_eta", metric, f"{ratio:.3f} (ETA {eta:.1f} s / wall {wall:.1f} s)",
            "0.90-1.10", 0.9 <= ratio <= 1.1, note)
    ctx.facts.setdefault("plan_eta", {})[metric] = {"eta": eta, "wall": wall, "ratio": ratio}


def plan_eta(ctx: Context) -> None:
    """Plan, then harvest; plan with --store, then sync: ETA / wall for each."""
    work = ctx.work / "plan_eta"
    with Simulator(work / "sim", seed=5, catalogs=CFG["catalogs"], items=CFG["items"],
                   rate_lms=CFG["rate"], rate_learners="0", latency_ms=CFG["latency_ms"],
                   jitter_ms=CFG["jitter_ms"], mutation_rate=CFG["mutation_rate"]) as sim:
        doc = _plan(ctx, sim, "harvest")
        sim.reset()  # the plan's catalog-list request must not sit in the next window
        with scratch(work / "out") as out:
            run = run_child(harvester_argv(sim, out, rate=CFG["rate"],
                                           concurrency=CFG["concurrency"]),
                            env=sim.env(), workdir=work / "harvest")
            served = sim.stats()["detail_requests"]
        _row(ctx, "harvest ETA / wall", doc["totals"]["harvest_eta_seconds"], run.wall,
             f"{doc['totals']['detail_requests']} detail requests planned, {served} served")

        store = work / "store"
        sync = [HARVESTER, "sync", "--store", str(store), *_common(sim)]
        run_child([*sync, "--as-of", DAY1, "--rate-lms", "1000/s"], env=sim.env(),
                  workdir=work / "night1")
        req = urllib.request.Request(sim.info.base_url + "/__epoch", method="POST",
                                     data=b'{"epoch": 1}',
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
        doc = _plan(ctx, sim, "sync", "--store", str(store), "--as-of", DAY2)
        sim.reset()
        run = run_child([*sync, "--as-of", DAY2], env=sim.env(), workdir=work / "night2")
        served = sim.stats()["detail_requests"]
        s = doc["sync"]
        _row(ctx, "sync ETA / wall", s["eta_seconds"], run.wall,
             f"{s['new']} new + {s['changed']} changed + {s['refresh']} refresh planned "
             f"= {s['detail_requests']}, {served} served")
        _deadline(ctx, sim, sync)


def _deadline(ctx: Context, sim: Simulator, sync: list[str]) -> None:
    """A night whose backlog does not fit its --time-budget: wall time of the whole
    process (start-up and commit included) against the budget."""
    req = urllib.request.Request(sim.info.base_url + "/__epoch", method="POST",
                                 data=b'{"epoch": 2}',
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()
    sim.reset()
    budget = CFG["deadline_budget_s"]
    run = run_child([*sync, "--as-of", "2026-11-28", "--time-budget", f"{budget}s"],
                    env=sim.env(), workdir=ctx.work / "plan_eta" / "night3")
    store = Path(sync[sync.index("--store") + 1])
    manifest = json.loads(((store / "latest").resolve() / "manifest.json").read_text())
    deferred = manifest["deferred"]["items"]
    ctx.add("plan_eta", "sync --time-budget: wall / budget",
            f"{run.wall / budget:.3f} (wall {run.wall:.1f} s / {budget} s)", "<= 1.00",
            run.wall <= budget and deferred > 0,
            f"{sim.stats()['detail_requests']} fetched, {deferred} deferred, exit "
            f"{run.returncode}, status {manifest['status']}")
