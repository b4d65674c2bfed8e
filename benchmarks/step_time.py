"""Median time of one training step under SGD, SAM and CA-SAM, on the same model and batch.

    python benchmarks/step_time.py                       # both models, 9 rounds x 3 steps (~1 min on 2 idle cores)
    python benchmarks/step_time.py --models cnn --rounds 15
    python benchmarks/step_time.py --models cnn --groups 8  # also CA-SAM with a perturbation per group (--perturb-groups)

Each round times `--steps` steps of each optimizer, interleaved step by step (SGD, SAM, CA-SAM, SGD,
..., the order rotating from round to round so that none always runs first), after `--warmup`
untimed steps of each made once at the start. A round gives two ratios, CA-SAM/SAM and SAM/SGD,
from that round's per-step medians; the
reported figure is the median of the per-round ratios, which cancels most of the slow drift of a
shared machine. Goals: CA-SAM/SAM <= 1.05 (CA-SAM's extra work is a history update and a mask on
(B, C) tensors) and SAM/SGD <= 2.05 (two forward-backward passes).

A step is what a training loop does per batch: forward, per-sample losses, the optimizer's passes;
SAM and CA-SAM freeze batch-norm statistics in their second pass. CA-SAM runs past its warm-up
(the split is computed every step) with the agreement criterion on a history of 50,000 samples.

The last line printed is a JSON object: `casam_over_sam` and `sam_over_sgd` are the largest of the
per-model medians (the worst model decides whether a goal is met), and `models` holds each model's
median step times (seconds) and ratios. With `--groups G`, a fourth optimizer, CA-SAM's
`grouped_step` with G groups, joins the rotation and `groups_over_casam` is its ratio to CA-SAM.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from casam.history import SampleHistory
from casam.models import build_model
from casam.optim import CASAM, SAM, frozen_bn_stats

# name -> (in_channels, image side, default batch size)
MODELS = {"cnn": (1, 28, 128), "preact_resnet18": (3, 32, 32)}
HISTORY_SIZE = 50_000


def make_runner(kind: str, model_name: str, *, batch: int, num_classes: int, seed: int, groups: int = 1):
    """A zero-argument function doing one training step of `kind` on a fixed batch."""
    channels, side, _ = MODELS[model_name]
    with torch.random.fork_rng(devices=[]):  # same initial weights for the three; global RNG left as it was
        torch.manual_seed(seed)
        model = build_model(model_name, num_classes=num_classes, in_channels=channels).train()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, side, side, generator=gen)
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    idx = torch.randperm(HISTORY_SIZE, generator=gen)[:batch]
    kwargs = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)

    if kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), **kwargs)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y, reduction="none").mean().backward()
            opt.step()

    elif kind == "sam":
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, **kwargs)

        def step():
            opt.first_step(F.cross_entropy(model(x), y, reduction="none"))
            with frozen_bn_stats(model):
                losses2 = F.cross_entropy(model(x), y, reduction="none")
            opt.second_step(losses2)

    elif kind in ("casam", "casam-groups"):
        history = SampleHistory(HISTORY_SIZE, num_classes, criterion="agreement")
        opt = CASAM(model.parameters(), torch.optim.SGD, history=history, rho=0.05, warmup_epochs=0, **kwargs)

        def losses_of(rows, targets):
            with frozen_bn_stats(model):
                return F.cross_entropy(model(x[rows]), targets, reduction="none")

        def step():
            logits = model(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            if kind == "casam-groups":
                opt.grouped_step(losses, logits=logits, indices=idx, labels=y, losses_of=losses_of, groups=groups)
                return
            opt.first_step(losses, logits=logits, indices=idx, labels=y)
            opt.second_step(losses_of(slice(None), y))

    else:
        raise ValueError(f"unknown optimizer {kind!r}")
    return step


def time_step(step) -> float:
    """Wall time of one call, in seconds."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def bench_model(model_name: str, *, batch: int, rounds: int, steps: int, warmup: int, seed: int, groups: int = 1) -> dict:
    kinds = ("sgd", "sam", "casam") + (("casam-groups",) if groups > 1 else ())
    runners = {k: make_runner(k, model_name, batch=batch, num_classes=10, seed=seed, groups=groups) for k in kinds}
    for kind in kinds:
        for _ in range(warmup):
            runners[kind]()
    per_round = {k: [] for k in kinds}
    ratios = {"casam_over_sam": [], "sam_over_sgd": []} | ({"groups_over_casam": []} if groups > 1 else {})
    for r in range(rounds):
        order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
        times = {k: [] for k in kinds}
        for _ in range(steps):  # interleaved step by step: the three see the same machine load
            for k in order:
                times[k].append(time_step(runners[k]))
        got = {k: statistics.median(v) for k, v in times.items()}
        for k in kinds:
            per_round[k].append(got[k])
        ratios["casam_over_sam"].append(got["casam"] / got["sam"])
        ratios["sam_over_sgd"].append(got["sam"] / got["sgd"])
        if groups > 1:
            ratios["groups_over_casam"].append(got["casam-groups"] / got["casam"])
    result = {f"{k.replace('-', '_')}_s": statistics.median(v) for k, v in per_round.items()}
    result.update({k: statistics.median(v) for k, v in ratios.items()})
    result["batch"] = batch
    if groups > 1:
        result["groups"] = groups
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds (default 9)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per optimizer per round (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per optimizer at the start (default 2)")
    parser.add_argument("--batch-cnn", type=int, default=MODELS["cnn"][2])
    parser.add_argument("--batch-resnet", type=int, default=MODELS["preact_resnet18"][2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--groups", type=int, default=1, help="also time CA-SAM with a perturbation per group of G (default 1: not timed)")
    args = parser.parse_args(argv)
    for name in ("rounds", "steps", "batch_cnn", "batch_resnet", "groups"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rounds} rounds x {args.steps} steps, warm-up {args.warmup}")
    results = {}
    for name in args.models:
        batch = args.batch_cnn if name == "cnn" else args.batch_resnet
        res = bench_model(name, batch=batch, rounds=args.rounds, steps=args.steps, warmup=args.warmup, seed=args.seed, groups=args.groups)
        results[name] = res
        grouped = f"  CA-SAM x{args.groups} groups / CA-SAM {res['groups_over_casam']:.3f}" if args.groups > 1 else ""
        print(
            f"{name:16s} batch {batch:4d}  SGD {1e3 * res['sgd_s']:8.1f} ms  SAM {1e3 * res['sam_s']:8.1f} ms  "
            f"CA-SAM {1e3 * res['casam_s']:8.1f} ms   CA-SAM/SAM {res['casam_over_sam']:.3f}  SAM/SGD {res['sam_over_sgd']:.3f}{grouped}",
            flush=True,
        )
    summary = {
        "casam_over_sam": max(r["casam_over_sam"] for r in results.values()),
        "sam_over_sgd": max(r["sam_over_sgd"] for r in results.values()),
        **({"groups_over_casam": max(r["groups_over_casam"] for r in results.values())} if args.groups > 1 else {}),
        "models": results,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
