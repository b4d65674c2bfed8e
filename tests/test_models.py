import pytest
import torch

from casam.models import MODELS, build_model


@pytest.mark.parametrize(
    "name, channels, size, params",
    [("mlp", 1, 28, 269_322), ("cnn", 1, 28, 421_738), ("preact_resnet18", 3, 32, 11_172_170), ("resnet34", 3, 32, 21_282_122)],
)
def test_shapes_and_sizes(name, channels, size, params):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=channels, image_size=(size, size))
    assert sum(p.numel() for p in model.parameters()) == params
    out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_cnn_learns_a_batch():
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=4, in_channels=1)
    x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert (model(x).argmax(1) == y).float().mean() == 1.0


def test_bad_names_and_classes():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg", num_classes=10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("cnn", num_classes=1)
    assert set(MODELS) == {"mlp", "cnn", "preact_resnet18", "resnet34"}
