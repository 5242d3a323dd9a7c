"""Time per training step: ME-Net (fresh masks) vs vanilla, ME-Net-adv vs Madry, side by side.

Prints `name: value (ratio vs reference)` lines, median of 3 repeats of a few steps each, torch
threads = core count. LeNet on Fashion-MNIST batches, ResNet-18 on CIFAR-shaped random uint8
batches (CIFAR-10 is not shipped). Usage: python benchmarks/training.py [--batch 128] [--steps 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from menet.config import config_from_dict
from menet.data import load_dataset
from menet.models import build_model_for_dataset
from menet.training import _training_inputs, build_defense


def step_time(settings: dict, images: torch.Tensor, labels: torch.Tensor, steps: int, repeats: int) -> float:
    config = config_from_dict({"name": "bench", **settings})
    torch.manual_seed(0)
    model = build_model_for_dataset(config.model, config.dataset)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    defense = build_defense(config) if config.mode.startswith("menet") else None
    p = torch.full((len(labels),), config.defense.inference_p())
    gen = torch.Generator().manual_seed(0)
    if defense is not None:
        defense.generator = gen

    def run() -> None:
        for _ in range(steps):
            x = _training_inputs(config, model, defense, images, labels, p, gen, torch.device("cpu"))
            loss = F.cross_entropy(model(x), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    fashion = load_dataset("fashion-mnist", "train")
    cifar_images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    setups = {
        "lenet fashion-mnist": ({"dataset": "fashion-mnist", "model": "lenet"}, fashion.images[: args.batch], fashion.labels[: args.batch],
                                {"eps": 0.3, "step": 0.01, "steps": 40}),
        "resnet18 cifar-shaped": ({"dataset": "cifar10", "model": "resnet18"}, cifar_images, torch.arange(args.batch) % 10,
                                  {"eps": 8 / 255, "step": 2 / 255, "steps": 7}),
    }
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, CPU")
    for name, (base, images, labels, attack) in setups.items():
        def t(**kw):
            return step_time({**base, **kw}, images, labels, args.steps, args.repeats)

        vanilla = t(mode="vanilla")
        print(f"vanilla step {name}: {vanilla:.3f} s (1.00x)", flush=True)
        for method in ("usvt", "nucnorm"):
            menet = t(mode="menet", defense={"method": method})
            print(f"menet-{method} step {name}: {menet:.3f} s ({menet / vanilla:.2f}x vs vanilla)", flush=True)
        madry = t(mode="madry", attack=attack)
        print(f"madry step {name}: {madry:.3f} s (1.00x)", flush=True)
        adv = t(mode="menet-adv", attack=attack, defense={"method": "usvt", "p_start": 0.5, "p_end": 0.5, "n_masks": 1})
        print(f"menet-adv-usvt step {name}: {adv:.3f} s ({adv / madry:.2f}x vs madry)", flush=True)


if __name__ == "__main__":
    main()
