"""File helpers shared by the data loaders (private)."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["md5"]


def md5(path: Path) -> str:
    """The MD5 hex digest of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
