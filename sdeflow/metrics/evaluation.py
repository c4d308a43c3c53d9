r"""FID of image sets: features in batches, cached reference statistics, the score.

.. math::
    \mathrm{FID} = \lVert \mu_s - \mu_r \rVert^2
        + \operatorname{tr}\left(\Sigma_s + \Sigma_r - 2 (\Sigma_s \Sigma_r)^{1/2}\right)

with :math:`(\mu, \Sigma)` the statistics (:func:`~sdeflow.metrics.stats.feature_statistics`)
of the Inception features (:class:`~sdeflow.metrics.inception.InceptionFeatures`) of the samples
(:math:`s`) and of the reference data (:math:`r`, e.g. the CIFAR-10 training set, as in the
DiffFlow paper's FID 16.37 / 16.04). FID is biased upwards at small sample counts: compare scores
computed from the same number of samples (50,000 is the convention for CIFAR-10).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sdeflow.metrics.frechet import _covariance_factor, _frechet_from_factors, _statistics
from sdeflow.metrics.inception import InceptionFeatures
from sdeflow.metrics.stats import (
    PathLike,
    _checked_features,
    _recorded_count,
    feature_statistics,
    load_statistics,
    save_statistics,
)

__all__ = ["extract_features", "reference_statistics", "fid"]

Images = Tensor | Iterable[Tensor] | Iterable[tuple[Tensor, ...]]
Extractor = Callable[[Tensor], Tensor]


@functools.lru_cache(maxsize=1)
def _default_extractor() -> InceptionFeatures:
    # One network per process: loading it costs ~0.1-1 s and 87 MB.
    return InceptionFeatures()


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _batches(images: Images, batch_size: int) -> Iterator[Tensor]:
    """Image batches from a tensor ``(N, C, H, W)`` or an iterable of batches.

    An iterable may yield tensors or tuples/lists whose first item is the images (a
    ``DataLoader`` over ``(image, label)`` pairs).
    """
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        yield from images.split(batch_size)
        return
    if isinstance(images, str | os.PathLike | np.ndarray):
        raise TypeError(
            "images must be a tensor (N, C, H, W) or an iterable of image batches, got "
            f"{type(images).__name__}"
        )
    if not isinstance(images, Iterable):
        raise TypeError(
            f"images must be a tensor (N, C, H, W) or an iterable of batches, got "
            f"{type(images).__name__}"
        )
    for batch in images:
        if isinstance(batch, tuple | list) and batch:
            batch = batch[0]
        if not isinstance(batch, Tensor) or batch.dim() != 4:
            shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
            raise ValueError(f"each batch of images must be a tensor (B, C, H, W), got {shape}")
        yield from batch.split(batch_size)


def _known_count(images: Images) -> int | None:
    """Number of images when it is known without iterating (a tensor or a list of tensors)."""
    if isinstance(images, Tensor):
        return images.shape[0]
    if isinstance(images, tuple | list) and all(
        isinstance(b, Tensor) and b.dim() == 4 for b in images
    ):
        return sum(b.shape[0] for b in images)
    return None


def extract_features(
    images: Images,
    *,
    extractor: Extractor | None = None,
    batch_size: int = 100,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "features",
) -> np.ndarray:
    """Features of all ``images``, computed ``batch_size`` at a time: ``(N, D)`` float64 numpy.

    Arguments:
        images: A tensor ``(N, C, H, W)`` (float in [-1, 1] or ``uint8``) or an iterable of such
            batches (or of tuples whose first item is the batch, as a ``DataLoader`` yields).
        extractor: Maps a batch ``(B, C, H, W)`` to features ``(B, D)``; default: a shared
            :class:`~sdeflow.metrics.inception.InceptionFeatures`.
        batch_size: Largest batch passed to the extractor.
        device: Where the extractor runs (an ``nn.Module`` extractor is moved there, batches
            follow); default: the device of the image tensor (of the first batch).
        progress: Show a tqdm bar over batches.
        desc: Label of the bar.

    Example:
        >>> import torch
        >>> images = torch.zeros(5, 3, 8, 8)
        >>> means = lambda x: x.mean(dim=(2, 3))  # a stand-in extractor: (B, 3) features
        >>> extract_features(images, extractor=means, batch_size=2, progress=False).shape
        (5, 3)
    """
    _check_batch_size(batch_size)
    if extractor is None:
        extractor = _default_extractor()
    total = _known_count(images)
    bar = tqdm(
        total=None if total is None else -(-total // batch_size),
        desc=desc,
        disable=not progress,
        unit="batch",
        dynamic_ncols=True,
    )
    chunks: list[np.ndarray] = []
    with bar, torch.no_grad():
        for batch in _batches(images, batch_size):
            if device is None:
                device = batch.device
            if isinstance(extractor, nn.Module):
                extractor.to(device)
            features = extractor(batch.to(device))
            if not isinstance(features, Tensor) or features.dim() != 2:
                shape = tuple(features.shape) if isinstance(features, Tensor) else features
                raise ValueError(f"extractor must return features (B, D), got {shape}")
            if features.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"extractor returned {features.shape[0]} feature vectors for "
                    f"{batch.shape[0]} images"
                )
            chunks.append(features.detach().to("cpu", torch.float64).numpy())
            bar.update(1)
    if not chunks:
        raise ValueError("images must hold at least one image, got none")
    return np.concatenate(chunks)


def reference_statistics(
    images: Images,
    cache: PathLike | None = None,
    *,
    extractor: Extractor | None = None,
    batch_size: int = 100,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Feature statistics ``(mu, sigma)`` of a data set, computed once and cached in ``.npz``.

    When ``cache`` exists it is read instead of computing, provided its recorded ``count``
    equals the number of images (known for a tensor or a list of tensors); on a mismatch the
    statistics are recomputed and the cache rewritten (with a warning). A cache without a
    ``count`` (e.g. published TTUR statistics dropped in), or images given as a general
    iterable, is trusted as it is. A fresh cache records ``count``.

    Arguments:
        images: The data set: ``uint8`` ``(N, C, H, W)`` (or float in [-1, 1]), or an iterable
            of batches (see :func:`extract_features`).
        cache: ``.npz`` file to read or write; None computes without caching.
        extractor, batch_size, device, progress: As in :func:`extract_features`.

    Example:
        >>> import os, tempfile, torch
        >>> images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
        >>> means = lambda x: x.float().mean(dim=(2, 3))  # a stand-in for Inception
        >>> path = os.path.join(tempfile.mkdtemp(), "ref.npz")
        >>> mu, sigma = reference_statistics(images, path, extractor=means, progress=False)
        >>> os.path.exists(path), mu.shape, sigma.shape
        (True, (3,), (3, 3))
    """
    count = _known_count(images)
    if cache is not None and Path(cache).is_file():
        recorded = _recorded_count(cache)
        if recorded is None or count is None or recorded == count:
            return load_statistics(cache)
        warnings.warn(
            f"cached statistics {str(cache)!r} come from {recorded} images, not {count}: "
            "recomputing them",
            stacklevel=2,
        )
    features = extract_features(
        images,
        extractor=extractor,
        batch_size=batch_size,
        device=device,
        progress=progress,
        desc="reference features",
    )
    mu, sigma = feature_statistics(features)
    if cache is not None:
        save_statistics(cache, mu, sigma, count=features.shape[0])
    return mu, sigma


def _is_statistics(reference: object) -> bool:
    if not (isinstance(reference, tuple | list) and len(reference) == 2):
        return False
    mu, sigma = reference
    return all(isinstance(a, Tensor | np.ndarray) for a in reference) and (
        mu.ndim == 1 and sigma.ndim == 2
    )


def _gaussian_of_features(features: np.ndarray) -> tuple[Tensor, Tensor]:
    r"""Mean and covariance factor :math:`L` (:math:`\Sigma = L L^\top`) of ``features``.

    With :math:`N \le d + 1` vectors the centred features are a thin factor,
    :math:`L = (\Phi - \bar\phi)^\top / \sqrt{N - 1}` (no ``d x d`` matrix is formed);
    otherwise the covariance is factored by ``eigh``.
    """
    features = _checked_features(features)
    n, d = features.shape
    if n - 1 <= d:
        x = torch.from_numpy(features)
        mu = x.mean(dim=0)
        return mu, (x - mu).T / math.sqrt(n - 1)
    mu, sigma = feature_statistics(features)
    return torch.from_numpy(mu), _covariance_factor("sample covariance", torch.from_numpy(sigma))


def _gaussian_of_statistics(
    mu: np.ndarray | Tensor, sigma: np.ndarray | Tensor, where: str
) -> tuple[Tensor, Tensor]:
    mu, sigma = _statistics(mu, sigma, f"{where} mu", f"{where} sigma", torch.device("cpu"))
    return mu, _covariance_factor(f"{where} sigma", sigma)


def fid(
    samples: Images,
    reference: tuple[np.ndarray | Tensor, np.ndarray | Tensor] | PathLike | Images,
    *,
    extractor: Extractor | None = None,
    batch_size: int = 100,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> float:
    r"""Fréchet Inception Distance between ``samples`` and a reference.

    Computed as :func:`~sdeflow.metrics.frechet.frechet_distance` of the two feature
    statistics; a side with at most :math:`d + 1` images (e.g. 1,000 samples during training)
    enters through its centred features, which factor its covariance, so no ``eigh`` of its
    ``d x d`` covariance is needed.

    Arguments:
        samples: Generated images: float in [-1, 1] or ``uint8``, ``(N, C, H, W)`` with ``C``
            1 or 3, or an iterable of batches.
        reference: Reference statistics ``(mu, sigma)``, a path to an ``.npz`` statistics file
            (see :func:`~sdeflow.metrics.stats.load_statistics`), or reference images (their
            features are computed, not cached: use :func:`reference_statistics` to cache).
        extractor, batch_size, device, progress: As in :func:`extract_features`.

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
    """
    options = {"extractor": extractor, "batch_size": batch_size, "device": device}
    if isinstance(reference, str | os.PathLike):
        mu_r, factor_r = _gaussian_of_statistics(*load_statistics(reference), str(reference))
    elif _is_statistics(reference):
        mu_r, factor_r = _gaussian_of_statistics(*reference, "reference")
    else:
        features_r = extract_features(
            reference, **options, progress=progress, desc="reference features"
        )
        mu_r, factor_r = _gaussian_of_features(features_r)
    features_s = extract_features(samples, **options, progress=progress, desc="sample features")
    mu_s, factor_s = _gaussian_of_features(features_s)
    if mu_s.shape != mu_r.shape:
        raise ValueError(
            f"samples give {mu_s.shape[0]}-d features but the reference is {mu_r.shape[0]}-d"
        )
    return _frechet_from_factors(mu_s, factor_s, mu_r, factor_r)
