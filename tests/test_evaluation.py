"""Clean accuracy counting against a per-image loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from menet.evaluation import count_correct


def test_count_correct_equals_a_per_image_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()
    images = torch.randint(0, 256, (23, 3, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 5, (23,))
    expected = sum(
        int(model(images[i : i + 1].float() / 255).argmax(1).item() == labels[i].item()) for i in range(23)
    )
    for batch_size in (1, 7, 23, 100):
        assert count_correct(model, images, labels, batch_size=batch_size) == expected
    assert count_correct(model, images[:0], labels[:0]) == 0


def test_count_correct_rejects_bad_input():
    model = nn.Flatten()
    with pytest.raises(ValueError, match="differ in length"):
        count_correct(model, torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size"):
        count_correct(model, torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), batch_size=0)
    with pytest.raises(TypeError, match="uint8"):
        count_correct(model, torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.long))
