r"""DiffFlow training throughput, memory and share of the device's peak at CIFAR-10 size.

The paper's networks at N = 30 (drift U-Net ch 128, score U-Net ch 64, multipliers 1,2,2,2,
attention at 16, dropout 0.1; g = 1, power grid on [1e-4, 0.05], Euler–Maruyama) train on
synthetic data of CIFAR's shape; each step is the recipe's: loss under autocast, backward,
gradient clipping at 1.0, Adam 2e-4, EMA 0.999 (:class:`sdeflow.training.EMA`).

A row is one configuration ``variant/precision/gradient/batch``:

- variant: ``base`` (eager, contiguous NCHW) or features joined by ``+``: ``channels_last``
  (networks and data in ``torch.channels_last``), and at most one of ``compile``
  (``torch.compile(net)``), ``compile-max-autotune`` (``mode="max-autotune-no-cudagraphs"``)
  and ``compile-reduce-overhead`` (``mode="reduce-overhead"``: CUDA graphs);
- precision: ``bf16`` or ``fp16`` autocast (fp16 with a gradient scaler, as the official
  trainer), or ``fp32`` (TF32 off on CUDA);
- gradient: ``backprop``, ``adjoint`` (the paper's stochastic adjoint) or ``checkpointed:K``
  (:class:`sdeflow.gradients.Checkpointed` with segments of K steps: K steps of activations
  alive instead of one, fewer and larger recomputations).

Rows come from ``--configs`` (a comma-separated list of such specs), or from the grid
``--variants x --precisions x --gradients x --batch-sizes`` (without ``--batch-sizes``: batch
``--batch-size``, plus adjoint rows at ``--adjoint-batch``). The row of today's configuration
(``base/bf16/adjoint/100``) is labelled ``today``. ``--scale-best B1,B2,...`` then reruns the
fastest row's configuration at those batch sizes (labelled ``scale-best``; it stops at the first
out-of-memory). ``--sample-steps N`` adds a sampling row before those: images/s of
:func:`sdeflow.sample` at N steps with the two (eager) U-Nets (``--sample-batch``,
``--sample-precision`` autocast, no grad).

Every row reports ``images_per_s`` and ``seconds_per_step`` (``step_seconds``: the median of
``--iters`` steps after ``--warmup`` untimed ones), ``peak_memory_bytes`` (CUDA:
``max_memory_allocated``; CPU: the rise of the resident set's high-water mark, Linux),
``flops_per_step``, ``peak_share`` and ``datasheet_share`` (None where unknown or failed):

- ``flops_per_step``: counted by :class:`torch.utils.flop_counter.FlopCounterMode` on the actual
  step (forward and backward, the strategy's recomputation included), on the same device, once
  per (gradient, batch, N): the first warm-up step of an eager row is the counted one; a
  compiled row whose count is not known yet counts one extra step of its eager networks (the
  same arithmetic). Convolutions, matmuls and attention are counted; normalization and
  element-wise work are not;
- ``peak_share``: achieved FLOP/s (``flops_per_step / seconds_per_step``) over the rate of a
  large square matmul in the row's precision, measured in the same run (random data);
- ``datasheet_share``: the same over the device's dense datasheet rate (:data:`DATASHEET`).

Compiled rows also report ``compile_seconds`` (the warm-up's time beyond that of ordinary
steps), the graphs compiled and the graph breaks; each compiled configuration starts from a
fresh dynamo state. ``--inductor-cache DIR`` keeps inductor's compiled graphs in ``DIR``
(``TORCHINDUCTOR_CACHE_DIR``, ``TORCHINDUCTOR_FX_GRAPH_CACHE=1``,
``TORCHINDUCTOR_AUTOGRAD_CACHE=1``), so that a later run, or one on another machine given the
same directory, skips most of the compilation.

An out-of-memory configuration is reported as such; any other error (e.g. a compilation
failure) in its row, and the other configurations still run. ``--time-limit`` stops starting
configurations after that many seconds and reports the skipped ones. Run::

    python benchmarks/cifar_train.py --configs base/bf16/adjoint/100,base/bf16/checkpointed:5/100 \
        --scale-best 200,400 --sample-steps 100 --out benchmarks/results/gpu/cifar_train.json
    python benchmarks/cifar_train.py --small --device cpu   # tiny nets, 8 x 8 images: a check

It writes JSON (``--out``; rewritten after every configuration, so a run cut short keeps its
finished rows) and a Markdown table beside it, and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._dynamo.utils import counters as dynamo_counters
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from sdeflow import DiffFlowObjective, ForwardSDE, ReverseSDE, StandardNormal, TimeGrid, sample
from sdeflow.gradients import Backprop, Checkpointed, GradientStrategy, StochasticAdjoint
from sdeflow.nets import UNet
from sdeflow.training import EMA

RESULTS = Path(__file__).resolve().parent / "results"
RECIPE_BATCH = 100
SMALL_SIZE = 8  # --small: 8 x 8 images, a check of the script
TODAY = ("base", "bf16", "adjoint", RECIPE_BATCH)  # the configuration before issue 14
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: Variant features; the ``compile*`` ones name the ``torch.compile`` mode (None: default).
COMPILE_MODES: dict[str, str | None] = {"compile": None,
                                        "compile-max-autotune": "max-autotune-no-cudagraphs",
                                        "compile-reduce-overhead": "reduce-overhead"}
FEATURES = ("channels_last", *COMPILE_MODES)
#: Dense datasheet rates (FLOP/s) by a substring of the device name, most specific first
#: (NVIDIA's H100/H200 SXM and A100 datasheets; fp32 is the non-tensor-core rate, as TF32 is off).
DATASHEET: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- configurations ---------------------------------------------------------------------------
def parse_variant(name: str) -> frozenset[str]:
    """The features of a variant name: ``base`` (none), or features of :data:`FEATURES`
    joined by ``+`` (e.g. ``channels_last+compile``), at most one ``compile*``."""
    if name == "base":
        return frozenset()
    parts = name.split("+")
    unknown = [p for p in parts if p not in FEATURES]
    if unknown or len(set(parts)) != len(parts):
        raise ValueError(f"--variants: unknown or repeated feature in {name!r}; a variant is "
                         f"'base' or features of {FEATURES} joined by '+'")
    if sum(p in COMPILE_MODES for p in parts) > 1:
        raise ValueError(f"--variants: {name!r} names more than one compile mode")
    return frozenset(parts)


def variant_name(features: frozenset[str]) -> str:
    """The canonical name of a set of features (``base`` for none)."""
    return "+".join(f for f in FEATURES if f in features) or "base"


def compile_mode(features: frozenset[str]) -> tuple[bool, str | None]:
    """``(compiled, mode)`` of a variant."""
    names = [f for f in features if f in COMPILE_MODES]
    return (True, COMPILE_MODES[names[0]]) if names else (False, None)


def make_gradient(name: str) -> GradientStrategy:
    """The strategy of a gradient name: ``backprop``, ``adjoint`` or ``checkpointed:K``."""
    if name == "backprop":
        return Backprop()
    if name == "adjoint":
        return StochasticAdjoint()
    match = re.fullmatch(r"checkpointed:(\d+)", name)
    if match and int(match.group(1)) >= 1:
        return Checkpointed(segment=int(match.group(1)))
    raise ValueError(f"gradient must be 'backprop', 'adjoint' or 'checkpointed:K' with K >= 1, "
                     f"got {name!r}")


def parse_config(spec: str) -> tuple[str, str, str, int]:
    """``variant/precision/gradient/batch`` -> its parts, the variant canonical."""
    parts = spec.strip().split("/")
    if len(parts) != 4:
        raise ValueError(f"--configs: {spec!r} is not variant/precision/gradient/batch")
    variant, precision, gradient, batch = parts
    variant = variant_name(parse_variant(variant))
    if precision not in PRECISIONS:
        raise ValueError(f"--configs: precision must be one of {sorted(PRECISIONS)}, got "
                         f"{precision!r} in {spec!r}")
    make_gradient(gradient)
    if not batch.isdigit() or int(batch) < 1:
        raise ValueError(f"--configs: batch must be an int >= 1, got {batch!r} in {spec!r}")
    return variant, precision, gradient, int(batch)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints >= 1, got {text!r}")
    return values


# -- networks and steps -----------------------------------------------------------------------
def build_nets(args: argparse.Namespace, features: frozenset[str],
               device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The drift and score U-Nets of a variant, from seed 0 (the same weights for every
    variant), in ``channels_last`` and/or wrapped by ``torch.compile`` as it asks."""
    torch.manual_seed(0)
    if args.small:
        def unet(ch: int) -> UNet:
            return UNet(3, ch=ch, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                        dropout=0.1, image_size=SMALL_SIZE)
        nets = [unet(8), unet(8)]
    else:
        nets = [UNet(3, ch=128), UNet(3, ch=64)]
    nets = [net.to(device) for net in nets]
    if "channels_last" in features:
        nets = [net.to(memory_format=torch.channels_last) for net in nets]
    compiled, mode = compile_mode(features)
    if compiled:  # the default mode through the plain call, as a user writes it
        nets = [torch.compile(net) if mode is None else torch.compile(net, mode=mode)
                for net in nets]
    return nets[0], nets[1]


def _image_size(args: argparse.Namespace) -> int:
    return SMALL_SIZE if args.small else 32


def eager(net: nn.Module) -> nn.Module:
    """The module under a ``torch.compile`` wrapper (the module itself if not compiled)."""
    return getattr(net, "_orig_mod", net)


def _grid(n_steps: int, device: torch.device) -> TimeGrid:
    return TimeGrid.power(n_steps, 1e-4, 0.05, 0.9, device=device)


class TrainStep:
    """One optimizer step of the recipe: loss under autocast, backward (through a gradient
    scaler for fp16), clipping at 1.0, Adam, EMA. Calling it returns the detached loss."""

    def __init__(self, nets: tuple[nn.Module, nn.Module], gradient: str, precision: str,
                 batch_size: int, n_steps: int, device: torch.device,
                 channels_last: bool = False, image_size: int = 32) -> None:
        drift, score = nets
        reverse = ReverseSDE(ForwardSDE(drift, 1.0), score)
        shape = (3, image_size, image_size)
        self.objective = DiffFlowObjective(reverse, StandardNormal(shape).to(device),
                                           _grid(n_steps, device), gradient=make_gradient(gradient))
        self.params = [p for net in nets for p in net.parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=2e-4)
        self.ema = EMA(nn.ModuleList([eager(net) for net in nets]), 0.999)
        self.models = nn.ModuleList([eager(net) for net in nets])
        self.x = torch.rand(batch_size, *shape, device=device) * 2 - 1
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[precision]
        self.amp = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
                    else contextlib.nullcontext())
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.compiled = any(net is not eager(net) for net in nets)

    def __call__(self) -> torch.Tensor:
        if self.compiled:  # a new iteration: CUDA-graph outputs of the last one may be reused
            torch.compiler.cudagraph_mark_step_begin()
        with self.amp:
            loss = self.objective(self.x).loss
        loss = loss.float()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.ema.update(self.models)
        return loss.detach()

    def release(self) -> None:
        """Frees the gradients and the optimizer's state (before the next configuration)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer.state.clear()


def _sdpa_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _flop_mapping() -> dict[Any, Any]:
    """Attention kernels that ``FlopCounterMode`` does not count by itself (the CPU's)."""
    ops = torch.ops.aten
    mapping = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _sdpa_forward),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward",
                           _sdpa_backward)):
        if hasattr(ops, name):
            mapping[getattr(ops, name)] = formula
    return mapping


def count_flops(fn: Any) -> tuple[int, Any]:
    """Runs ``fn()`` under :class:`FlopCounterMode` (backward passes inside ``fn`` included);
    returns ``(FLOPs, fn's result)``."""
    counter = FlopCounterMode(display=False, custom_mapping=_flop_mapping())
    with counter:
        out = fn()
    return counter.get_total_flops(), out


def measure_peak(device: torch.device, precision: str, size: int | None = None) -> float:
    """FLOP/s of a large square matmul in ``precision`` on random data (median of blocked
    repeats; :class:`torch.utils.benchmark.Timer` synchronizes CUDA)."""
    from torch.utils.benchmark import Timer

    n = size or (8192 if device.type == "cuda" else 512)
    a, b = (torch.randn(n, n, device=device, dtype=PRECISIONS[precision]) for _ in range(2))
    a @ b  # warm-up (library load, handles)
    _sync(device)
    measurement = Timer("a @ b", globals={"a": a, "b": b}).blocked_autorange(min_run_time=0.3)
    return 2.0 * n**3 / measurement.median


def datasheet_rate(device_name: str, precision: str) -> float | None:
    """The dense datasheet rate of a device (None: not in :data:`DATASHEET`)."""
    for key, rates in DATASHEET.items():
        if key in device_name:
            return rates.get(precision)
    return None


# -- CPU memory (Linux) -----------------------------------------------------------------------
def _proc_status_bytes(key: str) -> int | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    found = re.search(rf"^{key}:\s+(\d+) kB", status.read_text(), re.MULTILINE)
    return None if found is None else int(found.group(1)) * 1024


def _reset_cpu_peak() -> int | None:
    """Resets the resident set's high-water mark; returns the resident set now (Linux)."""
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        return None
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    clear_refs.write_text("5")
    return _proc_status_bytes("VmRSS")


def _reset_peak(device: torch.device) -> int | None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return 0
    return _reset_cpu_peak()


def _peak_bytes(device: torch.device, base: int | None) -> int | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    hwm = _proc_status_bytes("VmHWM")
    return None if base is None or hwm is None else max(hwm - base, 0)


def _error_text(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


# -- one configuration ------------------------------------------------------------------------
def _time_calls(fn: Any, args: argparse.Namespace, row: dict[str, Any], device: torch.device,
                flop_key: tuple | None, count_first: bool) -> list[float]:
    """Times ``fn`` ``args.iters`` times after ``args.warmup`` untimed calls, the first of them
    under the FLOP counter when ``count_first``; fills ``warmup_seconds``."""
    cache = args.flop_cache
    times = []
    started = time.perf_counter()
    for i in range(args.warmup + args.iters):
        _sync(device)
        start = time.perf_counter()
        if i == 0 and count_first:
            cache[flop_key], out = count_flops(fn)
        else:
            out = fn()
        _sync(device)
        if i == args.warmup - 1:
            row["warmup_seconds"] = round(time.perf_counter() - started, 2)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
        if out is not None and not bool(torch.isfinite(out).all()):
            row["error"] = "non-finite loss"
            break
    return times


def run_config(args: argparse.Namespace, nets: tuple[nn.Module, nn.Module],
               row: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Times ``args.iters`` optimizer steps (after ``args.warmup`` untimed ones) of the
    configuration described by ``row`` (variant, precision, gradient, batch size), filling in
    the row: median ``step_seconds``, ``images_per_s``, ``warmup_seconds``, the peak memory,
    ``flops_per_step``, or ``error``."""
    features = parse_variant(row["variant"])
    compiled, _ = compile_mode(features)
    batch_size = row["batch_size"]
    flop_key = (row["gradient"], batch_size, row["n_steps"])
    cache = args.__dict__.setdefault("flop_cache", {})
    count_first = flop_key not in cache and not compiled and args.warmup > 0
    step = None
    base = _reset_peak(device)
    times: list[float] = []
    try:
        step = TrainStep(nets, row["gradient"], row["precision"], batch_size, row["n_steps"],
                         device, channels_last="channels_last" in features,
                         image_size=_image_size(args))
        if flop_key not in cache and not count_first and not compiled:  # --warmup 0
            cache[flop_key], _ = count_flops(step)
        times = _time_calls(step, args, row, device, flop_key, count_first)
        row["peak_memory_bytes"] = _peak_bytes(device, base)
        if flop_key not in cache and times:  # compiled: count the same step, eager
            step.release()
            eager_step = TrainStep((eager(nets[0]), eager(nets[1])), row["gradient"],
                                   row["precision"], batch_size, row["n_steps"], device,
                                   channels_last="channels_last" in features,
                                   image_size=_image_size(args))
            cache[flop_key], _ = count_flops(eager_step)
            eager_step.release()
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as err:  # noqa: BLE001 -- reported in the row; the others still run
        traceback.print_exc()
        row["error"] = _error_text(err)
    finally:
        if step is not None:
            step.release()
        step = None
    if times and "error" not in row:
        median = statistics.median(times)
        row |= {"step_seconds": round(median, 4), "images_per_s": round(batch_size / median, 2)}
        if compiled and "warmup_seconds" in row:
            row["compile_seconds"] = round(max(row["warmup_seconds"] - args.warmup * median, 0),
                                           2)
    row["flops_per_step"] = cache.get(flop_key) if "error" not in row else None
    return row


def run_sampling(args: argparse.Namespace, nets: tuple[nn.Module, nn.Module],
                 row: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Times :func:`sdeflow.sample` of ``row["batch_size"]`` images at ``row["n_steps"]``
    steps (no grad, autocast in ``row["precision"]``), counting the FLOPs of the first call."""
    drift, score = nets
    for net in nets:
        net.eval()
    reverse = ReverseSDE(ForwardSDE(drift, 1.0), score)
    size = _image_size(args)
    prior = StandardNormal((3, size, size)).to(device)
    grid = _grid(row["n_steps"], device)
    dtype = PRECISIONS[row["precision"]]
    amp = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
           else contextlib.nullcontext())

    def draw() -> None:
        with torch.no_grad(), amp:
            sample(reverse, prior, grid, (row["batch_size"],))

    key = ("sample", row["batch_size"], row["n_steps"])
    cache = args.__dict__.setdefault("flop_cache", {})
    base = _reset_peak(device)
    times: list[float] = []
    try:
        times = _time_calls(draw, args, row, device, key, key not in cache and args.warmup > 0)
        if key not in cache:
            cache[key], _ = count_flops(draw)
        row["peak_memory_bytes"] = _peak_bytes(device, base)
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as err:  # noqa: BLE001 -- reported in the row
        traceback.print_exc()
        row["error"] = _error_text(err)
    finally:
        for net in nets:
            net.train()
    if times and "error" not in row:
        median = statistics.median(times)
        row |= {"step_seconds": round(median, 4),
                "images_per_s": round(row["batch_size"] / median, 2)}
    row["flops_per_step"] = cache.get(key) if "error" not in row else None
    return row


def finish_row(row: dict[str, Any], peaks: dict[str, float], device_name: str) -> dict[str, Any]:
    """Adds the derived figures every row carries (None where they are unknown)."""
    seconds = row.get("step_seconds")
    flops = row.get("flops_per_step")
    peak = peaks.get(row["precision"])
    sheet = datasheet_rate(device_name, row["precision"])
    achieved = flops / seconds if flops and seconds else None
    memory = row.get("peak_memory_bytes")
    row.update({
        "images_per_s": row.get("images_per_s"),
        "seconds_per_step": seconds,
        "peak_memory_bytes": memory,
        "peak_memory_gib": None if memory is None else round(memory / 2**30, 2),
        "flops_per_step": flops,
        "achieved_tflops": None if achieved is None else round(achieved / 1e12, 3),
        "measured_peak_tflops": None if peak is None else round(peak / 1e12, 3),
        "peak_share": None if achieved is None or not peak else round(achieved / peak, 4),
        "datasheet_tflops": None if sheet is None else sheet / 1e12,
        "datasheet_share": None if achieved is None or sheet is None else round(achieved / sheet,
                                                                                4),
    })
    return row


# -- reporting --------------------------------------------------------------------------------
def _cell(value: Any, fmt: str = "") -> str:
    return "—" if value is None else format(value, fmt)


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows (an error or skip in place of images/s)."""
    lines = ["| variant | precision | gradient | batch | N | images/s | step (s) | "
             "warm-up (s) | compile (s) | peak memory (GiB) | TFLOP / step | share of measured "
             "peak | share of datasheet | label |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ips = r.get("images_per_s")
        if ips is None:
            ips = r.get("error", r.get("skipped", "—"))
        flops = r.get("flops_per_step")
        share, sheet = r.get("peak_share"), r.get("datasheet_share")
        memory = r.get("peak_memory_gib")
        lines.append(
            f"| {r.get('variant', 'base')} | {r['precision']} | {r['gradient']} | "
            f"{r['batch_size']} | {r['n_steps']} | {ips} | {r.get('step_seconds', '—')} | "
            f"{r.get('warmup_seconds', '—')} | {r.get('compile_seconds', '—')} | "
            f"{_cell(memory)} | {_cell(None if flops is None else flops / 1e12, '.2f')} | "
            f"{_cell(share, '.1%')} | {_cell(sheet, '.1%')} | {r.get('label', '')} |")
    return "\n".join(lines)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Today's row, the fastest at the recipe's batch, the fastest overall, and sampling."""
    train = [r for r in rows if r["gradient"] != "sampling" and r.get("images_per_s")]

    def brief(r: dict[str, Any] | None) -> dict[str, Any] | None:
        if r is None:
            return None
        keys = ("variant", "precision", "gradient", "batch_size", "n_steps", "images_per_s",
                "seconds_per_step", "peak_memory_gib", "peak_share", "datasheet_share")
        return {k: r.get(k) for k in keys}

    today = next((r for r in train if r.get("label") == "today"), None)
    at_recipe = [r for r in train if r["batch_size"] == RECIPE_BATCH]
    sampling = next((r for r in rows if r["gradient"] == "sampling"
                     and r.get("images_per_s")), None)
    return {
        "today": brief(today),
        "best_at_recipe_batch": brief(max(at_recipe, key=lambda r: r["images_per_s"],
                                          default=None)),
        "best": brief(max(train, key=lambda r: r["images_per_s"], default=None)),
        "sampling": brief(sampling),
    }


# -- arguments --------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="default: CUDA when available")
    p.add_argument("--n-steps", type=int, default=30)
    p.add_argument("--configs", default=None, metavar="SPECS",
                   help="comma-separated variant/precision/gradient/batch rows, e.g. "
                        "base/bf16/adjoint/100,compile/bf16/checkpointed:5/100 (instead of "
                        "the grid below)")
    p.add_argument("--batch-sizes", type=_int_list, default=None, metavar="B1,B2,...",
                   help="batch sizes of the grid (default: --batch-size, plus adjoint rows at "
                        "--adjoint-batch)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="batch of the precision x gradient grid (backprop at N=30 must fit)")
    p.add_argument("--adjoint-batch", type=int, default=RECIPE_BATCH,
                   help="extra adjoint rows at the paper's batch (0: none)")
    p.add_argument("--iters", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps per configuration (they absorb compilation; the first "
                        "one counts the FLOPs)")
    p.add_argument("--precisions", nargs="+", default=None, choices=sorted(PRECISIONS),
                   help="default: bf16 fp32")
    p.add_argument("--gradients", nargs="+", default=None,
                   help="backprop, adjoint, checkpointed:K (default: backprop adjoint)")
    p.add_argument("--variants", type=str, default=None,
                   help="comma-separated variants, each running the grid: base or features of "
                        f"{', '.join(FEATURES)} joined by '+' (default: one variant given by "
                        "--channels-last/--compile, base without them)")
    p.add_argument("--channels-last", action="store_true",
                   help="networks and data in torch.channels_last (without --variants)")
    p.add_argument("--compile", action="store_true",
                   help="networks wrapped by torch.compile (without --variants)")
    p.add_argument("--scale-best", type=_int_list, default=None, metavar="B1,B2,...",
                   help="rerun the fastest row's configuration at these batch sizes (stops at "
                        "the first out-of-memory)")
    p.add_argument("--sample-steps", type=int, default=0,
                   help="add a sampling row at this many steps (0: none)")
    p.add_argument("--sample-batch", type=int, default=RECIPE_BATCH)
    p.add_argument("--sample-precision", choices=sorted(PRECISIONS), default="bf16")
    p.add_argument("--inductor-cache", type=Path, default=None, metavar="DIR",
                   help="keep inductor's compiled graphs in DIR, for later runs")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="start no configuration after this many seconds; report it skipped")
    p.add_argument("--small", action="store_true", help="tiny U-Nets (checks the script)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON results (default: benchmarks/results/gpu/cifar_train.json on a "
                        "GPU, benchmarks/results/cifar_train.json otherwise)")
    args = p.parse_args(argv)
    grid_flags = (args.variants is not None or args.channels_last or args.compile
                  or args.precisions is not None or args.gradients is not None
                  or args.batch_sizes is not None)
    if args.configs is not None:
        if grid_flags:
            p.error("--configs names whole rows: it cannot be combined with --variants, "
                    "--precisions, --gradients, --batch-sizes, --channels-last or --compile")
        try:
            args.rows = [parse_config(s) for s in args.configs.split(",") if s.strip()]
        except ValueError as err:
            p.error(str(err))
        if not args.rows:
            p.error(f"--configs must name at least one row, got {args.configs!r}")
        args.variants = list(dict.fromkeys(r[0] for r in args.rows))
    else:
        if args.variants is not None:
            if args.channels_last or args.compile:
                p.error("--variants cannot be combined with --channels-last or --compile: name "
                        "the variant instead, e.g. --variants base,channels_last+compile")
            names = [v.strip() for v in args.variants.split(",") if v.strip()]
            if not names:
                p.error(f"--variants must name at least one variant, got {args.variants!r}")
        else:
            names = [variant_name(frozenset(f for f in ("channels_last", "compile")
                                            if getattr(args, f)))]
        try:
            features = [parse_variant(name) for name in names]
        except ValueError as err:
            p.error(str(err))
        args.variants = list(dict.fromkeys(variant_name(f) for f in features))
        args.precisions = args.precisions or ["bf16", "fp32"]
        args.gradients = args.gradients or ["backprop", "adjoint"]
        for gradient in args.gradients:
            try:
                make_gradient(gradient)
            except ValueError as err:
                p.error(f"--gradients: {err}")
        args.rows = []
        for variant in args.variants:
            for precision in args.precisions:
                for gradient in args.gradients:
                    for batch in args.batch_sizes or [args.batch_size]:
                        args.rows.append((variant, precision, gradient, batch))
                if (args.batch_sizes is None and args.adjoint_batch
                        and "adjoint" in args.gradients):
                    args.rows.append((variant, precision, "adjoint", args.adjoint_batch))
    for name in ("n_steps", "batch_size", "iters", "sample_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.adjoint_batch < 0 or args.warmup < 0 or args.sample_steps < 0:
        p.error(f"--adjoint-batch, --warmup and --sample-steps must be >= 0, got "
                f"{args.adjoint_batch}, {args.warmup} and {args.sample_steps}")
    if args.warmup < 1 and any(compile_mode(parse_variant(v))[0] for v in args.variants):
        p.error("--warmup must be >= 1 with a compile variant: the first step compiles, and "
                "compilation must not be timed")
    if args.time_limit is not None and not args.time_limit > 0:
        p.error(f"--time-limit must be > 0 seconds, got {args.time_limit}")
    args.flop_cache = {}
    return args


def use_inductor_cache(directory: Path) -> None:
    """Points inductor's caches (compiled graphs, forward and backward) at ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory.resolve())
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"
    with contextlib.suppress(ImportError, AttributeError):
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        functorch_config.enable_autograd_cache = True


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.out is None:
        args.out = RESULTS / ("gpu" if device.type == "cuda" else "") / "cifar_train.json"
    if args.inductor_cache is not None:
        use_inductor_cache(args.inductor_cache)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
    with torch.device("meta"):
        counts = [sum(q.numel() for q in net.parameters())
                  for net in build_nets(args, frozenset(), torch.device("meta"))]
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else platform.processor() or platform.machine())
    precisions = sorted({r[1] for r in args.rows} | ({args.sample_precision}
                                                     if args.sample_steps else set()))
    peaks = {p: measure_peak(device, p) for p in precisions}
    print(f"drift {counts[0] / 1e6:.2f}M, score {counts[1] / 1e6:.2f}M parameters on "
          f"{device_name}; matmul peak "
          + ", ".join(f"{p} {v / 1e12:.2f} TFLOP/s" for p, v in peaks.items()), flush=True)
    result: dict[str, Any] = {
        "benchmark": "cifar_train", "device": str(device), "device_name": device_name,
        "torch": torch.__version__, "params": {"drift": counts[0], "score": counts[1]},
        "small": args.small, "variants": args.variants, "warmup": args.warmup,
        "iters": args.iters, "time_limit": args.time_limit,
        "measured_peak_flops": peaks,
        "datasheet_flops": {p: datasheet_rate(device_name, p) for p in precisions},
        "inductor_cache": None if args.inductor_cache is None else str(args.inductor_cache),
        "rows": [],
    }
    rows: list[dict[str, Any]] = result["rows"]
    skipped: list[str] = []
    state: dict[str, Any] = {"variant": None, "nets": None, "error": None}

    def save() -> None:
        result["summary"] = summarize(rows)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        header = (f"DiffFlow at CIFAR-10 size: drift U-Net {counts[0] / 1e6:.2f}M and score "
                  f"U-Net {counts[1] / 1e6:.2f}M parameters; {device_name}, torch "
                  f"{result['torch']}; median of {args.iters} steps after {args.warmup} "
                  f"warm-up steps; matmul peak measured in the run: "
                  + ", ".join(f"{p} {v / 1e12:.1f} TFLOP/s" for p, v in peaks.items())
                  + ". FLOPs counted by torch.utils.flop_counter on the step.")
        args.out.with_suffix(".md").write_text(header + "\n\n" + table(rows) + "\n")

    def nets_for(variant: str) -> tuple[nn.Module, nn.Module] | None:
        if state["variant"] != variant:
            state.update(variant=variant, nets=None, error=None)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            try:
                state["nets"] = build_nets(args, parse_variant(variant), device)
            except Exception as err:  # noqa: BLE001 -- reported in the variant's rows
                traceback.print_exc()
                state["error"] = _error_text(err)
        return state["nets"]

    def run(variant: str, precision: str, gradient: str, batch_size: int, n_steps: int,
            label: str | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {"variant": variant, "precision": precision,
                               "gradient": gradient, "batch_size": batch_size,
                               "n_steps": n_steps}
        if label is None and (variant, precision, gradient, batch_size) == TODAY:
            label = "today"
        if label:
            row["label"] = label
        elapsed = time.perf_counter() - started
        if args.time_limit is not None and elapsed > args.time_limit:
            row["skipped"] = f"skipped: --time-limit {args.time_limit:g} s reached"
            skipped.append(f"{variant}/{precision}/{gradient}/batch {batch_size}")
        else:
            nets = nets_for(variant)
            if nets is None:
                row["error"] = state["error"]
            else:
                compiled, _ = compile_mode(parse_variant(variant))
                if compiled:
                    torch._dynamo.reset()  # compile for this configuration's shapes alone
                    dynamo_counters.clear()
                if gradient == "sampling":
                    run_sampling(args, nets, row, device)
                else:
                    run_config(args, nets, row, device)
                if compiled:  # a graph break or few graphs: partly eager
                    row["compiled_graphs"] = dynamo_counters["stats"]["unique_graphs"]
                    row["graph_breaks"] = sum(dynamo_counters["graph_break"].values())
        finish_row(row, peaks, device_name)
        print(json.dumps(row), flush=True)
        rows.append(row)
        save()
        return row

    for variant, precision, gradient, batch_size in args.rows:
        run(variant, precision, gradient, batch_size, args.n_steps)
    if args.sample_steps:  # eager networks: a compiled variant would compile them anew
        run("base", args.sample_precision, "sampling", args.sample_batch, args.sample_steps)
    if args.scale_best:
        done = [r for r in rows if r.get("images_per_s") and r["gradient"] != "sampling"]
        best = max(done, key=lambda r: r["images_per_s"], default=None)
        if best is not None:
            measured = {r["batch_size"] for r in done if all(
                r[k] == best[k] for k in ("variant", "precision", "gradient"))}
            for batch_size in args.scale_best:
                if batch_size in measured:
                    continue
                row = run(best["variant"], best["precision"], best["gradient"], batch_size,
                          args.n_steps, label="scale-best")
                if row.get("error") == "out of memory":
                    break
    state.update(nets=None)
    if skipped:
        print(f"--time-limit {args.time_limit:g} s: skipped {len(skipped)} configuration(s): "
              f"{', '.join(skipped)}", file=sys.stderr, flush=True)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    save()
    print(table(rows))
    if math.isfinite(result["total_seconds"]):
        print(f"total {result['total_seconds']} s", flush=True)
    return rows


if __name__ == "__main__":
    main()
