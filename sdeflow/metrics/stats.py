r"""Gaussian statistics of features, and their ``.npz`` files.

FID summarises a set of :math:`N` feature vectors :math:`\phi_n \in \mathbb{R}^d` by

.. math::
    \mu = \frac{1}{N} \sum_n \phi_n, \qquad
    \Sigma = \frac{1}{N - 1} \sum_n (\phi_n - \mu)(\phi_n - \mu)^\top

(the unbiased covariance, as ``np.cov(features, rowvar=False)`` in pytorch-fid and TTUR). The
files are the ecosystem's ``.npz`` with keys ``mu`` and ``sigma``, so published statistics (e.g.
TTUR's ``fid_stats_cifar10_train.npz``) load unchanged and files written here load in
pytorch-fid. An optional ``count`` key records :math:`N`; other readers ignore it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from torch import Tensor

__all__ = ["feature_statistics", "save_statistics", "load_statistics"]

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
