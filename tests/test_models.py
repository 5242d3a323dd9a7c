"""Every registered model: shape, finite outputs, input gradients, features, parameter count."""

from __future__ import annotations

import pytest
import torch

from menet.models import build_model, model_names

# Published parameter counts (3-channel CIFAR ResNet-18 / WRN with 10 classes, LeNet on
# 1 x 28 x 28 with 10 classes, DenseNet-121 with 200 classes).
PUBLISHED = {
    "lenet": 3_274_634,
    "resnet18": 11_173_962,
    "wrn28_10": 36_479_194,
    "wide_resnet": 36_479_194,  # defaults to WRN-28-10
    "wrn34_10": 46_160_474,
    "densenet121": 7_158_856,
}
SETTINGS = {
    "lenet": dict(num_classes=10, in_channels=1, shape=(2, 1, 28, 28)),
    "densenet121": dict(num_classes=200, in_channels=3, shape=(2, 3, 64, 64)),
}
DEFAULT = dict(num_classes=10, in_channels=3, shape=(2, 3, 32, 32))


def test_every_registered_model_has_a_published_count():
    assert sorted(PUBLISHED) == model_names()


@pytest.mark.parametrize("name", model_names())
def test_parameter_count(name):
    s = SETTINGS.get(name, DEFAULT)
    model = build_model(name, s["num_classes"], s["in_channels"])
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]


@pytest.mark.parametrize("name", model_names())
def test_forward_features_and_input_gradient(name):
    s = SETTINGS.get(name, DEFAULT)
    torch.manual_seed(0)
    model = build_model(name, s["num_classes"], s["in_channels"]).eval()
    x = torch.rand(s["shape"], requires_grad=True)
    logits = model(x)
    assert logits.shape == (s["shape"][0], s["num_classes"]) and torch.isfinite(logits).all()
    features = model.features(x)
    assert features.shape == (s["shape"][0], model.head.in_features)
    torch.testing.assert_close(model.head(features), logits)
    logits[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # The input gradient is the model's own: one directional derivative by central differences,
    # in float64 with a step small enough not to cross the ReLU / max-pool kinks.
    model, x64 = model.double(), x.detach().double().requires_grad_(True)
    model(x64)[:, 0].sum().backward()
    direction = torch.randn_like(x64)
    h = 1e-8  # ResNets have ~1e5 ReLUs per image: a larger step crosses some kink
    with torch.no_grad():
        numeric = (model(x64 + h * direction)[:, 0].sum() - model(x64 - h * direction)[:, 0].sum()) / (2 * h)
    analytic = (x64.grad * direction).sum()
    assert torch.isclose(analytic, numeric, rtol=1e-3, atol=1e-7), (analytic, numeric)


def test_small_wide_resnet_runs_and_validates_depth():
    model = build_model("wide_resnet", depth=10, widen_factor=1).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        build_model("wide_resnet", depth=12)


def test_normalisation_is_the_first_layer():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    model = build_model("resnet18", mean=mean, std=std).eval()
    x = torch.rand(2, 3, 32, 32)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalize(x), expected)
    assert not any("normalize" in n for n, _ in model.named_parameters())  # buffers, not weights


def test_unknown_model_and_bad_arguments():
    with pytest.raises(ValueError, match="densenet121, lenet, resnet18"):
        build_model("vgg16")
    with pytest.raises(ValueError, match="one per channel"):
        build_model("resnet18", mean=(0.5,), std=(0.5,))
    with pytest.raises(TypeError):
        build_model("resnet18", widen_factor=3)


def test_build_for_dataset_takes_classes_channels_and_normalisation():
    from menet.data import get_dataset_spec
    from menet.models import build_model_for_dataset

    model = build_model_for_dataset("resnet18", "cifar10")
    spec = get_dataset_spec("cifar10")
    assert model.normalize.mean.flatten().tolist() == pytest.approx(spec.mean)
    assert model.head.out_features == 10
    lenet = build_model_for_dataset("lenet", "fashion-mnist")
    assert lenet(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert build_model_for_dataset("densenet121", "tiny-imagenet").head.out_features == 200
