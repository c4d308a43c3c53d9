r"""The image sets FID reads: a tensor ``(N, C, H, W)``, an iterable of batches (a
``DataLoader`` too), or a sampler ``draw(b)`` with a number of samples, cut into this rank's
batches of at most ``batch_size`` (every ``world_size``-th batch from ``rank``; a sampler is
called only for this rank's). Private to :mod:`sdeflow.metrics.pipeline`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

__all__: list[str] = []

#: Images: a tensor ``(N, C, H, W)``, or an iterable of batches (or of tuples whose first item is
#: the batch, as a ``DataLoader`` yields).
Images = Tensor | Iterable[Tensor] | Iterable[tuple[Tensor, ...]]
#: A sampler: ``draw(b)`` returns ``b`` images ``(b, C, H, W)``.
Sampler = Callable[[int], Tensor]
#: A feature extractor: a batch ``(B, C, H, W)`` to features ``(B, D)``.
Extractor = Callable[[Tensor], Tensor]
#: Statistics ``(mu, sigma)``, shapes ``(D,)`` and ``(D, D)``.
Statistics = tuple[np.ndarray | Tensor, np.ndarray | Tensor]


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _is_sampler(images: object) -> bool:
    return callable(images) and not isinstance(images, Tensor | nn.Module)


def _check_num_samples(images: object, num_samples: int | None) -> None:
    if _is_sampler(images):
        if (
            isinstance(num_samples, bool)
            or not isinstance(num_samples, int)
            or num_samples < 1
        ):
            raise ValueError(
                "num_samples must be a positive integer when the images are a sampler "
                f"draw(b), got {num_samples!r}"
            )
    elif num_samples is not None:
        raise ValueError(
            "num_samples is the number of images to draw from a sampler draw(b); the images "
            f"given are a {type(images).__name__}, got num_samples={num_samples!r}"
        )


def _batches(
    images: Images | Sampler,
    batch_size: int,
    num_samples: int | None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Tensor]:
    """This rank's image batches (every ``world_size``-th, from ``rank``), ``batch_size`` at most.

    A sampler is called only for this rank's batches.
    """
    if _is_sampler(images):
        full, rest = divmod(num_samples, batch_size)
        sizes = [batch_size] * full + ([rest] if rest else [])
        for size in sizes[rank::world_size]:
            batch = images(size)
            if not isinstance(batch, Tensor) or batch.dim() != 4 or batch.shape[0] != size:
                got = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
                raise ValueError(f"the sampler draw({size}) must return {size} images "
                                 f"({size}, C, H, W), got {got}")
            yield batch
        return
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        yield from images.split(batch_size)[rank::world_size]
        return
    if isinstance(images, str | os.PathLike | np.ndarray) or not isinstance(images, Iterable):
        raise TypeError(
            "images must be a tensor (N, C, H, W), an iterable of image batches or a sampler "
            f"draw(b), got {type(images).__name__}"
        )
    for index, batch in enumerate(images):
        if isinstance(batch, tuple | list) and batch:
            batch = batch[0]
        if not isinstance(batch, Tensor) or batch.dim() != 4:
            shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
            raise ValueError(f"each batch of images must be a tensor (B, C, H, W), got {shape}")
        if index % world_size == rank:
            yield from batch.split(batch_size)


def _known_count(images: Images | Sampler, num_samples: int | None) -> int | None:
    """Number of images when it is known without iterating."""
    if _is_sampler(images):
        return num_samples
    if isinstance(images, Tensor):
        return images.shape[0]
    if isinstance(images, tuple | list) and all(
        isinstance(b, Tensor) and b.dim() == 4 for b in images
    ):
        return sum(b.shape[0] for b in images)
    return None


def _module_device(module: nn.Module) -> torch.device | None:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return None
