"""Per-sample record of the model's outputs over training, and the likely-clean split built on it.

CA-SAM decides which samples of a batch are likely clean from what the model has said about them so
far, not from one noisy forward pass. For every training sample i the history keeps

    h_i  (C,)  EMA of the softmax output over the visits k = 1..n_i (p_i^k the output at visit k):
               debias=True (default)  h_i = sum_k beta^(n-k) p_i^k / sum_k beta^(n-k)   (Adam's bias correction)
               debias=False           h_i <- p_i^1 on the first visit, then beta * h_i + (1 - beta) * p_i^k
    l_i        EMA of the per-sample loss, same rule (CASAM records the cross-entropy on the given label,
               `history_loss`; without a loss `update` computes that one itself)
    n_i        number of visits
    y_i        the given (possibly wrong) label, recorded at each visit

all on the training device, updated with vectorised index operations from the detached outputs of the
forward pass the optimizer makes anyway (no extra pass).

Criteria for "likely clean" (`criterion=`):

| name         | likely clean if                                                           | computed     |
| ------------ | ------------------------------------------------------------------------- | ------------ |
| `agreement`  | argmax h_i == y_i                                                         | every step   |
| `confidence` | h_i[y_i] >= tau                                                           | every step   |
| `small-loss` | l_i is among the lowest fraction r of the l_j with the same given label  | `refresh()`  |
| `gmm`        | P(low-mean component) > 0.5 under a 2-component Gaussian mixture fitted   | `refresh()`  |
|              | to the min-max normalised l_i of all visited samples (scikit-learn)       |              |
| `class-thresholds` | no class j != y_i is the likeliest of the classes with h_i[j] >= t_j, | every step,  |
|              | t_j = mean h_k[j] over the visited samples k labelled j                   | t: `refresh()` |

The two global criteria need the whole data set, so `refresh()` computes them once per epoch (CASAM
calls it in `set_epoch` when the history changed since the last refresh; call it yourself otherwise)
and `clean_mask` reads the cached flags. Before the first refresh every sample is flagged clean.

class-thresholds is confident learning's rule (Northcutt et al., "Confident Learning", JAIR 2021) on
the history: a class counts for sample i only if h_i reaches that class's own average self-confidence,
and the sample is flagged only if such a class other than its label is the likeliest of them (no class
reaching its threshold: no evidence, clean). Why: agreement holds every class to the same bar, so a
class the network finds hard (Fashion-MNIST's shirts, whose clean samples it mostly calls T-shirts
early on) loses most of its clean samples to the likely-noisy side; a per-class bar is lower exactly
there. The thresholds t (C,) are refreshed once per epoch (`refresh()`; before the first, everyone is
clean); the split uses each step's h. Measured at symmetric 50 % (docs/casam-split.md, finding 21): recall
2.5-3.9 points higher than agreement's, precision down to 84-87 %, held-out accuracy level; agreement
stays the default.

small-loss's r: `clean_fraction` if given, else 1 - the estimated noise rate, estimated at each
refresh as the fraction of visited samples whose historical prediction disagrees with the given label
(1 - mean[argmax h_i == y_i]). It needs no extra library and tracks the model, which is also its
weakness: once the network memorises wrong labels the estimate falls towards 0 and r towards 1, so
give `clean_fraction` when the noise rate is known. `noise_rate` holds the latest estimate (for gmm,
the weight of the high-loss component).

Two-speed memory (`slow_beta`, agreement only): a second EMA h_slow of the same outputs at a larger
momentum, and a sample counts as clean only if both memories agree with its label (argmax h_i == y_i and
argmax h_slow_i == y_i). Why: a network that memorises a wrong label convinces the fast memory within a
few visits, the slow one only after many, so the flip is caught for longer; the price is that a clean
sample learnt late also waits for the slow memory. The noise estimate stays the fast memory's. Measured
effect: docs/casam-split.md (round 18).

Why debias: with one visit per epoch, the first-visit rule gives the first epoch's output the weight
beta^(n-1): 0.81 of h after three visits at beta 0.9, so the split after a short warm-up is mostly the
verdict of a barely trained network. The bias-corrected mean weighs visit k by beta^(n-k) / sum, so the
latest visit always counts most (0.37 / 0.33 / 0.30 after three visits). Measured effect: docs/casam-split.md.

Samples never visited count as clean: there is no evidence against them, and it makes an untouched
history (warm-up, a fresh run) behave like plain SAM. Indices in one `update` call are expected to be
distinct (a sampler without replacement); with duplicates one of their values is kept.

Memory: N x C x (2 bytes float16/bfloat16, 4 bytes float32) for h (twice that with `slow_beta`), plus N x 17 bytes for l (float32),
n (int32), y (int64) and the cached flags. The largest supported data set, CIFAR-100 (N = 50,000,
C = 100): 20 MB in float32, 10 MB in float16, + 0.85 MB.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SampleHistory", "CRITERIA", "check_usable_criterion"]

CRITERIA = ("agreement", "confidence", "small-loss", "gmm", "class-thresholds")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_usable_criterion(criterion: str, *, slow_beta: float | None) -> None:
    """Refuse a known criterion that a history cannot split by: anything but agreement beside a slow memory
    (the two memories vote on agreement), or gmm without scikit-learn. Shared by the history's constructor
    and by CA-SAM's heavy-noise criterion, which the history takes later."""
    if slow_beta is not None and criterion != "agreement":
        raise ValueError(f"a history with a slow memory (slow_beta, a two-speed memory) works with criterion 'agreement' only, got {criterion!r}")
    if criterion == "gmm":
        try:
            import sklearn.mixture  # noqa: F401
        except ImportError as error:
            raise ImportError("criterion 'gmm' needs scikit-learn: pip install 'casam[sklearn]'") from error


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _blend(store: Tensor, idx: Tensor, new: Tensor, beta: float, first: Tensor) -> None:
    """One EMA step in place: store[idx] <- new where `first` (the first-visit rule), else
    beta * store[idx] + (1 - beta) * new; computed in float32, stored in store's dtype."""
    old = store[idx].float()
    first = first.view(-1, *[1] * (new.ndim - 1))
    store[idx] = torch.where(first, new, old.mul_(beta).add_(new, alpha=1 - beta)).to(store.dtype)


class SampleHistory:
    """Device-resident EMA of softmax outputs and losses for `num_samples` samples of `num_classes` classes.

    Args:
        num_samples: N, the size of the training set (sample indices are 0..N-1).
        num_classes: C.
        beta: EMA momentum in [0, 1); 0 keeps only the latest visit.
        criterion: one of `CRITERIA` (see the module docstring).
        tau: threshold of the confidence criterion, in [0, 1]. 0.5 makes h_i[y_i] a strict majority.
        clean_fraction: r of the small-loss criterion in [0, 1]; None estimates it (module docstring).
        dtype: storage of h (float16/bfloat16 halve its memory; arithmetic is done in float32).
        device: where the history lives (the training device).
        seed: random_state of the Gaussian mixture (gmm), so refresh() is deterministic.
        debias: bias-corrected EMA (module docstring); False: the first visit initialises the EMA.
        slow_beta: momentum of a second, slower memory in (beta, 1) (agreement only; module docstring);
            None: one memory.
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        *,
        beta: float = 0.9,
        criterion: str = "agreement",
        tau: float = 0.5,
        clean_fraction: float | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        seed: int = 0,
        debias: bool = True,
        slow_beta: float | None = None,
    ) -> None:
        if not _is_int(num_samples) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        if not _is_int(num_classes) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not _is_number(beta) or not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        if criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; choose one of: {', '.join(CRITERIA)}")
        if not _is_number(tau) or not 0 <= tau <= 1:
            raise ValueError(f"tau must be in [0, 1], got {tau!r}")
        if clean_fraction is not None and (not _is_number(clean_fraction) or not 0 <= clean_fraction <= 1):
            raise ValueError(f"clean_fraction must be None or in [0, 1], got {clean_fraction!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of float16, bfloat16, float32, float64, got {dtype!r}")
        if not _is_int(seed):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        if not isinstance(debias, bool):
            raise TypeError(f"debias must be True or False, got {debias!r}")
        if slow_beta is not None:
            if not _is_number(slow_beta) or not beta < slow_beta < 1:
                raise ValueError(f"slow_beta must be None or in (beta, 1) = ({beta}, 1), got {slow_beta!r}")
        check_usable_criterion(criterion, slow_beta=slow_beta)
        self.num_samples, self.num_classes = int(num_samples), int(num_classes)
        self.beta, self.criterion, self.tau = float(beta), criterion, float(tau)
        self.clean_fraction, self.seed = (None if clean_fraction is None else float(clean_fraction)), int(seed)
        self.debias = debias
        self.slow_beta = None if slow_beta is None else float(slow_beta)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.probs = torch.zeros(num_samples, num_classes, dtype=dtype, device=self.device)
        self.slow_probs = None if slow_beta is None else torch.zeros_like(self.probs)
        self.losses = torch.zeros(num_samples, dtype=torch.float32, device=self.device)
        self.counts = torch.zeros(num_samples, dtype=torch.int32, device=self.device)
        self.labels = torch.zeros(num_samples, dtype=torch.int64, device=self.device)
        self.flags = torch.ones(num_samples, dtype=torch.bool, device=self.device)
        self.thresholds: Tensor | None = None  # (C,) class-thresholds' t, set by refresh()
        self.noise_rate: float | None = None
        self.stale = False  # updated since the last refresh()

    # ------------------------------------------------------------------ info
    @property
    def memory_bytes(self) -> int:
        """Bytes held by the history's tensors."""
        tensors = (self.probs, self.slow_probs, self.losses, self.counts, self.labels, self.flags)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def __repr__(self) -> str:
        return (
            f"SampleHistory(num_samples={self.num_samples}, num_classes={self.num_classes}, beta={self.beta}, "
            f"criterion={self.criterion!r}, debias={self.debias}, "
            + ("" if self.slow_beta is None else f"slow_beta={self.slow_beta}, ")
            + f"dtype={self.probs.dtype}, device={self.device}, {self.memory_bytes / 2**20:.1f} MiB)"
        )

    # ------------------------------------------------------------------ validation
    def _check_batch(self, indices: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        for name, t in (("indices", indices), ("labels", labels)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")
            if t.ndim != 1:
                raise ValueError(f"{name} must have shape (B,), got {tuple(t.shape)}")
        if indices.shape != labels.shape:
            raise ValueError(f"indices and labels must have the same length, got {len(indices)} and {len(labels)}")
        idx = indices.to(self.device, torch.int64)
        y = labels.to(self.device, torch.int64)
        if idx.numel():
            bad = torch.stack([((idx < 0) | (idx >= self.num_samples)).any(), ((y < 0) | (y >= self.num_classes)).any()])
            bad_idx, bad_y = bad.tolist()  # one host sync for both checks
            if bad_idx:
                value = idx[(idx < 0) | (idx >= self.num_samples)][0].item()
                raise ValueError(f"indices must be in [0, {self.num_samples}), got {value}")
            if bad_y:
                value = y[(y < 0) | (y >= self.num_classes)][0].item()
                raise ValueError(f"labels must be in [0, {self.num_classes}), got {value}")
        return idx, y

    # ------------------------------------------------------------------ per step
    @torch.no_grad()
    def update(self, indices: Tensor, logits: Tensor, labels: Tensor, losses: Tensor | None = None) -> None:
        """Record a batch: indices (B,) into 0..N-1, logits (B, C), given labels (B,), losses (B,) or None.

        Without `losses` the loss EMA follows the cross-entropy of `logits` against `labels`.
        """
        idx, y = self._check_batch(indices, labels)
        if not isinstance(logits, Tensor) or logits.shape != (len(idx), self.num_classes):
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"logits must have shape ({len(idx)}, {self.num_classes}), got {shape}")
        logits = logits.detach().to(self.device, torch.float32)
        if losses is None:
            loss = F.cross_entropy(logits, y, reduction="none")
        else:
            if not isinstance(losses, Tensor) or losses.shape != (len(idx),):
                shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
                raise ValueError(f"losses must have shape ({len(idx)},), got {shape}")
            loss = losses.detach().to(self.device, torch.float32)
        probs = torch.softmax(logits, dim=1)
        # debiased: the stored EMA starts from 0 and is divided by (1 - beta^n) when read (`_correction`)
        first = self.counts[idx] == 0 if not self.debias else torch.zeros_like(idx, dtype=torch.bool)
        _blend(self.probs, idx, probs, self.beta, first)
        if self.slow_probs is not None:
            _blend(self.slow_probs, idx, probs, self.slow_beta, first)
        _blend(self.losses, idx, loss, self.beta, first)
        self.counts[idx] += 1
        self.labels[idx] = y
        self.stale = True

    def _correction(self, idx: Tensor) -> Tensor:
        """(B,) factor turning the stored EMA into h: 1 / (1 - beta^n) when debiased (1 for unvisited), else 1."""
        if not self.debias:
            return torch.ones(len(idx), device=self.device)
        n = self.counts[idx].float()
        return torch.where(n > 0, 1.0 / (1.0 - self.beta ** n).clamp_min(1e-12), 1.0)

    @torch.no_grad()
    def mean_probs(self, indices: Tensor) -> Tensor:
        """(B, C) float32: h_i of the samples `indices` (zeros for samples never visited)."""
        idx = indices.to(self.device, torch.int64)
        return self.probs[idx].float() * self._correction(idx)[:, None]

    @torch.no_grad()
    def mean_losses(self, indices: Tensor | None = None) -> Tensor:
        """(B,) l_i of the samples `indices` (all N if None)."""
        idx = torch.arange(self.num_samples, device=self.device) if indices is None else indices.to(self.device, torch.int64)
        return self.losses[idx] * self._correction(idx)

    @torch.no_grad()
    def predictions(self, indices: Tensor) -> Tensor:
        """(B,) int64: argmax h_i, the historical prediction (0 for samples never visited)."""
        return self.probs[indices.to(self.device, torch.int64)].argmax(dim=1)

    @torch.no_grad()
    def suggested_labels(self, indices: Tensor) -> Tensor:
        """(B,) int64: the label the criterion's evidence points to: argmax h_i, or under class-thresholds
        (once refreshed) the likeliest class that reaches its bar, so a flagged sample never gets its own
        label suggested."""
        idx = indices.to(self.device, torch.int64)
        if self.criterion == "class-thresholds" and self.thresholds is not None:
            likeliest, reached_any = self._likeliest_reached(idx)
            return torch.where(reached_any, likeliest, self.predictions(idx))
        return self.predictions(idx)

    def _likeliest_reached(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """class-thresholds: (likeliest class with h_i[j] >= t_j, whether any class reaches its bar)."""
        h = self.mean_probs(idx)
        reached = h >= self.thresholds
        return h.masked_fill(~reached, -1.0).argmax(dim=1), reached.any(dim=1)

    @torch.no_grad()
    def clean_mask(self, indices: Tensor, labels: Tensor) -> Tensor:
        """(B,) bool: which samples of the batch are likely clean under the criterion (unvisited: True)."""
        idx, y = self._check_batch(indices, labels)
        if self.criterion == "agreement":  # the bias correction is a positive factor per row: argmax unchanged
            clean = self.probs[idx].argmax(dim=1) == y
            if self.slow_probs is not None:
                clean &= self.slow_probs[idx].argmax(dim=1) == y
        elif self.criterion == "confidence":
            clean = self.mean_probs(idx).gather(1, y[:, None]).squeeze(1) >= self.tau
        elif self.criterion == "class-thresholds":
            if self.thresholds is None:
                return torch.ones(len(idx), dtype=torch.bool, device=self.device)
            likeliest, reached_any = self._likeliest_reached(idx)
            clean = ~reached_any | (likeliest == y)
        else:
            clean = self.flags[idx]
        return clean | (self.counts[idx] == 0)

    # ------------------------------------------------------------------ per epoch
    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the data-set-wide quantities: the noise-rate estimate, the small-loss/gmm flags, class-thresholds' t.

        Call once per epoch (cost: one pass over N values, plus a scikit-learn fit on N floats for gmm).
        """
        self.stale = False
        visited = (self.counts > 0).nonzero().squeeze(1)
        flags = torch.ones(self.num_samples, dtype=torch.bool, device=self.device)
        if visited.numel() == 0:
            self.noise_rate, self.flags, self.thresholds = None, flags, None
            return
        agree = (self.probs[visited].argmax(dim=1) == self.labels[visited]).float().mean().item()
        self.noise_rate = 1.0 - agree
        if self.criterion == "small-loss":
            r = self.clean_fraction if self.clean_fraction is not None else agree
            flags[visited] = self._small_loss(self.mean_losses(visited), self.labels[visited], r)
        elif self.criterion == "gmm":
            keep, noise_rate = self._gmm(self.mean_losses(visited))
            flags[visited] = keep
            self.noise_rate = noise_rate
        elif self.criterion == "class-thresholds":
            self.thresholds = self._class_thresholds(self.mean_probs(visited), self.labels[visited])
        self.flags = flags

    def _class_thresholds(self, h: Tensor, labels: Tensor) -> Tensor:
        """(C,) t_c = mean of h_k[c] over the samples labelled c; inf for a class no sample is labelled
        (it can never count)."""
        self_confidence = h.gather(1, labels[:, None]).squeeze(1)
        total = torch.zeros(self.num_classes, device=h.device).index_add_(0, labels, self_confidence)
        count = torch.bincount(labels, minlength=self.num_classes).float()
        return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("inf")))

    def _small_loss(self, loss: Tensor, labels: Tensor, r: float) -> Tensor:
        """Per class c with n_c samples, keep the round(r * n_c) lowest losses (ties: lower position first)."""
        order = torch.argsort(loss, stable=True)
        order = order[torch.argsort(labels[order], stable=True)]  # grouped by class, ascending loss within
        sorted_labels = labels[order]
        per_class = torch.bincount(sorted_labels, minlength=self.num_classes)
        start = torch.cumsum(per_class, 0) - per_class
        rank = torch.arange(len(order), device=loss.device) - start[sorted_labels]
        quota = torch.floor(per_class.double() * r + 0.5).long()
        keep = torch.empty_like(labels, dtype=torch.bool)
        keep[order] = rank < quota[sorted_labels]
        return keep

    def _gmm(self, loss: Tensor) -> tuple[Tensor, float]:
        """Two-component 1-D Gaussian mixture on min-max normalised losses; P(low-mean component) > 0.5."""
        from sklearn.mixture import GaussianMixture

        values = loss.double().cpu()
        lo, hi = values.min(), values.max()
        if len(values) < 2 or hi - lo <= 1e-12 * max(1.0, abs(hi.item())):
            return torch.ones(len(loss), dtype=torch.bool, device=loss.device), 0.0
        x = ((values - lo) / (hi - lo)).numpy()[:, None]
        gmm = GaussianMixture(n_components=2, max_iter=100, tol=1e-3, reg_covar=5e-4, random_state=self.seed).fit(x)
        low = int(gmm.means_[:, 0].argmin())
        p_clean = torch.from_numpy(gmm.predict_proba(x)[:, low])
        return (p_clean > 0.5).to(loss.device), float(gmm.weights_[1 - low])

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {
            "probs": self.probs.clone(), "losses": self.losses.clone(), "counts": self.counts.clone(),
            "labels": self.labels.clone(), "flags": self.flags.clone(), "noise_rate": self.noise_rate, "stale": self.stale,
            "thresholds": None if self.thresholds is None else self.thresholds.clone(),
            "slow_probs": None if self.slow_probs is None else self.slow_probs.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a `state_dict()`; shapes must match this history (N, C); dtype and device are converted."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = {"probs", "losses", "counts", "labels", "flags"} - set(state)
        if missing:
            raise ValueError(f"history state is missing {sorted(missing)}")
        for name in ("probs", "losses", "counts", "labels", "flags"):
            mine, theirs = getattr(self, name), state[name]
            if not isinstance(theirs, Tensor) or theirs.shape != mine.shape:
                shape = tuple(theirs.shape) if isinstance(theirs, Tensor) else type(theirs).__name__
                raise ValueError(f"history state {name!r} has shape {shape}, this history needs {tuple(mine.shape)} (N={self.num_samples}, C={self.num_classes})")
        for name in ("probs", "losses", "counts", "labels", "flags"):
            getattr(self, name).copy_(state[name])
        self.noise_rate = state.get("noise_rate")
        self.stale = bool(state.get("stale", False))
        thresholds = state.get("thresholds")  # absent in checkpoints from before class-thresholds
        self.thresholds = None if thresholds is None else thresholds.to(self.device, torch.float32)
        if self.slow_probs is not None:
            slow = state.get("slow_probs")
            if not isinstance(slow, Tensor) or slow.shape != self.slow_probs.shape:
                raise ValueError("history state has no slow memory of this shape; it was saved without slow_beta")
            self.slow_probs.copy_(slow)
