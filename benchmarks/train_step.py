r"""DiffFlow training-step benchmark: speed, memory and matmul efficiency of each gradient strategy.

The paper's 2D configuration: batch 5000, drift and score ``FourierMLP(2, width=128, depth=3)``
(GELU), constant g = 0.2, power grid on [1e-3, 0.05], Adam; N in {10, 30, 100}. For each
strategy, and for the official algorithm as written (``reference_diffflow.py``: ``reference``,
its naive backprop, and ``reference-adjoint``, its stochastic adjoint), it reports, in one run:

- seconds per training step (fresh noise, loss, backward, Adam step): the median over repeats,
  the strategies interleaved so that load on a shared machine hits them alike; the speed-up over
  each reference;
- peak memory of forward + backward above the level at its start, in a separate untimed run
  after a warm-up: activations, carries, transients and gradients all count. CUDA:
  ``max_memory_allocated``. CPU (Linux): the rise of the resident set's high-water mark
  (``VmHWM``, reset through ``/proc/self/clear_refs``) after ``malloc_trim``, so that the
  allocations of every thread count (``torch.profiler`` sees only the thread that runs it);
- useful FLOP/s as a share of this machine's measured float32 matmul rate (a large square
  sgemm timed between the training steps, median per N, so that it sees the same load).
  Useful FLOPs are counted from the layer shapes: ``3 x (2N + 1)`` network
  evaluations (N + 1 drift, N score; the backward pass counted as twice the forward) of
  ``2 B (d w + L w^2 + w d)`` each; time features are computed once per call and not counted.
  The references and the recomputing strategies do more work than this, which shows as a lower
  share.

``--strategies`` runs a subset (names as in the table; ``--steps 30 --repeats 3`` with it makes
a quick run, e.g. for ``benchmarks/paired.py``). ``--compile-mode MODE`` adds, for each sdeflow
strategy, a row with both networks wrapped by ``torch.compile(net, mode=MODE)``
(``reduce-overhead``: CUDA graphs, which remove the launch cost of the small 2D networks on a
GPU); their warm-up (``--warmup``, at least 3 steps for them: compile, then CUDA-graph record)
is reported as ``warmup_seconds``, and a strategy that fails to compile is reported in its row.

The process keeps freed memory (:func:`sdeflow.training.retain_freed_memory`; the reference too),
so that no strategy pays for page-faulting its activations back every step;
``--no-retain-memory`` measures glibc's default instead.

Run ``python benchmarks/train_step.py`` (``--quick``: batch 1000, 3 repeats). Writes
``train_step.json`` and ``train_step.md`` to ``--out`` (default ``benchmarks/results/``).
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

from reference_diffflow import (  # noqa: E402
    ReferenceFourierMLP,
    reference_adjoint_loss,
    reference_loss,
)

from sdeflow import DiffFlowObjective, ForwardSDE, ReverseSDE, StandardNormal, TimeGrid  # noqa: E402
from sdeflow.gradients import (  # noqa: E402
    Backprop,
    Checkpointed,
    GradientStrategy,
    Sharded,
    StochasticAdjoint,
)
from sdeflow.training import retain_freed_memory  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
G, T0, T1, EXPONENT, DIM = 0.2, 1e-3, 0.05, 0.9, 2
#: The official algorithm's two gradient paths (``reference_diffflow.py``).
REFERENCES: dict[str, Callable] = {"reference": reference_loss,
                                   "reference-adjoint": reference_adjoint_loss}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
COMPILED_WARMUP = 3  # compile, then (reduce-overhead) CUDA-graph warm-up and record


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


BASE_STRATEGIES = ("Backprop", "StochasticAdjoint", "Checkpointed(5)")
SHARDED_STRATEGIES = ("Sharded(Backprop)", "Sharded(StochasticAdjoint)")


def all_strategies(device: torch.device) -> dict[str, GradientStrategy | None]:
    """Every row this benchmark can run here, by name (None: a reference of the official
    code); the ``Sharded`` ones on a CPU with more than one torch thread."""
    strategies: dict[str, GradientStrategy | None] = dict.fromkeys(REFERENCES)
    strategies.update(zip(BASE_STRATEGIES, (Backprop(), StochasticAdjoint(), Checkpointed(5))))
    if device.type == "cpu" and torch.get_num_threads() > 1:  # batch shards in CPU threads
        strategies.update(zip(SHARDED_STRATEGIES, (Sharded(Backprop()),
                                                   Sharded(StochasticAdjoint()))))
    return strategies


def compiled_name(name: str, mode: str) -> str:
    return f"{name} [compile {mode}]"


def make_steps(strategies: dict, n_steps: int, batch: int, width: int, depth: int,
               device: torch.device, seed: int, compile_mode: str | None = None,
               ) -> dict[str, tuple[Callable, Callable]]:
    """``name -> (train_step, forward_backward)`` with separate networks per strategy, all
    starting from the same weights; with ``compile_mode``, a compiled copy of each sdeflow
    strategy too (named by :func:`compiled_name`)."""
    torch.manual_seed(seed)
    drift0, score0 = fourier_mlp(width, depth).to(device), fourier_mlp(width, depth).to(device)
    grid = TimeGrid.power(n_steps, T0, T1, EXPONENT, device=device)
    x0 = torch.randn(batch, DIM, device=device)
    entries = [(name, strategy, None) for name, strategy in strategies.items()]
    if compile_mode is not None:
        entries += [(compiled_name(name, compile_mode), strategy, compile_mode)
                    for name, strategy in strategies.items()
                    if strategy is not None and not isinstance(strategy, Sharded)]
    steps = {}
    for name, strategy, mode in entries:
        if strategy is None:
            drift = ReferenceFourierMLP.from_fourier_mlp(drift0)
            score = ReferenceFourierMLP.from_fourier_mlp(score0)
            params = list(drift.parameters()) + list(score.parameters())

            def loss_fn(drift=drift, score=score, ref_loss=REFERENCES[name]):
                noise = torch.randn((n_steps, batch, DIM), device=device)
                return ref_loss(drift, score, x0, grid.ts, G, noise)
        else:
            drift = fourier_mlp(width, depth).to(device)
            score = fourier_mlp(width, depth).to(device)
            drift.load_state_dict(drift0.state_dict())
            score.load_state_dict(score0.state_dict())
            params = list(drift.parameters()) + list(score.parameters())
            if mode is not None:
                kwargs = {} if mode == "default" else {"mode": mode}
                drift, score = torch.compile(drift, **kwargs), torch.compile(score, **kwargs)
            reverse = ReverseSDE(ForwardSDE(drift, G), score)
            objective = DiffFlowObjective(reverse, StandardNormal((DIM,)).to(device), grid,
                                          gradient=strategy)

            def loss_fn(objective=objective):
                return objective(x0).loss
        optimizer = torch.optim.Adam(params, lr=1e-3)

        def forward_backward(loss_fn=loss_fn, optimizer=optimizer, graphs=mode is not None):
            if graphs:  # a new iteration: CUDA-graph outputs of the last one may be reused
                torch.compiler.cudagraph_mark_step_begin()
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


def check_same_gradient() -> dict[str, float]:
    """Max relative difference of the loss and of every parameter's gradient, each reference
    vs sdeflow's :class:`DiffFlowObjective` (Backprop), on the same weights and noise (float64,
    tiny nets; for a constant g the two losses are the same function)."""
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
    loss = objective(x0, noise=noise).loss
    ours = torch.autograd.grad(loss, [q for _, q in pairs])
    loss_diff = grad_diff = 0.0
    for ref_loss in REFERENCES.values():
        theirs_loss = ref_loss(ref_d, ref_s, x0, grid.ts, G, noise)
        theirs = torch.autograd.grad(theirs_loss, [p for p, _ in pairs])
        loss_diff = max(loss_diff, abs((theirs_loss - loss).item()) / abs(loss.item()))
        grad_diff = max(grad_diff, *(
            float((a.reshape(b.shape) - b).abs().max() / b.abs().max().clamp_min(1e-300))
            for a, b in zip(theirs, ours)))
    return {"loss": loss_diff, "gradient": grad_diff}


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 1000, 3 repeats")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps per strategy (compiled ones: at least "
                             f"{COMPILED_WARMUP})")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--strategies", type=_names, default=None,
                        help="comma-separated subset of the rows to run, e.g. "
                             "'reference,Backprop' (default: all)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                        help="also run each sdeflow strategy with both networks wrapped by "
                             "torch.compile(net, mode=...); reduce-overhead: CUDA graphs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-retain-memory", action="store_true",
                        help="leave glibc's malloc returning freed memory to the OS (see "
                        "sdeflow.training.retain_freed_memory)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1: steadier on a busy machine)")
    args = parser.parse_args(argv)
    if args.strategies is not None:
        known = [*REFERENCES, *BASE_STRATEGIES, *SHARDED_STRATEGIES]
        unknown = [n for n in args.strategies if n not in known]
        if unknown or not args.strategies:
            parser.error(f"--strategies: unknown {unknown or args.strategies}; choose from "
                         f"{known}")
    for name in ("batch", "repeats", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if any(n < 1 for n in args.steps):
        parser.error(f"--steps must be >= 1, got {args.steps}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    retained = False if args.no_retain_memory else retain_freed_memory()
    batch = args.batch or (1000 if args.quick else 5000)
    repeats = args.repeats or (3 if args.quick else 7)
    device = torch.device(args.device)
    strategies = all_strategies(device)
    if args.strategies is not None:
        missing = [n for n in args.strategies if n not in strategies]
        if missing:
            raise SystemExit(f"--strategies: {missing} run only on a CPU with more than one "
                             f"torch thread; here: {list(strategies)}")
        strategies = {n: strategies[n] for n in args.strategies}
    if args.compile_mode is not None:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)

    matmul, matmul_flops = matmul_op(device)
    diffs = check_same_gradient()
    print(f"max relative |ref - sdeflow|: loss {diffs['loss']:.1e}, "
          f"gradient {diffs['gradient']:.1e}")
    rates = []
    rows = []
    for n_steps in args.steps:
        steps = make_steps(strategies, n_steps, batch, args.width, args.depth, device, seed=0,
                           compile_mode=args.compile_mode)
        warmup_seconds, errors = {}, {}
        for name, (train_step, _) in list(steps.items()):  # warm-up (and Adam's state)
            compiled = name not in strategies
            started = time.perf_counter()
            try:
                for _ in range(max(args.warmup, COMPILED_WARMUP if compiled else 1)):
                    train_step()
                sync(device)
            except Exception as err:  # noqa: BLE001 -- a failed compilation: reported, not fatal
                if not compiled:
                    raise
                errors[name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"[:300]
                print(f"N={n_steps:3d} {name}: {errors[name]}", flush=True)
                del steps[name]
                continue
            warmup_seconds[name] = time.perf_counter() - started
        # The profiler sees only this thread: Sharded's threads get the RSS figure alone.
        memory = {name: None if isinstance(strategies.get(name), Sharded)
                  else peak_memory(fb, device) for name, (_, fb) in steps.items()}
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
        rate = matmul_flops / statistics.median(mm_times) if mm_times else float("nan")
        rates.append(rate)
        print(f"N={n_steps}: matmul rate {rate / 1e9:.1f} GFLOP/s")
        flops = useful_flops(n_steps, batch, args.width, args.depth)
        ref_time = {ref: statistics.median(times[ref]) if ref in times else None
                    for ref in REFERENCES}
        ref_memory = memory.get("reference")
        for name in [*steps, *errors]:
            if name in errors:
                rows.append(dict(strategy=name, n_steps=n_steps, error=errors[name]))
                continue
            sec = statistics.median(times[name])
            rows.append(dict(
                strategy=name, n_steps=n_steps, seconds=sec,
                speedup_vs_reference=_ratio(ref_time["reference"], sec),
                speedup_vs_reference_adjoint=_ratio(ref_time["reference-adjoint"], sec),
                peak_memory_mb=_mib(memory[name]),
                memory_vs_reference=(None if memory[name] is None or not ref_memory
                                     else memory[name] / ref_memory),
                peak_rss_mb=_mib(rss[name]), warmup_seconds=warmup_seconds[name],
                useful_gflops=flops / sec / 1e9, matmul_share=flops / sec / rate))
            row = rows[-1]
            print(f"N={n_steps:3d} {name:40s} {sec:8.4f} s  x{_fmt_x(row['speedup_vs_reference'])}"
                  f"  x{_fmt_x(row['speedup_vs_reference_adjoint'])} (adjoint)  allocated "
                  f"{_fmt_mib(row['peak_memory_mb'])} MiB  RSS {_fmt_mib(row['peak_rss_mb'])} MiB"
                  f"  share {flops / sec / rate:5.1%}", flush=True)
        del steps

    result = dict(
        config=dict(batch=batch, width=args.width, depth=args.depth, g=G, grid=[T0, T1, EXPONENT],
                    repeats=repeats, quick=args.quick, steps=args.steps,
                    strategies=list(strategies), compile_mode=args.compile_mode),
        machine=dict(device=str(device), name=(torch.cuda.get_device_name(device)
                                               if device.type == "cuda" else platform.processor()
                                               or platform.machine()),
                     cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                     freed_memory_retained=retained,
                     sdeflow=str(Path(sys.modules["sdeflow"].__file__).parent),
                     torch=torch.__version__, python=platform.python_version()),
        matmul_gflops=statistics.median(rates) / 1e9, reference_gradient_max_rel_diff=diffs[
            "gradient"], reference_loss_max_rel_diff=diffs["loss"],
        rows=rows, targets=targets(rows, args.steps),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_step.json").write_text(json.dumps(result, indent=2))
    (args.out / "train_step.md").write_text(markdown(result))
    print(markdown(result))
    return result


def _ratio(numerator: float | None, denominator: float) -> float | None:
    return None if numerator is None else numerator / denominator


def _fmt_x(value: float | None) -> str:
    return "  -  " if value is None else f"{value:5.2f}"


def targets(rows: list[dict], steps: list[int]) -> dict:
    """The issue's figures at N = 30 (else the largest N): the fastest sdeflow strategy and the
    adjoint against both references; memory growth from the smallest to the largest N."""
    timed = [r for r in rows if "seconds" in r]

    def ratio_hi_lo(name: str, key: str) -> float | None:
        at = {r["n_steps"]: r[key] for r in timed if r["strategy"] == name}
        lo, hi = at.get(min(steps)), at.get(max(steps))
        return None if lo is None or hi is None else hi / lo

    def at_mid(name: str) -> dict:
        return next((r for r in mid if r["strategy"] == name), {})

    n_mid = 30 if 30 in steps else max(steps)
    mid = [r for r in timed if r["n_steps"] == n_mid]
    ours = [r for r in mid if r["strategy"] not in REFERENCES]
    fastest = min(ours, key=lambda r: r["seconds"], default={})
    adjoint, sharded = at_mid("StochasticAdjoint"), at_mid("Sharded(StochasticAdjoint)")
    return {
        "n_steps": n_mid,
        "fastest_strategy": fastest.get("strategy"),
        "fastest_speedup_vs_reference": fastest.get("speedup_vs_reference"),
        "fastest_speedup_vs_reference_adjoint": fastest.get("speedup_vs_reference_adjoint"),
        "fastest_matmul_share": fastest.get("matmul_share"),
        "adjoint_speedup_vs_reference": adjoint.get("speedup_vs_reference"),
        "adjoint_speedup_vs_reference_adjoint": adjoint.get("speedup_vs_reference_adjoint"),
        "adjoint_memory_ratio_hi_lo": ratio_hi_lo("StochasticAdjoint", "peak_memory_mb"),
        "reference_memory_ratio_hi_lo": ratio_hi_lo("reference", "peak_memory_mb"),
        "reference_adjoint_memory_ratio_hi_lo": ratio_hi_lo("reference-adjoint",
                                                            "peak_memory_mb"),
        "adjoint_rss_ratio_hi_lo": ratio_hi_lo("StochasticAdjoint", "peak_rss_mb"),
        "sharded_adjoint_speedup_vs_reference": sharded.get("speedup_vs_reference"),
        "sharded_adjoint_speedup_vs_reference_adjoint": sharded.get(
            "speedup_vs_reference_adjoint"),
        "sharded_adjoint_rss_ratio_hi_lo": ratio_hi_lo("Sharded(StochasticAdjoint)",
                                                       "peak_rss_mb"),
        "reference_rss_ratio_hi_lo": ratio_hi_lo("reference", "peak_rss_mb"),
    }


def markdown(result: dict) -> str:
    c, m, t = result["config"], result["machine"], result["targets"]

    def x(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    lines = [
        f"DiffFlow training step, batch {c['batch']}, two FourierMLP(width {c['width']}, depth "
        f"{c['depth']}); {m['device']} ({m['name']}, {m['torch_threads']} threads, torch "
        f"{m['torch']}{', freed memory retained' if m.get('freed_memory_retained') else ''}); "
        f"float32 matmul {result['matmul_gflops']:.1f} GFLOP/s (median; the "
        f"share uses the rate measured alongside each N). `reference` and `reference-adjoint`: "
        f"the official algorithm as written (naive backprop and stochastic adjoint, "
        f"`benchmarks/reference_diffflow.py`).",
        "",
        "| N | strategy | s / step | vs reference | vs reference-adjoint | peak allocated (MiB) "
        "| allocated vs reference | peak RSS rise (MiB) | share of matmul rate |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['n_steps']} | {r['strategy']} | {r['error']} | | | | | | |")
            continue
        vs_ref = r.get("memory_vs_reference")
        lines.append(f"| {r['n_steps']} | {r['strategy']} | {r['seconds']:.4f} | "
                     f"{x(r.get('speedup_vs_reference'))} | "
                     f"{x(r.get('speedup_vs_reference_adjoint'))} | "
                     f"{_fmt_mib(r.get('peak_memory_mb'))} | "
                     f"{'-' if vs_ref is None else f'{vs_ref:.2f}'} | "
                     f"{_fmt_mib(r.get('peak_rss_mb'))} | {r['matmul_share']:.0%} |")
    lines += [
        "",
        "Peak allocated: PyTorch's CPU allocations in the thread that runs the step "
        "(`torch.profiler`; CUDA: `max_memory_allocated`), so not for `Sharded`, whose shards "
        "run in their own threads. Peak RSS rise: the process's resident-set high-water mark "
        "over the step, every thread and the C library's own overhead included (Linux).",
        "",
        f"Targets (N = {t.get('n_steps', 30)}): fastest ({t['fastest_strategy']}) "
        f"{x(t['fastest_speedup_vs_reference'])} the reference and "
        f"{x(t.get('fastest_speedup_vs_reference_adjoint'))} the reference adjoint, at "
        f"{pct(t['fastest_matmul_share'])} of the matmul rate; StochasticAdjoint "
        f"{x(t['adjoint_speedup_vs_reference'])} the reference and "
        f"{x(t.get('adjoint_speedup_vs_reference_adjoint'))} the reference adjoint, its peak "
        f"allocated memory at the largest N {x(t['adjoint_memory_ratio_hi_lo'])} that at the "
        f"smallest (reference: {x(t['reference_memory_ratio_hi_lo'])}, reference adjoint: "
        f"{x(t.get('reference_adjoint_memory_ratio_hi_lo'))}); peak RSS rise, largest N over "
        f"smallest: StochasticAdjoint {x(t.get('adjoint_rss_ratio_hi_lo'))}, "
        f"Sharded(StochasticAdjoint) {x(t.get('sharded_adjoint_rss_ratio_hi_lo'))}, reference "
        f"{x(t.get('reference_rss_ratio_hi_lo'))}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
