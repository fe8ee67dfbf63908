"""``python -m bench``: run every scenario, print the table, regenerate the docs.

Exit status: 0 when every target is met, 1 when one is missed, 2 when a scenario could
not run at all (the docs are then left as they were).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import report, scenarios
from bench.procs import ROOT, BenchError


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the suite, report."""
    args_list = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--full", action="store_true",
                        help="memory scenario at a real 1,000,000 items (~4 min more)")
    parser.add_argument("--only", action="append",
                        choices=[s.__name__ for s in scenarios.ALL],
                        help="run only this scenario (repeatable); implies --no-doc")
    parser.add_argument("--no-doc", action="store_true",
                        help="do not rewrite docs/benchmarks.md and docs/throughput.png")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(args_list)

    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="edx-bench-"))
    ctx = scenarios.Context(work=work, full=args.full)
    try:
        scenarios.run_all(ctx, set(args.only) if args.only else None)
    except BenchError as exc:
        print(f"[bench] could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.monotonic() - t0
    print()
    print(report.table_text(ctx.rows))
    print(f"\n[bench] total {wall:.0f} s")
    if not (args.no_doc or args.only):
        if ctx.series:
            report.plot(ctx)
        doc = report.write_doc(ctx, wall, ["python", "-m", "bench", *args_list])
        print(f"[bench] wrote {doc.relative_to(ROOT)} and {report.CHART.relative_to(ROOT)}")
    return 1 if any(r.ok is False for r in ctx.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
