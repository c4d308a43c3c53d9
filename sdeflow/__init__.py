r"""sdeflow: composable SDE parts for diffusion normalizing flows, score-based diffusion and
normalizing flows in PyTorch.

The parts: processes (:mod:`sdeflow.processes`), time grids (:class:`TimeGrid`), diffusion
schedules (:mod:`sdeflow.schedules`), step schemes (:mod:`sdeflow.discretizers`), trajectory
distributions (:class:`ForwardTrajectory`, :class:`BackwardTrajectory`), objectives
(:mod:`sdeflow.objectives`), couplings of data and noise (:mod:`sdeflow.couplings`) and gradient
strategies (:mod:`sdeflow.gradients`); a model as a distribution over :math:`x_0`
(:class:`ProbabilityFlowDistribution`, :class:`SDESamplerDistribution`) and DiffFlow as Pyro
variational inference (:class:`DiffFlowVI`). Parts are chosen by name through one
:class:`Registry` per kind (:data:`DISCRETIZERS`, :data:`GRADIENTS`, :data:`GRIDS`,
:data:`LINEAR_SDES`; :data:`sdeflow.nets.NETS`, :data:`sdeflow.training.STEPS_SCHEDULES`,
:data:`sdeflow.recipes.FAMILIES`), where a user registers a part of their own.

This namespace holds the modelling parts only. The training stack (``Trainer``, the model
families ``DiffFlowModel``, ``ScoreModel``, ``FlowModel``, ``EMA``, batch sources, schedules of
the number of steps) lives in :mod:`sdeflow.training`; networks in :mod:`sdeflow.nets`, data in
:mod:`sdeflow.data`, the discretizer test kit in :mod:`sdeflow.testing`.
"""

from sdeflow.couplings import Coupling, IndependentCoupling, MinibatchOTCoupling
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
    GRADIENTS,
    Backprop,
    Checkpointed,
    GradientStrategy,
    Sharded,
    StochasticAdjoint,
)
from sdeflow.grids import GRIDS, TimeGrid
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
    GridTime,
    LogitNormalTime,
    ObjectiveTerms,
    PathMatching,
    PathMatchingTerms,
    ScoreMatchingTerms,
    TimeSampler,
    UniformTime,
)
from sdeflow.priors import DiagonalNormal, StandardNormal
from sdeflow.processes import (
    LINEAR_SDES,
    SDE,
    TARGETS,
    VESDE,
    VPSDE,
    AffinePath,
    ConvertedModel,
    CosinePath,
    ForwardSDE,
    LinearPart,
    LinearPath,
    LinearSDE,
    MarginalPath,
    PathCoefficients,
    PathODE,
    ReverseSDE,
    SubVPSDE,
    convert,
    probability_flow,
)
from sdeflow.registry import Registry
from sdeflow.sampling import sample
from sdeflow.schedules import ConstantSchedule, LinearSchedule, Schedule, as_schedule
from sdeflow.trajectories import BackwardTrajectory, ForwardTrajectory

__version__ = "0.1.0"

__all__ = [
    "DISCRETIZERS",
    "GRADIENTS",
    "GRIDS",
    "LINEAR_SDES",
    "SDE",
    "TARGETS",
    "VESDE",
    "VPSDE",
    "AffinePath",
    "ConvertedModel",
    "CosinePath",
    "Coupling",
    "GridTime",
    "IndependentCoupling",
    "LinearPath",
    "LogitNormalTime",
    "MarginalPath",
    "MinibatchOTCoupling",
    "PathCoefficients",
    "PathMatching",
    "PathMatchingTerms",
    "PathODE",
    "TimeSampler",
    "UniformTime",
    "convert",
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
    "Registry",
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
