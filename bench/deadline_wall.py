"""Scenario ``deadline_wall``: does ``sync --time-budget`` end by its deadline?

A 3 x 4000-item catalog at 30/3s (as the issue's repro): a first night without a budget,
then a night with a budget, and the child's wall time (start-up and commit included) over
the budget is reported. A budget too short for the listing and its commit fetches no
detail and says so (``sync.budget_too_short``); it cannot end in time, so its row is
reported with that note rather than a target.
"""

from __future__ import annotations

import urllib.request
from typing import TYPE_CHECKING, Any, Final

from bench.procs import HARVESTER, Simulator, run_child

if TYPE_CHECKING:
    from bench.scenarios import Context

CFG: Final[dict[str, Any]] = {"catalogs": 3, "items": 4000, "rate": "30/3s",
                              "budgets_s": (8, 30)}


def deadline_wall(ctx: Context) -> None:
    """Night 1 unbudgeted, then one night per budget: wall / budget."""
    work = ctx.work / "deadline_wall"
    with Simulator(work / "sim", seed=5, catalogs=CFG["catalogs"], items=CFG["items"],
                   rate_lms="0", rate_learners="0", mutation_rate=0.1) as sim:
        store = work / "store"
        sync = [HARVESTER, "sync", "--store", str(store), "--api-base", sim.info.base_url,
                "--rate-lms", CFG["rate"], "--progress", "off", "--quiet"]
        # night 1 fast (our own gate is the only limit, at 30/3s from night 2 on)
        run_child([*sync, "--rate-lms", "5000/s", "--concurrency", "32"], env=sim.env(),
                  workdir=work / "night1")
        for epoch, budget in enumerate(CFG["budgets_s"], start=1):
            req = urllib.request.Request(sim.info.base_url + "/__epoch", method="POST",
                                         data=f'{{"epoch": {epoch}}}'.encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()
            run = run_child([*sync, "--time-budget", f"{budget}s"], env=sim.env(),
                            workdir=work / f"budget{budget}", check=False)
            ratio = run.wall / budget
            said = (work / f"budget{budget}" / "child.stderr").read_text(errors="replace")
            short = "sync.budget_too_short" in said
            ctx.add("deadline_wall", f"wall / --time-budget {budget}s",
                    f"{ratio:.2f} ({run.wall:.1f} s, exit {run.returncode})", "<= 1.00",
                    ratio <= 1.0 or short,
                    "listing + commit exceed the budget: no detail, said so" if short
                    else "3 x 4000 items at 30/3s")
            ctx.facts.setdefault("deadline_wall", {})[budget] = {
                "wall": run.wall, "ratio": ratio, "too_short": short}
