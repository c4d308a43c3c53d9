"""Objectives: DiffFlow's trajectory KL (negative ELBO), denoising score matching, flow NLL.

Each returns an :class:`ObjectiveTerms`: ``.loss`` to minimize and ``.per_sample`` values."""

from sdeflow.objectives.diffflow import DiffFlowObjective, DiffFlowTerms
from sdeflow.objectives.flow import FlowNLL, FlowTerms
from sdeflow.objectives.score_matching import DenoisingScoreMatching, ScoreMatchingTerms
from sdeflow.objectives.terms import ObjectiveTerms

__all__ = ["DiffFlowObjective", "DiffFlowTerms", "FlowNLL", "FlowTerms", "DenoisingScoreMatching",
           "ScoreMatchingTerms", "ObjectiveTerms"]
