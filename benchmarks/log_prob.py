r"""The model as a distribution: ``log_prob`` throughput, and DiffFlow's Pyro form against its
objective.

1. ``ProbabilityFlowDistribution.log_prob`` (the probability-flow ODE's exact density, dopri5 at
   ``rtol = atol = 1e-5``) in points per second, with the exact trace and with Hutchinson's
   estimator (one Rademacher probe), on 2D points (the 2D recipe's networks: FourierMLP
   128 x 3, ``g = 0.2``, checkerboard points) and on 8x8 digits (64 elements per state, FourierMLP
   256 x 3, ``g = 1``, dequantized digits scaled to ``[-1, 1]``); under ``torch.no_grad`` (no
   graph) and, for 2D, with the graph kept and ``backward`` through it (``create_graph``). The
   networks are untrained: the solver's number of steps (NFE column) depends on the field.
2. One SVI step (``pyro.infer.SVI`` with ``Trace_ELBO`` on :class:`~sdeflow.DiffFlowVI`'s model
   and guide, ``pyro.optim.Adam``) against one objective step (``DiffFlowObjective``, Backprop,
   ``torch.optim.Adam``) at the 2D recipe (N = 30 power grid on ``[1e-3, 0.05]``, g = 0.2,
   FourierMLP 128 x 3), at a smaller batch than the recipe's 5000 (``--batch``), interleaved.

Writes ``benchmarks/results/log_prob.json`` and ``log_prob.md``. Run (about 3 minutes on 2
threads)::

    python benchmarks/log_prob.py --threads 2
    python benchmarks/log_prob.py --quick      # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from sdeflow import (
    DiffFlowObjective,
    DiffFlowVI,
    ForwardSDE,
    ProbabilityFlowDistribution,
    ReverseSDE,
    StandardNormal,
    TimeGrid,
)
from sdeflow.data import Digits, load_toy
from sdeflow.nets import FourierMLP

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


class _Counter:
    """Counts a network's forward calls (one per right-hand-side evaluation of the ODE)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.calls = 0
        net.register_forward_hook(lambda *_: self._hit())

    def _hit(self) -> None:
        self.calls += 1


def model_2d() -> tuple[ReverseSDE, StandardNormal, TimeGrid, torch.nn.Module]:
    drift, score = FourierMLP(2, 128, 3), FourierMLP(2, 128, 3)
    return (ReverseSDE(ForwardSDE(drift, 0.2), score), StandardNormal((2,)),
            TimeGrid.power(30, 1e-3, 0.05, 0.9), score)


def model_digits() -> tuple[ReverseSDE, StandardNormal, TimeGrid, torch.nn.Module]:
    drift, score = FourierMLP(64, 256, 3), FourierMLP(64, 256, 3)
    return (ReverseSDE(ForwardSDE(drift, 1.0), score), StandardNormal((1, 8, 8)),
            TimeGrid.power(30, 1e-3, 0.1, 0.5), score)


def time_log_prob(name: str, make, x: torch.Tensor, trace: str, grad: bool,
                  repeats: int) -> dict:
    torch.manual_seed(0)
    reverse, prior, grid, score = make()
    counter = _Counter(score)
    d = ProbabilityFlowDistribution(reverse, prior, grid, trace=trace)
    times, nfes = [], []
    for _ in range(repeats + 1):  # the first call warms up
        counter.calls = 0
        t = time.perf_counter()
        if grad:
            d.log_prob(x).sum().backward()
        else:
            with torch.no_grad():
                d.log_prob(x)
        times.append(time.perf_counter() - t)
        nfes.append(counter.calls)
    times = times[1:]
    sec = statistics.median(times)
    return {"model": name, "trace": trace, "graph": grad, "batch": len(x),
            "seconds": sec, "points_per_s": len(x) / sec, "nfe": nfes[-1]}


def time_svi_vs_objective(batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    reverse, prior, grid, _ = model_2d()
    data, _, _ = load_toy("checkerboard", n_train=20_000, n_test=10, seed=0)
    objective = DiffFlowObjective(reverse, prior, grid)
    optimizer = torch.optim.Adam(reverse.parameters(), lr=1e-3)
    vi = DiffFlowVI(reverse, prior, grid)
    pyro.clear_param_store()
    svi = SVI(vi.model, vi.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    def objective_step(x0):
        loss = objective(x0).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    times = {"svi": [], "objective": []}
    for k in range(repeats + 1):
        x0 = data[torch.randint(len(data), (batch,))]
        for name, step in (("objective", objective_step), ("svi", svi.step)):
            t = time.perf_counter()
            step(x0)
            if k:  # the first round warms up
                times[name].append(time.perf_counter() - t)
    svi_s, obj_s = statistics.median(times["svi"]), statistics.median(times["objective"])
    return {"batch": batch, "n_steps": grid.n_steps, "svi_seconds": svi_s,
            "objective_seconds": obj_s, "ratio": svi_s / obj_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1000, help="SVI/objective batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n2d, ndig = (200, 16) if args.quick else (2000, 256)
    repeats = 1 if args.quick else args.repeats

    x2d, _, _ = load_toy("checkerboard", n_train=n2d, n_test=10, seed=0)
    digits = Digits(train=False, dequantize=False)
    levels = digits.data[:ndig].to(torch.float32)
    xdig = (levels + 0.5) / digits.levels * 2 - 1

    rows = [
        time_log_prob("2D", model_2d, x2d, "exact", False, repeats),
        time_log_prob("2D", model_2d, x2d, "hutchinson", False, repeats),
        time_log_prob("2D", model_2d, x2d, "exact", True, repeats),
        time_log_prob("8x8 digits", model_digits, xdig, "hutchinson", False, repeats),
        time_log_prob("8x8 digits", model_digits, xdig[: max(1, ndig // 4)], "exact", False,
                      repeats),
    ]
    svi = time_svi_vs_objective(200 if args.quick else args.batch, repeats)
    meta = {"threads": args.threads, "torch": torch.__version__, "pyro": pyro.__version__,
            "machine": platform.processor() or platform.machine(), "quick": args.quick,
            "note": "a shared machine (other jobs running): figures are indicative"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "log_prob.json").write_text(
        json.dumps({"log_prob": rows, "svi_vs_objective": svi, "meta": meta}, indent=2) + "\n")

    lines = ["| model | trace | graph kept | batch | points/s | seconds | NFE |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['trace']} | {'yes + backward' if r['graph'] else 'no'}"
                     f" | {r['batch']} | {r['points_per_s']:.0f} | {r['seconds']:.2f} | "
                     f"{r['nfe']} |")
    lines += ["", "| 2D recipe step (N = 30, FourierMLP 128 x 3) | batch | seconds | ratio |",
              "|---|---|---|---|",
              f"| `DiffFlowObjective` + `torch.optim.Adam` | {svi['batch']} | "
              f"{svi['objective_seconds']:.3f} | 1 |",
              f"| `SVI(DiffFlowVI.model, .guide, Adam, Trace_ELBO())` | {svi['batch']} | "
              f"{svi['svi_seconds']:.3f} | {svi['ratio']:.2f} |",
              "", f"{args.threads} threads, torch {torch.__version__}, pyro {pyro.__version__}; "
              "a machine shared with other jobs, so the figures are indicative."]
    (RESULTS / "log_prob.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
