"""evaluate(): scoring, draws, cascade, files, resume."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from menet.attacks.base import Attack
from menet.defense import MatrixEstimation
from menet.evaluation import ResultStore, evaluate, format_table, read_result
from menet.stats import clopper_pearson


class CoinModel(nn.Module):
    """Class 1 when its mask keeps more than half the pixels, else class 0: on 5 x 5 images
    (25 pixels, p = 1/2) a randomised model that is right half the time on label-1 images,
    independently per draw."""

    def __init__(self) -> None:
        super().__init__()
        self.me = MatrixEstimation("usvt", p=0.5)
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        kept = self.me.draw_mask(x).flatten(1).float().mean(1)
        return torch.stack([0.5 - kept, kept - 0.5], 1) + 0 * self.anchor


@dataclasses.dataclass(frozen=True)
class ZeroOut(Attack):
    """Test attack: lowers pixel (0, 0) by eps."""

    name = "zero_out"

    def run(self, model, images, labels, generator):
        adv = images.clone()
        adv[:, :, 0, 0] = (adv[:, :, 0, 0] - self.eps).clamp(0, 1)
        return adv


class PixelModel(nn.Module):
    """Deterministic: predicts 1 if pixel (0, 0) > 0.5 else 0."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        v = x[:, 0, 0, 0]
        return torch.stack([0.5 - v, v - 0.5], 1) + 0 * self.anchor


def pixel_data(values):
    images = torch.zeros(len(values), 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(values, dtype=torch.uint8)
    return images


def test_deterministic_accuracies_per_attack_and_worst_case():
    # pixel values 200 (class 1, robust to a 0.1 push: 200/255 - 0.1 > 0.5), 140 (class 1, broken
    # by it: 140/255 - 0.1 < 0.5), 50 (class 0, correct, stays), 50 labelled 1 (wrong from the start)
    images = pixel_data([200, 140, 50, 50])
    labels = torch.tensor([1, 1, 0, 1])
    result = evaluate(PixelModel(), images, labels, {"small": ZeroOut(eps=0.01), "big": ZeroOut(eps=0.1)}, batch_size=3)
    s = result["summary"]
    assert s["clean"]["robust_all_draws"] == 0.75
    assert s["small"]["robust_all_draws"] == 0.75 and s["big"]["robust_all_draws"] == 0.5
    assert s["worst case"]["robust_all_draws"] == 0.5
    assert result["outcomes"]["big"] == [[1, 0, 1, 0]]
    cascade = evaluate(PixelModel(), images, labels, {"small": ZeroOut(eps=0.01), "big": ZeroOut(eps=0.1)}, cascade=True)
    assert cascade["outcomes"]["small"] == [[1, 1, 1, None]]  # the clean-wrong example is not attacked
    assert cascade["summary"]["worst case"]["robust_all_draws"] == 0.5


def test_multi_draw_scoring_counts_an_example_only_if_correct_in_every_draw():
    images = torch.zeros(400, 1, 5, 5, dtype=torch.uint8)
    labels = torch.ones(400, dtype=torch.int64)
    result = evaluate(CoinModel(), images, labels, {}, draws=3, seed=5, batch_size=100)
    clean = result["outcomes"]["clean"]
    assert len(clean) == 3 and all(len(row) == 400 for row in clean)
    # independent of the summary code: recount from the per-example outcomes
    all_draws = sum(all(clean[d][i] for d in range(3)) for i in range(400)) / 400
    assert result["summary"]["clean"]["robust_all_draws"] == all_draws
    assert result["summary"]["clean"]["robust_mean_over_draws"] == pytest.approx(sum(map(sum, clean)) / 1200)
    # Each draw is a fair coin per example, independent across draws: about 1/2 and 1/8.
    assert 0.42 < result["summary"]["clean"]["robust_mean_over_draws"] < 0.58
    assert 0.08 < all_draws < 0.17
    again = evaluate(CoinModel(), images, labels, {}, draws=3, seed=5, batch_size=100)
    assert again["outcomes"] == result["outcomes"]  # seeded
    other = evaluate(CoinModel(), images, labels, {}, draws=3, seed=6, batch_size=100)
    assert other["outcomes"] != result["outcomes"]


def test_warns_about_a_randomised_model_scored_once(caplog):
    images, labels = pixel_data([0] * 8), torch.ones(8, dtype=torch.int64)
    with caplog.at_level("WARNING"):
        result = evaluate(CoinModel(), images, labels, {"z": ZeroOut(eps=0.01)})
    assert any("randomised" in w for w in result["warnings"]) and "randomised" in caplog.text


def test_a_killed_evaluation_resumes_to_the_same_file(tmp_path, monkeypatch, fashion_nets):
    from menet.attacks import PGD

    model = nn.Sequential(fashion_nets["menet"])
    me_model = __import__("menet.defense", fromlist=["MENet"]).MENet(model, MatrixEstimation("usvt", p=0.5, rank=8))
    images, labels = fashion_nets["images"][:40], fashion_nets["labels"][:40]
    attacks = {"pgd": PGD(eps=0.1, step_size=0.02, steps=3)}
    kwargs = dict(draws=2, seed=3, batch_size=8)
    evaluate(me_model, images, labels, attacks, store=ResultStore(tmp_path / "a", "t"), **kwargs)

    saved = []
    original = ResultStore.save_batch

    def killed_after_two(self, outcome):
        if len(saved) == 2:
            raise KeyboardInterrupt
        saved.append(outcome.index)
        original(self, outcome)

    monkeypatch.setattr(ResultStore, "save_batch", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        evaluate(me_model, images, labels, attacks, store=ResultStore(tmp_path / "b", "t"), **kwargs)
    monkeypatch.setattr(ResultStore, "save_batch", original)
    assert not (tmp_path / "b" / "t.json").exists() and len(list((tmp_path / "b" / ".t.partial").glob("batch-*"))) == 2
    with pytest.raises(FileExistsError, match="--resume"):
        evaluate(me_model, images, labels, attacks, store=ResultStore(tmp_path / "b", "t"), **kwargs)
    with pytest.raises(ValueError, match="other settings"):
        evaluate(me_model, images, labels, attacks, store=ResultStore(tmp_path / "b", "t", resume=True), **{**kwargs, "seed": 4})
    evaluate(me_model, images, labels, attacks, store=ResultStore(tmp_path / "b", "t", resume=True), **kwargs)
    a, b = (read_result(tmp_path / d / "t.json") for d in "ab")
    for result in (a, b):
        result.pop("timing")
    assert a == b
    assert (tmp_path / "a" / "t.md").read_text().split("| seconds |")[0] == (tmp_path / "b" / "t.md").read_text().split("| seconds |")[0]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["t.json", "t.md"]  # no partial files left
    assert json.loads((tmp_path / "b" / "t.json").read_text())["settings"]["seed"] == 3


def test_resuming_a_finished_evaluation_does_no_work(tmp_path):
    images, labels = pixel_data([200, 140, 50, 50]), torch.tensor([1, 1, 0, 1])
    attacks = {"big": ZeroOut(eps=0.1)}
    first = evaluate(PixelModel(), images, labels, attacks, store=ResultStore(tmp_path, "t"))
    calls = []

    class Counting(ZeroOut):
        def run(self, *args):
            calls.append(1)
            return super().run(*args)

    again = evaluate(PixelModel(), images, labels, {"big": Counting(eps=0.1)}, store=ResultStore(tmp_path, "t", resume=True))
    assert calls == [] and again["summary"] == first["summary"]


def test_robust_accuracy_never_exceeds_clean():
    """An 'attack' that fixes a misclassified example earns the model nothing (no cascade)."""

    @dataclasses.dataclass(frozen=True)
    class Fixer(Attack):
        name = "fixer"

        def run(self, model, images, labels, generator):
            adv = images.clone()
            adv[:, :, 0, 0] = (adv[:, :, 0, 0] + self.eps).clamp(0, 1)
            return adv

    images, labels = pixel_data([120, 200]), torch.tensor([1, 1])  # 120/255 + 0.1 > 0.5: fixed by the push
    result = evaluate(PixelModel(), images, labels, {"up": Fixer(eps=0.1)})
    assert result["outcomes"]["up"] == [[1, 1]]  # raw outcomes are kept as scored...
    assert result["summary"]["clean"]["robust_all_draws"] == 0.5
    assert result["summary"]["up"]["robust_all_draws"] == 0.5  # ...but robust needs clean-correct too
    assert result["summary"]["worst case"]["robust_all_draws"] == 0.5


def test_an_attack_returning_nan_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Broken(Attack):
        name = "broken"

        def run(self, model, images, labels, generator):
            return torch.full_like(images, float("nan"))

    with pytest.raises(RuntimeError, match="NaN"):
        evaluate(PixelModel(), pixel_data([1, 2]), torch.tensor([0, 0]), {"b": Broken(eps=0.1)})


def test_resume_refuses_other_inputs_and_sharding_needs_a_store(tmp_path):
    images, labels = pixel_data([200, 140]), torch.tensor([1, 1])
    attacks = {"big": ZeroOut(eps=0.1)}
    evaluate(PixelModel(), images, labels, attacks, store=ResultStore(tmp_path, "t"), inputs={"model": "aaa", "offset": 0})
    with pytest.raises(ValueError, match="other settings"):  # other weights under the same tag
        evaluate(PixelModel(), images, labels, attacks, store=ResultStore(tmp_path, "t", resume=True), inputs={"model": "bbb", "offset": 0})
    with pytest.raises(ValueError, match="needs a ResultStore"):
        evaluate(PixelModel(), images, labels, attacks, rank=0, world=2)


def test_every_accuracy_carries_its_intervals(tmp_path):
    images, labels = pixel_data([200, 140, 50, 50] * 10), torch.tensor([1, 1, 0, 1] * 10)
    result = evaluate(PixelModel(), images, labels, {"big": ZeroOut(eps=0.1)}, store=ResultStore(tmp_path, "t"))
    for name in ("clean", "big", "worst case"):
        row = result["summary"][name]
        low, high = row["all_draws_ci"]
        assert low < row["robust_all_draws"] < high and row["n"] == 40
        assert (low, high) == pytest.approx(clopper_pearson(round(40 * row["robust_all_draws"]), 40))
        low, high = row["mean_over_draws_ci"]
        assert low <= row["robust_mean_over_draws"] <= high
        assert row["ci"] == {"level": 0.95, "all_draws": "clopper-pearson", "mean_over_draws": "paired bootstrap over examples",
                             "resamples": 2000, "seed": 0}
    assert read_result(tmp_path / "t.json")["summary"] == result["summary"]
    table = (tmp_path / "t.md").read_text()
    assert "| big | zero_out, eps 0.1 | 40 | 50.0% [33.8, 66.2] |" in table and "95% intervals" in table


def test_an_old_result_without_intervals_loads_and_renders_with_them(tmp_path):
    images, labels = pixel_data([200, 140, 50, 50] * 10), torch.tensor([1, 1, 0, 1] * 10)
    result = evaluate(PixelModel(), images, labels, {"big": ZeroOut(eps=0.1)}, draws=2)
    old = json.loads(json.dumps(result))
    for row in old["summary"].values():  # as written before the intervals existed
        for key in ("all_draws_ci", "mean_over_draws_ci", "ci"):
            row.pop(key)
    old["summary"]["gone"] = {"robust_all_draws": 0.5, "n": 10, "robust_mean_over_draws": 0.5}  # no outcomes behind it
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = read_result(tmp_path / "old.json")
    for name in ("clean", "big", "worst case"):
        assert loaded["summary"][name] == result["summary"][name]
    assert loaded["summary"]["gone"]["all_draws_ci"] == pytest.approx(clopper_pearson(5, 10))
    assert loaded["summary"]["gone"]["mean_over_draws_ci"] is None
    loaded["settings"]["attacks"]["gone"] = {"attack": "zero_out", "eps": 0.1}
    table = format_table(loaded)
    assert "| big | zero_out, eps 0.1 | 40 | 50.0% [33.8, 66.2] |" in table and "| gone |" in table
    broken = {**old, "outcomes": {"clean": "not a table"}}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    assert "all_draws_ci" in read_result(tmp_path / "broken.json")["summary"]["clean"]  # from its accuracy and n


def test_cascade_with_no_clean_correct_example_scores_them_all_broken():
    from menet.attacks import build_attack
    from menet.evaluation import evaluate

    class AlwaysOne(nn.Module):
        def forward(self, x):
            return torch.stack([torch.zeros(len(x)), x.flatten(1).sum(1) * 0 + 1], 1)

    images = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    result = evaluate(AlwaysOne(), images, torch.zeros(3, dtype=torch.int64), {"pgd": build_attack("pgd", steps=1)},
                      cascade=True)
    assert result["summary"]["clean"]["robust_all_draws"] == 0.0 and result["summary"]["pgd"]["robust_all_draws"] == 0.0
