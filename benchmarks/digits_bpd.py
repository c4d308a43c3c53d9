r"""Bits/dim on real images that fit 2 CPU cores: scikit-learn's 8x8 digits (17 levels).

Models, each trained for the same wall-clock budget (``--budget-seconds``) from the same seed
and data, then evaluated with its EMA weights on the same held-out images (one fixed
dequantization of the test split):

- ``diffflow-mlp``: DiffFlow (trainable drift and score, g = 1, power grid N = 30 on
  ``[1e-3, T]``) with Fourier-feature MLPs on the flattened 64 values; bits/dim by the
  trajectory ELBO and by the probability-flow ODE. One row per ``--t1`` value: ``T = 0.1`` is
  the paper's MNIST configuration, in which the drift alone must carry the data to the prior
  (long training); with ``T = 1`` the noise does most of it, which trains much faster in a
  short CPU budget (measured: 3.58 against 4.42 ODE bits/dim after 60 s).
- ``diffflow-unet`` (not in the default set): the same with small U-Nets (ch 16, multipliers
  1,2) on the ``1 x 8 x 8`` images. Measured on one thread at batch 128, N = 30: 6 s per step
  against 0.14 s for the MLPs, so in a CPU budget it trains about 40x fewer steps.
- ``score``: sdeflow's score-based model (VP SDE, denoising score matching) with a Fourier MLP;
  bits/dim by the ODE (and its Euler–Maruyama trajectory ELBO).
- ``nsf``: zuko's neural spline flow over the 64 values (exact likelihood).

All bits/dim use the same convention (:func:`sdeflow.bits_per_dim` with
``levels=17``): an upper bound on the discrete data's bits/dim; a uniform model scores
``log2(17) = 4.09``. ODE likelihoods use Hutchinson's trace (``--probes`` Rademacher probes)
with dopri5 at ``rtol = atol = 1e-5``.

Run::

    python benchmarks/digits_bpd.py                  # 120 s per model, writes the results
    python benchmarks/digits_bpd.py --quick          # 15 s per model, a smoke figure

writes ``benchmarks/results/digits_bpd.json`` and ``.md`` (``digits_bpd_quick.*`` with
``--quick``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from sdeflow import VPSDE, StandardNormal, TimeGrid, bits_per_dim
from sdeflow.data import Digits, dequantize
from sdeflow.nets import FourierMLP, UNet
from sdeflow.training.ema import EMA
from sdeflow.training.models import DiffFlowModel, ScoreModel

LEVELS, DIMS, STATE = 17, 64, (1, 8, 8)
MODELS = ("diffflow-mlp", "diffflow-unet", "score", "nsf")
#: The default set: the U-Net variant's steps cost about 40x the MLP's on a CPU (see above).
DEFAULT_MODELS = ("diffflow-mlp", "score", "nsf")


def build(name: str, width: int, t1: float = 0.1,
          n_steps: int = 30) -> tuple[nn.Module, Callable[[Tensor], Tensor], float]:
    """``(module, loss_fn(batch) -> scalar, learning rate)`` for model ``name``."""
    if name.startswith("diffflow"):
        if name == "diffflow-mlp":
            drift, score = FourierMLP(DIMS, width, 3), FourierMLP(DIMS, width, 3)
        else:
            def unet() -> UNet:
                return UNet(1, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                            dropout=0.0, image_size=8)
            drift, score = unet(), unet()
        model = DiffFlowModel(drift, score, 1.0, TimeGrid.power(n_steps, 1e-3, t1, 0.9),
                              StandardNormal(STATE))
        return model, lambda x: model.loss(x, step=1)[0], 1e-3
    if name == "score":
        model = ScoreModel(FourierMLP(DIMS, width, 3), VPSDE(), STATE, eps=1e-3)
        return model, lambda x: model.loss(x, step=1)[0], 1e-3
    if name == "nsf":
        import zuko

        flow = zuko.flows.NSF(DIMS, transforms=3, hidden_features=(width, width))
        return flow, lambda x: -flow().log_prob(x.reshape(x.shape[0], -1)).mean(), 1e-3
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def train(name: str, args: argparse.Namespace, train_levels: Tensor, t1: float,
          label: str) -> tuple[EMA, dict]:
    torch.manual_seed(args.seed)
    module, loss_fn, lr = build(name, args.width, t1, args.n_steps)
    ema = EMA(module, decay=0.999)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(args.seed)
    n_params = sum(p.numel() for p in module.parameters())
    steps, losses, start = 0, [], time.perf_counter()
    while time.perf_counter() - start < args.budget_seconds:
        index = torch.randint(0, train_levels.shape[0], (args.batch_size,), generator=gen)
        x = dequantize(train_levels[index], LEVELS, generator=gen)
        loss = loss_fn(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        ema.update(module)
        steps += 1
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"{name}: non-finite loss at step {steps}")
    seconds = time.perf_counter() - start
    tail = losses[-max(1, len(losses) // 10):]
    info = {"steps": steps, "train_seconds": round(seconds, 1), "params": n_params,
            "final_loss": sum(tail) / len(tail)}
    print(f"  {label}: {steps} steps in {seconds:.0f} s, {n_params} parameters, "
          f"loss {info['final_loss']:.2f}", flush=True)
    return ema, info


def evaluate(name: str, ema: EMA, x: Tensor, args: argparse.Namespace) -> dict:
    model = ema.module
    gen = torch.Generator().manual_seed(args.seed + 1)
    start = time.perf_counter()

    def bpd(nll: Tensor) -> float:
        return float(bits_per_dim(nll.mean(), DIMS, levels=LEVELS))

    out: dict[str, float | None] = {"bpd_elbo": None, "bpd_ode": None, "bpd_exact": None}
    if name == "nsf":
        with torch.no_grad():
            out["bpd_exact"] = bpd(-model().log_prob(x.reshape(x.shape[0], -1)))
    else:
        with torch.no_grad():
            nelbo = torch.stack([model.nelbo(x) for _ in range(args.elbo_draws)]).mean(0)
        out["bpd_elbo"] = bpd(nelbo)
        ode = functools.partial(model.log_likelihood, trace="hutchinson", n_probes=args.probes,
                                rtol=1e-5, atol=1e-5, generator=gen)
        out["bpd_ode"] = bpd(-torch.cat([ode(chunk) for chunk in x.split(args.eval_batch)]))
    out["eval_seconds"] = round(time.perf_counter() - start, 1)
    return out


def to_markdown(results: dict) -> str:
    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    lines = [
        f"Digits 8x8 (17 levels), {results['config']['budget_seconds']:g} s of training per "
        f"model on {results['machine']['threads']} CPU threads; bits/dim on "
        f"{results['config']['n_test']} held-out images (lower is better; uniform = 4.087).",
        "",
        "| model | parameters | steps | ELBO bpd | ODE bpd | exact bpd |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["models"].items():
        lines.append(f"| {name} | {r['params']:,} | {r['steps']} | {fmt(r['bpd_elbo'])} | "
                     f"{fmt(r['bpd_ode'])} | {fmt(r['bpd_exact'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-seconds", type=float, default=120.0,
                        help="training wall-clock per model (default 120)")
    parser.add_argument("--quick", action="store_true",
                        help="15 s per model, one probe, fewer ELBO draws")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS)
    parser.add_argument("--width", type=int, default=128, help="MLP width / flow hidden width")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--t1", type=float, nargs="+", default=[0.1, 1.0],
                        help="DiffFlow's T, one row each (the paper's MNIST value: 0.1)")
    parser.add_argument("--n-steps", type=int, default=30, help="DiffFlow's grid steps N")
    parser.add_argument("--probes", type=int, default=4, help="Hutchinson probes per image")
    parser.add_argument("--elbo-draws", type=int, default=4,
                        help="trajectories per image averaged in the ELBO")
    parser.add_argument("--eval-batch", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: stable timings on a shared machine)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output prefix (default benchmarks/results/digits_bpd[_quick])")
    args = parser.parse_args(argv)
    if args.quick:
        args.budget_seconds = min(args.budget_seconds, 15.0)
        args.probes, args.elbo_draws = 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.budget_seconds <= 0:
        parser.error(f"--budget-seconds must be > 0, got {args.budget_seconds}")
    default = "digits_bpd_quick" if args.quick else "digits_bpd"
    out = args.out or Path(__file__).resolve().parent / "results" / default

    train_set, test_set = Digits(train=True), Digits(train=False)
    x_test = dequantize(test_set.data, LEVELS, generator=torch.Generator().manual_seed(1234))
    results: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {"n_train": len(train_set), "n_test": len(test_set)},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": sys.version.split()[0]},
        "models": {},
    }
    runs = [(f"{name} T={t1:g}" if name.startswith("diffflow") else name, name, t1)
            for name in args.models for t1 in (args.t1 if name.startswith("diffflow") else [0])]
    for label, name, t1 in runs:
        print(f"training {label} for {args.budget_seconds:g} s", flush=True)
        ema, info = train(name, args, train_set.data, t1, label)
        info |= evaluate(name, ema, x_test, args)
        print(f"  {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in info.items()
                                         if k.startswith("bpd") and v is not None), flush=True)
        results["models"][label] = info
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    table = to_markdown(results)
    out.with_suffix(".md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    main()
