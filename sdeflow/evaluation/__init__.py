r"""Evaluating a trained run: FID against the number of sampling steps, bits/dim with repeated
dequantization, resumable sample drawing, runnable under ``torchrun``.

``sdeflow evaluate RUN_DIR`` calls :func:`evaluate_run`; :func:`load_run` rebuilds a run's model
from its ``config.json`` and a checkpoint's EMA weights. FID here is the run level
(:func:`reference_for_fid`, :func:`sample_fid`) over :mod:`sdeflow.metrics`, which holds the
Inception network, the statistics and the score.
"""

from sdeflow.evaluation.bpd import dequantized_bits_per_dim
from sdeflow.evaluation.evaluate import DEFAULT_LAMS, DEFAULT_STEPS, evaluate_run
from sdeflow.evaluation.report import PAPER_CIFAR10_FID, fid_table, plot_fid_vs_steps
from sdeflow.evaluation.runs import (
    CONFIG_NAME,
    LoadedRun,
    find_checkpoint,
    load_run,
    read_run_config,
    write_run_config,
)
from sdeflow.evaluation.samples import chunk_seed, chunk_sizes, draw_chunks
from sdeflow.evaluation.scoring import reference_for_fid, sample_fid

# The name examples/diffflow_cifar.py imports: the shared Inception network of a device.
from sdeflow.metrics import load_inception as inception_features

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_LAMS",
    "DEFAULT_STEPS",
    "LoadedRun",
    "PAPER_CIFAR10_FID",
    "chunk_seed",
    "chunk_sizes",
    "dequantized_bits_per_dim",
    "draw_chunks",
    "evaluate_run",
    "fid_table",
    "find_checkpoint",
    "inception_features",
    "load_run",
    "plot_fid_vs_steps",
    "read_run_config",
    "reference_for_fid",
    "sample_fid",
    "write_run_config",
]
