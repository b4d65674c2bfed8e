"""`casam bench`: run a grid of methods x noise settings x seeds and write the results table.

    casam bench --grid benchmarks/grid.yaml --out docs/benchmarks [--workers N] [--quick]
                [--only PATTERN] [--curves NOISE] [--report-only]

Exit status: 0 when every run finished, 1 when some run failed (the report still covers the
finished ones; run the same command again to retry the others), 2 for a grid or an option that
cannot be used (nothing is run then), 130 when interrupted (finished runs and checkpoints are kept).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from casam.cli import OneLineErrorParser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="casam bench",
        description=(
            "Run a benchmark grid (methods x noise settings x seeds) in parallel worker processes, resumably, "
            "and write OUT/results.csv, OUT/table.md and PNG plots from the run folders in OUT/runs."
        ),
    )
    parser.add_argument("--grid", default="benchmarks/grid.yaml", metavar="FILE", help="grid YAML file (default: benchmarks/grid.yaml)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder: runs/ and the report go here")
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="runs at a time (default: one per core)")
    parser.add_argument("--quick", action="store_true", help="the grid's CI-sized variant (its quick: block; default 2 epochs, one seed, 500 samples, mlp)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="PATTERN",
        help="run only the runs whose id NOISE/METHOD/seedK matches this shell pattern (repeatable), e.g. 'symmetric:0.5/*'",
    )  # fmt: skip
    parser.add_argument(
        "--curves", action="append", default=[], metavar="NOISE",
        help="noise setting to draw per-epoch curves for (repeatable; default symmetric:0.5 when in the grid)",
    )  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="run nothing: re-make the report from the run folders in OUT/runs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per finished run is still printed)")
    return parser


def main(argv: list[str]) -> int:
    from casam.bench import (
        GridError,
        GridNotFoundError,
        check_data,
        check_run_folders,
        execute,
        expand_grid,
        load_grid,
        lock_out,
        write_gitignore,
        write_report,
    )

    args = build_parser().parse_args(argv)
    lock = None
    try:
        if args.workers is not None and args.workers < 1:
            raise GridError(f"--workers must be at least 1; got {args.workers}")
        if args.report_only:
            extra = [flag for flag, given in (("--quick", args.quick), ("--only", args.only), ("--workers", args.workers is not None)) if given]
            if extra:
                raise GridError(f"--report-only runs nothing, so {', '.join(extra)} would be ignored; drop it")
            if not os.path.isdir(os.path.join(args.out, "runs")):
                raise GridError(f"{args.out} holds no runs/ folder, so there is nothing to report; run casam bench without --report-only first")
            # The grid, when there is one, only orders the tables; the numbers come from the run folders.
            grid = load_grid(args.grid) if os.path.isfile(args.grid) else None
            outcomes = []
        else:
            grid = load_grid(args.grid)
            runs = expand_grid(grid, out=args.out, quick=args.quick, only=args.only)
            for noise in args.curves:
                if noise not in grid.noises:
                    raise GridError(f"--curves {noise!r} is not a noise setting of the grid; choose one of {', '.join(grid.noises)}")
            check_run_folders(runs)
            check_data(runs)
            lock = lock_out(args.out)  # held until the report is written
            check_run_folders(runs)  # again, now that no other bench can be writing them
            write_gitignore(args.out)
            print(f"casam bench: {len(runs)} runs from {args.grid}{' (--quick)' if args.quick else ''} into {args.out}/runs")
            start = time.perf_counter()
            outcomes = execute(runs, workers=args.workers, progress=not args.no_progress)
            counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "resumed", "skipped", "failed")}
            print(
                f"casam bench: {counts['done']} done, {counts['resumed']} resumed, {counts['skipped']} skipped (finished before), "
                f"{counts['failed']} failed; wall time {time.perf_counter() - start:.0f} s"
            )
        written = write_report(
            args.out,
            noise_order=grid.noises if grid else None,
            method_order=list(grid.methods) if grid else None,
            curves=args.curves,
        )
    except KeyboardInterrupt:
        print("casam bench: interrupted; finished runs and checkpoints are kept, the same command resumes", file=sys.stderr)
        return 130
    except (GridError, GridNotFoundError, ValueError) as error:
        if os.environ.get("CASAM_DEBUG"):
            raise
        print(f"casam bench: {error}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.close()
    print("casam bench: wrote " + ", ".join(str(p) for p in written))
    failed = [o for o in outcomes if o.status == "failed"]
    for outcome in failed:
        print(f"casam bench: failed: {outcome.run_id}: {outcome.message}", file=sys.stderr)
    return 1 if failed else 0
