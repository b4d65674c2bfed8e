"""What users measure on a noisy-label run, computed from outputs the training step already has.

Conventions: `is_noisy` is True where the given label is wrong; a "selected" sample is one the
method put in its likely-clean set. All counts are accumulated on the device and read once per
epoch, so metrics cost no extra forward pass and no per-step host synchronisation.

- selection precision = |selected and clean| / |selected|
- selection recall    = |selected and clean| / |clean|
- memorisation        = fraction of mislabelled training samples the network predicts *with their
  wrong given label*. During training it is read off the first-pass logits of each step (train-mode
  network at the weights before the step), an online estimate that needs no extra pass.
"""

from __future__ import annotations

import contextlib
import math

import torch


def selection_scores(selected: torch.Tensor, is_noisy: torch.Tensor) -> dict[str, float]:
    """Precision, recall and F1 of a likely-clean selection against the truth.

    selected, is_noisy: (N,) bool. Precision is NaN when nothing is selected; recall is NaN when
    nothing is clean.
    """
    selected = selected.bool()
    clean = ~is_noisy.bool()
    true_positive = (selected & clean).sum().item()
    n_selected, n_clean = selected.sum().item(), clean.sum().item()
    return _scores(true_positive, n_selected, n_clean, len(selected))


def _scores(true_positive: float, n_selected: float, n_clean: float, n_total: float) -> dict[str, float]:
    precision = true_positive / n_selected if n_selected else math.nan
    recall = true_positive / n_clean if n_clean else math.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else math.nan
    return {"precision": precision, "recall": recall, "f1": f1, "fraction": n_selected / n_total if n_total else math.nan}


def memorization_rate(predictions: torch.Tensor, given: torch.Tensor, is_noisy: torch.Tensor) -> float:
    """Fraction of mislabelled samples predicted as their (wrong) given label; NaN if none is mislabelled."""
    noisy = is_noisy.bool()
    if not noisy.any():
        return math.nan
    return (predictions[noisy] == given[noisy]).double().mean().item()


class EpochMeter:
    """Device-side running sums for one epoch of training steps.

    `update` takes the step's first-pass logits and per-sample losses (detached), the given labels,
    the truth flags (or None when the truth is unknown) and the likely-clean mask (or None for
    methods that do not select).
    """

    KEYS = ("loss", "samples", "correct_given", "selected", "selected_clean", "clean", "noisy", "memorised")

    def __init__(self, device: torch.device | str = "cpu", *, num_classes: int = 0):
        # num_classes > 0 adds per-class selection counts (by given label; for a clean sample it is the
        # true one): selected, selected and clean, clean; 3 x C more sums, reduced with the others under DDP
        self.num_classes = num_classes
        self.sums = torch.zeros(len(self.KEYS) + 3 * num_classes, dtype=torch.float64, device=device)
        self.has_truth = False
        self.has_selection = False

    def update(self, logits, losses, labels, is_noisy=None, selected=None) -> None:
        pred = logits.detach().argmax(1)
        agree = pred == labels
        row = [losses.detach().double().sum(), float(len(labels)), agree.sum()]
        if is_noisy is not None:
            self.has_truth = True
            clean = ~is_noisy
            sel = selected if selected is not None else torch.ones_like(clean)
            row += [sel.sum(), (sel & clean).sum(), clean.sum(), is_noisy.sum(), (agree & is_noisy).sum()]
        else:
            sel = selected if selected is not None else torch.zeros(0, dtype=torch.bool, device=labels.device)
            row += [sel.sum(), 0, 0, 0, 0]
        self.has_selection |= selected is not None
        k = len(self.KEYS)
        self.sums[:k] += torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.sums.device) for v in row])
        if self.num_classes and is_noisy is not None and selected is not None:
            # index_add_ rather than bincount of masked labels: no data-dependent shape, so no host sync
            clean = ~is_noisy
            masks = torch.stack([selected, selected & clean, clean]).to(self.sums.dtype)
            self.sums[k:].view(3, self.num_classes).index_add_(1, labels.to(self.sums.device), masks.to(self.sums.device))

    def add_(self, other_sums: torch.Tensor) -> None:
        self.sums += other_sums

    def compute(self) -> dict[str, float]:
        s = dict(zip(self.KEYS, self.sums.tolist()))
        out = {
            "train_loss": s["loss"] / s["samples"] if s["samples"] else math.nan,
            "train_acc_given": s["correct_given"] / s["samples"] if s["samples"] else math.nan,
        }
        if self.has_selection:
            out["selected_fraction"] = s["selected"] / s["samples"] if s["samples"] else math.nan
        if self.has_truth:
            if self.has_selection:
                scores = _scores(s["selected_clean"], s["selected"], s["clean"], s["samples"])
                out.update(sel_precision=scores["precision"], sel_recall=scores["recall"], sel_f1=scores["f1"])
            out["memorization"] = s["memorised"] / s["noisy"] if s["noisy"] else math.nan
            if self.has_selection and self.num_classes:
                sel, sel_clean, clean = self.sums[len(self.KEYS):].view(3, self.num_classes).tolist()
                out["sel_precision_by_class"] = [tp / n if n else math.nan for tp, n in zip(sel_clean, sel)]
                out["sel_recall_by_class"] = [tp / n if n else math.nan for tp, n in zip(sel_clean, clean)]
        return out


@torch.inference_mode()
def eval_sums(model: torch.nn.Module, loader, *, autocast=None) -> torch.Tensor:
    """(3,) float64 on the CPU: [correct predictions, summed cross-entropy, samples] over a BatchLoader.

    Sums, so that the parts of a test split evaluated on several ranks add up (all-reduce, then
    `eval_scores`). Correct means argmax == the loader's given labels (for a test split, the true ones).
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.float64)
    loss = torch.zeros((), dtype=torch.float64)
    total = 0
    for x, y, _ in loader:
        with autocast() if autocast is not None else contextlib.nullcontext():
            logits = model(x)
        correct += (logits.argmax(1) == y).sum().double().cpu()
        loss += torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum").double().cpu()
        total += len(y)
    model.train(was_training)
    return torch.stack([correct, loss, torch.tensor(float(total), dtype=torch.float64)])


def eval_scores(sums: torch.Tensor) -> dict[str, float]:
    """{"test_acc", "test_loss"} from `eval_sums` output (possibly summed over ranks); NaN with no samples."""
    correct, loss, total = sums.tolist()
    if not total:
        return {"test_acc": math.nan, "test_loss": math.nan}
    return {"test_acc": correct / total, "test_loss": loss / total}


def evaluate(model: torch.nn.Module, loader, *, autocast=None) -> dict[str, float]:
    """Test accuracy and loss of `model` over a BatchLoader (no augmentation, no shuffling).

    Accuracy is measured against the loader's given labels, which for a test split are the true ones.
    """
    return eval_scores(eval_sums(model, loader, autocast=autocast))

