"""Scenario 5 (issue #13): many tenants in one process.

One simulator process serves ``tenants`` credentials (``--tenants N``), each with one
catalog of ``items`` items and its own LMS budget scaled to ``rate``/s; one harvester
process harvests them all at once from a ``[[tenants]]`` config, each tenant at its own
``--rate-lms``. Per tenant, its floor is its LMS answers / its rate and its wall is its
own manifest's ``wall_seconds``; the worst tenant's ratio is the figure. The two
processes share the machine's cores: the simulator's CPU is measured and reported
beside the harvester's, so a knee caused by the simulator is not blamed on the client.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bench.procs import HARVESTER, ChildRun, Simulator, run_child, scratch

if TYPE_CHECKING:
    from bench.scenarios import Context

MB: Final = 1024 * 1024

#: 100 tenants x 200 items at 4/s each (400 LMS requests a second in all); the knee is
#: looked for with shorter runs of more tenants.
TENANTS: Final[dict[str, Any]] = {
    "tenants": 100, "items": 200, "rate": 4, "latency_ms": 2, "jitter_ms": 1,
    "concurrency": 4, "knee_items": 40, "knee_steps": (200, 300, 400, 600),
    "wall_target": 1.1, "rss_target_mb": 300, "cpu_target": 1.0,
}


def _config(sim: Simulator, path: Path) -> dict[str, str]:
    """Write the harvester's [[tenants]] config from the simulator's banner; return the
    environment holding the tenants' credentials."""
    toml, env = [], dict(os.environ)
    for line in sim.banner.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
        elif not line.startswith("#"):
            toml.append(line)
    path.write_text("[output]\nprogress = \"off\"\nquiet = true\n" + "\n".join(toml) + "\n")
    return env


def _run(ctx: Context, label: str, tenants: int, items: int) -> dict[str, Any]:
    cfg = TENANTS
    rate = cfg["rate"]
    work = ctx.work / label
    with Simulator(work / "sim", seed=5, tenants=tenants, catalogs=1, items=items,
                   rate_lms=f"{rate}/s", latency_ms=cfg["latency_ms"],
                   jitter_ms=cfg["jitter_ms"]) as sim, scratch(work / "h") as tmp:
        env = _config(sim, tmp / "tenants.toml")
        sim.reset()
        argv = [HARVESTER, "harvest", "--config", str(tmp / "tenants.toml"), "--out",
                str(tmp / "out"), "--api-base", sim.info.base_url, "--rate-lms", f"{rate}/s",
                "--concurrency", str(cfg["concurrency"]), "--restart"]
        run = run_child(argv, env=env, workdir=tmp / "proc", sample=sim.stats, every=2.0,
                        check=False, timeout=1800)
        stats, sim_cpu = sim.stats(), sim.cpu_since_reset()
        ratios = _tenant_ratios(tmp / "out", stats, sim, rate)
        summary = json.loads((tmp / "out" / "manifest.json").read_text())
    requests = sum(n for k, v in stats["requests"].items() if k != "other" for n in v.values())
    return {"tenants": tenants, "items": items, "run": run, "ratios": ratios,
            "worst": max(ratios.values()), "status": summary["status"],
            "n429": stats["throttled_429"], "requests": requests, "sim_cpu": sim_cpu}


def _tenant_ratios(out: Path, stats: dict[str, Any], sim: Simulator, rate: int
                   ) -> dict[str, float]:
    """Each tenant's own wall over its own floor (its LMS answers / its budget)."""
    ids = {}
    for line in sim.banner.splitlines():
        if line.startswith("export ") and "_CLIENT_ID=" in line:
            var, _, value = line.removeprefix("export ").partition("=")
            ids[f"sim-{var.removesuffix('_CLIENT_ID').rsplit('_', 1)[1]}"] = value
    ratios = {}
    for name, client in ids.items():
        by = stats.get("by_client", {}).get(client, {})
        ok = sum(n for k, n in by.items() if k.startswith("lms:2"))
        manifest = json.loads((out / f"tenant={name}" / "manifest.json").read_text())
        ratios[name] = manifest["totals"]["wall_seconds"] / (ok / rate)
    return ratios


def tenant_fanout(ctx: Context) -> None:
    """100 tenants x 200 items at 4/s each in one process, then the knee."""
    cfg = TENANTS
    main = _run(ctx, "tenants", cfg["tenants"], cfg["items"])
    run: ChildRun = main["run"]
    name = (f"5. tenants, {cfg['tenants']} x {cfg['items']} items at {cfg['rate']}/s each "
            f"({cfg['tenants'] * cfg['rate']} req/s in all)")
    ctx.add(name, "worst tenant wall / its floor", f"{main['worst']:.3f}",
            f"<= {cfg['wall_target']}", main["worst"] <= cfg["wall_target"],
            f"status {main['status']}; median {statistics.median(main['ratios'].values()):.3f}")
    ctx.add(name, "429 answers", f"{main['n429']} of {main['requests']} requests", "0",
            main["n429"] == 0)
    ctx.add(name, "peak RSS", f"{run.max_rss / MB:.0f} MB", f"<= {cfg['rss_target_mb']} MB",
            run.max_rss <= cfg["rss_target_mb"] * MB)
    cores = run.cpu / run.wall
    ctx.add(name, "harvester CPU, cores on average", f"{cores:.2f} ({run.cpu:.1f} s / "
            f"{run.wall:.1f} s)", f"<= {cfg['cpu_target']}", cores <= cfg["cpu_target"],
            f"{1000 * run.cpu / main['requests']:.2f} CPU s per 1,000 requests; simulator "
            f"{main['sim_cpu']:.1f} CPU s ({main['sim_cpu'] / run.wall:.2f} cores)")
    ctx.facts["tenants"] = {"main": {k: v for k, v in main.items() if k != "ratios"}}
    knee = None
    steps = []
    for n in cfg["knee_steps"]:
        step = _run(ctx, f"tenants-{n}", n, cfg["knee_items"])
        steps.append(step)
        if step["worst"] > cfg["wall_target"] or step["n429"]:
            knee = n
            break
    ctx.facts["tenants"]["knee"] = steps
    shown = "; ".join(f"{s['tenants']}: worst {s['worst']:.2f}, harvester "
                      f"{s['run'].cpu / s['run'].wall:.2f} + sim "
                      f"{s['sim_cpu'] / s['run'].wall:.2f} cores" for s in steps)
    ctx.add(name, "knee (tenants one process keeps at <= 1.1x)",
            f"{knee if knee else '> ' + str(cfg['knee_steps'][-1])}", "(info)", None,
            f"{cfg['knee_items']} items each: {shown}")
