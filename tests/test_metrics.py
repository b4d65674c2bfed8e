import math

import torch

from casam.metrics import EpochMeter, memorization_rate, selection_scores


def test_selection_scores_by_hand():
    selected = torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool)
    is_noisy = torch.tensor([0, 0, 1, 0, 1, 1], dtype=torch.bool)
    s = selection_scores(selected, is_noisy)
    assert s["precision"] == 2 / 4 and s["recall"] == 2 / 3 and s["fraction"] == 4 / 6
    assert math.isclose(s["f1"], 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert math.isnan(selection_scores(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool))["precision"])


def test_memorization_counts_only_mislabelled_predicted_as_given():
    pred = torch.tensor([0, 1, 2, 3])
    given = torch.tensor([0, 1, 0, 3])
    noisy = torch.tensor([0, 1, 1, 1], dtype=torch.bool)
    assert memorization_rate(pred, given, noisy) == 2 / 3
    assert math.isnan(memorization_rate(pred, given, torch.zeros(4, dtype=torch.bool)))


def test_epoch_meter_over_two_batches_equals_whole():
    torch.manual_seed(0)
    logits, labels = torch.randn(10, 3), torch.randint(0, 3, (10,))
    losses = torch.rand(10)
    noisy = torch.rand(10) < 0.4
    selected = torch.rand(10) < 0.6
    meter = EpochMeter()
    meter.update(logits[:6], losses[:6], labels[:6], noisy[:6], selected[:6])
    meter.update(logits[6:], losses[6:], labels[6:], noisy[6:], selected[6:])
    out = meter.compute()
    whole = selection_scores(selected, noisy)
    assert math.isclose(out["sel_precision"], whole["precision"]) and math.isclose(out["sel_recall"], whole["recall"])
    assert math.isclose(out["memorization"], memorization_rate(logits.argmax(1), labels, noisy))
    assert math.isclose(out["train_loss"], losses.mean().item(), rel_tol=1e-6)
    assert math.isclose(out["selected_fraction"], selected.double().mean().item())


def test_epoch_meter_without_truth_or_selection():
    meter = EpochMeter()
    meter.update(torch.randn(4, 3), torch.rand(4), torch.tensor([0, 1, 2, 0]))
    out = meter.compute()
    assert set(out) == {"train_loss", "train_acc_given"}


def test_epoch_meter_per_class_selection_scores():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    noisy = torch.tensor([0, 1, 0, 0, 0, 1, 1, 1], dtype=torch.bool)
    selected = torch.tensor([1, 1, 0, 1, 0, 0, 1, 0], dtype=torch.bool)
    meter = EpochMeter(num_classes=3)
    meter.update(torch.randn(8, 3), torch.rand(8), labels, noisy, selected)
    out = meter.compute()
    # class 0: selected {0, 1}, clean among them {0}; clean {0, 2} -> P 1/2, R 1/2
    # class 1: selected {3}, clean; clean {3, 4} -> P 1, R 1/2; class 2: selected {6}, noisy; no clean -> P 0, R NaN
    assert out["sel_precision_by_class"] == [0.5, 1.0, 0.0]
    assert out["sel_recall_by_class"][:2] == [0.5, 0.5] and math.isnan(out["sel_recall_by_class"][2])
