r"""Affine paths :math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,\epsilon`, :math:`\epsilon \sim
\mathcal{N}(0, I)`, data at :math:`t_0`; and the exact conversions between the four things a
network may predict on one.

**A path is a process.** The Gaussian marginals :math:`x_t \mid x_0 \sim \mathcal{N}(\alpha\,x_0,
\sigma^2 I)` are those of the linear SDE :math:`dx = a(t)\,x\,dt + g(t)\,dw` exactly when
:math:`\alpha' = a\,\alpha` and :math:`(\sigma^2)' = 2a\,\sigma^2 + g^2` (the moment equations of
a linear SDE), that is

.. math:: a = \frac{\alpha'}{\alpha}, \qquad
          g^2 = 2\sigma\sigma' - 2\frac{\alpha'}{\alpha}\sigma^2
              = \frac{2\sigma}{\alpha}\,(\alpha\sigma' - \alpha'\sigma)
              = 2\alpha\sigma\,\Big(\frac{\sigma}{\alpha}\Big)',

which needs :math:`\alpha > 0` and a noise-to-signal ratio :math:`\sigma/\alpha` that does not
decrease. So :class:`AffinePath` is a :class:`~sdeflow.processes.LinearSDE`: it declares closed-form
marginals and its linear part, and the probability-flow ODE, the reverse family
(:class:`~sdeflow.processes.ReverseSDE`), the step schemes and the likelihood take it unchanged.
Conversely every :class:`~sdeflow.processes.LinearSDE` (VP, sub-VP, VE) declares itself an affine
path (:meth:`~sdeflow.processes.LinearSDE.path_coefficients`).

Where :math:`\alpha(t) = 0` (the linear and cosine paths at :math:`t = 1`) the SDE form is singular
(:math:`a = -\infty`) and its methods raise a :class:`ValueError` saying so; the prior there is
exactly :math:`\mathcal{N}(0, \sigma(1)^2 I)`, and the velocity form of the same ODE,
:class:`PathODE`, is regular up to :math:`t = 1`.

**Four targets.** Each target is a fixed combination :math:`y = A\,x_0 + B\,\epsilon`:

=============  ==========================  ============  =======================
target         :math:`y`                   :math:`A`     :math:`B`
=============  ==========================  ============  =======================
``"data"``     :math:`x_0`                 1             0
``"noise"``    :math:`\epsilon`            0             1
``"velocity"`` :math:`dx_t/dt`             :math:`\alpha'`  :math:`\sigma'`
``"score"``    :math:`\nabla\log p(x_t\mid x_0) = -\epsilon/\sigma`  0  :math:`-1/\sigma`
=============  ==========================  ============  =======================

Given :math:`x_t = \alpha x_0 + \sigma\epsilon` and a source :math:`y_s`, solving the 2x2 system
for :math:`(x_0, \epsilon)` gives every other target (:func:`conversion`):

.. math:: y_t = \frac{A_t B_s - A_s B_t}{\alpha B_s - \sigma A_s}\,x_t
              + \frac{\alpha B_t - \sigma A_t}{\alpha B_s - \sigma A_s}\,y_s .

The map is affine in :math:`y_s` for fixed :math:`x_t`, so it carries conditional expectations to
conditional expectations: a network trained on one target (whose optimum is
:math:`E[y_s \mid x_t]`) serves as any other, and :math:`E[\text{score}\mid x_t] = \nabla\log
p_t(x_t)` (Tweedie). Its determinant :math:`\alpha B_s - \sigma A_s` is :math:`-\sigma` (data),
:math:`\alpha` (noise), :math:`\alpha\sigma' - \alpha'\sigma = \alpha g^2/(2\sigma)` (velocity),
:math:`-\alpha/\sigma` (score): a conversion is refused with a :class:`ValueError` where it
vanishes (the source does not determine :math:`x_0` and :math:`\epsilon`), except between noise
and score, which are both multiples of :math:`\epsilon` and convert by :math:`y_t = (B_t/B_s)\,y_s`
wherever :math:`\sigma > 0`.

References:
    | Flow Matching for Generative Modeling (Lipman et al., 2023), https://arxiv.org/abs/2210.02747
    | Flow Straight and Fast: Rectified Flow (Liu et al., 2023), https://arxiv.org/abs/2209.03003
    | Building Normalizing Flows with Stochastic Interpolants (Albergo & Vanden-Eijnden, 2023),
      https://arxiv.org/abs/2209.15571
    | Score-Based Generative Modeling through SDEs (Song et al., 2021),
      https://arxiv.org/abs/2011.13456
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor, nn

from sdeflow._checks import as_time, expand_to
from sdeflow.conditioning import bind, replaced
from sdeflow.processes.base import SDE, PathCoefficients
from sdeflow.processes.linear import LinearSDE

__all__ = [
    "TARGETS",
    "AffinePath",
    "LinearPath",
    "CosinePath",
    "MarginalPath",
    "PathODE",
    "ConvertedModel",
    "target_coefficients",
    "conversion",
    "convert",
    "require_affine_path",
]

#: What a network may predict on an affine path.
TARGETS: tuple[str, ...] = ("velocity", "noise", "data", "score")
_EPSILON_MULTIPLES = frozenset({"noise", "score"})  # A = 0: multiples of the noise alone


def _check_target(name: str, target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"{name} must be one of {TARGETS}, got {target!r}")


def require_affine_path(process: object, where: str) -> None:
    """Raise a :class:`TypeError` naming ``process`` unless it is an sdeflow SDE declaring
    ``affine_path`` (an :class:`AffinePath`, VP, sub-VP, VE, any :class:`LinearSDE`)."""
    if not isinstance(process, SDE) or not process.affine_path:
        raise TypeError(
            f"{where} needs a process declaring an affine path x_t = alpha(t) x0 + sigma(t) eps "
            f"(affine_path = True: LinearPath, CosinePath, VPSDE, SubVPSDE, VESDE, ...), got "
            f"{type(process).__name__}"
        )


def target_coefficients(coefs: PathCoefficients, target: str) -> tuple[Tensor, Tensor]:
    r""":math:`(A, B)` with :math:`y = A\,x_0 + B\,\epsilon` for ``target`` (see the module table),
    each shaped like the path's coefficients.

    Example:
        >>> import torch
        >>> coefs = LinearPath().path_coefficients(torch.tensor([0.25]))
        >>> target_coefficients(coefs, "velocity")  # x_t = (1 - t) x0 + t eps: -x0 + eps
        (tensor([-1.]), tensor([1.]))
    """
    _check_target("target", target)
    one, zero = torch.ones_like(coefs.alpha), torch.zeros_like(coefs.alpha)
    if target == "data":
        return one, zero
    if target == "noise":
        return zero, one
    if target == "velocity":
        return coefs.d_alpha, coefs.d_sigma
    return zero, -1.0 / coefs.sigma


def conversion(coefs: PathCoefficients, source: str, target: str) -> tuple[Tensor, Tensor]:
    r"""The exact conversion :math:`y_t = c_x\,x_t + c_y\,y_s` from a ``source`` target to a
    ``target`` on an affine path with coefficients ``coefs`` (see the module docstring):
    :math:`(c_x, c_y)`, each shaped like the coefficients.

    Raises a :class:`ValueError` where the source does not determine the target (a zero
    determinant, e.g. a noise prediction at :math:`\alpha = 0` says nothing about the data).

    Example:
        >>> import torch
        >>> from sdeflow.processes import VPSDE
        >>> coefs = VPSDE().path_coefficients(torch.tensor([0.5]))
        >>> c_x, c_y = conversion(coefs, "noise", "score")  # score = -noise / sigma
        >>> float(c_x), bool(torch.isclose(c_y, -1 / coefs.sigma))
        (0.0, True)
    """
    _check_target("source", source)
    _check_target("target", target)
    zero = torch.zeros_like(coefs.alpha)
    if source == target:
        return zero, torch.ones_like(zero)
    a_s, b_s = target_coefficients(coefs, source)
    a_t, b_t = target_coefficients(coefs, target)
    if source in _EPSILON_MULTIPLES and target in _EPSILON_MULTIPLES:
        # both multiples of eps: exact wherever sigma > 0, also where alpha = 0 (the general
        # formula's determinant alpha B_s would vanish there)
        c_x, c_y = zero, b_t / b_s
    else:
        det = coefs.alpha * b_s - coefs.sigma * a_s
        c_x, c_y = (a_t * b_s - a_s * b_t) / det, (coefs.alpha * b_t - coefs.sigma * a_t) / det
    if not bool(torch.isfinite(c_x).all() and torch.isfinite(c_y).all()):
        raise ValueError(
            f"cannot convert a {source!r} prediction to {target!r} where the path has "
            f"alpha={coefs.alpha.tolist()}, sigma={coefs.sigma.tolist()}, "
            f"d_alpha={coefs.d_alpha.tolist()}, d_sigma={coefs.d_sigma.tolist()}: there the "
            f"{source} does not determine x0 and the noise (alpha = 0 or sigma = 0 at an end of "
            f"the path); use times strictly inside the path's range"
        )
    return c_x, c_y


def convert(process: SDE, value: Tensor, x: Tensor, t: Tensor | float, source: str,
            target: str) -> Tensor:
    r"""``value``, a ``source`` prediction at :math:`(x_t, t)`, as a ``target`` prediction, on the
    affine path of ``process`` (any process declaring ``affine_path``).

    Example:
        >>> import torch
        >>> path, x, t = LinearPath(), torch.tensor([[0.5, 1.0]]), torch.tensor([0.5])
        >>> x0 = convert(path, torch.tensor([[1.0, 2.0]]), x, t, "velocity", "data")
        >>> x0  # x0 = x_t - t v on the linear path
        tensor([[0., 0.]])
    """
    require_affine_path(process, "convert")
    if not isinstance(value, Tensor) or value.shape != x.shape:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"value must be a tensor shaped like x {tuple(x.shape)}, got {got}")
    t = as_time(t, x)
    c_x, c_y = conversion(process.path_coefficients(t), source, target)
    return expand_to(c_x, x) * x + expand_to(c_y, x) * value


class AffinePath(LinearSDE):
    r"""Base class of affine paths :math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,\epsilon` on
    :math:`[0, T]`: subclasses implement :meth:`alpha`, :meth:`sigma`, :meth:`d_alpha` and
    :meth:`d_sigma` (each elementwise on a tensor of times), and get the SDE form
    :math:`a = \alpha'/\alpha`, :math:`g^2 = 2\sigma(\alpha\sigma' - \alpha'\sigma)/\alpha` (see the
    module docstring), the marginals, the linear part and the prior :math:`\mathcal{N}(0,
    \sigma(T)^2 I)` (exact where :math:`\alpha(T) = 0`).

    Example:
        >>> import torch
        >>> class Quadratic(AffinePath):  # x_t = (1 - t^2) x0 + t eps
        ...     def alpha(self, t): return 1 - t**2
        ...     def sigma(self, t): return t
        ...     def d_alpha(self, t): return -2 * t
        ...     def d_sigma(self, t): return torch.ones_like(t)
        >>> path, t = Quadratic(), torch.tensor([0.5])
        >>> path.drift_coef(t), path.g(t) ** 2  # a = -2t/(1-t^2); g^2 = 2t (1 + t^2)/(1 - t^2)
        (tensor([-1.3333]), tensor([1.6667]))
    """

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        r""":math:`\alpha(t)`, the data's coefficient."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        r""":math:`\sigma(t)`, the noise's coefficient."""

    @abstractmethod
    def d_alpha(self, t: Tensor) -> Tensor:
        r""":math:`\alpha'(t)`."""

    @abstractmethod
    def d_sigma(self, t: Tensor) -> Tensor:
        r""":math:`\sigma'(t)`."""

    def path_coefficients(self, t: Tensor) -> PathCoefficients:
        return PathCoefficients(self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t))

    def marginal_coefs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.alpha(t), self.sigma(t)

    def drift_coef(self, t: Tensor) -> Tensor:
        r""":math:`a(t) = \alpha'(t)/\alpha(t)`; a :class:`ValueError` where
        :math:`\alpha \le 0`."""
        alpha = self.alpha(t)
        if not bool((alpha > 0).all()):
            raise ValueError(
                f"{type(self).__name__}: the SDE form dx = (alpha'/alpha) x dt + g dw of an affine "
                f"path needs alpha(t) > 0, got alpha={alpha.tolist()} at t={t.tolist()}; use times "
                f"t < {self.T} (a grid with t1 < {self.T}), or the velocity form PathODE(path, "
                f"model), which is regular where alpha = 0"
            )
        return self.d_alpha(t) / alpha

    def g(self, t: Tensor) -> Tensor:
        r""":math:`g(t) = \sqrt{2\sigma(\alpha\sigma' - \alpha'\sigma)/\alpha}`; a
        :class:`ValueError` where it is undefined or imaginary."""
        a = self.drift_coef(t)  # checks alpha > 0
        alpha, sigma, _, d_sigma = self.path_coefficients(t)
        g2 = 2 * sigma * (d_sigma - a * sigma)
        if not bool(torch.isfinite(g2).all()) or bool((g2 < 0).any()):
            raise ValueError(
                f"{type(self).__name__}: g(t)^2 = 2 sigma (alpha sigma' - alpha' sigma) / alpha "
                f"must be finite and >= 0 (sigma/alpha nondecreasing), got {g2.tolist()} at "
                f"t={t.tolist()} (sigma={sigma.tolist()}, d_sigma={d_sigma.tolist()})"
            )
        return g2.sqrt()

    def prior_std(self) -> float:
        r""":math:`\sigma(T)`."""
        return float(self.sigma(torch.tensor(float(self.T), dtype=torch.float64)))


class LinearPath(AffinePath):
    r"""The linear (conditional OT, rectified-flow) path :math:`x_t = (1 - t)\,x_0 + t\,\epsilon`
    on :math:`[0, 1]`: velocity :math:`\epsilon - x_0`, constant along each pair.

    As an SDE: :math:`a = -1/(1 - t)`, :math:`g^2 = 2t/(1 - t)` (singular at :math:`t = 1`).

    References:
        | Flow Matching for Generative Modeling (Lipman et al., 2023),
          https://arxiv.org/abs/2210.02747
        | Flow Straight and Fast (Liu et al., 2023), https://arxiv.org/abs/2209.03003

    Example:
        >>> import torch
        >>> path = LinearPath()
        >>> path.marginal(torch.ones(1, 2), torch.tensor(0.25))
        (tensor([[0.7500, 0.7500]]), tensor(0.2500))
        >>> path.prior_std()
        1.0
    """

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)


class CosinePath(AffinePath):
    r"""The cosine path :math:`x_t = \cos(\tfrac{\pi}{2}t)\,x_0 + \sin(\tfrac{\pi}{2}t)\,\epsilon`
    on :math:`[0, 1]` (variance preserving: :math:`\alpha^2 + \sigma^2 = 1`).

    As an SDE: :math:`a = -\tfrac{\pi}{2}\tan(\tfrac{\pi}{2}t)`,
    :math:`g^2 = \pi\tan(\tfrac{\pi}{2}t)`.

    References:
        Building Normalizing Flows with Stochastic Interpolants (Albergo & Vanden-Eijnden, 2023),
        https://arxiv.org/abs/2209.15571

    Example:
        >>> import torch
        >>> alpha, sigma, _, _ = CosinePath().path_coefficients(torch.tensor([0.3]))
        >>> torch.allclose(alpha**2 + sigma**2, torch.ones(1))
        True
    """

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)


class MarginalPath(AffinePath):
    r"""The affine path of a process's marginals, read from its declared
    :meth:`~sdeflow.processes.SDE.path_coefficients` (e.g. a
    :class:`~sdeflow.processes.LinearSDE`, which derives :math:`\alpha' = a\,m`,
    :math:`\sigma' = a\sigma + g^2/(2\sigma)`), with its SDE form derived back from the path: for a
    linear SDE, the same drift, diffusion and probability-flow ODE as the process itself.

    Arguments:
        process: A process declaring ``affine_path``, with a horizon ``T`` (default 1).

    Example:
        >>> import torch
        >>> from sdeflow.processes import VPSDE
        >>> t = torch.tensor([0.5], dtype=torch.float64)
        >>> torch.allclose(MarginalPath(VPSDE()).g(t), VPSDE().g(t))
        True
    """

    def __init__(self, process: SDE) -> None:
        super().__init__()
        require_affine_path(process, "MarginalPath")
        self.process = process
        self.T = float(getattr(process, "T", 1.0))

    def path_coefficients(self, t: Tensor) -> PathCoefficients:
        return self.process.path_coefficients(t)

    def alpha(self, t: Tensor) -> Tensor:
        return self.path_coefficients(t).alpha

    def sigma(self, t: Tensor) -> Tensor:
        return self.path_coefficients(t).sigma

    def d_alpha(self, t: Tensor) -> Tensor:
        return self.path_coefficients(t).d_alpha

    def d_sigma(self, t: Tensor) -> Tensor:
        return self.path_coefficients(t).d_sigma


class ConvertedModel(nn.Module):
    r"""A network that predicts ``source`` on an affine path, read as a ``target`` prediction:
    :math:`(x, t) \mapsto c_x\,x + c_y\,\mathrm{model}(x, t)` (:func:`conversion`).

    With ``target="score"`` it is the score of :class:`~sdeflow.processes.ReverseSDE` and
    :func:`~sdeflow.processes.probability_flow` for a network trained on any target.

    Arguments:
        process: A process declaring ``affine_path``.
        model: ``model(x, t)``, a callable or module returning a tensor shaped like ``x``.
        source: What ``model`` predicts (one of :data:`TARGETS`).
        target: What this module returns (one of :data:`TARGETS`).

    Example:
        >>> import torch
        >>> path = LinearPath()
        >>> noise_from_score = ConvertedModel(path, lambda x, t: -x, "score", "noise")
        >>> noise_from_score(torch.ones(1, 2), torch.tensor([0.5]))  # noise = -sigma * score
        tensor([[0.5000, 0.5000]])
    """

    def __init__(self, process: SDE, model: Callable[[Tensor, Tensor], Tensor], source: str,
                 target: str) -> None:
        super().__init__()
        require_affine_path(process, "ConvertedModel")
        if not callable(model):
            raise TypeError(f"model must be callable model(x, t), got {type(model).__name__}")
        _check_target("source", source)
        _check_target("target", target)
        self.process, self.model, self.source, self.target = process, model, source, target

    def conditioned(self, condition: Tensor, guidance: float = 1.0) -> ConvertedModel:
        """A copy with ``model`` bound to ``condition`` (the conversion is affine in the model's
        output, so guiding the model guides the converted prediction), or ``self``."""
        model = bind(self.model, condition, guidance)
        return self if model is self.model else replaced(self, model=model)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        value = self.model(x, t)
        if self.source == self.target:
            return value
        return convert(self.process, value, x, t, self.source, self.target)

    def extra_repr(self) -> str:
        return f"source={self.source!r}, target={self.target!r}"


class PathODE(SDE):
    r"""The probability-flow ODE of an affine path in its velocity form,
    :math:`dx/dt = v(x, t)`, with :math:`v` a model's prediction of any target converted to the
    velocity. Zero diffusion: :func:`~sdeflow.likelihood.ode_log_likelihood` and
    :func:`~sdeflow.sampling.sample` take it as they take any ODE.

    Where the SDE form exists it equals :func:`~sdeflow.processes.probability_flow` of the path,
    :math:`a\,x - \tfrac12 g^2 s = v` with :math:`s` the converted score; unlike it, it stays
    regular where :math:`\alpha = 0` (a velocity model on the linear path up to :math:`t = 1`,
    with the exact prior :math:`\mathcal{N}(0, \sigma(1)^2 I)` there).

    Arguments:
        path: A process declaring ``affine_path``.
        model: ``model(x, t)`` returning a tensor shaped like ``x``.
        target: What ``model`` predicts (default ``"velocity"``).

    Example:
        >>> import torch
        >>> from sdeflow import StandardNormal, TimeGrid, ode_log_likelihood
        >>> path = LinearPath()  # data N(0, I): optimal velocity v = -x (1-2t)/((1-t)^2 + t^2)
        >>> v = lambda x, t: -x * ((1 - 2 * t) / ((1 - t) ** 2 + t**2))[:, None]
        >>> x0 = torch.zeros(1, 2, dtype=torch.float64)
        >>> grid = TimeGrid.uniform(4, 0.0, 1.0, dtype=torch.float64)
        >>> res = ode_log_likelihood(PathODE(path, v), StandardNormal((2,), dtype=torch.float64),
        ...                          grid, x0, rtol=1e-9, atol=1e-9)
        >>> round(float(res.log_prob), 6) == round(-math.log(2 * math.pi), 6)  # N(0, I) at 0
        True
    """

    additive_noise = True

    def __init__(self, path: SDE, model: Callable[[Tensor, Tensor], Tensor],
                 target: str = "velocity") -> None:
        super().__init__()
        self.velocity = ConvertedModel(path, model, target, "velocity")

    def conditioned(self, condition: Tensor, guidance: float = 1.0) -> PathODE:
        """A copy with the model bound to ``condition`` (:meth:`SDE.conditioned
        <sdeflow.processes.SDE.conditioned>`), or ``self``."""
        velocity = self.velocity.conditioned(condition, guidance)
        return self if velocity is self.velocity else replaced(self, velocity=velocity)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        t = as_time(t, x)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        v = self.velocity(x, t)
        if not isinstance(v, Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"model(x, t) must return a tensor shaped like x {tuple(x.shape)}, "
                             f"got {got}")
        return v

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x[:1])

    def diffusion_scale(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)
