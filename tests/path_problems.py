"""Gaussian-mixture data on an affine path, in closed form, written here independently of the
library's conversion table: the marginal density p_t, the posterior means E[x0 | x_t] and
E[eps | x_t], and from them the optimal prediction of each target (shared by the path tests)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

F64 = torch.float64


class Mixture:
    """x0 ~ sum_k w_k N(mu_k, S_k) in d dimensions (full covariances); K = 1 is Gaussian data."""

    def __init__(self, weights: list[float], means: list[list[float]],
                 covs: list[list[list[float]]]) -> None:
        self.log_w = torch.tensor(weights, dtype=F64).log()
        self.mu = torch.tensor(means, dtype=F64)        # (K, d)
        self.cov = torch.tensor(covs, dtype=F64)        # (K, d, d)
        self.d = self.mu.shape[1]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.cov)[k]
        z = torch.randn(n, self.d, 1, generator=generator, dtype=F64)
        return self.mu[k] + (chol @ z).squeeze(-1)

    def _components(self, x: Tensor, alpha: Tensor, sigma: Tensor):
        """Per component: C_k = a^2 S_k + s^2 I, r_k = x - a mu_k, C_k^{-1} r_k, log N_k."""
        alpha = alpha.reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        sigma = sigma.reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        eye = torch.eye(self.d, dtype=F64)
        c = alpha**2 * self.cov + sigma**2 * eye                   # (B, K, d, d)
        r = x[:, None, :] - alpha[..., 0] * self.mu                 # (B, K, d)
        sol = torch.linalg.solve(c, r.unsqueeze(-1)).squeeze(-1)    # (B, K, d)
        log_n = (-0.5 * (r * sol).sum(-1) - 0.5 * torch.logdet(c)
                 - 0.5 * self.d * math.log(2 * math.pi))            # (B, K)
        return alpha[..., 0], sigma[..., 0], sol, log_n

    def log_prob(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """log p_t(x) with x_t = alpha x0 + sigma eps."""
        _, _, _, log_n = self._components(x, alpha, sigma)
        return torch.logsumexp(self.log_w + log_n, -1)

    def posterior_means(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(E[x0 | x_t = x], E[eps | x_t = x]): per component mu + a S C^{-1} r and s C^{-1} r,
        weighted by the responsibilities."""
        a, s, sol, log_n = self._components(x, alpha, sigma)
        resp = torch.softmax(self.log_w + log_n, -1)[..., None]     # (B, K, 1)
        e_x0 = self.mu + a * (self.cov @ sol.unsqueeze(-1)).squeeze(-1)
        e_eps = s * sol
        return (resp * e_x0).sum(1), (resp * e_eps).sum(1)

    def optimal(self, path, target: str, x: Tensor, t: Tensor) -> Tensor:
        """E[y | x_t = x] for y = velocity a' x0 + s' eps, noise, data or score -eps/s."""
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        alpha, sigma, d_alpha, d_sigma = path.path_coefficients(t)
        e_x0, e_eps = self.posterior_means(x, alpha, sigma)
        if target == "velocity":
            return d_alpha[:, None] * e_x0 + d_sigma[:, None] * e_eps
        if target == "noise":
            return e_eps
        if target == "data":
            return e_x0
        return -e_eps / sigma[:, None]


GAUSSIAN = Mixture([1.0], [[1.0, -0.5]], [[[0.5, 0.2], [0.2, 0.3]]])
MIXTURE = Mixture([0.3, 0.7], [[-1.5, 0.5], [1.0, -0.5]],
                  [[[0.2, 0.05], [0.05, 0.1]], [[0.3, -0.1], [-0.1, 0.25]]])
DATA = {"gaussian": GAUSSIAN, "mixture": MIXTURE}
