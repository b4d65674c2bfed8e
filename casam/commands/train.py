"""`casam train`: every TrainConfig field is a flag; --config FILE sets them from YAML first."""

from __future__ import annotations

import argparse
import os
import sys
import typing

from casam.cli import OneLineErrorParser

from casam.config import CASAM_RHO_BY_LOSS, GROUPS_IN_LONG_RUNS, LONG_RUN, LOSS_OPTIONS, NOISY_WEIGHT, RHO, TrainConfig, field_types
from casam.losses import PUBLISHED

# Options a resumed run may change: they do not alter what is computed.
RESUMABLE_OVERRIDES = ("device", "progress", "tensorboard", "data_dir")


def _named_losses(table: dict) -> str:
    """A by-loss default table's named entries for --help: '1 with --loss elr, 1 with --loss sce'."""
    return ", ".join(f"{value:g} with --loss {loss}" for loss, value in table.items() if loss != "*")


HELP = {
    "dataset": "fashion-mnist, cifar10, cifar100 or digits",
    "train_subset": "train on a seeded subset of N samples (none: the whole split)",
    "val_fraction": "hold out this fraction of the noisy training subset for tuning (val_acc against its given labels)",
    "val_size": "hold out N noisy samples drawn from the images outside the training subset (same noise process), "
    "so the subset trained on keeps its size; for tuning at a finer resolution than val_fraction",
    "noise": "TYPE:RATE, e.g. symmetric:0.5, asymmetric:0.4, pairflip:0.45, instance:0.4, matrix:PATH, cifar10n:worst, none",
    "model": "mlp, cnn, preact_resnet18 or resnet34",
    "optimizer": "sgd, sam, asam or casam",
    "loss": "ce, gce, sce, apl or elr",
    "selection": "none or coteaching",
    "gce_q": "GCE's q",
    "sce_alpha": "SCE's weight of CE",
    "sce_beta": "SCE's weight of reverse CE",
    "apl_alpha": "APL's weight of normalised CE",
    "apl_beta": "APL's weight of reverse CE",
    "elr_lambda": "ELR's regulariser weight lambda",
    "elr_beta": "ELR's target momentum",
    "schedule": "cosine, step or constant (stepped per epoch)",
    "rho": f"SAM/ASAM/CA-SAM neighbourhood radius (none: {RHO['asam']:g} with --optimizer asam, its published value; "
    f"with --optimizer casam {_named_losses(CASAM_RHO_BY_LOSS)}; {RHO['*']:g} otherwise)",
    "heavy_rho": "CA-SAM: the radius once the noise estimate after the warm-up is above --perturb-cutoff (none: --rho throughout; auto: 0.05 with ELR, whose --rho is 0.02; none with other losses)",
    "sam_warmup": "SAM/ASAM epochs of plain base-optimizer steps before the perturbation starts",
    "warmup": "CA-SAM epochs before the clean/noisy split is used (C = B; radius --warmup-rho)",
    "warmup_rho": "CA-SAM radius during the warm-up (0: plain SGD steps; none: rho, plain SAM)",
    "heavy_warmup": "CA-SAM: the warm-up's epochs in all when the noise estimate after --warmup is above --perturb-cutoff (0: not extended)",
    "history_from": "CA-SAM: the first epoch whose outputs the history records (0: all; below --warmup)",
    "heavy_criterion": "CA-SAM: the criterion once the noise estimate after the warm-up is above --perturb-cutoff (none: --criterion throughout; auto: small-loss with cross-entropy and ELR, none with other losses)",
    "heavy_groups": "CA-SAM: the perturbation groups once the noise estimate after the warm-up is above --perturb-cutoff (none: --perturb-groups throughout; auto: 1 with cross-entropy in runs that take groups, none otherwise)",
    "criterion": "CA-SAM likely-clean criterion: agreement, confidence, small-loss, gmm or class-thresholds",
    "history_beta": "momentum of the per-sample EMA of softmax outputs",
    "history_loss": "CA-SAM: the per-sample loss the history records for the small-loss and gmm criteria: cross-entropy (on the given label) or training (the loss the network trains on, as before round 32)",
    "history_slow_beta": "CA-SAM agreement: momentum of a second, slower EMA that must also agree with the label (none: one memory)",
    "noisy_weight": "CA-SAM lambda: weight of the likely-noisy samples in the update (1: the paper's update; "
    f"none: {_named_losses(NOISY_WEIGHT)}, {NOISY_WEIGHT['*']:g} otherwise)",
    "heavy_noisy_weight": "CA-SAM: lambda once the noise estimate after the warm-up is above --perturb-cutoff (none: --noisy-weight throughout; auto: 0.5 with ELR, none with other losses)",
    "perturb_from": "CA-SAM: clean (the method), noisy (a control: perturb from the likely-noisy samples) or confidence (no mask: each sample weighted by its history's probability of its given label)",
    "perturb_balance": "CA-SAM with mu: each side by its mean (mean_C + mu mean_N), the same mu at any noise level",
    "perturb_cutoff": "CA-SAM: mu 0 instead if the history's noise estimate after the warm-up is above this (none: mu always)",
    "perturb_groups": "CA-SAM: G perturbations per batch, one per group of B/G samples with an equal share of likely-clean ones (m-sharpness; 1: one per batch; one process only; "
    f"none: {GROUPS_IN_LONG_RUNS['*']} in runs of {LONG_RUN} epochs or more, 1 in shorter ones, under torchrun, with fp16 or --log-cosine, "
    f"{_named_losses(GROUPS_IN_LONG_RUNS)})",
    "perturb_weight": "CA-SAM mu: weight of the likely-noisy samples in the perturbation (0: the paper's perturbation, 1: SAM's direction)",
    "device": "auto (CUDA when present), cpu, cuda, cuda:N",
    "precision": "fp32, bf16 (autocast) or fp16 (autocast + grad scaler, CUDA only)",
    "batch_size": "samples per batch PER PROCESS (under torchrun the global batch is nproc x this)",
    "sam_sync": "torchrun: all-reduce SAM's first-pass gradient (false: per-rank perturbation, m-sharpness)",
    "sync_bn": "torchrun: batch-norm statistics over the global batch (SyncBatchNorm; false: per rank)",
    "out": "run folder (default: runs/DATASET-NOISE-METHOD-seedSEED)",
}




def _published(name: str) -> str:
    """A loss option's published values, from casam.losses.PUBLISHED (the help never restates them)."""
    loss, keyword = LOSS_OPTIONS[name]
    ten, hundred = (PUBLISHED[loss][preset][keyword] for preset in ("cifar10", "cifar100"))
    return f" (none: published, {ten:g}" + ("" if hundred == ten else f"; CIFAR-100 {hundred:g}") + ")"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="casam train",
        description="Train a classifier on noisily-labelled data. Defaults < --config YAML < flags.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file of options (a run's config.yaml repeats that run)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest good checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    defaults = TrainConfig()
    types_ = field_types()
    for field in TrainConfig.fields():
        flag = "--" + field.name.replace("_", "-")
        hint = types_[field.name]
        metavar = "N" if hint in (int, int | None) else ("X" if hint in (float, float | None) else None)
        if typing.get_origin(hint) is list:
            metavar = "N,N"
        if hint is bool:
            metavar = "true|false"
        parser.add_argument(
            flag, dest=field.name, default=None, metavar=metavar or field.name.upper(),
            help=f"{HELP.get(field.name, '')}{_published(field.name) if field.name in LOSS_OPTIONS else ''} "
            f"(default: {getattr(defaults, field.name)})".strip(),
        )
    return parser


def main(argv: list[str]) -> int:
    from casam.checkpoint import CheckpointError
    from casam.config import ConfigError, resolve
    from casam.data import DataNotFoundError
    from casam.train import RunDirError, TrainingDiverged, train

    parser = build_parser()
    parser.formatter_class = argparse.HelpFormatter
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in TrainConfig.fields() if getattr(args, f.name) is not None}
    try:
        if args.resume:
            refused = sorted(set(overrides) - set(RESUMABLE_OVERRIDES))
            if refused:
                raise ConfigError(
                    f"--resume continues a run as configured; only {', '.join(RESUMABLE_OVERRIDES)} may change, not {', '.join(refused)}"
                )
            if args.config:
                raise ConfigError("--resume reads the run's own config.yaml; drop --config")
            from pathlib import Path

            config_path = Path(args.resume) / "config.yaml"
            if not config_path.is_file():
                raise RunDirError(f"cannot resume: {config_path} is missing, so {args.resume} holds no casam run")
            config = resolve(yaml_path=str(config_path), overrides={**overrides, "out": args.resume}, run_file=True)
            train(config, resume=True)
        else:
            config = resolve(yaml_path=args.config, overrides=overrides, strict=True)
            train(config, overwrite=args.overwrite)
    except TrainingDiverged as error:
        _report(error)
        return 1
    except (ConfigError, RunDirError, CheckpointError, DataNotFoundError, ValueError) as error:
        if os.environ.get("CASAM_DEBUG"):
            raise
        _report(error)
        return 2
    return 0


def _report(error: Exception) -> None:
    """Print a refusal once: under torchrun every rank meets the same error, and rank 0 speaks for all."""
    if os.environ.get("RANK", "0") == "0":
        print(f"casam train: {error}", file=sys.stderr)
