"""What the small-loss split of a finished CA-SAM run ranks: its history's recorded loss or the label (round 32).

    python benchmarks/history_ranking.py docs/casam-heavy-criterion-losses/runs/symmetric-0.8/casam+elr@heavy-small-loss-lambda0.5/seed10?

small-loss keeps, of each given class, the share r with the lowest l_i, the EMA of the loss the history
recorded. Until round 32 that was the loss the network trains on, and ELR's loss has a term that ignores the
label (lam * log(1 - <p, t>), lowest for the samples the network is surest of). This reads a run folder's
last checkpoint (written by `casam train`; a bench's checkpoints are not committed, so re-run the run to make
it) and builds the small-loss split twice on the same history, with the run's r: once from the recorded
l_i, once from the cross-entropy of the softmax memory on the given label, -log h_i[y_i]. One line per run:
each split's precision and recall against the clean labels (%), and for the recorded one, the given
classes whose selected samples are mostly of another true class, with the true classes they hold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from casam import checkpoint
from casam.config import TrainConfig, load_run_config
from casam.history import SampleHistory
from casam.train import load_data, split_validation


def small_loss_splits(run_dir: Path) -> dict:
    """The small-loss split of a run's last history, by its recorded losses and by -log h_i[y_i]."""
    config = TrainConfig.from_dict(load_run_config(run_dir / "config.yaml"), source=str(run_dir / "config.yaml"))
    state, _ = checkpoint.load_latest(run_dir)
    saved = state["learner"]["optimizer"]["wrapper"]["history"]
    train_set, _ = split_validation(config, load_data(config)[0])
    labels, true = train_set.labels.cpu(), train_set.true_labels.cpu()
    n, num_classes = saved["probs"].shape
    every = torch.arange(n)
    out = {"run": str(run_dir), "num_classes": num_classes}
    for name in ("recorded", "cross-entropy"):
        history = SampleHistory(n, num_classes, criterion="small-loss")
        history.load_state_dict(saved)
        if name == "cross-entropy":  # l_i such that mean_losses() returns -log h_i[y_i]
            own = history.mean_probs(every).gather(1, labels[:, None]).squeeze(1)
            history.losses = -own.clamp_min(1e-12).log() / history._correction(every)
        history.refresh()
        selected = history.clean_mask(every, labels)
        clean = labels == true
        kept = selected & clean
        out[name] = {
            "precision": 100 * float(kept.sum() / selected.sum().clamp_min(1)),
            "recall": 100 * float(kept.sum() / clean.sum()),
            "true_by_given": [torch.bincount(true[selected & (labels == c)], minlength=num_classes).tolist() for c in range(num_classes)],
        }
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of CA-SAM runs (with their checkpoint.pt)")
    args = parser.parse_args(argv)
    print("| run | P recorded | R recorded | P cross-entropy | R cross-entropy | given classes mostly of another class (the true classes they hold) |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    found = []
    for run_dir in args.runs:
        line = small_loss_splits(run_dir)
        found.append(line)
        rec, ce = line["recorded"], line["cross-entropy"]
        wrong = []
        for c, counts in enumerate(rec["true_by_given"]):
            if sum(counts) and counts[c] < sum(counts) / 2:
                held = sorted((k for k in range(line["num_classes"]) if counts[k] >= sum(counts) / 10), key=lambda k: -counts[k])
                wrong.append(f"{c} ({', '.join(map(str, held))})")
        print(f"| {run_dir} | {rec['precision']:.1f} | {rec['recall']:.1f} | {ce['precision']:.1f} | {ce['recall']:.1f} | {'; '.join(wrong) or '-'} |", flush=True)
    return found


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
