"""Objectives: DiffFlow's trajectory KL (negative ELBO), denoising score matching, flow NLL, path
matching (velocity, noise, data or score regression on an affine path) and its time laws.

Each returns an :class:`ObjectiveTerms`: ``.loss`` to minimize and ``.per_sample`` values."""

from sdeflow.objectives.diffflow import DiffFlowObjective, DiffFlowTerms
from sdeflow.objectives.flow import FlowNLL, FlowTerms
from sdeflow.objectives.path_matching import WEIGHTINGS, PathMatching, PathMatchingTerms
from sdeflow.objectives.score_matching import DenoisingScoreMatching, ScoreMatchingTerms
from sdeflow.objectives.terms import ObjectiveTerms
from sdeflow.objectives.times import (
    TIME_LAWS,
    GridTime,
    LogitNormalTime,
    TimeSampler,
    UniformTime,
)

__all__ = ["DiffFlowObjective", "DiffFlowTerms", "FlowNLL", "FlowTerms", "DenoisingScoreMatching",
           "ScoreMatchingTerms", "ObjectiveTerms", "PathMatching", "PathMatchingTerms",
           "WEIGHTINGS", "TimeSampler", "UniformTime", "LogitNormalTime", "GridTime",
           "TIME_LAWS"]
