r"""FID at the run level: the reference of a run, and the FID of a model's samples, on one
process or many.

The statistics, the feature extractor and the score are :mod:`sdeflow.metrics`'; this module
adds what a run needs around them. :func:`reference_for_fid` gives the reference
:math:`(\mu_r, \Sigma_r)`: published statistics from an ``.npz`` file, or those of a data split
computed once, shared among the ranks, and cached (:func:`sdeflow.metrics.reference_statistics`).
:func:`sample_fid` draws :math:`K` samples in seeded, resumable chunks
(:func:`~sdeflow.evaluation.samples.draw_chunks`), streams each chunk's features into
:class:`sdeflow.metrics.FeatureSums`, all-reduces the sums over the ranks and returns

.. math:: \mathrm{FID} = \lVert \mu_s - \mu_r \rVert^2
    + \operatorname{tr}\big(\Sigma_s + \Sigma_r - 2 (\Sigma_s \Sigma_r)^{1/2}\big)

(:func:`sdeflow.metrics.fid` of those sums), the same number as the library's FID of the same
images.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from sdeflow.evaluation.samples import draw_chunks
from sdeflow.metrics import (
    FeatureSums,
    accumulate_features,
    fid,
    load_inception,
    reference_statistics,
)
from sdeflow.training.distributed import DistributedContext

__all__ = ["reference_for_fid", "sample_fid"]

Extractor = Callable[[Tensor], Tensor]


def reference_for_fid(
    images: Callable[[], Tensor],
    *,
    ref_stats: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    inception: Extractor | None = None,
    batch_size: int = 200,
    ctx: DistributedContext | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(mu, sigma, info)`` of a run's FID reference, on every rank.

    Arguments:
        images: Returns the reference images (``uint8`` ``(N, C, H, W)``); called on every rank
            unless ``ref_stats`` is given.
        ref_stats: An ``.npz`` of published statistics (``mu``, ``sigma``) to use as they are.
        cache: The ``.npz`` file caching the statistics of ``images()`` (read when it is there
            and records as many images; written by rank 0 otherwise).
        inception: The feature extractor (default: the shared Inception network of
            ``ctx.device``, :func:`sdeflow.metrics.load_inception`).
        batch_size: Images per extractor call.
        ctx: The distributed context (default: one process); the ranks share the batches.
        progress: A tqdm bar on rank 0.

    Returns:
        ``mu`` ``(D,)``, ``sigma`` ``(D, D)`` and ``{"source": "file" | "computed", "path"}``.

    Example:
        >>> import os, tempfile, torch
        >>> images = torch.randint(0, 256, (8, 1, 2, 2), dtype=torch.uint8)
        >>> flat = lambda x: x.flatten(1).double()  # a stand-in for Inception
        >>> cache = os.path.join(tempfile.mkdtemp(), "ref.npz")
        >>> mu, sigma, info = reference_for_fid(lambda: images, cache=cache, inception=flat,
        ...                                     progress=False)
        >>> mu.shape, info["source"], os.path.exists(cache)
        ((4,), 'computed', True)
    """
    ctx = ctx or DistributedContext()
    if ref_stats is not None:
        mu, sigma = reference_statistics(ref_stats)
        return mu, sigma, {"source": "file", "path": str(ref_stats)}
    if cache is None:
        raise ValueError("give ref_stats or a cache file for the reference statistics, got "
                         "neither")
    mu, sigma = reference_statistics(
        images(), cache, extractor=inception if inception is not None else
        load_inception(ctx.device), batch_size=batch_size, device=ctx.device, ctx=ctx,
        progress=progress)
    return mu, sigma, {"source": "computed", "path": str(Path(cache))}


def sample_fid(
    draw: Callable[[int], Tensor],
    n: int,
    reference: tuple[np.ndarray, np.ndarray] | str | os.PathLike | Tensor,
    *,
    inception: Extractor | None = None,
    batch_size: int = 500,
    feature_batch_size: int = 200,
    seed: int = 0,
    ctx: DistributedContext | None = None,
    folder: str | os.PathLike | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    desc: str = "samples",
) -> dict[str, Any]:
    """FID of ``n`` samples of ``draw(b) -> uint8 images`` against ``reference``; returns
    ``{"fid", **draw_chunks' counts}`` on every rank.

    Arguments:
        draw: The sampler, ``draw(b) -> uint8 (b, C, H, W)``.
        n: The number of samples (over all ranks).
        reference: Statistics ``(mu, sigma)``, an ``.npz`` file of them, or reference images
            (as :func:`sdeflow.metrics.reference_statistics` takes them; checked, or computed
            without caching, before any sample is drawn).
        inception: The feature extractor (default: the shared Inception network of
            ``ctx.device``).
        batch_size: Samples per chunk (per ``draw`` call).
        feature_batch_size: Images per extractor call.
        seed, ctx, folder, meta, progress, desc: As in
            :func:`~sdeflow.evaluation.samples.draw_chunks` (chunks saved in ``folder`` are
            reused by a later call).

    Example:
        >>> import numpy as np, torch
        >>> flat = lambda x: x.flatten(1).double()  # a stand-in for Inception
        >>> draw = lambda b: torch.randint(0, 256, (b, 1, 2, 2), dtype=torch.uint8)
        >>> reference = (np.full(4, 127.5), np.eye(4) * 5461.0)  # uniform pixels' statistics
        >>> out = sample_fid(draw, 400, reference, inception=flat, batch_size=100,
        ...                  progress=False)
        >>> out["fid"] < 0.05 * 4 * 5461.0, out["chunks_drawn"]
        (True, 4)
    """
    ctx = ctx or DistributedContext()
    extractor = inception if inception is not None else load_inception(ctx.device)
    reference = reference_statistics(  # checked (or computed) before any sample is drawn
        reference, extractor=extractor, batch_size=feature_batch_size, device=ctx.device,
        ctx=ctx, progress=False)
    sums = FeatureSums()

    def features(chunk: Tensor) -> None:
        accumulate_features(chunk, sums=sums, extractor=extractor, batch_size=feature_batch_size,
                            device=ctx.device, progress=False)

    info = draw_chunks(draw, n, folder, batch_size=batch_size, seed=seed, ctx=ctx,
                       on_chunk=features, meta=meta, progress=progress, desc=desc)
    return {"fid": fid(sums.all_reduce(ctx), reference), **info}
