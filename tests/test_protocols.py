"""Named protocols (issue 16, item 4): each resolves to its documented settings, flags override
its fields, and the result records the protocol and every resolved setting.

The expected settings are the sources' own numbers, written out here from the sources (the
paper's Sec. 3.3, Tramèr et al.'s notebook, AutoAttack's 'rand' version), not read back from
the code under test.
"""

from __future__ import annotations

import json

import pytest

from menet.cli import main
from menet.protocols import ProtocolError, describe_protocols, protocol_names, resolve


def test_the_four_protocols_exist():
    assert {"paper", "tramer2020", "autoattack-rand", "strong"} <= set(protocol_names())


@pytest.mark.parametrize(("dataset", "eps", "step"), [("cifar10", 8 / 255, 2 / 255), ("svhn", 8 / 255, 2 / 255),
                                                      ("tiny-imagenet", 8 / 255, 2 / 255), ("mnist", 0.3, 0.01)])
def test_paper_is_1000_bpda_steps_at_the_papers_budget(dataset, eps, step):
    resolved = resolve("paper", dataset)
    assert resolved.attack == {"attack": "pgd", "eps": pytest.approx(eps), "step_size": pytest.approx(step),
                               "steps": 1000, "eot": 1}
    assert resolved.draws == 1 and resolved.images is None and resolved.converge is None


def test_paper_has_no_fashion_mnist_budget_unless_given():
    with pytest.raises(ProtocolError, match="no L-inf budget for 'fashion-mnist'.*--eps"):
        resolve("paper", "fashion-mnist")
    with pytest.raises(ProtocolError, match="no step size.*--step-size"):
        resolve("paper", "fashion-mnist", eps=0.1)
    assert resolve("paper", "fashion-mnist", eps=0.1, step_size=0.01).attack["steps"] == 1000


def test_tramer2020_is_their_notebooks_settings():
    resolved = resolve("tramer2020", "cifar10")
    eps = 8 / 255
    assert resolved.attack == {"attack": "pgd", "eps": pytest.approx(eps), "step_size": pytest.approx(5 * eps / 200),
                               "steps": 200, "eot": 41, "rank_samples": 1}  # x_best: highest loss averaged over 41 passes
    assert resolved.draws == 1 and resolved.images == 1000 and resolved.converge is None
    # the step size is their rule 5 eps / steps: overriding the steps re-derives it, overriding eps too
    assert resolve("tramer2020", "cifar10", steps=100).attack["step_size"] == pytest.approx(5 * eps / 100)
    assert resolve("tramer2020", "cifar10", eps=4 / 255).attack["step_size"] == pytest.approx(5 * 4 / 255 / 200)


def test_autoattack_rand_is_apgd_with_20_eot_samples():
    resolved = resolve("autoattack-rand", "cifar10")
    assert resolved.attack == {"attack": "autoattack", "eps": pytest.approx(8 / 255), "version": "rand", "steps": 100,
                               "eot": 20}
    assert resolved.draws == 1
    with pytest.raises(ProtocolError, match="no step size"):
        resolve("autoattack-rand", "cifar10", step_size=0.01)


def test_strong_converges_with_eot_and_draws():
    resolved = resolve("strong", "cifar10")
    assert resolved.attack["eot"] == 10 and resolved.draws == 5 and resolved.attack["attack"] == "pgd"
    assert (resolved.converge, resolved.converge_cap) == (25, 400) and resolved.attack["steps"] == 25
    eps = 8 / 255
    assert resolved.attack["step_size"] == pytest.approx(2.5 * eps / 25)
    assert resolved.attack_at(100)["step_size"] == pytest.approx(2.5 * eps / 100)
    assert resolve("strong", "cifar10", converge=False, steps=50).converge is None
    assert resolve("strong", "cifar10", converge=10, converge_cap=40).converge == 10


def test_overrides_win_and_are_recorded():
    resolved = resolve("paper", "cifar10", steps=40, draws=3, eot=4, images=100)
    assert resolved.attack["steps"] == 40 and resolved.attack["eot"] == 4 and resolved.draws == 3 and resolved.images == 100
    record = resolved.record()
    assert record["name"] == "paper" and record["overridden"] == ["draws", "eot", "images", "steps"]
    assert record["settings"]["attack"]["steps"] == 40 and "ICML 2019" in record["reference"]
    assert set(record["sources"]) >= {"attack", "steps", "eps", "step_size", "eot", "draws", "images"}
    with pytest.raises(ProtocolError, match="unknown protocol 'papr'; valid: paper"):
        resolve("papr", "cifar10")
    with pytest.raises(ProtocolError, match="cannot take samples"):
        resolve("paper", "cifar10", samples=3)


def test_list_protocols_prints_settings_and_sources(capsys):
    assert main(["attack", "--list-protocols"]) == 0
    out = capsys.readouterr().out
    assert out == describe_protocols()
    for name in protocol_names():
        assert f"\n{name}: " in "\n" + out
    assert "num_steps = 200" in out and "eot_iter = 20" in out and "Sec. 3.3" in out and "Sec. 3.2" in out


def test_protocol_from_the_cli_records_the_protocol_and_every_setting(tmp_path, capsys):
    from test_cli import _tiny_runs

    run, _ = _tiny_runs(tmp_path)  # a Fashion-MNIST run: the budget must be given
    assert main(["attack", str(run), "--protocol", "tramer2020", "--quiet"]) == 2
    assert "--eps" in capsys.readouterr().err and not (run / "eval").exists()
    assert main(["attack", str(run), "--protocol", "paper", "--attack", "pgd", "--eps", "0.1", "--quiet"]) == 2
    assert "--protocol fixes the attack" in capsys.readouterr().err
    assert main(["attack", str(run), "--protocol", "tramer2020", "--eps", "0.1", "--steps", "2", "--eot", "2", "--n", "8",
                 "--batch-size", "8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Protocol: tramer2020" in out and "overridden: eot, eps, images, steps" in out
    result = json.loads((run / "eval" / "tramer2020.json").read_text())
    attack = result["settings"]["attacks"]["tramer2020"]
    assert attack["steps"] == 2 and attack["eot"] == 2 and attack["step_size"] == pytest.approx(5 * 0.1 / 2)
    assert result["settings"]["draws"] == 1 and result["settings"]["n"] == 8
    assert result["protocol"]["name"] == "tramer2020" and result["protocol"]["settings"]["images"] == 8
    assert main(["attack", str(run), "--protocol", "strong", "--eps", "0.1", "--steps", "1", "--converge-cap", "2",
                 "--eot", "2", "--draws", "2", "--n", "8", "--batch-size", "8", "--quiet"]) == 0
    result = json.loads((run / "eval" / "strong.json").read_text())
    assert result["settings"]["draws"] == 2 and result["convergence"]["start"] == 1 and result["convergence"]["cap"] == 2
    assert result["protocol"]["settings"]["converge"] == 1


def test_protocol_from_python_on_a_model_with_a_known_answer():
    import torch
    from test_convergence import SumModel, _images, _robust_by_hand

    from menet.protocols import evaluate_protocol

    values = torch.linspace(70, 250, 60).round().numpy()
    images, labels = _images(values), torch.zeros(len(values), dtype=torch.int64)
    # tramer2020 at eps 0.1 and 4 steps of 5 * 0.1 / 4: from any start in the ball the pixels end eps below the image
    result = evaluate_protocol(SumModel(1.0), images, labels, "tramer2020", "fashion-mnist", eps=0.1, steps=4, eot=1,
                               images=50)
    assert result["settings"]["n"] == 50 and result["protocol"]["overridden"] == ["eot", "eps", "images", "steps"]
    expected = _robust_by_hand(values[:50], 1.0, 0.1, 5 * 0.1 / 4, 4)
    assert result["summary"]["tramer2020"]["robust_all_draws"] == pytest.approx(expected)


def test_step_rules_are_recorded_and_bad_overrides_are_refused():
    assert resolve("tramer2020", "cifar10").record()["settings"]["step_rule"] == "5 * eps / steps"
    assert resolve("strong", "cifar10").record()["settings"]["step_rule"] == "2.5 * eps / steps"
    assert resolve("paper", "cifar10").record()["settings"]["step_rule"] is None
    assert "step_size 5 * eps / steps" in describe_protocols()
    for bad in ({"steps": 0}, {"eot": 0}, {"draws": 0}, {"images": -5}, {"converge_cap": 0}, {"converge": 0}):
        with pytest.raises(ProtocolError, match=">= 1"):
            resolve("strong", "cifar10", **bad)
    with pytest.raises(ProtocolError, match="a converge cap needs converging on"):
        resolve("paper", "cifar10", converge_cap=400)
    with pytest.raises(ProtocolError, match="below the first step count"):
        resolve("strong", "cifar10", converge_cap=10)
