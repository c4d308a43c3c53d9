r"""Many samples drawn in resumable chunks.

``K`` samples are split into chunks of ``batch_size``; chunk :math:`i` is drawn from its own
seed (:func:`chunk_seed`), so its images do not depend on which process draws it or when. Under
``torchrun`` rank :math:`r` of :math:`R` takes the chunks :math:`i \equiv r \pmod R`. Each chunk
is saved as ``chunk_XXXXXX.npz`` (``uint8`` images) in the folder before it is handed on (e.g.
to :func:`~sdeflow.evaluation.scoring.sample_fid`, which streams its features into
:class:`sdeflow.metrics.FeatureSums`): a drawing that is stopped resumes where it was, counting
the chunks on disk, even with another number of processes, and a larger drawing (more samples,
the same chunk size and seed) reuses the chunks of a smaller one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from sdeflow.training.distributed import DistributedContext

__all__ = ["chunk_sizes", "chunk_seed", "draw_chunks"]

_CHUNK = "chunk_{:06d}.npz"


def chunk_sizes(n: int, batch_size: int) -> list[int]:
    """The sizes of the chunks of ``n`` samples: ``batch_size`` each, the last one smaller.

    Example:
        >>> chunk_sizes(10, 4)
        [4, 4, 2]
    """
    for name, value in (("n", n), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    full, rest = divmod(n, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def chunk_seed(seed: int, index: int) -> int:
    """The seed of chunk ``index`` of a drawing seeded by ``seed`` (distinct for distinct pairs
    of small integers)."""
    return (int(seed) * 1_000_003 + int(index)) % (2**63)


def _save_chunk(path: Path, images: Tensor) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images.cpu().numpy())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_chunk(path: Path, size: int, shape: tuple[int, ...] | None) -> Tensor | None:
    """The chunk's images, or ``None`` when the file is unreadable or of another size."""
    try:
        with np.load(path, allow_pickle=False) as data:
            images = data["images"]
    except Exception:  # a chunk cut short by a kill is redrawn, whatever the error
        return None
    if images.dtype != np.uint8 or images.shape[0] != size or (
            shape is not None and tuple(images.shape[1:]) != tuple(shape)):
        return None
    return torch.from_numpy(images)


def _check_meta(folder: Path, meta: dict[str, Any], ctx: DistributedContext) -> None:
    """Chunks on disk must come from the same drawing: a ``meta.json`` records it."""
    path = folder / "meta.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != meta:
            differ = ", ".join(f"{k}: {saved.get(k)!r} on disk vs {v!r} now"
                               for k, v in meta.items() if saved.get(k) != v)
            raise ValueError(f"{folder} holds samples of another drawing ({differ}); delete the "
                             f"folder or write elsewhere")
    ctx.barrier()
    if ctx.is_main and not path.exists():
        path.write_text(json.dumps(meta, indent=2) + "\n")


def draw_chunks(
    draw: Callable[[int], Tensor],
    n: int,
    folder: str | os.PathLike | None,
    *,
    batch_size: int,
    seed: int,
    ctx: DistributedContext | None = None,
    on_chunk: Callable[[Tensor], None] | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    desc: str = "samples",
) -> dict[str, Any]:
    r"""Draw ``n`` samples (``uint8`` images) in chunks saved to ``folder``, resuming from the
    chunks already there; call ``on_chunk(images)`` on each of this rank's chunks.

    Arguments:
        draw: ``draw(b) -> uint8 images (b, C, H, W)``; called under a forked RNG seeded by
            :func:`chunk_seed` (torch's global generators, CPU and CUDA).
        n: The number of samples (over all ranks).
        folder: Where the chunks are saved (created if missing); ``None``: nowhere (nothing
            to resume from).
        batch_size: Samples per chunk.
        seed: The drawing's seed.
        ctx: The distributed context (default: one process).
        on_chunk: Called with each chunk's images (loaded or drawn) on the rank that owns it.
        meta: What identifies the drawing (saved as ``meta.json``; chunks of another drawing
            in ``folder`` raise ``ValueError``).
        progress: Show a tqdm bar on rank 0.
        desc: The bar's label.

    Returns:
        ``{"samples", "chunks", "chunks_reused", "chunks_drawn", "draw_seconds",
        "images_per_s"}``, summed over the ranks; ``images_per_s`` counts drawn samples only
        (``None`` when all were reused).

    Example:
        >>> import tempfile
        >>> draw = lambda b: torch.randint(0, 256, (b, 1, 2, 2), dtype=torch.uint8)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     first = draw_chunks(draw, 5, d, batch_size=2, seed=0, progress=False)
        ...     again = draw_chunks(draw, 5, d, batch_size=2, seed=0, progress=False)
        >>> first["chunks_drawn"], again["chunks_reused"], again["chunks_drawn"]
        (3, 3, 0)
    """
    ctx = ctx or DistributedContext()
    sizes = chunk_sizes(n, batch_size)
    if folder is not None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # not n: a larger drawing of the same kind reuses the chunks of a smaller one
        _check_meta(folder, {"batch_size": batch_size, "seed": seed, **(meta or {})}, ctx)
    mine = list(range(ctx.rank, len(sizes), ctx.world_size))
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    reused = drawn = drawn_images = 0
    seconds = 0.0
    shape = None
    bar = tqdm(total=n, disable=not (progress and ctx.is_main), desc=desc, dynamic_ncols=True)
    try:
        for index in mine:
            path = None if folder is None else folder / _CHUNK.format(index)
            images = (_load_chunk(path, sizes[index], shape)
                      if path is not None and path.exists() else None)
            if images is None:
                started = time.perf_counter()
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(chunk_seed(seed, index))
                    images = draw(sizes[index])
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                seconds += time.perf_counter() - started
                if images.dtype != torch.uint8 or images.shape[0] != sizes[index]:
                    raise ValueError(f"draw({sizes[index]}) must return {sizes[index]} uint8 "
                                     f"images, got {images.dtype} of shape "
                                     f"{tuple(images.shape)}")
                images = images.cpu()
                if path is not None:
                    _save_chunk(path, images)
                drawn, drawn_images = drawn + 1, drawn_images + images.shape[0]
            else:
                reused += 1
            shape = tuple(images.shape[1:])
            if on_chunk is not None:
                on_chunk(images)
            bar.update(images.shape[0] * ctx.world_size)
    finally:
        bar.close()
    counts = ctx.all_reduce_sum(torch.tensor([reused, drawn, drawn_images, seconds],
                                             dtype=torch.float64))
    reused, drawn, drawn_images = (int(v) for v in counts[:3])
    # the ranks draw in parallel: the wall time is about the slowest rank's
    wall = float(counts[3]) / ctx.world_size
    return {"samples": n, "chunks": len(sizes), "chunks_reused": reused, "chunks_drawn": drawn,
            "draw_seconds": round(wall, 3),
            "images_per_s": round(drawn_images / wall, 3) if drawn and wall > 0 else None}
