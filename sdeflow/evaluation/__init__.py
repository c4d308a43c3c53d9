r"""Evaluating a trained run: FID against the number of sampling steps, bits/dim with repeated
dequantization, resumable sample drawing, runnable under ``torchrun``.

``sdeflow evaluate RUN_DIR`` calls :func:`evaluate_run`; :func:`load_run` rebuilds a run's model
from its ``config.json`` and a checkpoint's EMA weights.
"""

from sdeflow.evaluation.bpd import dequantized_bits_per_dim
from sdeflow.evaluation.evaluate import DEFAULT_LAMS, DEFAULT_STEPS, evaluate_run
from sdeflow.evaluation.fid import inception_features, reference_for_fid, sample_fid
from sdeflow.evaluation.report import PAPER_CIFAR10_FID, fid_table, plot_fid_vs_steps
from sdeflow.evaluation.runs import (
    CONFIG_NAME,
    LoadedRun,
    find_checkpoint,
    load_run,
    read_run_config,
    write_run_config,
)
from sdeflow.evaluation.samples import (
    FeatureSums,
    chunk_seed,
    chunk_sizes,
    draw_chunks,
    image_statistics,
)

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_LAMS",
    "DEFAULT_STEPS",
    "FeatureSums",
    "LoadedRun",
    "PAPER_CIFAR10_FID",
    "chunk_seed",
    "chunk_sizes",
    "dequantized_bits_per_dim",
    "draw_chunks",
    "evaluate_run",
    "fid_table",
    "find_checkpoint",
    "image_statistics",
    "inception_features",
    "load_run",
    "plot_fid_vs_steps",
    "read_run_config",
    "reference_for_fid",
    "sample_fid",
    "write_run_config",
]
