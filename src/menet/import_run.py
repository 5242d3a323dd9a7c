"""A run folder from weights trained elsewhere (``menet import-run``), so attack and report work on it.

The folder holds what ``menet train`` writes (config.yaml, model.pt as a plain state dict,
history.csv / history.jsonl, here without epochs) and is marked as imported: the config's
``imported_from`` names the weights file and its SHA-256, and config.yaml's header says that
menet did not train it. Nothing is written until every check has passed, and then the folder
appears at once (built under a temporary name and renamed), so a failure leaves no partial run.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from menet.checkpoint import CheckpointError, load_state_into, load_weights_only, save_atomic
from menet.config import ConfigError, TrainConfig, apply_overrides, config_from_dict
from menet.data import get_dataset_spec
from menet.io_atomic import write_text_atomic
from menet.models import build_model_for_dataset
from menet.models.custom import check_output
from menet.runs import HISTORY_CSV, HISTORY_JSONL, MODEL_FILE, write_config
from menet.training import HISTORY_FIELDS


def import_config(*, model: str, weights: str | Path, dataset: str, name: str, defense: str | None = None,
                  p: float | None = None, layout: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """The (resolved, validated) config of an imported run: mode menet when ``defense`` (a
    method name) is given, else vanilla; ``p`` is the inference keep-probability; ``overrides``
    are ``key=value`` like ``menet train --set`` (e.g. ``defense.options.rank_fraction=0.5``).
    Another mode (``--set mode=madry``, ``menet-adv``, or menet without ``defense``) is refused
    in one line: how weights trained elsewhere were trained is not known to menet."""
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest() if Path(weights).is_file() else "missing"
    data: dict[str, Any] = {"name": name, "dataset": dataset, "model": model, "mode": "menet" if defense else "vanilla",
                            "epochs": 0, "imported_from": f"{Path(weights).resolve()} (sha256 {digest[:16]})"}
    section = {key: value for key, value in (("method", defense), ("p_infer", p), ("layout", layout)) if value is not None}
    if section:
        data["defense"] = section
    data = apply_overrides(data, list(overrides or []))
    expected = "menet" if defense else "vanilla"
    if data.get("mode") != expected:
        # The mode says how the weights were trained (madry, menet-adv: adversarially), and
        # config.yaml and the report say it in turn; of weights trained elsewhere menet knows not.
        raise ConfigError(f"--set mode={data.get('mode')} refused: the training mode of imported weights is not known "
                          "to menet; an imported run is mode vanilla (the plain network) or, with --defense METHOD, menet")
    config = config_from_dict(data)
    if not config.defended and (section or any(item.startswith("defense.") for item in overrides or [])):
        # The plain network would be deployed: refuse rather than drop the defense the user asked for.
        raise ConfigError(f"--defense, --p, --layout and --set defense.* deploy the network behind ME-Net, but mode "
                          f"{config.mode} deploys the plain network: give --defense METHOD (and no --set mode=), "
                          "or leave them out")
    return config.resolved()


def _plain_state_dict(state: Any, source: str) -> dict[str, torch.Tensor]:
    """``state`` if it is a plain state dict (names -> tensors); one-line CheckpointError saying
    what was expected (and how to get it from a common checkpoint layout) otherwise."""
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    hint = ""
    if isinstance(state, dict):
        nested = [k for k in ("state_dict", "model", "model_state_dict", "net") if isinstance(state.get(k), dict)]
        if nested:
            hint = f"; it holds one under {nested[0]!r}: save that alone, torch.save(checkpoint[{nested[0]!r}], FILE)"
    what = f"a dict of {len(state)} entries, not all tensors" if isinstance(state, dict) else f"a {type(state).__name__}"
    raise CheckpointError(f"{source}: expected a plain state dict (torch.save(model.state_dict(), FILE)), got {what}{hint}")


def import_run(config: TrainConfig, weights: str | Path, runs_dir: str | Path, device: str | None = None) -> Path:
    """Write ``runs_dir``/NAME from ``weights`` (a state dict file, loaded with weights_only=True)
    and ``config`` (from ``import_config``). Raises (one line) before writing anything when the
    folder exists, the weights are no plain state dict or do not fit the network, or the
    network does not map the dataset's images to its classes."""
    run = Path(runs_dir) / config.name
    if run.exists():
        raise FileExistsError(f"{run} already exists: choose another --name or remove it")
    source = str(weights)
    state = _plain_state_dict(load_weights_only(weights), source)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    with torch.random.fork_rng():  # building initialises weights: leave the caller's RNG as it was
        network = build_model_for_dataset(config.model, config.dataset, **config.model_options)
    load_state_into(network, state, source, config.model)
    spec = get_dataset_spec(config.dataset)
    check_output(network.to(device or "cpu"), config.model, spec.image_shape, spec.num_classes)
    network.to("cpu")
    run.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=run.parent, prefix=f".{config.name}.importing-"))
    try:
        save_atomic({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, staging / MODEL_FILE)
        write_text_atomic(staging / HISTORY_CSV, ",".join(HISTORY_FIELDS) + "\n")  # no epoch was trained here
        write_text_atomic(staging / HISTORY_JSONL, "")
        write_config(staging, config)
        staging.rename(run)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run
