"""Multi-process training with PyTorch's DistributedDataParallel, launched by `torchrun`: small helpers.

Why a module of its own: the training loop, the learners and CA-SAM each need one or two
collectives; keeping them here makes every call a no-op in a single process (no `if distributed`
in the callers) and keeps the set-up in one place (nanoGPT style).

    device = setup("auto")      # reads RANK / WORLD_SIZE / LOCAL_RANK set by torchrun; none = one process
    ...                         # is_main_process(), world_size(), all_gather_cat(t), all_reduce_sum(t), barrier()
    cleanup()

Back-ends: NCCL on CUDA (each rank drives cuda:LOCAL_RANK), gloo on the CPU.

Gradient averaging: DDP all-reduces the gradients of every backward pass and divides by the world
size. `local_gradients(model)` is the exception (DDP's `no_sync`, used for SAM's m-sharpness
variant); inside it `gradients_synchronised()` is False, so code that normalises a loss for
DDP's averaging (CA-SAM's clean mean) knows to use the local count instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "setup", "cleanup", "is_distributed", "is_main_process", "rank", "world_size", "barrier",
    "all_gather_cat", "all_reduce_sum", "run_on_main", "main_first", "wrap_model", "unwrap_model",
    "local_gradients", "gradients_synchronised",
]

T = TypeVar("T")

_OWNS_GROUP = False  # setup() created the process group, so cleanup() destroys it
_GRAD_SYNC: contextvars.ContextVar[bool] = contextvars.ContextVar("casam_grad_sync", default=True)


# ---------------------------------------------------------------------------------------------- set-up
def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer (torchrun sets it); got {value!r}") from None


def setup(device: str = "auto") -> torch.device:
    """Join the process group torchrun describes and return this rank's device.

    device: "auto" (CUDA when present), "cpu", "cuda". Without torchrun's WORLD_SIZE (or with
    WORLD_SIZE=1) nothing is initialised and the device is `device` itself ("auto" resolved).
    Under torchrun a GPU rank uses cuda:LOCAL_RANK (so "cuda:N" is refused) with NCCL; a CPU rank
    uses gloo. Calling it with the group already initialised (by the caller) only picks the device.
    """
    global _OWNS_GROUP
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda'; got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    size = launched_world_size()
    if size <= 1:
        return torch.device(device)
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"multi-process training runs on cpu or cuda; got device {device!r}")
    if kind == "cuda" and device != "cuda":
        raise ValueError(f"under torchrun each rank uses cuda:LOCAL_RANK; pass device 'cuda' or 'auto', not {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use cpu or auto")
    if kind == "cuda":  # GPU path (not exercised on CPU-only machines): one GPU per local rank
        chosen = torch.device("cuda", _env_int("LOCAL_RANK", 0))
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
        _OWNS_GROUP = True
    return chosen


def cleanup() -> None:
    """Destroy the process group if `setup` created it (a group made by the caller is left alone)."""
    global _OWNS_GROUP
    if _OWNS_GROUP and dist.is_initialized():
        # DDP wrappers (reference cycles) keep the gloo backend alive until collected; a backend that
        # outlives the interpreter's shutdown aborts the process ("terminate called without an active exception")
        gc.collect()
        dist.destroy_process_group()
    _OWNS_GROUP = False


# ---------------------------------------------------------------------------------------------- who am I
def launched_world_size() -> int:
    """The number of processes this run is one of: the process group's, else torchrun's WORLD_SIZE, else 1.

    Readable before `setup`, so that a configuration can default to what one process can do."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else _env_int("WORLD_SIZE", 1)


def is_distributed() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


# ---------------------------------------------------------------------------------------------- collectives
def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every rank along dim 0, rank 0 first: (B, ...) -> (world_size * B, ...).

    Every rank must pass the same shape and dtype (BatchLoader gives every rank the same number of
    samples per batch, so per-batch tensors qualify). One process: `tensor` itself.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"all_gather_cat needs a tensor; got {type(tensor).__name__}")
    if not is_distributed():
        return tensor
    tensor = tensor.contiguous()
    out = torch.empty((world_size() * tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
    gather(out, tensor)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `tensor` over all ranks, as a new tensor (the input is left unchanged)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"all_reduce_sum needs a tensor; got {type(tensor).__name__}")
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def run_on_main(fn: Callable[[], T]) -> T:
    """Call `fn()` on rank 0 only and return its result on every rank; if it raised, raise it everywhere.

    For file-system set-up (the run folder): one rank acts, and an error reaches every rank instead
    of leaving the others waiting at the next collective. The result must be picklable.
    """
    if not is_distributed():
        return fn()
    box: list[Any] = [None]
    if is_main_process():
        try:
            box[0] = ("ok", fn())
        except Exception as error:  # noqa: BLE001 - re-raised on every rank below
            box[0] = ("error", error)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def main_first(fn: Callable[[], T]) -> T:
    """Call `fn()` on rank 0, then (if it succeeded) on the other ranks; return each rank's own result.

    For work whose first call has side effects the others can reuse (a data-set download): they do not
    race rank 0, and if rank 0 fails every rank raises its error instead of waiting forever.
    """
    if not is_distributed():
        return fn()
    kept: list[Any] = []
    run_on_main(lambda: kept.append(fn()))  # only the success (None) is broadcast; raises everywhere on failure
    return kept[0] if is_main_process() else fn()


# ---------------------------------------------------------------------------------------------- models
def wrap_model(model: nn.Module, *, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel(model) under a process group (optionally with SyncBatchNorm); else `model`.

    DDP broadcasts rank 0's weights here, so every rank starts alike. Per-rank batch-norm statistics
    by default (each rank normalises with its own batch; the running statistics are rank 0's, which
    DDP broadcasts before each forward); `sync_bn` computes batch statistics over the global batch
    (CUDA only: PyTorch's SyncBatchNorm has no CPU kernel). One process: `model` as it is.
    """
    if not is_distributed():
        return model
    if sync_bn and device.type != "cuda":
        raise ValueError("sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU implementation); drop --sync-bn on the CPU")
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (for evaluation and checkpoints: keys without "module.")."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def local_gradients(model: nn.Module) -> Iterator[None]:
    """Within the block, gradients stay per rank: DDP's `no_sync()` plus `gradients_synchronised() == False`.

    DDP decides at FORWARD time whether the backward all-reduces, so the forward and the backward
    that should stay local must both run inside (SAM's m-sharpness first pass).
    """
    token = _GRAD_SYNC.set(False)
    try:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            with model.no_sync():
                yield
        else:
            yield
    finally:
        _GRAD_SYNC.reset(token)


def gradients_synchronised() -> bool:
    """True when backward passes here are averaged over more than one rank by DDP."""
    return is_distributed() and _GRAD_SYNC.get()
