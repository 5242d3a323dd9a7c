"""Published checksums of the official dataset files, and their verification."""

from __future__ import annotations

import hashlib
from pathlib import Path

from menet.data.errors import DatasetError

# MD5 of the official gzip files.
OFFICIAL_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

# SHA-256 of the decompressed content (Debian recompresses Fashion-MNIST, changing the gz MD5).
CONTENT_SHA256: dict[str, dict[str, str]] = {
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB blocks."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_md5(source: str, actual: str, expected: str) -> None:
    """Raise DatasetError naming ``source`` unless the MD5 ``actual`` equals ``expected``."""
    if actual != expected:
        raise DatasetError(f"{source}: checksum mismatch: expected MD5 {expected}, found {actual}")


def verify_content(dataset: str, path: Path, raw: bytes, content: bytes) -> str:
    """Check ``path`` (its bytes ``raw``, decompressed ``content``) against published checksums.

    A .gz file passes on the official gz MD5 or on the decompressed SHA-256 (where published);
    a raw file on the SHA-256. Returns "md5 ok", "sha256 ok", or "unverified" when nothing is
    published for this form of the file. Raises DatasetError naming the file, the expected
    and the actual values on a mismatch.
    """
    compressed = path.name.endswith(".gz")
    stem = path.name[:-3] if compressed else path.name
    md5 = OFFICIAL_MD5.get(dataset, {}).get(stem + ".gz") if compressed else None
    sha = CONTENT_SHA256.get(dataset, {}).get(stem)
    if md5 is None and sha is None:
        return "unverified"
    actual_md5 = hashlib.md5(raw).hexdigest() if md5 is not None else None
    if md5 is not None and actual_md5 == md5:
        return "md5 ok"
    actual_sha = hashlib.sha256(content).hexdigest()
    if sha is not None and actual_sha == sha:
        return "sha256 ok"
    expected = " or ".join(x for x in (md5 and f"gz MD5 {md5}", sha and f"content SHA-256 {sha}") if x)
    found = ", ".join(x for x in (actual_md5 and f"gz MD5 {actual_md5}", f"content SHA-256 {actual_sha}") if x)
    raise DatasetError(
        f"{path}: checksum mismatch for {dataset}: expected {expected}; found {found}. "
        "The file is corrupt or not the official one."
    )
