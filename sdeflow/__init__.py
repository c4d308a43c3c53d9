r"""sdeflow: composable SDE parts for diffusion normalizing flows, score-based diffusion and
normalizing flows in PyTorch.

The parts: processes (:mod:`sdeflow.processes`), time grids (:class:`TimeGrid`), diffusion
schedules (:mod:`sdeflow.schedules`), step schemes (:mod:`sdeflow.discretizers`), trajectory
distributions (:class:`ForwardTrajectory`, :class:`BackwardTrajectory`), objectives
(:mod:`sdeflow.objectives`) and gradient strategies (:mod:`sdeflow.gradients`); a model as a
distribution over :math:`x_0` (:class:`ProbabilityFlowDistribution`,
:class:`SDESamplerDistribution`) and DiffFlow as Pyro variational inference (:class:`DiffFlowVI`).

This namespace holds the modelling parts only. The training stack (``Trainer``, the model
families ``DiffFlowModel``, ``ScoreModel``, ``FlowModel``, ``EMA``, batch sources, schedules of
the number of steps) lives in :mod:`sdeflow.training`; networks in :mod:`sdeflow.nets`, data in
:mod:`sdeflow.data`, the discretizer test kit in :mod:`sdeflow.testing`.
"""

from sdeflow.discretizers import (
    DISCRETIZERS,
    Discretizer,
    EulerMaruyama,
    ExponentialIntegrator,
    StochasticHeun,
    register_discretizer,
)
from sdeflow.distributions import ProbabilityFlowDistribution, SDESamplerDistribution
from sdeflow.gradients import (
    Backprop,
    Checkpointed,
    GradientStrategy,
    Sharded,
    StochasticAdjoint,
)
from sdeflow.grids import TimeGrid
from sdeflow.inference import DiffFlowVI
from sdeflow.likelihood import (
    LikelihoodResult,
    bits_per_dim,
    elbo_bits_per_dim,
    ode_log_likelihood,
)
from sdeflow.objectives import (
    DenoisingScoreMatching,
    DiffFlowObjective,
    DiffFlowTerms,
    FlowNLL,
    FlowTerms,
    ObjectiveTerms,
    ScoreMatchingTerms,
)
from sdeflow.priors import DiagonalNormal, StandardNormal
from sdeflow.processes import (
    SDE,
    VESDE,
    VPSDE,
    ForwardSDE,
    LinearPart,
    LinearSDE,
    ReverseSDE,
    SubVPSDE,
    probability_flow,
)
from sdeflow.sampling import sample
from sdeflow.schedules import ConstantSchedule, LinearSchedule, Schedule, as_schedule
from sdeflow.trajectories import BackwardTrajectory, ForwardTrajectory

__version__ = "0.1.0"

__all__ = [
    "DISCRETIZERS",
    "SDE",
    "VESDE",
    "VPSDE",
    "Backprop",
    "BackwardTrajectory",
    "Checkpointed",
    "ConstantSchedule",
    "DenoisingScoreMatching",
    "DiagonalNormal",
    "DiffFlowObjective",
    "DiffFlowTerms",
    "DiffFlowVI",
    "Discretizer",
    "EulerMaruyama",
    "ExponentialIntegrator",
    "FlowNLL",
    "FlowTerms",
    "ForwardSDE",
    "ForwardTrajectory",
    "GradientStrategy",
    "LikelihoodResult",
    "LinearPart",
    "LinearSDE",
    "ObjectiveTerms",
    "ProbabilityFlowDistribution",
    "ScoreMatchingTerms",
    "LinearSchedule",
    "ReverseSDE",
    "SDESamplerDistribution",
    "Schedule",
    "Sharded",
    "StandardNormal",
    "StochasticAdjoint",
    "StochasticHeun",
    "SubVPSDE",
    "TimeGrid",
    "as_schedule",
    "bits_per_dim",
    "elbo_bits_per_dim",
    "ode_log_likelihood",
    "probability_flow",
    "register_discretizer",
    "sample",
]
