r"""Checkpoints written atomically and verified before they are loaded.

A checkpoint file is a fixed header followed by a :func:`torch.save` payload::

    MAGIC (16 bytes) | payload length (8 bytes, little endian) | SHA-256 of payload (32 bytes)
    | payload

Writing goes to a temporary file in the destination's folder, which is flushed, ``fsync``-ed
and then renamed over the destination (:func:`os.replace`, atomic on POSIX and Windows): a crash
or an error at any point leaves either the old checkpoint or the new one, never a mix. Reading
checks the magic, the length and the checksum before unpickling, so a truncated or corrupt file
raises :class:`CheckpointError` naming the file and what is wrong, and is never loaded silently.
Payloads are loaded with ``weights_only=True``: tensors, numbers, strings and containers of
them (the :class:`~sdeflow.training.Trainer` stores RNG states in that form).

A run folder holds the rolling ``checkpoint.pt`` and, when the trainer keeps them
(``keep_every``), the checkpoints ``checkpoints/step_0001000.pt`` of chosen steps
(:func:`kept_checkpoint_path`), listed in step order by :func:`list_checkpoints`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "verify_checkpoint",
    "kept_checkpoint_path",
    "list_checkpoints",
]

MAGIC = b"SDEFLOW-CKPT-v1\n"
_HEADER = struct.Struct("<16sQ32s")
KEPT_DIR = "checkpoints"
_KEPT_NAME = re.compile(r"step_(\d+)\.pt")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or not an sdeflow checkpoint."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    r"""Write ``state`` to ``path`` atomically (temporary file + ``fsync`` + rename).

    Arguments:
        state: A dict of tensors, numbers, strings and containers of them.
        path: Destination file; its folder is created if missing.

    Returns:
        The destination path.

    Example:
        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save_checkpoint({"w": torch.ones(2)}, f"{d}/ckpt.pt")
        ...     load_checkpoint(p)["w"]
        tensor([1., 1.])
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # serialize first: a pickling error touches no file
    payload = buffer.getvalue()
    header = _HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    # temp files of writes that a killed run left half-done: each holds a whole checkpoint
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
    return path


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not possible on every platform (e.g. Windows)
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_payload(path: Path) -> bytes:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    if len(data) < _HEADER.size:
        raise CheckpointError(f"checkpoint {path} is truncated: {len(data)} bytes, shorter than "
                              f"the {_HEADER.size}-byte header")
    magic, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError(f"checkpoint {path} is not an sdeflow checkpoint (bad header)")
    payload = data[_HEADER.size:]
    if len(payload) != length:
        raise CheckpointError(f"checkpoint {path} is truncated or padded: payload of "
                              f"{len(payload)} bytes, header says {length}")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: SHA-256 checksum mismatch")
    return payload


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a complete, uncorrupted checkpoint."""
    _read_payload(Path(path))


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = None
) -> dict[str, Any]:
    """Verify and load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: The file is missing, truncated, corrupt, or cannot be unpickled.
    """
    path = Path(path)
    payload = _read_payload(path)
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:  # the checksum matched, so the writer stored something unloadable
        raise CheckpointError(f"checkpoint {path} could not be loaded: {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    return state


def kept_checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """Where a run keeps its checkpoint of ``step``: ``run_dir/checkpoints/step_{step:07d}.pt``."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    return Path(run_dir) / KEPT_DIR / f"step_{step:07d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    r"""The checkpoints a run kept (``Trainer(keep_every=k)``), sorted by step.

    The rolling ``checkpoint.pt`` is not among them; files that are not ``step_<digits>.pt``
    (such as the temporary files of an interrupted write) are ignored.

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder.

    Example:
        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for step in (20, 5, 100):
        ...         _ = save_checkpoint({"step": step}, kept_checkpoint_path(d, step))
        ...     [load_checkpoint(p)["step"] for p in list_checkpoints(d)]
        [5, 20, 100]
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir {run_dir} is not a folder")
    folder = run_dir / KEPT_DIR
    if not folder.is_dir():
        return []
    kept = []
    for path in folder.iterdir():
        match = _KEPT_NAME.fullmatch(path.name)
        if match is not None and path.is_file():
            kept.append((int(match.group(1)), path))
    return [path for _, path in sorted(kept)]
