r"""FID in one pipeline: images to features to streamed statistics to the score.

Every image set goes the same way: a tensor ``(N, C, H, W)``, an iterable of batches or a
sampler ``draw(b)`` is cut into batches of at most ``batch_size``; each batch goes through the
feature extractor (by default the shared TF-Inception network of the device,
:func:`~sdeflow.metrics.inception.load_inception`); the features are added to float64 sums
(:class:`~sdeflow.metrics.stats.FeatureSums`), all-reduced over the ranks of a
:class:`~sdeflow.training.distributed.DistributedContext` when one is given (each rank then takes
every ``world_size``-th batch); the sums give :math:`(\mu, \Sigma)` and

.. math::
    \mathrm{FID} = \lVert \mu_s - \mu_r \rVert^2
        + \operatorname{tr}\left(\Sigma_s + \Sigma_r - 2 (\Sigma_s \Sigma_r)^{1/2}\right)

(:func:`~sdeflow.metrics.frechet.frechet_distance`) between the samples (:math:`s`) and the
reference data (:math:`r`, e.g. the CIFAR-10 training set, as in the DiffFlow paper's FID 16.37 /
16.04), whose statistics are given, read from an ``.npz`` file, or computed and cached.

FID is biased upwards at small sample counts: compare scores computed from the same number of
samples (50,000 is the convention for CIFAR-10).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sdeflow.metrics._sources import (
    Extractor,
    Images,
    Sampler,
    Statistics,
    _batches,
    _check_batch_size,
    _check_num_samples,
    _known_count,
    _module_device,
)
from sdeflow.metrics.frechet import _frechet_from_factors, _gaussian, _statistics
from sdeflow.metrics.inception import load_inception
from sdeflow.metrics.stats import (
    FeatureSums,
    PathLike,
    _recorded_count,
    load_statistics,
    save_statistics,
)

if TYPE_CHECKING:
    from sdeflow.training.distributed import DistributedContext

__all__ = [
    "accumulate_features",
    "extract_features",
    "fid",
    "image_statistics",
    "reference_statistics",
]

def _features(
    images: Images | Sampler,
    *,
    num_samples: int | None,
    extractor: Extractor | None,
    batch_size: int,
    device: torch.device | str | None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool,
    desc: str,
) -> Iterator[Tensor]:
    """The features ``(B, D)`` of this rank's batches, one batch at a time."""
    _check_batch_size(batch_size)
    _check_num_samples(images, num_samples)
    if device is not None:
        device = torch.device(device)
        if isinstance(extractor, nn.Module):
            extractor.to(device)
    elif isinstance(extractor, nn.Module):
        device = _module_device(extractor)
    total = _known_count(images, num_samples)
    shown = None if total is None else len(range(rank, -(-total // batch_size), world_size))
    bar = tqdm(total=shown, desc=desc, disable=not progress, unit="batch", dynamic_ncols=True)
    with bar, torch.no_grad():
        for batch in _batches(images, batch_size, num_samples, rank, world_size):
            if extractor is None:
                extractor = load_inception(batch.device if device is None else device)
            if device is not None:
                batch = batch.to(device)
            features = extractor(batch)
            if not isinstance(features, Tensor) or features.dim() != 2:
                shape = tuple(features.shape) if isinstance(features, Tensor) else features
                raise ValueError(f"extractor must return features (B, D), got {shape}")
            if features.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"extractor returned {features.shape[0]} feature vectors for "
                    f"{batch.shape[0]} images"
                )
            yield features
            bar.update(1)


def extract_features(
    images: Images | Sampler,
    *,
    num_samples: int | None = None,
    extractor: Extractor | None = None,
    batch_size: int = 100,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "features",
) -> np.ndarray:
    """Features of all ``images``, computed ``batch_size`` at a time: ``(N, D)`` float64 numpy.

    Arguments:
        images: A tensor ``(N, C, H, W)`` (float in [-1, 1] or ``uint8``), an iterable of such
            batches (or of tuples whose first item is the batch, as a ``DataLoader`` yields), or
            a sampler ``draw(b) -> (b, C, H, W)`` called for ``num_samples`` images in batches
            of ``batch_size``.
        num_samples: How many images to draw from a sampler (only for a sampler).
        extractor: Maps a batch ``(B, C, H, W)`` to features ``(B, D)``; default: the shared
            TF-Inception network of the device (:func:`~sdeflow.metrics.load_inception`).
        batch_size: Largest batch passed to the extractor.
        device: Where the extractor runs (an ``nn.Module`` extractor is moved there, batches
            follow); default: an ``nn.Module`` extractor's own device, else the batches'.
        progress: Show a tqdm bar over batches.
        desc: Label of the bar.

    Example:
        >>> import torch
        >>> images = torch.zeros(5, 3, 8, 8)
        >>> means = lambda x: x.mean(dim=(2, 3))  # a stand-in extractor: (B, 3) features
        >>> extract_features(images, extractor=means, batch_size=2, progress=False).shape
        (5, 3)
    """
    chunks = [
        features.detach().to("cpu", torch.float64).numpy()
        for features in _features(images, num_samples=num_samples, extractor=extractor,
                                  batch_size=batch_size, device=device, progress=progress,
                                  desc=desc)
    ]
    if not chunks:
        raise ValueError("images must hold at least one image, got none")
    return np.concatenate(chunks)


def accumulate_features(
    images: Images | Sampler,
    *,
    num_samples: int | None = None,
    sums: FeatureSums | None = None,
    extractor: Extractor | None = None,
    batch_size: int = 100,
    device: torch.device | str | None = None,
    ctx: DistributedContext | None = None,
    progress: bool = True,
    desc: str = "features",
) -> FeatureSums:
    r"""The feature sums :math:`n, \sum \phi, \sum \phi\phi^\top` of ``images``, streamed.

    Features are added batch by batch to ``sums`` (:class:`~sdeflow.metrics.FeatureSums`);
    no feature matrix is kept. With ``ctx``, each rank takes every ``world_size``-th batch (a
    sampler is called only for this rank's batches) and the sums are all-reduced: every rank
    returns the sums over all the images.

    Arguments:
        images, num_samples, extractor, batch_size, progress, desc: As in
            :func:`extract_features`.
        sums: Sums to add to, in place (default: new ones).
        device: As in :func:`extract_features`; with ``ctx`` the default is ``ctx.device``.
        ctx: Share the batches among the ranks of this
            :class:`~sdeflow.training.distributed.DistributedContext` (a collective call).

    Returns:
        ``sums`` (or the new sums), or with ``ctx`` the all-reduced sums.

    Example:
        >>> import torch
        >>> images = torch.rand(6, 3, 8, 8) * 2 - 1
        >>> means = lambda x: x.double().mean(dim=(2, 3))  # a stand-in for Inception
        >>> sums = accumulate_features(images, extractor=means, batch_size=4, progress=False)
        >>> sums.count, sums.dim
        (6, 3)
        >>> draw = lambda b: torch.rand(b, 3, 8, 8)  # a sampler adds to the same sums
        >>> accumulate_features(draw, num_samples=5, sums=sums, extractor=means,
        ...                     progress=False).count
        11
    """
    if sums is None:
        sums = FeatureSums()
    elif not isinstance(sums, FeatureSums):
        raise TypeError(f"sums must be FeatureSums or None, got {type(sums).__name__}")
    rank, world_size = (0, 1) if ctx is None else (ctx.rank, ctx.world_size)
    if device is None and ctx is not None:
        device = ctx.device
    for features in _features(images, num_samples=num_samples, extractor=extractor,
                              batch_size=batch_size, device=device, rank=rank,
                              world_size=world_size, progress=progress and rank == 0, desc=desc):
        sums.add(features)
    return sums if ctx is None else sums.all_reduce(ctx)


def image_statistics(
    images: Images | Sampler,
    *,
    num_samples: int | None = None,
    extractor: Extractor | None = None,
    batch_size: int = 100,
    device: torch.device | str | None = None,
    ctx: DistributedContext | None = None,
    progress: bool = True,
    desc: str = "features",
) -> tuple[np.ndarray, np.ndarray]:
    r"""Feature statistics :math:`(\mu, \Sigma)` of ``images``, float64 numpy ``(D,)``, ``(D, D)``.

    :math:`\mu = \frac{1}{n}\sum_i \phi_i`, :math:`\Sigma = \frac{1}{n-1}\sum_i (\phi_i - \mu)
    (\phi_i - \mu)^\top` from the streamed sums of :func:`accumulate_features` (same arguments).

    Example:
        >>> import torch
        >>> images = torch.randint(0, 256, (6, 1, 2, 2), dtype=torch.uint8)
        >>> flat = lambda x: x.flatten(1).double()  # a stand-in for Inception
        >>> mu, sigma = image_statistics(images, extractor=flat, batch_size=4, progress=False)
        >>> mu.shape, sigma.shape
        ((4,), (4, 4))
    """
    return accumulate_features(images, num_samples=num_samples, extractor=extractor,
                               batch_size=batch_size, device=device, ctx=ctx, progress=progress,
                               desc=desc).statistics()


def _is_statistics(reference: object) -> bool:
    """A pair of arrays that are not image batches (4-D): ``(mu, sigma)``, checked later."""
    return (
        isinstance(reference, tuple | list)
        and len(reference) == 2
        and all(isinstance(a, Tensor | np.ndarray) and a.ndim < 4 for a in reference)
    )


def _as_statistics(mu: np.ndarray | Tensor, sigma: np.ndarray | Tensor, where: str) -> Statistics:
    """Float64 numpy copies of given statistics, their shapes and values checked (whether
    ``sigma`` is a covariance is checked where it is factored)."""
    mu, sigma = _statistics(mu, sigma, f"{where} mu", f"{where} sigma", torch.device("cpu"))
    return mu.numpy(), sigma.numpy()


def reference_statistics(
    reference: Images | Statistics | PathLike,
    cache: PathLike | None = None,
    *,
    extractor: Extractor | None = None,
    batch_size: int = 100,
    device: torch.device | str | None = None,
    ctx: DistributedContext | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Statistics :math:`(\mu_r, \Sigma_r)` of a FID reference, checked, as float64 numpy.

    The reference is given as statistics ``(mu, sigma)``, as an ``.npz`` statistics file (see
    :func:`~sdeflow.metrics.load_statistics`), or as images, whose statistics are computed
    (:func:`image_statistics`) and, with ``cache``, kept in an ``.npz`` file. An existing
    ``cache`` is read instead of computing, provided its recorded ``count`` equals the number of
    images (known for a tensor or a list of tensors); on a mismatch the statistics are
    recomputed and the cache rewritten (with a warning). A cache without a ``count`` (e.g.
    published TTUR statistics dropped in), or images given as a general iterable, is trusted as
    it is. A fresh cache records ``count``. With ``ctx`` the ranks share the batches, rank 0
    decides about the cache and writes it, and every rank returns the statistics.

    Arguments:
        reference: Statistics, an ``.npz`` path, or images: ``uint8`` ``(N, C, H, W)`` (or
            float in [-1, 1]), or an iterable of batches (see :func:`extract_features`).
        cache: ``.npz`` file to read or write for a reference given as images.
        extractor, batch_size, device, ctx, progress: As in :func:`accumulate_features`.

    Example:
        >>> import os, tempfile, torch
        >>> images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
        >>> means = lambda x: x.double().mean(dim=(2, 3))  # a stand-in for Inception
        >>> path = os.path.join(tempfile.mkdtemp(), "ref.npz")
        >>> mu, sigma = reference_statistics(images, path, extractor=means, progress=False)
        >>> os.path.exists(path), mu.shape, sigma.shape
        (True, (3,), (3, 3))
        >>> reference_statistics(path)[0].shape  # the file, read back and checked
        (3,)
    """
    if isinstance(reference, str | os.PathLike) or _is_statistics(reference):
        if cache is not None:
            raise ValueError(
                "cache is for a reference given as images; the reference given is already "
                f"statistics, got cache={str(cache)!r}"
            )
        if _is_statistics(reference):
            return _as_statistics(*reference, "reference")
        return _as_statistics(*load_statistics(reference), repr(str(reference)))
    is_main = ctx is None or ctx.is_main
    if cache is not None:
        count = _known_count(reference, None)
        recorded = _recorded_count(cache) if Path(cache).is_file() else False
        read = recorded is not False and (recorded is None or count is None or recorded == count)
        if ctx is not None and ctx.enabled:
            read = ctx.all_gather_object(read)[0]  # rank 0's view of the file decides
        if read:
            return _as_statistics(*load_statistics(cache), repr(str(cache)))
        if recorded is not False and is_main:
            warnings.warn(
                f"cached statistics {str(cache)!r} come from {recorded} images, not {count}: "
                "recomputing them",
                stacklevel=2,
            )
    sums = accumulate_features(reference, extractor=extractor, batch_size=batch_size,
                               device=device, ctx=ctx, progress=progress, desc="reference features")
    mu, sigma = sums.statistics()
    if cache is not None:
        if is_main:
            save_statistics(cache, mu, sigma, count=sums.count)
        if ctx is not None:
            ctx.barrier()  # the file is there for every rank
    return mu, sigma


def fid(
    samples: Images | Sampler | FeatureSums,
    reference: Images | Statistics | PathLike,
    *,
    num_samples: int | None = None,
    cache: PathLike | None = None,
    extractor: Extractor | None = None,
    batch_size: int = 100,
    device: torch.device | str | None = None,
    ctx: DistributedContext | None = None,
    progress: bool = True,
) -> float:
    r"""Fréchet Inception Distance between ``samples`` and a reference.

    The reference is resolved first (:func:`reference_statistics`: statistics, an ``.npz``
    file, or images, cached in ``cache``), so a bad one fails before any sample is drawn; the
    samples' features are streamed into :class:`~sdeflow.metrics.FeatureSums`
    (:func:`accumulate_features`), and the score is
    :func:`~sdeflow.metrics.frechet_distance` of the two statistics.

    Arguments:
        samples: Generated images: float in [-1, 1] or ``uint8``, ``(N, C, H, W)`` with ``C``
            1 or 3, an iterable of batches, a sampler ``draw(b)`` (with ``num_samples``), or
            :class:`~sdeflow.metrics.FeatureSums` already accumulated (over every rank).
        reference: Reference statistics ``(mu, sigma)``, a path to an ``.npz`` statistics file,
            or reference images.
        num_samples: How many images to draw from a sampler ``samples``.
        cache: ``.npz`` file caching the statistics of a reference given as images.
        extractor, batch_size, device, ctx, progress: As in :func:`accumulate_features`; they
            apply to both sides.

    Returns:
        :math:`\lVert \mu_s - \mu_r \rVert^2 + \operatorname{tr}(\Sigma_s + \Sigma_r
        - 2 (\Sigma_s \Sigma_r)^{1/2})` as a float.

    Example:
        >>> import torch
        >>> gen = torch.Generator().manual_seed(0)
        >>> samples = torch.rand(50, 3, 8, 8, generator=gen) * 2 - 1
        >>> means = lambda x: x.mean(dim=(2, 3))  # a stand-in for Inception
        >>> abs(fid(samples, samples, extractor=means, progress=False)) < 1e-12
        True
        >>> draw = lambda b: torch.rand(b, 3, 8, 8, generator=gen) * 2 - 1  # a sampler
        >>> fid(draw, samples, num_samples=200, extractor=means, progress=False) < 1e-3
        True
    """
    options = {
        "extractor": extractor,
        "batch_size": batch_size,
        "device": device,
        "ctx": ctx,
        "progress": progress,
    }
    if isinstance(samples, FeatureSums):
        if num_samples is not None:
            raise ValueError(
                f"num_samples is for a sampler; samples are FeatureSums, got {num_samples!r}"
            )
    else:
        _check_num_samples(samples, num_samples)
    # the reference first: a bad one fails before any sample is drawn
    where = repr(str(reference)) if isinstance(reference, str | os.PathLike) else "reference"
    mu_r, factor_r = _gaussian(
        *reference_statistics(reference, cache, **options), (f"{where} mu", f"{where} sigma")
    )
    sums = samples
    if not isinstance(samples, FeatureSums):
        sums = accumulate_features(samples, num_samples=num_samples, desc="sample features",
                                   **options)
    mu_s, sigma_s = sums.statistics()
    if mu_s.shape != tuple(mu_r.shape):
        raise ValueError(
            f"samples give {mu_s.shape[0]}-d features but the reference is {mu_r.shape[0]}-d"
        )
    # frechet_distance's own steps, with errors that name the sides
    mu_s, factor_s = _gaussian(mu_s, sigma_s, ("samples mu", "samples sigma"))
    return _frechet_from_factors(mu_s, factor_s, mu_r, factor_r)
