"""Input checks and chunked execution shared by the batched estimators.

Every estimator works on a stack of matrices ``(B, m, n)``. Torch's batched LAPACK calls
(eigh, svd) loop over the batch on one core, so on a multi-core CPU we split the batch into
chunks and run the chunks on a small thread pool whose threads use one torch thread each
(torch releases the GIL inside its kernels). Chunking also bounds the memory of the
temporaries: no chunk holds more than ``MAX_CHUNK_ELEMENTS`` matrix entries on the CPU, or
``MAX_CHUNK_ELEMENTS_CUDA`` on a GPU, where one large chunk keeps the device busy.

Thread counts. ``torch.set_num_threads(n)`` sets the calling thread's count and also the
default that every thread adopts at its first parallel torch op (with OpenMP, the usual CPU
build; in other builds the count is process-wide). So the pool's threads set their own count
to 1, and the default they saw is put back at once, before any chunk runs, while one lock
keeps concurrent callers from interleaving these steps. The caller's count, and that of any
other thread, is never changed; concurrent and nested callers all see the count they had.
(Only a thread whose very first parallel op falls inside a pool's start-up, a fraction of a
millisecond, would adopt 1: torch offers no way to make worker threads single-threaded
without touching that default.)
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

# 2**19 float32 entries = 2 MiB per chunk-sized temporary; an estimator keeps about a
# dozen of those alive per worker, so a call needs well under 100 MiB of scratch memory.
MAX_CHUNK_ELEMENTS = 2**19
# On a GPU the batch runs as one stream of kernels: 2**23 entries (32 MiB per float32
# temporary, about 0.5 GiB of scratch) is 2,730 CIFAR-shaped matrices per launch.
MAX_CHUNK_ELEMENTS_CUDA = 2**23
# Below this many matrices per worker, a thread pool costs more than it saves.
MIN_CHUNK_MATRICES = 64

FLOAT_DTYPES = (torch.float32, torch.float64)

# Held while a pool starts (its threads set torch's default thread count to 1 and it is put
# back) and while a caller reads its thread count, so no caller reads inside that window.
_POOL_START = threading.Lock()


def check_matrices(a: Tensor, mask: Tensor) -> None:
    """Validate the common estimator contract; raise TypeError/ValueError naming the problem."""
    if not isinstance(a, Tensor) or not isinstance(mask, Tensor):
        raise TypeError(
            f"a and mask must be torch tensors, got {type(a).__name__} and {type(mask).__name__}"
        )
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"a must be float32 or float64, got {a.dtype}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = observed), got {mask.dtype}")
    if a.dim() < 2:
        raise ValueError(f"a must have shape (..., m, n) with at least 2 dims, got {tuple(a.shape)}")
    if a.shape != mask.shape:
        raise ValueError(
            f"a and mask must have the same shape, got {tuple(a.shape)} and {tuple(mask.shape)}"
        )
    if a.device != mask.device:
        raise ValueError(f"a and mask must be on the same device, got {a.device} and {mask.device}")
    if a.shape[-1] == 0 or a.shape[-2] == 0:
        raise ValueError(f"matrices must be non-empty, got shape {tuple(a.shape)}")
    if a.numel() == 0:
        return
    # Checked chunk by chunk so that validation needs no full-size temporaries.
    m, n = a.shape[-2:]
    flat_a, flat_mask = a.reshape(-1, m, n), mask.reshape(-1, m, n)
    step = _chunk_cap(a)
    for start in range(0, flat_a.shape[0], step):
        a_chunk, mask_chunk = flat_a[start : start + step], flat_mask[start : start + step]
        if not bool(torch.isfinite(a_chunk).logical_or_(~mask_chunk).all()):
            raise ValueError("a has NaN or Inf among its observed entries")
        empty = ~mask_chunk.flatten(-2).any(-1)
        if bool(empty.any()):
            bad = (empty.nonzero()[:5].flatten() + start).tolist()
            raise ValueError(
                f"every matrix needs at least one observed entry; matrices {bad} "
                f"(flattened batch index) have none"
            )


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise ValueError unless ``value`` is a finite number > 0 (>= 0 with ``allow_zero``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def check_max_iters(max_iters: int) -> None:
    """Raise ValueError unless ``max_iters`` is a positive int."""
    if not isinstance(max_iters, int) or isinstance(max_iters, bool) or max_iters < 1:
        raise ValueError(f"max_iters must be a positive int, got {max_iters!r}")


def _chunk_cap(a: Tensor) -> int:
    """The most (m, n) matrices of ``a`` that one chunk may hold on ``a``'s device."""
    cap = MAX_CHUNK_ELEMENTS if a.device.type == "cpu" else MAX_CHUNK_ELEMENTS_CUDA
    return max(1, cap // (a.shape[-2] * a.shape[-1]))


def chunk_size(batch: int, cap: int, workers: int) -> int:
    """Matrices per chunk for ``batch`` matrices, at most ``cap`` per chunk, on ``workers``
    threads: as few chunks as the cap and MIN_CHUNK_MATRICES allow; where that is more chunks
    than workers, their number rounded up to a multiple of ``workers``, so that no worker waits
    on another's extra chunk (fewer chunks than workers are left as they are: one round each,
    no chunk cut below MIN_CHUNK_MATRICES for it). Sizes are equal up to rounding (the last may
    be smaller), so the count is a multiple of ``workers`` only up to that rounding. Example:
    1024 CIFAR-shaped matrices at a cap of 170 on 2 workers: 8 chunks of 128, not 6 of 170 and
    one of 4, which costs nearly a full chunk's per-operation overhead (nuclear norm, one
    thread: 11.5 ms for 4 matrices, 89 ms for 170; benchmarks/RESULTS.md)."""
    workers = max(workers, 1)
    chunk = min(cap, max(MIN_CHUNK_MATRICES, math.ceil(batch / workers)))
    count = math.ceil(batch / chunk)
    if count > workers:
        count = math.ceil(count / workers) * workers
    return math.ceil(batch / count)


def zero_fill(a: Tensor, mask: Tensor) -> Tensor:
    """Observed entries of ``a``, zeros elsewhere (NaN-safe: unobserved values never leak)."""
    return torch.where(mask, a, torch.zeros((), dtype=a.dtype, device=a.device))


def map_matrices(
    fn: Callable[..., Tensor], a: Tensor, mask: Tensor, *, differentiable: bool = False,
    chunk: int | None = None,
) -> Tensor:
    """Apply ``fn(a_chunk, mask_chunk) -> out_chunk`` over ``a`` of shape (..., m, n) in chunks.

    Leading dims are flattened; the result has the shape of ``a``. When ``differentiable`` and
    autograd is recording, chunks run in the caller's thread and are concatenated so that
    gradients flow; otherwise they are written into one preallocated output. ``chunk``:
    matrices per chunk (default ``chunk_size`` of the batch, the device's cap and the workers).
    """
    shape = a.shape
    m, n = shape[-2:]
    flat_a = a.reshape(-1, m, n)
    flat_mask = mask.reshape(-1, m, n)
    batch = flat_a.shape[0]
    if batch == 0:
        return a.clone()
    workers = _torch_threads() if a.device.type == "cpu" else 1
    if chunk is None:
        chunk = chunk_size(batch, _chunk_cap(a), workers)
    elif chunk < 1:
        raise ValueError(f"chunk must be at least 1 matrix, got {chunk}")
    starts = list(range(0, batch, chunk))

    if differentiable and torch.is_grad_enabled() and a.requires_grad:
        parts = [fn(flat_a[s : s + chunk], flat_mask[s : s + chunk]) for s in starts]
        return torch.cat(parts).reshape(shape)

    out = torch.empty_like(flat_a)
    grad_mode = torch.is_grad_enabled()
    inference_mode = torch.is_inference_mode_enabled()

    def run(start: int) -> None:
        # Grad and inference modes are thread-local: carry the caller's into the worker.
        with torch.inference_mode(inference_mode), torch.set_grad_enabled(grad_mode):
            out[start : start + chunk] = fn(
                flat_a[start : start + chunk], flat_mask[start : start + chunk]
            )

    if workers > 1:
        # Even one chunk runs on a single-threaded worker: the estimators' loops of small ops
        # are slowed by torch's intra-op threads (up to 30x on a busy CPU, measured), and the
        # caller's own thread count must not be changed.
        with _start_single_threaded_pool(min(workers, len(starts))) as pool:
            list(pool.map(run, starts))
    else:
        for s in starts:
            run(s)
    return out.reshape(shape)


def _torch_threads() -> int:
    """The calling thread's torch thread count, read outside any pool's start-up window."""
    with _POOL_START:
        return torch.get_num_threads()


def _start_single_threaded_pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` started threads, each with a torch thread count of 1.

    Each thread records the default count it adopted, then sets its own to 1, which also
    sets the default; once all have started, a short-lived thread puts the default back
    (from the caller, set_num_threads would also change the caller's own count).
    """
    with _POOL_START:
        adopted: list[int] = []

        def single_threaded() -> None:
            adopted.append(torch.get_num_threads())
            torch.set_num_threads(1)

        pool = ThreadPoolExecutor(max_workers=workers, initializer=single_threaded)
        started = threading.Barrier(workers, timeout=60)
        try:
            # Every task waits for all the others, so each runs on a thread of its own.
            for future in [pool.submit(started.wait) for _ in range(workers)]:
                future.result()
        except BaseException:
            started.abort()
            pool.shutdown(cancel_futures=True)
            raise
        finally:
            if adopted:
                # The largest: a thread that started after another set 1 adopted 1.
                restore = threading.Thread(target=torch.set_num_threads, args=(max(adopted),))
                restore.start()
                restore.join()
    return pool
