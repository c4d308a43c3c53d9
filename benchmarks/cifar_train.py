r"""DiffFlow training throughput and memory at CIFAR-10 size: the paper's networks at N = 30.

For each configuration (variant x precision x gradient strategy) the benchmark times optimizer
steps of DiffFlow (drift U-Net ch 128, score U-Net ch 64, multipliers 1,2,2,2, attention at 16,
dropout 0.1; g = 1, power grid on [1e-4, 0.05], Euler–Maruyama) on synthetic data of CIFAR's
shape, and reports images/s (median step time) and the peak GPU memory of a step:

- precision ``bf16`` (autocast, as in training) and ``fp32``;
- gradient ``backprop`` (activations of all N steps kept) and ``adjoint`` (the paper's
  memory-saving stochastic adjoint: one step's activations, one extra forward pass);
- variant (``--variants``, default ``base``): how the networks run. ``base`` is eager PyTorch
  with contiguous (NCHW) tensors, ``channels_last`` converts both networks and the data batch
  to ``torch.channels_last``, ``compile`` wraps both networks in ``torch.compile(net)`` (default
  mode); ``channels_last+compile`` does both. Each variant starts from the same initial weights.

The warm-up steps (``--warmup``) are not timed: with ``compile`` they absorb the compilation,
whose time is reported as ``warmup_seconds``. Compiled variants reset dynamo's caches before
each configuration, so every configuration compiles for its own precision and batch size
(static shapes, as in a training run) rather than for a shape made dynamic by an earlier one,
and the grid does not reach dynamo's recompilation limit (past which it runs eagerly); their
rows report the graphs compiled and the graph breaks.

An out-of-memory configuration is reported as such, not as a failure; any other error (e.g.
a compilation failure) is reported in its row, and the other configurations still run.
``--time-limit`` stops starting configurations after that many seconds and reports the skipped
ones. Run::

    python benchmarks/cifar_train.py                       # on a GPU, about 2-4 minutes
    python benchmarks/cifar_train.py --variants base,channels_last,compile,channels_last+compile
    python benchmarks/cifar_train.py --small --device cpu  # tiny nets: a check of the script

writes JSON (``--out``, default ``benchmarks/results/cifar_train.json``; rewritten after every
configuration, so a run cut short keeps its finished rows) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.utils import counters as dynamo_counters

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
FEATURES = ("channels_last", "compile")  # what a variant may combine (joined by "+")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_variant(name: str) -> frozenset[str]:
    """The features of a variant name: ``base`` (none), or features of :data:`FEATURES`
    joined by ``+`` (e.g. ``channels_last+compile``)."""
    if name == "base":
        return frozenset()
    parts = name.split("+")
    unknown = [p for p in parts if p not in FEATURES]
    if unknown or len(set(parts)) != len(parts):
        raise ValueError(f"--variants: unknown or repeated feature in {name!r}; a variant is "
                         f"'base' or features of {FEATURES} joined by '+'")
    return frozenset(parts)


def variant_name(features: frozenset[str]) -> str:
    """The canonical name of a set of features (``base`` for none)."""
    return "+".join(f for f in FEATURES if f in features) or "base"


def build_nets(args: argparse.Namespace, features: frozenset[str],
               device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The drift and score U-Nets of a variant, from seed 0 (the same weights for every
    variant), in ``channels_last`` and/or wrapped by ``torch.compile`` as it asks."""
    torch.manual_seed(0)
    if args.small:
        def unet(ch: int) -> UNet:
            return UNet(3, ch=ch, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                        dropout=0.1)
        nets = [unet(8), unet(8)]
    else:
        nets = [UNet(3, ch=128), UNet(3, ch=64)]
    nets = [net.to(device) for net in nets]
    if "channels_last" in features:
        nets = [net.to(memory_format=torch.channels_last) for net in nets]
    if "compile" in features:
        nets = [torch.compile(net) for net in nets]
    return nets[0], nets[1]


def _error_text(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


def run_config(args: argparse.Namespace, nets: tuple[torch.nn.Module, torch.nn.Module],
               row: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Times ``args.iters`` optimizer steps (after ``args.warmup`` untimed ones) of the
    configuration described by ``row`` (variant, precision, gradient, batch size), filling in
    the row: median ``step_seconds``, ``images_per_s``, ``warmup_seconds``, the peak GPU memory,
    or ``error``."""
    drift, score = nets
    reverse = ReverseSDE(ForwardSDE(drift, 1.0), score)
    grid = TimeGrid.power(args.n_steps, 1e-4, 0.05, 0.9, device=device)
    objective = DiffFlowObjective(reverse, StandardNormal((3, 32, 32)).to(device), grid,
                                  gradient=STRATEGIES[row["gradient"]]())
    params = [p for net in nets for p in net.parameters()]
    optimizer = torch.optim.Adam(params, lr=2e-4)
    batch_size = row["batch_size"]
    x = torch.rand(batch_size, 3, 32, 32, device=device) * 2 - 1
    if "channels_last" in parse_variant(row["variant"]):
        x = x.contiguous(memory_format=torch.channels_last)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if row["precision"] == "bf16"
           else contextlib.nullcontext())
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    loss = None
    started = time.perf_counter()
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
            if i == args.warmup - 1:
                row["warmup_seconds"] = round(time.perf_counter() - started, 2)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
            if not torch.isfinite(loss):
                row["error"] = "non-finite loss"
                break
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as err:  # noqa: BLE001 -- reported in the row; the others still run
        traceback.print_exc()
        row["error"] = _error_text(err)
    finally:
        optimizer.zero_grad(set_to_none=True)
        loss = None
    if times:
        step = statistics.median(times)
        row |= {"step_seconds": round(step, 4), "images_per_s": round(batch_size / step, 2)}
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows (an error or skip in place of images/s)."""
    lines = ["| variant | precision | gradient | batch | N | images/s | step (s) | "
             "warm-up (s) | peak memory (GiB) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ips = r.get("images_per_s", r.get("error", r.get("skipped", "—")))
        lines.append(f"| {r.get('variant', 'base')} | {r['precision']} | {r['gradient']} | "
                     f"{r['batch_size']} | {r['n_steps']} | {ips} | "
                     f"{r.get('step_seconds', '—')} | {r.get('warmup_seconds', '—')} | "
                     f"{r.get('peak_memory_gib', '—')} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: CUDA when available")
    p.add_argument("--n-steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16,
                   help="batch of the precision x gradient grid (backprop at N=30 must fit)")
    p.add_argument("--adjoint-batch", type=int, default=100,
                   help="extra adjoint rows at the paper's batch (0: none)")
    p.add_argument("--iters", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps per configuration (they absorb compilation)")
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"],
                   choices=["bf16", "fp32"])
    p.add_argument("--gradients", nargs="+", default=["backprop", "adjoint"],
                   choices=sorted(STRATEGIES))
    p.add_argument("--variants", type=str, default=None,
                   help="comma-separated variants, each running the precision x gradient grid: "
                        "base, channels_last, compile, channels_last+compile (default: one "
                        "variant given by --channels-last/--compile, base without them)")
    p.add_argument("--channels-last", action="store_true",
                   help="networks and data in torch.channels_last (without --variants)")
    p.add_argument("--compile", action="store_true",
                   help="networks wrapped by torch.compile (without --variants)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="start no configuration after this many seconds; report it skipped")
    p.add_argument("--small", action="store_true", help="tiny U-Nets (checks the script)")
    p.add_argument("--out", type=Path,
                   default=Path(__file__).resolve().parent / "results" / "cifar_train.json")
    args = p.parse_args(argv)
    if args.variants is not None:
        if args.channels_last or args.compile:
            p.error("--variants cannot be combined with --channels-last or --compile: name the "
                    "variant instead, e.g. --variants base,channels_last+compile")
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        if not names:
            p.error(f"--variants must name at least one variant, got {args.variants!r}")
    else:
        names = [variant_name(frozenset(f for f in FEATURES if getattr(args, f)))]
    try:
        features = [parse_variant(name) for name in names]
    except ValueError as err:
        p.error(str(err))
    args.variants = list(dict.fromkeys(variant_name(f) for f in features))  # canonical, unique
    for name in ("n_steps", "batch_size", "iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.adjoint_batch < 0 or args.warmup < 0:
        p.error(f"--adjoint-batch and --warmup must be >= 0, got {args.adjoint_batch} and "
                f"{args.warmup}")
    if args.warmup < 1 and any("compile" in v for v in args.variants):
        p.error("--warmup must be >= 1 with a compile variant: the first step compiles, and "
                "compilation must not be timed")
    if args.time_limit is not None and not args.time_limit > 0:
        p.error(f"--time-limit must be > 0 seconds, got {args.time_limit}")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
    configs = []  # (precision, gradient, batch) of every variant, in order
    for precision in args.precisions:
        for gradient in args.gradients:
            configs.append((precision, gradient, args.batch_size))
        if args.adjoint_batch and "adjoint" in args.gradients:
            configs.append((precision, "adjoint", args.adjoint_batch))
    with torch.device("meta"):
        counts = [sum(q.numel() for q in net.parameters())
                  for net in build_nets(args, frozenset(), torch.device("meta"))]
    print(f"drift {counts[0] / 1e6:.2f}M, score {counts[1] / 1e6:.2f}M parameters on {device}; "
          f"variants {', '.join(args.variants)}", flush=True)
    result: dict[str, Any] = {
        "benchmark": "cifar_train", "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor() or platform.machine(),
        "torch": torch.__version__, "params": {"drift": counts[0], "score": counts[1]},
        "small": args.small, "variants": args.variants, "warmup": args.warmup,
        "iters": args.iters, "time_limit": args.time_limit, "rows": [],
    }
    rows: list[dict[str, Any]] = result["rows"]
    skipped: list[str] = []

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        header = (f"DiffFlow training step at CIFAR-10 size, N = {args.n_steps}: drift U-Net "
                  f"{counts[0] / 1e6:.2f}M and score U-Net {counts[1] / 1e6:.2f}M parameters; "
                  f"{result['device_name']}, torch {result['torch']}; median of {args.iters} "
                  f"steps after {args.warmup} warm-up steps.")
        args.out.with_suffix(".md").write_text(header + "\n\n" + table(rows) + "\n")

    for variant in args.variants:
        features = parse_variant(variant)
        nets, setup_error = None, None
        warmup_total = 0.0
        for precision, gradient, batch_size in configs:
            row: dict[str, Any] = {"variant": variant, "precision": precision,
                                   "gradient": gradient, "batch_size": batch_size,
                                   "n_steps": args.n_steps}
            elapsed = time.perf_counter() - started
            if args.time_limit is not None and elapsed > args.time_limit:
                row["skipped"] = f"skipped: --time-limit {args.time_limit:g} s reached"
                skipped.append(f"{variant}/{precision}/{gradient}/batch {batch_size}")
                print(json.dumps(row), flush=True)
                rows.append(row)
                save()
                continue
            if nets is None and setup_error is None:
                try:
                    nets = build_nets(args, features, device)
                except Exception as err:  # noqa: BLE001 -- reported in the variant's rows
                    traceback.print_exc()
                    setup_error = _error_text(err)
            if setup_error is not None:
                row["error"] = setup_error
            else:
                if "compile" in features:
                    torch._dynamo.reset()  # compile for this configuration's shapes alone
                    dynamo_counters.clear()
                run_config(args, nets, row, device)
                if "compile" in features:  # a graph break or few graphs: partly eager
                    row["compiled_graphs"] = dynamo_counters["stats"]["unique_graphs"]
                    row["graph_breaks"] = sum(dynamo_counters["graph_break"].values())
                warmup_total += row.get("warmup_seconds", 0.0)
            rows.append(row)
            save()
        if nets is not None:
            print(f"variant {variant}: warm-up "
                  f"{'(with compilation) ' if 'compile' in features else ''}"
                  f"{warmup_total:.1f} s in all", flush=True)
        del nets
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if skipped:
        print(f"--time-limit {args.time_limit:g} s: skipped {len(skipped)} configuration(s): "
              f"{', '.join(skipped)}", file=sys.stderr, flush=True)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    save()
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
