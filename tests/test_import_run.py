"""Your own network: `package.module:factory` models and `menet import-run` of weights trained elsewhere."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from menet.cli import main

MODULE = "menet_test_own_net"  # written into tmp_path by the fixture, imported from the current directory
SOURCE = '''
import torch
from torch import nn

CONSTANT = 3


class Net(nn.Module):
    def __init__(self, width=16, classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, width), nn.ReLU())
        self.head = nn.Linear(width, classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def build(width=16):
    return Net(width)


def seven_classes():
    return Net(16, classes=7)


def not_a_module():
    return {"weights": 1}


class NoFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.linear(x.flatten(1))
'''


@pytest.fixture
def own(tmp_path, monkeypatch):
    """tmp_path as the current directory, holding the factory module and weights of Net(16)."""
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    net = _reference_net(16)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    return tmp_path, net


def _reference_net(width: int) -> nn.Module:
    """The same architecture written here, independently of the module the code imports."""
    net = nn.Module()
    net.body = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, width), nn.ReLU())
    net.head = nn.Linear(width, 10)
    net.forward = lambda x: net.head(net.body(x))
    return net


def _import(tmp_path, *extra, model=f"{MODULE}:build", weights="net.pt", name="mine"):
    return main(["import-run", "--model", model, "--weights", str(tmp_path / weights), "--dataset", "fashion-mnist",
                 "--name", name, "--runs", str(tmp_path / "runs"), *extra])


def test_import_run_makes_a_run_that_load_model_attack_and_report_use(own, capsys):
    import menet
    from menet.runs import model_fingerprint

    tmp_path, net = own
    assert _import(tmp_path, "--defense", "usvt", "--p", "0.6", "--set", "defense.options.rank_fraction=0.5") == 0
    run = tmp_path / "runs" / "mine"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "history.csv", "history.jsonl", "model.pt"]
    text = (run / "config.yaml").read_text()
    config = yaml.safe_load(text)
    assert "imported by menet import-run" in text and "not by menet" in text
    assert config["imported_from"].startswith(str(tmp_path / "net.pt")) and config["epochs"] == 0
    assert config["model"] == f"{MODULE}:build" and config["mode"] == "menet"
    assert config["defense"]["method"] == "usvt" and config["defense"]["p_infer"] == 0.6
    assert config["defense"]["options"]["rank_fraction"] == 0.5
    assert torch.load(run / "model.pt", weights_only=True).keys() == net.state_dict().keys()  # the checkpoint format
    assert len(model_fingerprint(run)) == 16
    # load_model rebuilds the network from the factory, with the imported weights, behind the defense.
    model = menet.load_model(run)
    assert type(model).__name__ == "MENet" and model.preprocess.p == 0.6
    x = torch.rand(5, 1, 28, 28)
    assert torch.allclose(model.classifier(x), net.forward(x), atol=1e-6)
    capsys.readouterr()
    assert main(["attack", str(run), "--attack", "fgsm", "--eps", "0.1", "--n", "16", "--quiet"]) == 0
    result = json.loads((run / "eval" / "fgsm.json").read_text())
    assert result["settings"]["n"] == 16
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert "mine" in (tmp_path / "report" / "report.md").read_text()


def test_import_run_of_a_registered_model_and_a_dataparallel_prefix(own):
    from menet.models import build_model_for_dataset
    from menet.runs import load_model

    tmp_path, _ = own
    lenet = build_model_for_dataset("lenet", "fashion-mnist")
    torch.save({f"module.{k}": v for k, v in lenet.state_dict().items()}, tmp_path / "lenet.pt")
    assert _import(tmp_path, model="lenet", weights="lenet.pt", name="plain") == 0
    loaded = load_model(tmp_path / "runs" / "plain")
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(loaded(x), lenet.eval()(x), atol=1e-6)


def _bad_weights(tmp_path, kind: str) -> str:
    net = _reference_net(16)
    state = net.state_dict()
    if kind == "missing":
        state.pop("head.bias")
    elif kind == "unexpected":
        state["extra.weight"] = torch.zeros(1)
    elif kind == "shape":
        state = _reference_net(32).state_dict()
    elif kind == "nested":
        state = {"state_dict": state, "epoch": 3}
    elif kind == "pickled":
        state = nn.Linear(2, 2)
    torch.save(state, tmp_path / f"{kind}.pt")
    return f"{kind}.pt"


@pytest.mark.parametrize(
    ("model", "weights", "words"),
    [
        ("nowhere_such_module:build", None, ["cannot import nowhere_such_module"]),
        (f"{MODULE}:absent", None, ["has no attribute absent"]),
        (f"{MODULE}:CONSTANT", None, ["CONSTANT is a int, not a callable"]),
        (f"{MODULE}:not_a_module", None, ["returned a dict, expected a torch.nn.Module"]),
        (f"{MODULE}:seven_classes", None, ["(2, 7)", "(2, 10)"]),
        (f"{MODULE}:NoFeatures", "missing", ["weights do not fit", "missing: linear.weight"]),
        ("a:b:c", None, ["package.module:factory"]),
        (f"{MODULE}:build", "missing", ["weights do not fit", "missing: head.bias"]),
        (f"{MODULE}:build", "unexpected", ["weights do not fit", "unexpected: extra.weight"]),
        (f"{MODULE}:build", "shape", ["weights do not fit", "wrong shape: body.1.weight"]),
        (f"{MODULE}:build", "nested", ["expected a plain state dict", "under 'state_dict'"]),
        (f"{MODULE}:build", "pickled", ["refuses to load"]),
        (f"{MODULE}:build", "absent", ["checkpoint not found"]),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_folder(own, capsys, model, weights, words):
    tmp_path, _ = own
    file = "net.pt" if weights is None else ("absent.pt" if weights == "absent" else _bad_weights(tmp_path, weights))
    assert _import(tmp_path, model=model, weights=file) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("menet import-run: error:"), err
    assert all(w in err for w in words), err
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


@pytest.mark.parametrize("extra", [["--p", "0.5"], ["--layout", "separate"], ["--set", "defense.method=usvt"],
                                   ["--defense", "usvt", "--set", "mode=vanilla"]])
def test_defense_settings_without_a_deployed_defense_are_refused(own, capsys, extra):
    """Not a plain network silently deployed in place of the ME-Net the user asked for."""
    tmp_path, _ = own
    assert _import(tmp_path, *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--defense METHOD" in err, err
    assert not (tmp_path / "runs").exists()


def test_an_existing_run_is_not_replaced(own, capsys):
    tmp_path, _ = own
    assert _import(tmp_path) == 0
    before = (tmp_path / "runs" / "mine" / "model.pt").read_bytes()
    assert _import(tmp_path) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "runs" / "mine" / "model.pt").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["mine"]  # no staging folder left


def test_a_factory_model_trains_from_the_cli_and_bad_ones_fail_before_any_work(own, capsys):
    tmp_path, _ = own
    common = ["train", "--runs", str(tmp_path / "runs"), "--set", "train_limit=32", "--set", "epochs=1",
              "--set", "eval_every=0", "--quiet"]
    assert main([*common, "--set", f"model={MODULE}:build", "--set", "model_options.width=8"]) == 0
    run = tmp_path / "runs" / f"fashion-mnist-{MODULE}-build-vanilla"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"] == f"{MODULE}:build" and config["model_options"] == {"width": 8}
    assert config["imported_from"] is None
    assert torch.load(run / "model.pt", weights_only=True)["body.1.weight"].shape == (8, 784)
    assert main([*common, "--set", f"model={MODULE}:seven_classes", "--name", "bad"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config field model" in err and "(2, 7)" in err
    assert not (tmp_path / "runs" / "bad").exists()


def test_a_recipe_run_may_name_a_factory(own):
    from menet.recipe import load_paper_recipe

    tmp_path, _ = own
    (tmp_path / "train.yaml").write_text("dataset: fashion-mnist\nmodel: lenet\nepochs: 1\n")
    (tmp_path / "recipe.yaml").write_text(f"""title: own network
runs:
  mine: {{base: train.yaml, set: {{model: "{MODULE}:build", model_options: {{width: 8}}}}}}
  bad: {{base: train.yaml, set: {{model: "{MODULE}:seven_classes"}}}}
evaluations:
  clean: {{runs: [mine], attacks: {{fgsm: {{attack: fgsm}}}}}}
tables:
  - {{title: t, columns: [FGSM], rows: [{{label: mine, cells: [mine/clean/fgsm]}}]}}
""")
    with pytest.raises(ValueError, match=r"\(2, 7\)"):  # the recipe is checked before anything runs
        load_paper_recipe(tmp_path / "recipe.yaml")
    text = (tmp_path / "recipe.yaml").read_text()
    (tmp_path / "recipe.yaml").write_text("\n".join(line for line in text.splitlines() if "bad:" not in line))
    recipe = load_paper_recipe(tmp_path / "recipe.yaml")
    assert recipe.runs["mine"].model == f"{MODULE}:build" and recipe.runs["mine"].model_options == {"width": 8}


def test_save_features_of_a_network_without_features_fails_before_the_attacks(own, capsys):
    tmp_path, _ = own
    torch.save({f"linear.{k}": v for k, v in nn.Linear(28 * 28, 10).state_dict().items()}, tmp_path / "nofeatures.pt")
    assert _import(tmp_path, model=f"{MODULE}:NoFeatures", weights="nofeatures.pt", name="nofeat") == 0
    run = tmp_path / "runs" / "nofeat"
    capsys.readouterr()
    assert main(["attack", str(run), "--attack", "fgsm", "--eps", "0.1", "--n", "4", "--save-features", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no features(x) method" in err, err
    assert not (run / "eval").exists() or not list((run / "eval").iterdir())  # no attack was run first


def test_the_output_check_runs_on_the_models_device():
    """import-run --device cuda moves the network there first: the blank images go with it (meta stands in here)."""
    from menet.models.custom import check_output

    with torch.device("meta"):
        net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    check_output(net, "net", (1, 28, 28), 10)  # no device mismatch
    with pytest.raises(ValueError, match=r"\(2, 10\).*\(2, 7\)"):
        check_output(net, "net", (1, 28, 28), 7)


@pytest.mark.parametrize("extra", [["--set", "mode=madry"], ["--set", "mode=menet-adv"], ["--set", "mode=menet"],
                                   ["--defense", "usvt", "--set", "mode=menet-adv"], ["--defense", "usvt", "--set", "mode=madry"]])
def test_a_training_mode_menet_cannot_know_is_refused(own, capsys, extra):
    """How weights trained elsewhere were trained is not known to menet: a run is not marked
    adversarially trained (madry, menet-adv) on the user's word; vanilla, or menet with --defense."""
    tmp_path, _ = own
    assert _import(tmp_path, *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training mode of imported weights is not known" in err, err
    assert not (tmp_path / "runs").exists()


def test_the_mode_that_matches_the_defense_is_accepted(own):
    from menet.runs import read_config

    tmp_path, _ = own
    assert _import(tmp_path, "--defense", "usvt", "--set", "mode=menet", name="a") == 0
    assert _import(tmp_path, "--set", "mode=vanilla", name="b") == 0
    assert read_config(tmp_path / "runs" / "a").mode == "menet" and read_config(tmp_path / "runs" / "b").mode == "vanilla"
