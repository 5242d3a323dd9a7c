"""MatrixEstimation and MENet: shapes, layouts, gradients, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from menet.defense import MatrixEstimation, MENet
from menet.estimation.reference import usvt_reference


def test_shape_range_dtype_on_real_images(fashion_test_images):
    x = fashion_test_images[:8]
    for method in ("usvt", "softimpute", "nucnorm"):
        y = MatrixEstimation(method, p=0.5)(x)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert y.min() >= 0 and y.max() <= 1
        if method != "usvt":  # USVT's top-80% rank keeps much mask noise, by design
            # Real reconstructions at p = 0.5: mean squared error of a few 1e-3 (demo table).
            assert (y - x).square().mean() < 0.03


def test_full_rank_usvt_at_p1_is_identity():
    x = torch.rand(4, 3, 8, 10, dtype=torch.float64)
    for layout in ("concat", "separate"):
        me = MatrixEstimation("usvt", p=1.0, layout=layout, rank_fraction=1.0)
        torch.testing.assert_close(me(x), x)


def test_concat_layout_equals_manual_numpy_pipeline():
    x = torch.rand(3, 3, 6, 7, dtype=torch.float64)
    me = MatrixEstimation("usvt", p=0.6, rank=3, generator=torch.Generator().manual_seed(0))
    mask = me.draw_mask(x)
    assert mask.shape == (3, 6, 21)
    got = me.reconstruct(x, mask)
    # Independent pipeline: scale, concatenate channels side by side, estimate, split, clip.
    mats = np.stack([np.concatenate(list(img * 2 - 1), axis=1) for img in x.numpy()])
    est = usvt_reference(mats, mask.numpy(), rank=3)
    expected = np.clip((est + 1) / 2, 0, 1).reshape(3, 6, 3, 7).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)


def test_separate_layout_shares_one_mask_across_channels():
    x = torch.rand(2, 3, 6, 7, dtype=torch.float64)
    me = MatrixEstimation("usvt", p=0.6, layout="separate", rank=2, generator=torch.Generator().manual_seed(1))
    mask = me.draw_mask(x)
    assert mask.shape == (2, 1, 6, 7)
    got = me.reconstruct(x, mask)
    for c in range(3):
        est = usvt_reference(x[:, c].numpy() * 2 - 1, mask[:, 0].numpy(), rank=2)
        np.testing.assert_allclose(got[:, c].numpy(), np.clip((est + 1) / 2, 0, 1), atol=1e-10)


def test_bpda_backward_is_identity():
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    upstream = torch.randn(2, 3, 8, 8)
    for method in ("usvt", "softimpute", "nucnorm"):
        x.grad = None
        MatrixEstimation(method, p=0.5)(x).backward(upstream)
        assert torch.equal(x.grad, upstream)


def test_exact_gradient_passes_gradcheck():
    # Values near 0.5 keep the rescaled estimate inside the clip range.
    x = (0.5 + 0.1 * torch.rand(1, 2, 4, 5, dtype=torch.float64)).requires_grad_(True)
    me = MatrixEstimation("usvt", p=0.7, gradient="exact", rank=2, generator=torch.Generator().manual_seed(3))
    mask = me.draw_mask(x)
    assert torch.autograd.gradcheck(lambda inp: me.reconstruct(inp, mask), (x,))
    # ...and it is not the identity that BPDA would give.
    y = me.reconstruct(x, mask)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert not torch.allclose(grad, torch.ones_like(grad))


def test_exact_gradient_refused_for_iterative_methods():
    for method in ("softimpute", "nucnorm"):
        with pytest.raises(ValueError, match="bpda"):
            MatrixEstimation(method, gradient="exact")


def test_deterministic_under_seeded_generator():
    x = torch.rand(4, 1, 10, 10)
    outs = [MatrixEstimation("nucnorm", p=0.5, generator=torch.Generator().manual_seed(7))(x) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    other = MatrixEstimation("nucnorm", p=0.5, generator=torch.Generator().manual_seed(8))(x)
    assert not torch.equal(outs[0], other)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "pca"}, ValueError, "usvt, softimpute, nucnorm"),
        ({"p": 0.0}, ValueError, r"\(0, 1\]"),
        ({"layout": "grid"}, ValueError, "concat, separate"),
        ({"gradient": "straight"}, ValueError, "bpda, exact"),
        ({"method": "usvt", "shrinkage": 1.0}, TypeError, "shrinkage"),
    ],
)
def test_bad_configuration(kwargs, error, match):
    with pytest.raises(error, match=match):
        MatrixEstimation(**kwargs)


def test_bad_images():
    me = MatrixEstimation("usvt")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        me(torch.rand(2, 3, 8, 8) * 2 - 1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        me(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="float"):
        me(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="mask must have shape"):
        me.reconstruct(torch.rand(1, 3, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))


def test_menet_composes_and_passes_gradients():
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10), nn.Tanh(), nn.Linear(10, 10))
    model = MENet(classifier, MatrixEstimation("usvt", p=0.8, generator=torch.Generator().manual_seed(4)))
    x = torch.rand(5, 3, 8, 8, requires_grad=True)
    logits = model(x)
    assert logits.shape == (5, 10)
    logits.sum().backward()
    # BPDA: the input gradient is the classifier's gradient at the reconstruction (same mask).
    me = MatrixEstimation("usvt", p=0.8, generator=torch.Generator().manual_seed(4))
    recon = me.reconstruct(x.detach(), me.draw_mask(x)).requires_grad_(True)
    torch.testing.assert_close(logits, classifier(recon))
    (expected,) = torch.autograd.grad(classifier(recon).sum(), recon)
    torch.testing.assert_close(x.grad, expected)
    assert "method='usvt'" in repr(model)


def test_usvt_rule_is_named_in_the_repr_and_options():
    original = MatrixEstimation("usvt", p=0.5)
    assert original.options["rank_fraction"] == 0.8 and original.options["rank"] is None
    assert "top 80% of singular values (the original ME-Net code's svdprob)" in repr(original)
    chatterjee = MatrixEstimation("usvt", p=0.5, rank_fraction=None)
    assert chatterjee.options["rank_fraction"] is None and "Chatterjee's threshold" in repr(chatterjee)
    counted = MatrixEstimation("usvt", p=0.5, rank=3)  # naming rank drops the 80% default
    assert counted.options["rank_fraction"] is None and "top 3 singular values" in repr(counted)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    mask = counted.draw_mask(x)
    expected = usvt_reference(x[:, 0].numpy() * 2 - 1, mask.numpy(), rank=3)
    np.testing.assert_allclose(counted.reconstruct(x, mask)[:, 0].numpy(), np.clip((expected + 1) / 2, 0, 1), atol=1e-10)
    with pytest.raises(TypeError, match="rank_fraction=1.0"):
        MatrixEstimation("usvt", rank=1.0)(x)
