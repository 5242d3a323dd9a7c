"""Time per training step: ME-Net (fresh masks) vs vanilla, ME-Net-adv vs Madry, side by side;
and the time to build the cached 10-mask CIFAR-10 training set, ours vs per-image cvxpy.

Prints `name: value (ratio vs reference)` lines, median of 3 repeats of a few steps each, torch
threads = core count. LeNet on Fashion-MNIST batches, ResNet-18 on CIFAR-shaped images built
from Fashion-MNIST (CIFAR-10 is not shipped: padded to 32 x 32, three shifted/scaled copies as
channels). Cache build times are projected to 50,000 images from a sample.
Usage: python benchmarks/training.py [--batch 128] [--steps 2] [--cache-sample 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from common import cifar_like  # benchmarks/common.py (the script's folder is on sys.path)

from menet.config import config_from_dict
from menet.data import load_dataset
from menet.estimation.layout import images_to_matrices
from menet.estimation.reference import nuclear_norm_reference
from menet.masking import random_mask
from menet.models import build_model_for_dataset
from menet.recon_cache import cached_reconstructions
from menet.runs import build_defense
from menet.training import _Draws, _training_inputs


def bench_cache_build(images: torch.Tensor, sample: int, reference_images: int) -> None:
    """Build the 10-mask nuclear-norm set for ``sample`` images; project both to 50,000."""
    config = config_from_dict({"name": "bench", "dataset": "cifar10", "mode": "menet", "masks": "cached",
                               "defense": {"method": "nucnorm", "n_masks": 10}})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cached_reconstructions(config, images[:sample], tmp)
        ours = (time.perf_counter() - start) / sample * 50_000
    # Reference: cvxpy + SCS per image at keep-probabilities spread like the 10 training masks.
    ps = config.defense.train_ps()
    gen = torch.Generator().manual_seed(0)
    x = images[:reference_images].float() / 255 * 2 - 1
    mats = images_to_matrices(x, "concat").double().numpy()
    start = time.perf_counter()
    for i in range(reference_images):
        p = ps[(i * len(ps)) // reference_images]
        mask = random_mask((1, *mats.shape[1:]), p, gen).numpy()
        nuclear_norm_reference(mats[i : i + 1], mask)
    reference = (time.perf_counter() - start) / reference_images * 50_000 * len(ps)
    ours_h, ref_h = ours / 3600, reference / 3600
    print(f"cached 10-mask cifar10 set, nucnorm: {ours_h:.2f} h projected for 50,000 images "
          f"({reference / ours:.0f}x faster than per-image cvxpy + SCS at {ref_h:.1f} h; "
          f"from {sample} and {reference_images} images)", flush=True)


def step_time(settings: dict, images: torch.Tensor, labels: torch.Tensor, steps: int, repeats: int) -> float:
    config = config_from_dict({"name": "bench", **settings})
    torch.manual_seed(0)
    model = build_model_for_dataset(config.model, config.dataset)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    defense = build_defense(config) if config.defended else None
    p = torch.full((len(labels),), config.defense.inference_p())
    gen = torch.Generator().manual_seed(0)

    def run() -> None:
        for _ in range(steps):
            draws = _Draws(gen, gen, gen, len(labels), slice(0, len(labels)))
            x = _training_inputs(config, model, defense, images, labels, p, draws, torch.device("cpu"))
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
    parser.add_argument("--cache-sample", type=int, default=256, help="images for the cache-build projection")
    parser.add_argument("--reference-images", type=int, default=5, help="images for the cvxpy projection")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    fashion = load_dataset("fashion-mnist", "train")
    cifar_images = cifar_like(fashion.images[: max(args.batch, args.cache_sample)])
    setups = {
        "lenet fashion-mnist": ({"dataset": "fashion-mnist", "model": "lenet"}, fashion.images[: args.batch], fashion.labels[: args.batch],
                                {"eps": 0.3, "step": 0.01, "steps": 40}),
        "resnet18 cifar-shaped": ({"dataset": "cifar10", "model": "resnet18"}, cifar_images[: args.batch], fashion.labels[: args.batch],
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
    bench_cache_build(cifar_images, args.cache_sample, args.reference_images)


if __name__ == "__main__":
    main()
