r"""Gaussian statistics of features: from a feature matrix, streamed in sums, and in ``.npz`` files.

FID summarises a set of :math:`N` feature vectors :math:`\phi_n \in \mathbb{R}^d` by

.. math::
    \mu = \frac{1}{N} \sum_n \phi_n, \qquad
    \Sigma = \frac{1}{N - 1} \sum_n (\phi_n - \mu)(\phi_n - \mu)^\top

(the unbiased covariance, as ``np.cov(features, rowvar=False)`` in pytorch-fid and TTUR).
:func:`feature_statistics` computes them from all the features at once; :class:`FeatureSums`
from float64 sums that grow batch by batch and add up over processes, so no feature matrix is
kept (the FID pipeline, :mod:`sdeflow.metrics.pipeline`, streams every image set through it). The
files are the ecosystem's ``.npz`` with keys ``mu`` and ``sigma``, so published statistics (e.g.
TTUR's ``fid_stats_cifar10_train.npz``) load unchanged and files written here load in
pytorch-fid. An optional ``count`` key records :math:`N`; other readers ignore it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from sdeflow.training.distributed import DistributedContext

__all__ = ["FeatureSums", "feature_statistics", "save_statistics", "load_statistics"]

PathLike = str | os.PathLike


def _as_numpy(name: str, value: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    elif not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}"
        )
    if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    return value.astype(np.float64)


def _check_statistics(mu: np.ndarray, sigma: np.ndarray, where: str) -> None:
    if mu.ndim != 1:
        raise ValueError(f"{where}mu must have shape (d,), got {mu.shape}")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise ValueError(
            f"{where}sigma must have shape (d, d)=({d}, {d}) to match mu, got {sigma.shape}"
        )


def _checked_features(features: Tensor | np.ndarray) -> np.ndarray:
    """``features`` as a float64 array ``(N, d)`` with ``N >= 2``, finite."""
    features = _as_numpy("features", features)
    if features.ndim != 2:
        raise ValueError(f"features must have shape (N, d), got {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(
            f"features must hold at least 2 vectors for a covariance, got N={features.shape[0]}"
        )
    if not np.isfinite(features).all():
        raise ValueError("features must be finite, got NaN or inf")
    return features


def feature_statistics(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Mean and unbiased covariance of ``features`` ``(N, d)``, as float64 numpy arrays.

    .. math::
        \mu = \bar\phi, \qquad
        \Sigma = \tfrac{1}{N-1} (\Phi - \bar\phi)^\top (\Phi - \bar\phi).

    Arguments:
        features: ``N >= 2`` finite feature vectors, shape ``(N, d)`` (tensor or array).

    Returns:
        ``(mu, sigma)`` of shapes ``(d,)`` and ``(d, d)``.

    Example:
        >>> import numpy as np
        >>> mu, sigma = feature_statistics(np.array([[0.0, 1.0], [2.0, 3.0]]))
        >>> mu, sigma
        (array([1., 2.]), array([[2., 2.],
               [2., 2.]]))
    """
    features = _checked_features(features)
    mu = features.mean(axis=0)
    centred = features - mu
    sigma = centred.T @ centred / (features.shape[0] - 1)
    return mu, sigma


class FeatureSums:
    r"""Running float64 sums of feature vectors, added batch by batch and over processes.

    The sums are taken about a shift :math:`c` (the mean of the first batch added), which keeps
    them small, so the one-pass covariance loses no digits to cancellation:

    .. math::
        n, \qquad s = \sum_i (\phi_i - c), \qquad S = \sum_i (\phi_i - c)(\phi_i - c)^\top,
        \qquad
        \mu = c + \frac{s}{n}, \qquad \Sigma = \frac{1}{n - 1}\Big(S - \frac{s s^\top}{n}\Big),

    the statistics of :func:`feature_statistics`. Sums about another shift :math:`c'` follow from
    :math:`\delta = c - c'`: :math:`s' = s + n\delta`, :math:`S' = S + \delta s^\top + s
    \delta^\top + n \delta\delta^\top`; :meth:`merge` and :meth:`all_reduce` move the parts to
    one shift and add them. The sums stay on the device of the first batch (a GPU's features
    are summed there).

    Arguments:
        dim: The feature dimension :math:`d`; ``None``: taken from the first batch.

    Example:
        >>> sums = FeatureSums(2).add(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
        >>> sums.count
        2
        >>> mu, sigma = sums.statistics()
        >>> mu.tolist(), sigma.tolist()
        ([1.0, 2.0], [[2.0, 2.0], [2.0, 2.0]])
        >>> more = FeatureSums().add(torch.tensor([[4.0, 5.0]]))
        >>> sums.merge(more).statistics()[0].tolist()
        [2.0, 3.0]
    """

    def __init__(self, dim: int | None = None) -> None:
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive integer or None, got {dim!r}")
        self.dim = dim
        self.count = 0
        self._shift: Tensor | None = None
        self._total: Tensor | None = None
        self._outer: Tensor | None = None

    def __repr__(self) -> str:
        device = None if self._total is None else self._total.device
        return f"FeatureSums(dim={self.dim}, count={self.count}, device={device})"

    def add(self, features: Tensor | np.ndarray) -> FeatureSums:
        """Add the rows of ``features`` ``(B, dim)``; returns ``self``."""
        if isinstance(features, np.ndarray):
            features = torch.from_numpy(features)
        if not isinstance(features, Tensor):
            raise TypeError(
                f"features must be a torch.Tensor or numpy.ndarray, got {type(features).__name__}"
            )
        if features.dim() != 2 or (self.dim is not None and features.shape[1] != self.dim):
            expected = "d" if self.dim is None else self.dim
            raise ValueError(
                f"features must have shape (B, {expected}), got {tuple(features.shape)}"
            )
        self.dim = features.shape[1]
        if features.shape[0] == 0:
            return self
        f = features.detach().to(torch.float64)
        if self._total is None:
            self._shift = f.mean(dim=0)
            self._total = torch.zeros_like(self._shift)
            self._outer = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=f.device)
        centred = f.to(self._total.device) - self._shift
        self.count += f.shape[0]
        self._total += centred.sum(dim=0)
        self._outer += centred.T @ centred
        return self

    def _about(self, shift: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`(s', S')`, the sums about ``shift`` instead of :math:`c`."""
        delta = self._shift - shift.to(self._shift.device)
        moved = self.count * delta
        total = self._total + moved
        outer = self._outer + torch.outer(delta, self._total)
        outer += torch.outer(self._total, delta) + torch.outer(moved, delta)
        return total, outer

    def merge(self, other: FeatureSums) -> FeatureSums:
        """The sums of ``self``'s features and ``other``'s, as new sums (both are unchanged)."""
        if not isinstance(other, FeatureSums):
            raise TypeError(f"other must be FeatureSums, got {type(other).__name__}")
        if self.dim is not None and other.dim is not None and self.dim != other.dim:
            raise ValueError(f"other must hold {self.dim}-d features, got {other.dim}-d")
        first, second = (self, other) if self.count else (other, self)
        merged = FeatureSums(first.dim if first.dim is not None else second.dim)
        if first.count:
            merged.count = first.count
            merged._shift = first._shift.clone()
            merged._total, merged._outer = first._total.clone(), first._outer.clone()
        if second.count:
            total, outer = second._about(merged._shift)
            merged.count += second.count
            merged._total += total.to(merged._total.device)
            merged._outer += outer.to(merged._outer.device)
        return merged

    def all_reduce(self, ctx: DistributedContext) -> FeatureSums:
        r"""The sums over every rank of ``ctx``, on every rank; a collective call.

        The ranks' sums are moved to one shift, the mean of the ranks' own shifts (close to all
        of them), then summed; a rank without features takes part all the same.
        """
        if not ctx.enabled:
            return self.merge(FeatureSums(self.dim))
        dims = {d for d in ctx.all_gather_object(self.dim) if d is not None}
        if len(dims) > 1:
            raise ValueError(f"the ranks' features differ in dimension: {sorted(dims)}")
        if not dims:
            return FeatureSums()
        dim = dims.pop()
        has = self.count > 0
        device = self._total.device if has else torch.device("cpu")
        shift = self._shift if has else torch.zeros(dim, dtype=torch.float64, device=device)
        flag = torch.ones(1, dtype=torch.float64, device=device) * has
        shifts = ctx.all_reduce_sum(torch.cat([shift, flag]))
        reduced = FeatureSums(dim)
        if shifts[dim] == 0:  # no rank holds a feature
            return reduced
        common = shifts[:dim] / shifts[dim]
        if has:
            total, outer = self._about(common)
        else:
            total = torch.zeros(dim, dtype=torch.float64, device=device)
            outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=device)
        summed = ctx.all_reduce_sum(torch.cat([count, total, outer.flatten()]))
        reduced.count = int(summed[0])
        reduced._shift = common
        reduced._total = summed[1 : dim + 1]
        reduced._outer = summed[dim + 1 :].reshape(dim, dim)
        return reduced

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, sigma)`` as float64 numpy arrays (needs at least two feature vectors)."""
        if self.count < 2:
            raise ValueError(
                f"need at least 2 feature vectors for a covariance, got {self.count}"
            )
        offset = self._total / self.count
        mu = self._shift + offset
        sigma = (self._outer - self.count * torch.outer(offset, offset)) / (self.count - 1)
        sigma = (sigma + sigma.T) / 2  # exactly symmetric
        if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
            raise ValueError("features must be finite, got NaN or inf among those added")
        return mu.cpu().numpy(), sigma.cpu().numpy()


def save_statistics(
    path: PathLike, mu: Tensor | np.ndarray, sigma: Tensor | np.ndarray, *, count: int | None = None
) -> None:
    """Write ``mu`` ``(d,)`` and ``sigma`` ``(d, d)`` to the ``.npz`` file ``path``.

    The file is written exactly at ``path`` (no ``.npz`` suffix is appended), atomically (a
    temporary file in the same folder, then renamed), creating missing parent folders.

    Arguments:
        path: Destination file.
        mu: Mean, shape ``(d,)``.
        sigma: Covariance, shape ``(d, d)``.
        count: Number of feature vectors the statistics came from, stored as ``count``.

    Example:
        >>> import numpy as np, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "stats.npz")
        >>> save_statistics(path, np.zeros(3), np.eye(3), count=10)
        >>> mu, sigma = load_statistics(path)
        >>> mu.shape, sigma.shape
        ((3,), (3, 3))
    """
    mu = _as_numpy("mu", mu)
    sigma = _as_numpy("sigma", sigma)
    _check_statistics(mu, sigma, "")
    arrays = {"mu": mu, "sigma": sigma}
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
            raise ValueError(f"count must be a positive integer or None, got {count!r}")
        arrays["count"] = np.asarray(int(count), dtype=np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no statistics file at {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{str(path)!r} is not a readable .npz statistics file: {error}"
        ) from error
    missing = [key for key in ("mu", "sigma") if key not in arrays]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks the key(s) {missing}: a statistics file holds 'mu' (d,) and "
            f"'sigma' (d, d); found keys {sorted(arrays)}"
        )
    return arrays


def load_statistics(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(mu, sigma)`` (float64) from an ``.npz`` file with keys ``mu`` and ``sigma``.

    Reads files written by :func:`save_statistics`, pytorch-fid, TTUR, or plain
    ``np.savez(path, mu=mu, sigma=sigma)``.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Not an ``.npz`` file, a key missing, or shapes that do not match
            (``mu`` ``(d,)``, ``sigma`` ``(d, d)``), or non-finite values.

    Example:
        >>> import numpy as np, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "ref.npz")
        >>> np.savez(path, mu=np.ones(2), sigma=np.eye(2))
        >>> load_statistics(path)[0]
        array([1., 1.])
    """
    arrays = _read(path)
    mu, sigma = arrays["mu"], arrays["sigma"]
    where = f"{str(path)!r}: "
    for name, value in (("mu", mu), ("sigma", sigma)):
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise ValueError(f"{where}{name} must hold real numbers, got dtype {value.dtype}")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    _check_statistics(mu, sigma, where)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{where}mu and sigma must be finite, got NaN or inf")
    return mu, sigma


def _recorded_count(path: PathLike) -> int | None:
    """The ``count`` stored with the statistics at ``path``, or None when it has none."""
    count = _read(path).get("count")
    return None if count is None or count.shape != () else int(count)
