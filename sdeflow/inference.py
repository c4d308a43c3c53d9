r"""DiffFlow as variational inference in Pyro: the backward process is the model, the forward
process is the guide.

For data :math:`x_0`, the latent variables are the path :math:`x_{1:N}` on a grid. The *model*
is :math:`p_B`: :math:`x_N \sim p_{prior}`, then :math:`x_i \sim p_B(x_i \mid x_{i+1})` down to
:math:`x_0`, which is observed. The *guide* is :math:`p_F(x_{1:N} \mid x_0)`: each
:math:`x_{i+1}` is the scheme's step from :math:`x_i` driven by a noise
:math:`\delta^F_i \sim \mathcal{N}(0, I)`. Pyro's ``Trace_ELBO`` is then

.. math:: E_{p_F}\Big[\log p_F(x_{1:N} \mid x_0) - \log p_B(x_{0:N})\Big]
          = \mathcal{L}(x_0),

DiffFlow's negative ELBO (:class:`~sdeflow.objectives.DiffFlowObjective`): the same number,
value and gradients, under the same noises (summed over the batch where the objective's
``loss`` is the mean).

The guide samples each noise as an auxiliary site ``"delta_F_{i}"`` and records
:math:`x_{i+1}` as ``Delta(x_{i+1}, log_density=-sum(log std^F_i))``: the change of variables
from :math:`\delta^F_i` to :math:`x_{i+1}`, so the guide's density of the path is
:math:`\log \mathcal{N}(\delta^F_i) - \sum \log \mathrm{std}^F_i = \log p_F(x_{i+1} \mid x_i)`
(the pattern of Pyro's ``AutoContinuous`` guides). Conditioning the noise sites
(``poutine.condition(vi.guide, data=vi.noise_data(noise))``) replays given noises.

Train with :class:`~sdeflow.objectives.DiffFlowObjective` (one fused sweep, the gradient
strategies); this form is the same objective for users who compose it with other latent
variables in Pyro.

References:
    | Diffusion Normalizing Flow (Zhang & Chen, 2021), https://arxiv.org/abs/2110.07579
    | Pyro: Deep Universal Probabilistic Programming (Bingham et al., 2019),
      https://arxiv.org/abs/1810.09538
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from sdeflow._checks import check_modules, check_same_device_dtype, sum_state
from sdeflow._model_distribution import as_pyro
from sdeflow.discretizers import Discretizer, EulerMaruyama
from sdeflow.grids import TimeGrid
from sdeflow.priors import check_data, resolve_prior
from sdeflow.processes.base import SDE
from sdeflow.trajectories import check_positive_diffusion

__all__ = ["DiffFlowVI"]


class DiffFlowVI(nn.Module):
    r"""A Pyro model (:math:`p_B`, observing :math:`x_0`) and guide (:math:`p_F(\cdot \mid x_0)`)
    whose ``Trace_ELBO`` is DiffFlow's negative ELBO (see the module docstring).

    Arguments:
        reverse: The reverse process (a :class:`~sdeflow.processes.ReverseSDE`,
            :math:`\lambda > 0`), holding the forward process as ``reverse.forward_sde``.
        prior: :math:`p_{prior}(x_N)`: a distribution or a prior module.
        grid: The default :class:`~sdeflow.grids.TimeGrid` (a call may pass another).
        discretizer: A Gaussian step scheme (Euler–Maruyama by default).
        name: The name under which the networks' parameters enter Pyro's parameter store
            (``pyro.module(name, self)``, in the model and in the guide alike). Pyro's store
            keeps the first tensors registered under a name: call ``pyro.clear_param_store()``
            before training another model under the same name.
        plate: The name of the data plate.

    Sites, inside ``pyro.plate(plate, B)``, each with the state as event:
    ``"x_{N}"`` (the prior), ``"x_{i}"`` for :math:`i = N-1, \dots, 1` (latent) and ``"x_0"``
    (observed) in the model; ``"delta_F_{i}"`` (auxiliary noise) and ``"x_{i+1}"`` for
    :math:`i = 0, \dots, N-1` in the guide. Both take ``(x0, grid=None)``.

    Example:
        >>> import pyro, torch
        >>> from pyro import poutine
        >>> from sdeflow import DiffFlowObjective, ForwardSDE, ReverseSDE, StandardNormal, TimeGrid
        >>> drift, score = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        >>> rev = ReverseSDE(ForwardSDE(lambda x, t: drift(x), 0.5), lambda x, t: score(x))
        >>> grid, prior = TimeGrid.uniform(4, 1e-3, 0.5), StandardNormal((2,))
        >>> vi = DiffFlowVI(rev, prior, grid)
        >>> x0, noise = torch.randn(8, 2), torch.randn(4, 8, 2)
        >>> guide = poutine.condition(vi.guide, data=vi.noise_data(noise))
        >>> elbo = pyro.infer.Trace_ELBO().differentiable_loss(vi.model, guide, x0)
        >>> nelbo = DiffFlowObjective(rev, prior, grid)(x0, noise=noise).nelbo.sum()
        >>> bool(torch.isclose(elbo, nelbo, rtol=1e-4))
        True
    """

    def __init__(
        self,
        reverse: SDE,
        prior: Distribution | Callable[[], Distribution],
        grid: TimeGrid | None = None,
        *,
        discretizer: Discretizer | None = None,
        name: str = "diffflow",
        plate: str = "data",
    ) -> None:
        super().__init__()
        forward = getattr(reverse, "forward_sde", None)
        if not isinstance(reverse, SDE) or not isinstance(forward, SDE):
            raise TypeError(f"reverse must be a reverse process holding its forward process as "
                            f"reverse.forward_sde (a ReverseSDE), got {type(reverse).__name__}")
        discretizer = discretizer or EulerMaruyama()
        if not isinstance(discretizer, Discretizer) or not discretizer.gaussian:
            raise TypeError(f"discretizer must be an sdeflow Discretizer with a Gaussian "
                            f"transition, got {type(discretizer).__name__}")
        if grid is not None and not isinstance(grid, TimeGrid):
            raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
        self.reverse, self.prior, self.grid = reverse, prior, grid
        self.discretizer, self.name, self.plate = discretizer, str(name), str(plate)

    @staticmethod
    def path_site(i: int) -> str:
        """The name of :math:`x_i`'s site."""
        return f"x_{i}"

    @staticmethod
    def noise_site(i: int) -> str:
        r"""The name of :math:`\delta^F_i`'s site (the guide's noise of step :math:`i`)."""
        return f"delta_F_{i}"

    def noise_data(self, noise: Tensor) -> dict[str, Tensor]:
        r"""``{"delta_F_{i}": noise[i]}`` for ``poutine.condition`` of the guide, from noises
        :math:`\delta^F` of shape ``(N, B, *state)`` (:class:`~sdeflow.objectives
        .DiffFlowObjective`'s ``noise``)."""
        if not isinstance(noise, Tensor) or noise.dim() < 2:
            raise ValueError("noise must be a tensor of shape (N, batch, *state)")
        return {self.noise_site(i): delta for i, delta in enumerate(noise.unbind(0))}

    def _setup(self, x0: Tensor, grid: TimeGrid | None) -> tuple[TimeGrid, Distribution, int]:
        grid = self.grid if grid is None else grid
        if not isinstance(grid, TimeGrid):
            raise ValueError(f"grid must be a TimeGrid, given to DiffFlowVI or to the call, got "
                             f"{type(grid).__name__}")
        prior, state = check_data(x0, self.prior)
        check_same_device_dtype("grid.ts", grid.ts, "x0", x0)
        check_modules(x0, [self.reverse, self.prior])
        pyro.module(self.name, self)
        return grid, prior, len(state)

    def model(self, x0: Tensor, grid: TimeGrid | None = None) -> Tensor:
        r"""The backward process :math:`p_B(x_{0:N})` with :math:`x_0` observed; returns
        :math:`x_N`."""
        grid, prior, k = self._setup(x0, grid)
        check_positive_diffusion(self.reverse, grid.ts[1:], "reverse process")
        stepper = self.discretizer.stepper(self.reverse, grid, reverse=True)
        n = grid.n_steps
        with pyro.plate(self.plate, x0.shape[0]):
            x_final = x = pyro.sample(self.path_site(n), as_pyro(resolve_prior(prior)))
            for i in range(n - 1, -1, -1):
                mean, std = stepper.transition(i, x)
                step = dist.Normal(mean, std).to_event(k)
                x = pyro.sample(self.path_site(i), step, obs=x0 if i == 0 else None)
        return x_final

    def guide(self, x0: Tensor, grid: TimeGrid | None = None) -> Tensor:
        r"""The forward process :math:`p_F(x_{1:N} \mid x_0)`, reparameterized by the noise
        sites; returns :math:`x_N`."""
        grid, _, k = self._setup(x0, grid)
        check_positive_diffusion(self.reverse.forward_sde, grid.ts[:-1], "forward process")
        stepper = self.discretizer.stepper(self.reverse.forward_sde, grid)
        zeros = torch.zeros_like(x0)
        x = x0
        with pyro.plate(self.plate, x0.shape[0]):
            for i in range(grid.n_steps):
                delta = pyro.sample(self.noise_site(i), dist.Normal(zeros, 1.0).to_event(k),
                                    infer={"is_auxiliary": True})
                mean, std = stepper.transition(i, x)
                x_next = mean + std * delta
                # the change of variables delta -> x_{i+1}: log|d delta / d x_{i+1}|
                log_det = -sum_state(std.log(), x_next)
                x = pyro.sample(self.path_site(i + 1),
                                dist.Delta(x_next, log_density=log_det, event_dim=k))
        return x
