"""Which iterate PGD keeps on a randomised model: ranked by one pass's loss, by an averaged loss
(``rank_samples``), or the last one (``keep_best=False``); see benchmarks/kept_iterate.py."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from menet.attacks import PGD
from menet.attacks.pgd import pgd_loop
from menet.defense import MatrixEstimation

START, STEP, STEPS, PEAK = 0.3, 0.05, 8, 0.5  # iterates 0.30, 0.35, ..., 0.70; the expected loss peaks at 0.50


class _StraightThrough(torch.autograd.Function):
    """Forward: the peaked margin -200 (x - PEAK)^2; backward: identity (a BPDA-like gradient that
    keeps pushing x up, past the peak)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return -200 * (x - PEAK) ** 2

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class NoisyPeak(nn.Module):
    """Two classes, label 0: the wrong logit is the peaked margin of the image's mean plus N(0, 1)
    noise drawn afresh in every forward pass (per example), so one pass's loss ranks iterates
    0.05 apart (margins 0.5 apart) mostly by noise. Holds an (unused) MatrixEstimation so that
    PGD treats it as randomised, as it does ME-Net."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.marker = MatrixEstimation("usvt", p=0.5)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: Tensor) -> Tensor:
        margin = _StraightThrough.apply(x.mean((1, 2, 3)))
        noise = torch.randn(len(x), generator=self.generator)
        return torch.stack([torch.zeros_like(margin), margin + noise], 1)


def _images(n: int = 64) -> tuple[Tensor, Tensor]:
    return torch.full((n, 1, 2, 2), START), torch.zeros(n, dtype=torch.int64)


def _kept(attack: PGD, seed: int = 0) -> Tensor:
    """The mean pixel of each kept iterate (all its pixels are equal)."""
    x, y = _images()
    return attack(NoisyPeak(seed), x, y).mean((1, 2, 3))


SETTINGS = dict(eps=0.4, step_size=STEP, steps=STEPS, random_start=False)


def test_averaged_ranking_keeps_the_highest_expected_loss_where_one_pass_is_fooled():
    one_pass = _kept(PGD(**SETTINGS, keep_best=True, rank_samples=1))
    averaged = _kept(PGD(**SETTINGS, keep_best=True, rank_samples=256))
    torch.testing.assert_close(averaged, torch.full_like(averaged, PEAK), rtol=0, atol=1e-4)
    assert ((one_pass - PEAK).abs() > 1e-3).float().mean() > 0.3  # the case is one that one pass gets wrong


def test_eot_samples_count_towards_the_ranking_passes():
    """With eot 256 the gradient's passes alone rank the iterates (rank_samples 1 adds none)."""
    averaged = _kept(PGD(**SETTINGS, keep_best=True, eot=256, rank_samples=1))
    torch.testing.assert_close(averaged, torch.full_like(averaged, PEAK), rtol=0, atol=1e-4)


def test_pgd_loop_returns_averaged_ranking_losses():
    x, y = _images(8)
    _, loss, _ = pgd_loop(NoisyPeak(), x, y, eps=0.4, step_size=STEP, steps=STEPS, start=x, by_loss=True,
                          rank_samples=4096)
    expected = torch.nn.functional.softplus(torch.randn(200_000, generator=torch.Generator().manual_seed(1))).mean()
    torch.testing.assert_close(loss, torch.full_like(loss, float(expected)), rtol=0, atol=0.05)  # margin 0 at the peak


def test_last_iterate_mode_returns_the_last_iterate():
    last = _kept(PGD(**SETTINGS, keep_best=False, rank_samples=16))
    torch.testing.assert_close(last, torch.full_like(last, START + STEPS * STEP), rtol=0, atol=1e-4)


def test_default_keeps_the_last_iterate_on_a_randomised_model():
    """rank_samples 0 (the default; benchmarks/kept_iterate.py): no ranking on a randomised model."""
    default = _kept(PGD(**SETTINGS))
    torch.testing.assert_close(default, torch.full_like(default, START + STEPS * STEP), rtol=0, atol=1e-4)


def test_kept_iterate_choice_is_recorded_and_checked():
    settings = PGD(rank_samples=4).settings()
    assert settings["rank_samples"] == 4 and settings["keep_best"] is True
    assert PGD().settings()["rank_samples"] == 0
    assert PGD(keep_best=False).settings()["keep_best"] is False
    with pytest.raises(ValueError, match="rank_samples"):
        PGD(rank_samples=-1)
    with pytest.raises(TypeError, match="rank_samples"):
        PGD(rank_samples=2.0)
