"""How one batch updates the network(s): the per-method part of the training loop.

The optimizer (SGD, SAM, ASAM, CA-SAM), the loss (CE, GCE, SCE, APL, ELR) and the sample
selection (none, Co-teaching) are independent choices. `update_on_batch` applies any optimizer
with any loss to a batch whose first forward pass is already done; `SingleLearner` and
`CoTeachingLearner` decide which samples each network learns from.

Every learner's `step` returns the first pass's detached logits and per-sample losses (the metrics
reuse them: no extra forward pass) and the likely-clean mask of the methods that select.

Distributed (DDP): the learners hold the DDP-wrapped network(s) for training and expose the plain
network as `eval_model` and in `state_dict` (so checkpoints load with or without DDP). With
`sam_sync=False` (SAM's m-sharpness) the first pass's forward and backward run inside
`casam.distributed.local_gradients` (DDP's no_sync: DDP decides at forward time whether to all-reduce),
so each rank perturbs by its own gradient. Per-sample state outside the optimizer (ELR's targets,
Co-teaching's epoch losses) is updated from all ranks' batches, so every rank holds the same state.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass


import torch
import torch.nn.functional as F
from torch import nn

from casam import distributed
from casam.losses import NoisyLabelLoss
from casam.optim import CASAM, SAM, frozen_bn_stats


@dataclass
class StepOutput:
    logits: torch.Tensor  # (B, C) first-pass logits, detached
    losses: torch.Tensor  # (B,) first-pass per-sample losses, detached
    selected: torch.Tensor | None  # (B,) bool likely-clean / trained-on mask, None if the method does not select


class Precision:
    """One mixed-precision context for every forward pass (nanoGPT style), plus the fp16 grad scaler."""

    def __init__(self, precision: str, device: torch.device):
        self.precision = precision
        self.device_type = device.type
        self.scaler = None
        if precision == "fp16":
            self.scaler = torch.amp.GradScaler(self.device_type)

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)


def update_on_batch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    logits: torch.Tensor,
    losses: torch.Tensor,
    precision: Precision,
    *,
    local_first_pass: bool = False,
    perturb_groups: int = 1,
) -> torch.Tensor | None:
    """One optimisation step of `model` on (x, y, idx), whose first pass gave `logits`, `losses` (with graph).

    local_first_pass: SAM-family only, m-sharpness: the first backward and the perturbation stay per
    rank (the caller must have run the first forward inside `first_pass_context` as well).
    perturb_groups: CA-SAM only, G > 1: a perturbation per group of the batch (`CASAM.grouped_step`);
        under heavy noise the optimizer's `heavy_groups` instead, if set.
    Returns CA-SAM's likely-clean mask, else None.
    """
    scaler = precision.scaler
    first = first_pass_context(model, local_first_pass)

    def second_pass(targets: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample losses against `targets` of the batch (or of its `rows`), statistics frozen."""
        xs, ids = (x, idx) if rows is None else (x[rows], idx[rows])
        with frozen_bn_stats(model), precision.autocast():
            return loss_fn(model(xs), targets, ids).float()

    if isinstance(optimizer, CASAM) and (groups := optimizer.perturbation_groups(perturb_groups)) > 1:  # heavy_groups under heavy noise

        def losses_of(rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return second_pass(targets, rows)

        return optimizer.grouped_step(losses, logits=logits, indices=idx, labels=y, losses_of=losses_of, groups=groups)
    if isinstance(optimizer, CASAM):
        with first:
            clean = optimizer.first_step(losses, logits=logits, indices=idx, labels=y, scaler=scaler)
        optimizer.second_step(second_pass(optimizer.targets(y)), scaler=scaler)
        return clean
    loss = losses.mean()
    if scaler is not None:
        loss = scaler.scale(loss)
    if isinstance(optimizer, SAM):
        with first:
            loss.backward()
            optimizer.first_step(zero_grad=True, scaler=scaler)
        loss2 = second_pass(y).mean()
        (scaler.scale(loss2) if scaler is not None else loss2).backward()
        optimizer.second_step(zero_grad=True, scaler=scaler)
        return None
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return None


def first_pass_context(model: nn.Module, local: bool):
    """The context of a SAM-family first forward: `local_gradients(model)` for m-sharpness, else nothing."""
    return distributed.local_gradients(model) if local else contextlib.nullcontext()


def observe(loss_fn, logits: torch.Tensor, idx: torch.Tensor) -> None:
    """`loss_fn.observe` with every rank's batch (all-gathered) when the loss keeps per-sample state."""
    if distributed.is_distributed() and type(loss_fn).observe is not NoisyLabelLoss.observe:
        logits, idx = distributed.all_gather_cat(logits), distributed.all_gather_cat(idx)
    loss_fn.observe(logits, idx)


class SingleLearner:
    """One network, trained on every sample of the batch (CA-SAM does its own split inside).

    model: the network, DDP-wrapped under a process group. sam_sync=False: m-sharpness (module docstring).
    """

    def __init__(self, model, optimizer, loss_fn, precision: Precision, *, sam_sync: bool = True, perturb_groups: int = 1):
        self.model, self.optimizer, self.loss_fn, self.precision = model, optimizer, loss_fn, precision
        self.perturb_groups = perturb_groups
        self.selects = isinstance(optimizer, CASAM)
        self.local_first_pass = not sam_sync and isinstance(optimizer, SAM)
        self.cosines: list[torch.Tensor] = []  # CA-SAM with measure_cosine: cos(g_C, g_B) of each step this epoch

    @property
    def eval_model(self) -> nn.Module:
        return distributed.unwrap_model(self.model)

    def step(self, x, y, idx) -> StepOutput:
        with first_pass_context(self.model, self.local_first_pass), self.precision.autocast():
            logits = self.model(x)
        observe(self.loss_fn, logits.detach().float(), idx)
        losses = self.loss_fn(logits.float(), y, idx)
        selected = update_on_batch(
            self.model, self.optimizer, self.loss_fn, x, y, idx, logits, losses, self.precision,
            local_first_pass=self.local_first_pass, perturb_groups=self.perturb_groups,
        )
        if self.selects and self.optimizer.last_grad_cosine is not None:
            self.cosines.append(self.optimizer.last_grad_cosine.detach())
        return StepOutput(logits.detach(), losses.detach(), selected)

    def set_epoch(self, epoch: int) -> None:
        self.cosines = []
        if isinstance(self.optimizer, SAM):  # the warm-up; CA-SAM also refreshes its history's criteria
            self.optimizer.set_epoch(epoch)

    def end_epoch(self, epoch: int) -> None:
        """Nothing to do: CA-SAM refreshes its history's global criteria in `set_epoch`."""

    def state_dict(self) -> dict:
        return {"model": self.eval_model.state_dict(), "optimizer": self.optimizer.state_dict(), "loss": self.loss_fn.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.eval_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss_fn.load_state_dict(state["loss"])

    def diagnostics(self) -> dict[str, float]:
        """CA-SAM with perturb_cutoff: the noise estimate its switch read and the mu in force this epoch.
        With measure_cosine: the epoch's mean cosine between the clean-subset and the full-batch
        first-pass gradients, and the value of every step (how far the perturbation's direction moved)."""
        out: dict[str, float] = {}
        if self.selects and self.optimizer.perturb_cutoff is not None:
            out.update(noise_estimate=self.optimizer.noise_estimate, perturb_weight=self.optimizer.current_perturb_weight)
        if self.cosines:
            steps = torch.stack(self.cosines).float()
            out.update(grad_cosine=steps.mean().item(), grad_cosine_steps=[round(v, 5) for v in steps.tolist()])
        return out


class CoTeachingLearner:
    """Co-teaching (Han et al., NeurIPS 2018): two networks, each learns from the samples with the
    smallest loss under its peer, a fraction R(epoch) of each batch being dropped. The loss ranked is the
    cross-entropy on the given label, whatever loss the networks train on.

    The forget rate: given, or estimated at the end of the second epoch (`ESTIMATE_EPOCH`) from
    network A's per-sample losses over that epoch (a two-component Gaussian mixture; see
    `casam.selection.estimate_noise_rate`), since no method may read the true labels. Until then both
    networks train on every sample. Departure from the paper (whose schedule drops R(1) = tau / T_k in
    epoch 1): the losses of the first epoch mix a random network's with a trained one's, and the
    estimate from them was measured to be unreliable (0.11 instead of about 0.45 on a 40 %-noise run
    with SAM), so the drop starts one epoch later when tau is estimated. Test accuracy is network A's.
    """

    ESTIMATE_EPOCH = 1

    def __init__(self, models, optimizers, loss_fns, precision: Precision, *, selector, num_samples: int, device, sam_sync: bool = True):
        self.models, self.optimizers, self.loss_fns, self.precision = models, optimizers, loss_fns, precision
        self.local_first_pass = not sam_sync and isinstance(optimizers[0], SAM)
        self.selector = selector
        self.selects = True
        self.epoch = 0
        self.drop_rate = 0.0  # the fraction of each batch dropped in this epoch
        self.epoch_losses = torch.zeros(num_samples, device=device)

    @property
    def eval_model(self) -> nn.Module:
        return distributed.unwrap_model(self.models[0])

    def step(self, x, y, idx) -> StepOutput:
        logits, losses = [], []
        for model, loss_fn in zip(self.models, self.loss_fns):
            with first_pass_context(model, self.local_first_pass), self.precision.autocast():
                out = model(x)
            observe(loss_fn, out.detach().float(), idx)
            logits.append(out)
            losses.append(loss_fn(out.float(), y, idx))
        # the small-loss ranking is by the given label's cross-entropy, whatever the training loss (a label-free
        # term such as ELR's would rank confidence instead; docs/casam-split.md, round 32); with CE the same numbers
        ranked = [F.cross_entropy(out.detach().float(), y, reduction="none") for out in logits]
        if self.selector.forget_rate is None:  # not estimated yet: keep every sample
            keep_a = keep_b = torch.arange(len(y), device=y.device)
        else:
            keep_a, keep_b = self.selector.select(ranked[0], ranked[1], self.epoch)
        for model, opt, loss_fn, out, loss, keep in zip(self.models, self.optimizers, self.loss_fns, logits, losses, (keep_a, keep_b)):
            update_on_batch(
                model, opt, loss_fn, x[keep], y[keep], idx[keep], out[keep], loss[keep], self.precision,
                local_first_pass=self.local_first_pass,
            )
        self.epoch_losses[distributed.all_gather_cat(idx)] = distributed.all_gather_cat(ranked[0])
        selected = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        selected[keep_a] = True
        return StepOutput(logits[0].detach(), losses[0].detach(), selected)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for optimizer in self.optimizers:
            if isinstance(optimizer, SAM):
                optimizer.set_epoch(epoch)
        self.drop_rate = 0.0 if self.selector.forget_rate is None else self.selector.rate(epoch)

    def end_epoch(self, epoch: int) -> None:
        if epoch == self.ESTIMATE_EPOCH and self.selector.forget_rate is None:
            self.selector.estimate(self.epoch_losses.cpu())

    def state_dict(self) -> dict:
        return {
            "models": [distributed.unwrap_model(m).state_dict() for m in self.models],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "losses": [fn.state_dict() for fn in self.loss_fns],
            "selector": self.selector.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        for module, saved in zip(self.models, state["models"]):
            distributed.unwrap_model(module).load_state_dict(saved)
        for opt, saved in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(saved)
        for fn, saved in zip(self.loss_fns, state["losses"]):
            fn.load_state_dict(saved)
        self.selector.load_state_dict(state["selector"])

    def diagnostics(self) -> dict[str, float]:
        rate = self.selector.forget_rate
        return {"forget_rate": math.nan if rate is None else rate, "drop_rate": self.drop_rate}


