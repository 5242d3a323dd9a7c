"""``menet train`` and ``menet import-run``: the two ways a run folder is made."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from menet.cli.common import progress


def cmd_train(args: argparse.Namespace) -> int:
    from menet.config import apply_overrides, config_from_dict, load_recipe
    from menet.training import fit

    data = load_recipe(args.recipe) if args.recipe else {}
    overrides = list(args.set or [])
    if args.name:
        overrides.append(f"name={args.name}")
    if args.masks:
        overrides.append(f"masks={args.masks}")
    if args.amp:
        overrides.append("amp=true")
    data = apply_overrides(data, overrides)
    if "name" not in data:  # no recipe and no --name: a name from what is trained
        data["name"] = "-".join(str(data.get(k, default)).replace(":", "-") for k, default in  # mynet:build -> mynet-build
                                (("dataset", "fashion-mnist"), ("model", "lenet"), ("mode", "vanilla")))
    config = config_from_dict(data)
    torch.manual_seed(config.seed)
    fit(
        config,
        args.runs,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        progress=progress(args.quiet),
        on_epoch=print_epoch,  # called on rank 0 only
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {Path(args.runs) / config.name}")
    return 0


def print_epoch(row: dict) -> None:
    """One line per finished epoch."""
    test = "" if row["test_accuracy"] is None else f", test accuracy {row['test_accuracy']:.4f}"
    print(f"epoch {row['epoch']}: loss {row['loss']:.4f}, accuracy {row['accuracy']:.4f}{test}, "
          f"lr {row['lr']:g}, {row['images_per_s']:,.0f} images/s", flush=True)


def train_epilog() -> str:
    """The modes, the main config fields with their defaults, and examples, for ``train --help``."""
    from menet.config import MODE_HELP, TrainConfig
    from menet.data import DATASETS
    from menet.estimation import METHODS
    from menet.models import model_names

    defaults = TrainConfig(name="-")
    others = {"dataset": [n for n in DATASETS if n != defaults.dataset], "model": [n for n in model_names() if n != defaults.model],
              "method": [n for n in METHODS if n != defaults.defense.method]}
    modes = "\n".join(f"  {mode:<10} {text}" for mode, text in MODE_HELP.items())
    d, a = defaults.defense, defaults.attack
    return f"""modes (--set mode=...):
{modes}

main fields (defaults), set with --set KEY=VALUE (dotted for defense.* and attack.*):
  name ({{dataset}}-{{model}}-{{mode}}), dataset ({defaults.dataset}; also {", ".join(others["dataset"])}),
  model ({defaults.model}; also {", ".join(others["model"])}), mode ({defaults.mode}),
  epochs ({defaults.epochs}), batch_size ({defaults.batch_size}), lr ({defaults.lr}), lr_milestones {list(defaults.lr_milestones)},
  optimizer ({defaults.optimizer}), seed ({defaults.seed}), train_limit / test_limit (all images), data_dir,
  defense.method ({d.method}; also {", ".join(others["method"])}), defense.p_start / p_end ({d.p_start} / {d.p_end}),
  defense.n_masks ({d.n_masks}), defense.options (estimator options, e.g. {{rank_fraction: 0.8}} for usvt),
  attack.eps / step / steps ({a.eps:.4f} / {a.step:.4f} / {a.steps}: PGD of menet-adv and madry)

examples:
  menet train --set dataset=fashion-mnist --set mode=menet --set defense.method=usvt --set epochs=5
  menet train recipes/train/cifar10-menet.yaml --set data_dir=/data/cifar
  menet train recipes/train/cifar10-menet.yaml --resume"""


def cmd_import_run(args: argparse.Namespace) -> int:
    from menet.import_run import import_config, import_run

    config = import_config(model=args.model, weights=args.weights, dataset=args.dataset, name=args.name,
                           defense=args.defense, p=args.p, layout=args.layout, overrides=args.set)
    run = import_run(config, args.weights, args.runs, device=args.device)
    print(f"wrote {run} (imported from {args.weights}; menet attack and menet report work on it)")
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """The ``train`` subcommand."""
    train = sub.add_parser("train", help="train a model: vanilla, menet, menet-adv or madry",
                           description="Train a model into RUNS/NAME/ (config.yaml, model.pt, last.pt, history).",
                           epilog=train_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("recipe", nargs="?", help="YAML training config (see recipes/train/); optional: every field has a default "
                       "and can be set with --set")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config field, e.g. --set epochs=5 --set defense.method=usvt")
    train.add_argument("--name", help="run name (runs/NAME)")
    train.add_argument("--runs", default="runs", help="directory holding the runs (default: runs)")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue from runs/NAME/last.pt")
    start.add_argument("--overwrite", action="store_true", help="start over in a folder that holds a run")
    train.add_argument("--masks", choices=["fresh", "cached"], help="ME-Net masks: new every epoch, or "
                       "reconstructions built once and stored under RUNS/cache/ (the paper's way)")
    train.add_argument("--amp", action="store_true", help="mixed precision for the network on CUDA")
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA if available; "
                       "under torchrun each rank takes its local GPU)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)


def add_import_run_parser(sub: argparse._SubParsersAction) -> None:
    """The ``import-run`` subcommand."""
    imp = sub.add_parser("import-run", help="a run folder from weights trained elsewhere (your own network)",
                         description="Make RUNS/NAME/ (config.yaml, model.pt, history) from a state dict trained "
                         "elsewhere, so that menet attack and menet report work on it; marked as imported.",
                         epilog="example:\n  menet import-run --model mynet:build --weights mynet.pt --dataset fashion-mnist "
                         "--defense usvt --p 0.5 --name mynet", formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("--model", required=True, metavar="NAME|package.module:factory",
                     help="a registered model (menet models) or an importable callable returning an nn.Module on [0, 1] images")
    imp.add_argument("--weights", required=True, metavar="FILE.pt", help="its state dict: torch.save(model.state_dict(), FILE)")
    imp.add_argument("--dataset", required=True, help="the dataset it was trained on (its test split is attacked)")
    imp.add_argument("--name", required=True, help="run name (RUNS/NAME)")
    imp.add_argument("--runs", default="runs", help="directory holding the runs (default: runs)")
    imp.add_argument("--defense", metavar="METHOD", help="deploy it behind ME-Net with this estimator (usvt, softimpute, "
                     "nucnorm); default: the plain network")
    imp.add_argument("--p", type=float, help="the defense's inference keep-probability (default: the config's)")
    imp.add_argument("--layout", help="the defense's matrix layout: concat (default) or separate")
    imp.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="any other config field, e.g. --set defense.options.rank_fraction=0.5 --set model_options.width=64 "
                     "(not another mode: the mode is vanilla, or menet with --defense)")
    imp.add_argument("--device", default=None, help="where to check the network on two blank images (default: cpu)")
    imp.set_defaults(func=cmd_import_run)
