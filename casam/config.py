"""Training configuration: one dataclass of plain values, settable from a YAML file and overridable
from the command line (defaults < YAML < flags), validated once at the edge.

Every field is a flag of `casam train`: `history_beta` is `--history-beta`. A run folder keeps the
resolved configuration as `config.yaml`, so `casam train --config RUN/config.yaml` repeats a run.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message is one sentence naming it."""


OPTIMIZERS = ("sgd", "sam", "asam", "casam")
BASE_OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
SELECTIONS = ("none", "coteaching")
AUGMENTS = ("auto", "none", "crop_flip")
PRECISIONS = ("fp32", "bf16", "fp16")


# a robust loss's own settings: config field -> (loss, keyword of casam.losses.build_loss)
LOSS_OPTIONS = {
    "gce_q": ("gce", "q"),
    "sce_alpha": ("sce", "alpha"),
    "sce_beta": ("sce", "beta"),
    "apl_alpha": ("apl", "alpha"),
    "apl_beta": ("apl", "beta"),
    "elr_lambda": ("elr", "lam"),
    "elr_beta": ("elr", "beta"),
}

# CA-SAM's lambda when none is given, by loss (docs/casam-split.md): 0.5 from round 10 (chosen with
# cross-entropy); 1 with ELR from round 12, whose own term already keeps the likely-noisy samples off
# their given labels, so halving their pull only slows the hard clean ones; 1 with SCE from round 16
# (measured at alpha 0.01), whose bounded loss already limits a wrong label's pull.
NOISY_WEIGHT = {"*": 0.5, "elr": 1.0, "sce": 1.0}

# CA-SAM's perturbations per batch when none is given (docs/casam-split.md, rounds 19-24): in runs of
# LONG_RUN epochs or more, one perturbation per batch lets the network memorise the wrong labels and the
# split decays; a perturbation per group of 16 samples holds both (40 epochs, round 21: ahead in held-out
# accuracy on every tuning seed at symmetric 50 % and 80 %, asymmetric and instance 40 %; 30 epochs,
# rounds 22 and 24: ahead on every seed at symmetric 50 %, asymmetric and instance 40 %, level at 80 %).
# In 20 epochs they are level and cost 1.3-2.5x per step (one or two CPU threads), so shorter runs keep one
# perturbation; lengths between 20 and 30 were not measured.
# Runs that cannot take groups (fp16, log_cosine, several processes) keep one too. By loss (round 23): with
# ELR's or SCE's loss one perturbation does not decay in 40 epochs (the loss already holds the wrong labels
# off), and 8 groups were level with ELR (held-out +0.02, sd 0.22; at asymmetric 40 % +0.12, sd 0.29, round
# 25) and behind with SCE (-0.26, 2 SE 0.12; at asymmetric 40 % -1.16, two runs stalled at 70-76 %, round 25),
# so those keep one perturbation at any length; other losses were not measured and keep cross-entropy's 8.
LONG_RUN = 30
GROUPS_IN_LONG_RUNS = {"*": 8, "elr": 1, "sce": 1}
# Round 29 (docs/casam-split.md): under heavy noise (the estimate after the warm-up above perturb_cutoff)
# agreement's first split leaves whole classes out and the network learns only the classes it already
# names; small-loss keeps the same share of every given class. Round 31: with SCE's loss level (agreement
# stays); with ELR's level at lambda 1 (its split decays late) and ahead with lambda 0.5 under heavy noise
# (HEAVY_NOISY_WEIGHT_BY_LOSS), so ELR takes both. Other losses not measured.
HEAVY_CRITERION_BY_LOSS = {"*": None, "ce": "small-loss", "elr": "small-loss"}
# Round 30 (docs/casam-split.md): under heavy noise a perturbation per group rests on about 2 likely-clean
# samples of its 16 and slows the network (with the small-loss split, 30 epochs at symmetric 80 %); one
# perturbation per batch was ahead on every tuning seed. For runs that take groups; cross-entropy only.
HEAVY_GROUPS_BY_LOSS = {"*": None, "ce": 1}
# Round 31 (docs/casam-split.md): at symmetric 80 % with ELR's loss, small-loss alone (its split's precision
# falls 18-29 points over the second half of a run) and lambda 0.5 alone were each level with ELR's defaults;
# together ahead on every tuning seed. Cross-entropy's lambda is 0.5 already; SCE not measured.
HEAVY_NOISY_WEIGHT_BY_LOSS = {"*": None, "elr": 0.5}


# The radius when none is given, by optimizer: 0.05 for SAM and CA-SAM (SAM's published value, kept by the
# study's rounds 7 and 14, docs/casam-split.md), ASAM's published 0.5 (its radius is relative to the weights'
# scale, so SAM's does not carry over; kept by the baselines' round 5, docs/benchmarks.md).
RHO = {"*": 0.05, "asam": 0.5}
# CA-SAM's, by loss. Round 33 (docs/casam-split.md): with ELR, whose target term already holds memorisation
# down, rho 0.02 was ahead of 0.05 on 10 of the 11 tuning pairs at symmetric 50 %, asymmetric and instance
# 40 % (held-out +0.21, 2 SE 0.11; it fits more of the clean samples). Under heavy noise (the estimate after
# the warm-up above perturb_cutoff) ELR keeps 0.05, the status quo, until round 34 says otherwise
# (HEAVY_RHO_BY_LOSS). Other losses not measured.
CASAM_RHO_BY_LOSS = {"*": 0.05, "elr": 0.02}
HEAVY_RHO_BY_LOSS = {"*": None, "elr": 0.05}


def by_loss(table: dict[str, Any], loss: str) -> Any:
    """A by-loss default table's value for `loss` ("*": every loss not named)."""
    return table.get(loss, table["*"])


# option -> (the option that decides whether it applies, the values for which it does)
_USED_BY = {
    "rho": ("optimizer", ("sam", "asam", "casam")),
    "sam_sync": ("optimizer", ("sam", "asam", "casam")),
    "sam_warmup": ("optimizer", ("sam", "asam")),
    "warmup": ("optimizer", ("casam",)),
    "warmup_rho": ("optimizer", ("casam",)),
    "heavy_warmup": ("optimizer", ("casam",)),
    "history_from": ("optimizer", ("casam",)),
    "heavy_criterion": ("optimizer", ("casam",)),
    "heavy_groups": ("optimizer", ("casam",)),
    "heavy_noisy_weight": ("optimizer", ("casam",)),
    "heavy_rho": ("optimizer", ("casam",)),
    "criterion": ("optimizer", ("casam",)),
    "history_beta": ("optimizer", ("casam",)),
    "history_debias": ("optimizer", ("casam",)),
    "history_loss": ("optimizer", ("casam",)),
    "history_slow_beta": ("optimizer", ("casam",)),
    "noisy_weight": ("optimizer", ("casam",)),
    "noisy_target": ("optimizer", ("casam",)),
    "perturb_from": ("optimizer", ("casam",)),
    "perturb_weight": ("optimizer", ("casam",)),
    "perturb_balance": ("optimizer", ("casam",)),
    "perturb_cutoff": ("optimizer", ("casam",)),
    "perturb_groups": ("optimizer", ("casam",)),
    "log_cosine": ("optimizer", ("casam",)),
    "min_clean": ("optimizer", ("casam",)),
    "forget_rate": ("selection", ("coteaching",)),
    "num_gradual": ("selection", ("coteaching",)),
    **{name: ("loss", (loss,)) for name, (loss, _) in LOSS_OPTIONS.items()},
    "momentum": ("base_optimizer", ("sgd",)),
    "milestones": ("schedule", ("step",)),
    "gamma": ("schedule", ("step",)),
}


@dataclass
class TrainConfig:
    # data and noise
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    train_subset: int | None = 10000  # seeded subset of the training split; None = all of it
    val_fraction: float = 0.0  # held out of the (noisy) training subset: val_acc against the given labels, for tuning
    val_size: int = 0  # or: N noisy samples held out from the images outside train_subset (same noise); trains on all train_subset
    noise: str = "symmetric:0.5"
    noise_seed: int | None = None  # None: the run's seed
    augment: str = "auto"  # auto: crop_flip for CIFAR, none otherwise
    # network and method
    model: str = "cnn"
    optimizer: str = "casam"
    base_optimizer: str = "sgd"
    loss: str = "ce"
    # the losses' own settings; None: the published value (CIFAR-100's on cifar100, CIFAR-10's elsewhere)
    gce_q: float | None = None
    sce_alpha: float | None = None
    sce_beta: float | None = None
    apl_alpha: float | None = None
    apl_beta: float | None = None
    elr_lambda: float | None = None
    elr_beta: float | None = None
    selection: str = "none"
    # optimisation
    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=lambda: [])  # step schedule; empty: at 50 % and 75 %
    gamma: float = 0.1
    # SAM family
    rho: float | None = None  # None: by optimizer, see RHO, and for CA-SAM by loss, CASAM_RHO_BY_LOSS (the saved config records the value used)
    sam_warmup: int = 0  # sam, asam: epochs of plain base-optimizer steps first (CA-SAM's is warmup + warmup_rho)
    sam_sync: bool = True  # DDP: all-reduce the first-pass gradient; false = per-rank perturbation (m-sharpness)
    # CA-SAM
    warmup: int = 2
    warmup_rho: float | None = 0.0  # CA-SAM's radius during warm-up; None: rho; 0: plain SGD steps (docs/casam-split.md)
    heavy_warmup: int = 0  # the warm-up's epochs in all if the noise estimate after `warmup` is above perturb_cutoff; 0: none (round 27)
    history_from: int = 0  # the first epoch whose outputs the history records, below `warmup` (round 28)
    heavy_criterion: str | None = "auto"  # the criterion once the noise estimate after the warm-up is above perturb_cutoff; none: unchanged; auto: HEAVY_CRITERION_BY_LOSS (round 29)
    criterion: str = "agreement"
    history_beta: float = 0.9
    history_slow_beta: float | None = None  # a second, slower memory that must also agree (agreement only; docs/casam-split.md round 18)
    noisy_weight: float | None = None  # lambda: the likely-noisy samples' weight in the update (1: the paper's); None: by loss, see NOISY_WEIGHT
    heavy_rho: float | str | None = "auto"  # rho once the noise estimate after the warm-up is above perturb_cutoff; none: rho throughout; auto: HEAVY_RHO_BY_LOSS (rounds 33-34)
    heavy_noisy_weight: float | str | None = "auto"  # lambda once the noise estimate after the warm-up is above perturb_cutoff; none: noisy_weight throughout; auto: HEAVY_NOISY_WEIGHT_BY_LOSS (round 31)
    noisy_target: str = "given"  # given | history: what the likely-noisy samples are trained towards
    perturb_from: str = "clean"  # clean (CA-SAM) | noisy: a control | confidence: soft weights h_i[y_i] (docs/casam-split.md)
    perturb_weight: float = 0.5  # mu: the other side's weight in the perturbation (0: the paper's perturbation, 1: SAM's direction)
    perturb_balance: bool = False  # with mu: mean of each side (mean_C + mu mean_N), the same mu at any noise level
    perturb_cutoff: float | None = 0.6667  # mu 0 instead if the history's noise estimate after the warm-up is above this (round 9)
    perturb_groups: int | None = None  # G > 1: a perturbation per group of the batch, each with its share of clean samples (round 19); None: see LONG_RUN
    heavy_groups: int | str | None = "auto"  # the perturbation groups once the noise estimate after the warm-up is above perturb_cutoff; none: perturb_groups throughout; auto: HEAVY_GROUPS_BY_LOSS (round 30)
    history_debias: bool = True  # bias-corrected EMA (False: the first visit initialises it)
    history_loss: str = "cross-entropy"  # the loss the history records for small-loss and gmm: cross-entropy on the given label | training (the loss the network trains on; before round 32)
    log_cosine: bool = False  # log cos(clean-subset gradient, full-batch gradient) per step (one extra backward)
    min_clean: int = 8
    # Co-teaching
    forget_rate: float | None = None  # None: estimated from the losses after warm-up
    num_gradual: int = 10
    # run
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    eval_batch_size: int = 1000
    sync_bn: bool = False  # DDP: batch statistics over the global batch (SyncBatchNorm); false = per rank
    out: str | None = None
    progress: bool = True
    tensorboard: bool = True

    # ------------------------------------------------------------------ validation
    def validate(self) -> "TrainConfig":
        """Check every value; raise ConfigError naming the first bad one. Fills in lambda's loss-dependent default."""
        from casam.data import DATASETS
        from casam.history import CRITERIA
        from casam.losses import LOSSES
        from casam.models import MODELS
        from casam.noise import parse_noise
        from casam.optim.casam import HISTORY_LOSSES, NOISY_TARGETS, PERTURB_FROM

        for name, allowed in (
            ("dataset", DATASETS),
            ("model", MODELS),
            ("optimizer", OPTIMIZERS),
            ("base_optimizer", BASE_OPTIMIZERS),
            ("loss", LOSSES),
            ("selection", SELECTIONS),
            ("schedule", SCHEDULES),
            ("criterion", CRITERIA),
            ("augment", AUGMENTS),
            ("precision", PRECISIONS),
            ("noisy_target", NOISY_TARGETS),
            ("perturb_from", PERTURB_FROM),
            ("history_loss", HISTORY_LOSSES),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        try:
            parse_noise(self.noise)
        except ValueError as error:
            raise ConfigError(f"noise: {error}") from None
        positive = ("epochs", "batch_size", "eval_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1; got {getattr(self, name)}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1); got {self.val_fraction}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ConfigError(f"train_subset must be a positive number of samples; got {self.train_subset}")
        if self.val_size < 0:
            raise ConfigError(f"val_size must be >= 0; got {self.val_size}")
        if self.val_size and self.val_fraction:
            raise ConfigError("give val_fraction or val_size, not both")
        if self.val_size and self.train_subset is None:
            raise ConfigError("val_size holds out images outside train_subset; set train_subset (or use val_fraction)")
        if self.rho is None:
            self.rho = self.default_rho()
        for name in ("lr", "weight_decay", "rho", "momentum", "gamma"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.lr == 0:
            raise ConfigError("lr must be > 0; got 0")
        for name in ("warmup", "sam_warmup", "history_from", "min_clean", "num_gradual"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.warmup_rho is not None and self.warmup_rho < 0:
            raise ConfigError(f"warmup_rho must be >= 0; got {self.warmup_rho}")
        if self.heavy_warmup and not self.warmup < self.heavy_warmup:
            raise ConfigError(f"heavy_warmup extends the warm-up: 0 or more than warmup ({self.warmup}) epochs; got {self.heavy_warmup}")
        if self.history_from and not self.history_from < self.warmup:
            raise ConfigError(f"history_from must be below warmup ({self.warmup}): the split needs a history when the warm-up ends; got {self.history_from}")
        if self.heavy_criterion == "auto":  # the saved config records the value used
            self.heavy_criterion = self.default_heavy_criterion()
        if self.heavy_criterion is not None:
            if self.heavy_criterion not in CRITERIA:
                raise ConfigError(f"heavy_criterion must be auto, none or one of {', '.join(CRITERIA)}; got {self.heavy_criterion!r}")
            if self.history_slow_beta is not None and self.heavy_criterion != "agreement":
                raise ConfigError(f"history_slow_beta (a two-speed memory) works with criterion agreement only; got heavy_criterion {self.heavy_criterion}")
        if not 0 <= self.history_beta < 1:
            raise ConfigError(f"history_beta must be in [0, 1); got {self.history_beta}")
        if self.history_slow_beta is not None:
            if not self.history_beta < self.history_slow_beta < 1:
                raise ConfigError(f"history_slow_beta must be in (history_beta, 1) = ({self.history_beta}, 1) or none; got {self.history_slow_beta}")
            if self.criterion != "agreement":
                raise ConfigError(f"history_slow_beta (a two-speed memory) works with criterion agreement only; got criterion {self.criterion}")
        if not 0 <= self.perturb_weight <= 1:
            raise ConfigError(f"perturb_weight (mu) must be in [0, 1]; got {self.perturb_weight}")
        if self.perturb_cutoff is not None and not 0 < self.perturb_cutoff <= 1:
            raise ConfigError(f"perturb_cutoff (the noise estimate above which mu is 0) must be in (0, 1] or none; got {self.perturb_cutoff}")
        if self.perturb_groups is None:  # the saved config records the value used
            self.perturb_groups = self.default_perturb_groups()
        if self.perturb_groups < 1:
            raise ConfigError(f"perturb_groups must be at least 1; got {self.perturb_groups}")
        if self.perturb_groups > 1 and (reason := self.why_one_perturbation()):
            raise ConfigError(reason)
        if self.heavy_groups == "auto":  # the saved config records the value used
            self.heavy_groups = self.default_heavy_groups()
        if self.heavy_groups is not None:
            if isinstance(self.heavy_groups, str) or self.heavy_groups < 1:
                raise ConfigError(f"heavy_groups must be auto, none or at least 1; got {self.heavy_groups!r}")
            if self.heavy_groups > 1 and (reason := self.why_one_perturbation("heavy_groups")):
                raise ConfigError(reason)
        if self.heavy_rho == "auto":  # the saved config records the value used
            self.heavy_rho = self.default_heavy_rho()
        if self.heavy_rho is not None and (isinstance(self.heavy_rho, str) or not 0 <= self.heavy_rho < math.inf):
            raise ConfigError(f"heavy_rho (the radius under heavy noise) must be auto, none or a number >= 0; got {self.heavy_rho!r}")
        if self.heavy_noisy_weight == "auto":  # the saved config records the value used
            self.heavy_noisy_weight = self.default_heavy_noisy_weight()
        if self.heavy_noisy_weight is not None and (isinstance(self.heavy_noisy_weight, str) or not 0 <= self.heavy_noisy_weight <= 1):
            raise ConfigError(f"heavy_noisy_weight (lambda under heavy noise) must be auto, none or in [0, 1]; got {self.heavy_noisy_weight!r}")
        if self.perturb_cutoff is None:  # the heavy-noise options act when the estimate is above the cutoff
            given = {"heavy_warmup": self.heavy_warmup > 0, "heavy_criterion": self.heavy_criterion is not None,
                     "heavy_groups": self.heavy_groups is not None, "heavy_noisy_weight": self.heavy_noisy_weight is not None,
                     "heavy_rho": self.heavy_rho is not None}
            if named := [name for name, is_given in given.items() if is_given]:
                raise ConfigError(f"{named[0]} applies when the noise estimate is above perturb_cutoff: give perturb_cutoff too")
        if self.perturb_from == "confidence" and self.perturb_weight:
            raise ConfigError("perturb_from confidence weighs every sample itself and takes no perturb_weight (mu): add --perturb-weight 0")
        if self.noisy_weight is None:  # the one default that depends on another option; the saved config records it
            self.noisy_weight = by_loss(NOISY_WEIGHT, self.loss)
        if not 0 <= self.noisy_weight <= 1:
            raise ConfigError(f"noisy_weight (lambda) must be in [0, 1]; got {self.noisy_weight}")
        if self.forget_rate is not None and not 0 <= self.forget_rate < 1:
            raise ConfigError(f"forget_rate must be in [0, 1); got {self.forget_rate}")
        if any(m < 1 or m > self.epochs for m in self.milestones):
            raise ConfigError(f"milestones must be epochs in 1..{self.epochs}; got {self.milestones}")
        if self.device not in ("auto", "cpu") and not self.device.startswith(("cuda", "mps")):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps; got {self.device!r}")
        if self.precision == "fp16" and self.device == "cpu":
            raise ConfigError("precision fp16 needs a CUDA device; use bf16 on the CPU")
        if self.precision == "fp16" and not self.sam_sync:
            raise ConfigError(
                "sam_sync false with precision fp16 is refused: a rank whose local first-pass gradient overflows "
                "would skip its step while the others take theirs; use bf16 or sam_sync true"
            )
        try:  # the loss's own checks, on the values it would be built with
            from casam.losses import build_loss

            build_loss(self.loss, num_samples=1, num_classes=2, preset=self.loss_preset(), **self.loss_options())
        except ValueError as error:
            message = str(error)
            for name, (loss, keyword) in LOSS_OPTIONS.items():  # name the option as the user wrote it
                if loss == self.loss and message.startswith(f"{keyword} "):
                    message = name + message[len(keyword):]
            raise ConfigError(message.rstrip(".")) from None
        if self.selection == "coteaching" and self.optimizer == "casam":
            raise ConfigError(
                "optimizer casam with selection coteaching is refused: Co-teaching already picks each network's "
                "samples from its peer's small losses, so CA-SAM's history would see only those and split them again; "
                "use --optimizer sam (or asam) with --selection coteaching"
            )
        return self

    def default_perturb_groups(self) -> int:
        """CA-SAM's G when none is given: GROUPS_IN_LONG_RUNS (by loss) for runs of LONG_RUN epochs or more that can take groups, else 1."""
        long_casam_run = self.optimizer == "casam" and self.epochs >= LONG_RUN
        can_group = long_casam_run and self.why_one_perturbation() is None
        return by_loss(GROUPS_IN_LONG_RUNS, self.loss) if can_group else 1

    @property
    def noise_switch(self) -> bool:
        """A CA-SAM run that reads the noise estimate after the warm-up (perturb_cutoff), which the heavy-noise options act on."""
        return self.optimizer == "casam" and self.perturb_cutoff is not None

    def default_heavy_criterion(self) -> str | None:
        """CA-SAM's heavy-noise criterion when none is given: HEAVY_CRITERION_BY_LOSS, for a run with the noise
        switch and a criterion that may change (no two-speed memory, which is agreement's)."""
        switchable = self.noise_switch and self.history_slow_beta is None
        return by_loss(HEAVY_CRITERION_BY_LOSS, self.loss) if switchable else None

    def default_heavy_groups(self) -> int | None:
        """CA-SAM's heavy-noise groups when none are given: HEAVY_GROUPS_BY_LOSS, for a run with the noise
        switch that takes perturbation groups (else there is nothing to replace)."""
        grouped = self.noise_switch and self.perturb_groups > 1
        return by_loss(HEAVY_GROUPS_BY_LOSS, self.loss) if grouped else None

    def default_rho(self) -> float:
        """The radius when none is given: RHO by optimizer; CA-SAM's CASAM_RHO_BY_LOSS by loss."""
        return by_loss(CASAM_RHO_BY_LOSS, self.loss) if self.optimizer == "casam" else RHO.get(self.optimizer, RHO["*"])

    def default_heavy_rho(self) -> float | None:
        """CA-SAM's radius under heavy noise when none is given: HEAVY_RHO_BY_LOSS for a run with the noise switch,
        None (rho throughout) where that is rho anyway."""
        value = by_loss(HEAVY_RHO_BY_LOSS, self.loss) if self.noise_switch else None
        return None if value == self.rho else value

    def default_heavy_noisy_weight(self) -> float | None:
        """CA-SAM's lambda under heavy noise when none is given: HEAVY_NOISY_WEIGHT_BY_LOSS, for a run with the noise switch."""
        return by_loss(HEAVY_NOISY_WEIGHT_BY_LOSS, self.loss) if self.noise_switch else None

    def why_one_perturbation(self, option: str = "perturb_groups") -> str | None:
        """Why this run cannot take perturbation groups (the refusal of `option` above 1), or None if it can.

        Groups run their SAM steps without a gradient scaler, without the cosine's extra backward, and in one
        process (under torchrun each rank already takes its own perturbation with --sam-sync false). The
        default picks 1 for the same reasons, so a default run is never refused.
        """
        from casam.distributed import launched_world_size

        if self.precision == "fp16" or self.log_cosine:
            return f"{option} above 1 runs without a gradient scaler and without log_cosine: use precision fp32 or bf16, log_cosine false"
        try:
            processes = launched_world_size()
        except ValueError as error:  # a WORLD_SIZE that is not a number
            raise ConfigError(str(error)) from None
        if processes > 1:
            return f"{option} above 1 runs in one process; under torchrun use --sam-sync false for a perturbation per rank"
        return None

    def loss_preset(self) -> str:
        """Whose published loss settings apply: CIFAR-100's for CIFAR-100, CIFAR-10's (the papers' defaults) otherwise."""
        return "cifar100" if self.dataset == "cifar100" else "cifar10"

    def loss_options(self) -> dict[str, float]:
        """The chosen loss's settings given explicitly, as keywords of `casam.losses.build_loss`."""
        return {
            keyword: getattr(self, name)
            for name, (loss, keyword) in LOSS_OPTIONS.items()
            if loss == self.loss and getattr(self, name) is not None
        }

    def relevant(self, name: str) -> bool:
        """Whether option `name` means anything for this configuration's method (rho does not for sgd)."""
        owner, values = _USED_BY.get(name, (None, ()))
        return owner is None or getattr(self, owner) in values

    def check_relevant(self, given: set[str] | list[str]) -> None:
        """Refuse options that were set explicitly but mean nothing for the chosen method."""
        for name in given:
            if not self.relevant(name):
                owner, values = _USED_BY[name]
                raise ConfigError(
                    f"{name} only applies with {owner} {' or '.join(values)}, not {owner} {getattr(self, owner)}; drop it or change {owner}"
                )

    # ------------------------------------------------------------------ construction
    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> "TrainConfig":
        """Build from a mapping, converting and checking each value's type."""
        known = {f.name: f for f in cls.fields()}
        kwargs = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"{source}: unknown option {key!r}; see `casam train --help` for the options")
            kwargs[name] = coerce(value, known[name].type, name=name, source=source)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def coerce(value: Any, annotation: Any, *, name: str, source: str = "config") -> Any:
    """Convert `value` (from YAML or a flag string) to the field's type, or raise ConfigError.

    A union of types (int | str) takes the first that reads the value: a number, else a word ("auto")."""
    hint = field_types()[name] if isinstance(annotation, str) else annotation
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    kinds = [a for a in members if a is not type(None)]
    optional = len(kinds) < len(members)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{source}: {name} cannot be empty")
    for kind in kinds[:-1]:
        try:
            return coerce_scalar(value, kind, name=name, source=source)
        except ConfigError:
            pass
    hint = kinds[-1]
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {name} must be a list; got {value!r}")
        return [coerce_scalar(v, item, name=name, source=source) for v in value]
    return coerce_scalar(value, hint, name=name, source=source)


def coerce_scalar(value: Any, kind: type, *, name: str, source: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{source}: {name} must be true or false; got {value!r}")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{source}: {name} must be an integer; got {value!r}")
        try:
            return int(value) if not isinstance(value, str) else int(value.strip())
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {name} must be an integer; got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: {name} must be a number; got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {name} must be a number; got {value!r}") from None
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: {name} must be a string; got {value!r}")
        return str(value)
    raise ConfigError(f"{source}: {name} has an unsupported type")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of options; a missing file or a non-mapping is a ConfigError."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML ({error.__class__.__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of option: value")
    return data


# Options a run's config.yaml may lack because the run was saved before they existed, with the value
# such a run had: today's default is not it (CA-SAM's mu and its cutoff became 0.5 and 0.6667 in round 9
# of docs/casam-split.md). Only a run's own file is read this way; a --config file is the user's.
BEFORE_THEY_EXISTED: dict[str, Any] = {"perturb_weight": 0.0, "perturb_cutoff": None, "perturb_groups": 1, "heavy_warmup": 0, "history_from": 0, "heavy_criterion": None, "heavy_groups": None, "heavy_noisy_weight": None, "heavy_rho": None, "history_loss": "training"}


def load_run_config(path: str | Path) -> dict[str, Any]:
    """A run folder's config.yaml as the run was made (see BEFORE_THEY_EXISTED), for resuming and comparing it."""
    return {**BEFORE_THEY_EXISTED, **load_yaml(path)}


def save_yaml(config: TrainConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def resolve(
    *, yaml_path: str | None = None, overrides: dict[str, Any] | None = None, strict: bool = False, run_file: bool = False
) -> TrainConfig:
    """defaults < YAML file < command-line overrides, then validated.

    strict: also refuse options given on the command line that the chosen method does not use
    (a resolved config.yaml lists every option, so files are not checked this way).
    run_file: the YAML file is a run's own config.yaml (--resume), read by `load_run_config`.
    """
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(load_run_config(yaml_path) if run_file else load_yaml(yaml_path))
    config = TrainConfig.from_dict(values, source=str(yaml_path) if yaml_path else "config")
    for key, value in (overrides or {}).items():
        setattr(config, key, coerce(value, key, name=key, source="command line"))
    config.validate()
    if strict:
        config.check_relevant(list(overrides or {}))
    return config
