"""A readable report of what menet finds for a dataset: where it looked, files, checksums."""

from __future__ import annotations

from pathlib import Path

from menet.data.errors import DatasetError
from menet.data.registry import SPLITS, get_dataset_spec, load_dataset, resolve_data_dir


def _files(directory: Path, limit: int = 20) -> list[str]:
    entries = []
    for path in sorted(directory.iterdir()):
        if path.is_file():
            entries.append(f"  {path.name}  {path.stat().st_size:,} bytes")
        elif path.is_dir():
            entries.append(f"  {path.name}/")
    return entries[:limit] + ([f"  ... {len(entries) - limit} more"] if len(entries) > limit else [])


def dataset_report(name: str, data_dir: str | Path | None = None) -> tuple[str, bool]:
    """Where ``name`` is looked for, the files there, and whether each split loads and verifies.

    Returns the report and whether every split loaded.
    """
    spec = get_dataset_spec(name)
    c, h, w = spec.image_shape
    lines = [f"{name}: {c} x {h} x {w} images, {spec.num_classes} classes; official files: {spec.source}"]
    try:
        directory = resolve_data_dir(name, data_dir)
    except DatasetError as err:
        return "\n".join([*lines, f"error: {err}"]), False
    lines.append(f"looked in: {directory}" + ("" if directory.is_dir() else "  (does not exist)"))
    if directory.is_dir():
        lines += _files(directory)
    ok = True
    for split in SPLITS:
        try:
            data = load_dataset(name, split, directory, verify=True)
        except DatasetError as err:
            lines.append(f"{split}: error: {err}")
            ok = False
            continue
        size_mb = data.images.numel() / 2**20
        lines.append(
            f"{split}: {data.images.shape[0]:,} images ({size_mb:,.1f} MiB as uint8), checksums ok "
            "where published"
        )
    return "\n".join(lines), ok
