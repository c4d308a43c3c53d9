r"""The Fréchet distance between two Gaussians, the quantity behind FID.

For :math:`\mathcal{N}(\mu_1, \Sigma_1)` and :math:`\mathcal{N}(\mu_2, \Sigma_2)` the squared
2-Wasserstein (Fréchet) distance is

.. math::
    d^2 = \lVert \mu_1 - \mu_2 \rVert^2
          + \operatorname{tr}\left(\Sigma_1 + \Sigma_2 - 2 (\Sigma_1 \Sigma_2)^{1/2}\right).

:math:`\Sigma_1 \Sigma_2` is not symmetric, so the usual route (``scipy.linalg.sqrtm`` of the
product, then the real part) is a general, ill-conditioned matrix square root. Only its trace is
needed. With any factors :math:`\Sigma_i = L_i L_i^\top` (:math:`L_i` of shape ``(d, k_i)``),

.. math::
    \operatorname{tr} (\Sigma_1 \Sigma_2)^{1/2} = \lVert L_1^\top L_2 \rVert_*
    \quad\text{(sum of singular values)},

because :math:`\Sigma_1 \Sigma_2 = L_1 (L_1^\top L_2 L_2^\top)` has the same non-zero eigenvalues
as :math:`L_1^\top L_2 L_2^\top L_1 = (L_1^\top L_2)(L_1^\top L_2)^\top`, symmetric PSD, whose
eigenvalues are the squared singular values of :math:`L_1^\top L_2`. So

.. math::
    d^2 = \lVert \mu_1 - \mu_2 \rVert^2 + \lVert L_1 \rVert_F^2 + \lVert L_2 \rVert_F^2
          - 2 \lVert L_1^\top L_2 \rVert_* = \lVert \mu_1 - \mu_2 \rVert^2
          + \min_{U^\top U = I} \lVert L_1 - L_2 U \rVert_F^2 \ \ge 0.

A covariance matrix is factored by ``eigh``, :math:`L = V_k \operatorname{diag}(\sqrt{\lambda_k})`
over its eigenvalues above ``eigh``'s resolution (:math:`d\,\epsilon \max|\lambda|`; below it they
are the zeros of a singular covariance seen through rounding), so :math:`k` is its numerical
rank.

Accuracy: singular values have absolute error :math:`\sim \epsilon \lVert L_1^\top L_2 \rVert`,
whereas square roots of the eigenvalues of :math:`L_1^\top \Sigma_2 L_1` would err by
:math:`\sim \sqrt{\epsilon}` in its null space. With fewer samples than feature dimensions
(rank-deficient covariances, the usual case for 2048-d Inception features) this keeps the
distance of a set of statistics to itself at rounding level (:math:`\sim 10^{-14}` relative, where
the eigenvalue route leaves :math:`\sim 10^{-7}`) and an exactly singular pair exact to rounding
(where ``sqrtm`` of the product errs by :math:`\sim 10^{-9}`). The distance is not Lipschitz at
singular covariances: eigenvalues below the resolution can move it by :math:`\sim \sqrt{\epsilon}`
of its scale, which no float64 method resolves.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["frechet_distance"]

# A covariance whose most negative eigenvalue is below -_PSD_TOL * (largest |eigenvalue|) is not a
# covariance; above it, negative eigenvalues are rounding and are set to zero.
_PSD_TOL = 1e-6
_SYM_TOL = 1e-6


def _as_float64(name: str, value: Tensor | np.ndarray, device: torch.device | None) -> Tensor:
    if isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}"
        )
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    value = value.detach().to(dtype=torch.float64, device=device)
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return value


def _statistics(
    mu: Tensor | np.ndarray,
    sigma: Tensor | np.ndarray,
    mu_name: str,
    sigma_name: str,
    device: torch.device | None = None,
    like: tuple[str, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """``mu`` ``(d,)`` and ``sigma`` ``(d, d)`` as float64 tensors, checked; ``like`` is the name
    and dimension of a mean that ``mu`` must match."""
    mu = _as_float64(mu_name, mu, device)
    if like is not None and mu.shape != (like[1],):
        raise ValueError(
            f"{mu_name} must have shape (d,)=({like[1]},) like {like[0]}, got {tuple(mu.shape)}"
        )
    if mu.dim() != 1 or mu.shape[0] == 0:
        raise ValueError(f"{mu_name} must have shape (d,) with d >= 1, got {tuple(mu.shape)}")
    sigma = _as_float64(sigma_name, sigma, device)
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise ValueError(
            f"{sigma_name} must have shape (d, d)=({d}, {d}) to match {mu_name}, "
            f"got {tuple(sigma.shape)}"
        )
    return mu, sigma


def _covariance_factor(name: str, sigma: Tensor) -> Tensor:
    r"""A factor :math:`L` ``(d, k)`` of a symmetric PSD ``sigma`` with :math:`L L^\top = \Sigma`:
    :math:`L = V_k \operatorname{diag}(\sqrt{\lambda_k})` over the eigenvalues above ``eigh``'s
    resolution. ``name`` is the argument's name for errors."""
    asym = (sigma - sigma.T).abs().max()
    scale = sigma.abs().max()
    if asym > _SYM_TOL * scale:
        raise ValueError(
            f"{name} must be a symmetric covariance matrix, got max |{name} - {name}.T| = "
            f"{float(asym):.3g} (max |{name}| = {float(scale):.3g})"
        )
    eigenvalues, eigenvectors = torch.linalg.eigh((sigma + sigma.T) / 2)
    if eigenvalues[0] < -_PSD_TOL * eigenvalues.abs().max():
        raise ValueError(
            f"{name} must be positive semi-definite, got eigenvalue {float(eigenvalues[0]):.3g} "
            f"(largest {float(eigenvalues[-1]):.3g})"
        )
    resolution = sigma.shape[0] * torch.finfo(sigma.dtype).eps * eigenvalues.abs().max()
    keep = eigenvalues > resolution
    return eigenvectors[:, keep] * eigenvalues[keep].sqrt()


def _gaussian(
    mu: Tensor | np.ndarray,
    sigma: Tensor | np.ndarray,
    names: tuple[str, str],
    device: torch.device | None = None,
    like: tuple[str, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """``mu`` and a factor of ``sigma``, checked; ``names`` name them in errors."""
    mu, sigma = _statistics(mu, sigma, *names, device, like)
    return mu, _covariance_factor(names[1], sigma)


def _frechet_from_factors(mu1: Tensor, factor1: Tensor, mu2: Tensor, factor2: Tensor) -> float:
    r""":math:`\lVert \mu_1 - \mu_2 \rVert^2 + \lVert L_1 \rVert_F^2 + \lVert L_2 \rVert_F^2
    - 2 \lVert L_1^\top L_2 \rVert_*` for float64 ``mu`` ``(d,)`` and factors ``(d, k)``."""
    cross = factor1.T @ factor2
    trace_sqrt = torch.linalg.svdvals(cross).sum() if cross.numel() else cross.new_zeros(())
    distance = (
        (mu1 - mu2).square().sum()
        + factor1.square().sum()
        + factor2.square().sum()
        - 2 * trace_sqrt
    )
    return float(distance)


def frechet_distance(
    mu1: Tensor | np.ndarray,
    sigma1: Tensor | np.ndarray,
    mu2: Tensor | np.ndarray,
    sigma2: Tensor | np.ndarray,
) -> float:
    r"""Squared Fréchet distance between :math:`\mathcal{N}(\mu_1, \Sigma_1)` and
    :math:`\mathcal{N}(\mu_2, \Sigma_2)`, in float64:

    .. math::
        d^2 = \lVert \mu_1 - \mu_2 \rVert^2
              + \operatorname{tr}\left(\Sigma_1 + \Sigma_2 - 2 (\Sigma_1 \Sigma_2)^{1/2}\right)
            = \lVert \mu_1 - \mu_2 \rVert^2 + \lVert L_1 \rVert_F^2 + \lVert L_2 \rVert_F^2
              - 2 \lVert L_1^\top L_2 \rVert_*,

    with :math:`\Sigma_i = L_i L_i^\top` from ``eigh`` and :math:`\lVert \cdot \rVert_*` the
    sum of singular values (see the module docstring). With the Inception statistics of two
    image sets this is the FID. The result is not clamped: it can be a rounding-level negative
    number for (nearly) identical statistics.

    Arguments:
        mu1: Mean of the first Gaussian, shape ``(d,)`` (tensor or numpy array).
        sigma1: Covariance of the first Gaussian, symmetric PSD, shape ``(d, d)``.
        mu2: Mean of the second Gaussian, shape ``(d,)``.
        sigma2: Covariance of the second Gaussian, shape ``(d, d)``.

    Returns:
        The squared distance as a Python float.

    Example:
        >>> import torch
        >>> mu, sigma = torch.zeros(2), torch.diag(torch.tensor([1.0, 4.0]))
        >>> frechet_distance(mu, sigma, mu + 1, torch.eye(2))  # 2 + (1 - 1)^2 + (2 - 1)^2
        3.0
    """
    device = sigma1.device if isinstance(sigma1, Tensor) else None
    mu1, sigma1 = _statistics(mu1, sigma1, "mu1", "sigma1", device)
    mu2, sigma2 = _statistics(mu2, sigma2, "mu2", "sigma2", device, like=("mu1", mu1.shape[0]))
    return _frechet_from_factors(
        mu1, _covariance_factor("sigma1", sigma1), mu2, _covariance_factor("sigma2", sigma2)
    )
