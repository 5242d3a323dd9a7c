"""A run directory: its files, its config, and the trained (defended) model it holds.

``runs/NAME/`` holds config.yaml (the TrainConfig, with a header comment naming the defense's
rule), model.pt (a state dict), last.pt (resume state), history.csv / history.jsonl, and
eval/ (attack results). Training writes these files; evaluation and reports read them here.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import nn

from menet.checkpoint import CheckpointError, load_state_into, load_weights_only
from menet.config import ConfigError, TrainConfig, config_from_dict
from menet.defense import GRADIENTS, MatrixEstimation, MENet
from menet.estimation import get_method
from menet.io_atomic import write_text_atomic
from menet.models import build_model_for_dataset

CONFIG_FILE, MODEL_FILE, LAST_FILE = "config.yaml", "model.pt", "last.pt"
HISTORY_CSV, HISTORY_JSONL = "history.csv", "history.jsonl"
RUN_FILES = (LAST_FILE, MODEL_FILE, HISTORY_CSV, HISTORY_JSONL)  # besides config.yaml
EVAL_DIR = "eval"


def build_defense(config: TrainConfig, p: float | None = None, generator: torch.Generator | None = None,
                  gradient: str = "bpda") -> MatrixEstimation:
    """The run's MatrixEstimation at keep-probability ``p`` (default: the inference p)."""
    d = config.defense
    return MatrixEstimation(d.method, p=d.inference_p() if p is None else p, layout=d.layout, gradient=gradient,
                            generator=generator, **d.options)


def deployed_model(config: TrainConfig, network: nn.Module, generator: torch.Generator | None = None,
                   gradient: str = "bpda") -> nn.Module:
    """The run's model as deployed: MENet(network, defense at the inference p) for ME-Net
    modes (masks from ``generator``, gradients per ``gradient``), else the network itself."""
    if not config.defended:
        return network
    return MENet(network, build_defense(config, generator=generator, gradient=gradient))


def config_header(config: TrainConfig) -> str:
    """Comment lines for config.yaml: the mode and, for ME-Net modes, the defense in words."""
    lines = [f"# menet run {config.name!r}: mode {config.mode}, {config.model} on {config.dataset}"]
    if config.imported_from is not None:
        lines.append(f"# imported by menet import-run from {config.imported_from}: trained elsewhere, not by menet")
    if config.defended:
        d = config.defense
        rule = get_method(d.method).rule(d.options)
        trained = "" if config.imported_from is not None else f"; training p in [{d.train_ps()[0]:g}, {d.p_end:g}]"
        lines.append(f"# defense: {d.method}" + (f", {rule}" if rule else "") + f"{trained}, inference p {d.inference_p():g}")
    return "\n".join(lines) + "\n"


def write_config(run_dir: str | Path, config: TrainConfig) -> None:
    """Write config.yaml atomically (safe_dump, with the header comment)."""
    write_text_atomic(Path(run_dir) / CONFIG_FILE, config_header(config) + yaml.safe_dump(config.to_dict(), sort_keys=False))


def read_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig saved in ``run_dir``/config.yaml; one-line CheckpointError otherwise."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{Path(run_dir)}: no {CONFIG_FILE}: not a menet run directory") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise CheckpointError(f"{path}: not valid YAML{at}: restore the file from the run or train again") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    try:
        return config_from_dict(data)
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{path}: {err}") from None


def model_fingerprint(run_dir: str | Path) -> str:
    """A short SHA-256 of the run's model.pt: results record it, so that an evaluation of other
    weights (retrained, overwritten) is never resumed or reused as this one."""
    import hashlib

    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def evaluation_inputs(run_dir: str | Path, *, dataset: str, offset: int = 0, gradient: str = "bpda",
                      transfer_from: str | Path | None = None) -> dict[str, object]:
    """What an evaluation of a run depends on beyond its attack settings (see ``evaluate``)."""
    inputs: dict[str, object] = {"model": model_fingerprint(run_dir), "dataset": dataset, "split": "test",
                                 "offset": offset, "gradient": gradient}
    if transfer_from is not None:
        inputs.update(transfer_from=str(transfer_from), source_model=model_fingerprint(transfer_from))
    return inputs


def load_network(run_dir: str | Path) -> tuple[TrainConfig, nn.Module]:
    """(config, the trained network without the defense) of a run, in eval mode."""
    run = Path(run_dir)
    config = read_config(run)
    network = build_model_for_dataset(config.model, config.dataset, **config.model_options)
    load_state_into(network, load_weights_only(run / MODEL_FILE), str(run / MODEL_FILE), config.model,
                    candidates=lambda: _candidate_networks(config))
    return config, network.eval()


def _candidate_networks(config: TrainConfig) -> dict[str, nn.Module]:
    """Every registered model built for the run's dataset (to say which one some weights fit)."""
    from menet.models import model_names

    return {name: build_model_for_dataset(name, config.dataset) for name in model_names()}


def load_model(run_dir: str | Path, gradient: str = "bpda", generator: torch.Generator | None = None) -> nn.Module:
    """Rebuild the trained model of a run, in eval mode: the plain network, or MENet for
    ME-Net modes. The attacker chooses how gradients pass the defense (``gradient``: "bpda"
    or "exact", USVT only); masks are drawn from ``generator`` (seed it to repeat draws)."""
    if gradient not in GRADIENTS:
        raise ValueError(f"unknown gradient {gradient!r}; valid: {', '.join(GRADIENTS)}")
    config, network = load_network(run_dir)
    return deployed_model(config, network, generator=generator, gradient=gradient).eval()
