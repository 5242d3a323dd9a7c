"""``menet attack``: attacks built from the flags, run on a run's model, results under RUN/eval/."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from menet.cli.common import fraction, progress

# CLI flags that set an attack's field of the same name (where the attack has one).
ATTACK_FLAGS = ("eps", "steps", "step_size", "restarts", "loss", "samples", "rank")

# What `menet attack --list` shows besides the attacks: the flags that change how they run.
ATTACK_MODIFIERS = (
    ("--loss cw", "the L-inf CW attack (Carlini and Wagner, 2017): fgsm / pgd on the margin loss instead of cross-entropy"),
    ("--eot K", "expectation over transformation: each gradient averaged over K fresh mask draws (gradient attacks)"),
    ("--transfer-from RUN", "transfer (black-box) attack: craft the examples on RUN's model, score them on this one"),
    ("--draws D", "multi-draw scoring: an example is robust only if classified correctly in all D mask draws"),
    ("--cascade", "attack only the examples that no earlier attack broke (AutoAttack's way), to save time"),
    ("--gradient exact", "differentiate through the estimator (USVT only) instead of BPDA's identity backward pass"),
)


def build_attacks(args: argparse.Namespace, source: object | None) -> dict:
    """name -> attack, from --attack and the settings flags (validated before any work)."""
    import dataclasses

    import yaml

    from menet.attacks import build_attack, eot, get_attack_class, transfer
    from menet.config import ConfigError

    given = {flag: getattr(args, flag) for flag in ATTACK_FLAGS if getattr(args, flag) is not None}
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


def protocol_attacks(args: argparse.Namespace, dataset: str, source: object | None) -> tuple[object, Callable[[int], dict]]:
    """(the resolved protocol, steps -> its attacks) for --protocol, the flags overriding its fields."""
    from menet.config import ConfigError
    from menet.protocols import resolve

    clashing = [flag for flag, value in (("--attack", args.attack), ("--set", args.set), ("--samples", args.samples),
                                         ("--rank", args.rank)) if value]
    if clashing:
        raise ConfigError(f"--protocol fixes the attack: drop {', '.join(clashing)} (or drop --protocol)")
    resolved = resolve(args.protocol, dataset, eps=args.eps, step_size=args.step_size, steps=args.steps, eot=args.eot,
                       draws=args.draws, images=args.n, converge=args.converge, converge_cap=args.converge_cap,
                       restarts=args.restarts, loss=args.loss)
    label = ("transfer-" if source is not None else "") + args.protocol

    def attacks_at(steps: int) -> dict:
        return resolved.attacks(steps, source, label)

    return resolved, attacks_at


def plain(text: str) -> str:
    """A docstring fragment as plain text: reStructuredText roles and ``literals`` unquoted."""
    text = re.sub(r":[a-z]+:`([^`]*)`", r"\1", text)
    return re.sub(r"`{1,2}([^`]*)`{1,2}", r"\1", text)


def cmd_attack(args: argparse.Namespace) -> int:
    from menet.attacks import attack_names, describe_attack

    if args.list_protocols:
        from menet.protocols import describe_protocols

        print(describe_protocols(), end="")
        return 0
    if args.list:
        print("attacks (--attack NAME):")
        for name in attack_names():
            print(f"  {name:<20}{plain(describe_attack(name))}")
        print("modifiers (combine with the attacks above):")
        for flag, text in ATTACK_MODIFIERS:
            print(f"  {flag:<20}{text}")
        return 0
    if not args.run_dir or not (args.attack or args.protocol):
        raise ValueError("give a run directory and at least one --attack or a --protocol "
                         "(menet attack --list and --list-protocols list them)")
    from menet.data import load_dataset
    from menet.distributed import setup_distributed
    from menet.evaluation import ResultStore, environment, evaluate
    from menet.runs import EVAL_DIR, evaluation_inputs, load_model, read_config

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
    protocol = None
    if args.protocol:
        protocol, attacks_at = protocol_attacks(args, config.dataset, source)
        attacks = attacks_at(protocol.attack["steps"])
        args.n = protocol.images if args.n is None else args.n
        draws, start, cap = protocol.draws, protocol.converge, protocol.converge_cap
    else:
        attacks = build_attacks(args, source)
        draws = 1 if args.draws is None else args.draws
        start = cap = None
        if args.converge:
            if len(attacks) != 1:
                raise ValueError(f"--converge doubles one attack's steps: give one --attack, not {len(attacks)}")
            from menet.convergence import DEFAULT_CAP_FACTOR, with_steps

            (label, attack), = attacks.items()
            with_steps(attack, 1)  # an attack without steps fails here, before any work
            start = getattr(getattr(attack, "attack", attack), "steps")
            cap = args.converge_cap if args.converge_cap is not None else DEFAULT_CAP_FACTOR * start

            def attacks_at(steps: int) -> dict:
                return {label: with_steps(attack, steps)}
        elif args.converge_cap is not None:
            raise ValueError("--converge-cap goes with --converge")
    if args.save_features:  # before the attacks run, not after
        from menet.features_store import check_features

        check_features(model)
    for flag, value in (("--n", args.n), ("--offset", args.offset), ("--batch-size", args.batch_size), ("--draws", draws)):
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
    if protocol is not None:
        metadata["protocol"] = protocol.record()
    store = ResultStore(run / EVAL_DIR, tag, resume=args.resume, overwrite=args.overwrite, metadata=metadata)
    if int(os.environ.get("RANK", "0")) == 0:  # before any work; under torchrun rank 0 owns the files
        store.check()
    place = setup_distributed(args.device)
    model.to(place.device)
    if source is not None:
        source.to(place.device)
    inputs = evaluation_inputs(run, dataset=config.dataset, offset=args.offset, gradient=args.gradient,
                               transfer_from=args.transfer_from)
    common = dict(draws=draws, seed=args.seed, batch_size=args.batch_size, cascade=args.cascade, device=place.device,
                  inputs=inputs, rank=place.rank, world=place.world, progress=progress(args.quiet or place.rank != 0))
    if start is not None:
        from menet.convergence import evaluate_converged

        result = evaluate_converged(model, images, labels, attacks_at, start=start, cap=cap, eval_dir=run / EVAL_DIR,
                                    tag=tag, resume=args.resume, overwrite=args.overwrite, metadata=metadata, **common)
    else:
        result = evaluate(model, images, labels, attacks, store=store, **common)
    if place.rank == 0:
        from menet.evaluation import format_table

        print(format_table(result), end="")
        print(f"wrote {store.json_path} and {store.md_path}")
        if start is not None:  # the features of the attack at the step count it converged at
            attacks = attacks_at(result["convergence"]["steps"])
        if args.save_features:  # Figs. 4 and 5 of a report draw these (the attacks are run once more)
            from menet.features_store import features_path, save_features

            path = save_features(features_path(run / EVAL_DIR, tag), model, images, labels, attacks, seed=args.seed,
                                 batch_size=args.batch_size, device=place.device, inputs=inputs, tag=tag)
            print(f"wrote {path}")
    return 0


def add_attack_parser(sub: argparse._SubParsersAction) -> None:
    """The ``attack`` subcommand."""
    attack = sub.add_parser("attack", help="attack a trained run: clean and robust accuracy per attack",
                            description="Attack RUN_DIR's model on its dataset's test split; results go to "
                            "RUN_DIR/eval/TAG.json and TAG.md (resumable by batch).",
                            epilog="examples:\n  menet attack runs/cifar10-menet --attack pgd --steps 1000 --eps 8/255 "
                            "--step-size 2/255 --draws 5\n  menet attack runs/cifar10-menet --attack pgd --eot 10 --steps 200\n"
                            "  menet attack runs/cifar10-menet --attack fgsm --attack pgd --transfer-from runs/cifar10-copy\n"
                            "  menet attack runs/cifar10-menet --protocol tramer2020\n"
                            "  menet attack runs/cifar10-menet --attack pgd --eot 10 --steps 25 --converge --converge-cap 400\n"
                            "  menet attack --list\n  menet attack --list-protocols", formatter_class=argparse.RawDescriptionHelpFormatter)
    attack.add_argument("run_dir", nargs="?", help="a run folder written by menet train")
    attack.add_argument("--list", action="store_true", help="list the attacks, one line each")
    attack.add_argument("--attack", action="append", help="an attack name (repeat for several); see --list")
    attack.add_argument("--eps", type=fraction, help="L-inf budget, e.g. 8/255 (default: the attack's, 8/255)")
    attack.add_argument("--steps", type=int, help="attack steps")
    attack.add_argument("--step-size", dest="step_size", type=fraction, help="step size, e.g. 2/255")
    attack.add_argument("--restarts", type=int, help="random restarts (PGD)")
    attack.add_argument("--loss", choices=["ce", "cw"], help="ce (cross-entropy) or cw (margin: the L-inf CW attack)")
    attack.add_argument("--samples", type=int, help="perturbation samples per step (SPSA)")
    attack.add_argument("--rank", type=int, help="subspace rank (projected_bpda)")
    attack.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other attack setting")
    attack.add_argument("--eot", type=int, help="average each gradient over this many mask draws (EOT)")
    attack.add_argument("--draws", type=int, help="scoring draws per example: robust only if correct in all (default 1, "
                        "or the protocol's)")
    attack.add_argument("--protocol", help="a named protocol (paper, tramer2020, autoattack-rand, strong): the attack and "
                        "all its settings; the flags above override its fields; see --list-protocols")
    attack.add_argument("--list-protocols", dest="list_protocols", action="store_true",
                        help="list the protocols with their settings and sources")
    attack.add_argument("--converge", action=argparse.BooleanOptionalAction, default=None,
                        help="double the attack's steps (from --steps) until a paired test sees no further drop "
                        "(on with --protocol strong; --no-converge turns it off)")
    attack.add_argument("--converge-cap", dest="converge_cap", type=int,
                        help="most steps --converge may reach (default 8 x the first; reaching it is reported)")
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
    attack.set_defaults(func=cmd_attack)
