"""CA-SAM: SAM whose perturbation is chosen by the likely-clean samples of the batch.

Per batch B (indices I, given labels y), with `history` a `casam.history.SampleHistory`:

    1. one forward pass at w: logits, per-sample losses l_i; the history records the batch (detached;
       from epoch `history_from_epoch` on; its loss is the cross-entropy on the given label, `history_loss`)
    2. C = history.clean_mask(I, y)            (C = B during the first `warmup_epochs` epochs, or
                                                `heavy_warmup_epochs` under heavy noise; under heavy
                                                noise the criterion may be `heavy_criterion`, and
                                                `grouped_step`'s groups `heavy_groups`)
       fallback: |C| < min_clean  ->  the perturbation uses B (the update weights below still use C)
    3. g_C = grad (1/|C|) sum_{i in C} l_i(w),   e = rho * g_C / ||g_C||   (ASAM's T scaling with adaptive=True)
       (perturb_weight mu: the other samples join the loss at weight mu; perturb_cutoff: mu 0 under heavy noise,
       and the radius `heavy_rho` if set)
    4. g   = grad (1/|B|) sum_{i in B} a_i l_i(w + e),   a_i = 1 if i in C else lambda (`noisy_weight`;
       `heavy_noisy_weight` under heavy noise, if set)
       noisy_target="history": the loss of a sample outside C is taken against its historical prediction
       argmax h_i instead of its given label (ask `targets(y)` for the labels of the second pass)
    5. w  <- base_step(w, g)    (w restored exactly first)

Steps 1-3 share the forward pass the training loop makes anyway: the cost is SAM's. The loop::

    for x, y, idx in loader:                        # idx: the samples' positions in the training set
        logits = model(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        clean = opt.first_step(losses, logits=logits, indices=idx, labels=y)
        with frozen_bn_stats(model):
            losses2 = F.cross_entropy(model(x), opt.targets(y), reduction="none")
        opt.second_step(losses2)
    opt.set_epoch(epoch + 1)                        # warm-up counter; refreshes the history's global criteria

or `opt.step(closure, indices=idx, labels=y, model=model)` where `closure()` returns (logits, per-sample
losses) for the batch, with their graph and without calling backward (with noisy_target="history" the
second call is `closure(targets)`: the losses against those labels).

Mixed precision: run the forward passes under `torch.autocast` and pass the GradScaler as `scaler=` to
both steps; the steps scale their own backward passes (see `casam.optim.sam` for the skipping rules).

Diagnostics, cheap (no host sync): `last_clean_mask` (B,) bool (C), `last_fallback` 0-dim bool.
`measure_cosine=True` also sets `last_grad_cosine`, the cosine between g_C and the full-batch gradient
(one extra backward per step, so off by default).

Data parallel (DDP, see docs/distributed.md): `_update_history` all-gathers (indices, logits, labels,
losses) from every rank before recording them, so every rank holds the same history and makes the same
split; `_global_mean` normalises by the all-reduced global clean count (times the world size, since DDP
averages the ranks' gradients), so the averaged perturbation gradient is that of the global clean mean.
Inside `casam.distributed.local_gradients` (m-sharpness: no gradient sync) it uses the local count.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from casam import distributed
from casam.history import CRITERIA, SampleHistory, check_usable_criterion
from casam.optim.bn import frozen_bn_stats
from casam.optim.sam import SAM, _check_count, _check_optional_radius, _global_norm

__all__ = ["CASAM", "HISTORY_LOSSES", "NOISY_TARGETS", "PERTURB_FROM"]

NOISY_TARGETS = ("given", "history")
PERTURB_FROM = ("clean", "noisy", "confidence")
HISTORY_LOSSES = ("cross-entropy", "training")


class CASAM(SAM):
    """Clean-aware SAM (see the module docstring).

    Args:
        params, base_optimizer, rho, adaptive, eta, **base_kwargs: as in `SAM`.
        history: the per-sample history that records each batch and provides the clean mask.
        noisy_weight: lambda >= 0, the weight of likely-noisy samples in the update gradient (1 keeps them fully).
        warmup_epochs: epochs of SAM on the whole batch (C = B) while the history is uninformative.
        min_clean: a batch with fewer likely-clean samples perturbs with the whole batch.
        measure_cosine: compute `last_grad_cosine` each step (costs one extra backward).
        warmup_rho: the radius during the warm-up epochs, as in `SAM` (None: rho). 0 makes the warm-up
            plain SGD (two passes still), for noise so heavy that SAM's whole-batch perturbation stops learning.
        noisy_target: "given" trains likely-noisy samples on their given labels; "history" on their
            historical prediction, so the update stops pulling the network towards labels the history doubts.
        perturb_from: "clean" (CA-SAM) or "noisy", a control for the study of why CA-SAM works: the
            perturbation from the likely-noisy samples (a batch with fewer than `min_clean` of them
            perturbs with the whole batch). The update is the same in both. "confidence": no mask but
            soft weights, every sample weighted by the history's (bias-corrected) probability of its
            given label, sum_i h_i[y_i] l_i / sum_i h_i[y_i]: the gradient of the loss the history
            expects to be clean. A mislabelled sample the network starts to memorise gains weight, so
            SAM's flatness pressure returns where it is needed, with no dial for the noise level.
        perturb_weight: mu in [0, 1], the weight of the other side's samples in the perturbation's loss
            (1/sum a_i) sum a_i l_i: 0 is CA-SAM (that side only), 1 is SAM's whole-batch direction.
            SAM's flatness pressure on the samples left out is what keeps them from being memorised
            at moderate noise; at heavy noise it is what stops learning (docs/casam-split.md).
        perturb_balance: with perturb_weight, weigh the two sides by their means instead of their
            samples, mean_S l + mu mean_O l, so that mu means the same at any noise level (at 80 % noise
            the likely-noisy side is most of the batch and would otherwise outweigh the clean one).
        perturb_cutoff: a switch for perturb_weight, in (0, 1]: when the warm-up ends, the history's
            estimate of the noise rate (`history.noise_rate`) is read once (`noise_estimate`); above the
            cutoff mu is 0 for the rest of the run. mu helps at moderate noise and loses the network at
            heavy noise (docs/casam-split.md); the estimate is read before memorisation can lower it.
            2/3 is where per-sample mu 0.5 gives the two sides equal weight. With mu 0 (or soft weights)
            there is nothing to switch: the estimate is still read and reported.
        heavy_warmup_epochs: with perturb_cutoff, the warm-up's length in all when the estimate read after
            `warmup_epochs` is above the cutoff (0: no extension). At heavy noise a split made after two
            epochs rests half on the first epoch's near-chance outputs and confirms itself from there.
            Measured at symmetric 80 % (docs/casam-split.md, round 27): 5 epochs rescued the runs whose
            split had started badly and cost the others, as plain SGD stops improving there; off by default.
        history_from_epoch: the first epoch whose outputs the history records, before `warmup_epochs`
            (0: all). The first epoch's outputs come from a network that has barely learned (22-48 % test
            accuracy at symmetric 80 %), yet after a two-epoch warm-up they carry 47 % of every h_i; 1
            leaves them out, so the split starts from the second epoch's outputs alone. Measured there
            (docs/casam-split.md, round 28): the split then starts less precise on every tuning seed (one
            epoch's outputs are a noisier verdict than two); off by default.
        heavy_criterion: with perturb_cutoff, the history's criterion (one of `casam.history.CRITERIA`)
            from the moment the estimate read after the warm-up is above the cutoff (None: unchanged).
            At symmetric 80 % agreement's split starts lopsided: it keeps most clean samples of the
            classes the young network already names and few or none of the others, and the perturbation
            and update it weights then teach those classes only; small-loss keeps the same share of
            every given class. Measured there (docs/casam-split.md, round 29): every tuning seed ahead,
            test 61.5 against 48.9 %; `casam train` takes small-loss with cross-entropy, the class None.
        heavy_groups: with perturb_cutoff, the perturbation groups a step takes (`perturbation_groups`)
            once the estimate read after the warm-up is above the cutoff (None: the caller's). The groups
            stop memorisation in long runs at moderate noise (round 24); at symmetric 80 % a group of 16
            holds about 2 likely-clean samples, which its perturbation rests on. Measured there in 30
            epochs with the small-loss split (docs/casam-split.md, round 30): one perturbation per batch
            ahead on every tuning seed; `casam train` takes 1 with cross-entropy, the class None.
        heavy_noisy_weight: with perturb_cutoff, lambda from the first split on once the estimate read
            after the warm-up is above the cutoff (None: `noisy_weight` throughout). ELR's lambda 1 was
            chosen at moderate noise (round 12). Measured at symmetric 80 % with ELR's loss
            (docs/casam-split.md, round 31): small-loss alone and lambda 0.5 alone each level with ELR's
            defaults, the two together ahead on every tuning seed; `casam train` takes 0.5 with ELR,
            the class None.
        heavy_rho: with perturb_cutoff, the radius of every parameter group from the first split on once
            the estimate read after the warm-up is above the cutoff (None: each group's rho throughout).
            With ELR the radius is asked per regime (docs/casam-split.md, rounds 33-34): 0.02 was ahead of
            0.05 at moderate noise, where ELR's target term already holds memorisation down and SAM's
            pressure costs fit; at symmetric 80 %, where the clean-only perturbation is what lets the
            network learn, 0.05 stays until measured otherwise. `casam train` takes 0.05 with ELR, the
            class None.
        history_loss: the per-sample loss the history records, which the loss-based criteria (small-loss,
            gmm) rank: "cross-entropy" of the first pass's logits against the given labels, whatever loss
            trains the network, or "training", the `losses` given to the step. A training loss with a
            term that ignores the label ranks by that term: ELR's lam * log(1 - <p, t>) is lowest for the
            samples the network is surest of, so with "training" small-loss filled every given class's
            share with confident sneakers, bags and boots, whatever their label (docs/casam-split.md,
            round 32). With cross-entropy the two are the same number.
    """

    _WRAPPER = "CASAM"

    def __init__(
        self,
        params: Any,
        base_optimizer: type[Optimizer] | Optimizer,
        *,
        history: SampleHistory,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.01,
        noisy_weight: float = 1.0,
        warmup_epochs: int = 2,
        min_clean: int = 8,
        measure_cosine: bool = False,
        noisy_target: str = "given",
        warmup_rho: float | None = None,
        perturb_from: str = "clean",
        perturb_weight: float = 0.0,
        perturb_balance: bool = False,
        perturb_cutoff: float | None = None,
        heavy_warmup_epochs: int = 0,
        history_from_epoch: int = 0,
        heavy_criterion: str | None = None,
        heavy_groups: int | None = None,
        heavy_noisy_weight: float | None = None,
        heavy_rho: float | None = None,
        history_loss: str = "cross-entropy",
        **base_kwargs: Any,
    ) -> None:
        if not isinstance(history, SampleHistory):
            raise TypeError(f"history must be a casam.history.SampleHistory, got {type(history).__name__}")
        lambdas = [("noisy_weight", noisy_weight)] + ([("heavy_noisy_weight", heavy_noisy_weight)] if heavy_noisy_weight is not None else [])
        for name, value in lambdas:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} (lambda) must be a finite number >= 0, got {value!r}")
        _check_count("min_clean", min_clean)
        if noisy_target not in NOISY_TARGETS:
            raise ValueError(f"noisy_target must be one of {', '.join(NOISY_TARGETS)}, got {noisy_target!r}")
        if perturb_from not in PERTURB_FROM:
            raise ValueError(f"perturb_from must be one of {', '.join(PERTURB_FROM)}, got {perturb_from!r}")
        if isinstance(perturb_weight, bool) or not isinstance(perturb_weight, numbers.Real) or not 0 <= perturb_weight <= 1:
            raise ValueError(f"perturb_weight must be a number in [0, 1], got {perturb_weight!r}")
        if not isinstance(perturb_balance, bool):
            raise TypeError(f"perturb_balance must be True or False, got {perturb_balance!r}")
        if perturb_from == "confidence" and (perturb_weight or perturb_balance):
            raise ValueError("perturb_from='confidence' weighs every sample itself; leave perturb_weight 0 and perturb_balance False")
        if perturb_cutoff is not None:
            if isinstance(perturb_cutoff, bool) or not isinstance(perturb_cutoff, numbers.Real) or not 0 < perturb_cutoff <= 1:
                raise ValueError(f"perturb_cutoff must be a number in (0, 1] or None, got {perturb_cutoff!r}")
        _check_count("heavy_warmup_epochs", heavy_warmup_epochs)
        _check_count("history_from_epoch", history_from_epoch)
        if heavy_criterion is not None:
            if heavy_criterion not in CRITERIA:
                raise ValueError(f"heavy_criterion must be None or one of {', '.join(CRITERIA)}, got {heavy_criterion!r}")
            try:
                check_usable_criterion(heavy_criterion, slow_beta=history.slow_beta)
            except ValueError as error:
                raise ValueError(f"heavy_criterion: {error}") from None
        if heavy_groups is not None:
            if isinstance(heavy_groups, bool) or not isinstance(heavy_groups, numbers.Integral) or heavy_groups < 1:
                raise ValueError(f"heavy_groups must be None or an integer >= 1, got {heavy_groups!r}")
        _check_optional_radius("heavy_rho", heavy_rho)
        if perturb_cutoff is None:  # the heavy-noise options act when the estimate is above the cutoff
            for name, given in (("heavy_warmup_epochs", heavy_warmup_epochs > 0), ("heavy_criterion", heavy_criterion is not None),
                                ("heavy_groups", heavy_groups is not None), ("heavy_noisy_weight", heavy_noisy_weight is not None),
                                ("heavy_rho", heavy_rho is not None)):
                if given:
                    raise ValueError(f"{name} needs perturb_cutoff: it acts when the noise estimate is above it")
        if history_loss not in HISTORY_LOSSES:
            raise ValueError(f"history_loss must be one of {', '.join(HISTORY_LOSSES)}, got {history_loss!r}")
        if not isinstance(measure_cosine, bool):
            raise TypeError(f"measure_cosine must be True or False, got {measure_cosine!r}")
        super().__init__(
            params, base_optimizer, rho=rho, adaptive=adaptive, eta=eta, warmup_epochs=warmup_epochs, warmup_rho=warmup_rho, **base_kwargs
        )
        if history_from_epoch and history_from_epoch >= self.warmup_epochs:
            raise ValueError(
                f"history_from_epoch must be below warmup_epochs ({self.warmup_epochs}): the split needs a history when the warm-up ends, got {history_from_epoch}"
            )
        self.history = history
        self.noisy_weight = float(noisy_weight)
        self.min_clean = int(min_clean)
        self.measure_cosine = measure_cosine
        self.noisy_target = noisy_target
        self.perturb_from = perturb_from
        self.perturb_weight = float(perturb_weight)
        self.perturb_balance = perturb_balance
        self.perturb_cutoff = None if perturb_cutoff is None else float(perturb_cutoff)
        self.heavy_warmup_epochs = int(heavy_warmup_epochs)
        self.history_from_epoch = int(history_from_epoch)
        self.heavy_criterion = heavy_criterion
        self.heavy_groups = None if heavy_groups is None else int(heavy_groups)
        self.heavy_noisy_weight = None if heavy_noisy_weight is None else float(heavy_noisy_weight)
        self.heavy_rho = None if heavy_rho is None else float(heavy_rho)
        self.history_loss = history_loss
        self.noise_estimate: float | None = None  # the history's noise rate when the switch was read (perturb_cutoff)
        self.last_clean_mask: Tensor | None = None
        self.last_fallback: Tensor | None = None
        self.last_grad_cosine: Tensor | None = None
        self._clean: Tensor | None = None  # the mask of the step in progress, for second_step's weights
        self._indices: Tensor | None = None  # its sample indices, for targets()

    # ------------------------------------------------------------------ epochs and state
    def set_epoch(self, epoch: int) -> None:
        """Set the epoch about to start (0-based). Refreshes the history's global criteria if it changed."""
        super().set_epoch(epoch)
        if self.history.stale:
            self.history.refresh()
        if self.perturb_cutoff is not None and self.noise_estimate is None and not self.in_warmup:
            self.noise_estimate = self.history.noise_rate  # None on a history still empty: read next epoch
            if self._use_heavy_criterion():
                self.history.refresh()  # the new criterion's flags or thresholds, before the split starts

    def _use_heavy_criterion(self) -> bool:
        """Under heavy noise, hand the history `heavy_criterion`; True if that changed it."""
        if self.heavy_criterion is None or not self.heavy_noise or self.history.criterion == self.heavy_criterion:
            return False
        self.history.criterion = self.heavy_criterion
        return True

    @property
    def heavy_noise(self) -> bool:
        """perturb_cutoff's switch has read the noise estimate and found it above the cutoff."""
        return None not in (self.perturb_cutoff, self.noise_estimate) and self.noise_estimate > self.perturb_cutoff

    def perturbation_groups(self, groups: int) -> int:
        """The perturbation groups a step takes now, where the caller asks for `groups` (see `grouped_step`):
        `heavy_groups` once perturb_cutoff's switch has found heavy noise (if set), else `groups`."""
        return self.heavy_groups if self.heavy_groups is not None and self.heavy_noise else groups

    @property
    def in_warmup(self) -> bool:
        """The first `warmup_epochs` epochs, and under heavy noise those up to `heavy_warmup_epochs`."""
        return self.epoch < self.warmup_epochs or (self.epoch < self.heavy_warmup_epochs and self.heavy_noise)

    @property
    def current_noisy_weight(self) -> float:
        """lambda as it applies now: `heavy_noisy_weight` once perturb_cutoff's switch has found heavy noise (if set), else noisy_weight."""
        return self.heavy_noisy_weight if self.heavy_noisy_weight is not None and self.heavy_noise else self.noisy_weight

    def _radius(self, group: dict[str, Any]) -> float:
        """The warm-up's radius in the warm-up, `heavy_rho` after it once the switch has found heavy noise (if set), else the group's."""
        if self.heavy_rho is not None and self.heavy_noise and not self.in_warmup:
            return self.heavy_rho
        return super()._radius(group)

    @property
    def current_perturb_weight(self) -> float:
        """mu as it applies now: perturb_weight, or 0 once perturb_cutoff's switch has found heavy noise."""
        return 0.0 if self.heavy_noise else self.perturb_weight

    def _wrapper_state(self) -> dict[str, Any]:
        return {**super()._wrapper_state(), "history": self.history.state_dict(), "noise_estimate": self.noise_estimate}

    def _load_wrapper_state(self, wrapper: dict[str, Any] | None) -> None:
        if wrapper is None:
            raise ValueError("state_dict has no CA-SAM part (epoch, history): it was not saved by CASAM.state_dict()")
        self.history.load_state_dict(wrapper["history"])
        self.noise_estimate = wrapper.get("noise_estimate")
        self._use_heavy_criterion()  # the saved flags and thresholds are already the criterion's
        super()._load_wrapper_state(wrapper)

    # ------------------------------------------------------------------ the two steps
    def first_step(  # type: ignore[override]
        self,
        losses: Tensor,
        zero_grad: bool = True,
        *,
        logits: Tensor,
        indices: Tensor,
        labels: Tensor,
        scaler: torch.amp.GradScaler | None = None,
    ) -> Tensor:
        """Record the batch, split it, back-propagate the clean mean and move to w + e.

        losses: (B,) per-sample losses at w with their graph; logits: (B, C) of the same pass;
        indices: (B,) positions of the samples in the training set; labels: (B,) given labels.
        Gradients present before the call are discarded. Returns C as a (B,) bool mask (all True in warm-up).
        """
        clean = self._record_and_split(losses, logits, indices, labels)
        if self.measure_cosine:
            full = self._grads_of(losses.mean())
        loss, fallback = self._perturbation_loss(losses, clean, indices, labels)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if self.measure_cosine:
            self.last_grad_cosine = self._cosine_with_grads(full)
        self._perturb(zero_grad=zero_grad, scaler=scaler)
        self._clean, self._indices = clean, indices
        self.last_clean_mask, self.last_fallback = clean, fallback
        return clean

    def _record_and_split(self, losses: Tensor, logits: Tensor, indices: Tensor, labels: Tensor) -> Tensor:
        """Check the batch, clear the gradients (the step back-propagates itself), record the batch in the
        history and return C, the (B,) likely-clean mask (all True in warm-up). Shared by both steps."""
        self._check_idle()
        self._check_losses(losses, "losses")
        batch = losses.shape[0]
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != batch:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"logits must have shape ({batch}, num_classes), got {shape}")
        for name, t in (("indices", indices), ("labels", labels)):
            if not isinstance(t, Tensor) or t.shape != (batch,):
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{name} must have shape ({batch},), got {shape}")
        self.zero_grad()
        if self.epoch >= self.history_from_epoch:
            self._update_history(indices, logits, labels, losses)
        if self.in_warmup:
            return torch.ones(batch, dtype=torch.bool, device=losses.device)
        return self.history.clean_mask(indices, labels).to(losses.device)

    def _perturbation_loss(
        self, losses: Tensor, clean: Tensor, indices: Tensor, labels: Tensor, *, min_count: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """(the loss whose gradient sets e, whether the mask fell back to the whole batch as a 0-dim bool
        tensor: no host sync). The confidence weights use no mask, so they neither count nor fall back.
        min_count: the fallback's bar (None: min_clean; a group of `grouped_step` uses 1)."""
        if self.perturb_from == "confidence" and not self.in_warmup:  # soft weights h_i[y_i]
            confidence = self.history.mean_probs(indices).gather(1, labels.to(self.history.device).long()[:, None])[:, 0]
            return self._global_mean(losses, confidence.to(losses.device)), torch.zeros((), dtype=torch.bool, device=losses.device)
        source = ~clean if self.perturb_from == "noisy" and not self.in_warmup else clean
        count = source.sum()
        if distributed.gradients_synchronised():  # under DDP every rank falls back together, on the global count
            count = distributed.all_reduce_sum(count)
        fallback = count < (self.min_clean if min_count is None else min_count)
        mask = source | fallback
        mu = self.current_perturb_weight
        if not mu or self.in_warmup:  # that side only
            return self._global_mean(losses, mask), fallback
        if self.perturb_balance:  # per side: mean_S + mu mean_O
            return self._global_mean(losses, mask) + mu * self._global_mean(losses, ~mask), fallback
        return self._global_mean(losses, torch.where(mask, 1.0, mu)), fallback  # per sample (mu 1: the whole batch)

    @torch.no_grad()
    def targets(self, labels: Tensor) -> Tensor:
        """(B,) the labels the pass at w + e trains on: `labels` (the batch's given labels) for likely-clean
        samples; for the others the given label, or with noisy_target="history" argmax h_i. Call between
        first_step and second_step."""
        if self._clean is None:
            raise RuntimeError("targets() is for the step in progress: call it after first_step()")
        return self._targets_for(self._clean, self._indices, labels)

    def _targets_for(self, clean: Tensor, indices: Tensor, labels: Tensor) -> Tensor:
        if self.noisy_target == "given" or self.in_warmup:
            return labels
        predicted = self.history.predictions(indices).to(labels.device)
        return torch.where(clean.to(labels.device), labels, predicted)

    def second_step(self, losses: Tensor | None = None, zero_grad: bool = True, *, scaler: torch.amp.GradScaler | None = None) -> Tensor | None:  # type: ignore[override]
        """Back-propagate mean(a_i * l_i) of the losses at w + e, restore w, take the base step.

        losses: (B,) per-sample losses at w + e (ignored, and may be None, when the scaler found the
        first pass non-finite and the step is being skipped). Returns the detached weighted loss.
        """
        if not self._skip and self._perturbed is None:
            raise RuntimeError("second_step() called without a preceding first_step()")
        loss = None
        if not self._skip:
            if losses is None:
                raise TypeError("second_step() needs the (B,) per-sample losses at the perturbed weights")
            self._check_losses(losses, "losses")
            if losses.shape != self._clean.shape:
                raise ValueError(f"losses must have shape {tuple(self._clean.shape)} (the batch of first_step), got {tuple(losses.shape)}")
            loss = self._weighted_mean(losses, self._clean)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        self._clean = self._indices = None
        self._restore_and_step(zero_grad=zero_grad, scaler=scaler)
        return None if loss is None else loss.detach()

    def grouped_step(
        self,
        losses: Tensor,
        *,
        logits: Tensor,
        indices: Tensor,
        labels: Tensor,
        losses_of: Callable[[Tensor, Tensor], Tensor],
        groups: int,
    ) -> Tensor:
        """One CA-SAM step with a perturbation per group of the batch (m-sharpness inside the batch).

        SAM's perturbation is one direction for the whole batch; one per m samples (m-sharpness, Foret et
        al. 2021) generalises better, and one per sample (1-SAM) has been reported more robust to label
        noise (Baek, Kolter & Raghunathan, ICLR 2024). Measured here (docs/casam-split.md, round 19): in
        20 epochs it slows all fitting, fewer wrong labels memorised and fewer clean ones learnt, and
        ends level (16 samples per group) or behind (4 per group); `casam train` keeps one. Here the
        batch is dealt into `groups` groups, each with an equal share of the likely-clean samples (and of
        the others), and each group's samples are evaluated at w + e_g, e_g from that group's likely-clean
        samples (the same rules as `first_step`: mu, the cutoff, the soft weights; a batch below min_clean
        falls back as a whole, a group with none of its side's samples perturbs with all of them). The
        update is (1/|B|) sum_g sum_{i in g} a_i l_i(w + e_g); then one base step.

        losses, logits, indices, labels: as in `first_step` (the whole-batch pass at w, which the history
        records and the split reads). losses_of(rows, targets): the (len(rows),) per-sample losses of the
        batch rows `rows` against `targets` at the current weights, with their graph (normalisation
        statistics frozen: the whole-batch pass has updated them). Each group costs two forward and two
        backward passes of its rows: in arithmetic a step is SAM's plus one forward pass, in time on a
        CPU more, as small batches use several threads poorly (CA-SAM's step x2.49 at 8 groups of 16 on
        two threads, x1.3-1.4 on one; benchmarks/step_time.py).
        In the warm-up, or when the batch is too small for two samples per group, the step is
        `first_step` and `second_step` on the whole batch. One process only, no gradient scaler.
        Returns C, the (B,) likely-clean mask.
        """
        if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 1:
            raise ValueError(f"groups must be an integer >= 1, got {groups!r}")
        if distributed.is_distributed():
            raise RuntimeError("grouped_step runs in one process; under torchrun use sam_sync=False for a perturbation per rank")
        if self.measure_cosine:
            raise ValueError("grouped_step has no single perturbation gradient to compare: build CASAM with measure_cosine=False")
        self._check_losses(losses, "losses")
        batch = losses.shape[0]
        groups = min(groups, batch // 2)  # two samples per group at least: batch normalisation needs them
        if self.in_warmup or groups <= 1:
            clean = self.first_step(losses, logits=logits, indices=indices, labels=labels)
            rows = torch.arange(batch, device=losses.device)
            self.second_step(losses_of(rows, self.targets(labels)))
            return clean
        clean = self._record_and_split(losses, logits, indices, labels)
        targets = self._targets_for(clean, indices, labels)
        source = ~clean if self.perturb_from == "noisy" else clean
        fallback = source.sum() < self.min_clean
        order = torch.argsort((~source).to(torch.int8), stable=True)  # that side first, then dealt round-robin
        min_count = batch + 1 if bool(fallback) else 1  # the batch fell back: so does every group
        params = self._trainable()
        total: list[Tensor | None] = [None] * len(params)
        for g in range(groups):
            rows = order[g::groups]
            first, _ = self._perturbation_loss(losses_of(rows, labels[rows]), clean[rows], indices[rows], labels[rows], min_count=min_count)
            first.backward()
            self._perturb(zero_grad=True, scaler=None)
            second = losses_of(rows, targets[rows])
            (self._weighted_mean(second, clean[rows]) * (rows.numel() / batch)).backward()
            self._restore()
            for i, p in enumerate(params):  # sum the groups' second-pass gradients
                if p.grad is not None:
                    total[i] = p.grad if total[i] is None else total[i].add_(p.grad)
            self.zero_grad()
        for p, g in zip(params, total):
            p.grad = g
        self._base_step(zero_grad=True, scaler=None)
        self.last_clean_mask, self.last_fallback = clean, fallback
        return clean

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], tuple[Tensor, Tensor]] | None = None,
        *,
        indices: Tensor | None = None,
        labels: Tensor | None = None,
        scaler: torch.amp.GradScaler | None = None,
        model: nn.Module | None = None,
    ) -> Tensor:
        """One CA-SAM step; returns the first-pass mean loss (detached).

        `closure()` returns (logits (B, C), losses (B,)) of the batch, with their graph, without
        calling backward; it is called at w and at w + e (with `model`'s normalisation statistics
        frozen the second time, if `model` is given). `indices` and `labels` are the batch's.
        """
        if closure is None:
            raise TypeError("CASAM.step() needs a closure returning (logits, per-sample losses); or call first_step() and second_step()")
        if indices is None or labels is None:
            raise TypeError("CASAM.step() needs the batch's indices= and labels=")
        closure = torch.enable_grad()(closure)
        logits, losses = self._call_closure(closure)
        self.first_step(losses, logits=logits, indices=indices, labels=labels, scaler=scaler)
        losses2 = None
        if not self._skip:
            with frozen_bn_stats(model) if model is not None else contextlib.nullcontext():
                if self.noisy_target == "history":
                    _, losses2 = self._call_closure(lambda: closure(self.targets(labels)))
                else:
                    _, losses2 = self._call_closure(closure)
        self.second_step(losses2, zero_grad=False, scaler=scaler)
        return losses.detach().mean()

    # ------------------------------------------------------------------ one job each (DDP goes here)
    def _update_history(self, indices: Tensor, logits: Tensor, labels: Tensor, losses: Tensor) -> None:
        """Record the batch in the history (its loss per `history_loss`); under DDP the batches of all ranks,
        so every history is the same.

        One all-gather of a packed (B, C + 2) tensor [logits | index | label] per step, with the loss as one
        more column when history_loss is "training" (float32, exact for indices < 2^24; float64 beyond).
        One process: the batch itself, unpacked. With history_loss "cross-entropy" the history computes the
        loss from the logits and given labels itself.
        """
        own = self.history_loss == "training"
        if not distributed.is_distributed():
            self.history.update(indices, logits.detach(), labels, losses.detach() if own else None)
            return
        dtype = torch.float32 if self.history.num_samples <= 2**24 else torch.float64
        columns = [logits.detach().to(dtype), indices.to(dtype)[:, None], labels.to(dtype)[:, None]]
        if own:
            columns.append(losses.detach().to(dtype)[:, None])
        packed = distributed.all_gather_cat(torch.cat(columns, dim=1))
        c = logits.shape[1]
        self.history.update(packed[:, c].long(), packed[:, :c], packed[:, c + 1].long(), packed[:, c + 2] if own else None)

    @staticmethod
    def _global_mean(losses: Tensor, weights: Tensor) -> Tensor:
        """sum_i w_i l_i / sum_i w_i over the batch (0 if every weight is 0); `weights` a (B,) bool mask (the
        mean over it) or float weights. Under DDP with synchronised gradients the local weighted sum is
        divided by the all-reduced global weight / world_size, so that DDP's averaging of the ranks'
        gradients yields the gradient of the global weighted mean. Samples of weight 0 are left out even
        when their loss is not finite."""
        w = weights.to(losses.dtype)
        total = w.sum()
        if distributed.gradients_synchronised():
            total = distributed.all_reduce_sum(total) / distributed.world_size()
        return torch.where(w != 0, losses * w, 0.0).sum() / total.clamp_min(torch.finfo(losses.dtype).tiny)

    def _weighted_mean(self, losses: Tensor, clean: Tensor) -> Tensor:
        """(1/|B|) sum_i a_i l_i, a_i = 1 (clean) or lambda (noisy); lambda = 0 ignores even non-finite noisy losses."""
        lam = self.current_noisy_weight
        noisy = losses * lam if lam != 0 else torch.zeros_like(losses)
        return torch.where(clean, losses, noisy).sum() / losses.shape[0]

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_losses(losses: Any, name: str) -> None:
        if not isinstance(losses, Tensor):
            raise TypeError(f"{name} must be a (B,) tensor of per-sample losses, got {type(losses).__name__}")
        if losses.ndim != 1 or losses.shape[0] == 0:
            raise ValueError(f"{name} must have shape (B,) with B >= 1 (per-sample, reduction='none'), got {tuple(losses.shape)}")
        if not losses.requires_grad:
            raise ValueError(f"{name} do not require grad: pass the losses with their graph (not detached)")

    @staticmethod
    def _call_closure(closure: Callable[[], Any]) -> tuple[Tensor, Tensor]:
        out = closure()
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)):
            got = "None" if out is None else type(out).__name__
            raise TypeError(f"the closure must return (logits, per-sample losses) tensors, got {got}")
        return out[0], out[1]

    def _trainable(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _grads_of(self, loss: Tensor) -> list[Tensor]:
        params = self._trainable()
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    @torch.no_grad()
    def _cosine_with_grads(self, full: list[Tensor]) -> Tensor:
        """cos(full, current .grad) via <a, b> = (|a + b|^2 - |a - b|^2) / 4, with foreach norms."""
        params = self._trainable()
        clean = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        device = params[0].device
        a, b = _global_norm(full, device), _global_norm(clean, device)
        plus = _global_norm(list(torch._foreach_add(full, clean)), device).square()
        minus = _global_norm(list(torch._foreach_sub(full, clean)), device).square()
        return ((plus - minus) / 4 / (a * b).clamp_min(1e-30)).clamp(-1, 1)
