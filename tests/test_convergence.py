"""--converge: steps doubled until a paired test sees no further drop (issue 16, item 3).

Checked on synthetic models whose robust accuracy as a function of the steps is known in
closed form, so the stopping point is computed by hand, not by the code under test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from torch import nn

from menet.attacks import build_attack
from menet.cli import main
from menet.convergence import converge_steps, drop_p_value, evaluate_converged, step_counts
from menet.summary import format_table, summarise


class SumModel(nn.Module):
    """Two logits: (sum of the pixels, threshold). Label 0 is right while the pixel sum stays
    above the threshold; each PGD step (no random start) lowers every pixel by the step size."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.flatten(1).sum(1)
        return torch.stack([total, torch.full_like(total, self.threshold)], 1)


def _images(values: np.ndarray) -> torch.Tensor:
    """(N, 1, 2, 2) uint8 images of constant value ``values`` (in 0..255)."""
    return torch.tensor(values, dtype=torch.uint8)[:, None, None, None].expand(-1, 1, 2, 2).contiguous()


def _robust_by_hand(values: np.ndarray, threshold: float, eps: float, step: float, steps: int) -> float:
    """Robust accuracy after ``steps`` steps: each pixel goes down by min(steps * step, eps)."""
    shift = min(steps * step, eps)
    clean = 4 * values / 255 > threshold
    return float(np.mean(clean & (4 * (values / 255 - shift) > threshold)))


def test_drop_p_value_matches_a_hand_computed_binomial_tail():
    before = np.array([1] * 9 + [0] * 1 + [1] * 20, dtype=bool)
    after = np.array([0] * 9 + [1] * 1 + [1] * 20, dtype=bool)  # 9 lost, 1 gained
    assert drop_p_value(before, after) == pytest.approx(sum(scipy_stats.binom.pmf(k, 10, 0.5) for k in range(9, 11)))
    assert drop_p_value(before, after) == pytest.approx(11 / 1024)
    assert drop_p_value(before, before) == 1.0
    assert drop_p_value(after, before) > 0.99  # gaining is no drop
    with pytest.raises(ValueError, match="same examples"):
        drop_p_value(before, after[:-1])


def test_step_counts_double_and_end_at_the_cap():
    assert step_counts(25, 400) == [25, 50, 100, 200, 400]
    assert step_counts(10, 70) == [10, 20, 40, 70]
    assert step_counts(5, 5) == [5]
    with pytest.raises(ValueError, match="start <= cap"):
        step_counts(10, 5)


def _fake_results(accuracy_at: dict[int, np.ndarray]):
    calls = []

    def evaluate_at(steps: int) -> dict:
        calls.append(steps)
        robust = accuracy_at[steps].astype(int)
        outcomes = {"clean": [[1] * len(robust)], "pgd": [robust.tolist()]}
        return {"outcomes": outcomes, "settings": {"attacks": {"pgd": {}}}, "summary": summarise(outcomes, ["pgd"])}

    return evaluate_at, calls


def test_converge_stops_on_a_plateau_and_continues_while_falling():
    n = 400
    rng = np.random.default_rng(0)
    order = rng.permutation(n)

    def robust(k: int) -> np.ndarray:  # the first k examples of a fixed order robust
        out = np.zeros(n, bool)
        out[order[:k]] = True
        return out

    plateau, calls = _fake_results({10: robust(300), 20: robust(200), 40: robust(198), 80: robust(100)})
    result, record = converge_steps(plateau, start=10, cap=80, name="pgd")
    assert calls == [10, 20, 40] and record["converged"] and not record["reached_cap"] and record["steps"] == 40
    assert result["summary"]["pgd"]["robust_all_draws"] == pytest.approx(198 / n)
    assert record["curve"][2]["lost"] == 2 and record["curve"][2]["gained"] == 0
    falling, calls = _fake_results({10: robust(300), 20: robust(250), 40: robust(200), 80: robust(150)})
    _, record = converge_steps(falling, start=10, cap=80, name="pgd")
    assert calls == [10, 20, 40, 80] and not record["converged"] and record["reached_cap"]
    text = format_table({**result, "settings": {"n": n, "draws": 1, "seed": 0, "cascade": False, "attacks": {}},
                         "convergence": record})
    assert "NOT CONVERGED: stopped at the cap of 80 steps" in text and "50.0% -> 37.5%" in text


# eps 0.04 is 8 steps of 0.005: 10 and 20 steps reach the same points, so it stops at 20; with
# eps 0.9 each doubling moves the pixels twice as far (0.05, 0.1, ..., 0.8) and it reaches the cap.
@pytest.mark.parametrize(("eps", "expected_stop", "converged"), [(0.04, 20, True), (0.9, 160, False)])
def test_evaluate_converged_on_a_model_with_a_known_curve(tmp_path, eps, expected_stop, converged):
    step, threshold = 0.005, 1.0
    values = np.linspace(70, 250, 200).round()
    images, labels = _images(values), torch.zeros(len(values), dtype=torch.int64)
    model = SumModel(threshold)

    def attacks_at(steps: int) -> dict:
        return {"pgd": build_attack("pgd", eps=eps, step_size=step, steps=steps, random_start=False)}

    result = evaluate_converged(model, images, labels, attacks_at, start=10, cap=160, eval_dir=tmp_path, tag="cv")
    record = result["convergence"]
    by_hand = {s: _robust_by_hand(values, threshold, eps, step, s) for s in (10, 20, 40, 80, 160)}
    for point in record["curve"]:
        assert point["accuracy"] == pytest.approx(by_hand[point["steps"]])
    assert record["converged"] == converged and record["reached_cap"] == (not converged)
    assert record["steps"] == expected_stop
    saved = json.loads((tmp_path / "cv.json").read_text())
    assert saved["convergence"] == json.loads(json.dumps(record))
    assert saved["settings"]["attacks"]["pgd"]["steps"] == record["steps"]
    assert sorted(p.name for p in tmp_path.glob("cv-steps*.json")) == sorted(f"cv-steps{p['steps']}.json" for p in record["curve"])


def test_converge_from_the_cli_records_the_curve_and_refuses_attacks_without_steps(tmp_path, capsys):
    from test_cli import _tiny_runs

    run, _ = _tiny_runs(tmp_path)
    args = ["attack", str(run), "--attack", "pgd", "--steps", "1", "--converge", "--converge-cap", "4", "--n", "16",
            "--batch-size", "8", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Steps doubled until no significant drop (pgd): 1: " in out
    result = json.loads((run / "eval" / "pgd.json").read_text())
    assert [p["steps"] for p in result["convergence"]["curve"]][0] == 1 and result["convergence"]["cap"] == 4
    assert main(["attack", str(run), "--attack", "fgsm", "--converge", "--tag", "f", "--quiet"]) == 2
    assert "'fgsm' has none" in capsys.readouterr().err
    assert main(["attack", str(run), "--attack", "fgsm", "--attack", "pgd", "--converge", "--tag", "g", "--quiet"]) == 2
    assert "give one --attack" in capsys.readouterr().err
    assert not list((run / "eval").glob("[fg]*"))


def test_a_left_over_step_result_fails_before_any_work(tmp_path):
    class Untouchable(nn.Module):
        def forward(self, x):
            raise AssertionError("evaluated although a result of this tag is on disk")

    (tmp_path / "cv-steps20.json").write_text("{}")  # an interrupted earlier run: TAG.json not written yet
    images, labels = _images(np.array([100, 200])), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(FileExistsError, match="cv-steps20.json"):
        evaluate_converged(Untouchable(), images, labels, lambda s: {"pgd": build_attack("pgd", steps=s)}, start=10,
                           cap=40, eval_dir=tmp_path, tag="cv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv-steps20.json"]
