"""Objectives: DiffFlow's trajectory KL (negative ELBO), denoising score matching, flow NLL."""

from sdeflow.objectives.diffflow import DiffFlowObjective, DiffFlowTerms
from sdeflow.objectives.flow import FlowNLL, FlowTerms
from sdeflow.objectives.score_matching import DenoisingScoreMatching

__all__ = ["DiffFlowObjective", "DiffFlowTerms", "FlowNLL", "FlowTerms", "DenoisingScoreMatching"]
