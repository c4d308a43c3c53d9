r"""Bits/dim of 8-bit images by the ELBO and by the probability-flow ODE, with repeated
dequantization.

Each of :math:`R` repeats dequantizes every image afresh, :math:`x = 2(k + u)/256 - 1`,
:math:`u \sim U[0, 1)^D`, and measures

- the trajectory negative ELBO (one forward trajectory per image, the model's evaluation grid):
  an upper bound on :math:`-\log p(x)`;
- :math:`-\log p(x)` through the probability-flow ODE with Hutchinson's trace estimator
  (``probes`` Rademacher probes, dopri5 at ``rtol = atol = ode_tol``);

both in bits/dim with the dequantization term (:func:`sdeflow.likelihood.bits_per_dim`,
``levels=256``), a bound on the discrete images' bits/dim by Jensen's inequality. Per image the
:math:`R` values are averaged; the result is their mean over the images and its standard error
(the standard deviation of the per-image averages over :math:`\sqrt{n}`), with each repeat's
mean beside it.

Batch :math:`j` of repeat :math:`r` uses seeds derived from ``(seed, r, j)`` for its
dequantization, trajectory and probe noise, so the numbers do not depend on how many processes
share the work (rank :math:`q` of :math:`Q` takes the batches :math:`j \equiv q \pmod Q`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sdeflow.likelihood import bits_per_dim
from sdeflow.training.distributed import DistributedContext

__all__ = ["dequantized_bits_per_dim"]

LEVELS = 256


def _seed(seed: int, repeat: int, batch: int, stream: int) -> int:
    return ((int(seed) * 7919 + repeat) * 1_000_003 + batch) * 4 + stream


def _summary(values: np.ndarray) -> dict[str, Any]:
    """``values`` ``(n_images, repeats)`` -> mean, stderr and per-repeat means."""
    per_image = values.mean(axis=1)
    n = per_image.shape[0]
    stderr = float(per_image.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    return {"mean": float(per_image.mean()), "stderr": stderr,
            "repeat_means": [float(v) for v in values.mean(axis=0)]}


@torch.no_grad()
def dequantized_bits_per_dim(
    model: nn.Module,
    images: Tensor,
    *,
    repeats: int = 1,
    batch_size: int = 100,
    seed: int = 0,
    probes: int = 1,
    ode_tol: float = 1e-5,
    elbo: bool = True,
    ode: bool = True,
    ctx: DistributedContext | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    r"""Bits/dim of ``uint8`` ``images`` ``(n, *state)`` under ``model`` (a
    :class:`~sdeflow.training.GenerativeModel`), by the ELBO and the ODE (see the module
    docstring).

    Arguments:
        model: The model (in eval mode; the EMA weights for a trained run).
        images: ``uint8`` pixels, ``(n, C, H, W)``.
        repeats: :math:`R`, the dequantizations of each image.
        batch_size: Images per batch.
        seed: Seed of all the noise.
        probes: Hutchinson probes per image.
        ode_tol: The ODE solver's ``rtol`` and ``atol``.
        elbo, ode: Which of the two to compute.
        ctx: The distributed context (default: one process).
        progress: A tqdm bar on rank 0.

    Returns:
        ``{"images": n, "repeats": R, "elbo": {"mean", "stderr", "repeat_means"}, "ode": {...},
        "elbo_kind": ...}`` (``stderr`` is ``None`` for one image).

    Example:
        >>> from sdeflow import StandardNormal, TimeGrid
        >>> from sdeflow.nets import UNet
        >>> from sdeflow.training import DiffFlowModel
        >>> net = lambda: UNet(1, ch=4, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
        ...                    image_size=4)
        >>> model = DiffFlowModel(net(), net(), 1.0, TimeGrid.power(3, 1e-3, 0.1, 0.5),
        ...                       StandardNormal((1, 4, 4))).eval()
        >>> k = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
        >>> out = dequantized_bits_per_dim(model, k, repeats=2, batch_size=2, ode_tol=1e-3,
        ...                                progress=False)
        >>> out["images"], len(out["elbo"]["repeat_means"]), out["ode"]["mean"] > 0
        (3, 2, True)
    """
    from sdeflow.data import dequantize

    ctx = ctx or DistributedContext()
    if images.dtype != torch.uint8 or images.dim() < 2:
        raise TypeError(f"images must be uint8 pixels (n, *state), got {images.dtype} of shape "
                        f"{tuple(images.shape)}")
    for name, value in (("repeats", repeats), ("batch_size", batch_size), ("probes", probes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not (elbo or ode):
        raise ValueError("ask for at least one of elbo and ode")
    n, dims = images.shape[0], math.prod(images.shape[1:])
    starts = list(range(0, n, batch_size))
    mine = list(range(ctx.rank, len(starts), ctx.world_size))
    device = ctx.device
    devices = [device] if device.type == "cuda" else []
    results: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    total = len(mine) * repeats
    with tqdm(total=total, disable=not (progress and ctx.is_main), desc="bits/dim",
              dynamic_ncols=True) as bar:
        for repeat in range(repeats):
            for j in mine:
                k = images[starts[j]:starts[j] + batch_size]
                noise = torch.Generator().manual_seed(_seed(seed, repeat, j, 0))
                x = dequantize(k, LEVELS, generator=noise).to(device)
                out: dict[str, np.ndarray] = {}
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(_seed(seed, repeat, j, 1))
                    if elbo:
                        nelbo = model.nelbo(x)
                        out["elbo"] = bits_per_dim(nelbo.double().cpu(), dims,
                                                   levels=LEVELS).numpy()
                    if ode:
                        probe_gen = torch.Generator(device=device).manual_seed(
                            _seed(seed, repeat, j, 2))
                        nll = -model.log_likelihood(x, trace="hutchinson", n_probes=probes,
                                                    rtol=ode_tol, atol=ode_tol,
                                                    generator=probe_gen)
                        out["ode"] = bits_per_dim(nll.detach().double().cpu(), dims,
                                                  levels=LEVELS).numpy()
                results[(repeat, j)] = out
                bar.update(1)
    gathered: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    for part in ctx.all_gather_object(results):
        gathered.update(part)
    summary: dict[str, Any] = {"images": n, "repeats": repeats, "probes": probes,
                               "ode_tol": ode_tol,
                               "elbo_kind": getattr(model, "nelbo_kind", "negative ELBO")}
    for key in ("elbo", "ode"):
        if (key == "elbo" and not elbo) or (key == "ode" and not ode):
            continue
        values = np.stack([np.concatenate([gathered[(r, j)][key] for j in range(len(starts))])
                           for r in range(repeats)], axis=1)
        summary[key] = _summary(values)
    return summary
