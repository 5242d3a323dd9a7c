"""Wall-clock time of `menet reproduce RECIPE --scale small`, each recipe from an empty runs folder.

The target: every recipe under 15 minutes on a 2-core CPU. Only Fashion-MNIST ships with the
machine, so the other datasets are random images written in their official formats (IDX, the
CIFAR-10 python batches, SVHN's .mat, Tiny-ImageNet's folders), as large as the small scale
reads (1,000 training images are used; 2,000 are written). Checksums are not verified for those
files. Accuracy numbers from random data mean nothing; the time is what this measures.

Prints `recipe: seconds (ratio vs the 900 s budget)`; one run per recipe (each takes minutes).

Usage: python benchmarks/recipes_small.py [RECIPE ...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import gzip
import os
import pickle
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image

import menet.reproduce as reproduce_module
from menet.data.cifar import BATCHES, FOLDER
from menet.reproduce import load_paper_recipe, reproduce

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
BUDGET_S = 900.0


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def write_data(root: Path, train: int = 2000, test: int = 500) -> dict[str, str]:
    """Random images in each dataset's official format under ``root``; name -> directory."""
    rng = np.random.default_rng(0)
    dirs = {name: root / name for name in ("mnist", "cifar10", "svhn", "tiny-imagenet")}
    for directory in dirs.values():
        directory.mkdir(parents=True)
    for prefix, n in (("train", train), ("t10k", test)):
        _idx(dirs["mnist"] / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _idx(dirs["mnist"] / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    folder = dirs["cifar10"] / FOLDER
    folder.mkdir()
    for name in BATCHES["train"] + BATCHES["test"]:
        n = test if name in BATCHES["test"] else train // len(BATCHES["train"])
        batch = {b"labels": rng.integers(0, 10, n).tolist(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"class"] * 10}, protocol=2))
    for split, n in (("train", train), ("test", test)):
        scipy.io.savemat(dirs["svhn"] / f"{split}_32x32.mat",
                         {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                          "y": rng.integers(1, 11, (n, 1)).astype(np.uint8)})
    tiny = dirs["tiny-imagenet"] / "tiny-imagenet-200"
    wnids = [f"n{index:08d}" for index in range(200)]
    (tiny / "val" / "images").mkdir(parents=True)
    (tiny / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid in wnids:
        images = tiny / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(train // len(wnids)):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(images / f"{wnid}_{i}.JPEG")
    annotations = []
    for i in range(test):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tiny / "val" / "images" / f"val_{i}.JPEG")
        annotations.append(f"val_{i}.JPEG\t{wnids[i % len(wnids)]}\t0\t0\t63\t63")
    (tiny / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return {name: str(directory) for name, directory in dirs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", help="recipe names (default: all)")
    parser.add_argument("--keep", help="write data and runs under this folder and keep them")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    names = args.recipes or sorted(path.stem for path in RECIPES.glob("*.yaml"))
    # Random stand-in files have no official checksums.
    reproduce_module._TRAIN_SET["small"]["verify_checksums"] = False
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        data_dirs = write_data(root / "data")
        data_dirs["fashion-mnist"] = os.environ.get("MENET_DATA_DIR", "/usr/share/datasets/fashion-mnist")
        print(f"# torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; budget {BUDGET_S:.0f} s per recipe")
        for name in names:
            recipe = load_paper_recipe(RECIPES / f"{name}.yaml")
            started = time.perf_counter()
            reproduce(recipe, root / f"runs-{name}", scale="small", data_dirs=data_dirs, say=lambda line: None)
            seconds = time.perf_counter() - started
            print(f"{name} --scale small: {seconds:.0f} s ({seconds / BUDGET_S:.2f}x of the 15-minute budget)", flush=True)


if __name__ == "__main__":
    main()
