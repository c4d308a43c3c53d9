r"""Couplings of data and noise for path matching: which noise :math:`\epsilon` each data point
:math:`x_0` of a batch is paired with on the path :math:`x_t = \alpha x_0 + \sigma\epsilon`.

A coupling is called as ``coupling(x0, noise, generator=None)`` and returns the paired batch
``(x0, noise)``: the data in their order, each with its partner. Any coupling whose marginals are
the data and the noise laws trains a model with the right marginals at :math:`t_0` and
:math:`t_1`; a coupling closer to optimal transport gives straighter, lower-variance targets.

- :class:`IndependentCoupling`: :math:`\pi = p_{data} \otimes \mathcal{N}(0, I)` (the batch as
  drawn);
- :class:`MinibatchOTCoupling`: optimal transport for the squared distance within the batch,
  :math:`\pi^* = \arg\min_{\pi \in \Pi(\frac1B 1, \frac1B 1)} \sum_{ij} \pi_{ij}
  |x_0^i - \epsilon^j|^2` (exact by the network simplex for small batches, entropic by Sinkhorn
  for large ones; both from POT), and each :math:`x_0^i` takes its partner :math:`j` from the
  plan's row :math:`\pi^*_{i\cdot}/\sum_j\pi^*_{ij}` (exact plans are permutations: then the
  pairing is deterministic; Sinkhorn's rows are drawn from with ``generator``).

:data:`COUPLINGS` names them for recipes (``model.coupling``).

References:
    | Improving and Generalizing Flow-Based Generative Models with Minibatch Optimal Transport
      (Tong et al., 2023), https://arxiv.org/abs/2302.00482
    | POT: Python Optimal Transport (Flamary et al., 2021), https://pythonot.github.io
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from sdeflow._checks import check_same_device_dtype
from sdeflow.registry import Registry

__all__ = ["Coupling", "IndependentCoupling", "MinibatchOTCoupling", "transport_cost",
           "OT_METHODS", "COUPLINGS"]

#: Values of ``method`` accepted by :class:`MinibatchOTCoupling`.
OT_METHODS: tuple[str, ...] = ("auto", "exact", "sinkhorn")


def _check_batch(x0: Tensor, noise: Tensor) -> None:
    if not isinstance(x0, Tensor) or not isinstance(noise, Tensor):
        raise TypeError(f"x0 and noise must be tensors, got {type(x0).__name__} and "
                        f"{type(noise).__name__}")
    if x0.shape != noise.shape or x0.dim() < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 and noise must share a shape (batch, *state), got "
                         f"{tuple(x0.shape)} and {tuple(noise.shape)}")
    check_same_device_dtype("noise", noise, "x0", x0)


def transport_cost(x0: Tensor, noise: Tensor) -> Tensor:
    r"""The paired batch's mean squared distance :math:`\frac1B\sum_i |x_0^i - \epsilon^i|^2`.

    Example:
        >>> transport_cost(torch.zeros(2, 3), torch.ones(2, 3))
        tensor(3.)
    """
    _check_batch(x0, noise)
    return (x0 - noise).square().reshape(x0.shape[0], -1).sum(-1).mean()


class Coupling(ABC):
    """Base class: ``coupling(x0, noise, generator=None) -> (x0, noise)``, the paired batch."""

    @abstractmethod
    def __call__(self, x0: Tensor, noise: Tensor, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor]:
        """The data, in their order, and each one's partner noise."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class IndependentCoupling(Coupling):
    r"""Data and noise as drawn, independently: :math:`\pi = p_{data}\otimes\mathcal{N}(0, I)`.

    Example:
        >>> x0, noise = torch.randn(4, 2), torch.randn(4, 2)
        >>> paired = IndependentCoupling()(x0, noise)
        >>> paired[0] is x0 and paired[1] is noise
        True
    """

    def __call__(self, x0: Tensor, noise: Tensor, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor]:
        _check_batch(x0, noise)
        return x0, noise


class MinibatchOTCoupling(Coupling):
    r"""Minibatch optimal-transport coupling for the squared Euclidean cost (see the module
    docstring), solved by POT without gradients (the pairing is a choice of data, not a function
    to differentiate).

    Arguments:
        method: ``"exact"`` (network simplex, ``ot.emd``: a permutation), ``"sinkhorn"``
            (entropic, ``ot.sinkhorn`` on the cost divided by its largest entry), or ``"auto"``
            (exact up to ``exact_max`` samples, Sinkhorn above).
        reg: Sinkhorn's entropic regularization, relative to the largest cost (> 0).
        exact_max: The largest batch ``"auto"`` solves exactly.
        num_itermax: Iteration limit of the solver.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x0, noise = torch.randn(64, 2, generator=g) + 3, torch.randn(64, 2, generator=g)
        >>> paired_x0, paired_noise = MinibatchOTCoupling()(x0, noise)
        >>> paired_x0 is x0, bool(transport_cost(x0, paired_noise) < transport_cost(x0, noise))
        (True, True)
    """

    def __init__(self, method: str = "auto", *, reg: float = 0.05, exact_max: int = 1024,
                 num_itermax: int = 100_000) -> None:
        if method not in OT_METHODS:
            raise ValueError(f"method must be one of {OT_METHODS}, got {method!r}")
        if not reg > 0:
            raise ValueError(f"reg must be > 0, got {reg}")
        if isinstance(exact_max, bool) or not isinstance(exact_max, int) or exact_max < 1:
            raise ValueError(f"exact_max must be an integer >= 1, got {exact_max!r}")
        if isinstance(num_itermax, bool) or not isinstance(num_itermax, int) or num_itermax < 1:
            raise ValueError(f"num_itermax must be an integer >= 1, got {num_itermax!r}")
        self.method, self.reg = method, float(reg)
        self.exact_max, self.num_itermax = exact_max, num_itermax

    def plan(self, x0: Tensor, noise: Tensor) -> Tensor:
        r"""The optimal plan :math:`\pi^*` ``(B, B)`` (rows: data, columns: noise; each sums to
        :math:`1/B`), float64 on the CPU."""
        import ot  # POT: imported on first use, so importing sdeflow does not load it

        _check_batch(x0, noise)
        b = x0.shape[0]
        a = x0.detach().reshape(b, -1).to("cpu", torch.float64)
        e = noise.detach().reshape(b, -1).to("cpu", torch.float64)
        cost = torch.cdist(a, e).square()
        weights = torch.full((b,), 1.0 / b, dtype=torch.float64)
        exact = self.method == "exact" or (self.method == "auto" and b <= self.exact_max)
        if exact:
            return ot.emd(weights, weights, cost, numItermax=self.num_itermax)
        scale = cost.max().clamp_min(torch.finfo(torch.float64).tiny)
        return ot.sinkhorn(weights, weights, cost / scale, self.reg,
                           numItermax=self.num_itermax)

    def __call__(self, x0: Tensor, noise: Tensor, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor]:
        pi = self.plan(x0, noise)
        rows = pi / pi.sum(1, keepdim=True)
        if not bool(torch.isfinite(rows).all()):
            raise ValueError("the transport plan has an empty or non-finite row (Sinkhorn did "
                             "not converge): raise reg or num_itermax, or use method='exact'")
        if bool((rows.max(1).values > 1 - 1e-9).all()):  # a permutation: no draw needed
            partner = rows.argmax(1)
        else:  # draw where the generator lives, as every sdeflow draw does
            device = generator.device if generator is not None else noise.device
            partner = torch.multinomial(rows.to(device), 1, generator=generator).squeeze(1)
        return x0, noise[partner.to(noise.device)]

    def __repr__(self) -> str:
        return (f"MinibatchOTCoupling(method={self.method!r}, reg={self.reg}, "
                f"exact_max={self.exact_max})")


#: The couplings by name (a recipe's ``model.coupling``); factories ``(**keys) -> Coupling``:
#: ``independent``, and ``minibatch_ot`` with the keys ``ot_method`` (one of
#: :data:`OT_METHODS`) and ``ot_reg`` (Sinkhorn's regularization).
COUPLINGS: Registry = Registry("coupling", key="model.coupling")
COUPLINGS.register("independent", IndependentCoupling)


@COUPLINGS.register("minibatch_ot", optional={"ot_method": str, "ot_reg": (int, float)})
def minibatch_ot(*, ot_method: str = "auto", ot_reg: float = 0.05) -> MinibatchOTCoupling:
    """:class:`MinibatchOTCoupling` ``(ot_method, reg=ot_reg)``.

    Example:
        >>> COUPLINGS.resolve("minibatch_ot", ot_method="exact")
        MinibatchOTCoupling(method='exact', reg=0.05, exact_max=1024)
    """
    return MinibatchOTCoupling(ot_method, reg=ot_reg)
