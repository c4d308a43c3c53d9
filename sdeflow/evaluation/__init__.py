r"""Evaluating a trained run: FID against the number of sampling steps, bits/dim with repeated
dequantization, resumable sample drawing, runnable under ``torchrun``.

``sdeflow evaluate RUN`` calls :func:`evaluate_run` for an image run (:mod:`sdeflow.runs` loads
the run's model and holds the run folder's layout). FID here is the run level
(:func:`reference_for_fid`, :func:`sample_fid`) over :mod:`sdeflow.metrics`, which holds the
Inception network, the statistics and the score.
"""

from sdeflow.evaluation.bpd import dequantized_bits_per_dim
from sdeflow.evaluation.evaluate import DEFAULT_LAMS, DEFAULT_STEPS, evaluate_run
from sdeflow.evaluation.report import PAPER_CIFAR10_FID, fid_table, plot_fid_vs_steps
from sdeflow.evaluation.samples import chunk_seed, chunk_sizes, draw_chunks
from sdeflow.evaluation.scoring import reference_for_fid, sample_fid

__all__ = [
    "DEFAULT_LAMS",
    "DEFAULT_STEPS",
    "PAPER_CIFAR10_FID",
    "chunk_seed",
    "chunk_sizes",
    "dequantized_bits_per_dim",
    "draw_chunks",
    "evaluate_run",
    "fid_table",
    "plot_fid_vs_steps",
    "reference_for_fid",
    "sample_fid",
]
