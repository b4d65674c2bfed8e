"""`casam plot RUN_DIR... [--out FILE]`: one PNG comparing runs epoch by epoch."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="casam plot", description="Compare runs: test accuracy, selection precision and memorisation per epoch.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by casam train")
    parser.add_argument("--out", default="runs.png", help="PNG to write (default: runs.png)")
    parser.add_argument("--title", default=None)
    parser.add_argument(
        "--split", action="store_true",
        help="one CA-SAM run's split instead: selection precision and recall per class and epoch, gradient cosine per step",
    )
    args = parser.parse_args(argv)
    from casam.plots import plot_runs, plot_split

    try:
        if args.split:
            if len(args.runs) != 1:
                raise ValueError("--split draws one run; give one RUN_DIR")
            path = plot_split(args.runs[0], args.out)
        else:
            path = plot_runs(args.runs, args.out, title=args.title)
    except (FileNotFoundError, ValueError) as error:
        print(f"casam plot: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
