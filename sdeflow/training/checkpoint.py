r"""Checkpoints written atomically and verified before they are loaded.

**Format.** A checkpoint is two files:

- ``<name>.pt``: a plain :func:`torch.save` file (a zip archive) of a dict of tensors, numbers,
  strings and containers of them, readable without sdeflow by
  ``torch.load(path, weights_only=True)`` (the :class:`~sdeflow.training.Trainer` stores RNG
  states in that form);
- ``<name>.json`` beside it, the *sidecar*: a small JSON object ::

      {"format": 2, "step": 1200, "size": 7340412, "sha256": "<hex digest of the .pt>",
       "sdeflow": "0.1.0", "time": "2025-01-31T12:00:00+00:00"}

  where ``step`` is the state's ``"step"`` entry (``null`` when it has none).

**Writing.** Each file goes to a temporary file in the destination's folder, which is flushed,
``fsync``-ed and renamed over the destination (:func:`os.replace`, atomic on POSIX and Windows),
and the folder is synced: a crash at any point leaves the old ``.pt`` or the new one, never a
mix. The ``.pt`` is renamed first, then the sidecar, so a crash between the two leaves a new
``.pt`` beside the previous checkpoint's sidecar.

**Reading** checks, before anything is returned: that the file exists and is a zip archive
whose structure is whole (a truncated file has no central directory), the CRC-32 of every member
(a flipped byte in the stored data; :func:`torch.load` itself does not check them), that it
unpickles with ``weights_only=True`` into a dict, and, when the sidecar's ``step`` is the loaded
state's, the size and SHA-256 of the whole file (this also covers the bytes no CRC covers). A
sidecar of another step is the previous checkpoint's (a crash between the two renames) and is
ignored. Any failure raises :class:`CheckpointError` naming the file and what is wrong.

Files of the first format (a 56-byte header ``SDEFLOW-CKPT-v1\n`` | payload length | SHA-256,
then the :func:`torch.save` payload) are still read, with their own checks.

A run folder holds the rolling ``checkpoint.pt`` and, when the trainer keeps them
(``Checkpointing(keep_every=k)``), the checkpoints ``checkpoints/step_0001000.pt`` of chosen
steps (:func:`kept_checkpoint_path`), listed in step order by :func:`list_checkpoints`.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import os
import re
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "verify_checkpoint",
    "sidecar_path",
    "kept_checkpoint_path",
    "list_checkpoints",
]

#: Version of the sidecar's format.
SIDECAR_FORMAT = 2
MAGIC = b"SDEFLOW-CKPT-v1\n"  # the first format's header
_HEADER = struct.Struct("<16sQ32s")
_ZIP_MAGIC = b"PK\x03\x04"
KEPT_DIR = "checkpoints"
_KEPT_NAME = re.compile(r"step_(\d+)\.pt")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or not an sdeflow checkpoint."""


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of the checkpoint ``path``: ``name.pt`` -> ``name.json``.

    Example:
        >>> sidecar_path("run/checkpoint.pt").as_posix()
        'run/checkpoint.json'
    """
    path = Path(path)
    if path.suffix == ".json":
        raise ValueError(f"path {path} must not end in .json (that is the sidecar's name)")
    return path.with_suffix(".json")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    r"""Write ``state`` to ``path`` and its sidecar atomically (see the module docstring).

    Arguments:
        state: A dict of tensors, numbers, strings and containers of them.
        path: Destination file; its folder is created if missing.

    Returns:
        The destination path.

    Example:
        >>> import json, tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save_checkpoint({"w": torch.ones(2), "step": 3}, f"{d}/ckpt.pt")
        ...     plain = torch.load(p, weights_only=True)  # no sdeflow needed to read it
        ...     side = json.loads(sidecar_path(p).read_text())
        ...     plain["w"], side["step"], load_checkpoint(p)["step"]
        (tensor([1., 1.]), 3, 3)
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    path = Path(path)
    sidecar = sidecar_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # serialize first: a pickling error touches no file
    payload = buffer.getvalue()
    from sdeflow import __version__

    step = state.get("step")
    meta = {"format": SIDECAR_FORMAT,
            "step": step if isinstance(step, int) and not isinstance(step, bool) else None,
            "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
            "sdeflow": __version__,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    _write_atomic(path, payload)
    _write_atomic(sidecar, (json.dumps(meta, indent=1) + "\n").encode())
    # temp files of writes that a killed run left half-done
    for name in (path.name, sidecar.name):
        for stale in path.parent.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


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


def _old_format_payload(path: Path, data: bytes) -> bytes:
    """The payload of a first-format file, its header checked."""
    if len(data) < _HEADER.size:
        raise CheckpointError(f"checkpoint {path} is truncated: {len(data)} bytes, shorter than "
                              f"the {_HEADER.size}-byte header")
    _, length, digest = _HEADER.unpack_from(data)
    payload = data[_HEADER.size:]
    if len(payload) != length:
        raise CheckpointError(f"checkpoint {path} is truncated or padded: payload of "
                              f"{len(payload)} bytes, header says {length}")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: SHA-256 checksum mismatch")
    return payload


def _check_zip(path: Path, data: bytes) -> None:
    """The archive's structure and every member's CRC-32."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile as err:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: not a whole zip "
                              f"archive ({err}; {len(data)} bytes)") from err
    except (zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt: {err}") from err
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: CRC-32 mismatch in {bad}")


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's fields (``None`` when it is missing or unreadable: it is only a cross
    check)."""
    try:
        meta = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _load(path: Path, map_location: str | torch.device | None) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    old = data.startswith(MAGIC)
    if old:
        data = _old_format_payload(path, data)
    elif not data.startswith(_ZIP_MAGIC):
        what = "empty" if not data else "truncated" if len(data) < len(_ZIP_MAGIC) else None
        if what is not None:
            raise CheckpointError(f"checkpoint {path} is {what}: {len(data)} bytes")
        raise CheckpointError(f"checkpoint {path} is not an sdeflow checkpoint (neither a "
                              f"torch.save zip archive nor the first format's header)")
    else:
        _check_zip(path, data)
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} could not be loaded: {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    meta = None if old else _read_sidecar(path)
    if meta is not None and meta.get("step") == state.get("step"):
        if meta.get("size") != len(data):
            raise CheckpointError(
                f"checkpoint {path} is truncated or padded: {len(data)} bytes, its sidecar "
                f"{sidecar_path(path)} says {meta.get('size')}")
        if meta.get("sha256") != hashlib.sha256(data).hexdigest():
            raise CheckpointError(
                f"checkpoint {path} is corrupt: SHA-256 checksum mismatch with its sidecar "
                f"{sidecar_path(path)}")
    return state


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a complete, uncorrupted checkpoint.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save_checkpoint({"step": 1}, f"{d}/c.pt")
        ...     _ = p.write_bytes(p.read_bytes()[:-10])
        ...     verify_checkpoint(p)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        sdeflow.training.checkpoint.CheckpointError: checkpoint .../c.pt is truncated or ...
    """
    _load(Path(path), "cpu")


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = None
) -> dict[str, Any]:
    """Verify and load a checkpoint written by :func:`save_checkpoint` (or by the first
    format's writer).

    Raises:
        CheckpointError: The file is missing, truncated, corrupt, or cannot be unpickled.
    """
    return _load(Path(path), map_location)


def kept_checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """Where a run keeps its checkpoint of ``step``: ``run_dir/checkpoints/step_{step:07d}.pt``.

    Example:
        >>> kept_checkpoint_path("run", 1000).as_posix()
        'run/checkpoints/step_0001000.pt'
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    return Path(run_dir) / KEPT_DIR / f"step_{step:07d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    r"""The checkpoints a run kept (``Checkpointing(keep_every=k)``), sorted by step.

    The rolling ``checkpoint.pt`` is not among them; files that are not ``step_<digits>.pt``
    (the sidecars, the temporary files of an interrupted write) are ignored.

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
