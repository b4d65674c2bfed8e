"""`casam.learners` drives the SAM family's warm-up (`SAM(warmup_epochs=N, warmup_rho=0)`, `--sam-warmup N`)
through `set_epoch`, on scikit-learn's real digits."""

import copy

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from casam.learners import Precision, SingleLearner
from casam.losses import build_loss
from casam.optim import SAM

CPU = torch.device("cpu")


def digits_batches(batch=128, n_batches=4):
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    idx = torch.arange(len(y))
    return [(x[i : i + batch], y[i : i + batch], idx[i : i + batch]) for i in range(0, batch * n_batches, batch)]


def learner(optimizer_of):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    loss = build_loss("ce", num_samples=1797, num_classes=10)
    return SingleLearner(model, optimizer_of(model), loss, Precision("fp32", CPU))


def sam(model, warmup_epochs=0):
    return SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9, warmup_epochs=warmup_epochs, warmup_rho=0.0)


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def train_epoch(lrn, epoch, batches):
    lrn.set_epoch(epoch)
    for x, y, idx in batches:
        lrn.step(x, y, idx)


def weights(lrn):
    return [p.detach().clone() for p in lrn.model.parameters()]


def test_sam_warmup_takes_plain_sgd_steps_then_perturbs_with_rho():
    batches = digits_batches()
    warm, plain, sam_only = learner(lambda m: sam(m, warmup_epochs=1)), learner(sgd), learner(sam)
    for lrn in (warm, plain, sam_only):
        train_epoch(lrn, 0, batches)
    # epoch 0: radius 0, so every step is the base optimizer's step on the batch mean
    assert all(torch.equal(a, b) for a, b in zip(weights(warm), weights(plain)))
    assert not all(torch.equal(a, b) for a, b in zip(weights(warm), weights(sam_only)))
    for lrn in (warm, plain):
        train_epoch(lrn, 1, batches)
    # epoch 1: the radius is rho again and the two part ways; the groups' rho was never touched
    assert [g["rho"] for g in warm.optimizer.param_groups] == [0.5] and not warm.optimizer.in_warmup
    assert not all(torch.allclose(a, b) for a, b in zip(weights(warm), weights(plain)))


def test_sam_warmup_is_restored_from_a_checkpoint_mid_warmup():
    """A run resumed inside the warm-up takes plain steps until it ends, then perturbs with its rho."""
    batches = digits_batches(n_batches=2)
    lrn = learner(lambda m: sam(m, warmup_epochs=2))
    train_epoch(lrn, 0, batches)
    state = lrn.state_dict()
    assert state["optimizer"]["wrapper"] == {"class": "SAM", "epoch": 0}
    resumed, plain = learner(lambda m: sam(m, warmup_epochs=2)), learner(sgd)
    resumed.load_state_dict(copy.deepcopy(state))  # copies, as a checkpoint file gives: the buffers are live tensors
    plain.model.load_state_dict(state["model"])
    plain.optimizer.load_state_dict(copy.deepcopy({k: v for k, v in state["optimizer"].items() if k != "wrapper"}))
    for one in (resumed, plain):
        train_epoch(one, 1, batches)
    assert all(torch.equal(a, b) for a, b in zip(weights(resumed), weights(plain)))  # epoch 1: still plain steps
    resumed.set_epoch(2)
    assert not resumed.optimizer.in_warmup


def test_checkpoint_of_the_old_warmup_gets_its_radius_back():
    """Checkpoints saved mid-warm-up before the warm-up moved into SAM held rho 0 in the groups and the
    radius as `initial_rho`; loading one restores rho, so a resumed run does not stay plain SGD."""
    lrn = learner(sam)
    state = lrn.state_dict()["optimizer"]
    old = {**state, "param_groups": [{**g, "rho": 0.0, "initial_rho": 0.5} for g in state["param_groups"]]}
    lrn.optimizer.load_state_dict(old)
    assert [(g["rho"], "initial_rho" in g) for g in lrn.optimizer.param_groups] == [(0.5, False)]


def test_bad_warmup_options_are_refused():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="warmup_epochs must be an integer >= 0"):
        SAM(model.parameters(), torch.optim.SGD, lr=0.1, warmup_epochs=-1)
    with pytest.raises(ValueError, match="warmup_rho must be None or a finite number >= 0"):
        SAM(model.parameters(), torch.optim.SGD, lr=0.1, warmup_rho=float("nan"))
