"""The tuning rounds' rule on paired held-out differences: one candidate against one default.

    python benchmarks/paired.py docs/casam-tuning/runs \
        --default casam+elr@switch-lambda0.5 --candidate casam+elr@switch --labels "lambda 0.5" "lambda 1"

Two runs of the same noise setting and seed are scored on the same held-out noisy images, so the
rounds judge the per-seed difference d = held-out(candidate) - held-out(default) at the last epoch
(points of noisy accuracy), not the two figures apart. The rule of CA-SAM's rounds 9-12 and of the
baselines' rounds (written in benchmarks/casam-tuning.yaml and baselines-tuning.yaml before the runs):

  (a) mean(d) over all pairs > 2 SE, with SE = sd(d) / sqrt(n);
  (b) mean(d) > 0 at each setting (the rules of rounds 20-24 ask more: every d > 0, printed as (b+)
      and returned as `every_d_positive`);
  (c) at the guard (symmetric 80 %, seed 100) the candidate is at most `--guard-margin` points below
      the guard's default (`--guard-default`, the default method unless given).

Prints the docs' table rows (held-out and test accuracy, the lowest selection precision of the run,
its last recall and memorisation, for both methods), the per-setting means, each condition with its
figures, and as its last line a JSON object with the same figures and `verdict`: "adopt", "keep" or
"pending" (a pair or the guard not finished: run folders count once their summary.json exists); "report"
with `--score test`.

`--score test` pairs the runs on test accuracy at the last epoch instead, for runs without held-out
data: a report on the table's seeds, where nothing is tuned and the table's own figure is the one to
pair (round 26, benchmarks/table-30epochs.yaml). Never for a tuning rule: that would tune on the test set.

`--default-runs` takes the default's runs from another report (CA-SAM+SCE in docs/casam-tuning against
SGD+SCE in docs/baselines-tuning); two runs are paired only if their configs draw the same held-out
images (`HELD_OUT_KEYS`), which the tuning reports share by construction.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from casam.bench import epoch_figures
from casam.config import TrainConfig, load_run_config
from casam.train import read_metrics

ROUNDS_PAIRS = ["symmetric-0.5:100-104", "asymmetric-0.4:100-102", "instance-0.4:100-102"]
ROUNDS_GUARD = "symmetric-0.8:100"
# What decides a run's training subset, its held-out images and their noisy labels (casam.data, casam.noise).
HELD_OUT_KEYS = ("dataset", "train_subset", "val_size", "val_fraction", "noise", "noise_seed", "seed")


def parse_pairs(spec: str) -> tuple[str, list[int]]:
    """'symmetric-0.5:100-104' -> ('symmetric-0.5', [100, ..., 104]); 'x:7' -> ('x', [7])."""
    noise, sep, seeds = spec.partition(":")
    first, _, last = seeds.partition("-")
    if not sep or not noise or not first.isdigit() or (last and not last.isdigit()):
        raise ValueError(f"pairs must look like symmetric-0.5:100-104, got {spec!r}")
    first_seed, last_seed = int(first), int(last or first)
    if last_seed < first_seed:
        raise ValueError(f"seed range runs backwards in {spec!r}")
    return noise, list(range(first_seed, last_seed + 1))


SCORES = {"held-out": "held_out", "test": "test"}  # --score -> the figure d is taken on


def run_figures(folder: Path, *, held_out: bool = True) -> dict | None:
    """A finished run's last-epoch figures in % (None while it has no summary.json).

    held_out=False: a run without held-out data is accepted (its `held_out` is NaN).

    `lowest_precision` is `casam bench`'s (`casam.bench.epoch_figures`): over the epochs whose split set
    samples aside, as the warm-up's all-clean epochs would hide nothing. NaN for methods without a split.
    """
    if not (folder / "summary.json").exists():
        return None
    rows = read_metrics(folder / "metrics.jsonl")
    figures = epoch_figures(rows)
    if figures["val_acc"] is None and held_out:
        raise ValueError(f"{folder} has no held-out accuracy: was it run with --val-size or --val-fraction?")
    last = rows[-1]

    def pct(value):
        return float("nan") if value is None else 100.0 * value

    return {"held_out": pct(figures["val_acc"]), "test": pct(last["test_acc"]),
            "lowest_precision": pct(figures["min_sel_precision"]),
            "recall": pct(last.get("sel_recall")), "memorization": pct(last.get("memorization"))}


def check_same_held_out(base: Path, cand: Path) -> None:
    """Refuse a pair whose runs were not scored on the same held-out images (ValueError).

    An option a run's config.yaml lacks (saved before it existed, e.g. val_size) has its default, as `casam bench`
    reads a saved run."""
    paths = [folder / "config.yaml" for folder in (base, cand)]
    configs = [TrainConfig.from_dict(load_run_config(path), source=str(path)).to_dict() if path.exists() else None for path in paths]
    if None in configs:
        return  # a folder without its config (the tests' synthetic runs): nothing to compare
    differ = [key for key in HELD_OUT_KEYS if configs[0].get(key) != configs[1].get(key)]
    if differ:
        raise ValueError(f"{base} and {cand} do not share their held-out images: {', '.join(differ)} differ")


def compare(runs: Path, default: str, candidate: str, *, pairs: list[str] = ROUNDS_PAIRS,
            guard: str | None = ROUNDS_GUARD, guard_default: str | None = None,
            guard_margin: float = 1.0, default_for: list[tuple[str, str]] = (),
            candidate_for: list[tuple[str, str]] = (), default_runs: Path | None = None,
            score: str = "held_out") -> dict:
    """The rule's figures for `candidate` against `default` under `runs/<noise>/<method>/seed<k>`.

    score: "held_out" (the tuning rule's) or "test" (reports on the table's seeds; see the module docstring).

    default_for, candidate_for: (pairs spec, method) for pairs whose runs sit under another name
    (rounds 9-10 reuse round 8's `casam+ce@mu0.5` runs at symmetric 50 %, seeds 100-102).
    default_runs: the default's (and the guard default's) runs folder, if not `runs`.
    """
    if score not in SCORES.values():
        raise ValueError(f"score must be one of {', '.join(SCORES.values())}, got {score!r}")
    default_root = default_runs or runs
    need = score == "held_out"  # runs without held-out data are refused only when d is taken on it

    def pair_figures(base_folder: Path, cand_folder: Path):
        base, cand = run_figures(base_folder, held_out=need), run_figures(cand_folder, held_out=need)
        if base is not None and cand is not None:
            check_same_held_out(base_folder, cand_folder)
        return base, cand

    def named(overrides: list[tuple[str, str]]) -> dict[tuple[str, int], str]:
        return {(noise, seed): method for spec, method in overrides for noise, seeds in [parse_pairs(spec)] for seed in seeds}

    default_at, candidate_at = named(default_for), named(candidate_for)
    rows, pending, by_setting = [], [], {}
    for spec in pairs:
        noise, seeds = parse_pairs(spec)
        for seed in seeds:
            base, cand = pair_figures(default_root / noise / default_at.get((noise, seed), default) / f"seed{seed}",
                                      runs / noise / candidate_at.get((noise, seed), candidate) / f"seed{seed}")
            if base is None or cand is None:
                pending.append(f"{noise}/seed{seed}")
                continue
            d = cand[score] - base[score]
            rows.append({"setting": noise, "seed": seed, "default": base, "candidate": cand, "d": d})
            by_setting.setdefault(noise, []).append(d)
    ds = [row["d"] for row in rows]
    mean = statistics.mean(ds) if ds else float("nan")
    se = statistics.stdev(ds) / math.sqrt(len(ds)) if len(ds) > 1 else float("nan")
    setting_means = {noise: statistics.mean(values) for noise, values in by_setting.items()}
    result = {"default": default, "candidate": candidate, "score": score, "n": len(ds), "mean_d": mean,
              "sd_d": statistics.stdev(ds) if len(ds) > 1 else float("nan"), "two_se": 2 * se,
              "setting_means": setting_means, "rows": rows, "pending": pending,
              "a": len(ds) > 1 and mean > 2 * se,
              "b": bool(setting_means) and all(value > 0 for value in setting_means.values()),
              "every_d_positive": bool(ds) and all(d > 0 for d in ds)}
    if guard is not None:
        noise, seeds = parse_pairs(guard)
        if len(seeds) != 1:
            raise ValueError(f"the guard is one run, got {guard!r}")
        base, cand = pair_figures(default_root / noise / (guard_default or default) / f"seed{seeds[0]}",
                                  runs / noise / candidate / f"seed{seeds[0]}")
        if base is None or cand is None:
            pending.append(f"{noise}/seed{seeds[0]} (guard)")
            result["guard"], result["c"] = None, False
        else:
            result["guard"] = {"default": base, "candidate": cand, "d": cand[score] - base[score]}
            result["c"] = result["guard"]["d"] >= -guard_margin
    else:
        result["guard"], result["c"] = None, True
    if pending:
        result["verdict"] = "pending"
    elif score == "test":
        result["verdict"] = "report"  # no default moves on the test set
    else:
        result["verdict"] = "adopt" if result["a"] and result["b"] and result["c"] else "keep"
    return result


def setting_name(noise: str) -> str:
    """'symmetric-0.5' -> 'symmetric 50 %', as the docs' tables write it."""
    kind, _, rate = noise.rpartition("-")
    try:
        return f"{kind} {100 * float(rate):g} %"
    except ValueError:
        return noise


def _fmt(value: float, digits: int) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def table(result: dict, labels: tuple[str, str]) -> list[str]:
    """The docs' markdown rows: default then candidate in each column pair."""
    a, b = labels
    d = "d" if result["score"] == "held_out" else "d (test)"
    lines = [f"| setting | seed | held-out: {a} | {b} | {d} | test: {a} | {b} | lowest P: {a} | {b} "
             f"| recall: {a} | {b} | mem.: {a} | {b} |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["rows"]:
        base, cand = row["default"], row["candidate"]
        cells = [setting_name(row["setting"]), str(row["seed"]), _fmt(base["held_out"], 2), _fmt(cand["held_out"], 2),
                 f"{row['d']:+.2f}"]
        for key in ("test", "lowest_precision", "recall", "memorization"):
            cells += [_fmt(base[key], 1), _fmt(cand[key], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="a bench report's runs folder (docs/casam-tuning/runs)")
    parser.add_argument("--default", required=True, help="the method that stays unless the rule says otherwise")
    parser.add_argument("--default-runs", type=Path, help="the default's runs folder, if another report's (default: RUNS)")
    parser.add_argument("--candidate", required=True)
    parser.add_argument("--pairs", nargs="+", default=ROUNDS_PAIRS, help="noise:first-last seed (default: rounds 9-12's 11 pairs)")
    parser.add_argument("--guard", default=ROUNDS_GUARD, help="noise:seed, or 'none'")
    parser.add_argument("--guard-default", help="the guard's default method (default: --default)")
    parser.add_argument("--guard-margin", type=float, default=1.0, help="points the candidate may lose at the guard")
    parser.add_argument("--score", choices=list(SCORES), default="held-out",
                        help="the accuracy d is taken on: held-out (tuning rules) or test (reports on the table's seeds)")
    parser.add_argument("--labels", nargs=2, metavar=("DEFAULT", "CANDIDATE"), help="column names (default: the methods)")
    parser.add_argument("--default-for", nargs=2, action="append", default=[], metavar=("PAIRS", "METHOD"),
                        help="the default's runs for these pairs are under METHOD (repeatable)")
    parser.add_argument("--candidate-for", nargs=2, action="append", default=[], metavar=("PAIRS", "METHOD"),
                        help="the candidate's runs for these pairs are under METHOD (repeatable)")
    args = parser.parse_args(argv)
    for folder in (args.runs, args.default_runs):
        if folder is not None and not folder.is_dir():
            parser.error(f"no runs folder {folder}")
    try:
        result = compare(args.runs, args.default, args.candidate, pairs=args.pairs,
                         guard=None if args.guard == "none" else args.guard,
                         guard_default=args.guard_default, guard_margin=args.guard_margin,
                         default_for=[tuple(x) for x in args.default_for],
                         candidate_for=[tuple(x) for x in args.candidate_for], default_runs=args.default_runs,
                         score=SCORES[args.score])
    except ValueError as err:
        parser.error(str(err))
    print("\n".join(table(result, tuple(args.labels or (args.default, args.candidate)))))
    print()
    for noise, value in result["setting_means"].items():
        print(f"{noise}: mean d {value:+.3f}")
    print(f"(a) mean d {result['mean_d']:+.3f} over {result['n']} pairs, sd {result['sd_d']:.3f}, "
          f"2 SE {result['two_se']:.3f}: {'yes' if result['a'] else 'no'}")
    print(f"(b) positive at each setting: {'yes' if result['b'] else 'no'}")
    print(f"(b+) positive on every pair: {'yes' if result['every_d_positive'] else 'no'}")
    if result["guard"] is not None:
        g = result["guard"]
        print(f"(c) guard: {g['candidate']['held_out']:.2f} against {g['default']['held_out']:.2f} "
              f"({g['d']:+.2f}; test {g['candidate']['test']:.1f} against {g['default']['test']:.1f}): "
              f"{'yes' if result['c'] else 'no'}")
    for item in result["pending"]:
        print(f"pending: {item}")
    print(json.dumps({key: value for key, value in result.items() if key != "rows"}, default=str))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
