"""Keep normalisation running statistics out of SAM's second forward pass.

The pass at the perturbed weights `w + e` is an auxiliary evaluation, not a step of training: its
batch statistics describe a network that never exists, so common SAM practice is to leave the
running mean/variance alone during it.

How: inside the context every normalisation module in training mode that tracks running statistics
gets `track_running_stats = False`: BatchNorm (and SyncBatchNorm) then passes no running buffers to
the functional call and does not increment `num_batches_tracked`. InstanceNorm still passes its
buffers when the flag is off, so its `running_mean` / `running_var` are also set aside (None) within
the block. Every forward normalises with the batch statistics, exactly as in training mode anyway. No buffer is
copied or written, so the statistics are untouched bit for bit, whatever the momentum (including
`momentum=None`, the cumulative average) and even if the batch holds non-finite values (the
momentum-0 trick would write 0 * inf = nan into them).
Covers every subclass of `torch.nn.modules.batchnorm._NormBase`: BatchNorm1d/2d/3d, SyncBatchNorm,
the lazy variants and InstanceNorm with `track_running_stats=True`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

__all__ = ["frozen_bn_stats"]


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, forward passes of `model` do not update any normalisation running statistics.

    Usage::

        with frozen_bn_stats(model):
            loss2 = criterion(model(x), y)   # the pass at w + e
        loss2.backward()                     # backward may run inside or after the block

    Nesting is fine; the original flags are restored on exit, also when the block raises.
    Returns `model` for convenience.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"frozen_bn_stats expects a torch.nn.Module, got {type(model).__name__}")
    switched = [
        m
        for m in model.modules()
        if isinstance(m, _NormBase) and m.training and m.track_running_stats and m.running_mean is not None
    ]
    stashed = [(m, m.running_mean, m.running_var) for m in switched if not isinstance(m, _BatchNorm)]
    for m in switched:
        m.track_running_stats = False
    for m, _, _ in stashed:
        m.running_mean, m.running_var = None, None
    try:
        yield model
    finally:
        for m, mean, var in stashed:
            m.running_mean, m.running_var = mean, var
        for m in switched:
            m.track_running_stats = True
