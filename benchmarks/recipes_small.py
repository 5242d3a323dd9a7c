"""Wall-clock time of `menet reproduce RECIPE --scale small`, each recipe from an empty runs folder.

The target: every recipe under 15 minutes on a 2-core CPU. Only Fashion-MNIST ships with the
machine, so the other datasets are built from Fashion-MNIST images (padded, three shifted and
scaled copies as colour channels, upsampled to 64 x 64 for Tiny-ImageNet: natural-image-like
spectra, so that the iterative estimators converge as on real data, unlike uniform noise) and
written in their official formats (IDX, the CIFAR-10 python batches, SVHN's .mat,
Tiny-ImageNet's folders of JPEGs), as large as the small scale reads (1,000 training images are
used; 2,000 are written). Checksums are not verified for those files. The accuracies mean
little; the time is what this measures.

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

import menet.scaling as scaling_module
from menet.data.cifar import BATCHES, FOLDER
from menet.reproduce import load_paper_recipe, reproduce

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
BUDGET_S = 900.0


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def write_data(root: Path, train: int = 2000, test: int = 500) -> dict[str, str]:
    """Images built from Fashion-MNIST in each dataset's official format under ``root``; name -> directory."""
    from common import cifar_like

    from menet.data import load_dataset

    rng = np.random.default_rng(0)
    source = {split: load_dataset("fashion-mnist", split) for split in ("train", "test")}
    grey = {"train": source["train"].images[:train], "test": source["test"].images[:test]}
    labels = {"train": source["train"].labels[:train].numpy().astype(np.uint8),
              "test": source["test"].labels[:test].numpy().astype(np.uint8)}
    colour = {split: cifar_like(images) for split, images in grey.items()}  # uint8 (N, 3, 32, 32)
    large = {split: torch.nn.functional.interpolate(images.float(), size=64, mode="bilinear").round().clamp(0, 255)
             .to(torch.uint8) for split, images in colour.items()}
    dirs = {name: root / name for name in ("mnist", "cifar10", "svhn", "tiny-imagenet")}
    for directory in dirs.values():
        directory.mkdir(parents=True)
    for prefix, split in (("train", "train"), ("t10k", "test")):
        _idx(dirs["mnist"] / f"{prefix}-images-idx3-ubyte.gz", grey[split][:, 0].numpy())
        _idx(dirs["mnist"] / f"{prefix}-labels-idx1-ubyte.gz", labels[split])
    folder = dirs["cifar10"] / FOLDER
    folder.mkdir()
    per_batch = train // len(BATCHES["train"])
    for index, name in enumerate(BATCHES["train"] + BATCHES["test"]):
        split, rows = ("test", slice(0, test)) if name in BATCHES["test"] else ("train", slice(index * per_batch, (index + 1) * per_batch))
        batch = {b"labels": labels[split][rows].tolist(), b"data": colour[split][rows].reshape(-1, 3072).numpy()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"class"] * 10}, protocol=2))
    for split in ("train", "test"):
        scipy.io.savemat(dirs["svhn"] / f"{split}_32x32.mat",
                         {"X": colour[split].permute(2, 3, 1, 0).numpy(),  # (32, 32, 3, N), labels 1..10
                          "y": (np.where(labels[split] == 0, 10, labels[split])).reshape(-1, 1)})
    tiny = dirs["tiny-imagenet"] / "tiny-imagenet-200"
    wnids = [f"n{index:08d}" for index in range(200)]
    (tiny / "val" / "images").mkdir(parents=True)
    (tiny / "wnids.txt").write_text("\n".join(wnids) + "\n")
    def jpeg(image: torch.Tensor, path: Path) -> None:
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)

    per_class = train // len(wnids)
    for index, wnid in enumerate(wnids):
        images = tiny / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(per_class):
            jpeg(large["train"][index * per_class + i], images / f"{wnid}_{i}.JPEG")
    annotations = []
    for i in range(test):
        jpeg(large["test"][i], tiny / "val" / "images" / f"val_{i}.JPEG")
        annotations.append(f"val_{i}.JPEG\t{wnids[int(rng.integers(0, len(wnids)))]}\t0\t0\t63\t63")
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
    scaling_module._TRAIN_SET["small"]["verify_checksums"] = False
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
