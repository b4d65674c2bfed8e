"""The benchmark grid behind `casam bench`: methods x noise settings x seeds, run in worker
processes, resumable run by run, then summarised as a CSV, markdown tables and PNG plots.

Why one command: a results table is only worth publishing if anyone can re-make it from a fresh
checkout, and a grid of a hundred runs must survive a kill or a failed run without starting over.

A grid is a YAML mapping (see benchmarks/grid.yaml):

    base:    {TrainConfig values shared by every run: dataset, train_subset, model, epochs, ...}
    noises:  [symmetric:0.2, asymmetric:0.4, ...]     # as on the command line
    seeds:   [0, 1, 2]
    methods: {sgd+ce: {}, sam+ce: {rho: 0.05}, ...}   # name -> the method's own options
    quick:   {epochs: 2, train_subset: 500, model: mlp, seeds: 1}   # what --quick changes (optional)

A method is named OPTIMIZER+LOSS[+SELECTION] (`sgd+ce`, `casam+elr`, `sgd+ce+coteaching`), which
sets `optimizer`, `loss` and `selection`; an optional `@TAG` (`sam+ce@rho0.1`) tells apart two
variants of one method. Run folders: OUT/runs/<noise, ':' -> '-'>/<method>/seed<k>, each a plain
`casam train` run folder (config.yaml, metrics.jsonl with one line per epoch, summary.json,
checkpoints). A folder with summary.json is finished and skipped; one with a checkpoint is resumed.

The report is made from the run folders alone, so it can be re-made without training.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from casam.config import OPTIMIZERS, ConfigError, TrainConfig, load_run_config, load_yaml

__all__ = [
    "GridError",
    "GridNotFoundError",
    "GridBusyError",
    "Grid",
    "Run",
    "Outcome",
    "CSV_COLUMNS",
    "parse_method",
    "load_grid",
    "expand_grid",
    "check_data",
    "check_run_folders",
    "run_action",
    "default_workers",
    "execute",
    "collect_results",
    "epoch_figures",
    "split_epochs",
    "write_report",
    "write_gitignore",
    "lock_out",
]


class GridError(ValueError):
    """A grid that cannot be run as written; the message is one sentence naming the bad value."""


class GridBusyError(GridError):
    """Another `casam bench` is running into the same output folder."""


class GridNotFoundError(FileNotFoundError):
    """The grid file does not exist."""


GRID_KEYS = ("base", "noises", "seeds", "methods", "quick")
# Set by the grid's structure (method name, noises, seeds) or by the bench itself, never in base/methods.
RESERVED = ("optimizer", "loss", "selection", "noise", "seed", "out", "progress", "tensorboard")
QUICK_DEFAULTS = {"epochs": 2, "train_subset": 500, "model": "mlp", "seeds": 1}
# Options that do not change what a run computes: a run folder may differ from the grid in these.
NOT_COMPARED = ("out", "progress", "tensorboard", "device", "data_dir")
METHOD_ORDER = (
    "sgd+ce", "sam+ce", "asam+ce", "casam+ce", "sgd+gce", "sgd+sce", "sgd+elr", "sgd+ce+coteaching", "casam+elr",
    "casam+sce",
)  # fmt: skip
BASELINE = "sgd+ce"  # the time ratio's denominator
CSV_COLUMNS = (
    "dataset", "noise", "method", "seed", "epochs", "last_acc", "best_acc", "sel_precision", "sel_recall",
    "memorization", "sec_per_epoch", "best_epoch", "model", "train_subset", "val_acc", "min_sel_precision",
    "val_pick_acc", "run",
)  # fmt: skip
_TAG = re.compile(r"^[A-Za-z0-9._=-]+$")


# ---------------------------------------------------------------------------------------------- the grid
def parse_method(name: str) -> dict[str, str]:
    """`OPTIMIZER+LOSS[+SELECTION][@TAG]` -> {"optimizer", "loss", "selection"} ("none" when absent).

    The name is the method's identity in folders, the CSV and the tables, so it must be canonical:
    lower case, no `+none`.
    """
    from casam.config import SELECTIONS
    from casam.losses import LOSSES

    if not isinstance(name, str) or not name:
        raise GridError(f"a method name must be a string like sgd+ce; got {name!r}")
    body, _, tag = name.partition("@")
    parts = body.split("+")
    bad = (
        name != name.strip().lower()
        or len(parts) not in (2, 3)
        or parts[0] not in OPTIMIZERS
        or parts[1] not in LOSSES
        or (len(parts) == 3 and (parts[2] == "none" or parts[2] not in SELECTIONS))
        or ("@" in name and not _TAG.match(tag))
    )
    if bad:
        raise GridError(
            f"method {name!r} is not OPTIMIZER+LOSS[+SELECTION][@TAG] in lower case, with OPTIMIZER one of "
            f"{', '.join(OPTIMIZERS)}, LOSS one of {', '.join(LOSSES)} and SELECTION one of "
            f"{', '.join(s for s in SELECTIONS if s != 'none')}"
        )
    return {"optimizer": parts[0], "loss": parts[1], "selection": parts[2] if len(parts) == 3 else "none"}


def noise_dirname(noise: str) -> str:
    """The folder name of a noise setting: ':' -> '-' (and a path's separators -> '_')."""
    return noise.replace(":", "-").replace("/", "_").replace("\\", "_")


@dataclass(frozen=True)
class Grid:
    """A grid file's content, checked for shape (values are checked when runs are expanded)."""

    path: str
    base: dict[str, Any]
    noises: tuple[str, ...]
    seeds: tuple[int, ...]
    methods: dict[str, dict[str, Any]]
    quick: dict[str, Any]


def load_grid(path: str | Path) -> Grid:
    """Read and shape-check a grid YAML file; GridNotFoundError if it is missing, else GridError."""
    path = str(path)
    if not Path(path).is_file():
        raise GridNotFoundError(f"grid file {path!r} does not exist; see benchmarks/grid.yaml for one")
    try:
        data = load_yaml(path)
    except ConfigError as error:
        raise GridError(f"grid: {error}") from None
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise GridError(f"grid {path}: unknown key {unknown[0]!r}; a grid has only {', '.join(GRID_KEYS)}")
    base = _mapping(data.get("base"), f"grid {path}: base")
    noises = data.get("noises")
    if not isinstance(noises, list) or not noises or not all(isinstance(n, str) and n.strip() for n in noises):
        raise GridError(f"grid {path}: noises must be a non-empty list of settings such as symmetric:0.5; got {noises!r}")
    noises = [n.strip() for n in noises]
    seeds = data.get("seeds")
    if (
        not isinstance(seeds, list) or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):  # fmt: skip
        raise GridError(f"grid {path}: seeds must be a non-empty list of non-negative integers; got {seeds!r}")
    methods = data.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise GridError(f"grid {path}: methods must name at least one method, e.g. sgd+ce: {{}}")
    checked: dict[str, dict[str, Any]] = {}
    for name, overrides in methods.items():
        parse_method(name)
        checked[name] = _mapping(overrides, f"grid {path}: method {name}")
    for what, values in (("noises", noises), ("seeds", seeds)):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise GridError(f"grid {path}: {what} lists {repeated[0]} more than once")
    quick = {**QUICK_DEFAULTS, **_mapping(data.get("quick"), f"grid {path}: quick", extra=("seeds",))}
    if not isinstance(quick["seeds"], int) or isinstance(quick["seeds"], bool) or quick["seeds"] < 1:
        raise GridError(f"grid {path}: quick: seeds is how many of the seeds --quick keeps, a positive integer; got {quick['seeds']!r}")
    return Grid(path, base, tuple(noises), tuple(seeds), checked, quick)


def _mapping(value: Any, where: str, *, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """A mapping of TrainConfig options (plus `extra` keys), the reserved ones refused."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise GridError(f"{where} must be a mapping of option: value; got {value!r}")
    known = {f.name for f in TrainConfig.fields()}
    for key in value:
        name = key.replace("-", "_")
        if name in RESERVED:
            raise GridError(f"{where} sets {key!r}, which the grid sets itself (method names, noises, seeds, --out); remove it")
        if name not in known and key not in extra:
            raise GridError(f"{where}: unknown option {key!r}; the options are those of `casam train --help`")
    return dict(value)


@dataclass(frozen=True)
class Run:
    """One cell of the grid: a noise setting, a method, a seed and the run's full configuration."""

    noise: str
    method: str
    seed: int
    config: TrainConfig = field(compare=False)

    @property
    def id(self) -> str:
        return f"{self.noise}/{self.method}/seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)


def expand_grid(grid: Grid, *, out: str | Path, quick: bool = False, only: Iterable[str] = ()) -> list[Run]:
    """Every run of the grid (noise-major, then method, then seed), each configuration validated.

    Config = TrainConfig defaults < base < method name < method options < quick (with `quick`) <
    noise, seed, run folder. A method option the method does not use (rho for sgd+ce) is refused,
    as `casam train` refuses it. `only`: shell patterns over run ids `NOISE/METHOD/seedK`; a run is
    kept when any pattern matches; a pattern that matches nothing is refused (a typo would silently
    run nothing).
    """
    out = Path(out)
    seeds = grid.seeds[: grid.quick["seeds"]] if quick else grid.seeds
    quick_values = {k: v for k, v in grid.quick.items() if k != "seeds"} if quick else {}
    runs = []
    for noise in grid.noises:
        for method, overrides in grid.methods.items():
            for seed in seeds:
                run_dir = out / "runs" / noise_dirname(noise) / method / f"seed{seed}"
                values = {
                    **grid.base, **parse_method(method), **overrides, **quick_values,
                    "noise": noise, "seed": seed, "out": str(run_dir), "progress": False, "tensorboard": False,
                }  # fmt: skip
                try:
                    config = TrainConfig.from_dict(values, source=f"grid {grid.path}")
                    config.validate()
                    config.check_relevant([k.replace("-", "_") for k in overrides])
                except ConfigError as error:
                    raise GridError(f"grid {grid.path}, run {noise}/{method}/seed{seed}: {error}") from None
                runs.append(Run(noise, method, seed, config))
    patterns = [p for p in only if p]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(r.id, pattern) for r in runs):
            raise GridError(f"--only {pattern!r} matches none of the {len(runs)} runs; run ids look like {runs[0].id}")
    if patterns:
        runs = [r for r in runs if any(fnmatch.fnmatchcase(r.id, p) for p in patterns)]
    return runs


def check_data(runs: list[Run]) -> None:
    """Load every data set once and apply every noise setting to it, so that a missing data set or a
    noise that does not fit it (asymmetric noise without a class mapping) stops the grid before any
    run starts, and a download happens once here instead of in every worker at the same time."""
    from casam.data import load_dataset
    from casam.noise import parse_noise

    by_data: dict[tuple[str, str | None], set[str]] = {}
    for run in runs:
        by_data.setdefault((run.config.dataset, run.config.data_dir), set()).add(run.noise)
    for (dataset, data_dir), noises in by_data.items():
        try:
            train_set, _ = load_dataset(dataset, data_dir=data_dir)
        except (OSError, ValueError) as error:
            raise GridError(f"data set {dataset} cannot be loaded, so no run was started: {error}") from None
        sample = train_set.subset(min(len(train_set), 1000), seed=0)
        for noise in sorted(noises):
            human = parse_noise(noise).kind in ("cifar10n", "cifar100n")
            try:
                (train_set if human else sample).with_noise(noise, seed=0, data_dir=data_dir)
            except (OSError, ValueError) as error:
                raise GridError(f"noise {noise} cannot be applied to {dataset}, so no run was started: {error}") from None


def check_run_folders(runs: list[Run]) -> None:
    """Refuse a grid whose run folders already hold runs configured differently (say, a --quick run
    in the full grid's folder): resuming or skipping them would mix two experiments in one table."""
    for run in runs:
        saved_path = run.run_dir / "config.yaml"
        if not saved_path.is_file():
            continue
        try:
            saved = TrainConfig.from_dict(load_run_config(saved_path), source=str(saved_path)).to_dict()
        except ConfigError as error:
            raise GridError(f"{run.run_dir} holds an unreadable config.yaml ({error}); delete that folder to re-run it") from None
        wanted = run.config.to_dict()
        # options the method does not use (a CA-SAM option in an SGD run) cannot make two runs differ
        diffs = [
            f"{k} {saved[k]!r}, not {wanted[k]!r}"
            for k in wanted
            if k not in NOT_COMPARED and run.config.relevant(k) and saved.get(k) != wanted[k]
        ]
        if diffs:
            raise GridError(
                f"{run.run_dir} holds a run configured differently ({'; '.join(diffs[:3])}); "
                "use another --out or delete that folder"
            )


# ---------------------------------------------------------------------------------------------- running
def run_action(run_dir: str | Path) -> str:
    """What a run folder needs: "skip" (finished), "resume" (has a checkpoint), "restart" (killed
    before its first checkpoint: casam's files are replaced) or "new"."""
    from casam import checkpoint
    from casam.train import RUN_FILES

    run_dir = Path(run_dir)
    if (run_dir / "summary.json").is_file():
        return "skip"
    if (run_dir / checkpoint.CURRENT).is_file() or (run_dir / checkpoint.PREVIOUS).is_file():
        return "resume"
    if any((run_dir / name).exists() for name in RUN_FILES):
        return "restart"
    return "new"


def default_workers() -> int:
    """The cores this process may use (its CPU affinity where the OS tells it, else os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Outcome:
    """What became of one run: status "done", "resumed", "skipped" or "failed" (message says why)."""

    run_id: str
    status: str
    seconds: float = 0.0
    message: str = ""


ERROR_LOG = "bench-error.log"


def _work(config_values: dict[str, Any], action: str, threads: int, conn) -> None:
    """Worker process body: train one run quietly, send back (status, seconds, message)."""
    t0 = time.perf_counter()
    status, message = "failed", ""
    run_dir = Path(config_values["out"])
    try:
        import torch

        torch.set_num_threads(threads)
        from casam.train import train

        config = TrainConfig.from_dict(config_values)
        train(config, resume=action == "resume", overwrite=action == "restart", log=lambda *_: None)
        status = "resumed" if action == "resume" else "done"
        (run_dir / ERROR_LOG).unlink(missing_ok=True)
    except BaseException as error:  # noqa: BLE001 - a worker reports every failure, KeyboardInterrupt too
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / ERROR_LOG).write_text(traceback.format_exc())
        except OSError:
            pass
    conn.send({"status": status, "seconds": time.perf_counter() - t0, "message": message})
    conn.close()


def execute(
    runs: list[Run],
    *,
    workers: int | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> list[Outcome]:
    """Run the grid: finished runs are skipped, the others start in fresh "spawn" processes, at most
    `workers` at a time (default: one per core), each with max(1, cores // workers) torch threads:
    a run's thread count (hence its float summation order, which at heavy noise changes the result
    by several points) depends on --workers and the machine only, not on how many runs are left.

    A process per run (not a pool): a run that crashes its process (out of memory, a signal) fails
    alone and the others go on. Outcomes come back in the order of `runs`. A KeyboardInterrupt, or a
    SIGTERM (`kill`, a job scheduler), stops the workers (they are ours: a killed bench must not leave
    orphans training on) and propagates; every checkpoint written so far is kept.
    """
    import multiprocessing
    from multiprocessing.connection import wait

    cores = default_workers()
    workers = cores if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer; got {workers!r}")
    outcomes: dict[str, Outcome] = {}
    todo = []
    for run in runs:
        action = run_action(run.run_dir)
        if action == "skip":
            outcomes[run.id] = Outcome(run.id, "skipped")
        else:
            todo.append((run, action))
    if len(outcomes):
        log(f"casam bench: {len(outcomes)} of {len(runs)} runs already finished, skipped")
    if not todo:
        return [outcomes[r.id] for r in runs]

    threads = max(1, cores // workers)
    ctx = multiprocessing.get_context("spawn")
    bar = _progress_bar(len(todo), enabled=progress)
    active: dict[Any, tuple[Run, Any, Any]] = {}
    failed = 0

    def say(text: str) -> None:
        if bar is None:
            log(text)
        else:
            with bar.external_write_mode():
                log(text)

    restore = _raise_on_sigterm()
    try:
        pending = list(todo)
        while pending or active:
            while pending and len(active) < workers:
                run, action = pending.pop(0)
                run.run_dir.mkdir(parents=True, exist_ok=True)
                receive, send = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_work, args=(run.config.to_dict(), action, threads, send), name=f"casam bench {run.id}")
                process.start()
                send.close()
                active[process.sentinel] = (run, process, receive)
            for sentinel in wait(list(active)):
                run, process, receive = active.pop(sentinel)
                try:
                    result = receive.recv() if receive.poll() else None
                except (EOFError, OSError, ValueError):  # killed while sending
                    result = None
                process.join()
                receive.close()
                if result is None:
                    result = {"status": "failed", "seconds": 0.0, "message": f"its worker process died (exit code {process.exitcode})"}
                outcome = Outcome(run.id, result["status"], result["seconds"], result["message"])
                outcomes[run.id] = outcome
                done = len(todo) - len(pending) - len(active)
                if outcome.status == "failed":
                    failed += 1
                    say(f"casam bench: [{done}/{len(todo)}] {run.id} FAILED: {outcome.message} (see {run.run_dir / ERROR_LOG})")
                else:
                    say(f"casam bench: [{done}/{len(todo)}] {run.id} {outcome.status} in {outcome.seconds:.0f} s")
                if bar is not None:
                    bar.update(1)
                    if failed:
                        bar.set_postfix(failed=failed)
    except BaseException:
        for _, process, _ in active.values():
            process.terminate()
        for _, process, _ in active.values():
            process.join()
        raise
    finally:
        restore()
        if bar is not None:
            bar.close()
    return [outcomes[r.id] for r in runs]


def _raise_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM raise SystemExit(143) in the main thread, so that `execute` stops its workers as it
    does on Ctrl-C; returns the function that puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _progress_bar(total: int, *, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="casam bench", unit="run", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


# ---------------------------------------------------------------------------------------------- report
def collect_results(out: str | Path) -> tuple[list[dict[str, Any]], list[Path]]:
    """(one row per finished run, the unfinished run folders) read from OUT/runs/*/*/seed*.

    Each row holds the CSV_COLUMNS (None where not applicable) plus "config" (the run's resolved
    configuration) and "dir" (its folder). The noise and seed come from config.yaml, the method
    from the folder name (it carries the optional @TAG that the configuration does not).
    """
    from casam.train import read_metrics

    out = Path(out)
    rows, unfinished = [], []
    for run_dir in sorted(out.glob("runs/*/*/seed*")):
        if not (run_dir / "config.yaml").is_file():
            continue
        if not (run_dir / "summary.json").is_file():
            unfinished.append(run_dir)
            continue
        try:
            parse_method(run_dir.parent.name)
            config = load_run_config(run_dir / "config.yaml")
            summary = json.loads((run_dir / "summary.json").read_text())
        except (GridError, ConfigError, json.JSONDecodeError, OSError):
            unfinished.append(run_dir)
            continue
        row = {
            "dataset": config.get("dataset"),
            "noise": str(config.get("noise")),
            "method": run_dir.parent.name,
            "seed": config.get("seed"),
            "epochs": summary.get("epochs"),
            "model": config.get("model"),
            "train_subset": config.get("train_subset"),
            "best_epoch": summary.get("best_epoch"),
            "run": run_dir.relative_to(out).as_posix(),
            "config": config,
            "dir": run_dir,
        }
        for key in ("last_acc", "best_acc", "sel_precision", "sel_recall", "memorization", "sec_per_epoch"):
            value = summary.get(key)
            row[key] = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
        row.update(epoch_figures(read_metrics(run_dir / "metrics.jsonl")))
        rows.append(row)
    return rows, unfinished


def split_epochs(epochs: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(1-based epoch, selection precision) of every epoch whose split set samples aside (selected fraction
    < 1): the warm-up's all-clean epochs would hide nothing, so a split is judged on these only."""
    precisions = [(number, _finite(e.get("sel_precision")), e.get("selected_fraction", 1)) for number, e in enumerate(epochs, 1)]
    return [(number, precision) for number, precision, fraction in precisions if precision is not None and fraction < 1]


def epoch_figures(epochs: list[dict[str, Any]]) -> dict[str, float | None]:
    """From a run's per-epoch metrics rows (`casam.train.read_metrics`): the last held-out noisy accuracy
    (runs with val_fraction or val_size), the test accuracy of the epoch with the best held-out accuracy
    (early stopping without a clean label), and the lowest selection precision of the epochs that split
    (selected fraction < 1), the figure a split that decays over training is judged by."""
    from casam.train import held_out_pick

    val = epochs[-1].get("val_acc") if epochs else None
    chosen = held_out_pick(epochs)  # the epoch casam train's summary names
    pick = chosen["test_acc"] if chosen is not None else None
    split = [precision for _, precision in split_epochs(epochs)]
    return {
        "val_acc": _finite(val),
        "val_pick_acc": _finite(pick),
        "min_sel_precision": min(split) if split else None,
    }


def _noise_key(noise: str) -> tuple:
    from casam.noise import NOISE_KINDS, parse_noise

    try:
        spec = parse_noise(noise)
    except (TypeError, ValueError):
        return (len(NOISE_KINDS), 0.0, noise)
    return (NOISE_KINDS.index(spec.kind), spec.rate or 0.0, spec.arg or "")


def _order(rows, noise_order, method_order) -> tuple[list[str], list[str]]:
    """Noises and methods present in `rows`, in the given order first, then a canonical one."""
    noises = {r["noise"] for r in rows}
    methods = {r["method"] for r in rows}
    given_n = [n for n in (noise_order or ()) if n in noises]
    given_m = [m for m in (method_order or METHOD_ORDER) if m in methods]
    rest_m = sorted(methods - set(given_m), key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m))
    return given_n + sorted(noises - set(given_n), key=_noise_key), given_m + rest_m


def _stats(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std with n - 1 (None for one value), n) over the values that are not None."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None, None, 0
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return mean, std, len(xs)


def _pct(values: list[float | None]) -> str:
    mean, std, _ = _stats(values)
    if mean is None:
        return "–"
    return f"{100 * mean:.1f} ± {'–' if std is None else f'{100 * std:.1f}'}"


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([_csv_value(row.get(c)) for c in CSV_COLUMNS])


def _setup_line(rows: list[dict[str, Any]]) -> str:
    def values(key, fmt=str):
        seen = []
        for row in rows:
            v = row["config"].get(key)
            if v not in seen:
                seen.append(v)
        return ", ".join(fmt(v) for v in seen)

    seeds = sorted({r["seed"] for r in rows})
    subset = values("train_subset", lambda v: "all" if v is None else f"{v:,}")
    return (
        f"Data set {values('dataset')} (training samples: {subset}), model {values('model')}, "
        f"{values('epochs')} epochs, batch {values('batch_size')}, {values('base_optimizer')} "
        f"(momentum {values('momentum')}), lr {values('lr')} {values('schedule')}, "
        f"weight decay {values('weight_decay')}; seeds {', '.join(map(str, seeds))}; {len(rows)} runs."
    )


# The options that shape each method (the rest of the configuration is shared and in the setup line).
METHOD_OPTIONS = {
    "sam": ("rho", "sam_warmup"),
    "asam": ("rho", "sam_warmup"),
    "casam": ("rho", "warmup", "criterion", "history_beta", "history_slow_beta", "history_debias", "noisy_weight", "noisy_target", "perturb_from", "perturb_weight", "perturb_balance", "perturb_cutoff", "perturb_groups", "heavy_warmup", "history_from", "heavy_criterion", "heavy_groups", "heavy_noisy_weight", "heavy_rho", "history_loss", "min_clean"),
    "coteaching": ("forget_rate", "num_gradual"),
}
# options added after the published reports -> their default: printed only where a run sets another value
# (runs made before the option existed have none, which is the default), so those reports stay as they were
SHOWN_IF_SET = {"history_slow_beta": "None", "perturb_groups": "1", "heavy_warmup": "0", "history_from": "0", "heavy_criterion": "None", "heavy_groups": "None", "heavy_noisy_weight": "None", "heavy_rho": "None", "history_loss": "training"}


def _method_settings(rows: list[dict[str, Any]], method: str) -> str:
    parts = parse_method(method)
    names = METHOD_OPTIONS.get(parts["optimizer"], ()) + METHOD_OPTIONS.get(parts["selection"], ())
    shown = []
    for name in names:
        values = list(dict.fromkeys(str(r["config"].get(name)) for r in rows if r["method"] == method))
        if name in SHOWN_IF_SET:
            values = [v for v in values if v not in ("None", SHOWN_IF_SET[name])]
            if not values:
                continue
        value = " / ".join(values)
        if name == "forget_rate" and value == "None":
            value = "estimated"
        shown.append(f"{name} {value}")
    if parts["loss"] != "ce":
        from casam.losses import PUBLISHED

        # the values the loss was built with (as casam.train does): the published preset, then what the run gave
        for run in (TrainConfig.from_dict(r["config"]) for r in rows if r["method"] == method):
            preset, given = run.loss_preset(), run.loss_options()
            published = PUBLISHED[parts["loss"]][preset]
            values = ", ".join(f"{k} {v:g}" for k, v in {**published, **given}.items())
            source = f"published {preset.upper().replace('CIFAR', 'CIFAR-')} values"
            if given:
                rest = "" if set(given) == set(published) else f"; otherwise the {source}"
                source = f"{', '.join(given)} given{rest}"
            shown.append(f"{parts['loss'].upper()} {values} ({source})")
    return ", ".join(dict.fromkeys(shown)) or "–"


def _table_md(rows: list[dict[str, Any]], noises: list[str], methods: list[str], *, unfinished: list[str]) -> str:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["noise"], row["method"]), []).append(row)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    lines = ["# Benchmark results", ""]
    if not rows:
        return "\n".join(lines + ["No finished runs yet.", ""])
    lines += [
        _setup_line(rows),
        "",
        "Test accuracy in %, mean ± sample standard deviation over seeds (– with one seed). *Last*: after the",
        "final epoch, the honest figure when there is no clean validation set; *best*: the best epoch's,",
        "picked on the test set, hence optimistic. *Sel. precision / recall*: the likely-clean set of the",
        "last epoch against the true clean set (methods that select); *lowest*: the lowest precision of any",
        "epoch that split. *Memorisation*: % of mislabelled",
        "training samples predicted as their wrong label in the last epoch. *s/epoch*: training time per",
        f"epoch, runs sharing the machine; *× {BASELINE}*: its ratio to {BASELINE} in the same setting.",
    ]
    if any(r.get("val_acc") is not None for r in rows):
        lines += [
            "*Held-out noisy acc*: the last epoch's accuracy on held-out noisy training data against its given",
            "labels; *at held-out pick*: test accuracy at the epoch where that was highest (early stopping",
            "without a clean label).",
        ]
    if unfinished:  # named, so a reader can tell a stopped run from a missing one
        named = ", ".join(unfinished[:10]) + (f" and {len(unfinished) - 10} more" if len(unfinished) > 10 else "")
        lines += ["", f"{len(unfinished)} unfinished run(s) are not included: {named}."]
    lines += ["", "| method | its own settings |", "| --- | --- |"]
    lines += [f"| {method} | {_method_settings(rows, method)} |" for method in methods]
    for dataset in datasets:
        title = "" if len(datasets) == 1 else f" — {dataset}"
        present = [n for n in noises if any((dataset, n, m) in groups for m in methods)]
        lines += ["", f"## Headline: last-epoch test accuracy (%){title}", ""]
        lines.append("| method | " + " | ".join(present) + " |")
        lines.append("| --- |" + " ---: |" * len(present))
        for method in methods:
            if not any((dataset, n, method) in groups for n in present):
                continue
            cells = [_pct([r["last_acc"] for r in groups.get((dataset, n, method), [])]) for n in present]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", f"## Every noise setting and method{title}", ""]
        with_val = any(r.get("val_acc") is not None for r in rows if r["dataset"] == dataset)
        val_head, val_rule = (" held-out noisy acc | at held-out pick |", " ---: | ---: |") if with_val else ("", "")
        lines.append(
            f"| noise | method | seeds | last acc | best acc |{val_head} sel. precision | lowest | sel. recall | memorisation | s/epoch | × {BASELINE} |"
        )
        lines.append("| --- | --- | ---: | ---: | ---: |" + val_rule + " ---: | ---: | ---: | ---: | ---: | ---: |")
        for noise in present:
            base_time, _, _ = _stats([r["sec_per_epoch"] for r in groups.get((dataset, noise, BASELINE), [])])
            for method in methods:
                group = groups.get((dataset, noise, method))
                if not group:
                    continue
                sec, _, _ = _stats([r["sec_per_epoch"] for r in group])
                ratio = f"{sec / base_time:.2f}" if sec is not None and base_time else "–"
                cells = [
                    noise, method, str(len(group)),
                    _pct([r["last_acc"] for r in group]), _pct([r["best_acc"] for r in group]),
                    *([_pct([r.get("val_acc") for r in group]), _pct([r.get("val_pick_acc") for r in group])] if with_val else []),
                    _pct([r["sel_precision"] for r in group]), _pct([r.get("min_sel_precision") for r in group]),
                    _pct([r["sel_recall"] for r in group]),
                    _pct([r["memorization"] for r in group]), "–" if sec is None else f"{sec:.2f}", ratio,
                ]  # fmt: skip
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _style(i: int) -> dict[str, Any]:
    """A method's colour and line style, the same in every panel and figure (10 colours, then dashes)."""
    import matplotlib

    colours = matplotlib.colormaps["tab10"].colors
    return {"color": colours[i % len(colours)], "linestyle": ("-", "--", ":", "-.")[(i // len(colours)) % 4]}


def _plot_accuracy_vs_noise(rows, noises, methods, path: Path) -> Path:
    """Last-epoch accuracy (mean, std as error bars) per method: a panel per noise kind with more than
    one rate (x = rate), one more panel for the other settings (x = the setting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from casam.noise import parse_noise

    kinds: dict[str, list[str]] = {}
    for noise in noises:
        try:
            spec = parse_noise(noise)
            kinds.setdefault(spec.kind if spec.rate is not None else "", []).append(noise)
        except ValueError:
            kinds.setdefault("", []).append(noise)
    panels = [(k, v) for k, v in kinds.items() if k and len(v) > 1]
    others = [n for k, v in kinds.items() if not (k and len(v) > 1) for n in v]
    if others:
        panels.append(("other settings" if panels else "noise setting", others))
    labelled = len({r["dataset"] for r in rows}) > 1
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), constrained_layout=True, squeeze=False)
    for ax, (kind, settings) in zip(axes[0], panels):
        numeric = kind not in ("other settings", "noise setting")
        for method in methods:
            for dataset in dict.fromkeys(r["dataset"] for r in rows):
                xs, ys, es = [], [], []
                for i, noise in enumerate(settings):
                    mean, std, _ = _stats([r["last_acc"] for r in rows if (r["dataset"], r["noise"], r["method"]) == (dataset, noise, method)])
                    if mean is not None:
                        xs.append(parse_noise(noise).rate if numeric else i)
                        ys.append(100 * mean)
                        es.append(100 * (std or 0.0))
                if xs:
                    label = f"{method} ({dataset})" if labelled else method
                    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label, **_style(methods.index(method)))
        if numeric:
            ax.set_xlabel(f"{kind} noise rate")
        else:
            ax.set_xticks(range(len(settings)), settings, rotation=20)
        ax.set_title(kind)
        ax.set_ylabel("last-epoch test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


CURVE_PANELS = (
    ("test_acc", "test accuracy (%)"),
    ("sel_precision", "likely-clean precision (%)"),
    ("sel_recall", "likely-clean recall (%)"),
    ("memorization", "memorisation of wrong labels (%)"),
)


def _plot_curves(rows, noise: str, methods, path: Path) -> Path:
    """Per-epoch curves of one noise setting, mean over seeds, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from casam.train import read_metrics

    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(4.5 * len(CURVE_PANELS), 4), constrained_layout=True)
    for method in methods:
        histories = [read_metrics(r["dir"] / "metrics.jsonl") for r in rows if r["noise"] == noise and r["method"] == method]
        if not histories:
            continue
        for ax, (key, _) in zip(axes, CURVE_PANELS):
            epochs = min(len(h) for h in histories)
            points = []
            for e in range(epochs):
                mean, _, _ = _stats([_finite(h[e].get(key)) for h in histories])
                if mean is not None:
                    points.append((histories[0][e].get("epoch", e + 1), 100 * mean))
            if points:
                ax.plot(*zip(*points), marker=".", label=method, **_style(methods.index(method)))
    for ax, (_, name) in zip(axes, CURVE_PANELS):
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{noise}: mean over seeds")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def write_report(
    out: str | Path,
    *,
    noise_order: Iterable[str] | None = None,
    method_order: Iterable[str] | None = None,
    curves: Iterable[str] | None = None,
) -> list[Path]:
    """Write OUT/results.csv, OUT/table.md, OUT/accuracy_vs_noise.png and OUT/curves_<noise>.png from
    the finished run folders under OUT/runs; return the paths written.

    curves: the noise settings to draw per-epoch curves for (default: symmetric:0.5 when present,
    else the first setting). A setting without finished runs is refused (ValueError).
    """
    out = Path(out)
    rows, unfinished = collect_results(out)
    noises, methods = _order(rows, list(noise_order or ()), list(method_order) if method_order else None)
    rows.sort(key=lambda r: (r["dataset"], noises.index(r["noise"]), methods.index(r["method"]), r["seed"]))
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.csv", out / "table.md"]
    _write_csv(rows, written[0])
    unfinished_ids = [d.relative_to(out / "runs").as_posix() for d in unfinished]
    written[1].write_text(_table_md(rows, noises, methods, unfinished=unfinished_ids))
    if not rows:
        return written
    written.append(_plot_accuracy_vs_noise(rows, noises, methods, out / "accuracy_vs_noise.png"))
    curves = list(curves or ())
    for noise in curves:
        if noise not in noises:
            raise ValueError(f"--curves {noise!r} has no finished runs; choose one of {', '.join(noises)}")
    if not curves:
        curves = ["symmetric:0.5" if "symmetric:0.5" in noises else noises[0]]
    for noise in curves:
        written.append(_plot_curves(rows, noise, methods, out / f"curves_{noise_dirname(noise)}.png"))
    return written


GITIGNORE = """\
# written by casam bench: per-epoch curves (metrics.jsonl), summaries and configs are worth committing;
# checkpoints and the held-out pick's network (megabytes per run) are only needed to resume or to reuse a
# run, and a run's suspects.csv (a line per suspect) is summed up in its summary.json.
!runs/
runs/**/suspects.csv
runs/**/checkpoint*.pt
runs/**/.checkpoint*
runs/**/best_model.pt
runs/**/.best_model.pt*
runs/**/tensorboard/
.bench.lock
"""


def lock_out(out: str | Path):
    """Hold an exclusive lock on OUT/.bench.lock (released when the returned file is closed or the
    process dies), so that two benches never train the same run folder at once. POSIX only; elsewhere
    a no-op."""
    path = Path(out) / ".bench.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")
    try:
        import fcntl
    except ImportError:
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise GridBusyError(f"another casam bench is running into {out} (it holds {path}); wait for it or use another --out") from None
    return handle


def write_gitignore(out: str | Path) -> None:
    """Put a .gitignore in OUT (when it has none) that keeps run folders but not their checkpoints."""
    path = Path(out) / ".gitignore"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(GITIGNORE)
