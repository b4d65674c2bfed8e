"""`casam.learners`: SAM's plain-SGD warm-up (`sam_warmup`), on scikit-learn's real digits."""

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


def learner(optimizer_of, sam_warmup=0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    loss = build_loss("ce", num_samples=1797, num_classes=10)
    return SingleLearner(model, optimizer_of(model), loss, Precision("fp32", CPU), sam_warmup=sam_warmup)


def sam(model):
    return SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9)


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
    warm, plain, sam_only = learner(sam, sam_warmup=1), learner(sgd), learner(sam)
    for lrn in (warm, plain, sam_only):
        train_epoch(lrn, 0, batches)
    # epoch 0: radius 0, so every step is the base optimizer's step on the batch mean
    assert all(torch.equal(a, b) for a, b in zip(weights(warm), weights(plain)))
    assert not all(torch.equal(a, b) for a, b in zip(weights(warm), weights(sam_only)))
    for lrn in (warm, plain):
        train_epoch(lrn, 1, batches)
    # epoch 1: the radius is rho again and the two part ways
    assert [g["rho"] for g in warm.optimizer.param_groups] == [0.5]
    assert not all(torch.allclose(a, b) for a, b in zip(weights(warm), weights(plain)))


def test_sam_warmup_is_restored_from_a_checkpoint_mid_warmup():
    """A run resumed inside the warm-up keeps rho 0 until it ends, then gets the radius it was built with."""
    lrn = learner(sam, sam_warmup=2)
    lrn.set_epoch(0)
    state = lrn.state_dict()
    resumed = learner(sam, sam_warmup=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert resumed.optimizer.param_groups[0]["rho"] == 0.0
    resumed.set_epoch(2)
    assert resumed.optimizer.param_groups[0]["rho"] == pytest.approx(0.5)


def test_sam_warmup_zero_leaves_sam_alone():
    lrn = learner(sam)
    lrn.set_epoch(0)
    assert lrn.optimizer.param_groups[0]["rho"] == 0.5 and "initial_rho" not in lrn.optimizer.param_groups[0]
