"""Named attack protocols: the field's ways of measuring a robustness number, flag for flag.

A protocol fixes the attack and its settings, the EOT samples, the scoring draws, the test
images and whether the steps are doubled until the number converges (``menet.convergence``).
``resolve(name, dataset, **overrides)`` turns one into plain settings for a dataset, explicit
overrides winning over the protocol's fields; ``ResolvedProtocol.record()`` is what a result
stores (the protocol, its source, every resolved setting and which ones were overridden).

Protocols (``menet attack --list-protocols`` prints them with their settings and sources):

- ``paper``: the ME-Net paper's white-box setting, BPDA PGD of 1000 steps (Sec. 3.3, Table 4);
- ``tramer2020``: Tramèr et al. (2020)'s attack on ME-Net: 200 BPDA steps of 5 eps / 200 with
  41 gradient samples per step, one scoring pass, the first 1000 test images;
- ``autoattack-rand``: AutoAttack's version for randomised defenses (APGD-CE + APGD-DLR, 20
  EOT samples; Croce and Hein, 2020);
- ``strong``: this project's recommendation: BPDA + EOT-10, steps doubled until a paired test
  sees no further drop, scored over 5 mask draws.

Pure Python (no torch): the attack objects are built by ``menet.attack_settings``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

# The paper's L-inf budgets and PGD step sizes per dataset (Sec. 3.3, "Evaluation with Different Datasets"):
# MNIST 0.3 with step 0.01; CIFAR-10, SVHN and Tiny-ImageNet 8/255 with step 2/255. The paper
# has no Fashion-MNIST experiment: there the budget must be given (--eps).
PAPER_EPS = {"mnist": 0.3, "cifar10": 8 / 255, "svhn": 8 / 255, "tiny-imagenet": 8 / 255}
PAPER_STEP_SIZE = {"mnist": 0.01, "cifar10": 2 / 255, "svhn": 2 / 255, "tiny-imagenet": 2 / 255}

# The settings a protocol resolves to, and an override may set.
FIELDS = ("attack", "eps", "step_size", "steps", "eot", "draws", "images", "converge", "converge_cap", "restarts",
          "loss", "version")

StepRule = Callable[[float, int], float]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A named protocol. ``step_size`` is a number, None (the paper's per dataset), or a rule
    ``(eps, steps) -> step size`` (re-applied at every step count when converging);
    ``converge`` the first step count of the doubling (None: a single run at ``steps``);
    ``sources`` the source of each setting."""

    name: str
    summary: str
    attack: str
    steps: int
    eot: int
    draws: int
    images: int | None
    sources: Mapping[str, str]
    reference: str = ""
    step_size: float | StepRule | None = None
    step_rule_text: str = ""
    converge: int | None = None
    converge_cap: int | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # other attack fields (version, rank_samples)
    eps: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(PAPER_EPS))


def _tramer_step(eps: float, steps: int) -> float:
    return 5 * eps / steps


def _madry_step(eps: float, steps: int) -> float:
    return 2.5 * eps / steps


TRAMER_REFERENCE = ("Tramèr, Carlini, Brendel and Madry, 'On Adaptive Attacks to Adversarial Example Defenses' "
                    "(NeurIPS 2020), the ME-Net section; their notebook 11_menet/Attack.ipynb in "
                    "github.com/wielandbrendel/adaptive_attacks_paper")
TRAMER_SOURCE = "Tramèr et al.'s notebook"
AUTOATTACK_REFERENCE = ("Croce and Hein, 'Reliable evaluation of adversarial robustness with an ensemble of diverse "
                        "parameter-free attacks' (ICML 2020); github.com/fra31/auto-attack")
PAPER_REFERENCE = "Yang, Zhang, Katabi and Xu, 'ME-Net: Towards Effective Adversarial Robustness with Matrix Estimation' (ICML 2019)"

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol(
        name="paper", summary="the paper's white-box BPDA PGD, 1000 steps, one scoring pass",
        attack="pgd", steps=1000, eot=1, draws=1, images=None, reference=PAPER_REFERENCE,
        sources={"attack": "paper Sec. 3.2: PGD-based BPDA", "steps": "paper Table 4 / Fig. 6: up to 1000 steps",
                 "eps": "paper Sec. 3.3: 0.3 (MNIST), 8/255 (CIFAR-10, SVHN, Tiny-ImageNet)",
                 "step_size": "paper Sec. 3.3: 0.01 (MNIST), 2/255 (the others)",
                 "eot": "paper: no EOT", "draws": "paper: one forward pass per example (no multi-draw scoring stated)",
                 "images": "paper: the whole test set"},
    ),
    Protocol(
        name="tramer2020", summary="Tramèr et al. 2020: BPDA + EOT-41, 200 steps of 5 eps / 200, one pass, 1000 images",
        attack="pgd", steps=200, eot=41, draws=1, images=1000, reference=TRAMER_REFERENCE, step_size=_tramer_step,
        step_rule_text="5 * eps / steps",
        extra={"rank_samples": 1},  # keep the iterate of highest loss averaged over the 41 gradient passes, as they did
        sources={"attack": TRAMER_SOURCE + ": PGD with BPDA (identity backward) from a random start",
                 "steps": TRAMER_SOURCE + ": num_steps = 200", "step_size": TRAMER_SOURCE + ": (5 * epsilon) / num_steps",
                 "eot": TRAMER_SOURCE + ": 1 + 40 gradient samples per step (num_r = 40), the iterate with the "
                        "highest averaged loss kept",
                 "draws": TRAMER_SOURCE + ": one scoring forward pass", "images": TRAMER_SOURCE + ": the first 1000 test images",
                 "eps": TRAMER_SOURCE + ": epsilon = 8/255 on CIFAR-10 (the paper's budgets elsewhere)"},
    ),
    Protocol(
        name="autoattack-rand", summary="AutoAttack 'rand': APGD-CE + APGD-DLR with 20 EOT samples, 100 iterations",
        attack="autoattack", steps=100, eot=20, draws=1, images=None, extra={"version": "rand"},
        reference=AUTOATTACK_REFERENCE,
        sources={"attack": "AutoAttack: version='rand' for randomised defenses runs APGD-CE and APGD-DLR",
                 "steps": "AutoAttack: 100 iterations per APGD run", "eot": "AutoAttack 'rand': eot_iter = 20",
                 "draws": "AutoAttack: one scoring pass", "images": "our choice: the whole test set, as the paper",
                 "eps": "the paper's budgets (Sec. 3.3)"},
    ),
    Protocol(
        name="strong", summary="our recommendation: BPDA + EOT-10, steps doubled to convergence (25 to 400), 5 draws",
        attack="pgd", steps=25, eot=10, draws=5, images=None, step_size=_madry_step, step_rule_text="2.5 * eps / steps",
        converge=25, converge_cap=400,
        sources={"attack": "PGD through BPDA, the attack that broke ME-Net in Tramèr et al. 2020",
                 "eot": "our choice: 10 gradient samples per step, the adaptive setting of our Table 4 recipe "
                        "(Tramèr et al. used 41; 10 costs a quarter); the last iterate kept, the stronger choice on a "
                        "trained ME-Net (benchmarks/RESULTS.md, 'Kept iterate on a randomised model')",
                 "steps": "our choice: doubled from 25 until McNemar's test (one-sided, 5%) sees no further drop, at most 400",
                 "step_size": "Madry et al. 2018's rule 2.5 * eps / steps, so every run can cross the ball 2.5 times",
                 "draws": "our choice: an example is robust only if correct in all of 5 fresh mask draws",
                 "images": "our choice: the whole test set", "eps": "the paper's budgets (Sec. 3.3)"},
    ),
)}


class ProtocolError(ValueError):
    """An unknown protocol, an unknown override, or a setting the protocol cannot resolve."""


@dataclasses.dataclass(frozen=True)
class ResolvedProtocol:
    """A protocol's settings for one dataset: ``attack`` (the attack's settings, as
    ``menet.attack_settings.build_attacks`` takes them, ``eot`` included), ``draws``,
    ``images`` (first N test images; None: all), ``converge`` (first step count of the doubling,
    or None) and ``converge_cap``; ``step_rule`` recomputes the step size at other step counts."""

    protocol: Protocol
    dataset: str
    attack: dict[str, Any]
    draws: int
    images: int | None
    converge: int | None
    converge_cap: int | None
    overridden: tuple[str, ...]
    step_rule: StepRule | None = None

    def attack_at(self, steps: int) -> dict[str, Any]:
        """The attack's settings at ``steps`` steps (the step size re-derived where it is a rule)."""
        settings = {**self.attack, "steps": steps}
        if self.step_rule is not None:
            settings["step_size"] = self.step_rule(settings["eps"], steps)
        return settings

    def attacks(self, steps: int, source: Any = None, label: str | None = None) -> dict[str, Any]:
        """{label (default: the protocol's name): the attack at ``steps`` steps}, crafted on
        ``source`` (a transfer attack) when one is given."""
        from menet.attack_settings import build_attacks

        return build_attacks({label or self.protocol.name: self.attack_at(steps)}, source)

    def record(self) -> dict[str, Any]:
        """What a result stores: the protocol's name and sources, and every resolved setting."""
        return {"name": self.protocol.name, "summary": self.protocol.summary, "reference": self.protocol.reference,
                "dataset": self.dataset,
                "settings": {"attack": dict(self.attack), "draws": self.draws, "images": self.images,
                             "converge": self.converge, "converge_cap": self.converge_cap,
                             "step_rule": self.protocol.step_rule_text or None},
                "overridden": list(self.overridden), "sources": dict(self.protocol.sources)}


def protocol_names() -> list[str]:
    """The protocol names, in the order they are listed."""
    return list(PROTOCOLS)


def get_protocol(name: str) -> Protocol:
    """The protocol ``name`` (ProtocolError listing the valid ones)."""
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; valid: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def resolve(name: str, dataset: str, **overrides: Any) -> ResolvedProtocol:
    """Protocol ``name``'s settings for ``dataset``, each of ``overrides`` (eps, step_size,
    steps, eot, draws, images, converge, converge_cap, restarts, loss, version; None means
    "not given") replacing the protocol's. ``converge=False`` turns the doubling off,
    ``converge=True`` turns it on, ``converge=N`` starts it at N steps; ``steps`` is where a
    doubling starts unless ``converge=N`` says otherwise. ProtocolError on an unknown field, or where the
    protocol has no budget for the dataset and none is given."""
    protocol = get_protocol(name)
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(FIELDS) - {"attack"})
    if unknown or "attack" in given:
        raise ProtocolError(f"protocol {name!r} cannot take {', '.join(unknown or ['attack'])}: a protocol fixes the attack; "
                            f"the settings it takes are {', '.join(f for f in FIELDS if f != 'attack')}")
    for key in ("steps", "eot", "draws", "images", "converge_cap", "restarts"):
        value = given.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ProtocolError(f"protocol {name!r}: {key} must be an integer >= 1, got {value!r}")
    if not isinstance(given.get("converge", True), bool) and (not isinstance(given["converge"], int) or given["converge"] < 1):
        raise ProtocolError(f"protocol {name!r}: converge must be true, false or a step count >= 1, got {given['converge']!r}")
    eps = given.get("eps", protocol.eps.get(dataset))
    if eps is None:
        raise ProtocolError(f"protocol {name!r} has no L-inf budget for {dataset!r} (the paper has none: it reports "
                            f"{', '.join(protocol.eps)}): give one (--eps)")
    steps = int(given.get("steps", protocol.steps))
    converge = given.get("converge", protocol.converge)
    if converge is True or ("converge" not in given and converge is not None):  # --steps: where the doubling starts
        converge = steps if "steps" in given else (protocol.converge or steps)
    elif converge is False:
        converge = None
    attack: dict[str, Any] = {"attack": protocol.attack, "eps": float(eps), **protocol.extra}
    attack.update({k: given[k] for k in ("restarts", "loss", "version") if k in given})
    step_rule = None
    if protocol.attack == "pgd":
        if "step_size" in given:
            attack["step_size"] = float(given["step_size"])
        elif callable(protocol.step_size):
            step_rule = protocol.step_size
            attack["step_size"] = step_rule(float(eps), steps)
        elif isinstance(protocol.step_size, (int, float)):
            attack["step_size"] = float(protocol.step_size)
        elif dataset in PAPER_STEP_SIZE:
            attack["step_size"] = PAPER_STEP_SIZE[dataset]
        else:
            raise ProtocolError(f"protocol {name!r} has no step size for {dataset!r} at eps {eps:.4g}: give one (--step-size)")
    elif "step_size" in given:
        raise ProtocolError(f"protocol {name!r} runs {protocol.attack}, which has no step size")
    attack["steps"] = steps
    attack["eot"] = int(given.get("eot", protocol.eot))
    cap = given.get("converge_cap", protocol.converge_cap)
    if converge is None and "converge_cap" in given:
        raise ProtocolError(f"protocol {name!r} does not double its steps: a converge cap needs converging on (--converge)")
    if converge is not None:
        from menet.convergence import DEFAULT_CAP_FACTOR

        cap = cap if cap is not None else max(DEFAULT_CAP_FACTOR * int(converge), steps)
        if int(cap) < int(converge):
            raise ProtocolError(f"protocol {name!r}: the converge cap ({cap}) is below the first step count ({converge})")
        attack["steps"] = int(converge)
        if step_rule is not None:
            attack["step_size"] = step_rule(float(eps), int(converge))
    images = given.get("images", protocol.images)
    return ResolvedProtocol(protocol, dataset, attack, int(given.get("draws", protocol.draws)), images,
                            None if converge is None else int(converge), None if converge is None else int(cap),
                            tuple(sorted(given)), step_rule)


def evaluate_protocol(model: Any, test_images: Any, test_labels: Any, name: str, dataset: str, *, source: Any = None,
                      eval_dir: Any = None, tag: str | None = None, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """Evaluate ``model`` on uint8 ``test_images`` (N, C, H, W) and ``test_labels`` under protocol ``name``
    (its settings for ``dataset``, ``overrides`` replacing its fields, see ``resolve``):
    the first ``images`` examples the protocol names, its draws, and the steps doubled to
    convergence where it says so. ``source``: craft on this model (a transfer attack). With
    ``eval_dir`` the result is written there under ``tag`` (default: the protocol's name).
    Returns the result record, with the protocol's record under "protocol"."""
    from menet.convergence import evaluate_converged
    from menet.evaluation import ResultStore, evaluate

    batch_size = overrides.pop("batch_size", 256)
    resolved = resolve(name, dataset, **overrides)
    stop = resolved.images if resolved.images is not None else len(test_labels)
    images, labels = test_images[:stop], test_labels[:stop]
    tag = tag or name

    def attacks_at(steps: int) -> dict[str, Any]:
        return resolved.attacks(steps, source)

    common = {"draws": resolved.draws, "seed": seed, "batch_size": batch_size}
    metadata = {"protocol": resolved.record()}
    if resolved.converge is not None:
        result = evaluate_converged(model, images, labels, attacks_at, start=resolved.converge, cap=resolved.converge_cap,
                                    eval_dir=eval_dir, tag=tag, metadata=metadata, **common)
    else:
        store = ResultStore(eval_dir, tag, metadata=metadata) if eval_dir is not None else None
        result = evaluate(model, images, labels, attacks_at(resolved.attack["steps"]), store=store, **common)
    result.update(metadata)
    return result


def describe_protocols() -> str:
    """Each protocol on a few lines: what it is, its settings (CIFAR-10's where they depend on
    the dataset) and the source of each setting (what ``--list-protocols`` prints)."""
    from menet.summary import describe

    lines = []
    for protocol in PROTOCOLS.values():
        resolved = resolve(protocol.name, "cifar10")
        settings = dict(resolved.attack)
        if protocol.step_rule_text:
            settings["step_size"] = protocol.step_rule_text
        shown = "attack " + describe(settings)
        lines.append(f"{protocol.name}: {protocol.summary}")
        if protocol.reference:
            lines.append(f"  reference: {protocol.reference}")
        lines.append(f"  settings (CIFAR-10): {shown}; draws {resolved.draws}; images {resolved.images or 'all'}"
                     + (f"; steps doubled from {resolved.converge} to at most {resolved.converge_cap}" if resolved.converge else ""))
        for key, source in protocol.sources.items():
            lines.append(f"  {key}: {source}")
    return "\n".join(lines) + "\n"


__all__ = ["FIELDS", "PAPER_EPS", "PAPER_STEP_SIZE", "PROTOCOLS", "Protocol", "ProtocolError", "ResolvedProtocol",
           "describe_protocols", "evaluate_protocol", "get_protocol", "protocol_names", "resolve"]
