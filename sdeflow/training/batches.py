r"""Batch sources: where the :class:`~sdeflow.training.Trainer` gets its minibatches.

A batch source is any object with ``next_batch()`` (a tensor ``x``, or a pair ``(x, y)`` of
samples and their conditions for a conditional model, :mod:`sdeflow.conditioning`),
``state_dict()`` and ``load_state_dict(state)``: the trainer checkpoints its state with the
model, so a resumed run draws the same batches as an uninterrupted one. :class:`TensorBatches`
shuffles an in-memory tensor each epoch with its own :class:`torch.Generator` (never the global
RNG), and can be sharded over ``world_size`` processes: every rank draws the same permutation
and takes its own ``batch_size`` slice of each global batch, as a distributed sampler does.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["BatchSource", "TensorBatches", "batch_to"]


@runtime_checkable
class BatchSource(Protocol):
    """What the trainer needs from a data pipeline."""

    def next_batch(self) -> Tensor | tuple[Tensor, Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TensorBatches:
    r"""Shuffled minibatches of a tensor of samples ``(n, *state)``, epoch after epoch.

    Arguments:
        data: The samples, first dimension ``n``.
        batch_size: Samples per batch (per rank).
        shuffle: Draw a fresh permutation each epoch (else the data order).
        seed: Seed of this source's own generator.
        rank: This process's rank in ``[0, world_size)``.
        world_size: Number of processes sharing each global batch of
            ``batch_size * world_size`` samples.
        labels: The condition of each sample (class labels ``(n,)`` or vectors ``(n, k)``):
            then each batch is the pair ``(x, y)`` of the same samples' data and conditions.

    The last incomplete global batch of an epoch is dropped, so every batch has
    ``batch_size`` samples.

    Example:
        >>> import torch
        >>> source = TensorBatches(torch.arange(10.0)[:, None], batch_size=4, seed=0)
        >>> source.next_batch().shape
        torch.Size([4, 1])
        >>> state = source.state_dict()
        >>> a = source.next_batch()
        >>> source.load_state_dict(state)
        >>> torch.equal(a, source.next_batch())
        True
        >>> x, y = TensorBatches(torch.zeros(10, 2), 4, labels=torch.arange(10)).next_batch()
        >>> x.shape, y.shape
        (torch.Size([4, 2]), torch.Size([4]))
    """

    def __init__(
        self, data: Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0,
        rank: int = 0, world_size: int = 1, labels: Tensor | None = None,
    ) -> None:
        if not isinstance(data, Tensor) or data.dim() < 1:
            raise TypeError("data must be a tensor of samples with a leading sample dimension")
        for name, value, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1),
                                 ("rank", rank, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if rank >= world_size:
            raise ValueError(f"rank must be < world_size={world_size}, got {rank}")
        if batch_size * world_size > data.shape[0]:
            raise ValueError(f"batch_size * world_size = {batch_size * world_size} exceeds the "
                             f"{data.shape[0]} samples of data")
        if labels is not None and (not isinstance(labels, Tensor) or labels.dim() < 1
                                   or labels.shape[0] != data.shape[0]):
            got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must be a tensor with one entry per sample of data "
                             f"({data.shape[0]}), got {got}")
        self.data, self.batch_size, self.shuffle = data, batch_size, bool(shuffle)
        self.labels = labels
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(int(seed))
        self.epoch = -1
        self.position = 0
        self._epoch_state = self.generator.get_state()
        self._perm: Tensor | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.data.shape[0] // (self.batch_size * self.world_size)

    def _new_epoch(self) -> None:
        self.epoch += 1
        self.position = 0
        self._epoch_state = self.generator.get_state()
        self._perm = self._draw_perm()

    def _draw_perm(self) -> Tensor:
        n = self.data.shape[0]
        if self.shuffle:
            return torch.randperm(n, generator=self.generator)
        return torch.arange(n)

    def next_batch(self) -> Tensor | tuple[Tensor, Tensor]:
        """The next batch, ``(batch_size, *state)``, on ``data``'s device (with ``labels``: the
        pair of it and its samples' labels)."""
        if self._perm is None or self.position >= self.batches_per_epoch:
            self._new_epoch()
        global_size = self.batch_size * self.world_size
        start = self.position * global_size + self.rank * self.batch_size
        index = self._perm[start:start + self.batch_size]
        self.position += 1
        x = self.data[index.to(self.data.device)]
        if self.labels is None:
            return x
        return x, self.labels[index.to(self.labels.device)]

    def state_dict(self) -> dict[str, Any]:
        # the permutation is redrawn from the generator state at the epoch's start
        return {"epoch": self.epoch, "position": self.position,
                "epoch_generator_state": self._epoch_state.clone(),
                "started": self._perm is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.generator.set_state(state["epoch_generator_state"])
        self._epoch_state = state["epoch_generator_state"].clone()
        self._perm = self._draw_perm() if state["started"] else None

    def __repr__(self) -> str:
        labelled = "" if self.labels is None else ", labelled"
        return (f"TensorBatches(n={self.data.shape[0]}, batch_size={self.batch_size}, "
                f"rank={self.rank}, world_size={self.world_size}{labelled})")


def batch_to(batch: Tensor | tuple[Tensor, ...], device: torch.device | str
             ) -> Tensor | tuple[Tensor, ...]:
    """A batch (a tensor, or a pair ``(x, condition)``) on ``device`` (non-blocking copies).

    Example:
        >>> batch_to((torch.zeros(2, 1), torch.tensor([0, 1])), "cpu")[1]
        tensor([0, 1])
    """
    if isinstance(batch, (tuple, list)):
        return type(batch)(batch_to(b, device) for b in batch)
    return batch.to(device, non_blocking=True)
