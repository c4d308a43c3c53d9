r"""DiffFlow training-step benchmark: speed, memory and matmul efficiency of each gradient strategy.

The paper's 2D configuration: batch 5000, drift and score ``FourierMLP(2, width=128, depth=3)``
(GELU), constant g = 0.2, power grid on [1e-3, 0.05], Adam; N in {10, 30, 100}. For each
strategy (and the plain reference of ``reference_diffflow.py``) it reports, in one run:

- seconds per training step (fresh noise, loss, backward, Adam step): the median over repeats,
  the strategies interleaved so that load on a shared machine hits them alike;
- peak memory of forward + backward above the level at its start, in a separate untimed run
  after a warm-up: activations, carries, transients and gradients all count. CUDA:
  ``max_memory_allocated``. CPU (Linux): the rise of the resident set's high-water mark
  (``VmHWM``, reset through ``/proc/self/clear_refs``) after ``malloc_trim``, so that the
  allocations of every thread count (``torch.profiler`` sees only the thread that runs it);
- useful FLOP/s as a share of this machine's measured float32 matmul rate (a large square
  sgemm timed between the training steps, median per N, so that it sees the same load).
  Useful FLOPs are counted from the layer shapes: ``3 x (2N + 1)`` network
  evaluations (N + 1 drift, N score; the backward pass counted as twice the forward) of
  ``2 B (d w + L w^2 + w d)`` each; time features are computed once per step and not counted.
  The reference and the recomputing strategies do more work than this, which shows as a lower
  share.

The process keeps freed memory (:func:`sdeflow.training.retain_freed_memory`; the reference too),
so that no strategy pays for page-faulting its activations back every step;
``--no-retain-memory`` measures glibc's default instead.

Run ``python benchmarks/train_step.py`` (``--quick``: batch 1000, 3 repeats). Writes
``benchmarks/results/train_step.json`` and ``benchmarks/results/train_step.md``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference_diffflow import ReferenceFourierMLP, reference_loss  # noqa: E402

from sdeflow import DiffFlowObjective, ForwardSDE, ReverseSDE, StandardNormal, TimeGrid  # noqa: E402
from sdeflow.gradients import (  # noqa: E402
    Backprop,
    Checkpointed,
    Sharded,
    StochasticAdjoint,
)
from sdeflow.training import retain_freed_memory  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
G, T0, T1, EXPONENT, DIM = 0.2, 1e-3, 0.05, 0.9, 2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_op(device: torch.device) -> tuple[Callable, float]:
    """A large square float32 matmul and its FLOPs (timed alongside the strategies, so that
    its rate sees the same machine load)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    return (lambda: a @ b), 2.0 * n**3


def fourier_mlp(width: int, depth: int):
    from sdeflow.nets import FourierMLP

    return FourierMLP(DIM, width=width, depth=depth, activation="gelu")


def useful_flops(n_steps: int, batch: int, width: int, depth: int) -> float:
    per_eval = 2 * batch * (DIM * width + depth * width * width + width * DIM)
    return 3.0 * (2 * n_steps + 1) * per_eval


def make_steps(strategies: dict, n_steps: int, batch: int, width: int, depth: int,
               device: torch.device, seed: int) -> dict[str, tuple[Callable, Callable]]:
    """``name -> (train_step, forward_backward)`` with separate networks per strategy."""
    torch.manual_seed(seed)
    drift0, score0 = fourier_mlp(width, depth).to(device), fourier_mlp(width, depth).to(device)
    grid = TimeGrid.power(n_steps, T0, T1, EXPONENT, device=device)
    x0 = torch.randn(batch, DIM, device=device)
    steps = {}
    for name, strategy in strategies.items():
        if strategy is None:
            drift = ReferenceFourierMLP.from_fourier_mlp(drift0)
            score = ReferenceFourierMLP.from_fourier_mlp(score0)
            params = list(drift.parameters()) + list(score.parameters())

            def loss_fn(drift=drift, score=score):
                noise = torch.randn((n_steps, batch, DIM), device=device)
                return reference_loss(drift, score, x0, grid.ts, G, noise)
        else:
            drift = fourier_mlp(width, depth).to(device)
            score = fourier_mlp(width, depth).to(device)
            drift.load_state_dict(drift0.state_dict())
            score.load_state_dict(score0.state_dict())
            reverse = ReverseSDE(ForwardSDE(drift, G), score)
            objective = DiffFlowObjective(reverse, StandardNormal((DIM,)).to(device), grid,
                                          gradient=strategy)
            params = list(reverse.parameters())

            def loss_fn(objective=objective):
                return objective(x0).loss
        optimizer = torch.optim.Adam(params, lr=1e-3)

        def forward_backward(loss_fn=loss_fn, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            loss_fn().backward()

        def train_step(forward_backward=forward_backward, optimizer=optimizer):
            forward_backward()
            optimizer.step()

        steps[name] = (train_step, forward_backward)
    return steps


def peak_memory(fn: Callable, device: torch.device) -> int:
    """Peak bytes allocated by the calling thread while ``fn`` runs, above the level at its
    start (CUDA: every stream's)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def peak_rss(fn: Callable) -> int | None:
    """Rise of the process's resident-set high-water mark while ``fn`` runs (every thread's
    memory, with the C library's overhead), after handing every arena's free memory back.
    Linux only (``/proc/self/clear_refs`` resets the mark); None elsewhere."""
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        return None
    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    base = _proc_status_bytes("VmRSS")
    clear_refs.write_text("5")
    fn()
    return _proc_status_bytes("VmHWM") - base


def _mib(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / 2**20


def _fmt_mib(mib: float | None) -> str:
    return "-" if mib is None else f"{mib:.1f}"


def _proc_status_bytes(key: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024


def check_same_gradient() -> float:
    """Max relative gradient difference, reference vs sdeflow, over every parameter (float64,
    tiny nets; both minimize the same loss up to parameter-free constants)."""
    torch.manual_seed(1)
    n, b = 5, 7
    drift, score = fourier_mlp(8, 1).double(), fourier_mlp(8, 1).double()
    ref_d, ref_s = (ReferenceFourierMLP.from_fourier_mlp(m) for m in (drift, score))
    pairs = ref_d.parameter_pairs(drift) + ref_s.parameter_pairs(score)
    grid = TimeGrid.power(n, T0, T1, EXPONENT, dtype=torch.float64)
    x0, noise = torch.randn(b, DIM, dtype=torch.float64), torch.randn(n, b, DIM,
                                                                      dtype=torch.float64)
    reverse = ReverseSDE(ForwardSDE(drift, G), score)
    objective = DiffFlowObjective(reverse, StandardNormal((DIM,)).double(), grid)
    ours = torch.autograd.grad(objective(x0, noise=noise).loss, [q for _, q in pairs])
    theirs = torch.autograd.grad(reference_loss(ref_d, ref_s, x0, grid.ts, G, noise),
                                 [p for p, _ in pairs])
    return max(float((a.reshape(b.shape) - b).abs().max() / b.abs().max().clamp_min(1e-300))
               for a, b in zip(theirs, ours))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 1000, 3 repeats")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-retain-memory", action="store_true",
                        help="leave glibc's malloc returning freed memory to the OS (see "
                        "sdeflow.training.retain_freed_memory)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1: steadier on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    retained = False if args.no_retain_memory else retain_freed_memory()
    batch = args.batch or (1000 if args.quick else 5000)
    repeats = args.repeats or (3 if args.quick else 7)
    device = torch.device(args.device)
    strategies = {"reference": None, "Backprop": Backprop(),
                  "StochasticAdjoint": StochasticAdjoint(), "Checkpointed(5)": Checkpointed(5)}
    if device.type == "cpu" and torch.get_num_threads() > 1:  # batch shards in CPU threads
        strategies.update({"Sharded(Backprop)": Sharded(Backprop()),
                           "Sharded(StochasticAdjoint)": Sharded(StochasticAdjoint())})

    matmul, matmul_flops = matmul_op(device)
    grad_diff = check_same_gradient()
    print(f"max relative |grad ref - sdeflow| = {grad_diff:.1e}")
    rates = []
    rows = []
    for n_steps in args.steps:
        steps = make_steps(strategies, n_steps, batch, args.width, args.depth, device, seed=0)
        for train_step, _ in steps.values():  # warm-up (and Adam's state)
            train_step()
        # The profiler sees only this thread: Sharded's threads get the RSS figure alone.
        memory = {name: None if isinstance(strategies[name], Sharded) else peak_memory(fb, device)
                  for name, (_, fb) in steps.items()}
        rss = {name: peak_rss(fb) if device.type == "cpu" else None
               for name, (_, fb) in steps.items()}
        for train_step, _ in steps.values():  # page the trimmed memory back in
            train_step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        mm_times = []
        for _ in range(repeats):
            for name, (train_step, _) in steps.items():
                sync(device)
                start = time.perf_counter()
                train_step()
                sync(device)
                times[name].append(time.perf_counter() - start)
                for _ in range(3):
                    sync(device)
                    start = time.perf_counter()
                    matmul()
                    sync(device)
                    mm_times.append(time.perf_counter() - start)
        rate = matmul_flops / statistics.median(mm_times)
        rates.append(rate)
        print(f"N={n_steps}: matmul rate {rate / 1e9:.1f} GFLOP/s")
        flops = useful_flops(n_steps, batch, args.width, args.depth)
        ref_time = statistics.median(times["reference"])
        for name in steps:
            sec = statistics.median(times[name])
            rows.append(dict(strategy=name, n_steps=n_steps, seconds=sec,
                             speedup_vs_reference=ref_time / sec,
                             peak_memory_mb=_mib(memory[name]),
                             memory_vs_reference=(None if memory[name] is None
                                                  else memory[name] / memory["reference"]),
                             peak_rss_mb=_mib(rss[name]),
                             useful_gflops=flops / sec / 1e9, matmul_share=flops / sec / rate))
            row = rows[-1]
            print(f"N={n_steps:3d} {name:26s} {sec:8.4f} s  x{ref_time / sec:5.2f}  allocated "
                  f"{_fmt_mib(row['peak_memory_mb'])} MiB  RSS {_fmt_mib(row['peak_rss_mb'])} MiB"
                  f"  share {flops / sec / rate:5.1%}")
        del steps

    def ratio_hi_lo(name: str, key: str) -> float | None:
        at = {r["n_steps"]: r[key] for r in rows if r["strategy"] == name}
        lo, hi = at.get(min(args.steps)), at.get(max(args.steps))
        return None if lo is None or hi is None else hi / lo

    n_mid = 30 if 30 in args.steps else max(args.steps)
    at_mid = [r for r in rows if r["n_steps"] == n_mid and r["strategy"] != "reference"]
    fastest = max(at_mid, key=lambda r: r["speedup_vs_reference"])
    adjoint = next(r for r in at_mid if r["strategy"] == "StochasticAdjoint")
    sharded = next((r for r in at_mid if r["strategy"] == "Sharded(StochasticAdjoint)"), None)
    targets = {
        "fastest_strategy": fastest["strategy"],
        "fastest_speedup_vs_reference": fastest["speedup_vs_reference"],
        "fastest_matmul_share": fastest["matmul_share"],
        "adjoint_speedup_vs_reference": adjoint["speedup_vs_reference"],
        "adjoint_memory_ratio_hi_lo": ratio_hi_lo("StochasticAdjoint", "peak_memory_mb"),
        "reference_memory_ratio_hi_lo": ratio_hi_lo("reference", "peak_memory_mb"),
        "adjoint_rss_ratio_hi_lo": ratio_hi_lo("StochasticAdjoint", "peak_rss_mb"),
        "sharded_adjoint_speedup_vs_reference": sharded and sharded["speedup_vs_reference"],
        "sharded_adjoint_rss_ratio_hi_lo": ratio_hi_lo("Sharded(StochasticAdjoint)",
                                                       "peak_rss_mb"),
        "reference_rss_ratio_hi_lo": ratio_hi_lo("reference", "peak_rss_mb"),
    }
    result = dict(
        config=dict(batch=batch, width=args.width, depth=args.depth, g=G, grid=[T0, T1, EXPONENT],
                    repeats=repeats, quick=args.quick, steps=args.steps),
        machine=dict(device=str(device), name=(torch.cuda.get_device_name(device)
                                               if device.type == "cuda" else platform.processor()
                                               or platform.machine()),
                     cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                     freed_memory_retained=retained,
                     torch=torch.__version__, python=platform.python_version()),
        matmul_gflops=statistics.median(rates) / 1e9, reference_gradient_max_rel_diff=grad_diff,
        rows=rows, targets=targets,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_step.json").write_text(json.dumps(result, indent=2))
    (args.out / "train_step.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    c, m, t = result["config"], result["machine"], result["targets"]
    lines = [
        f"DiffFlow training step, batch {c['batch']}, two FourierMLP(width {c['width']}, depth "
        f"{c['depth']}); {m['device']} ({m['name']}, {m['torch_threads']} threads, torch "
        f"{m['torch']}{', freed memory retained' if m.get('freed_memory_retained') else ''}); "
        f"float32 matmul {result['matmul_gflops']:.1f} GFLOP/s (median; the "
        f"share uses the rate measured alongside each N).",
        "",
        "| N | strategy | s / step | speed-up vs reference | peak allocated (MiB) | "
        "allocated vs reference | peak RSS rise (MiB) | share of matmul rate |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        vs_ref = r["memory_vs_reference"]
        lines.append(f"| {r['n_steps']} | {r['strategy']} | {r['seconds']:.4f} | "
                     f"{r['speedup_vs_reference']:.2f}x | {_fmt_mib(r['peak_memory_mb'])} | "
                     f"{'-' if vs_ref is None else f'{vs_ref:.2f}'} | "
                     f"{_fmt_mib(r.get('peak_rss_mb'))} | {r['matmul_share']:.0%} |")

    def x(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    lines += [
        "",
        "Peak allocated: PyTorch's CPU allocations in the thread that runs the step "
        "(`torch.profiler`), so not for `Sharded`, whose shards run in their own threads. Peak "
        "RSS rise: the process's resident-set high-water mark over the step, every thread and "
        "the C library's own overhead included (Linux).",
        "",
        f"Targets (N = 30): fastest ({t['fastest_strategy']}) "
        f"{t['fastest_speedup_vs_reference']:.2f}x the reference (>= 2x) at "
        f"{t['fastest_matmul_share']:.0%} of the matmul rate (>= 60%); StochasticAdjoint "
        f"{t['adjoint_speedup_vs_reference']:.2f}x the reference (> 1x), its peak allocated "
        f"memory at the largest N {x(t['adjoint_memory_ratio_hi_lo'])} that at the smallest "
        f"(<= 1.3x; reference: {x(t['reference_memory_ratio_hi_lo'])}); peak RSS rise, largest "
        f"N over smallest: StochasticAdjoint {x(t.get('adjoint_rss_ratio_hi_lo'))}, "
        f"Sharded(StochasticAdjoint) {x(t.get('sharded_adjoint_rss_ratio_hi_lo'))}, reference "
        f"{x(t.get('reference_rss_ratio_hi_lo'))}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
