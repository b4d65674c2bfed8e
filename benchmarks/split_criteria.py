"""What each likely-clean criterion makes of the history on which CA-SAM's split starts (docs/casam-split.md, round 29).

    python benchmarks/split_criteria.py benchmarks/casam-heavy-criterion.yaml 'symmetric:0.8/*/seed100' 'symmetric:0.8/*/seed101'

At heavy noise agreement's first split is lopsided: it keeps most clean samples of the classes the young
network already names and almost none of the others. This trains each selected run of a grid (run ids
`NOISE/METHOD/seedK`, shell patterns as `casam bench --only`) through its warm-up only, with the run's own
configuration and schedule, in a temporary folder and on one torch thread (as a two-worker `casam bench`
gives each run, so the history is the bench run's), and reads the history the split would start from
under each criterion: selection precision and recall against the clean labels, the fraction selected,
and the recall of each given class's clean samples. One line per run and criterion; figures in %.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import sys
import tempfile
from pathlib import Path

import torch

from casam import checkpoint
from casam.bench import expand_grid, load_grid
from casam.history import SampleHistory
from casam.train import load_data, split_validation, train

COMPARED = ("agreement", "class-thresholds", "small-loss")


class _WarmupOver(Exception):
    pass


def history_after_warmup(config) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(the history's state after the warm-up, (N,) bool is_noisy, (N,) given labels) of a CA-SAM run's config."""
    if config.optimizer != "casam" or config.warmup < 1:
        raise ValueError(f"{config.optimizer} with warm-up {config.warmup}: only a CA-SAM run with a warm-up has a split to start")
    epochs_done = 0

    def stop_after_warmup(line: str) -> None:  # train() logs one line per epoch, after its checkpoint
        nonlocal epochs_done
        epochs_done += line.startswith("epoch ")
        if epochs_done == config.warmup:
            raise _WarmupOver

    with tempfile.TemporaryDirectory() as folder:
        run = dataclasses.replace(config, out=folder, progress=True, tensorboard=False)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # the progress bars
                train(run, overwrite=True, log=stop_after_warmup)
        except _WarmupOver:
            pass
        finally:
            torch.set_num_threads(threads)
        state, _ = checkpoint.load_latest(Path(folder))
    train_set, _ = split_validation(config, load_data(config)[0])
    history = state["learner"]["optimizer"]["wrapper"]["history"]
    return history, train_set.is_noisy.cpu(), train_set.labels.cpu()


def criterion_figures(history: dict, is_noisy: torch.Tensor, labels: torch.Tensor, criterion: str) -> dict:
    """The split `criterion` makes of a saved history: precision, recall, selected fraction and the recall of
    each given class's clean samples, in %."""
    n, num_classes = history["probs"].shape
    split = SampleHistory(n, num_classes, criterion=criterion)
    split.load_state_dict(history)
    split.refresh()
    selected = split.clean_mask(torch.arange(n), labels)
    clean = ~is_noisy
    kept = selected & clean
    per_class = [100 * float(kept[labels == c].sum() / clean[labels == c].sum().clamp_min(1)) for c in range(num_classes)]
    return {
        "criterion": criterion,
        "precision": 100 * float(kept.sum() / selected.sum().clamp_min(1)),
        "recall": 100 * float(kept.sum() / clean.sum()),
        "selected": 100 * float(selected.float().mean()),
        "class_recall": per_class,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", type=Path, help="a casam bench grid (benchmarks/*.yaml)")
    parser.add_argument("runs", nargs="+", help="run ids NOISE/METHOD/seedK (shell patterns)")
    args = parser.parse_args(argv)
    lines = []
    print("| run | criterion | precision | recall | selected | classes under 10 % | recall per given class |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for run in expand_grid(load_grid(args.grid), out=tempfile.gettempdir(), only=args.runs):
        history, is_noisy, labels = history_after_warmup(run.config)
        for criterion in COMPARED:
            line = {"run": run.id, **criterion_figures(history, is_noisy, labels, criterion)}
            lines.append(line)
            under = sum(r < 10 for r in line["class_recall"])
            per_class = " ".join(f"{r:.0f}" for r in line["class_recall"])
            print(f"| {run.id} | {criterion} | {line['precision']:.1f} | {line['recall']:.1f} | {line['selected']:.1f} | {under} | {per_class} |", flush=True)
    return lines


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
