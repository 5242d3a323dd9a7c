"""Batched augmentation and batching: label alignment, reproducibility, correctness."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from menet.data import augment, iterate_batches, random_crop, to_float


def test_random_crop_matches_per_image_slicing():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    cropped = random_crop(images, 2, gen)
    # Recover the offsets from the same generator and slice each padded image by hand.
    gen = torch.Generator().manual_seed(0)
    dy = torch.randint(0, 5, (6,), generator=gen)
    dx = torch.randint(0, 5, (6,), generator=gen)
    padded = F.pad(images, (2, 2, 2, 2))
    for i in range(6):
        assert torch.equal(cropped[i], padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8])


def test_flip_and_crop_keep_labels_aligned_and_are_reproducible():
    # Each image is a constant equal to its label: any misalignment would show.
    labels = torch.arange(10)
    images = labels.view(10, 1, 1, 1).expand(10, 3, 8, 8).to(torch.uint8).contiguous() + 1
    batches = list(iterate_batches(images, labels, 4, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    for x, y in batches:
        out = augment(x, crop_padding=2, flip=True, generator=torch.Generator().manual_seed(2))
        assert out.shape == x.shape
        nonzero = out.flatten(1).max(1).values  # padding adds zeros, content stays the label + 1
        assert torch.equal(nonzero.long(), y + 1)
    a = augment(images, crop_padding=3, flip=True, generator=torch.Generator().manual_seed(5))
    b = augment(images, crop_padding=3, flip=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_flip_mirrors_about_half():
    images = torch.arange(4, dtype=torch.uint8).view(1, 1, 1, 4).expand(1000, 1, 1, 4)
    out = augment(images, flip=True, generator=torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 3).float().mean()
    assert 0.4 < flipped < 0.6
    assert torch.equal(out[out[:, 0, 0, 0] == 3][0, 0, 0], torch.tensor([3, 2, 1, 0], dtype=torch.uint8))


def test_shuffle_is_a_permutation_and_seeded():
    labels = torch.arange(25)
    images = torch.zeros(25, 1, 2, 2, dtype=torch.uint8)
    seen = torch.cat([y for _, y in iterate_batches(images, labels, 7, shuffle=True, generator=torch.Generator().manual_seed(3))])
    assert sorted(seen.tolist()) == list(range(25)) and seen.tolist() != list(range(25))
    again = torch.cat([y for _, y in iterate_batches(images, labels, 7, shuffle=True, generator=torch.Generator().manual_seed(3))])
    assert torch.equal(seen, again)
    dropped = list(iterate_batches(images, labels, 7, drop_last=True))
    assert [len(y) for _, y in dropped] == [7, 7, 7]


def test_to_float():
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    assert torch.equal(to_float(x), torch.tensor([[[[0.0, 1.0]]]]))
