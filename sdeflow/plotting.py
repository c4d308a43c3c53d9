r"""PNG figures people look at: 2D samples beside data, density heat maps, image grids, a grid of
samples over models and data sets, and loss curves.

Every function draws on its own :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot state,
so it is safe in scripts, tests and worker threads), writes ``path`` (parents created) and returns
it as a :class:`pathlib.Path`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

__all__ = [
    "plot_samples_2d",
    "plot_density_2d",
    "save_image_grid",
    "plot_sample_grid_2d",
    "plot_loss_curve",
]

Lim = float | tuple[float, float]


def _points(name: str, x: Tensor | np.ndarray) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, float)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2), got {tuple(a.shape)}")
    return a[np.isfinite(a).all(1)]


def _range(lim: Lim | None, *arrays: np.ndarray) -> tuple[float, float]:
    if lim is None:
        finite = [a for a in arrays if a.size]
        peak = max((float(np.abs(a).max()) for a in finite), default=1.0)
        return -1.05 * peak, 1.05 * peak
    if isinstance(lim, (int, float)):
        if not lim > 0:
            raise ValueError(f"lim must be > 0 or a (low, high) pair, got {lim}")
        return -float(lim), float(lim)
    lo, hi = (float(v) for v in lim)
    if not hi > lo:
        raise ValueError(f"lim must be (low, high) with high > low, got {lim}")
    return lo, hi


def _path(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    path = _path(path)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    return path


def _hist(ax, pts: np.ndarray, rng: tuple[float, float], bins: int, title: str | None) -> None:
    if len(pts):
        # no finer than ~2 points per occupied bin on average: sparse samples stay readable
        bins = int(min(bins, max(30, 2 * math.sqrt(len(pts)))))
        h, _, _ = np.histogram2d(pts[:, 0], pts[:, 1], bins=bins, range=[rng, rng])
        ax.imshow(np.sqrt(h.T), origin="lower", extent=(*rng, *rng), cmap="magma",
                  aspect="equal", interpolation="nearest")
    ax.set_xlim(*rng)
    ax.set_ylim(*rng)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def plot_samples_2d(
    samples: Tensor, path: str | Path, data: Tensor | None = None, title: str | None = None,
    lim: Lim | None = None, *, bins: int = 150,
) -> Path:
    r"""Histogram of 2D ``samples`` (``(n, 2)``), beside one of ``data`` when given.

    Arguments:
        samples: Model samples, ``(n, 2)``; non-finite rows are dropped.
        path: Output PNG.
        data: Data points to show in a left panel.
        title: Figure title.
        lim: Half-width of the square shown, or ``(low, high)``; default: fits the points.
        bins: Histogram bins per axis.

    Example:
        >>> import tempfile, torch
        >>> p = plot_samples_2d(torch.randn(500, 2), tempfile.mkdtemp() + "/s.png",
        ...                     data=torch.randn(500, 2), lim=3)
        >>> p.stat().st_size > 0
        True
    """
    s = _points("samples", samples)
    d = None if data is None else _points("data", data)
    rng = _range(lim, s, *([] if d is None else [d]))
    panels = [("data", d), ("samples", s)] if d is not None else [("samples", s)]
    fig = Figure(figsize=(3.2 * len(panels), 3.4))
    for i, (name, pts) in enumerate(panels):
        _hist(fig.add_subplot(1, len(panels), i + 1), pts, rng, bins, name)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_density_2d(
    log_prob_fn: Callable[[Tensor], Tensor], path: str | Path, lim: Lim, n_grid: int = 100,
    data: Tensor | None = None, *, batch_size: int = 4096, title: str | None = None,
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
) -> Path:
    r"""Heat map of :math:`\exp\log p(x)` on an ``n_grid`` x ``n_grid`` grid over ``lim``.

    ``log_prob_fn`` maps points ``(m, 2)`` to log-densities ``(m,)`` (e.g. a closure over
    :func:`~sdeflow.likelihood.ode_log_likelihood`); it is called on batches of ``batch_size``.

    Example:
        >>> import tempfile, torch
        >>> from torch.distributions import MultivariateNormal
        >>> normal = MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> p = plot_density_2d(normal.log_prob, tempfile.mkdtemp() + "/d.png", lim=3, n_grid=20)
        >>> p.suffix
        '.png'
    """
    if not callable(log_prob_fn):
        raise TypeError(f"log_prob_fn must be callable, got {type(log_prob_fn).__name__}")
    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 2:
        raise ValueError(f"n_grid must be an integer >= 2, got {n_grid!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    rng = _range(lim)
    axis = torch.linspace(rng[0], rng[1], n_grid, dtype=dtype, device=device)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    chunks = []
    for chunk in points.split(batch_size):
        lp = log_prob_fn(chunk)
        if not isinstance(lp, Tensor) or lp.shape != chunk.shape[:1]:
            got = tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__
            raise ValueError(f"log_prob_fn must return shape ({chunk.shape[0]},), got {got}")
        chunks.append(lp.detach().double().cpu())
    density = torch.cat(chunks).exp().nan_to_num(0.0).reshape(n_grid, n_grid).numpy()
    panels = 2 if data is not None else 1
    fig = Figure(figsize=(3.2 * panels, 3.4))
    if data is not None:
        _hist(fig.add_subplot(1, 2, 1), _points("data", data), rng, n_grid, "data")
    ax = fig.add_subplot(1, panels, panels)
    ax.imshow(density, origin="lower", extent=(*rng, *rng), cmap="magma", aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("density", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def save_image_grid(images: Tensor, path: str | Path, nrow: int = 8, *, padding: int = 2) -> Path:
    r"""Tile images ``(B, C, H, W)`` (``C`` = 1 or 3, values in ``[-1, 1]``; ``(B, H, W)`` is
    taken as grey) into rows of ``nrow`` and write them as one PNG.

    Example:
        >>> import tempfile, torch
        >>> p = save_image_grid(torch.rand(5, 3, 8, 8) * 2 - 1, tempfile.mkdtemp() + "/g.png", 4)
        >>> p.exists()
        True
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images = images[:, None]
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images must have shape (B, C, H, W) with C in (1, 3) and B >= 1, "
                         f"got {tuple(images.shape)}")
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be an integer >= 1, got {nrow!r}")
    b, c, h, w = images.shape
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).expand(b, 3, h, w).numpy()
    cols, rows = min(nrow, b), math.ceil(b / nrow)
    grid = np.ones((3, rows * (h + padding) + padding, cols * (w + padding) + padding),
                   dtype=np.float32)
    for i in range(b):
        r, q = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    import matplotlib.image

    out = _path(path)
    matplotlib.image.imsave(out, grid.transpose(1, 2, 0))
    return out


def plot_sample_grid_2d(
    rows: Mapping[str, Mapping[str, Tensor]], path: str | Path, *, lim: Lim | None = None,
    bins: int = 120, columns: Sequence[str] | None = None,
) -> Path:
    r"""One histogram per (row, column): ``rows[model][dataset]`` holds ``(n, 2)`` samples.

    Rows are the models (in the mapping's order); columns are the data sets (``columns``, or
    the union of every row's keys in first-seen order); a missing entry stays blank.
    ``lim``: per-panel range (default: each panel fits its column's points).

    Example:
        >>> import tempfile, torch
        >>> rows = {"data": {"a": torch.randn(99, 2), "b": torch.rand(99, 2)},
        ...         "model": {"a": torch.randn(99, 2)}}
        >>> plot_sample_grid_2d(rows, tempfile.mkdtemp() + "/grid.png").exists()
        True
    """
    if not isinstance(rows, Mapping) or not rows:
        raise ValueError("rows must be a non-empty mapping {model: {dataset: samples}}")
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows.values() for k in r))
    if not columns:
        raise ValueError("rows must hold at least one data set")
    pts = {(m, c): _points(f"rows[{m!r}][{c!r}]", r[c]) for m, r in rows.items()
           for c in columns if c in r}
    ranges = {c: _range(lim, *[p for (_, cc), p in pts.items() if cc == c]) for c in columns}
    n_r, n_c = len(rows), len(columns)
    fig = Figure(figsize=(1.9 * n_c + 0.8, 1.9 * n_r + 0.3))
    for i, model in enumerate(rows):
        for j, col in enumerate(columns):
            ax = fig.add_subplot(n_r, n_c, i * n_c + j + 1)
            _hist(ax, pts.get((model, col), np.zeros((0, 2))), ranges[col], bins,
                  col if i == 0 else None)
            if j == 0:
                ax.set_ylabel(model, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


_SKIP_KEYS = ("step", "epoch", "time", "wall", "elapsed", "lr", "seconds")


def plot_loss_curve(
    metrics_jsonl_path: str | Path, path: str | Path, keys: Sequence[str] | None = None,
    *, x_key: str = "step",
) -> Path:
    r"""Curves of numeric metrics from a JSONL file (one JSON object per line) against
    ``x_key`` (the line number where absent).

    ``keys``: the metrics to draw; default ``loss`` where present, else every numeric key
    except step/time/learning-rate ones. Lines that do not parse are skipped (a run killed
    mid-write leaves one).

    Example:
        >>> import json, tempfile
        >>> d = tempfile.mkdtemp()
        >>> lines = [json.dumps({"step": i, "loss": 1 / (i + 1)}) for i in range(5)]
        >>> _ = open(d + "/m.jsonl", "w").write("\n".join(lines))
        >>> plot_loss_curve(d + "/m.jsonl", d + "/loss.png").exists()
        True
    """
    records = []
    for line in Path(metrics_jsonl_path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)

    def numeric(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if keys is None:
        seen = list(dict.fromkeys(k for r in records for k, v in r.items() if numeric(v)))
        keys = ["loss"] if "loss" in seen else [
            k for k in seen if k != x_key and not any(s in k.lower() for s in _SKIP_KEYS)
        ]
    if not keys:
        raise ValueError(f"no numeric metric to plot in {metrics_jsonl_path}")
    fig = Figure(figsize=(5.0, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    for key in keys:
        xy = [(r.get(x_key, i), r[key]) for i, r in enumerate(records)
              if numeric(r.get(key)) and numeric(r.get(x_key, i))]
        if xy:
            ax.plot(*zip(*xy), label=key, lw=1)
    ax.set_xlabel(x_key)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
