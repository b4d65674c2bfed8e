"""Robust losses for learning with noisy labels, usable with any optimizer (SGD, SAM, ASAM, CA-SAM).

Every loss returns PER-SAMPLE losses, shape (B,), with no reduction, because CA-SAM masks and
weights samples one by one. Inputs: logits (B, C) float, targets (B,) int64 class indices in
[0, C), optional indices (B,) int64 positions of the samples in the training set (only ELR needs
them).

Interface (`NoisyLabelLoss`):
- `forward(logits, targets, indices=None)` is pure: it never changes the loss's state, so SAM's
  second pass at `w + e` can call it again safely.
- `observe(logits, indices)` updates the state once per optimisation step (ELR's temporal-ensemble
  targets) from the first-pass logits at `w`; a no-op for stateless losses. Call it BEFORE
  `forward` in the same step: the ELR reference updates the targets with the current prediction
  and then computes the regulariser with the updated targets.
- state lives in buffers, so `state_dict()` / `load_state_dict()` carry it in checkpoints.

`build_loss(name, *, num_samples, num_classes, preset=None, **options)` builds one by name;
`PUBLISHED` lists the published CIFAR-10 / CIFAR-100 hyperparameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("ce", "gce", "sce", "apl", "elr")

# Published hyperparameters per data set (the CIFAR-10 values are the class defaults).
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    "ce": {"cifar10": {}, "cifar100": {}},
    "gce": {"cifar10": {"q": 0.7}, "cifar100": {"q": 0.7}},
    "sce": {"cifar10": {"alpha": 0.1, "beta": 1.0}, "cifar100": {"alpha": 6.0, "beta": 0.1}},
    "apl": {"cifar10": {"alpha": 1.0, "beta": 1.0}, "cifar100": {"alpha": 10.0, "beta": 0.1}},
    "elr": {"cifar10": {"beta": 0.7, "lam": 3.0}, "cifar100": {"beta": 0.9, "lam": 7.0}},
}

# A, the value log 0 of the one-hot label is clipped to in the reverse CE. The SCE paper states
# A = -4 (our default). The authors' public code clamps the one-hot label to [1e-4, 1] and takes the
# natural log, i.e. A = ln(1e-4) ~ -9.21; pass log_zero=math.log(1e-4) to reproduce the code.
RCE_LOG_ZERO = -4.0


def _check_weight(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return float(value)


class NoisyLabelLoss(nn.Module):
    """Base class: per-sample loss (B,), pure forward, separate once-per-step `observe`.

    `num_classes`, when given, is checked against the logits' width.
    """

    def __init__(self, *, num_classes: int | None = None):
        super().__init__()
        if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2):
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
        self.num_classes = num_classes

    def _check(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ValueError(f"logits must be a 2-D tensor (batch, classes), got shape {tuple(getattr(logits, 'shape', ()))}.")
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, but the loss was built for num_classes={self.num_classes}.")
        if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape[:1] or targets.dtype != torch.long:
            raise ValueError(
                f"targets must be an int64 tensor of shape ({logits.shape[0]},), got "
                f"{getattr(targets, 'dtype', type(targets).__name__)} of shape {tuple(getattr(targets, 'shape', ()))}."
            )

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, logits: torch.Tensor, indices: torch.Tensor) -> None:
        """Once-per-step state update from the first-pass logits; stateless losses do nothing."""


class CELoss(NoisyLabelLoss):
    """Cross-entropy, -log p_y. No hyperparameters."""

    def forward(self, logits, targets, indices=None):
        self._check(logits, targets)
        return F.cross_entropy(logits, targets, reduction="none")


class GCELoss(NoisyLabelLoss):
    """Generalized cross-entropy (Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep
    Neural Networks with Noisy Labels", NeurIPS 2018).

    L_q = (1 - p_y^q) / q, q in (0, 1]; published q = 0.7. q -> 0 tends to CE, q = 1 is MAE/2 = 1 - p_y.
    Gradient: dL_q/dz = p_y^q * (p - onehot(y)), CE's gradient down-weighted on low-confidence samples.
    Computed as -expm1(q log p_y) / q, accurate for small q.
    Departure: the truncated variant L_trunc (with k = 0.5 and periodic pruning) is not implemented.
    """

    def __init__(self, *, q: float = 0.7, num_classes: int | None = None):
        super().__init__(num_classes=num_classes)
        if not isinstance(q, (int, float)) or isinstance(q, bool) or not (0 < q <= 1):
            raise ValueError(f"q must be in (0, 1], got {q!r}.")
        self.q = float(q)

    def forward(self, logits, targets, indices=None):
        self._check(logits, targets)
        log_py = logits.log_softmax(1).gather(1, targets[:, None]).squeeze(1)
        return -torch.expm1(self.q * log_py) / self.q


def _check_log_zero(value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value >= 0:
        raise ValueError(f"log_zero (the clipped log 0, A) must be a finite number < 0, got {value!r}.")
    return float(value)


def _reverse_ce(logits: torch.Tensor, targets: torch.Tensor, log_zero: float) -> torch.Tensor:
    """RCE = -sum_k p_k log q_k with q the one-hot label and log 0 clipped to A = log_zero:
    = -A * sum_{k != y} p_k = -A (1 - p_y), shape (B,). Summed over k != y (not 1 - p_y) for accuracy."""
    p = logits.softmax(1)
    off = p.scatter(1, targets[:, None], 0.0).sum(1)
    return -log_zero * off


def _init_weighted_pair(loss: nn.Module, alpha: float, beta: float, log_zero: float) -> None:
    """Shared by SCE and APL: alpha (active term) and beta (reverse CE) weights, and RCE's log 0."""
    loss.alpha, loss.beta = _check_weight("alpha", alpha), _check_weight("beta", beta)
    loss.log_zero = _check_log_zero(log_zero)
    if loss.alpha == 0 and loss.beta == 0:
        raise ValueError("alpha and beta cannot both be 0: the loss would be identically zero.")


class SCELoss(NoisyLabelLoss):
    """Symmetric cross-entropy (Wang et al., "Symmetric Cross Entropy for Robust Learning with Noisy
    Labels", ICCV 2019).

    L = alpha * CE + beta * RCE, RCE = -sum_k p_k log q_k with q the one-hot label and log 0 clipped
    to A = log_zero, i.e. RCE = -A (1 - p_y). Published: CIFAR-10 alpha = 0.1, beta = 1.0 (defaults);
    CIFAR-100 alpha = 6.0, beta = 0.1 (`PUBLISHED["sce"]`); A = -4 as in the paper (the authors'
    code effectively uses A = ln(1e-4) ~ -9.21: pass log_zero=math.log(1e-4) to match it).
    Departure: the reference code also clamps p to >= 1e-7 inside RCE; we do not (it changes the
    value by < 1e-6 per class and only zeroes gradients of vanishing probabilities).
    """

    def __init__(self, *, alpha: float = 0.1, beta: float = 1.0, log_zero: float = RCE_LOG_ZERO, num_classes: int | None = None):
        super().__init__(num_classes=num_classes)
        _init_weighted_pair(self, alpha, beta, log_zero)

    def forward(self, logits, targets, indices=None):
        self._check(logits, targets)
        return self.alpha * F.cross_entropy(logits, targets, reduction="none") + self.beta * _reverse_ce(logits, targets, self.log_zero)


class APLLoss(NoisyLabelLoss):
    """Active-Passive Loss NCE+RCE (Ma et al., "Normalized Loss Functions for Deep Learning with
    Noisy Labels", ICML 2020).

    L = alpha * NCE + beta * RCE, NCE = (-log p_y) / (-sum_k log p_k) in [0, 1] (normalised CE,
    the active term), RCE as in `SCELoss`, RCE = -A (1 - p_y) (the passive term).
    Published: CIFAR-10 alpha = 1, beta = 1 (defaults); CIFAR-100 alpha = 10, beta = 0.1
    (`PUBLISHED["apl"]`); A = -4 as in the SCE paper (the authors' code: ln(1e-4), see `SCELoss`).
    Departure: no p >= 1e-7 clamp inside RCE (see `SCELoss`).
    """

    def __init__(self, *, alpha: float = 1.0, beta: float = 1.0, log_zero: float = RCE_LOG_ZERO, num_classes: int | None = None):
        super().__init__(num_classes=num_classes)
        _init_weighted_pair(self, alpha, beta, log_zero)

    def forward(self, logits, targets, indices=None):
        self._check(logits, targets)
        log_p = logits.log_softmax(1)
        nce = log_p.gather(1, targets[:, None]).squeeze(1) / log_p.sum(1)
        return self.alpha * nce + self.beta * _reverse_ce(logits, targets, self.log_zero)


class ELRLoss(NoisyLabelLoss):
    """Early-learning regularisation (Liu et al., "Early-Learning Regularization Prevents
    Memorization of Noisy Labels", NeurIPS 2020).

    Per sample i a temporal-ensemble target t_i (buffer `targets`, (num_samples, num_classes)):
        observe:  p = clamp(softmax(z), 1e-4, 1 - 1e-4), detached;  t_i <- beta t_i + (1 - beta) p / sum(p)
        forward:  L_i = CE(z_i, y_i) + lam * log(1 - <t_i, p_i>)   (p clamped as above, not detached)
    The regulariser pulls p_i towards t_i, the model's early-learning prediction, and so away from a
    wrong label it would otherwise memorise. Published: CIFAR-10 beta = 0.7, lam = 3 (defaults);
    CIFAR-100 beta = 0.9, lam = 7 (`PUBLISHED["elr"]`). Targets are zero-initialised, as in the
    reference code (the first observe gives t_i = (1 - beta) p_i, not p_i).
    The reference updates the targets inside its forward; here that update is `observe`, which the
    trainer calls once per step before `forward` (so SAM's second pass does not update twice).
    Duplicate indices within one batch: the last write wins (undefined order on GPU).
    Departure: the paper's ELR+ (two networks, weight averaging, mixup) is not implemented.
    """

    def __init__(self, *, num_samples: int, num_classes: int, beta: float = 0.7, lam: float = 3.0):
        if not isinstance(num_classes, int) or isinstance(num_classes, bool):
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
        super().__init__(num_classes=num_classes)
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}.")
        if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not (0 <= beta < 1):
            raise ValueError(f"beta must be in [0, 1), got {beta!r}.")
        self.beta = float(beta)
        self.lam = _check_weight("lam", lam)
        self.register_buffer("targets", torch.zeros(num_samples, num_classes))

    def _check_indices(self, indices, batch: int) -> None:
        if indices is None:
            raise ValueError("ELR needs the samples' dataset indices: pass indices, an int64 tensor of shape (batch,).")
        if not isinstance(indices, torch.Tensor) or indices.shape != (batch,) or indices.dtype != torch.long:
            raise ValueError(
                f"indices must be an int64 tensor of shape ({batch},), got "
                f"{getattr(indices, 'dtype', type(indices).__name__)} of shape {tuple(getattr(indices, 'shape', ()))}."
            )

    @staticmethod
    def _probs(logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(1).clamp(1e-4, 1 - 1e-4)

    @torch.no_grad()
    def observe(self, logits, indices):
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be a 2-D tensor (batch, {self.num_classes}), got shape {tuple(getattr(logits, 'shape', ()))}.")
        self._check_indices(indices, logits.shape[0])
        p = self._probs(logits.detach().to(self.targets.dtype))
        self.targets[indices] = self.beta * self.targets[indices] + (1 - self.beta) * p / p.sum(1, keepdim=True)

    def forward(self, logits, targets, indices=None):
        self._check(logits, targets)
        self._check_indices(indices, logits.shape[0])
        t = self.targets[indices].to(logits.dtype)
        reg = torch.log(1 - (t * self._probs(logits)).sum(1))
        return F.cross_entropy(logits, targets, reduction="none") + self.lam * reg


_CLASSES = {"ce": CELoss, "gce": GCELoss, "sce": SCELoss, "apl": APLLoss, "elr": ELRLoss}
_OPTIONS = {"ce": (), "gce": ("q",), "sce": ("alpha", "beta", "log_zero"), "apl": ("alpha", "beta", "log_zero"), "elr": ("beta", "lam")}


def build_loss(name: str, *, num_samples: int, num_classes: int, preset: str | None = None, **options) -> NoisyLabelLoss:
    """Loss by name (one of LOSSES). `preset` ("cifar10" or "cifar100") takes the published values
    from `PUBLISHED`; explicit `options` override them; without either the CIFAR-10 values apply.
    An option the loss does not take is refused (e.g. q for sce)."""
    if name not in _CLASSES:
        raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSSES)}.")
    if preset is not None and preset not in PUBLISHED[name]:
        raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PUBLISHED[name])}.")
    for key in options:
        if key not in _OPTIONS[name]:
            allowed = ", ".join(_OPTIONS[name]) or "none"
            raise ValueError(f"option {key!r} is not accepted by loss {name!r}; allowed: {allowed}.")
    kwargs = {**(PUBLISHED[name][preset] if preset else {}), **options}
    if name == "elr":
        return ELRLoss(num_samples=num_samples, num_classes=num_classes, **kwargs)
    return _CLASSES[name](num_classes=num_classes, **kwargs)
