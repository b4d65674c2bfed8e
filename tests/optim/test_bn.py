import pytest
import torch
import torch.nn.functional as F
from torch import nn

from casam.models import build_model
from casam.optim import SAM, frozen_bn_stats


def stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def assert_same(a, b):
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sam_second_pass_leaves_running_stats_alone():
    gen = torch.Generator().manual_seed(0)
    model = build_model("cnn", num_classes=4, in_channels=1)
    x, y = torch.randn(8, 1, 28, 28, generator=gen), torch.randint(0, 4, (8,), generator=gen)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    before = stats(model)
    opt.first_step(F.cross_entropy(model(x), y))
    after_first = stats(model)
    assert not torch.equal(before["features.1.running_mean"], after_first["features.1.running_mean"])
    with frozen_bn_stats(model):
        loss2 = F.cross_entropy(model(x), y)
    opt.second_step(loss2)
    assert_same(stats(model), after_first)
    assert int(model.features[1].num_batches_tracked) == 1


@pytest.mark.parametrize(
    "module, shape",
    [
        (nn.BatchNorm1d(4), (6, 4)),
        (nn.BatchNorm2d(4, momentum=None), (6, 4, 3, 3)),  # cumulative average
        (nn.BatchNorm3d(4, affine=False), (6, 4, 2, 2, 2)),
        (nn.InstanceNorm2d(4, track_running_stats=True), (6, 4, 3, 3)),
    ],
)
def test_every_norm_kind_is_frozen_bit_exactly(module, shape):
    gen = torch.Generator().manual_seed(1)
    module(torch.randn(shape, generator=gen) + 3)
    before = stats(module)
    with frozen_bn_stats(module):
        out = module(torch.randn(shape, generator=gen) * 5)
        module(torch.full(shape, float("inf")))  # 0 * inf would poison a momentum-0 trick
    assert_same(stats(module), before)
    assert module.track_running_stats and module.running_mean is not None
    # outside the block the module updates its statistics again, and inside it normalised with batch stats
    module(torch.randn(shape, generator=gen))
    assert not torch.equal(module.running_mean, before["running_mean"])
    dims = [0] + list(range(2, len(shape))) if not isinstance(module, nn.InstanceNorm2d) else list(range(2, len(shape)))
    assert out.mean(dim=dims).abs().max() < 1e-5


def test_restored_on_error_nested_and_eval_mode():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Sequential(nn.BatchNorm1d(4)))
    model[2][0].track_running_stats = False  # already off: must stay off
    model[2][0].running_mean = model[2][0].running_var = None
    with pytest.raises(RuntimeError, match="boom"):
        with frozen_bn_stats(model):
            with frozen_bn_stats(model):
                assert model[1].track_running_stats is False
            assert model[1].track_running_stats is False
            raise RuntimeError("boom")
    assert model[1].track_running_stats is True and model[2][0].track_running_stats is False
    model.eval()
    before = stats(model)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    with frozen_bn_stats(model):
        out = model(x)
    assert_same(stats(model), before)
    assert torch.equal(out, model(x))  # eval mode: running statistics used, inside the block as outside


def test_rejects_non_modules():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        with frozen_bn_stats([nn.BatchNorm1d(3)]):
            pass
