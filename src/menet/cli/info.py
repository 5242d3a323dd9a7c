"""``menet data info`` and ``menet models``: what menet finds on this machine and in its registry."""

from __future__ import annotations

import argparse


def cmd_data_info(args: argparse.Namespace) -> int:
    from menet.data.info import dataset_report

    report, ok = dataset_report(args.name, args.data_dir)
    print(report)
    return 0 if ok else 1


def cmd_models(args: argparse.Namespace) -> int:
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


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    """The ``data`` subcommand and its ``info``."""
    data = sub.add_parser("data", help="datasets: where menet looks and what it finds")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    info = data_sub.add_parser("info", help="files, sizes and checksum status of a dataset")
    info.add_argument("name", help="fashion-mnist, mnist, cifar10, svhn or tiny-imagenet")
    info.add_argument("--data-dir", default=None, help="directory of the official files (default: $MENET_DATA_DIR)")
    info.set_defaults(func=cmd_data_info)


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    """The ``models`` subcommand."""
    models = sub.add_parser("models", help="the model registry with parameter counts")
    models.set_defaults(func=cmd_models)
