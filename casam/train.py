"""The training loop of `casam train`, read end to end in one sitting.

build everything from the config -> (resume from the newest good checkpoint) -> per epoch: train
one pass (metrics from the step's own outputs), evaluate under inference_mode, append a line to
metrics.jsonl, write a checkpoint atomically -> summary.json and a one-screen summary.

Reproducibility: the network's initial weights come from the seed; the batch order and the
augmentation of every epoch are a pure function of (seed, epoch) (see `BatchLoader.set_epoch`);
everything else that changes during training is in the checkpoint. So on the CPU a run resumed
after a kill ends with exactly the metrics of an uninterrupted one.

Multi-process (`torchrun --nproc_per_node=N -m casam train ...`, see docs/distributed.md): every rank
runs this same loop on its shard of each epoch's permutation with a DDP-wrapped network; `batch_size`
is per rank (global batch = N x batch_size). Train metrics and test counts are summed over ranks (the
test split is cut into contiguous per-rank slices). Only rank 0 touches the run folder and prints; a
resume needs the same number of ranks.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from casam import checkpoint, distributed
from casam.config import ConfigError, TrainConfig, save_yaml
from casam.data import BatchLoader, NoisyDataset, load_dataset
from casam.history import SampleHistory
from casam.learners import CoTeachingLearner, Precision, SingleLearner
from casam.losses import build_loss
from casam.metrics import EpochMeter, eval_scores, eval_sums
from casam.models import build_model
from casam.noise import parse_noise
from casam.optim import ASAM, CASAM, SAM

# the network at the epoch of best held-out noisy accuracy (runs with --val-fraction / --val-size)
BEST_MODEL = "best_model.pt"
RUN_FILES = (
    "config.yaml", "metrics.jsonl", "summary.json", "suspects.csv", checkpoint.CURRENT, checkpoint.PREVIOUS, BEST_MODEL,
)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class RunDirError(ValueError):
    """The output folder cannot be used as asked."""


# ---------------------------------------------------------------------------------------------- set-up
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available; use --device cpu or auto")
    return device


def default_run_name(config: TrainConfig) -> str:
    noise = config.noise.replace(":", "").replace("/", "_")
    method = f"{config.optimizer}+{config.loss}" + ("" if config.selection == "none" else f"+{config.selection}")
    return str(Path("runs") / f"{config.dataset}-{noise}-{method}-seed{config.seed}")


def prepare_run_dir(out: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """Refuse to mix two runs in one folder; with `overwrite` remove only casam's own files."""
    out = Path(out)
    holds_run = out.is_dir() and any((out / name).exists() for name in RUN_FILES)
    if resume:
        if not holds_run:
            raise RunDirError(f"cannot resume: {out} holds no casam run")
        return out
    if holds_run:
        if not overwrite:
            raise RunDirError(f"{out} already holds a run; pass --resume {out} to continue it or --overwrite to replace it")
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_data(config: TrainConfig) -> tuple[NoisyDataset, NoisyDataset]:
    """(noisy train split, test split). Synthetic noise is drawn on the subset actually used (with
    `val_size`, the trained-on subset and the held-out samples together, so both share one noise
    process); human labels (CIFAR-N) belong to the full split, so they are attached first and then subset."""
    train_set, test_set = load_dataset(config.dataset, data_dir=config.data_dir)
    noise_seed = config.seed if config.noise_seed is None else config.noise_seed
    human = parse_noise(config.noise).kind in ("cifar10n", "cifar100n")
    if human:
        train_set = train_set.with_noise(config.noise, seed=noise_seed, data_dir=config.data_dir)
    if config.train_subset is not None:
        used = config.train_subset + config.val_size
        if config.val_size and used > len(train_set):
            raise ConfigError(
                f"train_subset {config.train_subset} + val_size {config.val_size} exceeds the {len(train_set):,} "
                f"training images of {config.dataset}"
            )
        if used < len(train_set):
            train_set = train_set.subset(used, seed=config.seed)
    if not human:
        train_set = train_set.with_noise(config.noise, seed=noise_seed, data_dir=config.data_dir)
    return train_set, test_set


def split_validation(config: TrainConfig, train_set: NoisyDataset) -> tuple[NoisyDataset, NoisyDataset | None]:
    """(trained on, held out or None): noisy training data set aside for tuning, either `val_fraction`
    of the subset or `val_size` samples on top of it (load_data drew train_subset + val_size)."""
    if config.val_size:
        return train_set.holdout(config.val_size / len(train_set), seed=config.seed)
    if not config.val_fraction:
        return train_set, None
    return train_set.holdout(config.val_fraction, seed=config.seed)


def build_optimizer(config: TrainConfig, model: torch.nn.Module, *, num_samples: int, num_classes: int, device):
    base = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[config.base_optimizer]
    kwargs: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.base_optimizer == "sgd":
        kwargs["momentum"] = config.momentum
    params = model.parameters()
    if config.optimizer == "sgd":
        return base(params, **kwargs)
    if config.optimizer in ("sam", "asam"):  # --sam-warmup N: N epochs of plain base-optimizer steps first
        wrapper = SAM if config.optimizer == "sam" else ASAM
        return wrapper(params, base, rho=config.rho, warmup_epochs=config.sam_warmup, warmup_rho=0.0, **kwargs)
    history = SampleHistory(
        num_samples, num_classes, beta=config.history_beta, criterion=config.criterion, debias=config.history_debias,
        slow_beta=config.history_slow_beta, device=device,
    )
    return CASAM(
        params, base, history=history, rho=config.rho, noisy_weight=config.noisy_weight, noisy_target=config.noisy_target,
        warmup_rho=config.warmup_rho, perturb_from=config.perturb_from,
        perturb_weight=config.perturb_weight, perturb_balance=config.perturb_balance, perturb_cutoff=config.perturb_cutoff,
        warmup_epochs=config.warmup, heavy_warmup_epochs=config.heavy_warmup, history_from_epoch=config.history_from, heavy_criterion=config.heavy_criterion,
        heavy_groups=config.heavy_groups, heavy_noisy_weight=config.heavy_noisy_weight, heavy_rho=config.heavy_rho, history_loss=config.history_loss,
        min_clean=config.min_clean, measure_cosine=config.log_cosine, **kwargs,
    )


def build_scheduler(config: TrainConfig, optimizer):
    """Stepped once per epoch. `optimizer` may be a SAM wrapper: it shares param_groups with its base."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.schedule == "step":
        milestones = config.milestones or [max(1, config.epochs // 2), max(1, (3 * config.epochs) // 4)]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def build_learner(config: TrainConfig, train_set: NoisyDataset, device: torch.device, precision: Precision):
    """The learner and its schedulers; under a process group the networks are DDP-wrapped (see casam.distributed)."""
    n, c = len(train_set), train_set.num_classes
    shape = tuple(train_set.images.shape[1:])

    def network():
        model = build_model(config.model, num_classes=c, in_channels=shape[0], image_size=shape[1:]).to(device)
        return distributed.wrap_model(model, device=device, sync_bn=config.sync_bn)

    def loss():
        return build_loss(config.loss, num_samples=n, num_classes=c, preset=config.loss_preset(), **config.loss_options()).to(device)

    if config.selection == "coteaching":
        from casam.selection import CoTeachingSelector

        models = [network(), network()]
        optimizers = [build_optimizer(config, m, num_samples=n, num_classes=c, device=device) for m in models]
        selector = CoTeachingSelector(forget_rate=config.forget_rate, num_gradual=config.num_gradual)
        learner = CoTeachingLearner(
            models, optimizers, [loss(), loss()], precision, selector=selector, num_samples=n, device=device, sam_sync=config.sam_sync,
        )
    else:
        model = network()
        optimizer = build_optimizer(config, model, num_samples=n, num_classes=c, device=device)
        learner = SingleLearner(model, optimizer, loss(), precision, sam_sync=config.sam_sync, perturb_groups=config.perturb_groups)
    optimizers = learner.optimizers if hasattr(learner, "optimizers") else [learner.optimizer]
    return learner, [build_scheduler(config, opt) for opt in optimizers]


def test_shard(test_set: NoisyDataset) -> NoisyDataset | None:
    """This rank's contiguous slice of the test split (the whole split in one process; None if empty).

    Slices, not BatchLoader's padded shards: evaluation needs no equal sizes, and exact counts need no repeats.
    """
    n, r, w = len(test_set), distributed.rank(), distributed.world_size()
    if w == 1:
        return test_set
    lo, hi = n * r // w, n * (r + 1) // w
    if lo == hi:
        return None
    return NoisyDataset(
        test_set.images[lo:hi], test_set.labels[lo:hi], classes=test_set.classes, name=test_set.name, mean=test_set.mean, std=test_set.std
    )


def check_world_size(state: dict[str, Any], run_dir: Path) -> None:
    saved, now = state.get("world_size", 1), distributed.world_size()
    if saved != now:
        raise RunDirError(
            f"the run in {run_dir} was trained with {saved} process(es) and cannot resume with {now}: "
            f"relaunch with {saved} (torchrun --nproc_per_node/--nnodes), since the batch order depends on it"
        )


def _quiet(*args, **kwargs) -> None:
    """`log` of the ranks other than 0."""


# ---------------------------------------------------------------------------------------------- helpers
def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line torn by a kill: everything after it is redone
    return rows


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    checkpoint.atomic_write_bytes(path, lambda f: f.write(text.encode()))


def progress(iterable, *, enabled: bool, desc: str):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def open_tensorboard(config: TrainConfig, run_dir: Path):
    if not config.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def held_out_pick(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch row that early stopping without clean labels keeps: the first with the highest held-out
    noisy accuracy (runs with val_fraction or val_size); None without held-out data."""
    scored = [r for r in rows if isinstance(r.get("val_acc"), (int, float)) and math.isfinite(r["val_acc"])]
    return max(scored, key=lambda r: r["val_acc"]) if scored else None


def summarize(rows: list[dict[str, Any]], total_time: float) -> dict[str, Any]:
    best = max(rows, key=lambda r: r["test_acc"])
    last = rows[-1]
    summary = {
        "epochs": last["epoch"],
        "last_acc": last["test_acc"],
        "best_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "total_time_s": total_time,
        "sec_per_epoch": float(np.mean([r["epoch_time_s"] for r in rows])),
    }
    for key in ("sel_precision", "sel_recall", "sel_f1", "selected_fraction", "memorization"):
        if key in last:
            summary[key] = last[key]
    if last.get("noise_estimate") is not None:  # CA-SAM's switch: what the run took from the warm-up on
        summary["noise_estimate"] = last["noise_estimate"]
    chosen = held_out_pick(rows)
    if chosen is not None:
        summary.update(val_best_epoch=chosen["epoch"], val_best_acc=chosen["val_acc"], val_best_test_acc=chosen["test_acc"])
    return summary


def format_summary(config: TrainConfig, summary: dict[str, Any], run_dir: Path) -> str:
    def pct(v):
        return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f} %"

    method = f"{config.optimizer}+{config.loss}" + ("" if config.selection == "none" else f"+{config.selection}")
    # the groups change a CA-SAM step's cost (2.49x on two threads) and are chosen by the run's length
    # (config.LONG_RUN), so a 30-epoch run that is slower than a 29-epoch one says why
    groups = config.perturb_groups if config.optimizer == "casam" else 1
    estimate, cutoff = summary.get("noise_estimate"), config.perturb_cutoff
    heavy = None not in (estimate, cutoff) and estimate > cutoff  # CA-SAM's switch found heavy noise
    if heavy and config.heavy_groups is not None:
        groups = config.heavy_groups  # CASAM.perturbation_groups: from the first split on (the warm-up's steps are whole-batch)
    lines = [
        f"casam train: {method} on {config.dataset} ({config.noise}), {summary['epochs']} epochs, seed {config.seed}"
        + (f", a perturbation per group ({groups} groups per batch)" if groups > 1 else ""),
        f"  test accuracy   last {pct(summary['last_acc'])}   best {pct(summary['best_acc'])} (epoch {summary['best_epoch']})",
    ]
    if "val_best_epoch" in summary:
        lines.append(
            f"  held-out noisy  best {pct(summary['val_best_acc'])} at epoch {summary['val_best_epoch']}: "
            f"test accuracy there {pct(summary['val_best_test_acc'])} ({BEST_MODEL})"
        )
    if "sel_precision" in summary:
        lines.append(
            f"  likely-clean    precision {pct(summary['sel_precision'])}   recall {pct(summary['sel_recall'])}"
            f"   selected {pct(summary.get('selected_fraction'))}"
        )
    if heavy:  # what the switch changed: a run at heavy noise is not the run its flags describe
        changed = [name for name, on in (
            ("mu 0", config.perturb_weight > 0),
            (f"the {config.heavy_criterion} split", config.heavy_criterion is not None),
            (f"{config.heavy_groups} perturbation{'s' if config.heavy_groups != 1 else ''} per batch", config.heavy_groups not in (None, config.perturb_groups)),
            (f"lambda {config.heavy_noisy_weight}", config.heavy_noisy_weight not in (None, config.noisy_weight)),
            (f"rho {config.heavy_rho}", config.heavy_rho not in (None, config.rho)),
            (f"warm-up to epoch {config.heavy_warmup}", config.heavy_warmup > 0),
        ) if on]
        lines.append(f"  heavy noise     estimated {pct(estimate).strip()} after the warm-up (cutoff {pct(cutoff).strip()}): {', '.join(changed) or 'nothing changed'}")
    if "memorization" in summary:
        lines.append(f"  memorisation    {pct(summary['memorization'])} of mislabelled samples fitted to their wrong label")
    if "suspects" in summary:
        line = f"  suspects        {summary['suspects']:,} training samples look mislabelled (suspects.csv)"
        if "suspects_precision" in summary:
            line += f"; {pct(summary['suspects_precision']).strip()} of them are, {pct(summary['suspects_recall']).strip()} of the mislabelled found"
        lines.append(line)
    lines.append(f"  time            {summary['total_time_s']:.0f} s ({summary['sec_per_epoch']:.1f} s/epoch)")
    lines.append(f"  run folder      {run_dir}  (metrics.jsonl, summary.json, checkpoint.pt; `casam plot {run_dir}`)")
    return "\n".join(lines)


def save_best_model(path: Path, weights: dict[str, torch.Tensor], *, epoch: int, val_acc: float, config: TrainConfig) -> None:
    """Keep the network of the best held-out epoch: with noisy labels the last epoch has often memorised
    more, and accuracy on held-out noisy labels picks epochs close to the best clean ones (docs/training.md)
    without needing any clean label.
    Load with `model.load_state_dict(torch.load(path)["model"])` on `build_model(config["model"], ...)`."""
    state = {"epoch": epoch, "val_acc": val_acc, "model": weights, "config": config.to_dict()}
    checkpoint.atomic_write_bytes(path, lambda f: torch.save(state, f))


@torch.inference_mode()
def find_suspects(learner, train_set: NoisyDataset, *, batch_size: int, autocast) -> dict[str, torch.Tensor]:
    """Which training samples look mislabelled, after training.

    With CA-SAM the verdict is its history's: a sample outside the likely-clean set is a suspect, and
    its suggested label is the class its history points to. Other methods have no history, so one
    pass of the learner's network over the (unaugmented) training set decides (the caller loads the
    held-out pick into it: the last epoch's has fitted more wrong labels): a suspect is a sample it
    predicts as another class. Returns (N,) tensors: suspect (bool), suggested label (the history's
    `suggested_labels`, or the network's prediction), p(given label).
    """
    optimizer = getattr(learner, "optimizer", None)
    labels = train_set.labels.to(train_set.images.device)
    if isinstance(optimizer, CASAM):
        history = optimizer.history
        idx = torch.arange(len(train_set), device=history.probs.device)
        probs = history.mean_probs(idx)
        suspect = ~history.clean_mask(idx, labels.to(idx.device))
        suggested = history.suggested_labels(idx)
    else:
        model = learner.eval_model
        was_training = model.training
        model.eval()
        probs = torch.cat([
            torch.softmax(_forward(model, x, autocast).float(), 1)
            for x, _, _ in BatchLoader(train_set, batch_size=batch_size, shuffle=False)
        ])
        model.train(was_training)
        suggested = probs.argmax(1)
        suspect = suggested != labels.to(probs.device)
    given_prob = probs.gather(1, labels.to(probs.device)[:, None]).squeeze(1)
    return {"suspect": suspect.cpu(), "suggested": suggested.cpu(), "p_given": given_prob.cpu()}


def _forward(model, x, autocast):
    with autocast():
        return model(x)


def write_suspects(path: Path, found: dict[str, torch.Tensor], train_set: NoisyDataset) -> dict[str, Any]:
    """suspects.csv: one row per suspect, least plausible given label first; returns summary figures."""
    order = torch.argsort(found["p_given"])
    order = order[found["suspect"][order]]
    names = train_set.classes or [str(c) for c in range(train_set.num_classes)]
    lines = ["index,given_label,suggested_label,p_given"]
    for i in order.tolist():
        given, suggested = int(train_set.labels[i]), int(found["suggested"][i])
        lines.append(f"{i},{names[given]},{names[suggested]},{found['p_given'][i].item():.4f}")
    checkpoint.atomic_write_bytes(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))
    figures: dict[str, Any] = {"suspects": int(found["suspect"].sum())}
    if train_set.is_noisy is not None and figures["suspects"]:
        truly = train_set.is_noisy.cpu()[found["suspect"]]
        figures["suspects_precision"] = truly.double().mean().item()  # share of suspects that are mislabelled
        figures["suspects_recall"] = (truly.sum() / train_set.is_noisy.sum().clamp_min(1)).item()
    return figures


# ---------------------------------------------------------------------------------------------- the loop
def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, log=print) -> dict[str, Any]:
    """Train as `config` says; returns the summary. Writes into `config.out` (see module docstring).

    Under torchrun (RANK/WORLD_SIZE set) this joins the process group, trains with DDP and leaves it.
    """
    config.validate()
    try:
        device = distributed.setup(config.device)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    try:
        if not distributed.is_distributed():
            device = pick_device(config.device)
        summary = _train(config, device, resume=resume, overwrite=overwrite, log=log)
    except (ConfigError, RunDirError, TrainingDiverged, checkpoint.CheckpointError):
        distributed.cleanup()  # decided from shared state, so raised alike on every rank: leave the group together
        raise
    # any other error may hit one rank while the others wait in a collective: leaving the group then can
    # hang (NCCL), so the process exits holding it and torchrun stops the other ranks
    distributed.cleanup()
    return summary


def _prepare(config: TrainConfig, *, resume: bool, overwrite: bool) -> Path:
    run_dir = prepare_run_dir(config.out or default_run_name(config), resume=resume, overwrite=overwrite)
    if not resume:
        save_yaml(config, run_dir / "config.yaml")
    return run_dir


def _train(config: TrainConfig, device: torch.device, *, resume: bool, overwrite: bool, log) -> dict[str, Any]:
    main = distributed.is_main_process()  # the only rank that writes files and prints
    log = log if main else _quiet
    show_progress = config.progress and main
    world = distributed.world_size()
    run_dir = distributed.run_on_main(lambda: _prepare(config, resume=resume, overwrite=overwrite))

    torch.manual_seed(config.seed)  # the same on every rank (DDP also broadcasts rank 0's weights)
    train_set, test_set = distributed.main_first(lambda: load_data(config))  # rank 0 downloads first
    train_set, val_set = split_validation(config, train_set)
    train_set, test_set = train_set.to(device), test_set.to(device)
    val_loader = None if val_set is None else BatchLoader(val_set.to(device), batch_size=config.eval_batch_size, shuffle=False)
    augment = config.augment if config.augment != "auto" else ("crop_flip" if config.dataset.startswith("cifar") else "none")
    loader = BatchLoader(
        train_set, batch_size=config.batch_size, shuffle=True, augment=augment, seed=config.seed,
        rank=distributed.rank(), world_size=world,
    )
    test_part = test_shard(test_set)
    test_loader = None if test_part is None else BatchLoader(test_part, batch_size=config.eval_batch_size, shuffle=False)
    precision = Precision(config.precision, device)
    learner, schedulers = build_learner(config, train_set, device, precision)
    is_noisy = train_set.is_noisy.to(device) if train_set.is_noisy is not None else None

    start_epoch, elapsed = 0, 0.0
    if resume:  # every rank loads the same checkpoint
        state, path = checkpoint.load_latest(run_dir)
        check_world_size(state, run_dir)
        learner.load_state_dict(state["learner"])
        for scheduler, saved in zip(schedulers, state["schedulers"]):
            scheduler.load_state_dict(saved)
        set_rng_state(state["rng"])
        start_epoch, elapsed = state["epoch"], state["elapsed_s"]
        log(f"casam: resuming {run_dir} after epoch {start_epoch} ({path.name})")
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["epoch"] <= start_epoch]
    best_val, best_weights = -1.0, None  # the held-out pick so far (every rank scores the whole held-out part)
    if resume and (run_dir / BEST_MODEL).is_file():
        saved = torch.load(run_dir / BEST_MODEL, map_location=device)
        best_val, best_weights = saved["val_acc"], saved["model"]
    writer = open_tensorboard(config, run_dir) if main else None

    for epoch in range(start_epoch, config.epochs):
        loader.set_epoch(epoch)
        learner.set_epoch(epoch)
        meter = EpochMeter(device, num_classes=train_set.num_classes)
        data_time, t0 = 0.0, time.perf_counter()
        batches = iter(progress(loader, enabled=show_progress, desc=f"epoch {epoch + 1}/{config.epochs}"))
        while True:
            t_data = time.perf_counter()
            batch = next(batches, None)
            data_time += time.perf_counter() - t_data
            if batch is None:
                break
            x, y, idx = batch
            out = learner.step(x, y, idx)
            meter.update(out.logits, out.losses, y, None if is_noisy is None else is_noisy[idx], out.selected)
        learner.end_epoch(epoch)
        for scheduler in schedulers:
            scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_time = time.perf_counter() - t0
        meter.sums = distributed.all_reduce_sum(meter.sums)  # every rank now holds the global sums
        row = {"epoch": epoch + 1, **meter.compute()}
        if not math.isfinite(row["train_loss"]):
            kept = f"the last good checkpoint (epoch {epoch}) stays in {run_dir}" if epoch else "no checkpoint was written"
            raise TrainingDiverged(
                f"the training loss became {row['train_loss']} in epoch {epoch + 1}, so training stopped; {kept}; "
                "try a lower --lr or --rho"
            )
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        if test_loader is not None:
            sums = eval_sums(learner.eval_model, test_loader, autocast=precision.autocast).to(device)
        row.update(eval_scores(distributed.all_reduce_sum(sums)))
        if val_loader is not None:  # every rank holds the whole held-out part: no reduction
            scores = eval_scores(eval_sums(learner.eval_model, val_loader, autocast=precision.autocast))
            row.update(val_acc=scores["test_acc"], val_loss=scores["test_loss"])
        row.update(learner.diagnostics())
        row.update(
            lr=schedulers[0].get_last_lr()[0],
            epoch_time_s=epoch_time,
            samples_per_s=len(loader) * config.batch_size * world / epoch_time,
            data_fraction=data_time / epoch_time,
            # the float summation order: at 80 % noise one vs two threads moved epoch 1 by 8 points
            torch_threads=torch.get_num_threads(),
        )
        elapsed += time.perf_counter() - t0
        rows.append(row)
        if row.get("val_acc", -1.0) > best_val:
            best_val = row["val_acc"]
            best_weights = {k: v.detach().clone() for k, v in learner.eval_model.state_dict().items()}
            if main:  # before the checkpoint: a run resumed from it never misses its best epoch
                save_best_model(run_dir / BEST_MODEL, best_weights, epoch=epoch + 1, val_acc=best_val, config=config)
        if main:  # the one writer: metrics, checkpoint, tensorboard, console
            write_metrics(run_dir / "metrics.jsonl", rows)
            checkpoint.save(
                run_dir,
                {
                    "epoch": epoch + 1,
                    "elapsed_s": elapsed,
                    "learner": learner.state_dict(),
                    "schedulers": [s.state_dict() for s in schedulers],
                    "rng": rng_state(),
                    "config": config.to_dict(),
                    "world_size": world,
                },
            )
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                        writer.add_scalar(key, value, epoch + 1)
            if config.progress:
                shown = ", ".join(
                    f"{k} {v:.4f}" for k, v in row.items() if k in ("train_loss", "test_acc", "sel_precision", "sel_recall", "memorization")
                )
                log(f"epoch {epoch + 1:3d}/{config.epochs}: {shown}, {epoch_time:.1f} s")

    summary = summarize(rows, elapsed)
    if best_weights is not None and not isinstance(getattr(learner, "optimizer", None), CASAM):
        learner.eval_model.load_state_dict(best_weights)  # suspects from the held-out pick, not the memorised end
    found = find_suspects(learner, train_set, batch_size=config.eval_batch_size, autocast=precision.autocast)
    if main:
        summary.update(write_suspects(run_dir / "suspects.csv", found, train_set))
        if writer is not None:
            writer.close()
        checkpoint.atomic_write_bytes(run_dir / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))
        log(format_summary(config, summary, run_dir))
    distributed.barrier()  # the other ranks leave only once rank 0 has written everything
    return summary
