"""The cached training set: a killed build resumes, leftovers are removed, concurrent builds wait."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import menet.recon_cache as recon_cache
from menet.config import TrainConfig, config_from_dict
from menet.data import load_dataset

SETTINGS = {"name": "cache", "mode": "menet", "masks": "cached", "defense": {"method": "usvt", "n_masks": 2}}
N_IMAGES = 100  # chunks of BATCH: 6 full and one of 4 images
BATCH = 16
N_JOBS = 2 * 7  # masks x chunks

# A build in another process, logging to stderr. It prints a line after each job (through the
# progress hook); after `hold_after` jobs it waits until the file `go` exists, or, when `go` is
# "", until it is killed.
BUILDER = """
import json, logging, os, sys, time
import torch
import menet.recon_cache as recon_cache
from menet.config import config_from_dict
from menet.data import load_dataset

cache_dir, settings, n_images, batch, threads, hold_after, go = sys.argv[1:]
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
torch.set_num_threads(int(threads))  # the same float arithmetic as the test process
recon_cache.BUILD_BATCH = int(batch)

def report(items, **_):
    for n, item in enumerate(items, 1):
        yield item
        print("built", flush=True)
        while n == int(hold_after) and not (go and os.path.exists(go)):
            time.sleep(0.05)

images = load_dataset("fashion-mnist", "train").images[: int(n_images)]
recon_cache.cached_reconstructions(config_from_dict(json.loads(settings)), images, cache_dir, progress=report)
print("finished", flush=True)
"""


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_dataset("fashion-mnist", "train").images[:N_IMAGES]


@pytest.fixture(scope="module")
def expected(tmp_path_factory, images) -> Path:
    """The file of an uninterrupted build in its own folder."""
    folder = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recon_cache, "BUILD_BATCH", BATCH)
        recon_cache.cached_reconstructions(config(), images, folder)
    [file] = folder.iterdir()
    return file


@pytest.fixture
def builds(monkeypatch) -> list[int]:
    """Small jobs, and the size of every batch the cache builder reconstructs, in order."""
    calls: list[int] = []
    original = recon_cache.MatrixEstimation

    class Counting(original):
        def forward(self, images):
            calls.append(len(images))
            return super().forward(images)

    monkeypatch.setattr(recon_cache, "MatrixEstimation", Counting)
    monkeypatch.setattr(recon_cache, "BUILD_BATCH", BATCH)
    return calls


def start_builder(cache_dir: Path, *, hold_after: int = 0, go: Path | str = "") -> subprocess.Popen:
    args = [cache_dir, json.dumps(SETTINGS), N_IMAGES, BATCH, torch.get_num_threads(), hold_after, go]
    return subprocess.Popen([sys.executable, "-c", BUILDER, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_lines(process: subprocess.Popen, count: int) -> list[str]:
    lines = [process.stdout.readline() for _ in range(count)]
    if not all(lines):  # it ended early
        process.wait()
        pytest.fail(f"the builder stopped after {lines}: {process.stderr.read()[-3000:]}")
    return lines


def config() -> TrainConfig:
    return config_from_dict(SETTINGS)


def test_a_killed_build_resumes_with_only_the_missing_jobs(tmp_path, images, builds, expected):
    cache = tmp_path / "cache"
    builder = start_builder(cache, hold_after=3)
    try:
        read_lines(builder, 3)
    finally:
        builder.send_signal(signal.SIGKILL)
        builder.wait()
    left = sorted(p.name for p in cache.iterdir())
    assert left and all(name.startswith(".") for name in left)  # killed before it finished

    stored = recon_cache.cached_reconstructions(config(), images, cache)
    assert len(builds) == N_JOBS - 3  # the three jobs on disk were not rebuilt
    assert os.listdir(cache) == [expected.name]  # no partial file, record, lock or temporary
    assert (cache / expected.name).read_bytes() == expected.read_bytes()
    assert stored.shape == (2, N_IMAGES, 1, 28, 28) and stored.dtype == np.uint8


def test_jobs_are_seeded_apart(tmp_path, images, builds):
    # Each (mask, chunk) job has its own masks: no two chunks of the same images share them.
    stored = recon_cache.cached_reconstructions(config(), torch.cat([images[:BATCH]] * 2), tmp_path)
    assert not np.array_equal(stored[0, :BATCH], stored[0, BATCH:])
    assert not np.array_equal(stored[0], stored[1])


@pytest.mark.parametrize("damage", ["cut short", "other shape", "not an npy file", "record of another key"])
def test_a_partial_build_that_does_not_match_is_built_again(tmp_path, images, builds, expected, damage):
    cache = tmp_path / "cache"
    cache.mkdir()
    partial, record = cache / f".{expected.name}.partial", cache / f".{expected.name}.progress.json"
    shape, key = [2, N_IMAGES, 1, 28, 28], expected.stem.rsplit("-", 1)[1]
    if damage == "other shape":
        shape[1] -= 1
    np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=tuple(shape)).flush()
    if damage == "cut short":
        os.truncate(partial, partial.stat().st_size - 1)
    if damage == "not an npy file":
        partial.write_bytes(b"\0" * partial.stat().st_size)
    if damage == "record of another key":
        key = "0" * len(key)
    record.write_text(json.dumps({"format": 1, "key": key, "shape": shape, "chunk": BATCH, "done": list(range(N_JOBS - 1))}))

    recon_cache.cached_reconstructions(config(), images, cache)
    assert len(builds) == N_JOBS
    assert os.listdir(cache) == [expected.name]
    assert (cache / expected.name).read_bytes() == expected.read_bytes()


def test_temporaries_of_killed_builds_of_these_settings_are_removed(tmp_path, images, builds):
    name = f"menet-recon-fashion-mnist-usvt-{recon_cache.cache_key(config(), images)}.npy"
    stale = [f".{name}.x8_k2ab1.tmp", f"..{name}.progress.json.u1v2w3.tmp"]
    others = [".menet-recon-fashion-mnist-usvt-0123456789abcdef0123.npy.abcdefgh.tmp", "notes.txt"]
    for file in stale + others:
        (tmp_path / file).write_bytes(b"\1" * 100)

    recon_cache.cached_reconstructions(config(), images, tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted([name, *others])


def test_a_concurrent_build_of_the_same_settings_waits_and_reuses_it(tmp_path, expected):
    cache, go = tmp_path / "cache", tmp_path / "go"
    first = start_builder(cache, hold_after=1, go=go)  # holds after its first job until `go` exists
    second, waited = None, False
    try:
        read_lines(first, 1)
        second = start_builder(cache)
        for line in second.stderr:  # until the second one waits for the first (or ends)
            if "waiting for it" in line:
                waited = True
                break
        go.touch()
        out_first, err_first = first.communicate(timeout=300)
        out_second, err_second = second.communicate(timeout=300)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert first.returncode == 0 and second.returncode == 0, err_first[-2000:] + err_second[-2000:]
    assert waited
    assert out_first == "built\n" * (N_JOBS - 1) + "finished\n" and out_second == "finished\n"  # it built nothing
    assert os.listdir(cache) == [expected.name]
    assert (cache / expected.name).read_bytes() == expected.read_bytes()
