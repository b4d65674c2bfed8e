"""Atomic checkpoints with one step of fallback.

A run folder holds `checkpoint.pt` (the newest complete epoch) and `checkpoint.prev.pt` (the one
before). A save writes a temporary file, flushes it to disk, then renames: a run killed at any
moment leaves either the old or the new file whole, never a torn one. When the newest file is
missing or unreadable, `load_latest` says which file and falls back to the previous one.
"""

from __future__ import annotations

import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

CURRENT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


class CheckpointError(RuntimeError):
    """No usable checkpoint in a run folder."""


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save(run_dir: str | Path, state: dict[str, Any]) -> None:
    """Write `state` as the newest checkpoint; the current one becomes the previous one."""
    run_dir = Path(run_dir)
    current, previous = run_dir / CURRENT, run_dir / PREVIOUS
    staged = run_dir / f".{CURRENT}.new"
    atomic_write_bytes(staged, lambda f: torch.save(state, f))
    # Between these two renames a kill leaves `previous` and `staged`; load_latest reads both.
    if current.exists():
        os.replace(current, previous)
    os.replace(staged, current)


def _read(path: Path) -> dict[str, Any]:
    # Our own files only: they hold numpy RNG states and plain Python objects, hence weights_only=False.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "epoch" not in state:
        raise CheckpointError(f"{path} is not a casam checkpoint")
    return state


def load_latest(run_dir: str | Path) -> tuple[dict[str, Any], Path]:
    """The newest readable checkpoint of a run folder and its path.

    When `checkpoint.pt` is missing or unreadable, says so on stderr and uses the newest other one.
    """
    run_dir = Path(run_dir)
    current = run_dir / CURRENT
    found, problems = [], []
    for path in (current, run_dir / f".{CURRENT}.new", run_dir / PREVIOUS):
        if not path.exists():
            continue
        try:
            found.append((_read(path)["epoch"], path))
        except (CheckpointError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as error:
            problems.append(f"{path} is unreadable ({error.__class__.__name__})")
    if not found:
        what = "; ".join(problems) if problems else f"{current} is missing"
        raise CheckpointError(f"no usable checkpoint in {run_dir}: {what}")
    epoch, path = max(found, key=lambda item: item[0])
    if path != current:
        problem = problems[0] if problems else f"{current} is missing"
        print(f"casam: warning: {problem}; resuming from {path.name} (epoch {epoch})", file=sys.stderr)
    return _read(path), path
