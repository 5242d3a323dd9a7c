"""SPSA (Uesato et al., 2018): the estimator against autograd and exact differences, the Adam
loop against torch.optim.Adam, the attack against torchattacks' SPSA on a tiny trained model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from menet.attacks import SPSA, build_attack
from menet.attacks.base import margin_loss
from menet.attacks.spsa import spsa_gradient, spsa_loop
from menet.data import load_dataset

torchattacks = pytest.importorskip("torchattacks")


@pytest.fixture(scope="module")
def tiny_model_and_data() -> tuple[nn.Module, Tensor, Tensor]:
    """An MLP (784-32-10) trained on 500 Fashion-MNIST training images, and 100 others.

    Returns (model in eval mode, images (100, 1, 28, 28) in [0, 1], labels (100,))."""
    data = load_dataset("fashion-mnist", "train", verify=False)  # checksums are tested elsewhere
    images = data.images[:600].to(torch.float32) / 255.0
    labels = data.labels[:600]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(150):
            optimiser.zero_grad()
            F.cross_entropy(model(images[:500]), labels[:500]).backward()
            optimiser.step()
    return model.eval(), images[500:], labels[500:]


def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


def test_spsa_robust_accuracy_matches_torchattacks(tiny_model_and_data):
    """Same settings as torchattacks.SPSA (from advertorch): zero start, no early stop, 20 Adam
    steps of lr 0.01, delta 0.01, 32 antithetic directions (our samples=64 evaluations).

    Both draw random directions, so the robust accuracies are compared within 0.04 (4 of 100
    images). Measured over seeds 0-5 at eps 0.05 (clean accuracy 0.77): torchattacks 0.46-0.47,
    ours 0.45-0.46 (ours keeps each example's best iterate, so it can only be a little
    stronger). A sign error, a wrong step or a broken projection moves it by far more."""
    model, images, labels = tiny_model_and_data
    eps, steps, pairs = 0.05, 20, 32
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = torchattacks.SPSA(model, eps=eps, delta=0.01, lr=0.01, nb_iter=steps, nb_sample=pairs,
                                      max_batch_size=pairs)(images, labels)
    ours = SPSA(eps=eps, steps=steps, samples=2 * pairs, lr=0.01, delta=0.01, random_start=False,
                early_stop=False)(model, images, labels, generator=torch.Generator().manual_seed(0))
    clean = accuracy(model, images, labels)
    reference_accuracy = accuracy(model, reference, labels)
    ours_accuracy = accuracy(model, ours, labels)
    assert clean - reference_accuracy > 0.2  # the attack bites, so the comparison means something
    assert abs(ours_accuracy - reference_accuracy) <= 0.04, (clean, reference_accuracy, ours_accuracy)


def test_spsa_stays_in_the_ball_and_the_box(tiny_model_and_data):
    model, images, labels = tiny_model_and_data
    eps = 8 / 255
    adv = SPSA(eps=eps, steps=10, samples=64)(model, images[:50], labels[:50], generator=torch.Generator().manual_seed(1))
    assert adv.shape == images[:50].shape and adv.dtype == images.dtype
    assert (adv - images[:50]).abs().max().item() <= eps + 1e-6
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0


def test_spsa_large_eps_breaks_the_tiny_model(tiny_model_and_data):
    """eps 0.2 on Fashion-MNIST: measured robust accuracy 0.02-0.03 (seeds 2, 3), clean 0.77.
    lr 0.02 lets 20 steps cross the ball (at lr 0.01 Adam's ~lr-sized steps barely reach eps)."""
    model, images, labels = tiny_model_and_data
    adv = SPSA(eps=0.2, steps=20, samples=64, lr=0.02)(model, images, labels, generator=torch.Generator().manual_seed(2))
    clean, robust = accuracy(model, images, labels), accuracy(model, adv, labels)
    assert clean >= 0.7
    assert robust <= 0.1, (clean, robust)


def test_spsa_is_repeatable_with_a_seed(tiny_model_and_data):
    model, images, labels = tiny_model_and_data
    attack = SPSA(eps=8 / 255, steps=5, samples=32)
    first = attack(model, images[:20], labels[:20], generator=torch.Generator().manual_seed(3))
    again = attack(model, images[:20], labels[:20], generator=torch.Generator().manual_seed(3))
    other = attack(model, images[:20], labels[:20], generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_spsa_gradient_agrees_with_autograd_on_a_smooth_model():
    """With P directions in d dimensions the estimate's cosine with the gradient is about
    1 / sqrt(1 + d / P): 0.992 for d = 64, P = 4096; its norm is about sqrt(1 + d / P) times
    the gradient's. A missing 1 / (2 delta) or a mean over evaluations instead of pairs
    fails the norm check."""
    generator = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 5)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    x = 0.25 + 0.5 * torch.rand((4, 1, 8, 8), generator=generator)  # away from 0 and 1: no clipping
    labels = torch.tensor([0, 1, 2, 3])
    xg = x.clone().requires_grad_(True)
    (true,) = torch.autograd.grad(margin_loss(model(xg), labels).sum(), xg)
    estimate = spsa_gradient(model, x, labels, samples=8192, delta=0.01, max_batch=8192, generator=generator)
    cosine = F.cosine_similarity(estimate.flatten(1), true.flatten(1), dim=1)
    ratio = estimate.flatten(1).norm(dim=1) / true.flatten(1).norm(dim=1)
    assert (cosine > 0.97).all(), cosine
    assert ((ratio > 0.95) & (ratio < 1.1)).all(), ratio


class OnePixelModel(nn.Module):
    """Three smooth logits of a single pixel (a fixed non-linear function, no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        p = x.flatten(1)[:, 0]
        return torch.stack([torch.sin(6 * p), torch.cos(4 * p), 2 * p * p - 0.5], dim=1)


def central_slope(model: nn.Module, x: Tensor, labels: Tensor, delta: float) -> Tensor:
    """(L(clip(x + delta)) - L(clip(x - delta))) / (2 delta) for one-pixel images: what SPSA
    gives exactly there, since v = +-1 and v * v = 1."""
    plus = margin_loss(model((x + delta).clamp(0, 1)), labels)
    minus = margin_loss(model((x - delta).clamp(0, 1)), labels)
    return ((plus - minus) / (2 * delta)).view(-1, 1, 1, 1)


def test_spsa_gradient_is_the_central_difference_on_one_pixel_images():
    """Exact check of the bookkeeping: each example gets its own differences, in one pass or
    split over many (max_batch=2 forces blocks of one example and one direction per pass)."""
    model = OnePixelModel()
    x = torch.tensor([0.0, 0.005, 0.3, 0.5, 0.77, 1.0]).view(-1, 1, 1, 1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    expected = central_slope(model, x, labels, 0.01)
    for max_batch in (2, 6, 4096):
        estimate = spsa_gradient(model, x, labels, samples=10, delta=0.01, max_batch=max_batch,
                                 generator=torch.Generator().manual_seed(6))
        torch.testing.assert_close(estimate, expected, rtol=1e-5, atol=1e-6)


def test_spsa_loop_matches_torch_adam_on_one_pixel_images():
    """On one-pixel images the estimate is deterministic, so the whole attack can be replayed
    with torch.optim.Adam (maximize, epsilon 1e-9 / delta: cleverhans' update), a clamp, and
    a plain record of the best point (misclassified first, then highest margin loss)."""
    model = OnePixelModel()
    images = torch.tensor([0.02, 0.3, 0.5, 0.62, 0.9, 0.98]).view(-1, 1, 1, 1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    eps, lr, delta, steps = 0.15, 0.01, 0.01, 40
    best, best_loss, best_fooled = spsa_loop(model, images, labels, eps=eps, start=images, steps=steps,
                                             samples=4, lr=lr, delta=delta, early_stop=False)

    adv = images.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([adv], lr=lr, eps=1e-9 / delta, maximize=True)
    ref_best, ref_key = images.clone(), [(False, float("-inf"))] * len(images)
    for step in range(steps + 1):
        with torch.no_grad():
            logits = model(adv)
            loss, fooled = margin_loss(logits, labels), logits.argmax(1) != labels
            for i in range(len(images)):
                key = (bool(fooled[i]), float(loss[i]))
                if key > ref_key[i]:
                    ref_key[i], ref_best[i] = key, adv[i].clone()
        if step == steps:
            break
        adv.grad = central_slope(model, adv.detach(), labels, delta)
        optimiser.step()
        with torch.no_grad():
            adv.copy_(torch.min(torch.max(adv, images - eps), images + eps).clamp(0, 1))
    torch.testing.assert_close(best, ref_best, rtol=0, atol=1e-6)
    assert best_fooled.tolist() == [k[0] for k in ref_key]
    assert best_fooled.any() and not best_fooled.all()  # both rules of the best-point order are used
    torch.testing.assert_close(best_loss, torch.tensor([k[1] for k in ref_key]), rtol=0, atol=1e-6)


class CountingModel(nn.Module):
    """Wraps a model and counts the inputs it is asked to classify."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.inputs = model, 0

    def forward(self, x: Tensor) -> Tensor:
        self.inputs += len(x)
        return self.model(x)


def test_spsa_early_stop_returns_misclassified_starts_without_queries(tiny_model_and_data):
    model, images, labels = tiny_model_and_data
    with torch.no_grad():
        wrong = (model(images[:10]).argmax(1) + 1) % 10  # labels the model already gets wrong
    counting = CountingModel(model)
    adv = SPSA(steps=50, samples=64, random_start=False)(counting, images[:10], wrong)
    assert torch.equal(adv, images[:10])
    assert counting.inputs == 10  # one scoring pass, no SPSA probes


def test_spsa_settings_are_validated_and_registered():
    assert isinstance(build_attack("spsa", steps=3, samples=8), SPSA)
    assert SPSA().settings() == {"attack": "spsa", "eps": 8 / 255, "steps": 1000, "samples": 2048, "lr": 0.01,
                                 "delta": 0.01, "random_start": True, "early_stop": True, "max_batch": 4096}
    with pytest.raises(ValueError, match="even"):
        SPSA(samples=7)
    with pytest.raises(ValueError):
        SPSA(max_batch=1)
    with pytest.raises(ValueError):
        SPSA(delta=0.0)
    with pytest.raises(TypeError):
        SPSA(early_stop=1)


class _LuckyEveryThirdPass(nn.Module):
    """Predicts class 0 (right, for label 0) except on every third forward pass, when it
    predicts class 1: a randomised model whose single pass is fooled by luck."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        logits = torch.zeros(len(x), 10)
        logits[:, 1 if self.calls % 3 == 1 else 0] = 1.0
        return logits


def test_scoring_over_several_passes_is_not_fooled_by_one_lucky_pass():
    from menet.attacks.spsa import _score

    x, y = torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)
    _, fooled_once = _score(_LuckyEveryThirdPass(), x, y, max_batch=64)
    _, fooled_in_all = _score(_LuckyEveryThirdPass(), x, y, max_batch=64, passes=3)
    assert fooled_once.all() and not fooled_in_all.any()


def test_spsa_scores_a_defended_model_over_three_passes(monkeypatch):
    import menet.attacks.spsa as spsa_module
    from menet.defense import MatrixEstimation, MENet

    seen = []
    real_loop = spsa_module.spsa_loop
    monkeypatch.setattr(spsa_module, "spsa_loop", lambda *a, **k: seen.append(k["score_passes"]) or real_loop(*a, **k))
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    x, y = torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long)
    attack = SPSA(eps=0.1, steps=1, samples=2)
    attack(net, x, y, generator=torch.Generator().manual_seed(0))
    attack(MENet(net, MatrixEstimation("usvt", p=0.5)), x, y, generator=torch.Generator().manual_seed(0))
    assert seen == [1, 3]
