r"""The ``sdeflow`` command (also ``python -m sdeflow``).

``sdeflow toy --dataset checkerboard`` trains DiffFlow on a 2D data set with the paper's
configuration (N = 30 steps on a power-0.9 grid over t in [1e-3, 0.05], g = 0.2, Fourier-feature
MLPs of width 128 and 3 hidden layers for the drift and the score, trained on the fixed grid,
Adam 1e-2 with StepLR 0.95 every 2 of 30 "epochs", gradient clipping 1.0, EMA 0.999), scaled
down in steps and batch size so that it runs in a few minutes on two CPU cores, then writes to
``--out``:

- ``samples.png``: samples of the EMA model beside held-out data (data coordinates);
- ``density.png``: the model density :math:`p(x)` from the exact (ODE) likelihood;
- ``metrics.json``: test NLL by the ODE and by the ELBO, in nats, in standardized and in data
  coordinates, training time and the configuration;
- ``metrics.jsonl``, ``loss.png``: the training curve; ``checkpoint.pt``: the run's state
  (``--resume`` continues from it).

``--model score`` (VP SDE + denoising score matching) and ``--model flow`` (g = 0, exact NLL)
train the other two families from the same parts.

``sdeflow evaluate RUN_DIR`` evaluates a run of ``examples/diffflow_cifar.py`` (see its
``--help`` and :func:`sdeflow.evaluation.evaluate_run`): FID against the number of sampling
steps, bits/dim with repeated dequantization, under ``torchrun`` too.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["main", "build_parser", "run_toy", "run_evaluate", "build_toy_model", "MODELS",
           "GRADIENTS", "PAPER_2D_CONFIG"]

MODELS: tuple[str, ...] = ("diffflow", "score", "flow")

#: The official 2D configuration (DESIGN §4), for reference in metrics.json.
PAPER_2D_CONFIG: dict[str, Any] = {
    "grid": "N=30, power 0.9, t in [1e-3, 0.05]", "g": 0.2,
    "nets": "FourierMLP width 128, 3 layers (drift and score)", "optimizer": "Adam 1e-2",
    "lr_schedule": "StepLR gamma 0.95, step_size 2 epochs, 30 epochs", "batch_size": 5000,
    "steps": 3000, "n_train": 500_000, "grad_clip": 1.0, "ema": 0.999,
}

# defaults scaled to a few minutes on 2 CPU cores (see the README); the paper's are above
DEFAULTS: dict[str, Any] = {"n_train": 100_000, "n_test": 2000, "n_samples": 20_000}
#: Per-model defaults: about the same minutes of CPU each (a score-matching step evaluates the
#: network once, a DiffFlow step 2N + 1 times, a flow step N Jacobians).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "diffflow": {"steps": 500, "batch_size": 1000, "lr": 1e-2, "n_grid": 80},
    "score": {"steps": 15000, "batch_size": 1000, "lr": 5e-3, "n_grid": 48},
    "flow": {"steps": 500, "batch_size": 500, "lr": 1e-2, "n_grid": 80},
}
GRID = {"n_steps": 30, "t0": 1e-3, "t1": 0.05, "exponent": 0.9}
#: LR decays every this many of the 30 scaled epochs (the official StepLR's step_size is 2).
LR_STEP_EPOCHS = 2
#: Train on the jittered grid (False: the fixed grid, as the official 2D code). Measured on the
#: checkerboard (seed 0, 500 steps): fixed grid + decay every 2 epochs 1.898 / 1.970 nats (ODE /
#: ELBO), jittered + every epoch 1.896 / 1.973, jittered + every 2 epochs 1.907 / 1.981: the
#: official recipe is level with the earlier default, so it is the default.
JITTER = False
DIFFUSION = 0.2
#: DiffFlow's gradient strategies by ``--gradient`` name (:mod:`sdeflow.gradients`).
GRADIENTS: tuple[str, ...] = ("backprop", "adjoint", "sharded", "sharded-adjoint")


def _datasets() -> tuple[str, ...]:
    from sdeflow.data import TOY_DATASETS

    return TOY_DATASETS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sdeflow`` command."""
    parser = argparse.ArgumentParser(
        prog="sdeflow", description="Composable SDE parts: DiffFlow, score-based diffusion, flows."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    toy = commands.add_parser(
        "toy", help="train on a 2D data set and write samples, density, metrics, checkpoint",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    toy.add_argument("--dataset", default="checkerboard", choices=_datasets(), metavar="NAME",
                     help="one of: " + ", ".join(_datasets()) + " (default: %(default)s)")
    toy.add_argument("--model", default="diffflow", choices=MODELS,
                     help="model family (default: %(default)s)")
    toy.add_argument("--steps", type=_positive_int, default=None,
                     help="optimizer steps (default: " + _per_model("steps") + "; paper: 3000)")
    toy.add_argument("--batch-size", type=_positive_int, default=None,
                     help="batch size (default: " + _per_model("batch_size") + "; paper: 5000)")
    toy.add_argument("--lr", type=_positive_float, default=None,
                     help="learning rate (default: " + _per_model("lr") + "; paper: 1e-2)")
    toy.add_argument("--gradient", default="backprop", choices=GRADIENTS,
                     help="DiffFlow's gradient strategy (default: %(default)s). adjoint: the "
                          "paper's stochastic adjoint, memory flat in N; sharded(-adjoint): "
                          "the same on batch slices in parallel CPU threads, faster at the "
                          "paper's batch of 5000 (docs/benchmarks.md)")
    toy.add_argument("--lr-step-epochs", type=_positive_int, default=LR_STEP_EPOCHS,
                     help="decay the learning rate by 0.95 every this many of the run's 30 "
                          "'epochs' (default: %(default)s; the official StepLR: 2)")
    toy.add_argument("--jitter", action=argparse.BooleanOptionalAction, default=JITTER,
                     help="train DiffFlow and the flow on the jittered grid (default: "
                          "%(default)s, as the official 2D code)")
    toy.add_argument("--width", type=_positive_int, default=128, help="MLP width (128)")
    toy.add_argument("--depth", type=_positive_int, default=3, help="MLP hidden layers (3)")
    toy.add_argument("--n-train", type=_positive_int, default=DEFAULTS["n_train"],
                     help="training set size (default: %(default)s; paper: 500000)")
    toy.add_argument("--n-test", type=_positive_int, default=DEFAULTS["n_test"],
                     help="held-out points for the test NLL (default: %(default)s)")
    toy.add_argument("--n-samples", type=_positive_int, default=DEFAULTS["n_samples"],
                     help="samples drawn for samples.png (default: %(default)s)")
    toy.add_argument("--n-grid", type=_positive_int, default=None,
                     help="density.png resolution per axis (default: " + _per_model("n_grid")
                          + "; the score model's ODE is costly off the data)")
    toy.add_argument("--out", type=Path, default=None,
                     help="output folder (default: runs/toy-DATASET-MODEL)")
    toy.add_argument("--resume", action="store_true",
                     help="continue from OUT/checkpoint.pt (up to --steps)")
    toy.add_argument("--overwrite", action="store_true",
                     help="start afresh even if OUT holds a checkpoint")
    toy.add_argument("--seed", type=int, default=0, help="seed of data, model and training")
    toy.add_argument("--device", type=_device, default=None,
                     help="cpu, cuda or cuda:N (default: cuda when available)")
    toy.add_argument("--threads", type=_positive_int, default=None,
                     help="torch CPU threads (default: torch's choice; 1 is fastest on a busy "
                          "machine)")
    toy.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                     help="autocast of the training loss (default: fp32; fp16 adds a gradient "
                          "scaler)")
    toy.add_argument("--mixed-precision", action="store_true",
                     help="deprecated: --precision bf16 on CUDA (ignored on the CPU)")
    toy.add_argument("--checkpoint-every", type=_positive_int, default=100,
                     help="steps between checkpoints (default: %(default)s)")
    toy.add_argument("--plot-every", type=_positive_int, default=None,
                     help="steps between sample plots in OUT/samples/ (default: none)")
    toy.add_argument("--log-every", type=_positive_int, default=10,
                     help="steps between metrics.jsonl records (default: %(default)s)")
    toy.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_evaluate(commands)
    return parser


_EVALUATE_HELP = """Evaluate a checkpoint of a run of examples/diffflow_cifar.py with its
EMA weights and write RUN_DIR/eval/<step>/: eval.json; FID of --num-samples samples at each
--steps N and --lam (1: the reverse SDE, 0: the probability-flow ODE, Euler steps on the run's
grid) against the statistics of the training images (computed once, cached in RUN_DIR/eval/;
--ref-stats for published ones); fid_vs_steps.md and .png, the FID-against-N table and plot;
samples.png; bits/dim of the test set by the ELBO and by the ODE (Hutchinson) with
--dequant-repeats dequantizations (mean and standard error). Samples are saved in chunks: an
interrupted evaluation resumes where it stopped. Under torchrun each process draws its share:

    torchrun --nproc_per_node 8 -m sdeflow evaluate runs/cifar-b --num-samples 50000
"""


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="FID against N and bits/dim of a training run's checkpoint",
        description=_EVALUATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                          help="the run folder (config.json, checkpoint.pt, checkpoints/)")
    evaluate.add_argument("--checkpoint", default=None, metavar="PATH|STEP",
                          help="a checkpoint file or a kept step (default: the last)")
    evaluate.add_argument("--num-samples", type=_positive_int, default=50_000, metavar="K",
                          help="samples per FID (default: %(default)s)")
    evaluate.add_argument("--steps", type=_int_list, default=(5, 10, 20, 50, 100),
                          metavar="N,N,...", help="sampling steps (default: 5,10,20,50,100)")
    evaluate.add_argument("--lam", type=_float_list, default=(1.0, 0.0), metavar="L,L,...",
                          help="noise scales: 1 the SDE, 0 the ODE (default: 1,0)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=500,
                          help="samples per chunk (default: %(default)s)")
    evaluate.add_argument("--feature-batch-size", type=_positive_int, default=200,
                          help="images per Inception call (default: %(default)s)")
    evaluate.add_argument("--ref-stats", type=Path, default=None, metavar="PATH.npz",
                          help="reference statistics (mu, sigma), e.g. published CIFAR-10 ones")
    evaluate.add_argument("--ref-split", choices=("train", "test"), default="train",
                          help="the split whose statistics FID compares with (default: train)")
    evaluate.add_argument("--no-fid", action="store_true", help="skip FID")
    evaluate.add_argument("--no-bpd", action="store_true", help="skip bits/dim")
    evaluate.add_argument("--bpd-images", type=_positive_int, default=None,
                          help="evaluate the first this many test images (default: all)")
    evaluate.add_argument("--bpd-batch-size", type=_positive_int, default=100)
    evaluate.add_argument("--dequant-repeats", type=_positive_int, default=1, metavar="R",
                          help="dequantizations of each test image (default: %(default)s)")
    evaluate.add_argument("--probes", type=_positive_int, default=1,
                          help="Hutchinson probes per image (default: %(default)s)")
    evaluate.add_argument("--ode-tol", type=_positive_float, default=1e-5,
                          help="dopri5 rtol = atol (default: %(default)s)")
    evaluate.add_argument("--data-dir", type=Path, default=None,
                          help="the data folder (default: the run's)")
    evaluate.add_argument("--out", type=Path, default=None,
                          help="output folder (default: RUN_DIR/eval/<step>)")
    evaluate.add_argument("--device", type=_device, default=None,
                          help="cpu, cuda or cuda:N (default: cuda when available)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--threads", type=_positive_int, default=None,
                          help="torch CPU threads")
    evaluate.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                          help="eval/ scalars in RUN_DIR/tensorboard (default: when installed)")
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}"
                                         ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be integers >= 1, got {text!r}")
    return values


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {text!r}"
                                         ) from None
    if not values or any(not (math.isfinite(v) and v >= 0) for v in values):
        raise argparse.ArgumentTypeError(f"must be finite numbers >= 0, got {text!r}")
    return values


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """``sdeflow evaluate``: :func:`sdeflow.evaluation.evaluate_run` with the parsed flags."""
    from sdeflow.evaluation import evaluate_run

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return evaluate_run(
        args.run_dir, checkpoint=args.checkpoint, num_samples=args.num_samples,
        steps=args.steps, lams=args.lam, batch_size=args.batch_size,
        feature_batch_size=args.feature_batch_size, fid=not args.no_fid,
        ref_stats=args.ref_stats, ref_split=args.ref_split, bpd=not args.no_bpd,
        bpd_images=args.bpd_images, bpd_batch_size=args.bpd_batch_size,
        dequant_repeats=args.dequant_repeats, probes=args.probes, ode_tol=args.ode_tol,
        data_dir=args.data_dir, out_dir=args.out, device=args.device, seed=args.seed,
        progress=not args.no_progress, tensorboard=args.tensorboard)


def _per_model(key: str) -> str:
    return ", ".join(f"{m} {d[key]}" for m, d in MODEL_DEFAULTS.items())


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"must be a torch device such as cpu, cuda or cuda:1, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    return text


def _precision(args: argparse.Namespace) -> str:
    """``--precision``, or what the deprecated ``--mixed-precision`` always meant."""
    if args.precision is not None:
        return args.precision
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    return "bf16" if args.mixed_precision and cuda else "fp32"


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global RNG and python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the legacy global RNG user code may rely on
    random.seed(seed)


def build_toy_model(name: str, *, width: int = 128, depth: int = 3,
                    gradient: str = "backprop", jitter: bool = JITTER) -> torch.nn.Module:
    """One of :data:`MODELS` in the paper's 2D configuration, on 2D states; ``gradient`` (one of
    :data:`GRADIENTS`) is DiffFlow's gradient strategy; ``jitter``: DiffFlow and the flow train
    on the jittered grid (``False``: the fixed grid, as the official 2D code)."""
    from sdeflow import VPSDE, StandardNormal, TimeGrid
    from sdeflow.gradients import Backprop, Sharded, StochasticAdjoint
    from sdeflow.nets import FourierMLP
    from sdeflow.training import DiffFlowModel, FlowModel, ScoreModel

    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {name!r}")
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {', '.join(GRADIENTS)}; got {gradient!r}")
    if gradient != "backprop" and name != "diffflow":
        raise ValueError(f"gradient={gradient!r} applies to the diffflow model only, not {name}")
    grid = TimeGrid.power(GRID["n_steps"], GRID["t0"], GRID["t1"], GRID["exponent"])
    if name == "diffflow":
        inner = StochasticAdjoint() if gradient.endswith("adjoint") else Backprop()
        strategy = Sharded(inner) if gradient.startswith("sharded") else inner
        return DiffFlowModel(FourierMLP(2, width, depth), FourierMLP(2, width, depth), DIFFUSION,
                             grid, StandardNormal((2,)), gradient=strategy, jitter=jitter)
    if name == "score":
        return ScoreModel(FourierMLP(2, width, depth), VPSDE(), (2,), eps=1e-3)
    return FlowModel(FourierMLP(2, width, depth), grid, StandardNormal((2,)), jitter=jitter)


def _mean_stderr(v: Tensor) -> tuple[float, float]:
    v = v.double()
    return float(v.mean()), float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else 0.0


def _chunked(fn, x: Tensor, size: int = 4096) -> Tensor:
    return torch.cat([fn(chunk).detach() for chunk in x.split(size)])


def _robust_log_prob(model: torch.nn.Module, x: Tensor, failed: list[int],
                     cache: dict[str, torch.nn.Module], min_chunk: int = 64) -> Tensor:
    """``model.log_likelihood(x)``, retried in float64 where the float32 solve gives up.

    Far from the data a learned probability-flow ODE can blow up (a score network extrapolates
    linearly and the VP drift multiplies it by beta up to 20): the log-density there is
    astronomically negative and dopri5 reports a step-size underflow in float32. In float64 the
    solve completes (the result rounds to ``-inf`` in float32: density 0). Chunks that fail in
    float64 too are bisected down to ``min_chunk`` points and returned as NaN (counted in
    ``failed``).
    """
    try:
        return model.log_likelihood(x).detach()
    except (AssertionError, RuntimeError):
        pass
    if "float64" not in cache:
        cache["float64"] = copy.deepcopy(model).double()
    try:
        return cache["float64"].log_likelihood(x.double()).detach().to(x.dtype)
    except (AssertionError, RuntimeError):
        if x.shape[0] <= min_chunk:
            failed.append(x.shape[0])
            return torch.full(x.shape[:1], math.nan, dtype=x.dtype, device=x.device)
    half = x.shape[0] // 2
    return torch.cat([_robust_log_prob(model, part, failed, cache, min_chunk)
                      for part in (x[:half], x[half:])])


def run_toy(args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate one model on one 2D data set; returns the metrics written."""
    from sdeflow import plotting
    from sdeflow.data import load_toy
    from sdeflow.training import TensorBatches, Trainer, load_checkpoint, retain_freed_memory

    out = args.out or Path("runs") / f"toy-{args.dataset}-{args.model}"
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    for key in ("steps", "batch_size", "lr", "n_grid"):
        if getattr(args, key) is None:
            setattr(args, key, MODEL_DEFAULTS[args.model][key])
    if args.gradient != "backprop" and args.model != "diffflow":
        raise SystemExit(f"sdeflow: error: --gradient {args.gradient} applies to --model diffflow "
                         f"only, not {args.model}")
    lr = args.lr
    # the official StepLR(gamma 0.95, step_size) steps once per epoch of the 30: scaled to
    # --steps, one decay every lr_step_epochs thirtieths of the run
    lr_step_size = max(1, args.lr_step_epochs * args.steps // 30)
    config = {"command": "toy", "dataset": args.dataset, "model": args.model,
              "steps": args.steps, "batch_size": args.batch_size, "lr": lr, "width": args.width,
              "depth": args.depth, "gradient": args.gradient, "n_train": args.n_train,
              "n_test": args.n_test,
              "seed": args.seed, "grad_clip": 1.0, "ema_decay": 0.999, "lr_gamma": 0.95,
              "lr_step_epochs": args.lr_step_epochs, "lr_step_size": lr_step_size,
              "jitter": args.jitter}
    if args.model == "score":
        config["process"] = {"sde": "VPSDE", "beta_min": 0.1, "beta_max": 20.0, "eps": 1e-3}
    else:
        config["process"] = {"grid": GRID, "diffusion": DIFFUSION if args.model == "diffflow"
                             else 0.0}
    if ckpt.exists():
        if args.resume:
            _check_same_run(load_checkpoint(ckpt)["config"], config, ckpt)
        elif not args.overwrite:
            raise SystemExit(f"sdeflow: error: {out} already holds a checkpoint; pass --resume "
                             "to continue it or --overwrite to start afresh")
        else:
            for stale in ("metrics.jsonl", "checkpoint.pt"):
                (out / stale).unlink(missing_ok=True)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    retain_freed_memory()  # no page faults re-acquiring each step's activations (CPU)
    seed_everything(args.seed)
    train, test, pre = load_toy(args.dataset, args.n_train, args.n_test, seed=args.seed)
    model = build_toy_model(args.model, width=args.width, depth=args.depth,
                            gradient=args.gradient, jitter=args.jitter)
    data = TensorBatches(train, args.batch_size, seed=args.seed + 1)
    raw_test = pre.inverse(test)
    trainer = Trainer(
        model, data, steps=args.steps, lr=lr, lr_gamma=0.95, lr_step_size=lr_step_size,
        grad_clip=1.0, ema_decay=0.999,
        precision=_precision(args), device=args.device, out_dir=out,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        plot_every=args.plot_every, progress=not args.no_progress, config=config,
        plot_fn=lambda m, path: plotting.plot_samples_2d(
            pre.inverse(m.sample(2000).cpu()), path, data=raw_test[:2000]),
    )
    trainer.fit(resume=args.resume)

    # -- evaluation with the EMA weights, on a forked RNG ---------------------------------------
    started = time.perf_counter()
    model = trainer.eval_model.eval()
    device = trainer.device
    test_d = test.to(device)
    log_det = float(pre.log_abs_det)  # log|dT/dx| of the preprocessing: nll_x = nll_y - log_det
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(args.seed + 2)
        failed: list[int] = []
        cache: dict[str, torch.nn.Module] = {}
        nll_ode = -_chunked(lambda x: _robust_log_prob(model, x, failed, cache), test_d)
        nll_elbo = _chunked(model.nelbo, test_d)
        sizes = [4096] * (args.n_samples // 4096) + [args.n_samples % 4096]
        samples = pre.inverse(torch.cat([model.sample(n).cpu() for n in sizes if n]))
    lim = 1.1 * float(raw_test.abs().max())
    raw_train = pre.inverse(train[: args.n_samples])  # as many data points as samples
    plotting.plot_samples_2d(samples, out / "samples.png", data=raw_train, lim=lim,
                             title=f"{args.model} on {args.dataset} ({trainer.step} steps)")

    def log_prob_raw(x: Tensor) -> Tensor:
        return _robust_log_prob(model, pre(x).to(device), failed, cache).cpu() + log_det

    plotting.plot_density_2d(log_prob_raw, out / "density.png", lim=lim, n_grid=args.n_grid,
                             batch_size=1024,
                             data=raw_train, title=f"{args.model} density (exact, ODE)")
    if trainer.metrics_path is not None and trainer.metrics_path.exists():
        plotting.plot_loss_curve(trainer.metrics_path, out / "loss.png")
    eval_time = time.perf_counter() - started

    ode_mean, ode_se = _mean_stderr(nll_ode.cpu())
    elbo_mean, elbo_se = _mean_stderr(nll_elbo.cpu())
    metrics = {
        "dataset": args.dataset, "model": args.model, "steps": trainer.step,
        "nll_ode_nats": ode_mean, "nll_ode_nats_stderr": ode_se,
        "nll_ode_nats_data": ode_mean - log_det,
        "nll_elbo_nats": elbo_mean, "nll_elbo_nats_stderr": elbo_se,
        "nll_elbo_nats_data": elbo_mean - log_det, "elbo_kind": model.nelbo_kind,
        "points_failed_ode": sum(failed), "log_abs_det_preprocessing": log_det,
        "n_test": int(test.shape[0]),
        "final_loss": trainer.last_loss, "skipped_steps": trainer.skipped,
        "train_time_s": round(trainer.train_time, 2), "eval_time_s": round(eval_time, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device), "torch_threads": torch.get_num_threads(),
        "config": config, "paper_config": PAPER_2D_CONFIG,
        "files": {"samples": "samples.png", "density": "density.png", "loss": "loss.png",
                  "checkpoint": "checkpoint.pt", "metrics_jsonl": "metrics.jsonl"},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _check_same_run(saved: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    keys = ("dataset", "model", "batch_size", "lr", "width", "depth", "n_train", "seed")
    differ = [f"{k}: checkpoint {saved.get(k)!r} vs now {config[k]!r}" for k in keys
              if saved.get(k) != config[k]]
    if differ:
        raise SystemExit(f"sdeflow: error: --resume with a different configuration than "
                         f"{path}: " + "; ".join(differ))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sdeflow`` console script."""
    from sdeflow.training import CheckpointError, NonFiniteError

    args = build_parser().parse_args(argv)
    if args.command == "toy":
        try:
            metrics = run_toy(args)
        except (CheckpointError, NonFiniteError) as err:
            print(f"sdeflow: error: {err}", file=sys.stderr)
            return 1
        out = args.out or Path("runs") / f"toy-{args.dataset}-{args.model}"
        print(f"{args.model} on {args.dataset}: test NLL {metrics['nll_ode_nats']:.3f} nats (ODE, "
              f"standardized), {metrics['nll_elbo_nats']:.3f} ({metrics['elbo_kind']}); "
              f"train {metrics['train_time_s']:.0f} s, eval {metrics['eval_time_s']:.0f} s; "
              f"wrote {out}/", file=sys.stderr)
    elif args.command == "evaluate":
        try:
            result = run_evaluate(args)
        except (CheckpointError, FileNotFoundError, ValueError, RuntimeError) as err:
            print(f"sdeflow evaluate: error: {err}", file=sys.stderr)
            return 1
        print(f"wrote {result['out_dir']}/eval.json", file=sys.stderr)
    return 0
