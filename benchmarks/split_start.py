"""How each CA-SAM run's split started, and how the run ended (docs/casam-split.md, round 27).

    python benchmarks/split_start.py 'docs/*/runs/symmetric-0.8/casam+*' --exclude @mu0.5 @mu0.25 heavy-warmup

At heavy noise a run's fate is visible when the split starts: the likely-clean precision of that first
epoch (a figure only a benchmark with clean labels has) separates the runs that learn from those that
stay low. Per finished run folder (summary.json present) under the method folders matched by the glob
patterns, one line: the first epoch whose split set samples aside (after the warm-up), its selection
precision, the best test accuracy and its epoch, and the last epoch's test accuracy, sorted by that
precision. `--exclude` drops the folders whose path contains any of the given strings.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from casam.bench import split_epochs
from casam.train import read_metrics


def split_start(rows: list[dict]) -> tuple[int, float] | None:
    """(1-based epoch, precision) of the first epoch whose likely-clean set left samples out; None if none did."""
    split = split_epochs(rows)
    return split[0] if split else None


def run_lines(patterns: list[str], *, exclude: list[str] = ()) -> list[dict]:
    """One dict per finished run with a split (figures in %), sorted by the precision where the split started."""
    lines = []
    for pattern in patterns:
        for method_dir in sorted(glob.glob(pattern)):
            for run in sorted(Path(method_dir).glob("seed*")):
                if any(part in str(run) for part in exclude) or not (run / "summary.json").is_file():
                    continue
                rows = read_metrics(run / "metrics.jsonl")
                start = split_start(rows)
                if start is None:
                    continue
                test = [row["test_acc"] for row in rows]
                best = max(range(len(test)), key=test.__getitem__)
                lines.append({"run": str(run), "split_epoch": start[0], "precision": 100 * start[1],
                              "best": 100 * test[best], "best_epoch": best + 1, "last": 100 * test[-1], "epochs": len(rows)})
    return sorted(lines, key=lambda line: (line["precision"], line["run"]))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patterns", nargs="+", help="glob patterns of method folders (runs/<noise>/<method>)")
    parser.add_argument("--exclude", nargs="*", default=[], help="drop run folders whose path contains any of these")
    args = parser.parse_args(argv)
    lines = run_lines(args.patterns, exclude=args.exclude)
    if not lines:
        sys.exit("split_start.py: no finished CA-SAM run with a split under those patterns")
    print("| precision at the split's start (epoch) | best test (epoch) | last test | epochs | run |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for line in lines:
        print(f"| {line['precision']:.1f} ({line['split_epoch']}) | {line['best']:.1f} ({line['best_epoch']}) | "
              f"{line['last']:.1f} | {line['epochs']} | {line['run']} |")
    return lines


if __name__ == "__main__":
    main()
