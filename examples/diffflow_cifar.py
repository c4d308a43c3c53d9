r"""DiffFlow on CIFAR-10 or MNIST with the paper's recipes, on one GPU or many (``torchrun``).

``--preset NAME`` picks a recipe (:mod:`sdeflow.recipes`, DESIGN §4; ``docs/reproduce.md``):

- ``cifar-b``: the official CIFAR-10 configuration "B": DDPM U-Nets (drift 128 channels, score
  64; multipliers 1,2,2,2, two residual blocks, attention at 16x16, dropout 0.1), the S-curve
  grid over :math:`[10^{-3}, 0.05]`, jittered, with :math:`N` stepped 5, 10, 20, 30, 50, 75 at
  iterations 5k, 15k, 20k, 25k, 30k; 50k iterations at batch 100;
- ``cifar-a``: configuration "A": lucidrains-style U-Nets with linear attention (dim 128 and
  64, multipliers 1,2,4,8), :math:`N = 30` on a power-0.5 grid over :math:`[10^{-4}, 0.1]`;
- ``mnist``: the MNIST configuration (digits resized to 32x32, U-Nets of dim 64, batch 64);
- ``sdeflow-cifar`` (the default): sdeflow's own preset, the example's setting before the
  official recipes were added: the power-0.9 grid over :math:`[10^{-4}, 0.05]` with :math:`N`
  ramped 5 -> 75, DDPM U-Nets fed :math:`1000 t`, uniform dequantization, bf16, 500k steps.

The official recipes feed :math:`t` itself to the networks, train on :math:`x = 2k/255 - 1`
(no dequantization; a random horizontal flip for CIFAR-10), with fp16 autocast and a gradient
scaler, gradient clipping 1.0, an EMA of decay 0.999 starting after 10 updates, Adam 2e-4 and
the memory-saving stochastic adjoint. Any value can be changed: the flags below override the
preset (``--steps``, ``--lr``, ``--t1``, ...) and ``--set section.key=value`` any recipe entry
(``--set grid.jitter=false --set "schedule.values=[5, 10]"``). The effective configuration is
written to ``OUT_DIR/config.json``, which ``sdeflow evaluate OUT_DIR`` reads.

Every ``--plot-every`` steps rank 0 writes a grid of 64 samples (``samples/step_*.png``); every
``--eval-every`` steps (and at the end) the EMA model is evaluated: bits/dim on ``--eval-size``
held-out test images by the negative ELBO and by the probability-flow ODE (Hutchinson), both
with the 8-bit dequantization term (``levels=256``), and FID of ``--fid-samples`` samples
(:math:`N` = ``sample.steps``, the reverse SDE) against the statistics of the training images
(``--fid-ref``; ``--ref-stats`` for published ones); results go to ``eval.jsonl`` and, at the
end, ``results.json``. Checkpoints are written atomically every ``--checkpoint-every`` steps
(``--keep-every K`` also keeps one every K steps for ``sdeflow evaluate --checkpoint STEP``);
``--resume`` continues exactly. Scalars and sample grids also go to TensorBoard
(``OUT_DIR/tensorboard``) when the ``tensorboard`` package is installed.

Run::

    python examples/diffflow_cifar.py --preset cifar-b --data-dir data/ --out-dir runs/b
    torchrun --nproc_per_node 8 examples/diffflow_cifar.py --preset cifar-b --data-dir data/
    python examples/diffflow_cifar.py --preset mnist --data-dir data/mnist --out-dir runs/mnist
    python examples/diffflow_cifar.py --smoke --preset cifar-b        # tiny model, CPU, seconds
    sdeflow evaluate runs/b                                           # FID against N, bits/dim

``--data-dir`` holds ``cifar-10-python.tar.gz`` (MD5-checked) or its extracted folder (a missing
archive is downloaded when possible), or MNIST's four IDX files. ``--batch-size`` is the global
batch, split over the processes; under ``torchrun`` ranks shard each batch, rank 0 logs, plots
and checkpoints, metrics are averaged over the ranks, and the ``--out-dir`` must be on a file
system every node sees (for ``--resume``). ``--smoke`` (any preset) trains tiny networks for a
few steps on the CPU on a generated data set in the real format (or on ``--data-dir``) and
computes FID of 16 samples through the real Inception network (``pip install -e ".[eval]"``).

GPU options, off by default (measure first: ``python benchmarks/cifar_train.py --variants
base,channels_last,compile``): ``--channels-last`` keeps the networks' weights and the data
batches in ``torch.channels_last``; ``--compile`` compiles the two trained networks in place
(:meth:`torch.nn.Module.compile`), so their parameter names, and the checkpoints, are those of
the plain networks: a run may be resumed with or without either flag. The EMA copy used for
evaluation and sampling is not compiled.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sdeflow.data import dequantize
from sdeflow.evaluation import (
    inception_features,
    read_run_config,
    reference_for_fid,
    sample_fid,
    write_run_config,
)
from sdeflow.likelihood import bits_per_dim
from sdeflow.plotting import save_image_grid
from sdeflow.recipes import (
    apply_overrides,
    load_recipe,
    recipe_get,
    state_shape,
    trainer_options,
)
from sdeflow.recipes import (
    build_model as build_recipe_model,
)
from sdeflow.recipes.data import load_images, scale_images, to_uint8, write_tiny_archives
from sdeflow.training import TensorBatches, Trainer
from sdeflow.training.distributed import DistributedContext, init_distributed

LEVELS = 256
PRESETS = ("sdeflow-cifar", "cifar-a", "cifar-b", "mnist")
DEFAULT_PRESET = "sdeflow-cifar"
#: Run options (not part of a recipe): their defaults, and those of --smoke. A flag given on
#: the command line wins over both.
RUN_DEFAULTS: dict[str, Any] = {
    "log_every": 100, "plot_every": 5000, "checkpoint_every": 5000, "eval_every": 50_000,
    "eval_size": 100, "ode_tol": 1e-5, "fid_samples": 1000, "fid_ref": "train",
    "fid_batch_size": 500, "device": None, "threads": None}
SMOKE_RUN: dict[str, Any] = {
    "log_every": 1, "plot_every": 2, "checkpoint_every": 2, "eval_every": 0, "eval_size": 4,
    "ode_tol": 1e-3, "fid_samples": 16, "fid_ref": "test", "fid_batch_size": 8,
    "device": "cpu", "threads": 1}


class ImageBatches:
    r"""Batches of ``uint8`` images as floats on ``[-1, 1]`` as the recipe says: :math:`2k/255
    - 1` (official), or uniformly dequantized :math:`2(k + u)/256 - 1` (``dequantize``), with
    a random horizontal flip per image (``random_flip``).

    The noise comes from torch's global generator, which the trainer checkpoints; the order of
    the images from the wrapped :class:`~sdeflow.training.TensorBatches` (sharded by rank).
    With ``channels_last`` the batches are laid out in ``torch.channels_last`` (same values).
    """

    def __init__(self, source: TensorBatches, *, dequantize: bool = True,
                 random_flip: bool = True, channels_last: bool = False) -> None:
        self.source, self.dequantize, self.random_flip = source, dequantize, random_flip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def next_batch(self) -> Tensor:
        k = self.source.next_batch()
        x = scale_images(k, dequantize=self.dequantize)
        if self.random_flip:
            flip = torch.rand(k.shape[0]) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x.contiguous(memory_format=self.memory_format)

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)


def smoke_overrides(recipe: dict[str, Any]) -> list[str]:
    """The recipe entries ``--smoke`` shrinks: tiny networks of the recipe's kinds, 4 steps of
    batch 4 in fp32, a short N schedule of the recipe's kind, 4 sampling steps."""
    out = ["train.iterations=4", "train.batch_size=4", "train.precision=fp32", "sample.steps=4"]
    for section in ("drift", "score"):
        net = recipe[section]["net"]
        if net == "ddpm_unet":
            out += [f"{section}.ch=8", f"{section}.ch_mult=[1, 2]",
                    f"{section}.num_res_blocks=1", f"{section}.attn_resolutions=[16]",
                    f"{section}.dropout=0.0"]
        elif net == "lucid_unet":
            out += [f"{section}.dim=8", f"{section}.dim_mults=[1, 2]", f"{section}.attn_heads=2",
                    f"{section}.attn_dim_head=4"]
    kind = recipe["schedule"]["kind"]
    out += {"fixed": ["schedule.n=4"],
            "stepped": ["schedule.values=[2, 3, 4]", "schedule.milestones=[1, 2]"],
            "ramp": ["schedule.n_start=2", "schedule.n_end=4"]}[kind]
    return out


def _net_key(recipe: dict[str, Any], section: str, what: str) -> str:
    """The recipe key of a network's width (``ch``/``dim``/``width``) or multipliers."""
    net = recipe[section]["net"]
    keys = {"width": {"ddpm_unet": "ch", "lucid_unet": "dim", "fourier_mlp": "width"},
            "mult": {"ddpm_unet": "ch_mult", "lucid_unet": "dim_mults"}}[what]
    if net not in keys:
        raise SystemExit(f"diffflow_cifar.py: the {section} net {net!r} has no {what} option")
    return f"{section}.{keys[net]}"


def flag_overrides(args: argparse.Namespace, recipe: dict[str, Any],
                   parser: argparse.ArgumentParser) -> list[str]:
    """The recipe entries the flags given on the command line set (as ``key=value``)."""
    direct = {"steps": "train.iterations", "batch_size": "train.batch_size", "lr": "optimizer.lr",
              "ema": "train.ema", "grad_clip": "train.grad_clip", "g": "process.g",
              "t0": "grid.t0", "t1": "grid.t1", "grid_exponent": "grid.exponent",
              "sample_steps": "sample.steps", "gradient": "train.gradient",
              "precision": "train.precision"}
    out = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in direct.items()
           if getattr(args, flag) is not None]
    ramp = {"n_start": "schedule.n_start", "n_end": "schedule.n_end",
            "ramp_steps": "schedule.ramp_steps"}
    for flag, key in ramp.items():
        if getattr(args, flag) is not None:
            if recipe["schedule"]["kind"] != "ramp":
                parser.error(f"--{flag.replace('_', '-')} sets the ramp N schedule, but preset "
                             f"{args.preset!r} uses {recipe['schedule']['kind']!r}; use --set "
                             f"schedule.kind=ramp (and --n-start, --n-end) to switch")
            out.append(f"{key}={getattr(args, flag)}")
    if args.no_jitter:
        out.append("grid.jitter=false")
    for flag, section in (("drift_ch", "drift"), ("score_ch", "score")):
        if getattr(args, flag) is not None:
            out.append(f"{_net_key(recipe, section, 'width')}={getattr(args, flag)}")
    if args.ch_mult is not None:
        try:
            mults = [int(m) for m in args.ch_mult.split(",")]
        except ValueError:
            parser.error(f"--ch-mult must be comma-separated integers, got {args.ch_mult!r}")
        out += [f"{_net_key(recipe, s, 'mult')}={mults}" for s in ("drift", "score")]
    unet_only = {"num_res_blocks": "num_res_blocks", "attn": "attn_resolutions",
                 "dropout": "dropout"}
    for flag, key in unet_only.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if flag == "attn":
            try:
                value = [int(r) for r in value.split(",") if r.strip()]
            except ValueError:
                parser.error(f"--attn must be comma-separated integers, got {args.attn!r}")
        for section in ("drift", "score"):
            if recipe[section]["net"] != "ddpm_unet":
                parser.error(f"--{flag.replace('_', '-')} applies to DDPM U-Nets, not the "
                             f"{recipe[section]['net']} of preset {args.preset!r}")
            out.append(f"{section}.{key}={json.dumps(value)}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default=DEFAULT_PRESET,
                   help="the recipe (default: %(default)s; official: cifar-a, cifar-b, mnist)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   dest="overrides", help="set a recipe entry (repeatable), e.g. "
                   "--set grid.jitter=false; applied after the flags")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder with cifar-10-python.tar.gz (or cifar-10-batches-py/), or with "
                        "MNIST's IDX files")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the data files' MD5 check (only for test archives)")
    p.add_argument("--no-download", action="store_true", help="never try to download")
    p.add_argument("--out-dir", type=Path, default=Path("runs/diffflow_cifar"))
    p.add_argument("--resume", action="store_true", help="continue from out-dir's checkpoint")
    p.add_argument("--smoke", action="store_true",
                   help="tiny networks, a few steps on the CPU (generated data without "
                        "--data-dir), FID of 16 samples")
    recipe = p.add_argument_group("recipe entries (default: the preset's)")
    recipe.add_argument("--steps", type=int, default=None, help="train.iterations")
    recipe.add_argument("--batch-size", type=int, default=None, help="train.batch_size (global)")
    recipe.add_argument("--lr", type=float, default=None, help="optimizer.lr")
    recipe.add_argument("--ema", type=float, default=None, help="train.ema")
    recipe.add_argument("--grad-clip", type=float, default=None, help="train.grad_clip")
    recipe.add_argument("--g", type=float, default=None, help="process.g (constant diffusion)")
    recipe.add_argument("--t0", type=float, default=None, help="grid.t0")
    recipe.add_argument("--t1", type=float, default=None, help="grid.t1 (T)")
    recipe.add_argument("--grid-exponent", type=float, default=None,
                        help="grid.exponent (power grids)")
    recipe.add_argument("--n-start", type=int, default=None, help="schedule.n_start (ramp)")
    recipe.add_argument("--n-end", type=int, default=None, help="schedule.n_end (ramp)")
    recipe.add_argument("--ramp-steps", type=int, default=None,
                        help="schedule.ramp_steps (ramp; default: ramp_fraction of the steps)")
    recipe.add_argument("--no-jitter", action="store_true", help="grid.jitter = false")
    recipe.add_argument("--sample-steps", type=int, default=None, help="sample.steps")
    recipe.add_argument("--drift-ch", type=int, default=None, help="the drift net's width")
    recipe.add_argument("--score-ch", type=int, default=None, help="the score net's width")
    recipe.add_argument("--ch-mult", type=str, default=None, help="both nets' multipliers")
    recipe.add_argument("--num-res-blocks", type=int, default=None, help="DDPM U-Nets")
    recipe.add_argument("--attn", type=str, default=None,
                        help="DDPM U-Nets' attention resolutions, e.g. 16 or ''")
    recipe.add_argument("--dropout", type=float, default=None, help="DDPM U-Nets")
    recipe.add_argument("--gradient", choices=("adjoint", "backprop"), default=None,
                        help="train.gradient")
    recipe.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                        help="train.precision (fp16: autocast with a gradient scaler)")
    run = p.add_argument_group("run options")
    run.add_argument("--device", type=str, default=None, help="default: CUDA when available")
    run.add_argument("--channels-last", action="store_true",
                     help="for GPUs: networks and batches in torch.channels_last (slower on an "
                          "H200, see docs/benchmarks.md); measure first with "
                          "benchmarks/cifar_train.py --variants base,channels_last")
    run.add_argument("--compile", action="store_true",
                     help="for GPUs: torch.compile the trained networks (the first steps "
                          "compile); measure first with benchmarks/cifar_train.py --variants "
                          "base,compile. Checkpoints are the same with or without it")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--log-every", type=int, default=None)
    run.add_argument("--plot-every", type=int, default=None)
    run.add_argument("--checkpoint-every", type=int, default=None)
    run.add_argument("--keep-every", type=int, default=None,
                     help="also keep the checkpoint of every K-th step (checkpoints/)")
    run.add_argument("--eval-every", type=int, default=None, help="0: only at the end")
    run.add_argument("--eval-size", type=int, default=None, help="held-out images evaluated")
    run.add_argument("--eval-probes", type=int, default=1, help="Hutchinson probes per image")
    run.add_argument("--ode-tol", type=float, default=None, help="dopri5 rtol = atol")
    run.add_argument("--fid-samples", type=int, default=None,
                     help="samples for FID at each evaluation (0: no FID; default 1000)")
    run.add_argument("--fid-batch-size", type=int, default=None, help="samples per batch")
    run.add_argument("--fid-ref", choices=("train", "test"), default=None,
                     help="the split whose statistics FID compares with (default train)")
    run.add_argument("--ref-stats", type=Path, default=None,
                     help="published reference statistics (.npz with mu, sigma) for FID")
    run.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                     help="TensorBoard events in OUT_DIR/tensorboard (default: when installed)")
    run.add_argument("--threads", type=int, default=None,
                     help="CPU threads per process (--smoke: 1, fastest for tiny nets)")
    run.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for key, value in (SMOKE_RUN if args.smoke else RUN_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    base = load_recipe(args.preset)
    args.applied = smoke_overrides(base) if args.smoke else []
    try:
        recipe = apply_overrides(base, args.applied)
        args.applied += flag_overrides(args, recipe, p)
        args.applied += list(args.overrides)
        args.recipe = apply_overrides(base, args.applied)
    except ValueError as err:
        p.error(str(err))
    if args.recipe["data"].get("dataset") not in ("cifar10", "mnist"):
        p.error(f"preset {args.preset!r} is not an image recipe")
    for name in ("eval_size", "eval_probes", "log_every", "plot_every", "checkpoint_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("fid_samples", "eval_every"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.fid_samples == 1:
        p.error("--fid-samples must be 0 (no FID) or >= 2")
    if args.keep_every is not None and args.keep_every < 1:
        p.error(f"--keep-every must be >= 1, got {args.keep_every}")
    if args.data_dir is None and not args.smoke:
        p.error("--data-dir is required (or --smoke for a generated tiny data set)")
    return args


def build_model(args: argparse.Namespace):
    """The DiffFlow model of the effective recipe (:func:`sdeflow.recipes.build_model`, the
    builder ``sdeflow evaluate`` uses too), in ``channels_last`` with ``--channels-last``,
    compiled in place with ``--compile``."""
    return build_recipe_model(args.recipe, channels_last=args.channels_last,
                              compile=args.compile)


def data_source(args: argparse.Namespace) -> dict[str, Any]:
    """Where the data come from: ``{"dataset", "dir", "verify", "generated"}``."""
    dataset = args.recipe["data"]["dataset"]
    if args.data_dir is None:  # --smoke without data: a tiny data set in the real format
        folder = args.out_dir / f"tiny-{dataset}"
        return {"dataset": dataset, "dir": str(folder.resolve()), "verify": False,
                "generated": True}
    return {"dataset": dataset, "dir": str(args.data_dir.resolve()), "verify": not args.no_verify,
            "generated": False}


def load_data(args: argparse.Namespace, source: dict[str, Any],
              ctx: DistributedContext) -> tuple[Tensor, Tensor]:
    """Raw ``uint8`` train and test images. Rank 0 loads first (it may download or generate
    them), then the first process of each other node (nodes may not share a file system), then
    the rest. Missing or corrupt data end the run naming the file."""
    folder, dataset = Path(source["dir"]), source["dataset"]
    resize = str(args.recipe["data"].get("resize", "pad"))

    def load() -> tuple[Tensor, Tensor]:
        if source["generated"] and not (folder / ".complete").exists():
            write_tiny_archives(dataset, folder, n_train=64, n_test=16, seed=args.seed)
            (folder / ".complete").touch()
        try:
            download = not args.no_download and ctx.local_rank == 0
            train = load_images(dataset, folder, train=True, verify=source["verify"],
                                download=download, resize=resize)
            test = load_images(dataset, folder, train=False, verify=source["verify"],
                               resize=resize)
        except (FileNotFoundError, RuntimeError) as err:
            raise SystemExit(f"diffflow_cifar.py: --data-dir {folder}: {err}") from err
        return train, test

    out = None
    for turn in (ctx.rank == 0, ctx.rank != 0 and ctx.local_rank == 0, ctx.local_rank != 0):
        if turn:
            out = load()
        ctx.barrier()
    return out


@torch.no_grad()
def evaluate_bpd(model, x: Tensor, args: argparse.Namespace,
                 ctx: DistributedContext) -> dict[str, float]:
    r"""Bits/dim (8-bit, ``levels=256``) of ``x`` by the ELBO and by the probability-flow ODE,
    each rank evaluating its share of ``x``; averaged over all of ``x``."""
    mine = x[ctx.rank::ctx.world_size].to(ctx.device)
    dims = math.prod(mine.shape[1:])
    gen = torch.Generator(device=ctx.device).manual_seed(args.seed + 1 + ctx.rank)
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        torch.manual_seed(args.seed + 2 + ctx.rank)
        nelbo = model.nelbo(mine)
        nll = -model.log_likelihood(mine, trace="hutchinson", n_probes=args.eval_probes,
                                    rtol=args.ode_tol, atol=args.ode_tol, generator=gen)
    local = {"bpd_elbo": bits_per_dim(nelbo, dims, levels=LEVELS).mean(),
             "bpd_ode": bits_per_dim(nll, dims, levels=LEVELS).mean()}
    return ctx.all_reduce_mean(local, weight=mine.shape[0])


def _check_resumable(args: argparse.Namespace) -> None:
    """A resumed run keeps its recipe (only ``train.iterations`` may change)."""
    if not (args.out_dir / "config.json").exists():
        return
    saved = read_run_config(args.out_dir)["recipe"]
    differ = []
    for section in sorted(set(saved) | set(args.recipe)):
        a, b = saved.get(section), args.recipe.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            differ += [f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}"
                       for k in sorted(set(a) | set(b))
                       if a.get(k) != b.get(k) and f"{section}.{k}" != "train.iterations"]
        elif a != b:
            differ.append(f"{section}: {a!r} -> {b!r}")
    if differ:
        raise SystemExit(f"diffflow_cifar.py: --resume with another recipe than "
                         f"{args.out_dir / 'config.json'}: " + "; ".join(differ))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = args.recipe
    train_cfg = recipe["train"]
    with init_distributed(args.device) as ctx:
        per_rank = ctx.split_batch_size(train_cfg["batch_size"])
        checkpoint = args.out_dir / "checkpoint.pt"
        if checkpoint.exists() and not args.resume:
            raise SystemExit(f"diffflow_cifar.py: {checkpoint} exists; pass --resume to continue "
                             f"it, or choose another --out-dir")
        if args.resume:
            _check_resumable(args)
        source = data_source(args)
        train, test = load_data(args, source, ctx)
        eval_size = min(args.eval_size, test.shape[0])
        if eval_size < ctx.world_size:
            raise SystemExit(f"diffflow_cifar.py: --eval-size {eval_size} must be at least the "
                             f"number of processes {ctx.world_size}")
        # one fixed dequantization of the held-out images, the same on every rank
        x_eval = dequantize(test[:eval_size], LEVELS,
                            generator=torch.Generator().manual_seed(args.seed + 12345))
        inception = reference = None
        if args.fid_samples:
            try:
                inception = inception_features(ctx.device)
            except RuntimeError as err:
                if not args.smoke:
                    raise SystemExit(f"diffflow_cifar.py: {err} (or pass --fid-samples 0)"
                                     ) from err
                if ctx.is_main:
                    print(f"diffflow_cifar.py: --smoke without FID: {err}", flush=True)
                args.fid_samples = 0
        if args.fid_samples:
            images = (lambda: train) if args.fid_ref == "train" else (lambda: test)
            cache = args.out_dir / f"fid_ref_{source['dataset']}_{args.fid_ref}.npz"
            mu, sigma, _ = reference_for_fid(images, ref_stats=args.ref_stats, cache=cache,
                                             inception=inception, ctx=ctx,
                                             progress=not args.no_progress)
            reference = (mu, sigma)

        torch.manual_seed(args.seed)  # DDP broadcasts rank 0's weights anyway
        model = build_model(args)
        ctx.seed(args.seed + 1)  # different trajectory noise and dequantization per rank
        data = ImageBatches(TensorBatches(train, per_rank, seed=args.seed, rank=ctx.rank,
                                          world_size=ctx.world_size),
                            dequantize=recipe["data"]["dequantize"],
                            random_flip=recipe["data"]["random_flip"],
                            channels_last=args.channels_last)

        def plot(eval_model, path: Path) -> None:
            save_image_grid(eval_model.sample(64), path, nrow=8)

        eval_log = args.out_dir / "eval.jsonl"
        results: dict[str, Any] = {}

        def maybe_evaluate(trainer: Trainer, step: int, record: dict) -> None:
            if step != trainer.steps and not (args.eval_every and step % args.eval_every == 0):
                return
            started = time.perf_counter()
            eval_model = trainer.eval_model
            was_training = eval_model.training
            eval_model.eval()
            try:
                metrics = evaluate_bpd(eval_model, x_eval, args, ctx)
                if args.fid_samples:
                    dequantized = recipe["data"]["dequantize"]
                    fid = sample_fid(
                        lambda b: to_uint8(eval_model.sample(b), dequantized=dequantized),
                        args.fid_samples, reference, inception=inception,
                        batch_size=min(args.fid_batch_size, args.fid_samples),
                        seed=args.seed + 7 + step, ctx=ctx, progress=False)
                    metrics |= {"fid": fid["fid"], "fid_samples": args.fid_samples,
                                "fid_n_steps": recipe["sample"]["steps"], "fid_lam": 1.0,
                                "fid_reference": (str(args.ref_stats) if args.ref_stats
                                                  else args.fid_ref),
                                "sample_images_per_s": fid["images_per_s"]}
            finally:
                eval_model.train(was_training)
            metrics |= {"step": step, "eval_images": eval_size,
                        "eval_seconds": round(time.perf_counter() - started, 2)}
            results.update(metrics)
            if ctx.is_main:
                with open(eval_log, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                fid_text = f", FID {metrics['fid']:.2f}" if "fid" in metrics else ""
                print(f"step {step}: {metrics['bpd_elbo']:.3f} bits/dim (ELBO), "
                      f"{metrics['bpd_ode']:.3f} bits/dim (ODE){fid_text}", flush=True)

        run_options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                       if k not in ("recipe", "applied", "overrides")}
        config = {"preset": args.preset, "overrides": args.applied, "recipe": recipe,
                  "data": source, "run": run_options}
        if ctx.is_main:
            write_run_config(args.out_dir, **config)
        trainer = Trainer(
            model, data, steps=train_cfg["iterations"], **trainer_options(recipe),
            device=ctx.device, out_dir=args.out_dir, checkpoint_every=args.checkpoint_every,
            keep_every=args.keep_every, log_every=args.log_every, plot_every=args.plot_every,
            plot_fn=plot, progress=not args.no_progress, callbacks=[maybe_evaluate],
            tensorboard=args.tensorboard, config=config, distributed=ctx)
        if ctx.is_main:
            n_drift = sum(p.numel() for p in model.drift_net.parameters())
            n_score = sum(p.numel() for p in model.score_net.parameters())
            print(f"DiffFlow {args.preset} ({source['dataset']}, state "
                  f"{state_shape(recipe)}): drift {n_drift / 1e6:.2f}M, score "
                  f"{n_score / 1e6:.2f}M parameters; {ctx.world_size} process(es) on "
                  f"{ctx.device}, {per_rank} images each per step; N "
                  f"{recipe_get(recipe, 'schedule.kind')}, {train_cfg['precision']}",
                  flush=True)
        trainer.fit(resume=args.resume)
        if not results and trainer.step >= trainer.steps:  # resumed a finished run
            maybe_evaluate(trainer, trainer.steps, {})
        results |= {"preset": args.preset, "steps": trainer.step,
                    "train_seconds": round(trainer.train_time, 2),
                    "last_loss": trainer.last_loss, "world_size": ctx.world_size,
                    "params_in_sync": ctx.max_param_deviation(model) == 0.0}
        if ctx.is_main:
            (args.out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        return results


if __name__ == "__main__":
    main()
