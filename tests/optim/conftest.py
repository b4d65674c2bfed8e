"""Shared tiny problems for the optimizer tests: float64 so that formula checks can be tight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class TinyProblem:
    """A 5-6-3 tanh MLP in float64 and a fixed batch of 12 samples (seeded, no global RNG)."""

    def __init__(self, *, batch: int = 12, seed: int = 0, bn: bool = False):
        self.seed, self.bn = seed, bn
        gen = torch.Generator().manual_seed(seed + 1)
        self.x = torch.randn(batch, 5, generator=gen, dtype=torch.float64)
        self.y = torch.randint(0, 3, (batch,), generator=gen)
        self.idx = torch.arange(batch)

    def model(self) -> nn.Module:
        gen = torch.Generator().manual_seed(self.seed)
        layers = [nn.Linear(5, 6)] + ([nn.BatchNorm1d(6)] if self.bn else []) + [nn.Tanh(), nn.Linear(6, 3)]
        net = nn.Sequential(*layers).double()
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.7)
        return net

    def losses(self, model: nn.Module, x=None, y=None) -> torch.Tensor:
        x = self.x if x is None else x
        y = self.y if y is None else y
        return F.cross_entropy(model(x), y, reduction="none")

    # -------- functional reference pieces (no optimizer involved)
    @staticmethod
    def weights(model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.named_parameters()}

    def grad(self, model: nn.Module, w: dict[str, torch.Tensor], *, sample_weights=None, subset=None) -> dict[str, torch.Tensor]:
        """Gradient at weights w of mean_i(a_i l_i) over the batch (or the mean over `subset`)."""
        w = {k: v.clone().requires_grad_(True) for k, v in w.items()}
        losses = F.cross_entropy(functional_call(model, w, (self.x,)), self.y, reduction="none")
        if subset is not None:
            loss = losses[subset].mean()
        elif sample_weights is not None:
            loss = (sample_weights * losses).sum() / len(losses)
        else:
            loss = losses.mean()
        return dict(zip(w, torch.autograd.grad(loss, list(w.values()))))


@pytest.fixture
def tiny() -> TinyProblem:
    return TinyProblem()


def params_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.fixture
def same_params():
    return params_equal


@pytest.fixture
def make_tiny():
    return TinyProblem


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (1,797 real images, 10 classes): features standardised, float32."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, torch.tensor(data.target, dtype=torch.int64)
