"""SAM and ASAM as wrappers of any `torch.optim` optimizer.

SAM (Foret et al., ICLR 2021) takes the gradient at an adversarially perturbed point:

    g     = grad L_B(w)                                   first pass (at w)
    e     = rho * g / ||g||_2                             ASAM: e = rho * T^2 g / ||T g||_2, T = |w| + eta
    g_sam = grad L_B(w + e)                               second pass (at w + e)
    w    <- base_step(w, g_sam)                           w is restored exactly before the base step

||g|| is one norm over every parameter that has a gradient (all groups); each group scales by its own
`rho` (and ASAM `eta`), so per-group radii work. The norm is taken in float32 (float64 if a gradient
is float64) whatever the parameter dtype. Parameters whose `.grad` is None are neither perturbed nor
stepped. The wrapper shares `param_groups` and `state` with its base optimizer, so LR schedulers,
per-group options and `opt.state[p]` behave as with the base optimizer alone.

Two ways to drive it:

    # explicit two steps (davda54 style; the losses may instead be passed in, then they are back-propagated)
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)                        # w -> w + e
    with frozen_bn_stats(model):
        F.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)                       # w + e -> w, then the base step

    # torch.optim style: the closure computes the loss, calls backward on it and returns it
    loss = opt.step(closure, model=model)                 # returns the first-pass loss

Mixed precision: pass the `torch.amp.GradScaler` to both steps (and backward the scaled losses when
you back-propagate yourself). The first-pass gradient is unscaled before its norm is taken (the
scaler sees the wrapper and the base optimizer as two optimizers, each unscaled once per iteration),
`second_step` calls `scaler.step` and `scaler.update` itself, and a step whose first-pass gradient is
not finite perturbs nothing and steps nothing (the weights stay bit-identical) while the scaler still
backs off its scale; a non-finite second-pass gradient makes `scaler.step` skip the base step as usual.
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

from casam.optim.bn import frozen_bn_stats

__all__ = ["SAM", "ASAM"]

_TINY = 1e-12  # floor of the gradient norm: a zero gradient gives a zero perturbation, not a nan


def _is_radius(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0


def _check_rho(rho: Any) -> None:
    if not _is_radius(rho):
        raise ValueError(f"rho must be a finite number >= 0, got {rho!r}")


def _check_optional_radius(name: str, value: Any) -> None:
    """A radius that may be None (warmup_rho, CA-SAM's heavy_rho)."""
    if value is not None and not _is_radius(value):
        raise ValueError(f"{name} must be None or a finite number >= 0, got {value!r}")


def _check_eta(eta: Any) -> None:
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def _by_device(*lists: list[Tensor]) -> list[tuple[list[Tensor], ...]]:
    """Split parallel tensor lists by the device of the first list (one bucket in the usual case)."""
    if not lists[0] or all(t.device == lists[0][0].device for t in lists[0]):
        return [lists]
    buckets: dict[torch.device, tuple[list[Tensor], ...]] = {}
    for i, t in enumerate(lists[0]):
        bucket = buckets.setdefault(t.device, tuple([] for _ in lists))
        for out, src in zip(bucket, lists):
            out.append(src[i])
    return list(buckets.values())


def _global_norm(tensors: list[Tensor], device: torch.device) -> Tensor:
    """||concat(tensors)||_2 as a 0-dim tensor on `device`, accumulated in float32 (float64 if any input is)."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    norms = torch._foreach_norm(tensors, 2, dtype=dtype)
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))


class SAM(Optimizer):
    """Sharpness-aware minimisation around any base optimizer (see the module docstring for the formula).

    Args:
        params: parameters or parameter groups (a group may carry its own `rho`, `adaptive`, `eta`);
            None when `base_optimizer` is an already-built optimizer.
        base_optimizer: an optimizer class (built here as `base_optimizer(params, **base_kwargs)`)
            or an optimizer instance (wrapped as it is; its groups gain `rho`, `adaptive`, `eta`).
        rho: radius of the perturbation, >= 0 (rho = 0 reproduces the base optimizer exactly).
        adaptive: ASAM's scale-invariant radius (T = |w| + eta); see `ASAM`.
        eta: ASAM's offset, >= 0.
        warmup_epochs: the first epochs (counted by `set_epoch`, as a sampler's) perturb with
            `warmup_rho` instead of each group's rho. CA-SAM's history needs them; SAM can have them
            too, so that a comparison is not decided by the start alone.
        warmup_rho: the radius in the warm-up, None (each group's rho) or >= 0; 0 makes the warm-up
            plain base-optimizer steps (still two passes), the start that lets CA-SAM learn at 80 % noise.
        **base_kwargs: options of the base optimizer (lr, momentum, weight_decay, ...).

    The weights at w are kept in a persistent buffer of the parameters' size (one extra copy of the
    model, as in every SAM implementation) and copied back, so the restore is exact. That buffer is
    not part of `state_dict()`; save checkpoints between steps, not between first_step and second_step.
    """

    _WRAPPER = "SAM"

    def __init__(
        self,
        params: Any,
        base_optimizer: type[Optimizer] | Optimizer,
        *,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.01,
        warmup_epochs: int = 0,
        warmup_rho: float | None = None,
        **base_kwargs: Any,
    ) -> None:
        _check_rho(rho)
        _check_eta(eta)
        _check_count("warmup_epochs", warmup_epochs)
        _check_optional_radius("warmup_rho", warmup_rho)
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be True or False, got {adaptive!r}")
        if isinstance(base_optimizer, Optimizer):
            if params is not None:
                raise TypeError("params must be None when base_optimizer is an optimizer instance (it already holds its parameters)")
            if base_kwargs:
                raise TypeError(f"options {sorted(base_kwargs)} cannot be applied to an already-built base optimizer; set them when building it")
            if isinstance(base_optimizer, SAM):
                raise TypeError("base_optimizer is already a SAM-family optimizer; wrap its base optimizer instead")
            base = base_optimizer
        elif isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer):
            if issubclass(base_optimizer, SAM):
                raise TypeError(f"base_optimizer must be a plain optimizer class, not {base_optimizer.__name__}")
            base = base_optimizer(params, **base_kwargs)
        else:
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer class or instance, got {base_optimizer!r}")
        for group in base.param_groups:  # per-group values given by the caller are checked too
            _check_rho(group.get("rho", rho))
            _check_eta(group.get("eta", eta))
        # Optimizer.__init__ fills rho/adaptive/eta into the base optimizer's own group dicts.
        super().__init__(base.param_groups, {"rho": rho, "adaptive": adaptive, "eta": eta})
        self.base_optimizer = base
        self.defaults.update(base.defaults)
        self._share_base()
        self._backup: dict[Tensor, Tensor] = {}  # param -> buffer holding its value at w
        self._perturbed: tuple[list[Tensor], list[Tensor]] | None = None  # (params, backups) of the current step
        self._skip = False  # the current step's first-pass gradient was not finite (scaler in use)
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_rho = None if warmup_rho is None else float(warmup_rho)
        self.epoch = 0

    # ------------------------------------------------------------------ torch.optim plumbing
    def _share_base(self) -> None:
        """Point our groups and state at the base optimizer's (again after it loads a state dict)."""
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "base_optimizer"):  # called by Optimizer.__init__ on the shared groups
            return super().add_param_group(param_group)
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        for key in ("rho", "adaptive", "eta"):
            param_group.setdefault(key, self.defaults[key])
        _check_rho(param_group["rho"])
        _check_eta(param_group["eta"])
        self.base_optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (its groups carry rho/adaptive/eta) plus a "wrapper" entry."""
        state = self.base_optimizer.state_dict()
        state["wrapper"] = self._wrapper_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict from `state_dict()`; a plain base-optimizer state dict is accepted by SAM/ASAM too."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        state_dict = dict(state_dict)
        if "param_groups" in state_dict:  # saved mid-warm-up before the warm-up moved into SAM: rho 0 in the groups, the radius as initial_rho
            state_dict["param_groups"] = [
                {**{k: v for k, v in g.items() if k != "initial_rho"}, "rho": g["initial_rho"]} if "initial_rho" in g else g
                for g in state_dict["param_groups"]
            ]
        wrapper = state_dict.pop("wrapper", None)
        if wrapper is not None and wrapper.get("class") != self._WRAPPER:
            raise ValueError(f"state_dict was saved from a {wrapper.get('class')} optimizer, cannot load it into {self._WRAPPER}")
        self._load_wrapper_state(wrapper)
        self.base_optimizer.load_state_dict(state_dict)
        self._share_base()

    def _wrapper_state(self) -> dict[str, Any]:
        return {"class": self._WRAPPER, "epoch": self.epoch}

    def _load_wrapper_state(self, wrapper: dict[str, Any] | None) -> None:
        if wrapper is not None:
            self.epoch = int(wrapper.get("epoch", 0))

    # ------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        """Set the epoch about to start (0-based): the warm-up is counted in epochs."""
        _check_count("epoch", epoch)
        self.epoch = int(epoch)

    @property
    def in_warmup(self) -> bool:
        return self.epoch < self.warmup_epochs

    # ------------------------------------------------------------------ the two steps
    @property
    def perturbed(self) -> bool:
        """True between first_step and second_step (the weights are at w + e)."""
        return self._perturbed is not None

    def first_step(self, loss: Tensor | None = None, zero_grad: bool = True, *, scaler: torch.amp.GradScaler | None = None) -> Tensor | None:
        """Move the weights from w to w + e, e computed from the current gradients.

        `loss`: if given (a scalar, or per-sample losses that are averaged), it is back-propagated here
        (scaled by `scaler`); otherwise call backward yourself first. Returns the detached loss or None.
        `zero_grad`: clear the gradients afterwards (the second pass needs fresh ones).
        """
        self._check_idle()
        if loss is not None:
            loss = self._backward(loss, scaler)
        self._perturb(zero_grad=zero_grad, scaler=scaler)
        return loss

    def second_step(self, loss: Tensor | None = None, zero_grad: bool = True, *, scaler: torch.amp.GradScaler | None = None) -> Tensor | None:
        """Restore w exactly, then take the base step with the gradient of the pass at w + e.

        `loss`: as in first_step (the loss at w + e). With a scaler, this calls `scaler.step(base)`
        and `scaler.update()`; do not call them yourself. Returns the detached loss or None.
        """
        if not self._skip and self._perturbed is None:
            raise RuntimeError("second_step() called without a preceding first_step()")
        if loss is not None and not self._skip:
            loss = self._backward(loss, scaler)
        self._restore_and_step(zero_grad=zero_grad, scaler=scaler)
        return None if loss is None else loss.detach()

    def step(self, closure: Callable[[], Tensor] | None = None, *, scaler: torch.amp.GradScaler | None = None, model: nn.Module | None = None) -> Tensor:
        """One SAM step, torch.optim style; returns the first-pass loss.

        `closure()` computes the loss, back-propagates it (`scaler.scale(loss).backward()` with a
        scaler) and returns it; it is called twice, at w and at w + e, with the gradients cleared
        before each call. `model`: if given, its normalisation statistics are frozen during the second
        call. The gradients of the second pass are left in `.grad`, as torch optimizers do.
        """
        if closure is None:
            raise TypeError(f"{type(self).__name__}.step() needs a closure (it evaluates the loss twice); or call first_step() and second_step()")
        closure = torch.enable_grad()(closure)
        self._check_idle()
        self.zero_grad()
        loss = closure()
        if not isinstance(loss, Tensor):
            raise TypeError(f"the closure must return the loss tensor after calling backward on it, got {type(loss).__name__}")
        self._perturb(zero_grad=True, scaler=scaler)
        if not self._skip:
            with frozen_bn_stats(model) if model is not None else contextlib.nullcontext():
                closure()
        self._restore_and_step(zero_grad=False, scaler=scaler)
        return loss.detach()

    # ------------------------------------------------------------------ internals
    def _check_idle(self) -> None:
        if self._perturbed is not None or self._skip:
            raise RuntimeError("first_step() called twice: call second_step() first (the weights are still perturbed)")

    @staticmethod
    def _backward(loss: Tensor, scaler: torch.amp.GradScaler | None) -> Tensor:
        if not isinstance(loss, Tensor):
            raise TypeError(f"loss must be a tensor or None, got {type(loss).__name__} (pass zero_grad by keyword)")
        if not loss.requires_grad:
            raise ValueError("loss does not require grad: pass the loss with its graph, or call backward yourself and leave loss out")
        if loss.ndim > 0:
            loss = loss.mean()
        (scaler.scale(loss) if scaler is not None else loss).backward()
        return loss.detach()

    def _params_with_grad(self) -> list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]:
        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                groups.append((group, params, [p.grad for p in params]))
        return groups

    def _radius(self, group: dict[str, Any]) -> float:
        """The perturbation radius of a parameter group for this step."""
        return self.warmup_rho if self.in_warmup and self.warmup_rho is not None else group["rho"]

    @torch.no_grad()
    def _perturb(self, *, zero_grad: bool, scaler: torch.amp.GradScaler | None) -> None:
        groups = self._params_with_grad()
        if not groups:
            raise RuntimeError("first_step() found no gradients: call backward on the loss first, or pass the loss to first_step()")
        scaling = scaler is not None and scaler.is_enabled()
        if scaling:
            scaler.unscale_(self)  # the wrapper's own per-optimizer slot; the base is unscaled in second_step
        device = groups[0][1][0].device
        # T = |w| + eta (ASAM); the norm is over T*g (ASAM) or g (SAM) of every group together.
        scaled = []  # per group: T (or None) and T*g (or g)
        for group, params, grads in groups:
            if group["adaptive"]:
                t = torch._foreach_abs(params)
                torch._foreach_add_(t, group["eta"])
                scaled.append((t, torch._foreach_mul(t, grads)))
            else:
                scaled.append((None, grads))
        norm = _global_norm([g for _, tg in scaled for g in tg], device)
        if scaling and not bool(torch.isfinite(norm)):  # inf/nan gradient: skip both passes, the scaler backs off
            self._skip = True
            self.zero_grad()
            return
        all_params, all_backups = [], []
        for (group, params, grads), (t, tg) in zip(groups, scaled):
            scale = self._radius(group) / norm.clamp_min(_TINY)
            if t is not None:
                torch._foreach_mul_(tg, t)  # T^2 g, in the buffer we own
                e = tg
            elif zero_grad:
                e = grads  # the gradients are discarded after this step: use them as the buffer
            else:
                e = list(torch._foreach_mul(grads, 1.0))
            backups = [self._backup_of(p) for p in params]
            for ps, es, bs in _by_device(params, e, backups):
                torch._foreach_copy_(bs, ps)
                torch._foreach_mul_(es, scale.to(ps[0].device))
                torch._foreach_add_(ps, es)
            all_params += params
            all_backups += backups
        self._perturbed = (all_params, all_backups)
        if zero_grad:
            self.zero_grad()

    def _backup_of(self, p: Tensor) -> Tensor:
        buf = self._backup.get(p)
        if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
            buf = torch.empty_like(p, memory_format=torch.preserve_format)
            self._backup[p] = buf
        return buf

    @torch.no_grad()
    def _restore(self) -> None:
        """w + e -> w, bit for bit (from the backup buffers), keeping the gradients."""
        params, backups = self._perturbed
        for ps, bs in _by_device(params, backups):
            torch._foreach_copy_(ps, bs)
        self._perturbed = None

    @torch.no_grad()
    def _restore_and_step(self, *, zero_grad: bool, scaler: torch.amp.GradScaler | None) -> None:
        scaling = scaler is not None and scaler.is_enabled()
        if self._skip:
            self._skip = False
            self.zero_grad()
            if scaling:
                scaler.update()  # sees the non-finite first pass recorded by unscale_(self): backs off
            return
        self._restore()
        self._base_step(zero_grad=zero_grad, scaler=scaler)

    def _base_step(self, *, zero_grad: bool, scaler: torch.amp.GradScaler | None) -> None:
        """The base optimizer's step with the gradients in .grad (through the scaler if there is one)."""
        if scaler is not None:
            scaler.step(self.base_optimizer)
            scaler.update()
        else:
            self.base_optimizer.step()
        self._opt_called = True  # what LR schedulers look for (they wrap step(), which the two-step API bypasses)
        if zero_grad:
            self.zero_grad()


class ASAM(SAM):
    """Adaptive SAM (Kwon et al., ICML 2021): e = rho * T^2 g / ||T g||, T = |w| + eta (element-wise).

    The radius is measured relative to the weights' scale, so it is invariant to rescaling layers;
    its useful `rho` is about ten times SAM's (the paper uses 0.5 on CIFAR where SAM uses 0.05), hence
    the default 0.5. Everything else is `SAM(..., adaptive=True)`.
    """

    _WRAPPER = "ASAM"

    def __init__(self, params: Any, base_optimizer: type[Optimizer] | Optimizer, *, rho: float = 0.5, eta: float = 0.01, **base_kwargs: Any) -> None:
        super().__init__(params, base_optimizer, rho=rho, adaptive=True, eta=eta, **base_kwargs)
