r"""Data-parallel training on several processes (one per GPU, or CPU processes with gloo).

Launch any training script with ``torchrun``; :func:`init_distributed` reads the environment
that ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and joins the process group (``nccl`` on CUDA, ``gloo`` on CPU). Without those
variables it returns a single-process context, so the same script runs alone or under
``torchrun``::

    torchrun --nproc_per_node 8 examples/diffflow_cifar.py ...                   # one node
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 \
        --master_addr host0 --master_port 29500 examples/diffflow_cifar.py ...   # two nodes

Why the loss, not the networks, is wrapped in DDP: DistributedDataParallel expects one forward
call per backward (its reducer is armed by each forward and all-reduces each parameter's gradient
once). DiffFlow's objective calls the drift and score networks :math:`N + 1` and :math:`N` times
per step, and the memory-saving gradient (:class:`~sdeflow.gradients.StochasticAdjoint`) calls
them again inside the backward pass. :class:`LossModule` makes the whole loss computation one
module whose ``forward`` returns the loss; DDP wraps that, sees one forward per backward, and the
networks inside are plain modules. Gradients reach the parameters' ``.grad`` once per step
whichever gradient strategy produced them (the adjoint's inner :func:`torch.autograd.grad` calls
do not accumulate into ``.grad``), so every parameter is reduced exactly once, averaged over the
ranks. Parameters start equal (DDP broadcasts rank 0's at wrapping) and receive equal averaged
gradients, so they stay equal on every rank; :meth:`DistributedContext.max_param_deviation`
checks it.

Randomness: each rank must draw different noise (trajectories, dequantization, flips), so seed
the global generator with ``seed + rank`` (:meth:`DistributedContext.seed`) *after* building the
model (whose initialization DDP overwrites with rank 0's anyway).
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset, Sampler

__all__ = [
    "select_device",
    "DistributedContext",
    "init_distributed",
    "LossModule",
    "ShardSampler",
    "ENV_VARS",
]

#: The environment variables ``torchrun`` sets and :func:`init_distributed` reads.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistributedContext:
    r"""Where this process stands in a (possibly one-process) data-parallel run.

    Attributes:
        rank: This process's rank in ``0 .. world_size - 1``.
        world_size: The number of processes.
        local_rank: The rank on this node (the GPU index on CUDA).
        device: The device this process trains on.
        backend: ``"nccl"``, ``"gloo"``, or ``None`` for a single process.

    Example:
        >>> ctx = DistributedContext()  # a single process
        >>> ctx.is_main, ctx.enabled, ctx.all_reduce_mean({"loss": 2.0})
        (True, False, {'loss': 2.0})
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    _owns_group: bool = field(default=False, repr=False)

    @property
    def enabled(self) -> bool:
        """Whether several processes train together (a process group is live)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that logs, plots and writes checkpoints."""
        return self.rank == 0

    # -- model and data ------------------------------------------------------------------------
    def wrap(self, module: nn.Module, method: str = "loss",
             find_unused_parameters: bool = False, **ddp_kwargs: Any) -> nn.Module:
        r"""``module``'s loss computation as one module for the training step.

        Returns ``LossModule(module, method)``, wrapped in
        :class:`~torch.nn.parallel.DistributedDataParallel` when :attr:`enabled` (which
        broadcasts rank 0's parameters and buffers to the other ranks now). Call the result
        like ``module.<method>``; call ``backward`` on its output once per call.

        Arguments:
            module: The model; it must be on :attr:`device` already.
            method: The name of ``module``'s method returning the loss (a scalar tensor, or a
                mapping whose ``"loss"`` entry is one).
            find_unused_parameters: Let DDP tolerate parameters that get no gradient in a step
                (slower; only needed when a model skips a network in some steps).
            ddp_kwargs: Further arguments of ``DistributedDataParallel``.
        """
        wrapped = LossModule(module, method)
        if not self.enabled:
            return wrapped
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            wrapped, device_ids=device_ids, find_unused_parameters=find_unused_parameters,
            **ddp_kwargs,
        )

    def sampler(self, dataset: Dataset, *, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False) -> ShardSampler:
        """This rank's :class:`ShardSampler` over ``dataset``."""
        return ShardSampler(len(dataset), self.rank, self.world_size, shuffle=shuffle,
                            seed=seed, drop_last=drop_last)

    def split_batch_size(self, batch_size: int) -> int:
        """The per-rank share of a global ``batch_size`` (which the ranks must divide)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if batch_size % self.world_size:
            raise ValueError(f"batch_size {batch_size} (global) must be divisible by the world "
                             f"size {self.world_size}")
        return batch_size // self.world_size

    def seed(self, seed: int) -> int:
        """Seed torch's global generators with ``seed + rank`` (different noise per rank);
        returns that seed."""
        rank_seed = int(seed) + self.rank
        torch.manual_seed(rank_seed)
        return rank_seed

    # -- collectives ---------------------------------------------------------------------------
    def all_reduce_mean(self, metrics: Mapping[str, float | Tensor],
                        weight: float = 1.0) -> dict[str, float]:
        r"""Average of each metric over the ranks, weighted by ``weight`` (e.g. this rank's
        sample count): :math:`\sum_r w_r m_r / \sum_r w_r`. One collective for all metrics;
        every rank receives the result. Non-finite values stay non-finite."""
        names = list(metrics)
        values = [float(v.detach().float().mean()) if isinstance(v, Tensor) else float(v)
                  for v in metrics.values()]
        if not self.enabled:
            return dict(zip(names, values))
        packed = torch.tensor([weight * v for v in values] + [weight], dtype=torch.float64,
                              device=self._collective_device())
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        total = float(packed[-1])
        return {n: float(v) / total for n, v in zip(names, packed[:-1].tolist())}

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum of ``tensor`` over the ranks (a new tensor; the input is untouched)."""
        if not self.enabled:
            return tensor.clone()
        out = tensor.detach().to(self._collective_device(), copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(tensor.device)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank (``[obj]`` for one
        process)."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        """Wait for every rank (no-op for one process)."""
        if self.enabled:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (e.g. a non-finite loss on one rank stops all)."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def max_param_deviation(self, module: nn.Module) -> float:
        r""":math:`\max_{r, p} |p_r - p_0|` over every parameter and buffer and every rank:
        ``0.0`` when the ranks hold identical weights (one broadcast per tensor; a check to run
        at checkpoints, not every step)."""
        if not self.enabled:
            return 0.0
        worst = torch.zeros((), dtype=torch.float64, device=self._collective_device())
        tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
        for t in tensors:
            reference = t.detach().to(self._collective_device(), copy=True)
            dist.broadcast(reference, src=0)
            diff = (t.detach().to(reference.device) - reference).abs()
            if diff.numel():
                worst = torch.maximum(worst, diff.max().double())
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        return float(worst)

    def _collective_device(self) -> torch.device:
        # nccl moves CUDA tensors only; gloo CPU tensors
        return self.device if self.backend == "nccl" else torch.device("cpu")

    # -- teardown ------------------------------------------------------------------------------
    def close(self) -> None:
        """Leave the process group if :func:`init_distributed` created it (idempotent)."""
        if self._owns_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False

    def __enter__(self) -> DistributedContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or CUDA when available, else the CPU.

    Example:
        >>> select_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    return device


def _env_int(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r} "
                         f"(launch with torchrun, which sets {', '.join(ENV_VARS)})") from None
    if value < 0:
        raise ValueError(f"environment variable {name} must be >= 0, got {value}")
    return value


def init_distributed(
    device: str | torch.device | None = None,
    backend: str | None = None,
    *,
    timeout_s: float = 1800.0,
    env: Mapping[str, str] | None = None,
) -> DistributedContext:
    r"""Join the process group described by ``torchrun``'s environment, or return a
    single-process context when there is none (``WORLD_SIZE`` unset or ``1``).

    Arguments:
        device: ``"cuda"``, ``"cpu"``, a specific device, or ``None`` (CUDA when available).
            Under several processes on CUDA each rank takes ``cuda:LOCAL_RANK``.
        backend: The :mod:`torch.distributed` backend (``"nccl"`` on CUDA, ``"gloo"`` on CPU
            by default).
        timeout_s: How long a collective waits for the other ranks before failing.
        env: The environment to read (default ``os.environ``).

    Returns:
        A :class:`DistributedContext`; call :meth:`~DistributedContext.close` (or use it as a
        context manager) at the end of training.

    Example:
        >>> ctx = init_distributed("cpu", env={})
        >>> ctx.world_size, ctx.rank, ctx.backend
        (1, 0, None)
    """
    env = os.environ if env is None else env
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was requested but CUDA is not available")
    world_size = _env_int(env, "WORLD_SIZE") if "WORLD_SIZE" in env else 1
    if world_size < 1:
        raise ValueError(f"environment variable WORLD_SIZE must be >= 1, got {world_size}")
    if world_size == 1:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return DistributedContext(0, 1, 0, device, None)

    missing = [name for name in ENV_VARS if name not in env]
    if missing:
        raise ValueError(f"WORLD_SIZE={world_size} but the environment lacks {missing}; launch "
                         f"with torchrun, which sets {', '.join(ENV_VARS)}")
    rank, local_rank = _env_int(env, "RANK"), _env_int(env, "LOCAL_RANK")
    if rank >= world_size:
        raise ValueError(f"RANK={rank} must be below WORLD_SIZE={world_size}")
    if device.type == "cuda":
        if device.index is None:
            if local_rank >= torch.cuda.device_count():
                raise ValueError(f"LOCAL_RANK={local_rank} but this node has only "
                                 f"{torch.cuda.device_count()} CUDA device(s)")
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    owns = False
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = device  # binds the communicator to this rank's GPU up front
        if env is not os.environ:  # an explicit env: pass the rendezvous explicitly
            kwargs["init_method"] = f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        owns = True
    elif dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise RuntimeError(f"a process group is already initialized with rank "
                           f"{dist.get_rank()}/{dist.get_world_size()}, not {rank}/{world_size}")
    return DistributedContext(rank, world_size, local_rank, device, backend, _owns_group=owns)


class LossModule(nn.Module):
    r"""``model``'s loss method as the ``forward`` of a module, so that DDP wraps the whole loss
    computation (one forward per backward; see the module docstring).

    Arguments:
        model: The module holding every trainable network (registered as submodules).
        method: The name of the method of ``model`` computing the loss.

    Example:
        >>> class Model(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Linear(2, 2)
        ...     def loss(self, x):
        ...         return self.net(self.net(x)).square().mean()  # two calls, one loss
        >>> module = LossModule(Model())
        >>> module(torch.ones(3, 2)).shape
        torch.Size([])
    """

    def __init__(self, model: nn.Module, method: str = "loss") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(getattr(model, method, None)):
            raise ValueError(f"model ({type(model).__name__}) has no method {method!r}")
        self.model = model
        self.method = method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.model, self.method)(*args, **kwargs)


class ShardSampler(Sampler[int]):
    r"""Indices of this rank's shard of a data set of ``n`` items, reshuffled each epoch.

    Every rank draws the same permutation (seeded by ``seed + epoch``) and takes every
    ``world_size``-th index from position ``rank``, so the shards are disjoint and cover the
    data. The permutation is padded by wrapping around (or truncated, with ``drop_last``) to a
    multiple of ``world_size``, so every rank gets the same number of items (and steps). Call
    :meth:`set_epoch` before each epoch (as with torch's ``DistributedSampler``).

    Arguments:
        n: The data set's length.
        rank: This rank.
        world_size: The number of ranks.
        shuffle: Whether to permute (else the natural order).
        seed: Shared by all ranks.
        drop_last: Drop the tail instead of padding.

    Example:
        >>> [list(ShardSampler(5, r, 2, shuffle=False)) for r in (0, 1)]
        [[0, 2, 4], [1, 3, 0]]
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1 (the data set's length), got {n!r}")
        if not (isinstance(world_size, int) and world_size >= 1):
            raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
        if not (isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
        if drop_last and n < world_size:
            raise ValueError(f"drop_last with n={n} < world_size={world_size} leaves no data")
        self.n, self.rank, self.world_size = n, rank, world_size
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, int(seed), drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.world_size
        return math.ceil(self.n / self.world_size)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = len(self) * self.world_size
        if total > len(order):
            order = (order * math.ceil(total / len(order)))[:total]
        return iter(order[:total][self.rank::self.world_size])
