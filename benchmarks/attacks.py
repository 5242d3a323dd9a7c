"""Attack cost, measured side by side: BPDA PGD through ME-Net vs plain PGD, EOT, SPSA, Boundary.

Prints `name: value (ratio vs reference)` lines, median of 3 repeats, torch threads = core count:
1. seconds per PGD step on ResNet-18 with CIFAR-shaped images: through ME-Net (BPDA; USVT and
   the nuclear norm at the keep-probabilities of the paper's pure (0.91) and adversarially
   trained (0.5) models) against a plain PGD step on the same network;
2. one EOT-k step against k single BPDA steps;
3. the projected estimation cost of the paper's white-box evaluation (1000-step BPDA on 1000
   CIFAR-10 images, nuclear norm): ours against the original per-image cvxpy + SCS approach;
4. SPSA and Boundary throughput on LeNet / Fashion-MNIST at the paper's settings (projected
   from a few steps).
CIFAR-10 is not shipped: CIFAR-shaped images are built from Fashion-MNIST (benchmarks/common.py).

Usage: python benchmarks/attacks.py [--device cuda] [--batch 64] [--quick] [--parts 1,2,3,4]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from common import cifar_like, median_time, synchronize
from nuclear_norm_v1 import nuclear_norm as nuclear_norm_v1

from menet.attacks import PGD, SPSA, Boundary
from menet.data import load_dataset
from menet.defense import MatrixEstimation, MENet
from menet.estimation import nuclear_norm
from menet.estimation.layout import images_to_matrices
from menet.estimation.reference import nuclear_norm_reference
from menet.masking import random_mask
from menet.models import build_model_for_dataset


def pgd_step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, repeats: int,
                     samples: int = 1) -> float:
    attack = PGD(eps=8 / 255, step_size=2 / 255, steps=steps, keep_best=False, eot=samples)
    attack(model, x, y, generator=torch.Generator().manual_seed(0))  # warm-up
    return median_time(lambda: attack(model, x, y, generator=torch.Generator().manual_seed(0)), repeats) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64, help="images per PGD batch (ResNet-18)")
    parser.add_argument("--steps", type=int, default=3, help="PGD steps per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eot", type=int, default=10)
    parser.add_argument("--estimation-batch", type=int, default=512, help="images per call when timing the estimation alone")
    parser.add_argument("--reference-images", type=int, default=4, help="images for the cvxpy projection")
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats (smoke run)")
    parser.add_argument("--no-reference", action="store_true", help="skip the per-image cvxpy reference (no cvxpy)")
    parser.add_argument("--parts", default="1,2,3,4", help="which measurements (see above), e.g. 4 for SPSA and Boundary only")
    args = parser.parse_args()
    parts = {int(part) for part in args.parts.split(",")}
    if 3 in parts:
        parts.add(1)  # the projection uses the estimation rates measured in part 1
    if args.quick:
        args.batch, args.repeats, args.steps, args.reference_images, args.estimation_batch = 8, 1, 1, 1, 64
    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# torch {torch.__version__}, {name}, batch {args.batch}")
    fashion = load_dataset("fashion-mnist", "test")
    x = (cifar_like(fashion.images[: args.batch]).float() / 255).to(device)
    y = fashion.labels[: args.batch].to(device)
    many = (cifar_like(fashion.images[: args.estimation_batch]).float() / 255).to(device)
    torch.manual_seed(0)
    network = build_model_for_dataset("resnet18", "cifar10").to(device).eval()

    # 1. PGD step: plain vs BPDA through ME-Net.
    rates = {}
    if parts & {1, 2}:
        plain = pgd_step_seconds(network, x, y, args.steps, args.repeats)
        print(f"pgd step resnet18: {plain:.3f} s (1.00x)", flush=True)
    for method, p in (("usvt", 0.5), ("nucnorm", 0.91), ("nucnorm", 0.5)) if 1 in parts else ():
        model = MENet(network, MatrixEstimation(method, p=p, generator=torch.Generator().manual_seed(0)))
        seconds = pgd_step_seconds(model, x, y, args.steps, args.repeats)
        print(f"bpda pgd step resnet18 {method} p={p}: {seconds:.3f} s ({seconds / plain:.2f}x vs plain pgd)", flush=True)
        if method == "nucnorm":  # the estimation alone, on a full evaluation batch, for the projection below
            matrices = images_to_matrices(many * 2 - 1, "concat")
            mask = random_mask(tuple(matrices.shape), p, torch.Generator().manual_seed(1)).to(device)
            rates[p] = {
                "ours": len(many) / median_time(lambda: nuclear_norm(matrices, mask), args.repeats),
                "previous solver": len(many) / median_time(lambda: nuclear_norm_v1(matrices, mask), args.repeats),
            }

    # 2. EOT-k: one step averaging k mask draws vs k single steps.
    if 2 in parts:
        model = MENet(network, MatrixEstimation("usvt", p=0.5, generator=torch.Generator().manual_seed(0)))
        single = pgd_step_seconds(model, x, y, args.steps, args.repeats)
        with_eot = pgd_step_seconds(model, x, y, args.steps, args.repeats, samples=args.eot)
        print(f"eot-{args.eot} bpda step resnet18 usvt: {with_eot:.3f} s ({with_eot / (args.eot * single):.2f}x vs "
              f"{args.eot} single steps)", flush=True)

    # 3. Projected estimation cost of 1000-step BPDA on 1000 CIFAR-10 images (nuclear norm).
    mats = images_to_matrices(x[: args.reference_images].double().cpu() * 2 - 1, "concat").numpy()
    gen = torch.Generator().manual_seed(0)
    for p, rate_by_solver in (rates.items() if 3 in parts else ()):
        hours = 1e6 / rate_by_solver["ours"] / 3600
        previous = 1e6 / rate_by_solver["previous solver"] / 3600
        cores = 1 if device.type == "cuda" else torch.get_num_threads()
        unit = "GPU h" if device.type == "cuda" else "CPU-core h"
        reference = f"; {previous / hours:.2f}x faster than the previous solver (benchmarks/nuclear_norm_v1.py) at {previous * cores:.2f} {unit}"
        if not args.no_reference:
            start = time.perf_counter()
            for i in range(args.reference_images):
                nuclear_norm_reference(mats[i : i + 1], random_mask((1, *mats.shape[1:]), p, gen).numpy())
            reference_hours = 1e6 / (args.reference_images / (time.perf_counter() - start)) / 3600
            reference += f"; {reference_hours / hours:.0f}x faster than per-image cvxpy + SCS at {reference_hours:.0f} h"
        print(f"estimation for 1000-step bpda on 1000 cifar10 images, nucnorm p={p}: {hours:.2f} h "
              f"({hours * cores:.2f} {unit}{reference})", flush=True)

    # 4. SPSA and Boundary on LeNet / Fashion-MNIST, the paper's settings, projected from a few steps.
    lenet = build_model_for_dataset("lenet", "fashion-mnist").to(device).eval()
    xf = (fashion.images[:8].float() / 255).to(device)
    yf = fashion.labels[:8].to(device)
    few = 2 if args.quick else 5
    for label, attack, full in (("spsa", SPSA(steps=few, samples=2048, early_stop=False), 1000),
                                ("boundary", Boundary(steps=few * 10), 1000)) if 4 in parts else ():
        attack(lenet, xf, yf, generator=torch.Generator().manual_seed(0))  # warm-up
        synchronize()
        seconds = median_time(lambda attack=attack: attack(lenet, xf, yf, generator=torch.Generator().manual_seed(0)),
                              args.repeats)
        steps = attack.steps
        per_image = seconds / len(xf) * full / steps
        print(f"{label} lenet fashion-mnist at {full} steps: {1 / per_image:.4f} images/s "
              f"({per_image:.1f} s per image, projected from {steps} steps)", flush=True)


if __name__ == "__main__":
    main()
