"""Which iterate PGD should keep on a randomised model: a paired comparison on a trained ME-Net.

On a randomised model (ME-Net draws fresh masks per forward pass) PGD's ``keep_best`` ranks
its iterates by loss alone; with eot 1 that loss is one pass's, a noisy estimate. Variants, all
on the SAME test images with the SAME seeds (each one evaluated alone, so the attack's and the
scoring draws' randomness is keyed identically):
  best-1pass   keep_best, ranked by one pass's loss (rank_samples 1, the default before this
               comparison; with EOT-k, "best-eot4mean", the k gradient passes' mean loss:
               loss_gradient returns it, at no extra cost)
  last         keep_best False: the last iterate (what PGD's default, rank_samples 0, keeps on
               a randomised model since this comparison)
  best-avgK    keep_best, ranked by the loss averaged over K passes (rank_samples K; with eot
               >= K the gradient's EOT samples are those passes)
for BPDA PGD-40 (eot 1) and PGD-20 with EOT-4, eps 0.1, step 0.01 (the demo's settings).
Scored by ``menet.evaluation.evaluate`` with draws 3 (robust = correct in all three draws).
Prints robust accuracy with its 95% Clopper-Pearson interval, the attack's seconds (`name:
value (ratio vs reference)`, reference: the first variant of its group), and McNemar's exact
test between every pair of a group's variants.

Usage: python benchmarks/kept_iterate.py [RUN_DIR] [--n 1000] [--threads 2] [--k 4] [--eot-k 8]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from menet.attacks import PGD
from menet.data import load_dataset
from menet.evaluation import evaluate
from menet.runs import load_model, model_fingerprint, read_config
from menet.stats import clopper_pearson, compare


def robust(result: dict, name: str) -> np.ndarray:
    """(n,) bool: correct in every scoring draw."""
    return np.array(result["outcomes"][name], dtype=bool).all(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="/tmp/fresh3/runs/demo/menet", help="trained ME-Net run directory")
    parser.add_argument("--n", type=int, default=1000, help="test images (the first n)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=4, help="passes averaged to rank iterates of PGD-40 (eot 1)")
    parser.add_argument("--eot-k", type=int, default=8, help="passes ranking PGD-20 EOT-4's iterates in its best-avgK "
                        "variant (4 of them the gradient's; 0 skips it)")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--groups", default="pgd40,eot4")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = read_config(args.run)
    data = load_dataset(config.dataset, "test", config.data_dir)
    images, labels = data.images[: args.n], data.labels[: args.n]
    model = load_model(args.run, gradient="bpda", generator=torch.Generator().manual_seed(args.seed))
    inputs = {"model": model_fingerprint(args.run), "dataset": config.dataset, "split": "test", "offset": 0,
              "gradient": "bpda"}
    base = dict(eps=0.1, step_size=0.01)
    groups = {
        "pgd40": {"best-1pass": PGD(**base, steps=40, rank_samples=1),
                  "last": PGD(**base, steps=40, keep_best=False),
                  f"best-avg{args.k}": PGD(**base, steps=40, rank_samples=args.k)},
        "eot4": {"best-eot4mean": PGD(**base, steps=20, eot=4, rank_samples=1),
                 "last": PGD(**base, steps=20, eot=4, keep_best=False),
                 **({f"best-avg{args.eot_k}": PGD(**base, steps=20, eot=4, rank_samples=args.eot_k)}
                    if args.eot_k > 4 else {})},
    }
    print(f"# {args.run}: {config.mode} {config.model} on {config.dataset}, defense {config.defense.method}; "
          f"n {args.n}, draws {args.draws}, seed {args.seed}, torch threads {args.threads}")
    for group in args.groups.split(","):
        variants = groups[group]
        outcomes, seconds = {}, {}
        for name, attack in variants.items():
            began = time.perf_counter()
            result = evaluate(model, images, labels, {name: attack}, draws=args.draws, seed=args.seed,
                              batch_size=250, inputs=inputs)
            wall = time.perf_counter() - began
            outcomes[name] = robust(result, name)
            seconds[name] = result["timing"]["attack_seconds"][name]
            print(f"#   {group}/{name}: evaluated in {wall:.0f} s; settings {attack.settings()}", flush=True)
        reference = next(iter(variants))
        clean = robust(result, "clean")
        print(f"{group}/clean: {clean.mean():.3f}")
        for name, robust_now in outcomes.items():
            k, n = int(robust_now.sum()), len(robust_now)
            low, high = clopper_pearson(k, n)
            ratio = robust_now.mean() / outcomes[reference].mean()
            print(f"{group}/{name} robust accuracy: {k / n:.3f} [{low:.3f}, {high:.3f}] ({ratio:.3f}x vs {reference})")
        for name in variants:
            print(f"{group}/{name} attack seconds: {seconds[name]:.1f} ({seconds[name] / seconds[reference]:.2f}x vs {reference})")
        for a, b in itertools.combinations(variants, 2):
            print(f"{group}/{a} vs {b}: {compare(outcomes[a], outcomes[b]).words(a, b)}")


if __name__ == "__main__":
    main()
