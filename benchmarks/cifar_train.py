r"""DiffFlow training throughput and memory at CIFAR-10 size: the paper's networks at N = 30.

For each configuration (precision x gradient strategy) the benchmark times optimizer steps of
DiffFlow (drift U-Net ch 128, score U-Net ch 64, multipliers 1,2,2,2, attention at 16,
dropout 0.1; g = 1, power grid on [1e-4, 0.05], Euler–Maruyama) on synthetic data of CIFAR's
shape, and reports images/s (median step time) and the peak GPU memory of a step:

- precision ``bf16`` (autocast, as in training) and ``fp32``;
- gradient ``backprop`` (activations of all N steps kept) and ``adjoint`` (the paper's
  memory-saving stochastic adjoint: one step's activations, one extra forward pass).

An out-of-memory configuration is reported as such, not as a failure. Run::

    python benchmarks/cifar_train.py                       # on a GPU, about 2-4 minutes
    python benchmarks/cifar_train.py --small --device cpu  # tiny nets: a check of the script

writes JSON (``--out``, default ``benchmarks/results/cifar_train.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from sdeflow import (
    Backprop,
    DiffFlowObjective,
    ForwardSDE,
    ReverseSDE,
    StandardNormal,
    TimeGrid,
)
from sdeflow.gradients import StochasticAdjoint
from sdeflow.nets import UNet

STRATEGIES = {"backprop": Backprop, "adjoint": StochasticAdjoint}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(args: argparse.Namespace, nets: tuple[torch.nn.Module, torch.nn.Module],
               precision: str, gradient: str, batch_size: int, device: torch.device) -> dict:
    drift, score = nets
    reverse = ReverseSDE(ForwardSDE(drift, 1.0), score)
    grid = TimeGrid.power(args.n_steps, 1e-4, 0.05, 0.9, device=device)
    objective = DiffFlowObjective(reverse, StandardNormal((3, 32, 32)).to(device), grid,
                                  gradient=STRATEGIES[gradient]())
    params = [p for net in nets for p in net.parameters()]
    optimizer = torch.optim.Adam(params, lr=2e-4)
    x = torch.rand(batch_size, 3, 32, 32, device=device) * 2 - 1
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
           else contextlib.nullcontext())
    row = {"precision": precision, "gradient": gradient, "batch_size": batch_size,
           "n_steps": args.n_steps}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    try:
        for i in range(args.warmup + args.iters):
            _sync(device)
            start = time.perf_counter()
            with amp:
                loss = objective(x).loss
            optimizer.zero_grad(set_to_none=True)
            loss.float().backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            _sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
            if not torch.isfinite(loss):
                row["error"] = "non-finite loss"
                break
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    finally:
        optimizer.zero_grad(set_to_none=True)
        loss = None
    if times:
        step = statistics.median(times)
        row |= {"step_seconds": round(step, 4), "images_per_s": round(batch_size / step, 2)}
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| precision | gradient | batch | N | images/s | step (s) | peak memory (GiB) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ips = r.get("images_per_s", r.get("error", "—"))
        lines.append(f"| {r['precision']} | {r['gradient']} | {r['batch_size']} | "
                     f"{r['n_steps']} | {ips} | {r.get('step_seconds', '—')} | "
                     f"{r.get('peak_memory_gib', '—')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: CUDA when available")
    p.add_argument("--n-steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16,
                   help="batch of the precision x gradient grid (backprop at N=30 must fit)")
    p.add_argument("--adjoint-batch", type=int, default=100,
                   help="extra adjoint rows at the paper's batch (0: none)")
    p.add_argument("--iters", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"],
                   choices=["bf16", "fp32"])
    p.add_argument("--gradients", nargs="+", default=["backprop", "adjoint"],
                   choices=sorted(STRATEGIES))
    p.add_argument("--small", action="store_true", help="tiny U-Nets (checks the script)")
    p.add_argument("--out", type=Path,
                   default=Path(__file__).resolve().parent / "results" / "cifar_train.json")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
    if args.small:
        def unet(ch: int) -> UNet:
            return UNet(3, ch=ch, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                        dropout=0.1)
        nets = (unet(8).to(device), unet(8).to(device))
    else:
        nets = (UNet(3, ch=128).to(device), UNet(3, ch=64).to(device))
    counts = [sum(q.numel() for q in net.parameters()) for net in nets]
    print(f"drift {counts[0] / 1e6:.2f}M, score {counts[1] / 1e6:.2f}M parameters on {device}",
          flush=True)
    rows = []
    for precision in args.precisions:
        for gradient in args.gradients:
            rows.append(run_config(args, nets, precision, gradient, args.batch_size, device))
        if args.adjoint_batch and "adjoint" in args.gradients:
            rows.append(run_config(args, nets, precision, "adjoint", args.adjoint_batch, device))
    result = {
        "benchmark": "cifar_train", "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor() or platform.machine(),
        "torch": torch.__version__, "params": {"drift": counts[0], "score": counts[1]},
        "small": args.small, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
