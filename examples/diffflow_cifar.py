r"""DiffFlow on CIFAR-10, on one GPU or many (``torchrun``), with the paper's configuration.

Defaults (DESIGN §4, the official code of Zhang & Chen, 2021):

- forward SDE :math:`dx = f_\theta(x, t)\,dt + g\,dw` with :math:`g = 1`, reverse SDE with a
  score network, trained on the trajectory KL (:class:`sdeflow.DiffFlowObjective`);
- times :math:`t \in [10^{-4}, 0.05]` on the power grid (exponent 0.9), jittered each step,
  with a progressive number of steps :math:`N` from 5 to 75 over the first ``--ramp-steps``;
  :math:`T = 0.05` is the issue's setting; the official CIFAR-10 code uses
  :math:`T = 0.1` (``--t1 0.1``);
- drift: DDPM U-Net with 128 channels, score: 64 channels; multipliers 1,2,2,2, two residual
  blocks per level, attention at 16x16, dropout 0.1;
- Adam 2e-4 (constant), global batch 100, EMA 0.999, gradient clipping 1.0, bf16 autocast on
  GPU, the memory-saving stochastic adjoint gradient (``--gradient backprop`` for plain
  backpropagation, whose memory grows with :math:`N`);
- sampling with :math:`N = 100` reverse-SDE steps.

Every ``--plot-every`` steps rank 0 writes a grid of 64 samples (``samples/step_*.png``); every
``--eval-every`` steps (and at the end) the EMA model is evaluated on ``--eval-size`` held-out
test images: bits/dim by the negative ELBO of one trajectory per image and by the
probability-flow ODE with Hutchinson's trace estimator, both with the 8-bit dequantization term
(``levels=256``); results go to ``eval.jsonl`` and, at the end, ``results.json``. Checkpoints
are written atomically every ``--checkpoint-every`` steps; ``--resume`` continues exactly.

Run::

    python examples/diffflow_cifar.py --data-dir data/              # one GPU (or the CPU)
    torchrun --nproc_per_node 8 examples/diffflow_cifar.py --data-dir data/   # 8 GPUs
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --master_addr HOST \
        --master_port 29500 examples/diffflow_cifar.py --data-dir data/  # 2 nodes, R = 0, 1
    python examples/diffflow_cifar.py --smoke                        # tiny model, CPU, seconds

``--data-dir`` holds ``cifar-10-python.tar.gz`` (MD5-checked) or its extracted folder; a
missing archive is downloaded when possible. ``--batch-size`` is the global batch, split over
the processes; under ``torchrun`` ranks shard each batch, rank 0 logs, plots and checkpoints,
metrics are averaged over the ranks, and the ``--out-dir`` must be on a file system every node
sees (for ``--resume``). ``--smoke`` trains a tiny U-Net for a few steps on a generated archive
in the real format (or on ``--data-dir``).

GPU options, off by default (measure first: ``python benchmarks/cifar_train.py --variants
base,channels_last,compile``): ``--channels-last`` keeps the networks' weights and the data
batches in ``torch.channels_last``; ``--compile`` compiles the two trained networks in place
(:meth:`torch.nn.Module.compile`), so their parameter names, and the checkpoints, are those of
the plain networks: a run may be resumed with or without either flag. The EMA copy used for
evaluation and sampling is not compiled.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sdeflow import Backprop, StandardNormal, TimeGrid
from sdeflow.data import dequantize, load_cifar10, write_tiny_cifar10_archive
from sdeflow.gradients import StochasticAdjoint
from sdeflow.likelihood import bits_per_dim
from sdeflow.nets import UNet
from sdeflow.plotting import save_image_grid
from sdeflow.training import DiffFlowModel, ProgressiveSteps, TensorBatches, Trainer
from sdeflow.training.distributed import DistributedContext, init_distributed

LEVELS, STATE = 256, (3, 32, 32)
DIMS = math.prod(STATE)
GRADIENTS = {"adjoint": StochasticAdjoint, "backprop": Backprop}


class CIFARBatches:
    r"""Batches of ``uint8`` images as floats on ``[-1, 1]``: uniform dequantization
    :math:`x = 2(k + u)/256 - 1` and a random horizontal flip per image.

    The noise comes from torch's global generator, which the trainer checkpoints; the order of
    the images from the wrapped :class:`~sdeflow.training.TensorBatches` (sharded by rank).
    With ``channels_last`` the batches are laid out in ``torch.channels_last`` (same values).
    """

    def __init__(self, source: TensorBatches, channels_last: bool = False) -> None:
        self.source = source
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def next_batch(self) -> Tensor:
        k = self.source.next_batch()
        x = dequantize(k, LEVELS)
        flip = torch.rand(k.shape[0]) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x.contiguous(memory_format=self.memory_format)

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder with cifar-10-python.tar.gz or cifar-10-batches-py/")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the archive's MD5 check (only for test archives)")
    p.add_argument("--no-download", action="store_true", help="never try to download")
    p.add_argument("--out-dir", type=Path, default=Path("runs/diffflow_cifar"))
    p.add_argument("--resume", action="store_true", help="continue from out-dir's checkpoint")
    p.add_argument("--smoke", action="store_true",
                   help="tiny U-Nets, a few steps on the CPU (generated data without --data-dir)")
    p.add_argument("--steps", type=int, default=500_000)
    p.add_argument("--batch-size", type=int, default=100, help="global batch")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--g", type=float, default=1.0, help="diffusion g (constant)")
    p.add_argument("--t0", type=float, default=1e-4)
    p.add_argument("--t1", type=float, default=0.05, help="T (official CIFAR code: 0.1)")
    p.add_argument("--grid-exponent", type=float, default=0.9)
    p.add_argument("--n-start", type=int, default=5)
    p.add_argument("--n-end", type=int, default=75)
    p.add_argument("--ramp-steps", type=int, default=None,
                   help="steps over which N grows (default: half of --steps)")
    p.add_argument("--no-jitter", action="store_true", help="train on the fixed grid")
    p.add_argument("--sample-steps", type=int, default=100)
    p.add_argument("--drift-ch", type=int, default=128)
    p.add_argument("--score-ch", type=int, default=64)
    p.add_argument("--ch-mult", type=str, default="1,2,2,2")
    p.add_argument("--num-res-blocks", type=int, default=2)
    p.add_argument("--attn", type=str, default="16", help="attention resolutions, e.g. 16 or ''")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--gradient", choices=sorted(GRADIENTS), default="adjoint")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="bf16 autocast on CUDA (the CPU always trains in fp32)")
    p.add_argument("--device", type=str, default=None, help="default: CUDA when available")
    p.add_argument("--channels-last", action="store_true",
                   help="for GPUs: networks and batches in torch.channels_last (slower on an "
                        "H200, see docs/benchmarks.md); measure first with "
                        "benchmarks/cifar_train.py --variants base,channels_last")
    p.add_argument("--compile", action="store_true",
                   help="for GPUs: torch.compile the trained networks (the first steps "
                        "compile); measure first with benchmarks/cifar_train.py --variants "
                        "base,compile. Checkpoints are the same with or without it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--plot-every", type=int, default=5000)
    p.add_argument("--checkpoint-every", type=int, default=5000)
    p.add_argument("--eval-every", type=int, default=50_000, help="0: only at the end")
    p.add_argument("--eval-size", type=int, default=100, help="held-out images evaluated")
    p.add_argument("--eval-probes", type=int, default=1, help="Hutchinson probes per image")
    p.add_argument("--ode-tol", type=float, default=1e-5, help="dopri5 rtol = atol")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (--smoke: 1, fastest for tiny nets)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:  # a tiny model and run; explicit flags given after --smoke do not apply
        args.__dict__.update(
            steps=min(args.steps, 4), batch_size=4, drift_ch=8, score_ch=8, ch_mult="1,2",
            num_res_blocks=1, attn="16", dropout=0.0, n_start=2, n_end=4, sample_steps=4,
            log_every=1, plot_every=2, checkpoint_every=2, eval_every=0, eval_size=4,
            ode_tol=1e-3, device=args.device or "cpu", threads=args.threads or 1)
    try:
        args.ch_mult = tuple(int(m) for m in args.ch_mult.split(","))
        args.attn = tuple(int(r) for r in args.attn.split(",") if r.strip())
    except ValueError:
        p.error(f"--ch-mult and --attn must be comma-separated integers, got "
                f"{args.ch_mult!r} and {args.attn!r}")
    for name in ("steps", "batch_size", "n_start", "n_end", "sample_steps", "eval_size",
                 "eval_probes", "log_every", "plot_every", "checkpoint_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.t0 < args.t1:
        p.error(f"need 0 <= --t0 < --t1, got {args.t0} and {args.t1}")
    if args.g <= 0:
        p.error(f"--g must be > 0 for DiffFlow, got {args.g}")
    if args.data_dir is None and not args.smoke:
        p.error("--data-dir is required (or --smoke for a generated tiny data set)")
    return args


def build_model(args: argparse.Namespace) -> DiffFlowModel:
    """The DiffFlow model of ``args``: drift and score U-Nets, in ``channels_last`` with
    ``--channels-last``, compiled in place with ``--compile`` (:meth:`torch.nn.Module.compile`
    keeps the parameter names, hence the checkpoints, of the plain nets; a deep copy such as
    the EMA's is not compiled)."""
    def unet(ch: int) -> UNet:
        net = UNet(3, ch=ch, ch_mult=args.ch_mult, num_res_blocks=args.num_res_blocks,
                   attn_resolutions=args.attn, dropout=args.dropout, image_size=32)
        if args.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if args.compile:
            net.compile()
        return net

    grid = functools.partial(TimeGrid.power, t0=args.t0, t1=args.t1, exponent=args.grid_exponent)
    ramp = args.ramp_steps or max(1, args.steps // 2)
    model = DiffFlowModel(
        unet(args.drift_ch), unet(args.score_ch), args.g, grid, StandardNormal(STATE),
        jitter=not args.no_jitter, progressive=ProgressiveSteps(args.n_start, args.n_end, ramp),
        gradient=GRADIENTS[args.gradient](), sample_grid=grid(args.sample_steps))
    return model


def load_data(args: argparse.Namespace, ctx: DistributedContext) -> tuple[Tensor, Tensor]:
    """Raw ``uint8`` train and test images. Rank 0 loads first (it may download or generate
    them), then the first process of each other node (nodes may not share a file system), then
    the rest. Missing or corrupt data end the run naming the file."""
    data_dir, verify, generate = args.data_dir, not args.no_verify, args.data_dir is None
    if generate:  # --smoke without data: a tiny archive in the real format
        data_dir, verify = args.out_dir / "tiny-cifar10", False

    def load() -> tuple[Tensor, Tensor]:
        if generate and not (data_dir / "cifar-10-python.tar.gz").exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            write_tiny_cifar10_archive(data_dir, n_train=64, n_test=16, seed=args.seed)
        try:
            download = not args.no_download and ctx.local_rank == 0
            train, _ = load_cifar10(data_dir, train=True, verify=verify, download=download)
            test, _ = load_cifar10(data_dir, train=False, verify=verify, download=False)
        except (FileNotFoundError, RuntimeError) as err:
            raise SystemExit(f"diffflow_cifar.py: --data-dir {data_dir}: {err}") from err
        return train, test

    out = None
    for turn in (ctx.rank == 0, ctx.rank != 0 and ctx.local_rank == 0, ctx.local_rank != 0):
        if turn:
            out = load()
        ctx.barrier()
    return out


@torch.no_grad()
def evaluate(model: DiffFlowModel, x: Tensor, args: argparse.Namespace,
             ctx: DistributedContext) -> dict[str, float]:
    r"""Bits/dim (8-bit, ``levels=256``) of ``x`` by the ELBO and by the probability-flow ODE,
    each rank evaluating its share of ``x``; averaged over all of ``x``."""
    mine = x[ctx.rank::ctx.world_size].to(ctx.device)
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=ctx.device).manual_seed(args.seed + 1 + ctx.rank)
    try:
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
            torch.manual_seed(args.seed + 2 + ctx.rank)
            nelbo = model.nelbo(mine)
            nll = -model.log_likelihood(mine, trace="hutchinson", n_probes=args.eval_probes,
                                        rtol=args.ode_tol, atol=args.ode_tol, generator=gen)
    finally:
        model.train(was_training)
    local = {"bpd_elbo": bits_per_dim(nelbo, DIMS, levels=LEVELS).mean(),
             "bpd_ode": bits_per_dim(nll, DIMS, levels=LEVELS).mean()}
    return ctx.all_reduce_mean(local, weight=mine.shape[0])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with init_distributed(args.device) as ctx:
        per_rank = ctx.split_batch_size(args.batch_size)
        checkpoint = args.out_dir / "checkpoint.pt"
        if checkpoint.exists() and not args.resume:
            raise SystemExit(f"diffflow_cifar.py: {checkpoint} exists; pass --resume to continue "
                             f"it, or choose another --out-dir")
        train, test = load_data(args, ctx)
        eval_size = min(args.eval_size, test.shape[0])
        if eval_size < ctx.world_size:
            raise SystemExit(f"diffflow_cifar.py: --eval-size {eval_size} must be at least the "
                             f"number of processes {ctx.world_size}")
        # one fixed dequantization of the held-out images, the same on every rank
        x_eval = dequantize(test[:eval_size], LEVELS,
                            generator=torch.Generator().manual_seed(args.seed + 12345))

        torch.manual_seed(args.seed)  # DDP broadcasts rank 0's weights anyway
        model = build_model(args)
        ctx.seed(args.seed + 1)  # different trajectory noise and dequantization per rank
        data = CIFARBatches(TensorBatches(train, per_rank, seed=args.seed, rank=ctx.rank,
                                          world_size=ctx.world_size),
                            channels_last=args.channels_last)

        def plot(eval_model: DiffFlowModel, path: Path) -> None:
            save_image_grid(eval_model.sample(64), path, nrow=8)

        eval_log = args.out_dir / "eval.jsonl"
        results: dict[str, Any] = {}

        def maybe_evaluate(trainer: Trainer, step: int, record: dict) -> None:
            if step != trainer.steps and not (args.eval_every and step % args.eval_every == 0):
                return
            started = time.perf_counter()
            metrics = evaluate(trainer.eval_model, x_eval, args, ctx)
            metrics |= {"step": step, "eval_images": eval_size,
                        "eval_seconds": round(time.perf_counter() - started, 2)}
            results.update(metrics)
            if ctx.is_main:
                with open(eval_log, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                print(f"step {step}: {metrics['bpd_elbo']:.3f} bits/dim (ELBO), "
                      f"{metrics['bpd_ode']:.3f} bits/dim (ODE)", flush=True)

        trainer = Trainer(
            model, data, steps=args.steps, lr=args.lr, lr_gamma=1.0, grad_clip=args.grad_clip,
            ema_decay=args.ema, mixed_precision=args.precision == "bf16", device=ctx.device,
            out_dir=args.out_dir, checkpoint_every=args.checkpoint_every,
            log_every=args.log_every, plot_every=args.plot_every, plot_fn=plot,
            progress=not args.no_progress, callbacks=[maybe_evaluate],
            config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            distributed=ctx)
        if ctx.is_main:
            n_drift = sum(p.numel() for p in model.drift_net.parameters())
            n_score = sum(p.numel() for p in model.score_net.parameters())
            print(f"DiffFlow CIFAR-10: drift {n_drift / 1e6:.2f}M, score {n_score / 1e6:.2f}M "
                  f"parameters; {ctx.world_size} process(es) on {ctx.device}, "
                  f"{per_rank} images each per step", flush=True)
        trainer.fit(resume=args.resume)
        if not results and trainer.step >= trainer.steps:  # resumed a finished run
            maybe_evaluate(trainer, trainer.steps, {})
        results |= {"steps": trainer.step, "train_seconds": round(trainer.train_time, 2),
                    "last_loss": trainer.last_loss, "world_size": ctx.world_size,
                    "params_in_sync": ctx.max_param_deviation(model) == 0.0}
        if ctx.is_main:
            (args.out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        return results


if __name__ == "__main__":
    main()
