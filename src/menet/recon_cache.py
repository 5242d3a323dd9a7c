"""The cached ME-Net training set: n masked-and-reconstructed copies of every training image.

Stored as one uint8 array file of shape (n_masks, N, C, H, W), memory-mapped (CIFAR-10 with
10 masks is 1.5 GB: streamed from disk, never held in RAM as float32) and named by a hash of
everything that determines its content, so a later run with the same settings reuses it and
any change of settings or data builds a new one.

The build is resumable. It is cut into jobs (mask k, chunk of BUILD_BATCH images), and each
job draws its masks from its own generator, seeded by (seed, k, chunk start): any job can be
rebuilt alone and gives the same bytes. Beside the final file ``NAME.npy`` the build keeps

- ``.NAME.npy.partial``: the array being filled (a complete .npy header, full size);
- ``.NAME.npy.progress.json``: which jobs are on disk, rewritten atomically after each job
  is flushed: ``{"format": 1, "key": ..., "shape": [K, N, C, H, W], "chunk": B, "done": [j]}``
  with job j = k * n_chunks + start // B;
- ``.NAME.npy.lock``: an exclusive ``flock`` for the builder, so concurrent runs with the same
  settings wait instead of writing one file together (the kernel drops it if the builder dies).

A killed build leaves these; the next call with the same settings skips the jobs on record,
then fsyncs the partial file and renames it to ``NAME.npy`` and removes the rest. Temporaries
of the former all-or-nothing scheme (``.NAME.npy.XXXX.tmp``, full size, never resumable) are
removed when a build starts.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from menet.config import TrainConfig
from menet.data import to_float
from menet.defense import MatrixEstimation
from menet.io_atomic import write_text_atomic
from menet.progress import Progress, no_progress

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: masks seeded per (mask, chunk) job, so a killed build can resume
BUILD_BATCH = 1024  # images per job; part of the key, since each job seeds its own masks
PROGRESS_FORMAT = 1


def _settings(config: TrainConfig, images: torch.Tensor) -> dict:
    """Every setting that changes the reconstructions (except the image bytes)."""
    d = config.defense
    return {
        "version": CACHE_VERSION, "dataset": config.dataset, "shape": list(images.shape),
        "method": d.method, "layout": d.layout, "options": d.options, "ps": d.train_ps(), "seed": config.seed,
        "chunk": BUILD_BATCH,
    }


def _digest(settings: dict, images: torch.Tensor) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(images.contiguous().numpy())  # buffer protocol: no copy of the data
    return digest.hexdigest()[:20]


def cache_key(config: TrainConfig, images: torch.Tensor) -> str:
    """Hash of the data and every setting that changes the reconstructions."""
    return _digest(_settings(config, images), images)


def _file_name(config: TrainConfig, key: str) -> str:
    """The final file's name: menet-recon-DATASET-METHOD-KEY.npy."""
    return f"menet-recon-{config.dataset}-{config.defense.method}-{key}.npy"


def _partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def _progress_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.progress.json")


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _job_generator(seed: int, mask: int, start: int) -> torch.Generator:
    """The generator of job (mask k, chunk starting at image ``start``): independent of the others."""
    state = np.random.SeedSequence([seed, mask, start]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _build_job(config: TrainConfig, images: torch.Tensor, mask: int, start: int) -> np.ndarray:
    """uint8 (B, C, H, W): images[start : start + BUILD_BATCH] reconstructed under mask ``mask``'s p."""
    d = config.defense
    estimator = MatrixEstimation(
        d.method, p=d.train_ps()[mask], layout=d.layout, generator=_job_generator(config.seed, mask, start), **d.options
    )
    recon = estimator(to_float(images[start : start + BUILD_BATCH]))
    return (recon * 255).round().to(torch.uint8).numpy()


def _read_done(path: Path, key: str, shape: tuple[int, ...], n_jobs: int) -> set[int] | None:
    """Jobs that the progress record of ``path`` lists as on disk; None if it is absent or another build's."""
    record_path = _progress_path(path)
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
        same_build = (record["format"], record["key"], record["shape"], record["chunk"]) == (
            PROGRESS_FORMAT, key, list(shape), BUILD_BATCH
        )
        done = {int(j) for j in record["done"]}
    except (OSError, ValueError, TypeError, KeyError) as err:
        log.warning("ignoring unreadable progress record %s (%s)", record_path, err)
        return None
    if not same_build or not all(0 <= j < n_jobs for j in done):
        log.warning("ignoring progress record %s: it describes another build", record_path)
        return None
    return done


def _write_done(path: Path, key: str, shape: tuple[int, ...], done: set[int]) -> None:
    record = {"format": PROGRESS_FORMAT, "key": key, "shape": list(shape), "chunk": BUILD_BATCH, "done": sorted(done)}
    write_text_atomic(_progress_path(path), json.dumps(record))


def _open_partial(path: Path, shape: tuple[int, ...]) -> np.memmap | None:
    """The partial array of ``path`` opened for writing, if it is a whole uint8 ``shape`` .npy file."""
    partial = _partial_path(path)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(partial, "rb") as file:
            read_header = readers.get(np.lib.format.read_magic(file))
            if read_header is None:
                raise ValueError("unknown .npy format version")
            header_shape, fortran_order, dtype = read_header(file)
            data_offset = file.tell()
        if (header_shape, fortran_order, dtype) != (shape, False, np.dtype(np.uint8)):
            raise ValueError(f"it holds {dtype} {header_shape}, expected uint8 {shape} in C order")
        # Checked here because np.load(mmap_mode="r+") pads a file that is cut short with zeros.
        size, expected_size = partial.stat().st_size, data_offset + math.prod(shape)
        if size != expected_size:
            raise ValueError(f"it has {size} bytes, expected {expected_size}")
    except (OSError, ValueError) as err:  # missing, cut short, or not an .npy file
        log.warning("cannot reuse %s (%s): building from the start", partial, err)
        return None
    return np.lib.format.open_memmap(partial, mode="r+")


def _remove_stale_temporaries(path: Path) -> None:
    """Remove full-size temporaries that killed builds of these settings left: ``.NAME.npy.XXXX.tmp``
    (the former all-or-nothing scheme, via ``atomic_path``) and killed writes of the progress record.
    """
    stale = list(path.parent.glob(f".*{path.name}.*.tmp"))
    for file in stale:
        log.warning("removing %s, left by an interrupted build", file)
        file.unlink(missing_ok=True)


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``lock`` (created, and removed on exit)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another process is building %s: waiting for it", lock.name.removesuffix(".lock"))
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:  # e.g. a network file system without locks
            log.warning("cannot lock %s (%s): building unlocked", lock, err)
            break
        try:  # the previous holder removes the file on exit: then lock the one now at the path
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # before unlocking, so that a waiter sees it is stale
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _build(config: TrainConfig, images: torch.Tensor, path: Path, key: str, progress: Progress) -> None:
    """Fill the partial file of ``path`` job by job, resuming a killed build; rename it to ``path``."""
    shape = (len(config.defense.train_ps()), *images.shape)
    n_chunks = -(-len(images) // BUILD_BATCH)
    n_jobs = shape[0] * n_chunks
    done = _read_done(path, key, shape, n_jobs)
    out = None if done is None else _open_partial(path, shape)
    if done is None or out is None:
        _progress_path(path).unlink(missing_ok=True)  # before the new partial file: no record may outlive it
        out = np.lib.format.open_memmap(_partial_path(path), mode="w+", dtype=np.uint8, shape=shape)
        done = set()
    todo = [j for j in range(n_jobs) if j not in done]
    if done:
        log.info("resuming %s: %d of %d jobs already built", path.name, len(done), n_jobs)
    for job in progress(todo, desc="reconstruct training set", total=len(todo)):
        mask, start = divmod(job, n_chunks)
        start *= BUILD_BATCH
        out[mask, start : start + BUILD_BATCH] = _build_job(config, images, mask, start)
        out.flush()  # on disk before the record says so
        done.add(job)
        _write_done(path, key, shape, done)
    del out
    _fsync(_partial_path(path))
    os.replace(_partial_path(path), path)
    _fsync(path.parent)
    _progress_path(path).unlink(missing_ok=True)


def cached_reconstructions(
    config: TrainConfig,
    images: torch.Tensor,
    cache_dir: str | Path,
    *,
    progress: Progress = no_progress,
) -> np.ndarray:
    """Memory-mapped uint8 (n_masks, N, C, H, W) reconstructions, built once per settings.

    ``images``: uint8 (N, C, H, W). Copy k of image i is the reconstruction of image i under
    a Bernoulli(p_k) mask; the masks of images [s, s + BUILD_BATCH) under p_k come from a
    generator seeded by (``config.seed``, k, s). Values are rounded to uint8 like the images.
    A build that was killed resumes where it stopped; a concurrent build of the same settings
    is waited for.
    """
    key = cache_key(config, images)
    path = Path(cache_dir) / _file_name(config, key)
    if path.is_file():
        log.info("reusing cached reconstructions %s", path)
        return np.load(path, mmap_mode="r")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(_lock_path(path)):
        if path.is_file():  # built by the process we waited for
            log.info("reusing cached reconstructions %s", path)
        else:
            _remove_stale_temporaries(path)
            _build(config, images, path, key, progress)
            log.info("wrote cached reconstructions %s", path)
    return np.load(path, mmap_mode="r")
