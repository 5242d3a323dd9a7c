"""AutoAttack through the authors' package (pyautoattack), on the small trained Fashion-MNIST nets.

Checked: APGD-CE is at least as strong as our PGD at the same budget on a deterministic net
(the AutoAttack paper's claim); budget and box; repeatability under a seeded generator with
the caller's global RNG left alone; version "rand" on a MENet; the settings' validation; the
install hint when the package is missing; and a row of its own in ``evaluate``'s results.
"""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch
from conftest import ME_SETTINGS

from menet.attacks import PGD, AutoAttack, build_attack, eot
from menet.attacks.base import predict
from menet.defense import MatrixEstimation, MENet
from menet.evaluation import evaluate, format_table

EPS = 0.05


@pytest.fixture(scope="module")
def data(fashion_nets):
    return fashion_nets["images"].float() / 255, fashion_nets["labels"]


def accuracy(model, x, y) -> float:
    return (predict(model, x) == y).float().mean().item()


def apgd_ce(steps: int = 10, **settings) -> AutoAttack:
    return AutoAttack(eps=EPS, version="custom", attacks_to_run=("apgd-ce",), steps=steps, **settings)


def test_apgd_ce_is_at_least_as_strong_as_our_pgd(fashion_nets, data):
    # On 500 images: clean 79.0%, our PGD (10 steps of 0.01) 48.2%, APGD-CE (10 steps) 47.8%.
    x, y = data
    net = fashion_nets["vanilla"]
    ours = PGD(eps=EPS, step_size=0.01, steps=10)(net, x, y, generator=torch.Generator().manual_seed(0))
    theirs = apgd_ce()(net, x, y, generator=torch.Generator().manual_seed(0))
    clean, pgd, apgd = accuracy(net, x, y), accuracy(net, ours, y), accuracy(net, theirs, y)
    assert apgd < clean - 0.2, (clean, apgd)  # the comparison means something
    assert apgd <= pgd + 0.01, (pgd, apgd)  # APGD is no weaker than PGD (1 point slack over 500 images)
    assert float((theirs - x).abs().max()) <= EPS + 1e-6
    assert theirs.min() >= 0 and theirs.max() <= 1 and theirs.dtype == x.dtype


def test_a_seeded_generator_repeats_and_the_global_rng_is_left_alone(fashion_nets, data):
    x, y = data[0][:100], data[1][:100]
    net = fashion_nets["vanilla"]
    attack = apgd_ce(steps=5)
    torch.manual_seed(123)
    cpu_state = torch.get_rng_state()
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)  # where torch queues CUDA seeds before CUDA starts
    queued = dict(vars(tracker)) if tracker is not None else None
    first = attack(net, x, y, generator=torch.Generator().manual_seed(7))
    second = attack(net, x, y, generator=torch.Generator().manual_seed(7))
    other = attack(net, x, y, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)  # the start comes from the generator, not from a fixed seed
    assert torch.equal(torch.get_rng_state(), cpu_state)
    if tracker is not None:
        assert vars(tracker) == queued
    # without a generator the seed setting decides
    assert torch.equal(apgd_ce(steps=5, seed=3)(net, x, y), apgd_ce(steps=5, seed=3)(net, x, y))


def test_version_rand_runs_on_a_menet_within_budget(fashion_nets, data, caplog):
    x, y = data[0][:40], data[1][:40]
    model = MENet(fashion_nets["menet"], MatrixEstimation(**ME_SETTINGS, generator=torch.Generator().manual_seed(0)))
    attack = AutoAttack(eps=EPS, version="rand", steps=3, verbose=True)
    assert attack.eot == 20  # the version's EOT, recorded in the settings
    with caplog.at_level(logging.DEBUG, logger="auto-attack"):
        adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert "using rand version including apgd-ce, apgd-dlr" in caplog.text
    assert adv.shape == x.shape and float((adv - x).abs().max()) <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_quiet_by_default_and_the_trace_function_survives(fashion_nets, data, capsys):
    # AutoAttack's check for dynamic defenses replaces sys.settrace's function (coverage, debuggers use it).
    x, y = data[0][:8], data[1][:8]
    calls = []

    def tracer(frame, event, arg):
        calls.append(event)

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        apgd_ce(steps=1)(fashion_nets["vanilla"], x, y)
        after = sys.gettrace()
    finally:
        sys.settrace(previous)
    assert after is tracer
    assert capsys.readouterr().out == ""


def test_settings_are_validated_and_compose():
    assert build_attack("autoattack", version="custom", attacks_to_run=["apgd-ce"]).attacks_to_run == ("apgd-ce",)
    assert AutoAttack().eot == 1 and AutoAttack(version="rand").eot == 20 and AutoAttack(version="rand", eot=4).eot == 4
    assert eot(AutoAttack(version="rand"), 5).eot == 5
    json.dumps(apgd_ce().settings())
    with pytest.raises(ValueError, match="unknown AutoAttack version 'fast'; valid: standard, rand"):
        AutoAttack(version="fast")
    with pytest.raises(ValueError, match='goes with version="custom"'):
        AutoAttack(version="custom")
    with pytest.raises(ValueError, match='goes with version="custom"'):
        AutoAttack(version="rand", attacks_to_run=("apgd-ce",))
    with pytest.raises(ValueError, match="must name some of apgd-ce"):
        AutoAttack(version="custom", attacks_to_run=("pgd",))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        AutoAttack(steps=0)


def test_iterations_set_as_apgd_would_derive_them():
    # AutoAttack builds its APGD with 100 iterations; the attack resets the iteration count and
    # the step-size checkpoints that APGD's constructor derives from it.
    from pyautoattack.autopgd_base import APGDAttack

    from menet.attacks.autoattack import _set_apgd_iterations

    names = ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr")
    for steps in (1, 7, 40, 250):
        built = APGDAttack(torch.nn.Identity(), n_iter=steps, eps=EPS)
        reset = APGDAttack(torch.nn.Identity(), n_iter=100, eps=EPS)
        _set_apgd_iterations(reset, steps)
        assert {n: getattr(reset, n) for n in names} == {n: getattr(built, n) for n in names}


def test_missing_package_names_the_extra(monkeypatch, data):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # import fails as if not installed
    x, y = data[0][:2], data[1][:2]
    with pytest.raises(ImportError, match=r'pip install "menet\[autoattack\]"'):
        apgd_ce()(torch.nn.Flatten(), x, y)


def test_its_number_stands_beside_ours_in_evaluate(fashion_nets):
    images, labels = fashion_nets["images"][:100], fashion_nets["labels"][:100]
    attacks = {"pgd": PGD(eps=EPS, step_size=0.01, steps=10), "autoattack": apgd_ce()}
    result = evaluate(fashion_nets["vanilla"], images, labels, attacks, seed=0, batch_size=50)
    summary = result["summary"]
    assert set(summary) == {"clean", "pgd", "autoattack", "worst case"}
    assert summary["autoattack"]["n"] == 100
    assert summary["autoattack"]["robust_all_draws"] < summary["clean"]["robust_all_draws"] - 0.2
    assert result["max_linf"]["autoattack"] <= EPS + 1e-6
    assert result["settings"]["attacks"]["autoattack"]["attacks_to_run"] == ("apgd-ce",)
    json.dumps(result)
    assert "| autoattack | autoattack, eps 0.05, version custom" in format_table(result)
