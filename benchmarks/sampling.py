r"""Sampling benchmark: ``sdeflow.sample`` against ``torchsde.sdeint(method="euler")``.

The paper's 2D configuration (drift and score ``FourierMLP(2, 128, 3)``, g = 0.2, t in
[1e-3, 0.05]) on a uniform grid of N steps, N in {30, 100}, batch 5000, the reverse SDE
(lambda = 1) from a standard normal prior, no final denoising step (torchsde has none). torchsde
integrates the same process through a minimal inline adapter (time ``s = -t``, so that it runs
forward in ``s``) with fixed step ``dt`` equal to the grid step; both make 2 network calls per
step (drift and score).

Reported: samples per second (median over interleaved repeats) and the share of time spent
outside the network evaluations, ``T_stub / T``, where ``T_stub`` is the time of the same
sampler with both networks replaced by a stub returning a preallocated tensor (so all that is
left is the sampler's own work: noise, arithmetic, Python), measured directly rather than as a
difference of two noisy totals (target: under 10%).

Run ``python benchmarks/sampling.py`` (``--quick``: batch 1000, 3 repeats). Writes
``benchmarks/results/sampling.json`` and ``benchmarks/results/sampling.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchsde
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdeflow import ForwardSDE, ReverseSDE, StandardNormal, TimeGrid, sample  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
G, T0, T1, DIM = 0.2, 1e-3, 0.05, 2


class Stub(nn.Module):
    """A zero-cost stand-in for a network: returns a preallocated tensor shaped like ``x``."""

    def __init__(self, out: Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.out


class TorchsdeReverse(nn.Module):
    r"""A :class:`~sdeflow.processes.ReverseSDE` as a torchsde SDE in reversed time
    :math:`s = -t`: :math:`dy = -b(y, -s)\,ds + \sigma(-s)\,dW_s`, so that Euler in :math:`s`
    with step :math:`dt` is the reverse Euler–Maruyama step from :math:`t` to :math:`t - dt`."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, reverse: ReverseSDE) -> None:
        super().__init__()
        self.reverse = reverse
        self.calls = 0

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        return -self.reverse.drift(y, -s)

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        return self.reverse.diffusion(y, -s).expand_as(y)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def fourier_mlp():
    from sdeflow.nets import FourierMLP  # imported lazily: written alongside this benchmark

    return FourierMLP(DIM, width=128, depth=3, activation="gelu")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 1000, 3 repeats")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--steps", type=int, nargs="+", default=[30, 100])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1: steadier on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (1000 if args.quick else 5000)
    repeats = args.repeats or (3 if args.quick else 7)
    device = torch.device(args.device)
    torch.manual_seed(0)
    drift, score = fourier_mlp().to(device), fourier_mlp().to(device)
    reverse = ReverseSDE(ForwardSDE(drift, G), score)
    prior = StandardNormal((DIM,)).to(device)
    adapter = TorchsdeReverse(reverse)
    rows = []
    with torch.no_grad():
        for n_steps in args.steps:
            grid = TimeGrid.uniform(n_steps, T0, T1, device=device)
            x_final = torch.randn(batch, DIM, device=device)
            ts_rev = (-grid.ts[[-1, 0]]).contiguous()
            step = (T1 - T0) / n_steps * (1 + 1e-9)  # no extra sliver step from rounding

            def run_sdeflow(grid=grid, x_final=x_final):
                return sample(reverse, prior, grid, x_final=x_final, denoise=False)

            def run_torchsde(ts_rev=ts_rev, step=step, x_final=x_final):
                return torchsde.sdeint(adapter, x_final, ts_rev, method="euler", dt=step)[-1]

            stub = Stub(torch.zeros(batch, DIM, device=device))
            reverse_stub = ReverseSDE(ForwardSDE(stub, G), stub)
            adapter_stub = TorchsdeReverse(reverse_stub)

            def run_sdeflow_stub(grid=grid, x_final=x_final, reverse_stub=reverse_stub):
                return sample(reverse_stub, prior, grid, x_final=x_final, denoise=False)

            def run_torchsde_stub(ts_rev=ts_rev, step=step, x_final=x_final,
                                  adapter_stub=adapter_stub):
                return torchsde.sdeint(adapter_stub, x_final, ts_rev, method="euler",
                                       dt=step)[-1]

            adapter.calls = 0
            run_torchsde()
            torchsde_calls = adapter.calls
            runs = {"sdeflow": run_sdeflow, "torchsde": run_torchsde,
                    "sdeflow stub": run_sdeflow_stub, "torchsde stub": run_torchsde_stub}
            for fn in runs.values():  # warm-up
                fn()
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(repeats):
                for name, fn in runs.items():
                    times[name].append(timed(fn, device))
            for name in ("sdeflow", "torchsde"):
                sec = statistics.median(times[name])
                outside = min(1.0, statistics.median(times[name + " stub"]) / sec)
                rows.append(dict(method=name, n_steps=n_steps, seconds=sec,
                                 samples_per_second=batch / sec, outside_network_share=outside,
                                 drift_calls=(n_steps if name == "sdeflow" else torchsde_calls)))
                print(f"N={n_steps:3d} {name:9s} {sec:8.4f} s  {batch / sec:10.0f} samples/s  "
                      f"outside nets {outside:6.1%}")
    result = dict(
        config=dict(batch=batch, repeats=repeats, g=G, t0=T0, t1=T1, steps=args.steps,
                    quick=args.quick, torchsde=torchsde.__version__),
        machine=dict(device=str(device), name=(torch.cuda.get_device_name(device)
                                               if device.type == "cuda" else platform.processor()
                                               or platform.machine()),
                     cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                     sdeflow=str(Path(sys.modules["sdeflow"].__file__).parent),
                     torch=torch.__version__),
        rows=rows,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sampling.json").write_text(json.dumps(result, indent=2))
    (args.out / "sampling.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    c, m = result["config"], result["machine"]
    lines = [
        f"Sampling the reverse SDE, batch {c['batch']}, two FourierMLP(2, 128, 3); {m['device']} "
        f"({m['name']}, {m['torch_threads']} threads, torch {m['torch']}, torchsde "
        f"{c['torchsde']}).",
        "",
        "| N | method | s | samples / s | vs torchsde | time outside networks |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        base = next(q for q in result["rows"]
                    if q["n_steps"] == r["n_steps"] and q["method"] == "torchsde")
        lines.append(f"| {r['n_steps']} | {r['method']} | {r['seconds']:.4f} | "
                     f"{r['samples_per_second']:.0f} | {base['seconds'] / r['seconds']:.2f}x | "
                     f"{r['outside_network_share']:.1%} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
