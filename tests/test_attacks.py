"""The gradient attacks, checked against torchattacks and against each other on trained nets.

Independent references: torchattacks 3.5.1 (FGSM, PGD) on the same network and images; the
contract (budget, box, eval mode) for every registered attack; and the orderings the paper's
evaluation and its critics rely on (white-box BPDA beats transfer; EOT beats plain BPDA).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import ME_SETTINGS

from menet.attacks import FGSM, PGD, Transfer, attack_names, build_attack, eot, get_attack_class, transfer
from menet.attacks.base import predict
from menet.defense import MatrixEstimation, MENet


@pytest.fixture(scope="module")
def data(fashion_nets):
    return fashion_nets["images"].float() / 255, fashion_nets["labels"]


def accuracy(model, x, y, draws: int = 1) -> float:
    return sum((predict(model, x) == y).float().mean().item() for _ in range(draws)) / draws


def test_fgsm_equals_torchattacks(fashion_nets, data):
    import torchattacks

    x, y = data
    net = fashion_nets["vanilla"]
    ours = FGSM(eps=0.1)(net, x, y)
    theirs = torchattacks.FGSM(net, eps=0.1)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert accuracy(net, ours, y) < accuracy(net, x, y) - 0.3


def test_pgd_matches_torchattacks_robust_accuracy(fashion_nets, data):
    import torchattacks

    x, y = data
    net = fashion_nets["vanilla"]
    torch.manual_seed(0)  # torchattacks draws its random start from torch's global RNG
    theirs = accuracy(net, torchattacks.PGD(net, eps=0.05, alpha=0.01, steps=10, random_start=True)(x, y), y)
    last = accuracy(net, PGD(eps=0.05, step_size=0.01, steps=10, keep_best=False)(net, x, y, generator=torch.Generator().manual_seed(0)), y)
    best = accuracy(net, PGD(eps=0.05, step_size=0.01, steps=10)(net, x, y, generator=torch.Generator().manual_seed(0)), y)
    clean = accuracy(net, x, y)
    assert theirs < clean - 0.2  # the comparison means something
    assert abs(last - theirs) <= 0.01, (last, theirs)  # same algorithm: within 1 point over 500 images
    assert best <= last  # keeping the most adversarial iterate never helps the model


def test_cw_loss_is_the_margin_and_attacks(fashion_nets, data):
    from menet.attacks.base import margin_loss

    logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    torch.testing.assert_close(margin_loss(logits, torch.tensor([1, 0])), torch.tensor([2.0 - 5.0, 3.0 - 0.0]))
    x, y = data
    net = fashion_nets["vanilla"]
    adv = PGD(eps=0.05, step_size=0.01, steps=10, loss="cw")(net, x, y, generator=torch.Generator().manual_seed(0))
    assert accuracy(net, adv, y) < accuracy(net, x, y) - 0.2


def test_restarts_never_weaken_pgd(fashion_nets, data):
    x, y = data
    net = fashion_nets["vanilla"]
    one = PGD(eps=0.03, step_size=0.01, steps=5)(net, x, y, generator=torch.Generator().manual_seed(3))
    three = PGD(eps=0.03, step_size=0.01, steps=5, restarts=3)(net, x, y, generator=torch.Generator().manual_seed(3))
    assert accuracy(net, three, y) <= accuracy(net, one, y)


SMALL = {  # quick settings per attack for the contract test
    "pgd": {"steps": 3}, "fgsm": {}, "approx_input": {"steps": 3}, "projected_bpda": {"steps": 3, "rank": 3},
    "boundary": {"steps": 5, "init_attempts": 20}, "spsa": {"steps": 2, "samples": 16},
    "autoattack": {"version": "custom", "attacks_to_run": ("apgd-ce",), "steps": 3},
}


@pytest.mark.parametrize("name", attack_names())
def test_every_attack_keeps_the_budget_and_the_box_and_restores_the_mode(fashion_nets, data, name):
    x, y = data[0][:40], data[1][:40]
    network = fashion_nets["menet"].train()  # attacks must evaluate in eval mode and restore this
    model = MENet(network, MatrixEstimation(**ME_SETTINGS, generator=torch.Generator().manual_seed(0)))
    assert name in SMALL, f"add quick settings for the new attack {name!r}"
    attack = build_attack(name, eps=0.05, **SMALL[name])
    adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert float((adv - x).abs().max()) <= 0.05 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert network.training  # restored
    network.eval()


def test_white_box_bpda_beats_transfer_and_eot_beats_bpda(fashion_nets, data):
    # A pure ME-Net model (the paper's claim is that transfer attacks barely hurt it): white-box
    # BPDA PGD must lower its accuracy more than PGD transferred from an independent vanilla copy,
    # and averaging gradients over masks (EOT) at least as much as BPDA alone. Accuracy is the mean
    # over 5 scoring draws on 500 images; same attack seed throughout.
    x, y = data
    model = MENet(fashion_nets["menet"], MatrixEstimation(**ME_SETTINGS, generator=torch.Generator().manual_seed(1)))
    pgd = PGD(eps=0.15, step_size=0.02, steps=10)
    results = {}
    for label, attack in {"bpda": pgd, "transfer": transfer(fashion_nets["copy"], pgd), "eot": eot(pgd, 4)}.items():
        adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
        results[label] = accuracy(model, adv, y, draws=5)
    clean = accuracy(model, x, y, draws=5)
    assert results["transfer"] < clean - 0.2, results
    assert results["bpda"] < results["transfer"] - 0.02, results
    assert results["eot"] <= results["bpda"], results


def test_eot_and_transfer_compose_and_validate(fashion_nets):
    pgd = PGD(steps=7)
    assert eot(pgd, 5).eot == 5 and eot(pgd, 5).steps == 7
    with pytest.raises(TypeError, match="uses none"):
        eot(build_attack("boundary"), 3)
    with pytest.raises(ValueError, match=">= 1"):
        eot(pgd, 0)
    wrapped = transfer(fashion_nets["copy"], eot(pgd, 2))
    assert isinstance(wrapped, Transfer) and wrapped.eps == pgd.eps
    assert wrapped.settings() == {"attack": "transfer", "of": {**eot(pgd, 2).settings()}}


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="unknown attack 'pgdd'; valid: .*pgd"):
        build_attack("pgdd")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        PGD(eps=-0.1)
    with pytest.raises(TypeError, match="unknown setting"):
        build_attack("fgsm", steps=3)
    with pytest.raises(ValueError, match="unknown loss"):
        PGD(loss="hinge")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PGD()(torch.nn.Flatten(), torch.full((2, 1, 4, 4), 2.0), torch.zeros(2, dtype=torch.int64))
    for name in attack_names():  # every attack documents itself (menet attack --list)
        cls = get_attack_class(name)
        assert cls.__doc__ and "eps" in {f.name for f in dataclasses.fields(cls)}


def test_restarts_keep_earlier_successes_without_best_iterate(fashion_nets, data):
    x, y = data
    net = fashion_nets["vanilla"]
    settings = dict(eps=0.05, step_size=0.02, steps=1, keep_best=False)  # one step: the random start matters
    one = PGD(**settings)(net, x, y, generator=torch.Generator().manual_seed(3))
    five = PGD(**settings, restarts=5)(net, x, y, generator=torch.Generator().manual_seed(3))
    assert accuracy(net, five, y) < accuracy(net, one, y)  # later restarts never undo an earlier success


def test_best_iterate_on_a_randomised_model_is_ranked_by_loss_alone():
    """One pass's misclassification of a randomised model is one mask draw's luck: it must not pin
    a weak (low-loss) iterate over a stronger one; deterministic models rank fooled first."""
    from menet.attacks.pgd import _better

    loss, fooled = torch.tensor([2.0, 0.5]), torch.tensor([False, False])
    best_loss, best_fooled = torch.tensor([1.0, 1.0]), torch.tensor([True, False])
    assert _better(loss, fooled, best_loss, best_fooled).tolist() == [False, False]
    assert _better(loss, fooled, best_loss, best_fooled, by_loss=True).tolist() == [True, False]
