"""Reader for the IDX format of MNIST and Fashion-MNIST (gzip-compressed or raw)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from menet.data.errors import DatasetError

GZIP_MAGIC = b"\x1f\x8b"
UBYTE = 0x08  # IDX type code for unsigned bytes, the only one MNIST-style files use


def read_file(path: Path) -> tuple[bytes, bytes]:
    """(raw bytes, decompressed content) of ``path`` (gzip detected by its magic bytes)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({err.strerror})") from None
    if raw[:2] != GZIP_MAGIC:
        return raw, raw
    try:
        return raw, gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise DatasetError(f"{path}: corrupt or truncated gzip file ({err})") from None


def parse_idx(content: bytes, source: str, ndim: int) -> np.ndarray:
    """Parse IDX ``content`` into a uint8 array with ``ndim`` dims; errors name ``source``."""
    if len(content) < 4:
        raise DatasetError(f"{source}: {len(content)} bytes is too short for an IDX header")
    zero, dtype, dims = content[:2], content[2], content[3]
    expected_magic = 0x800 | ndim
    if zero != b"\x00\x00" or dtype != UBYTE or dims != ndim:
        found = int.from_bytes(content[:4], "big")
        raise DatasetError(
            f"{source}: not an IDX file of the expected kind: magic 0x{found:08X}, "
            f"expected 0x{expected_magic:08X} (uint8, {ndim} dims)"
        )
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DatasetError(f"{source}: truncated IDX header ({len(content)} of {header} bytes)")
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    payload = len(content) - header
    if payload != expected:
        kind = "truncated" if payload < expected else "has trailing data"
        raise DatasetError(
            f"{source}: {kind}: header says shape {shape} = {expected} bytes, found {payload}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an IDX file (raw or .gz) with ``ndim`` dims (3 for images, 1 for labels) as uint8."""
    path = Path(path)
    return parse_idx(read_file(path)[1], str(path), ndim)
