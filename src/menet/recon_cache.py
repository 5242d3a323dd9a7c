"""The cached ME-Net training set: n masked-and-reconstructed copies of every training image.

Stored as one uint8 array file of shape (n_masks, N, C, H, W), memory-mapped (CIFAR-10 with
10 masks is 1.5 GB: streamed from disk, never held in RAM as float32), written atomically
(built under a temporary name, renamed when complete) and named by a hash of everything that
determines its content, so a later run with the same settings reuses it and any change of
settings or data builds a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from menet.config import TrainConfig
from menet.data import to_float
from menet.defense import MatrixEstimation
from menet.io_atomic import atomic_path
from menet.progress import Progress, no_progress

log = logging.getLogger(__name__)
CACHE_VERSION = 1
BUILD_BATCH = 1024


def cache_key(config: TrainConfig, images: torch.Tensor) -> str:
    """Hash of the data and every setting that changes the reconstructions."""
    d = config.defense
    settings = {
        "version": CACHE_VERSION, "dataset": config.dataset, "shape": list(images.shape),
        "method": d.method, "layout": d.layout, "options": d.options, "ps": d.train_ps(), "seed": config.seed,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(images.contiguous().numpy())  # buffer protocol: no copy of the data
    return digest.hexdigest()[:20]



def cached_reconstructions(
    config: TrainConfig,
    images: torch.Tensor,
    cache_dir: str | Path,
    *,
    progress: Progress = no_progress,
) -> np.ndarray:
    """Memory-mapped uint8 (n_masks, N, C, H, W) reconstructions, built once per settings.

    Copy k of image i is the reconstruction of image i under a Bernoulli(p_k) mask drawn from
    a generator seeded by ``config.seed``; values are rounded to uint8 like the images.
    """
    d = config.defense
    path = Path(cache_dir) / f"menet-recon-{config.dataset}-{d.method}-{cache_key(config, images)}.npy"
    if path.is_file():
        log.info("reusing cached reconstructions %s", path)
        return np.load(path, mmap_mode="r")
    ps = d.train_ps()
    generator = torch.Generator().manual_seed(config.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(ps), *images.shape))
        estimators = [MatrixEstimation(d.method, p=p, layout=d.layout, generator=generator, **d.options) for p in ps]
        jobs = [(k, s) for k in range(len(ps)) for s in range(0, len(images), BUILD_BATCH)]
        for k, start in progress(jobs, desc="reconstruct training set", total=len(jobs)):
            x = to_float(images[start : start + BUILD_BATCH])
            recon = estimators[k](x)
            out[k, start : start + len(x)] = (recon * 255).round().to(torch.uint8).numpy()
        out.flush()
        del out
    log.info("wrote cached reconstructions %s", path)
    return np.load(path, mmap_mode="r")
