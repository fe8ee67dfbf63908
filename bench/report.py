"""Turn a finished :class:`~bench.scenarios.Context` into stdout, a PNG and the Markdown doc.

``docs/benchmarks.md`` is rewritten on every run from what that run measured. The only
thing carried over from the previous file is its *history* table (one line per past run,
between two HTML comments), so numbers from before a change stay visible after it.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import psutil  # type: ignore[import-untyped]

from bench.procs import ROOT
from bench.publish import PUBLISH
from bench.scenarios import MB, SIZES, UNLIMITED, Context, Row
from bench.tenants import TENANTS

DOC: Final = ROOT / "docs" / "benchmarks.md"
CHART: Final = ROOT / "docs" / "throughput.png"
_HISTORY_BEGIN: Final = "<!-- history:begin -->"
_HISTORY_END: Final = "<!-- history:end -->"
_HISTORY_KEEP: Final = 30
#: Trailing window of the throughput curve. The gate sends each window's budget in a
#: burst, so a 1 s window aliases with the 0.25 s sampling; 3 s shows the sustained rate.
_RATE_WINDOW: Final = 3.0
_HISTORY_HEAD: Final = (
    "| date (UTC) | commit | 1. wall/floor | 1. 429s | 1. 2x wall/floor | 1. 2x 429 share "
    "| 2. vs bare | 2. vs serial | 3. RSS large | 3. B/item | 4. CPU/1k list | "
    "4. CPU/1k details | bench |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def verdict(ok: bool | None) -> str:
    """PASS / FAIL / a dash for figures without a target."""
    return "-" if ok is None else ("PASS" if ok else "FAIL")


# --- machine --------------------------------------------------------------------------------

def machine() -> dict[str, str]:
    """nproc, CPU model, RAM, OS, Python, commit and date of this run."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram": f"{psutil.virtual_memory().total / 1024**3:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "commit": _commit(),
        "date": datetime.now(UTC).strftime("%a %b %d %H:%M:%S UTC %Y"),
    }


def _commit() -> str:
    """Short HEAD, with ``+dirty`` when the work tree has changes (read-only git calls)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


# --- stdout ---------------------------------------------------------------------------------

def table_text(rows: list[Row]) -> str:
    """A compact fixed-width table for the terminal."""
    cols = [(r.scenario, r.metric, r.measured, r.target, verdict(r.ok)) for r in rows]
    head = ("scenario", "metric", "measured", "target", "result")
    widths = [max(len(str(c[i])) for c in [head, *cols]) for i in range(5)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
             for row in [head, tuple("-" * w for w in widths), *cols]]
    return "\n".join(lines)


# --- chart ----------------------------------------------------------------------------------

def _rolling(series: list[tuple[float, int, int]], window: float = 1.0
             ) -> tuple[list[float], list[float]]:
    """LMS 2xx answers per second over a trailing ``window``, at each sample time."""
    times, rates = [], []
    j = 0
    for t, ok, _ in series:
        while j + 1 < len(series) and series[j + 1][0] <= t - window:
            j += 1
        t0, ok0, _ = series[j]
        if t - t0 >= window * 0.5:
            times.append(t)
            rates.append((ok - ok0) / (t - t0))
    return times, rates


def plot(ctx: Context, path: Path = CHART) -> None:
    """Throughput over time of the throttled runs, and their cumulative 429s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = SIZES["throttled"]["rate"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    styles = {"matched": ("tab:blue", f"harvester at {rate}/s"),
              "2x": ("tab:red", f"harvester at {rate * 2}/s (2x too fast)"),
              "matched-20ms": ("tab:gray", f"harvester at {rate}/s, unscaled 20 ms latency")}
    for label, series in ctx.series.items():
        color, text = styles[label]
        times, rates = _rolling(series, _RATE_WINDOW)
        top.plot(times, rates, color=color, label=text, linewidth=1.4)
        bottom.step([t for t, _, _ in series], [n for _, _, n in series], where="post",
                    color=color, label=text)
    top.axhline(rate, color="black", linestyle="--", linewidth=1,
                label=f"server budget {rate}/s")
    top.set_ylabel(f"LMS answers 2xx / s ({_RATE_WINDOW:g} s window)")
    top.set_ylim(0, rate * 1.5)
    top.legend(loc="lower center", fontsize=8)
    top.set_title("Throttled full harvest: simulator /__stats polled every 0.25 s")
    bottom.set_ylabel("429 answers (cumulative)")
    bottom.set_xlabel("seconds since the harvester process started")
    bottom.legend(loc="upper left", fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- history --------------------------------------------------------------------------------

def _find(rows: list[Row], scenario_prefix: str, metric_prefix: str) -> Row | None:
    for r in rows:
        if r.scenario.startswith(scenario_prefix) and r.metric.startswith(metric_prefix):
            return r
    return None


def _short(row: Row | None) -> str:
    if row is None:
        return "n/a"
    value = row.measured.split(" (")[0]
    return value + (" ✗" if row.ok is False else "")


def history_line(ctx: Context, info: dict[str, str], bench_wall: float) -> str:
    """This run's line in the history table."""
    rows = ctx.rows
    mem = ctx.facts.get("memory", {})
    large = mem.get("large")
    rss = (f"{large['rss'] / MB:.0f} MB @ {large['items'] // 1000}k" if large else "n/a")
    cells = [
        info["date"], info["commit"],
        _short(_find(rows, "1. throttled, matched", "wall")),
        _short(_find(rows, "1. throttled, matched", "429")),
        _short(_find(rows, "1. throttled, 2x", "wall")),
        _short(_find(rows, "1. throttled, 2x", "share")),
        _short(_find(rows, "2.", "harvester wall")),
        _short(_find(rows, "2.", "harvester items")),
        rss,
        _short(_find(rows, "3. memory, listing", "RSS growth")),
        _short(_find(rows, "4. CPU, listing", "CPU")),
        _short(_find(rows, "4. CPU, with details", "CPU")),
        f"{bench_wall:.0f} s",
    ]
    return "| " + " | ".join(cells) + " |"


def _old_history(doc: Path) -> list[str]:
    try:
        text = doc.read_text()
    except OSError:
        return []
    m = re.search(re.escape(_HISTORY_BEGIN) + r"(.*?)" + re.escape(_HISTORY_END), text, re.S)
    if not m:
        return []
    return [line for line in m.group(1).splitlines()
            if line.startswith("| ") and not line.startswith("| date")]


# --- the document ---------------------------------------------------------------------------

def _md_table(rows: list[Row]) -> str:
    out = ["| scenario | metric | measured | target | result | notes |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        result = {True: "**PASS**", False: "**FAIL**", None: "-"}[r.ok]
        out.append(f"| {r.scenario} | {r.metric} | {r.measured} | {r.target} | {result} "
                   f"| {r.note} |")
    return "\n".join(out)


def _requests_text(requests: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{k} {dict(sorted(v.items()))}" for k, v in sorted(requests.items()))


def render(ctx: Context, info: dict[str, str], bench_wall: float, argv: list[str],
           doc: Path = DOC) -> str:
    """The whole Markdown document for this run."""
    f = ctx.facts
    t, u, mem = SIZES["throttled"], SIZES["unthrottled"], SIZES["memory"]
    failed = [r for r in ctx.rows if r.ok is False]
    history = [*_old_history(doc), history_line(ctx, info, bench_wall)][-_HISTORY_KEEP:]
    parts: list[str] = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m bench`) on "
        f"**{info['date']}** at commit `{info['commit']}`; every number below was measured "
        "in that run. Targets come from issue #7 and are ratios, so they hold on a noisy "
        "machine. Re-run `make bench` to regenerate this file and `docs/throughput.png`.",
        "",
        f"The run took **{bench_wall:.0f} s** (`{' '.join(argv)}`).",
        "",
        "## Machine",
        "",
        f"- {info['nproc']} CPUs: {info['cpu']}",
        f"- RAM: {info['ram']}",
        f"- OS: {info['os']}; Python {info['python']}",
        "- simulator, harvester and baselines all run on this machine, over loopback, as "
        "separate processes (they share the CPUs)",
        "",
        "## Results",
        "",
        _md_table(ctx.rows),
        "",
    ]
    if failed:
        parts += ["**Targets missed in this run:** "
                  + "; ".join(f"{r.scenario}: {r.metric} = {r.measured} (target {r.target})"
                              for r in failed) + ".", ""]
    else:
        parts += ["All targets met in this run.", ""]
    parts += ["![LMS throughput of the throttled runs](throughput.png)", ""]

    parts += ["## How each figure is measured", "",
              "Processes: the simulator is `python -m harvester.sim` (one per scenario); "
              "the harvester is `.venv/bin/harvester harvest --restart --progress off "
              "--quiet`. *Wall* is from spawning the harvester process to its exit "
              "(interpreter start-up included). CPU time and peak RSS come from "
              "`os.wait4()` on that one process: the kernel's own `ru_utime + ru_stime` "
              "and `ru_maxrss`, not sampling. Request counts come from the simulator's "
              "`/__stats`, which is reset before each run.", ""]
    if "throttled_matched" in f:
        m, x, m20 = f["throttled_matched"], f["throttled_2x"], f["throttled_matched-20ms"]
        n, ok, n429 = f["probe"]
        parts += [
            "### 1. Throttled full harvest",
            "",
            f"Simulator: {t['catalogs']} catalogs x {t['items']} items, LMS budget "
            f"`{t['rate']}/s` (DRF sliding log). Harvester: `--concurrency "
            f"{t['concurrency']}`, `--rate-lms {t['rate']}/s` (matched) and "
            f"`{t['rate'] * 2}/s` (2x too fast). "
            f"Sanity probe first: {n} back-to-back LMS calls got {ok} x 200 and "
            f"{n429} x 429, so the budget is really enforced.",
            "",
            f"Scaling the real budget (60/min) to {t['rate']}/s compresses time 60x; the "
            "network round trip is compressed too, to a simulator latency of "
            f"{t['latency_ms']} ms ± {t['jitter_ms']} ms (about 120 ms / 60), so that it "
            "takes the same share of a throttle window as against the real API. A cost paid "
            "once per window or once per run (start-up) weighs 60x more here than in "
            "production. For information, the matched run is repeated with an unscaled "
            f"{t['unscaled_latency_ms']} ms ± {t['unscaled_jitter_ms']} ms latency "
            "(no target).",
            "",
            f"Floor = LMS requests needed / budget: 1 catalog-list page + "
            f"{m['details']} details = {m['lms_ok']} requests / {t['rate']} per s = "
            f"{m['floor']:.2f} s. Content pages are not throttled and are not in the floor.",
            "",
            "| run | LMS 2xx | LMS 429 (first 2 s / later) | wall (process) "
            "| wall (manifest) | first detail at | sustained LMS rate | wall / floor "
            "| status |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, r in (("matched", m), ("2x too fast", x),
                         (f"matched, {m20['latency']:g} ms latency", m20)):
            parts.append(
                f"| {label} | {r['lms_ok']} | {r['lms_429']} ({r['early_429']} / "
                f"{r['late_429']}) | {r['wall']:.2f} s | {r['harvest_wall']:.2f} s | "
                f"{r['first_detail']:.2f} s | {r['sustained']:.2f}/s | "
                f"{r['wall'] / r['floor']:.3f} | {r['status']} |")
        parts += [
            "",
            "*wall (manifest)* is the harvester's own `wall_seconds` (without interpreter "
            "start-up and imports). *first detail at*: when the simulator had counted the "
            "first detail answer (0.25 s resolution): start-up, token, catalog list and "
            "listing come first. *sustained LMS rate*: LMS 2xx answers per second from "
            f"then to the end, against the budget of {t['rate']}/s. So wall ≈ first detail "
            "+ remaining requests / sustained rate.",
            "",
            f"All requests of the matched run: {_requests_text(m['requests'])}. "
            f"Of the 2x run: {_requests_text(x['requests'])}. Of the matched run at "
            f"{m20['latency']:g} ms: {_requests_text(m20['requests'])}.",
            "",
        ]
    if "unthrottled" in f:
        un = f["unthrottled"]
        h, b, s = un["harvester"], un["bare"], un["serial"]
        parts += [
            "### 2. Unthrottled, 20 ms latency",
            "",
            f"Simulator: {u['catalogs']} catalogs x {u['items']} items, no budget, "
            f"{u['latency_ms']} ms latency on every request. Harvester: "
            f"`--concurrency {u['concurrency']} --rate-lms {UNLIMITED}` (its gate "
            "cannot be switched off; this budget never binds).",
            "",
            f"The harvester and the bare loop run alternately, {u['rounds']} times each; the "
            "best wall of each counts (the machine is shared; best-of-N is the least noisy "
            "estimate).",
            "",
            f"- **bare** (`bench/baseline.py bare`): plain aiohttp, the same requests (checked: "
            f"the simulator counted identical requests per class and status for both: "
            f"{_requests_text(un['h_requests'])}), the same concurrency ({u['concurrency']} "
            f"in flight, 4 content pages per catalog, 2 catalogs listed at a time), no "
            "retries, throttle, ledger or files. Peak concurrency seen by the simulator: "
            f"harvester {un['h_peak']}, bare {un['b_peak']}.",
            f"- **serial** (`bench/baseline.py serial`): follows `next`, then each item's "
            f"detail one at a time; run for a {u['serial_budget_s']:.0f} s slice "
            f"({s['items']} items, {s['requests']} requests in {s['wall']:.2f} s), since "
            "its rate is steady. Its items/s uses its own clock (start-up excluded), which "
            "favours it.",
            "",
            "| client | items | wall (best) | all walls | items/s | CPU (user+sys) "
            "| simulator CPU |",
            "|---|---|---|---|---|---|---|",
            f"| harvester | {un['items']} | {h.wall:.2f} s | {_walls(un['h_walls'])} | "
            f"{un['items'] / h.wall:.0f} | {h.cpu:.2f} s | {un['h_sim_cpu']:.2f} s |",
            f"| bare aiohttp | {un['bare_items']} | {b.wall:.2f} s | {_walls(un['b_walls'])} | "
            f"{un['bare_items'] / b.wall:.0f} | {b.cpu:.2f} s | {un['b_sim_cpu']:.2f} s |",
            f"| serial | {s['items']} | {s['wall']:.2f} s | - | {s['items'] / s['wall']:.1f} "
            "| - | - |",
            "",
            "Two ceilings bound the speed-up over the serial client, whatever the client. "
            "By Little's law it cannot exceed the number of requests in flight, so >= 20x "
            "needs a concurrency above 20 (at 16 the ceiling is 16x); this scenario uses "
            f"{u['concurrency']}. And the simulator serves from one Python thread: in the "
            f"bare run it used {un['b_sim_cpu']:.2f} s of CPU for {un['bare_items']} items, "
            f"so it cannot serve more than ~{un['ceiling']:.0f} items/s, "
            f"{un['ceiling'] / (s['items'] / s['wall']):.1f}x the serial rate, on this "
            "machine, before any client overhead.",
            "",
        ]
    if "memory" in f:
        mm = f["memory"]
        sm, lg, dt = mm["small"], mm["large"], mm["details"]
        parts += [
            "### 3. Memory and 4. CPU per item",
            "",
            "One catalog, simulator instant (no latency, no budget), harvester "
            f"`--concurrency {mem['concurrency']} --rate-lms {UNLIMITED}`, listing "
            "only (`--no-details`) at two sizes, and with details at a smaller size "
            "(every detail is a request; at this size it fits the time budget).",
            "",
            "| run | items | wall | peak RSS | CPU user+sys | CPU s / 1,000 items "
            "| simulator CPU |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, r in (("listing only", sm), ("listing only", lg), ("with details", dt)):
            parts.append(
                f"| {label} | {r['items']:,} | {r['wall']:.1f} s | {r['rss'] / MB:.1f} MB | "
                f"{r['cpu']:.1f} s | {r['cpu'] / r['written'] * 1000:.3f} | "
                f"{r['sim_cpu']:.1f} s |")
        parts += [
            "",
            f"The simulator, not the harvester, sets the pace of the listing runs (it spends "
            f"more CPU per page than the harvester; both share {info['nproc']} CPUs). "
            + ("A 1,000,000-item listing was measured directly (`--full`)."
               if lg["items"] == mem["full"] else
               f"A 1,000,000-item listing takes ~{_minutes(sm, mem['full'])} here, too long "
               "for a few-minute suite, so the default run measures "
               f"{sm['items']:,} and {lg['items']:,} items and extrapolates the peak RSS "
               "at 1,000,000 linearly from their difference. Python's set grows in "
               "power-of-two steps, so the per-item slope between two sizes is noisy by "
               "a few bytes. `make bench BENCH_ARGS=--full` runs the real 1,000,000."),
            "",
        ]
    parts += _publish_section(f)
    parts += _tenants_section(f)
    parts += [
        "## Reproduce",
        "",
        "```sh",
        f"make bench                       # the whole suite ({bench_wall:.0f} s in this run)",
        "make bench BENCH_ARGS=--full     # memory at a real 1,000,000 items (minutes more)",
        ".venv/bin/python -m bench --help # options: --only, --full, --no-doc",
        "```",
        "",
        "## History",
        "",
        "One line per `make bench` run (kept from the previous version of this file), "
        "so the numbers from before a change stay next to those after it. "
        "✗ marks a missed target.",
        "",
        _HISTORY_BEGIN,
        _HISTORY_HEAD,
        *history,
        _HISTORY_END,
        "",
    ]
    return "\n".join(parts)



def _publish_section(f: dict[str, Any]) -> list[str]:
    """Scenario 6: how the cost of ``--publish`` is measured."""
    if "publish" not in f:
        return []
    c, p = PUBLISH, f["publish"]
    return [
        "### 6. Publish to object storage (issue #13)", "",
        (f"A listing-only harvest of {c['catalogs']} x {c['items']:,} items "
         f"({p['files']} files, {p['bytes'] / 1e6:.0f} MB) is published to moto's S3 "
         "server (`moto_server`, its own process on loopback) through s3fs. Baseline: "
         "`s3fs.S3FileSystem().put(files, keys)` of exactly the files a publish uploads, "
         "timed around the call in a fresh interpreter. Publish: `harvester harvest "
         "--publish s3://...` on the already complete output, its own `seconds` from the "
         "`publish.done` log event: listing the prefix, reading the index, a sha256 of "
         "every file, the uploads (16 at a time), index checkpoints and the manifest last. "
         f"Each to a fresh prefix, alternating, best of {c['rounds']}: baseline "
         f"{_walls(p['base'])} s, publish {_walls(p['pub'])} s. An unchanged re-publish "
         f"(hash everything, upload nothing) took {p['again']:.2f} s."), "",
    ]


def _tenants_section(f: dict[str, Any]) -> list[str]:
    """Scenario 5: how the tenant fan-out is measured, and the knee."""
    if "tenants" not in f:
        return []
    c, main = TENANTS, f["tenants"]["main"]
    run = main["run"]
    knee = "; ".join(f"{s['tenants']} tenants: worst {s['worst']:.2f}x, {s['n429']} 429s, "
                     f"harvester {s['run'].cpu / s['run'].wall:.2f} cores, simulator "
                     f"{s['sim_cpu'] / s['run'].wall:.2f} cores, RSS "
                     f"{s['run'].max_rss / MB:.0f} MB" for s in f["tenants"]["knee"])
    return [
        "### 5. Tenant fan-out (issue #13)", "",
        (f"`harvester sim --tenants {c['tenants']} --catalogs 1 --items {c['items']} "
         f"--rate-lms {c['rate']}/s` (each credential its own budget, {c['latency_ms']} ms "
         f"latency) in one process; `harvester harvest` with the `[[tenants]]` config the "
         f"simulator prints, `--rate-lms {c['rate']}/s --concurrency {c['concurrency']}`, "
         "in another. A tenant's floor is its own LMS answers (catalog list + details, "
         "from the simulator's per-credential counters) divided by its rate; its wall "
         "is its own manifest's `wall_seconds` (client open to manifest). "
         f"This run: {main['requests']:,} requests in {run.wall:.1f} s, worst tenant "
         f"{main['worst']:.3f}x its floor, {main['n429']} 429s, harvester "
         f"{run.cpu:.1f} CPU s ({1000 * run.cpu / main['requests']:.2f} per 1,000 "
         f"requests), peak RSS {run.max_rss / MB:.0f} MB; the simulator used "
         f"{main['sim_cpu']:.1f} CPU s of the same two cores."), "",
        (f"The knee, with {c['knee_items']} items per tenant, going up until the worst "
         f"tenant passes {c['wall_target']}x or a 429 appears: {knee}. Both processes "
         "share this machine's cores, so the knee is where the pair stops keeping up: "
         "the simulator's share is shown beside the harvester's."), "",
    ]


def _walls(walls: list[float]) -> str:
    return ", ".join(f"{w:.2f}" for w in walls)


def _minutes(small: dict[str, Any], n: int) -> str:
    return f"{small['wall'] * n / small['items'] / 60:.1f} min"


def write_doc(ctx: Context, bench_wall: float, argv: list[str], doc: Path = DOC) -> Path:
    """Render and write ``docs/benchmarks.md``; return its path."""
    text = render(ctx, machine(), bench_wall, argv, doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return doc
