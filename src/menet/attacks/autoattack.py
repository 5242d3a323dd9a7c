"""AutoAttack (Croce and Hein, ICML 2020) through its authors' own package, ``pyautoattack``.

The field's standard robustness evaluation, so that a number stands beside ours that a reader
can compare with RobustBench-style reports. The attack is the authors' code, not a copy:
``pyautoattack`` 0.2.x, an optional extra (``pip install "menet[autoattack]"``), imported
only when the attack runs.

Versions (AutoAttack's own):

- ``"standard"``: APGD-CE, APGD-T (targeted DLR, 9 targets), FAB-T, Square (5000 queries);
  the RobustBench leaderboard's evaluation, for deterministic models.
- ``"rand"``: APGD-CE and APGD-DLR, each gradient averaged over 20 forward passes (EOT), as
  the AutoAttack paper prescribes for randomised defenses. The right one for ME-Net, whose
  model draws fresh masks in every forward pass.
- ``"plus"``: all six attacks with more restarts.
- ``"custom"``: the attacks named in ``attacks_to_run``.

How it is run: on the model unchanged (it maps [0, 1] images to logits; a MENet draws fresh
masks in each forward pass and lets gradients through by its gradient mode, BPDA or exact),
as a cascade over the given batch in chunks of ``max_batch``, with ``norm="Linf"`` and
``device`` the images' device. Like AutoAttack, the result holds per example the first point
that one forward pass misclassified, or the clean image where no attack succeeded; the
evaluation rescoring it over several mask draws is what makes the number honest for ME-Net.

Randomness: every APGD, FAB and Square run reseeds torch's *global* RNGs
(``torch.random.manual_seed`` and ``torch.cuda.random.manual_seed``) with AutoAttack's seed
and draws its random starts and squares from the CPU one. So the call forks the global RNGs (the caller's state is restored
afterwards) and picks the seed: drawn from the call's ``generator`` when there is one (so
the evaluation's per-batch keyed generators give each batch its own, repeatable starts),
else the ``seed`` setting.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from menet.attacks.base import Attack, check_number, project_linf, register_attack

VERSIONS = ("standard", "rand", "plus", "custom")
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")  # AutoAttack's names
_INSTALL = 'AutoAttack needs the pyautoattack package: pip install "menet[autoattack]"'


@register_attack
@dataclasses.dataclass(frozen=True)
class AutoAttack(Attack):
    """AutoAttack (Croce and Hein, 2020), L-inf, run by its authors' package ``pyautoattack``.

    eps: L-inf budget (default 8/255); version: "standard" (APGD-CE, APGD-T, FAB-T, Square),
    "rand" (APGD-CE and APGD-DLR with EOT over 20 draws: the one for randomised models such
    as ME-Net), "plus", or "custom" (the attacks in ``attacks_to_run``, a tuple of AutoAttack
    names: apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square; only with "custom"); steps:
    iterations of each APGD and FAB run (100, AutoAttack's); eot: gradient samples per APGD
    step (None: the version's, 20 for "rand" and 1 otherwise; resolved when built, so the
    result file records it); seed: AutoAttack's seed (0) for a call without a generator,
    which otherwise supplies it; max_batch: images per AutoAttack batch (250, its default);
    verbose: AutoAttack's progress lines, at DEBUG on the "auto-attack" logger (False).
    Needs ``pip install "menet[autoattack]"``.
    Example: ``AutoAttack(eps=8/255, version="rand")(menet_model, x, y, generator=g)``.
    """

    name = "autoattack"
    version: str = "standard"
    attacks_to_run: tuple[str, ...] | None = None
    steps: int = 100
    eot: int | None = None
    seed: int = 0
    max_batch: int = 250
    verbose: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.version not in VERSIONS:
            raise ValueError(f"unknown AutoAttack version {self.version!r}; valid: {', '.join(VERSIONS)}")
        if self.attacks_to_run is not None:
            names = (self.attacks_to_run,) if isinstance(self.attacks_to_run, str) else tuple(self.attacks_to_run)
            object.__setattr__(self, "attacks_to_run", names)  # a list from YAML or --set: keep it hashable
            unknown = [n for n in names if n not in ATTACKS]
            if unknown or not names:
                raise ValueError(f"attacks_to_run must name some of {', '.join(ATTACKS)}; got {list(names)}")
        if (self.version == "custom") != (self.attacks_to_run is not None):
            raise ValueError('attacks_to_run goes with version="custom" (and only with it), '
                             f"got version {self.version!r} and attacks_to_run {self.attacks_to_run!r}")
        if self.eot is None:
            object.__setattr__(self, "eot", 20 if self.version == "rand" else 1)
        check_number("steps", self.steps, low=1, integer=True)
        check_number("eot", self.eot, low=1, integer=True)
        check_number("seed", self.seed, low=0, integer=True)
        check_number("max_batch", self.max_batch, low=1, integer=True)
        if not isinstance(self.verbose, bool):
            raise TypeError(f"verbose must be a bool, got {self.verbose!r}")

    def run(self, model: nn.Module, images: Tensor, labels: Tensor, generator: torch.Generator | None) -> Tensor:
        try:
            from pyautoattack import AutoAttack as Adversary
        except ImportError as err:
            raise ImportError(_INSTALL) from err
        seed = self.seed if generator is None else int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        with _forked_global_rng(images.device), _keep_trace_function():
            torch.default_generator.manual_seed(seed)  # AutoAttack reseeds before each attack; this covers its checks
            adversary = Adversary(model, norm="Linf", eps=self.eps, version=self.version, seed=seed, device=images.device,
                                  attacks=list(self.attacks_to_run) if self.attacks_to_run is not None else None)
            adversary.verbose = self.verbose  # its sub-attacks are built quiet; this gates its DEBUG log lines
            for apgd in (adversary.apgd, adversary.apgd_targeted):
                _set_apgd_iterations(apgd, self.steps)
                apgd.eot_iter = self.eot
            adversary.fab.n_iter = self.steps
            adv, _ = adversary.run_standard_evaluation(images, labels, batch_size=self.max_batch)
        # AutoAttack's points lie in the ball already (it clips to x +- eps and [0, 1]); it works
        # in float32, so for other dtypes projecting again keeps the budget exact in the images' dtype.
        return project_linf(adv.to(images.dtype), images, self.eps)


def _set_apgd_iterations(apgd: object, steps: int) -> None:
    """Set an APGD attack's iterations and the step-size checkpoints that APGD derives from
    them in its constructor (pyautoattack's ``APGDAttack.__init__``; setting ``n_iter`` alone
    would keep the checkpoints of 100 iterations)."""
    apgd.n_iter = apgd.n_iter_orig = steps
    apgd.n_iter_2 = max(int(0.22 * steps), 1)
    apgd.n_iter_min = max(int(0.06 * steps), 1)
    apgd.size_decr = max(int(0.03 * steps), 1)


@contextmanager
def _forked_global_rng(device: torch.device) -> Iterator[None]:
    """Restore torch's global RNG states after the block: the CPU one, and the CUDA ones that
    ``torch.cuda.manual_seed`` can reach (the current device, and the images' device)."""
    cuda_devices: set[int] = set()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_devices.add(torch.cuda.current_device())
        if device.type == "cuda":
            cuda_devices.add(device.index if device.index is not None else torch.cuda.current_device())
    # With CUDA not yet initialised, torch.cuda.manual_seed only queues the seed for a later
    # initialisation (torch.cuda._lazy_seed_tracker): undo that too, or the caller's CUDA RNG
    # would start from AutoAttack's seed once something initialises CUDA.
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)
    queued = dict(vars(tracker)) if tracker is not None and not torch.cuda.is_initialized() else None
    try:
        with torch.random.fork_rng(devices=sorted(cuda_devices), device_type="cuda"):
            yield
    finally:
        if queued is not None:
            vars(tracker).update(queued)


@contextmanager
def _keep_trace_function() -> Iterator[None]:
    """Restore the trace function: AutoAttack's check for dynamic defenses sets its own with
    ``sys.settrace`` and then clears it, which would end a coverage run or a debugger."""
    previous = sys.gettrace()
    try:
        yield
    finally:
        sys.settrace(previous)
