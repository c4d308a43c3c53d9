r"""The ``sdeflow`` command (also ``python -m sdeflow``): one way in for every recipe.

::

    sdeflow train --preset NAME [--set section.key=value ...] [--out RUN]
    sdeflow toy [--dataset checkerboard] [--model diffflow|score|flow]    # the 2D preset, short
    sdeflow sample RUN [--steps N] [--lam L] [--n K] [--out FILE.png|.npz]
    sdeflow evaluate RUN

``train`` trains a preset (:data:`sdeflow.recipes.RECIPES`: ``toy-2d`` and ``toy-2d-fast`` on
any built-in 2D data set, ``mnist``, ``cifar-a``, ``cifar-b``, ``sdeflow-cifar``, ...) into a
run folder (:mod:`sdeflow.runs.folder`); re-running the same command resumes it, a changed
recipe is refused with the differing keys, and Ctrl-C saves a checkpoint. Under ``torchrun``
every process trains ``train.batch_size`` examples per step, as the official code. ``toy`` is
``train --preset toy-2d-fast`` (DiffFlow; ``--recipe paper``, the score model and the flow:
``toy-2d``) scaled to a few minutes on two CPU cores (:mod:`sdeflow.runs.toy`). ``sample`` draws
from a saved run; ``evaluate`` computes a 2D run's exact NLL, ELBO and density, an image run's
FID against the number of steps and bits/dim.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sdeflow.runs.toy import MODELS, TOY_DEFAULTS, TOY_FAST, TOY_RECIPES, toy_overrides, toy_preset

__all__ = ["main", "build_parser", "toy_overrides", "toy_preset", "MODELS", "TOY_DEFAULTS",
           "TOY_FAST"]

_EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}


# -- argument types --------------------------------------------------------------------------
def _number(cast: type, low: float, *, strict: bool, what: str):
    """An argparse type: ``cast(text)``, finite and ``> low`` (``strict``) or ``>= low``."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if strict else value >= low)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


_positive_int = _number(int, 0, strict=True, what="a positive integer")
_nonnegative_int = _number(int, 0, strict=False, what="an integer >= 0")
_positive_float = _number(float, 0, strict=True, what="a finite number > 0")
_lam = _number(float, 0, strict=False, what="a finite number >= 0")


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"must be a torch device such as cpu, cuda or cuda:1, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    return text


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


# -- the parser -------------------------------------------------------------------------------
def _add_run_options(p: argparse.ArgumentParser, *, checkpoint_every: int | None) -> None:
    """The options of how to run (not what to train), shared by ``train`` and ``toy``."""
    run = p.add_argument_group("running")
    run.add_argument("--overwrite", action="store_true",
                     help="delete the run in OUT (after every check has passed) and start afresh")
    run.add_argument("--seed", type=int, default=0, help="seed of data, model and training")
    run.add_argument("--device", type=_device, default=None,
                     help="cpu, cuda or cuda:N (default: cuda when available)")
    run.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    run.add_argument("--checkpoint-every", type=_positive_int, default=checkpoint_every,
                     help="steps between checkpoints (default: %(default)s; one is also "
                          "written each --checkpoint-seconds)")
    run.add_argument("--checkpoint-seconds", type=_positive_float, default=60.0,
                     help="seconds between checkpoints at the latest (default: %(default)s)")
    run.add_argument("--keep-every", type=_positive_int, default=None,
                     help="also keep the checkpoint of every K-th step (checkpoints/)")
    run.add_argument("--log-every", type=_positive_int, default=None,
                     help="steps between metrics.jsonl records (default: 10; --smoke: 1)")
    run.add_argument("--plot-every", type=_positive_int, default=None,
                     help="steps between sample plots in OUT/samples/ (default: none)")
    run.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                     help="TensorBoard events in OUT/tensorboard (default: when installed)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_train(commands) -> None:
    from sdeflow.recipes import RECIPES

    p = commands.add_parser(
        "train", help="train a preset into a run folder (re-run to resume)",
        description="Train a preset (one of: " + ", ".join(RECIPES) + ") into a run folder. "
        "Re-running the same command resumes the run; a changed recipe is refused with the "
        "differing keys; --overwrite deletes the old run once every check has passed. Under "
        "torchrun each process trains train.batch_size examples per step.")
    p.add_argument("--preset", required=True, choices=RECIPES, metavar="NAME",
                   help="the recipe: " + ", ".join(RECIPES))
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   dest="overrides", help="set a recipe entry (repeatable), e.g. --set "
                   "data.dataset=checkerboard --set train.iterations=500")
    p.add_argument("--out", type=Path, default=None, help="the run folder (default: runs/NAME)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="image recipes: the folder of cifar-10-python.tar.gz (or its extracted "
                        "folder) or of MNIST's IDX files")
    p.add_argument("--no-verify", action="store_true", help="skip the data files' MD5 check")
    p.add_argument("--smoke", action="store_true",
                   help="tiny networks and a few steps of the preset on the CPU; image recipes "
                        "without --data-dir train on a tiny generated data set")
    _add_run_options(p, checkpoint_every=1000)
    ev = p.add_argument_group("evaluation at the end (and every --eval-every steps for images)")
    ev.add_argument("--n-samples", type=_positive_int, default=20_000,
                    help="2D: samples for samples.png (default: %(default)s)")
    ev.add_argument("--n-grid", type=_positive_int, default=80,
                    help="2D: density.png points per axis (default: %(default)s)")
    ev.add_argument("--eval-every", type=_nonnegative_int, default=None,
                    help="images: steps between evaluations (0: at the end only; default: "
                         "50000, --smoke: 0)")
    ev.add_argument("--eval-size", type=_positive_int, default=None,
                    help="images: held-out images for bits/dim (default: 100, --smoke: 4)")
    ev.add_argument("--fid-samples", type=_nonnegative_int, default=None,
                    help="images: samples for FID (0: none; default: 1000, --smoke: 16)")
    ev.add_argument("--fid-ref", choices=("train", "test"), default=None,
                    help="images: the split FID compares with (default: train; --smoke: test)")
    ev.add_argument("--ode-tol", type=_positive_float, default=None,
                    help="images: dopri5 rtol = atol of the bits/dim ODE (default: 1e-5; "
                         "--smoke: 1e-3)")
    gpu = p.add_argument_group("GPU layout (measure first: benchmarks/cifar_train.py)")
    gpu.add_argument("--channels-last", action="store_true",
                     help="image networks and batches in torch.channels_last")
    gpu.add_argument("--compile", action="store_true",
                     help="torch.compile the trained networks in place (same checkpoints)")


def _add_toy(commands) -> None:
    from sdeflow.data import TOY_DATASETS

    p = commands.add_parser(
        "toy", help="the 2D preset, short: train, then samples, density, metrics",
        description="sdeflow train --preset toy-2d-fast scaled to a few minutes of two CPU "
        "cores: DiffFlow (N ramped 5 -> 30 on the paper's power-0.9 grid on [1e-3, 0.05], "
        "jittered, g = 0.2, Fourier MLPs 64 x 3, Adam 1e-2 decaying linearly to 10%%, clipping "
        "1.0, EMA 0.999) with 1500 steps of batch 1000 on 100k points, fp32, plain "
        "backpropagation. --recipe paper (and --model score, flow): toy-2d, the official 2D "
        "recipe (N = 30, fixed grid, Fourier MLPs 128 x 3, StepLR 0.95 every 2 of 30 epochs), "
        "500 steps. Writes samples.png, density.png, loss.png, metrics.json and checkpoints "
        "to OUT.")
    p.add_argument("--dataset", default="checkerboard", choices=TOY_DATASETS, metavar="NAME",
                   help="one of: " + ", ".join(TOY_DATASETS) + " (default: %(default)s)")
    p.add_argument("--model", default="diffflow", choices=MODELS,
                   help="model family (default: %(default)s)")
    p.add_argument("--recipe", choices=tuple(TOY_RECIPES), default=None,
                   help="DiffFlow's training recipe: fast (the default: toy-2d-fast) or paper "
                        "(toy-2d); the score model and the flow train toy-2d")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="optimizer steps (default: diffflow " + str(TOY_FAST["steps"])
                        + " (fast), " + _per_model("steps") + "; paper: 3000)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="batch size (default: " + _per_model("batch_size") + "; paper: 5000)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: " + _per_model("lr") + "; paper: 1e-2)")
    p.add_argument("--gradient", default="backprop", metavar="NAME",
                   help="DiffFlow's gradient strategy by name (default: %(default)s; adjoint: "
                        "the paper's, memory flat in N; sharded, sharded-adjoint: batch slices "
                        "in parallel CPU threads)")
    p.add_argument("--lr-step-epochs", type=_positive_int, default=None,
                   help="toy-2d: decay the learning rate by 0.95 every this many of the run's "
                        "30 'epochs' (default: 2, the official StepLR)")
    p.add_argument("--jitter", action=argparse.BooleanOptionalAction, default=None,
                   help="train on a grid jittered every step (default: the recipe's; fast: "
                        "jittered, paper: the official fixed grid)")
    p.add_argument("--width", type=_positive_int, default=None,
                   help="MLP width (default: the recipe's; fast 64, paper 128)")
    p.add_argument("--depth", type=_positive_int, default=None,
                   help="MLP hidden layers (default: the recipe's, 3)")
    p.add_argument("--n-train", type=_positive_int, default=100_000,
                   help="training points (default: %(default)s; paper: 500000)")
    p.add_argument("--n-test", type=_positive_int, default=2000,
                   help="held-out points for the test NLL (default: %(default)s)")
    p.add_argument("--n-samples", type=_positive_int, default=20_000,
                   help="samples drawn for samples.png (default: %(default)s)")
    p.add_argument("--n-grid", type=_positive_int, default=None,
                   help="density.png points per axis (default: " + _per_model("n_grid") + ")")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast of the training loss (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   dest="overrides", help="any other toy-2d recipe entry (repeatable)")
    p.add_argument("--out", type=Path, default=None,
                   help="the run folder (default: runs/toy-DATASET-MODEL)")
    _add_run_options(p, checkpoint_every=100)


def _add_sample(commands) -> None:
    p = commands.add_parser(
        "sample", help="draw samples from a saved run",
        description="Draw samples from a run's checkpoint (EMA weights by default) with the "
        "reverse family on the recipe's grid of N steps: --lam 1 the reverse SDE, 0 the "
        "probability-flow ODE. FILE.png is a picture; FILE.npz holds the array 'samples' in "
        "data coordinates (8-bit images, or 2D points).")
    p.add_argument("run_dir", type=Path, metavar="RUN", help="the run folder")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="sampling steps N (default: the recipe's sample.steps)")
    p.add_argument("--lam", type=_lam, default=1.0, help="noise scale (default: %(default)s)")
    p.add_argument("--n", type=_positive_int, default=64, help="samples (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.png|FILE.npz",
                   help="output file (default: RUN/samples_N<N>_lam<lam>.png)")
    p.add_argument("--checkpoint", default=None, metavar="PATH|STEP",
                   help="a checkpoint file or a kept step (default: the last)")
    p.add_argument("--weights", choices=("ema", "trained"), default="ema",
                   help="the averaged or the trained weights (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=_device, default=None)
    p.add_argument("--threads", type=_positive_int, default=None)
    p.add_argument("--no-progress", action="store_true")


_EVALUATE_HELP = """Evaluate a run's checkpoint (EMA weights) into RUN/eval/<step>/.

2D runs: the exact test NLL by the probability-flow ODE and the trajectory negative ELBO (nats,
standardized and data coordinates), samples.png and density.png.

Image runs: FID of --num-samples samples at each --steps N and --lam (1: the reverse SDE, 0:
the probability-flow ODE) against the statistics of the training images (cached in RUN/eval/;
--ref-stats for published ones); fid_vs_steps.md and .png; samples.png; bits/dim of the test
set by the ELBO and by the ODE (Hutchinson) with --dequant-repeats dequantizations. Samples are
saved in chunks: an interrupted evaluation resumes where it stopped. Under torchrun each process
draws its share:

    torchrun --nproc_per_node 8 -m sdeflow evaluate runs/cifar-b --num-samples 50000
"""


def _add_evaluate(commands) -> None:
    p = commands.add_parser(
        "evaluate", help="2D: exact NLL, ELBO, density; images: FID against N, bits/dim",
        description=_EVALUATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, metavar="RUN", help="the run folder")
    p.add_argument("--checkpoint", default=None, metavar="PATH|STEP",
                   help="a checkpoint file or a kept step (default: the last)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: RUN/eval/<step>)")
    p.add_argument("--device", type=_device, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=None)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    points = p.add_argument_group("2D runs")
    points.add_argument("--n-samples", type=_positive_int, default=20_000)
    points.add_argument("--n-grid", type=_positive_int, default=80)
    images = p.add_argument_group("image runs")
    images.add_argument("--num-samples", type=_positive_int, default=50_000, metavar="K",
                        help="samples per FID (default: %(default)s)")
    images.add_argument("--steps", type=_int_list, default=(5, 10, 20, 50, 100),
                        metavar="N,N,...", help="sampling steps (default: 5,10,20,50,100)")
    images.add_argument("--lam", type=_float_list, default=(1.0, 0.0), metavar="L,L,...",
                        help="noise scales: 1 the SDE, 0 the ODE (default: 1,0)")
    images.add_argument("--batch-size", type=_positive_int, default=500)
    images.add_argument("--feature-batch-size", type=_positive_int, default=200)
    images.add_argument("--ref-stats", type=Path, default=None, metavar="PATH.npz",
                        help="reference statistics (mu, sigma), e.g. published CIFAR-10 ones")
    images.add_argument("--ref-split", choices=("train", "test"), default="train")
    images.add_argument("--no-fid", action="store_true", help="skip FID")
    images.add_argument("--no-bpd", action="store_true", help="skip bits/dim")
    images.add_argument("--bpd-images", type=_positive_int, default=None,
                        help="evaluate the first this many test images (default: all)")
    images.add_argument("--bpd-batch-size", type=_positive_int, default=100)
    images.add_argument("--dequant-repeats", type=_positive_int, default=1, metavar="R")
    images.add_argument("--probes", type=_positive_int, default=1,
                        help="Hutchinson probes per image")
    images.add_argument("--ode-tol", type=_positive_float, default=1e-5,
                        help="dopri5 rtol = atol (default: %(default)s)")
    images.add_argument("--data-dir", type=Path, default=None,
                        help="the data folder (default: the run's)")
    images.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sdeflow`` command."""
    parser = argparse.ArgumentParser(
        prog="sdeflow", description=__doc__.split("\n\n", 1)[0].split(": ", 1)[-1],
        epilog="Run 'sdeflow COMMAND --help' for a command's options.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(commands)
    _add_toy(commands)
    _add_sample(commands)
    _add_evaluate(commands)
    return parser


def _per_model(key: str) -> str:
    return ", ".join(f"{m} {d[key]}" for m, d in TOY_DEFAULTS.items())


# -- the commands -----------------------------------------------------------------------------
def _trainer_options(args: argparse.Namespace) -> dict[str, Any]:
    from sdeflow.training import Checkpointing, Logging, Plots

    return {"checkpointing": Checkpointing(every=args.checkpoint_every,
                                           seconds=args.checkpoint_seconds,
                                           keep_every=args.keep_every),
            "logging": Logging(every=args.log_every or (1 if getattr(args, "smoke", False)
                                                         else 10),
                               progress=not args.no_progress,
                               tensorboard=args.tensorboard),
            "plots": Plots(every=args.plot_every)}


def _recipe(preset: str, overrides: list[str]) -> dict[str, Any]:
    from sdeflow.recipes import apply_overrides, load_recipe

    return apply_overrides(load_recipe(preset), overrides)


def run_train(args: argparse.Namespace, *, preset: str, overrides: list[str],
              out: Path) -> dict[str, Any]:
    """Train as ``sdeflow train`` (and ``sdeflow toy``) say; returns ``metrics.json``."""
    from sdeflow.runs import (
        ImageEvalOptions,
        PointEvalOptions,
        RunSettings,
        default_source,
        smoke_overrides,
        train_run,
    )
    from sdeflow.training import retain_freed_memory

    smoke = getattr(args, "smoke", False)
    if smoke:
        overrides = smoke_overrides(_recipe(preset, [])) + overrides
    recipe = _recipe(preset, overrides)
    source = default_source(recipe, getattr(args, "data_dir", None), out=out, smoke=smoke,
                            verify=not getattr(args, "no_verify", False))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    retain_freed_memory()  # CPU: no page faults re-acquiring each step's activations
    smoke_images = {"every": 0, "size": 4, "fid_samples": 16, "fid_ref": "test", "ode_tol": 1e-3}
    image_defaults = smoke_images if smoke else {}
    images = ImageEvalOptions(**{
        **image_defaults, **{k: v for k, v in (
            ("every", getattr(args, "eval_every", None)),
            ("size", getattr(args, "eval_size", None)),
            ("fid_samples", getattr(args, "fid_samples", None)),
            ("fid_ref", getattr(args, "fid_ref", None)),
            ("ode_tol", getattr(args, "ode_tol", None))) if v is not None}})
    settings = RunSettings(seed=args.seed, device=args.device or ("cpu" if smoke else None),
                           channels_last=getattr(args, "channels_last", False),
                           compile=getattr(args, "compile", False))
    return train_run(recipe, out, preset=preset, overrides=overrides, source=source,
                     settings=settings, overwrite=args.overwrite,
                     trainer_options=_trainer_options(args),
                     points=PointEvalOptions(args.n_samples, args.n_grid), images=images,
                     echo=lambda line: print(line, file=sys.stderr, flush=True))


def _train_summary(metrics: dict[str, Any], out: Path) -> str:
    if "nll_ode_nats" in metrics:
        return (f"{metrics['model']} on {metrics['dataset']}: test NLL "
                f"{metrics['nll_ode_nats']:.3f} nats (ODE, standardized), "
                f"{metrics['nll_elbo_nats']:.3f} (ELBO); train {metrics['train_time_s']:.0f} s, "
                f"eval {metrics['eval_time_s']:.0f} s; wrote {out}/")
    figures = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("bpd_elbo", "bpd_ode", "fid")
                        if k in metrics)
    return f"{metrics['dataset']} at step {metrics['steps']}: {figures}; wrote {out}/"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sdeflow`` console script; returns the exit status."""
    from sdeflow.runs import RunError
    from sdeflow.training import CheckpointError, NonFiniteError, TrainingInterrupted

    args = build_parser().parse_args(argv)
    command = f"sdeflow {args.command}"
    try:
        if args.command in ("train", "toy"):
            if args.command == "toy":
                preset = toy_preset(args)
                overrides = toy_overrides(args) + list(args.overrides)
                args.n_grid = args.n_grid or TOY_DEFAULTS[args.model]["n_grid"]
                out = args.out or Path("runs") / f"toy-{args.dataset}-{args.model}"
            else:
                preset, overrides = args.preset, list(args.overrides)
                out = args.out or Path("runs") / preset
            metrics = run_train(args, preset=preset, overrides=overrides, out=out)
            print(_train_summary(metrics, out), file=sys.stderr)
        elif args.command == "sample":
            from sdeflow.runs import sample_run

            if args.threads is not None:
                torch.set_num_threads(args.threads)
            result = sample_run(args.run_dir, n=args.n, steps=args.steps, lam=args.lam,
                                out=args.out, checkpoint=args.checkpoint, weights=args.weights,
                                batch_size=args.batch_size, seed=args.seed, device=args.device,
                                progress=not args.no_progress)
            steps = result["steps"] or "the model's own grid"
            print(f"wrote {result['path']} ({result['n']} samples, N = {steps}, "
                  f"lambda = {result['lam']:g}, step {result['step']})", file=sys.stderr)
        else:
            result = _evaluate(args)
            print(f"wrote {result['out_dir']}/eval.json", file=sys.stderr)
    except TrainingInterrupted as stop:
        where = f"checkpoint {stop.checkpoint}" if stop.checkpoint else "no checkpoint kept"
        print(f"{command}: interrupted ({stop.signal_name}) at step {stop.step}; {where}; run "
              f"the same command to resume", file=sys.stderr)
        return _EXIT_INTERRUPTED.get(stop.signal_name, 130)
    except KeyboardInterrupt:  # outside training: loading, evaluating, sampling
        print(f"{command}: interrupted; the run's last checkpoint is intact (sdeflow evaluate "
              f"and sdeflow sample read it; the same train command resumes)", file=sys.stderr)
        return 130
    except (RunError, CheckpointError, NonFiniteError, FileNotFoundError, ValueError,
            ImportError) as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        return 1
    return 0


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from sdeflow.runs import evaluate, is_points_run, read_run_config

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    common = {"checkpoint": args.checkpoint, "out_dir": args.out, "device": args.device,
              "seed": args.seed}
    if is_points_run(read_run_config(args.run_dir)):
        return evaluate(args.run_dir, **common, n_samples=args.n_samples, n_grid=args.n_grid)
    return evaluate(
        args.run_dir, **common, num_samples=args.num_samples, steps=args.steps, lams=args.lam,
        batch_size=args.batch_size, feature_batch_size=args.feature_batch_size,
        fid=not args.no_fid, ref_stats=args.ref_stats, ref_split=args.ref_split,
        bpd=not args.no_bpd, bpd_images=args.bpd_images, bpd_batch_size=args.bpd_batch_size,
        dequant_repeats=args.dequant_repeats, probes=args.probes, ode_tol=args.ode_tol,
        data_dir=args.data_dir, progress=not args.no_progress, tensorboard=args.tensorboard)
