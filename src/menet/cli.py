"""The ``menet`` command: parse arguments, seed, call the library, print results."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from menet import __version__
from menet.checkpoint import CheckpointError
from menet.config import ConfigError
from menet.data import DatasetError
from menet.devices import check_device
from menet.progress import Progress, stream_progress


def _progress(quiet: bool) -> Progress:
    """Progress on stderr: bars on a terminal, a plain line every few percent on a pipe or file."""
    return stream_progress(sys.stderr, quiet=quiet)


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from menet.demo import failed_checks, main_table, run_demo

    started = time.perf_counter()
    report = run_demo(args.out, data_dir=args.data_dir, device=args.device, say=_say(args.quiet),
                      progress=_progress(args.quiet), scale=args.scale)
    print(main_table(report))
    failed = failed_checks(report)
    if failed:
        print(f"\n{len(failed)} sanity check(s) of Carlini et al. (2019) failed (robust accuracy is an upper bound; these say it may be loose):")
        print("\n".join(failed))
    print(f"\nwrote {report} (with its figures) in {time.perf_counter() - started:.0f} s")
    return 0


def _say(quiet: bool):
    def say(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    return say


def _data_dirs(items: list[str] | None) -> dict[str, str] | str | None:
    """--data-dir DIR (every dataset) or --data-dir NAME=DIR (repeatable)."""
    if not items:
        return None
    if len(items) == 1 and "=" not in items[0]:
        return items[0]
    dirs = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--data-dir {item!r}: with several, each must look like NAME=DIR")
        name, directory = item.split("=", 1)
        dirs[name] = directory
    return dirs


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from menet.recipe import load_paper_recipe
    from menet.reproduce import reproduce

    recipe = load_paper_recipe(args.recipe)
    runs = Path(args.runs) / f"paper-{args.scale}"
    if args.plan:  # what would be run, marked done or not, with a cost estimate measured here
        from menet.plan import format_plan, plan

        steps, rates = plan(recipe, runs, scale=args.scale, data_dirs=_data_dirs(args.data_dir), device=args.device)
        print(format_plan(recipe.name, args.scale, runs, steps, rates))
        return 0
    report = reproduce(recipe, runs, scale=args.scale, data_dirs=_data_dirs(args.data_dir), device=args.device,
                       say=_say(args.quiet), progress=_progress(args.quiet))
    print(f"wrote {report}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from menet.report import write_report
    from menet.runs import read_config

    for run in args.run_dirs:
        read_config(run)  # one clear line for a folder that is not a run, before writing anything
    report = write_report(args.out, run_dirs=args.run_dirs)
    print(f"wrote {report}")
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
        progress=_progress(args.quiet),
        on_epoch=_print_epoch,  # called on rank 0 only
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {Path(args.runs) / config.name}")
    return 0


def _fraction(text: str) -> float:
    """A number, or a fraction like 8/255."""
    try:
        if "/" in text:
            top, bottom = text.split("/", 1)
            return float(top) / float(bottom)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 8/255, got {text!r}") from None


# CLI flags that set an attack's field of the same name (where the attack has one).
_ATTACK_FLAGS = ("eps", "steps", "step_size", "restarts", "loss", "samples", "rank")


def _build_attacks(args: argparse.Namespace, source: object | None) -> dict:
    """name -> attack, from --attack and the settings flags (validated before any work)."""
    import dataclasses

    import yaml

    from menet.attacks import build_attack, eot, get_attack_class, transfer
    from menet.config import ConfigError

    given = {flag: getattr(args, flag) for flag in _ATTACK_FLAGS if getattr(args, flag) is not None}
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        given[key] = yaml.safe_load(raw)
    attacks = {}
    for name in args.attack:
        fields = {f.name for f in dataclasses.fields(get_attack_class(name))}
        settings = {k: v for k, v in given.items() if k in fields}
        unused = [k for k in given if all(k not in {f.name for f in dataclasses.fields(get_attack_class(n))} for n in args.attack)]
        if unused:
            raise ConfigError(f"no chosen attack has the setting(s) {', '.join(unused)}")
        attack = build_attack(name, **settings)
        if args.eot is not None:
            attack = eot(attack, args.eot)
        label = name + (f"-eot{args.eot}" if args.eot is not None else "")
        if source is not None:
            attack, label = transfer(source, attack), f"transfer-{label}"
        attacks[label] = attack
    return attacks


# What `menet attack --list` shows besides the attacks: the flags that change how they run.
_ATTACK_MODIFIERS = (
    ("--loss cw", "the L-inf CW attack (Carlini and Wagner, 2017): fgsm / pgd on the margin loss instead of cross-entropy"),
    ("--eot K", "expectation over transformation: each gradient averaged over K fresh mask draws (gradient attacks)"),
    ("--transfer-from RUN", "transfer (black-box) attack: craft the examples on RUN's model, score them on this one"),
    ("--draws D", "multi-draw scoring: an example is robust only if classified correctly in all D mask draws"),
    ("--cascade", "attack only the examples that no earlier attack broke (AutoAttack's way), to save time"),
    ("--gradient exact", "differentiate through the estimator (USVT only) instead of BPDA's identity backward pass"),
)


def _plain(text: str) -> str:
    """A docstring fragment as plain text: reStructuredText roles and ``literals`` unquoted."""
    text = re.sub(r":[a-z]+:`([^`]*)`", r"\1", text)
    return re.sub(r"`{1,2}([^`]*)`{1,2}", r"\1", text)


def _cmd_attack(args: argparse.Namespace) -> int:
    from menet.attacks import attack_names, describe_attack

    if args.list:
        print("attacks (--attack NAME):")
        for name in attack_names():
            print(f"  {name:<20}{_plain(describe_attack(name))}")
        print("modifiers (combine with the attacks above):")
        for flag, text in _ATTACK_MODIFIERS:
            print(f"  {flag:<20}{text}")
        return 0
    if not args.run_dir or not args.attack:
        raise ValueError("give a run directory and at least one --attack (menet attack --list lists them)")
    from menet.data import load_dataset
    from menet.evaluation import ResultStore, environment, evaluate
    from menet.runs import EVAL_DIR, evaluation_inputs, load_model, read_config
    from menet.training import setup_distributed

    run = Path(args.run_dir)
    config = read_config(run)
    generator = torch.Generator().manual_seed(args.seed)
    model = load_model(run, gradient=args.gradient, generator=generator)
    source = None
    if args.transfer_from:
        source_config = read_config(args.transfer_from)
        if source_config.dataset != config.dataset:
            raise ValueError(f"transfer source {args.transfer_from} was trained on {source_config.dataset}, "
                             f"the target {run} on {config.dataset}: they must share the dataset")
        source = load_model(args.transfer_from, gradient=args.gradient)
    attacks = _build_attacks(args, source)
    if args.save_features:  # before the attacks run, not after
        from menet.features_store import check_features

        check_features(model)
    for flag, value in (("--n", args.n), ("--offset", args.offset), ("--batch-size", args.batch_size), ("--draws", args.draws)):
        if value is not None and value < (0 if flag == "--offset" else 1):
            raise ValueError(f"{flag} must be {'>= 0' if flag == '--offset' else '>= 1'}, got {value}")
    test = load_dataset(config.dataset, "test", args.data_dir or config.data_dir, verify=config.verify_checksums)
    stop = None if args.n is None else args.offset + args.n
    images, labels = test.images[args.offset : stop], test.labels[args.offset : stop]
    if len(labels) == 0:
        raise ValueError(f"no test images in [{args.offset}, {stop}) of {len(test.labels)}")
    tag = args.tag or "-".join(attacks)
    metadata = {"run": str(run), "dataset": config.dataset, "offset": args.offset, "gradient": args.gradient,
                "transfer_from": args.transfer_from, **environment()}
    store = ResultStore(run / EVAL_DIR, tag, resume=args.resume, overwrite=args.overwrite, metadata=metadata)
    if int(os.environ.get("RANK", "0")) == 0:  # before any work; under torchrun rank 0 owns the files
        store.check()
    place = setup_distributed(args.device)
    model.to(place.device)
    if source is not None:
        source.to(place.device)
    inputs = evaluation_inputs(run, dataset=config.dataset, offset=args.offset, gradient=args.gradient,
                               transfer_from=args.transfer_from)
    result = evaluate(model, images, labels, attacks, draws=args.draws, seed=args.seed, batch_size=args.batch_size,
                      cascade=args.cascade, device=place.device, store=store, inputs=inputs, rank=place.rank, world=place.world,
                      progress=_progress(args.quiet or place.rank != 0))
    if place.rank == 0:
        from menet.evaluation import format_table

        print(format_table(result), end="")
        print(f"wrote {store.json_path} and {store.md_path}")
        if args.save_features:  # Figs. 4 and 5 of a report draw these (the attacks are run once more)
            from menet.features_store import features_path, save_features

            path = save_features(features_path(run / EVAL_DIR, tag), model, images, labels, attacks, seed=args.seed,
                                 batch_size=args.batch_size, device=place.device, inputs=inputs, tag=tag)
            print(f"wrote {path}")
    return 0


def _cmd_import_run(args: argparse.Namespace) -> int:
    from menet.import_run import import_config, import_run

    config = import_config(model=args.model, weights=args.weights, dataset=args.dataset, name=args.name,
                           defense=args.defense, p=args.p, layout=args.layout, overrides=args.set)
    run = import_run(config, args.weights, args.runs, device=args.device)
    print(f"wrote {run} (imported from {args.weights}; menet attack and menet report work on it)")
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
  menet train recipes/train/cifar10-menet.yaml --set data_dir=/data/cifar
  menet train recipes/train/cifar10-menet.yaml --resume"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `menet` command and its subcommands."""
    parser = argparse.ArgumentParser(prog="menet", description="ME-Net: matrix-estimation defense")
    parser.add_argument("--version", action="version", version=f"menet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library messages")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train, attack and report ME-Net on the built-in Fashion-MNIST (minutes)")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--data-dir", default=None, help="directory of the IDX files "
                      "(default: $MENET_DATA_DIR, else /usr/share/datasets/fashion-mnist)")
    demo.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if available)")
    demo.add_argument("--scale", choices=["full", "small", "tiny"], default="full",
                      help="full: the demo (default); small / tiny: shrunk further, for a quick look or tests")
    demo.add_argument("--quiet", action="store_true", help="no progress lines or bars")
    demo.set_defaults(func=_cmd_demo)

    reproduce = sub.add_parser("reproduce", help="a paper table or figure from its recipe: train, attack, report",
                               description="Train the recipe's missing runs, run its missing evaluations (both "
                               "resume), and write the report under RUNS/paper-SCALE/reports/RECIPE/.")
    reproduce.add_argument("recipe", help="a paper recipe, e.g. recipes/table1.yaml")
    reproduce.add_argument("--scale", choices=["full", "small", "tiny"], default="full",
                           help="full: the paper's settings; small: minutes on a 2-core CPU; tiny: tests")
    reproduce.add_argument("--runs", default="runs", help="directory holding the runs (default: runs)")
    reproduce.add_argument("--data-dir", action="append", metavar="DIR|NAME=DIR",
                           help="where the datasets' files are (one for all, or NAME=DIR per dataset)")
    reproduce.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if available)")
    reproduce.add_argument("--quiet", action="store_true", help="no progress lines or bars")
    reproduce.add_argument("--plan", action="store_true", help="run nothing: list the runs to train and the evaluations "
                           "to run (marking what exists) with a cost estimate measured on this machine")
    reproduce.set_defaults(func=_cmd_reproduce)

    report = sub.add_parser("report", help="a report (tables, sanity checks, figures) of trained and attacked runs")
    report.add_argument("run_dirs", nargs="+", help="run folders")
    report.add_argument("--out", default="runs/report", help="output directory (default: runs/report)")
    report.set_defaults(func=_cmd_report)

    data = sub.add_parser("data", help="datasets: where menet looks and what it finds")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    info = data_sub.add_parser("info", help="files, sizes and checksum status of a dataset")
    info.add_argument("name", help="fashion-mnist, mnist, cifar10, svhn or tiny-imagenet")
    info.add_argument("--data-dir", default=None, help="directory of the official files (default: $MENET_DATA_DIR)")
    info.set_defaults(func=_cmd_data_info)

    train = sub.add_parser("train", help="train a model: vanilla, menet, menet-adv or madry",
                           description="Train a model into RUNS/NAME/ (config.yaml, model.pt, last.pt, history).",
                           epilog=_train_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
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
    train.set_defaults(func=_cmd_train)

    attack = sub.add_parser("attack", help="attack a trained run: clean and robust accuracy per attack",
                            description="Attack RUN_DIR's model on its dataset's test split; results go to "
                            "RUN_DIR/eval/TAG.json and TAG.md (resumable by batch).",
                            epilog="examples:\n  menet attack runs/cifar10-menet --attack pgd --steps 1000 --eps 8/255 "
                            "--step-size 2/255 --draws 5\n  menet attack runs/cifar10-menet --attack pgd --eot 10 --steps 200\n"
                            "  menet attack runs/cifar10-menet --attack fgsm --attack pgd --transfer-from runs/cifar10-copy\n"
                            "  menet attack --list", formatter_class=argparse.RawDescriptionHelpFormatter)
    attack.add_argument("run_dir", nargs="?", help="a run folder written by menet train")
    attack.add_argument("--list", action="store_true", help="list the attacks, one line each")
    attack.add_argument("--attack", action="append", help="an attack name (repeat for several); see --list")
    attack.add_argument("--eps", type=_fraction, help="L-inf budget, e.g. 8/255 (default: the attack's, 8/255)")
    attack.add_argument("--steps", type=int, help="attack steps")
    attack.add_argument("--step-size", dest="step_size", type=_fraction, help="step size, e.g. 2/255")
    attack.add_argument("--restarts", type=int, help="random restarts (PGD)")
    attack.add_argument("--loss", choices=["ce", "cw"], help="ce (cross-entropy) or cw (margin: the L-inf CW attack)")
    attack.add_argument("--samples", type=int, help="perturbation samples per step (SPSA)")
    attack.add_argument("--rank", type=int, help="subspace rank (projected_bpda)")
    attack.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other attack setting")
    attack.add_argument("--eot", type=int, help="average each gradient over this many mask draws (EOT)")
    attack.add_argument("--draws", type=int, default=1, help="scoring draws per example: robust only if correct in all (default 1)")
    attack.add_argument("--save-features", dest="save_features", action="store_true",
                        help="also store the penultimate features of the clean and attacked images in "
                        "RUN_DIR/eval/TAG.features.npz (for Figs. 4 and 5 of a report; runs the attacks once more)")
    attack.add_argument("--cascade", action="store_true", help="attack only examples no earlier attack broke (AutoAttack's way)")
    attack.add_argument("--transfer-from", metavar="OTHER_RUN", help="craft the examples on this run's model (transfer attack)")
    attack.add_argument("--gradient", choices=["bpda", "exact"], default="bpda", help="how gradients pass the defense (default bpda)")
    attack.add_argument("--n", "--images", dest="n", type=int, help="evaluate the first N test images (default: all; "
                        "under torchrun write --images: torchrun takes --n for its own options)")
    attack.add_argument("--offset", type=int, default=0, help="skip this many test images first")
    attack.add_argument("--batch-size", dest="batch_size", type=int, default=256, help="images per batch (default 256)")
    attack.add_argument("--seed", type=int, default=0, help="seeds masks, starts and draws (recorded)")
    attack.add_argument("--tag", help="result name under RUN_DIR/eval/ (default: from the attacks)")
    again = attack.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an unfinished evaluation with the same tag")
    again.add_argument("--overwrite", action="store_true", help="start the evaluation with this tag over")
    attack.add_argument("--data-dir", default=None, help="directory of the dataset's files (default: the run's)")
    attack.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if available)")
    attack.add_argument("--quiet", action="store_true", help="no progress bars")
    attack.set_defaults(func=_cmd_attack)

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
                     help="any other config field, e.g. --set defense.options.rank_fraction=0.5 --set model_options.width=64")
    imp.add_argument("--device", default=None, help="where to check the network on two blank images (default: cpu)")
    imp.set_defaults(func=_cmd_import_run)

    models = sub.add_parser("models", help="the model registry with parameter counts")
    models.set_defaults(func=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `menet`: returns the exit status (2 for bad input, with a one-line error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        check_device(getattr(args, "device", None))  # every command with --device, before any work
        return args.func(args)
    except (ConfigError, CheckpointError, DatasetError, ValueError, TypeError, FileExistsError) as err:
        print(f"menet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hints = {"train": ": the run keeps its last finished epoch; add --resume to continue",
                 "attack": ": finished batches are kept; add --resume to continue"}
        hint = hints.get(args.command, "")
        print(f"menet {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
