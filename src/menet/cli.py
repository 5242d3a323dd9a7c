"""The ``menet`` command: parse arguments, seed, call the library, print results."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from menet import __version__
from menet.checkpoint import CheckpointError
from menet.config import ConfigError
from menet.data import DatasetError


def _cmd_demo(args: argparse.Namespace) -> int:
    from menet.demo import format_summary, run_demo

    torch.manual_seed(args.seed)
    rows, stats = run_demo(
        args.out,
        data_dir=args.data_dir,
        n_images=args.images,
        seed=args.seed,
        progress=lambda items, desc: tqdm(items, desc=desc, disable=args.quiet),
    )
    print(format_summary(rows, stats, "fashion-mnist", args.images))
    out = Path(args.out)
    print(f"wrote {out / 'reconstructions.png'}, {out / 'approx_rank.png'}, {out / 'summary.md'}")
    return 0


def _cmd_data_info(args: argparse.Namespace) -> int:
    from menet.data.info import dataset_report

    report, ok = dataset_report(args.name, args.data_dir)
    print(report)
    return 0 if ok else 1


def _cmd_models(args: argparse.Namespace) -> int:
    from menet.models import build_model, model_names

    # Parameter counts at each model's usual setting in the paper.
    settings = {"lenet": (10, 1), "densenet121": (200, 3)}
    print(f"{'model':<14}{'classes':>8}{'channels':>10}{'parameters':>14}")
    for name in model_names():
        classes, channels = settings.get(name, (10, 3))
        model = build_model(name, classes, channels)
        count = sum(p.numel() for p in model.parameters())
        print(f"{name:<14}{classes:>8}{channels:>10}{count:>14,}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
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
        data["name"] = "-".join(str(data.get(k, default)) for k, default in
                                (("dataset", "fashion-mnist"), ("model", "lenet"), ("mode", "vanilla")))
    config = config_from_dict(data)
    torch.manual_seed(config.seed)
    fit(
        config,
        args.runs,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        progress=lambda items, desc, total: tqdm(items, desc=desc, total=total, disable=args.quiet, leave=False),
        on_epoch=_print_epoch,  # called on rank 0 only
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {Path(args.runs) / config.name}")
    return 0


def _print_epoch(row: dict) -> None:
    test = "" if row["test_accuracy"] is None else f", test accuracy {row['test_accuracy']:.4f}"
    print(f"epoch {row['epoch']}: loss {row['loss']:.4f}, accuracy {row['accuracy']:.4f}{test}, "
          f"lr {row['lr']:g}, {row['images_per_s']:,.0f} images/s", flush=True)


def _train_epilog() -> str:
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
  menet train recipes/cifar10-menet.yaml --set data_dir=/data/cifar
  menet train recipes/cifar10-menet.yaml --resume"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `menet` command and its subcommands."""
    parser = argparse.ArgumentParser(prog="menet", description="ME-Net: matrix-estimation defense")
    parser.add_argument("--version", action="version", version=f"menet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library messages")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="ME reconstructions and image ranks on Fashion-MNIST")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--data-dir", default=None, help="directory of the IDX files "
                      "(default: $MENET_DATA_DIR, else /usr/share/datasets/fashion-mnist)")
    demo.add_argument("--images", type=int, default=256, help="test images in the error table")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)

    data = sub.add_parser("data", help="datasets: where menet looks and what it finds")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    info = data_sub.add_parser("info", help="files, sizes and checksum status of a dataset")
    info.add_argument("name", help="fashion-mnist, mnist, cifar10, svhn or tiny-imagenet")
    info.add_argument("--data-dir", default=None, help="directory of the official files (default: $MENET_DATA_DIR)")
    info.set_defaults(func=_cmd_data_info)

    train = sub.add_parser("train", help="train a model: vanilla, menet, menet-adv or madry",
                           description="Train a model into RUNS/NAME/ (config.yaml, model.pt, last.pt, history).",
                           epilog=_train_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("recipe", nargs="?", help="YAML recipe (see recipes/); optional: every field has a default "
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
    train.set_defaults(func=_cmd_train)

    models = sub.add_parser("models", help="the model registry with parameter counts")
    models.set_defaults(func=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `menet`: returns the exit status (2 for bad input, with a one-line error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, DatasetError, ValueError, TypeError) as err:
        print(f"menet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = ": the run keeps its last finished epoch; add --resume to continue" if args.command == "train" else ""
        print(f"menet {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
