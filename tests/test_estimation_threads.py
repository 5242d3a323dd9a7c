"""Estimators called from several Python threads at once: torch's thread counts are left alone.

``map_matrices`` runs chunks on a pool whose threads use one torch thread each. Setting that
used to change torch's default for the whole duration of a call, so a thread that started
using torch meanwhile was stuck with one thread (and ran its own estimates serially).
The real ``map_matrices`` runs here; a hook only records, and pauses, inside its chunks.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import torch
from conftest import bernoulli_mask, low_rank_plus_noise

import menet.estimation._batching as batching
from menet.estimation import nuclear_norm, usvt

ESTIMATOR_MODULES = [importlib.import_module(f"menet.estimation.{name}") for name in ("usvt", "nuclear_norm")]
# 2 workers and 2 * MIN_CHUNK_MATRICES matrices: two chunks, so the pool is used.
BATCH = 2 * batching.MIN_CHUNK_MATRICES
TIMEOUT = 60.0


@pytest.fixture
def two_torch_threads() -> Iterator[None]:
    """torch.get_num_threads() == 2 in this thread (and as the default) during the test."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sample(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.from_numpy(low_rank_plus_noise(BATCH, 8, 8, rank=2, noise=0.1, seed=seed))
    return a, torch.from_numpy(bernoulli_mask(a.shape, 0.6, seed=seed + 1))


def count_in_fresh_thread() -> int:
    """The thread count a thread adopts at its first torch op (torch's default)."""
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


class ChunkHook:
    """Wraps the estimators' map_matrices: each chunk first calls ``on_chunk(caller)``, then
    records (caller thread name, worker thread id, the worker's torch thread count)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, on_chunk: Callable[[str], None]) -> None:
        self.records: list[tuple[str, int, int]] = []
        real = batching.map_matrices

        def hooked(fn: Callable[..., torch.Tensor], a: torch.Tensor, mask: torch.Tensor, **kw: bool) -> torch.Tensor:
            caller = threading.current_thread().name

            def chunk(a_chunk: torch.Tensor, mask_chunk: torch.Tensor) -> torch.Tensor:
                on_chunk(caller)
                self.records.append((caller, threading.get_ident(), torch.get_num_threads()))
                return fn(a_chunk, mask_chunk)

            return real(chunk, a, mask, **kw)

        for module in ESTIMATOR_MODULES:
            monkeypatch.setattr(module, "map_matrices", hooked)


def run_threads(targets: dict[str, Callable[[], None]]) -> None:
    """Run each target in a new thread of that name; re-raise the first error."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as error:  # noqa: BLE001 - handed to the test thread
                errors.append(error)

        return run

    threads = [threading.Thread(target=guarded(t), name=name) for name, t in targets.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), f"thread {thread.name} did not finish"
    if errors:
        raise errors[0]


def test_thread_starting_during_a_call_keeps_its_count_and_uses_the_pool(two_torch_threads, monkeypatch):
    a, mask = sample(seed=0)
    expected = usvt(a, mask, rank=2)
    inside, release = threading.Event(), threading.Event()

    def on_chunk(caller: str) -> None:
        if caller == "first":  # hold the first call inside its pool
            inside.set()
            assert release.wait(TIMEOUT)

    hook = ChunkHook(monkeypatch, on_chunk)
    results: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    second_ident: list[int] = []

    def first() -> None:
        results["first"] = usvt(a, mask, rank=2)

    def second() -> None:
        try:
            second_ident.append(threading.get_ident())
            assert inside.wait(TIMEOUT)
            counts["at start"] = torch.get_num_threads()  # this thread's first torch op
            results["second"] = usvt(a, mask, rank=2)
            counts["after"] = torch.get_num_threads()
        finally:
            release.set()

    run_threads({"first": first, "second": second})
    assert counts == {"at start": 2, "after": 2}
    second_chunks = [ident for caller, ident, _ in hook.records if caller == "second"]
    assert len(second_chunks) == 2
    assert second_ident[0] not in second_chunks, "the second call ran its chunks itself, not on a pool"
    assert all(count == 1 for _, _, count in hook.records), hook.records
    torch.testing.assert_close(results["first"], expected, rtol=0, atol=0)
    torch.testing.assert_close(results["second"], expected, rtol=0, atol=0)
    assert torch.get_num_threads() == 2
    assert count_in_fresh_thread() == 2


def test_pool_threads_stay_single_threaded_when_another_call_ends(two_torch_threads, monkeypatch):
    # "short" starts its pool while "long" is inside its own; long then ends (and used to put
    # torch's default back to 2) before short's pool threads run their first torch op.
    a, mask = sample(seed=1)
    short_ready, long_inside = threading.Event(), threading.Event()
    release_long, long_done = threading.Event(), threading.Event()

    def on_chunk(caller: str) -> None:
        if caller == "long":
            long_inside.set()
            assert release_long.wait(TIMEOUT)
        else:
            release_long.set()
            assert long_done.wait(TIMEOUT)

    hook = ChunkHook(monkeypatch, on_chunk)

    def long() -> None:
        try:
            assert short_ready.wait(TIMEOUT)
            usvt(a, mask, rank=2)
        finally:
            long_done.set()

    def short() -> None:
        try:
            assert torch.get_num_threads() == 2  # this thread's first torch op, before long's call
            short_ready.set()
            assert long_inside.wait(TIMEOUT)
            usvt(a, mask, rank=2)
        finally:
            short_ready.set()
            release_long.set()

    run_threads({"long": long, "short": short})
    short_counts = [count for caller, _, count in hook.records if caller == "short"]
    assert short_counts == [1, 1], f"short's pool threads ran with {short_counts} torch threads"
    assert count_in_fresh_thread() == 2


def test_concurrent_callers_match_single_caller_and_restore_counts(two_torch_threads, monkeypatch):
    n_threads, rounds = 4, 4
    estimators = [lambda a, m: usvt(a, m, rank=3), lambda a, m: nuclear_norm(a, m, mu=0.5)]
    inputs = [sample(seed=10 + 2 * i) for i in range(n_threads)]
    expected = [[estimate(a, mask) for estimate in estimators] for a, mask in inputs]
    # A short pause at the start of every chunk keeps the calls of different threads
    # overlapping (and gives another caller time to change torch's default meanwhile).
    # Pauses differ by caller, so that one call ends while another's pool is starting.
    hook = ChunkHook(monkeypatch, lambda caller: time.sleep(0.001 * (1 + int(caller[-1]))))
    start = threading.Barrier(n_threads, timeout=TIMEOUT)
    results: dict[int, list[torch.Tensor]] = {i: [] for i in range(n_threads)}
    counts: dict[int, list[int]] = {i: [] for i in range(n_threads)}

    def caller(i: int) -> Callable[[], None]:
        def run() -> None:
            # This thread's first torch op, before any pool starts (the barrier waits for all):
            # a pool's start-up is the one moment when a first op would adopt 1 thread.
            counts[i].append(torch.get_num_threads())
            a, mask = inputs[i]
            for _ in range(rounds):
                start.wait()
                for estimate in estimators:
                    results[i].append(estimate(a, mask))
                    counts[i].append(torch.get_num_threads())

        return run

    run_threads({f"caller{i}": caller(i) for i in range(n_threads)})
    for i in range(n_threads):
        assert counts[i] == [2] * (1 + rounds * len(estimators)), f"caller {i}: {counts[i]}"
        for got, want in zip(results[i], expected[i] * rounds, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert len({ident for _, ident, _ in hook.records}) > 2  # several pools ran
    assert all(count == 1 for _, _, count in hook.records), "a pool thread ran with several torch threads"
    assert torch.get_num_threads() == 2
    assert count_in_fresh_thread() == 2
