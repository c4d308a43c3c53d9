r"""Test NLL on DiffFlow's 2D data sets: sdeflow's DiffFlow, score-based model and flow against
zuko's neural spline flow, each trained for the same wall-clock budget in the same run.

For every data set (:func:`sdeflow.data.load_toy`: train and held-out test samples of one seed,
standardized by the map fitted on the training sample) and every model, the same seed, the same
batches, Adam with a learning rate decaying linearly in elapsed time to 10%, gradient clipping at
1.0 and EMA weights (evaluated), then on the test sample:

========  ==============================================  =================================
model     training                                        test NLL (exact, nats)
========  ==============================================  =================================
diffflow  trajectory KL (negative ELBO), ``g = 0.2``,      probability-flow ODE
          N = 30 power grid on ``[1e-3, 0.05]`` jittered   :math:`v = f - g^2 s / 2`; also
          every step; FourierMLP 128 x 3 drift and score   the ELBO on the fixed grid
score     VP SDE + denoising score matching, ``t >= 1e-3``  probability-flow ODE on [1e-3, 1]
flow      :math:`g = 0`: exact NLL of the Euler flow on    the continuous flow's ODE (and
          the DiffFlow grid (FlowNLL)                      the Euler flow's exact NLL)
nsf       ``zuko.flows.NSF`` (maximum likelihood)          exact
========  ==============================================  =================================

NLLs are in the standardized coordinates the models see and in the data's own coordinates
(``nll_data = nll - log|det T|`` of the preprocessing map ``T``). Writes
``benchmarks/results/toy_nll.json``, ``toy_nll.md`` (tables) and ``toy_samples.png`` (rows: data and
models, columns: data sets).

Run (the lead's full run; about ``budget x models x datasets`` plus evaluation)::

    python benchmarks/toy_nll.py --budget-seconds 60
    python benchmarks/toy_nll.py --quick        # smoke run: seconds per model, small test set

Requires ``zuko`` (benchmark-only dependency: ``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torchdiffeq import odeint
from tqdm import tqdm

from sdeflow import (
    VPSDE,
    DenoisingScoreMatching,
    DiffFlowObjective,
    FlowNLL,
    ForwardSDE,
    ReverseSDE,
    StandardNormal,
    TimeGrid,
    probability_flow,
    sample,
)
from sdeflow.data import TOY_DATASETS, load_toy
from sdeflow.gradients import Backprop, GradientStrategy
from sdeflow.likelihood import ode_log_likelihood
from sdeflow.nets import FourierMLP
from sdeflow.plotting import plot_sample_grid_2d

MODELS = ("diffflow", "score", "flow", "nsf")
DEFAULT_DATASETS = ("checkerboard", "2spirals", "8gaussians", "olympic", "swissroll", "moons",
                    "sierpinski", "tree")
#: Sets whose density has sharp edges (no or tiny Gaussian blur): where DiffFlow should win.
SHARP = ("checkerboard", "sierpinski", "tree", "2spirals", "olympic", "swissroll", "moons")
RESULTS = Path(__file__).resolve().parent / "results"


def _span(t0: float, t1: float, like: torch.Tensor) -> TimeGrid:
    """The likelihood's time description: data at t0, prior at t1, in ``like``'s dtype."""
    return TimeGrid(torch.tensor([t0, t1], dtype=like.dtype, device=like.device))


@dataclass
class Config:
    budget_seconds: float = 60.0
    n_train: int = 50_000
    n_test: int = 2_000
    batch_size: int = 1_000
    #: Adam learning rate per model (``--lr`` sets one for all): the paper's 1e-2 for
    #: DiffFlow's nets is halved for the smaller batch; 1e-3 is zuko's usual rate.
    lr: dict = field(default_factory=lambda: {"diffflow": 5e-3, "score": 2e-3, "flow": 5e-3,
                                              "nsf": 1e-3})
    width: int = 128
    depth: int = 3
    seed: int = 0
    rtol: float = 1e-5
    atol: float = 1e-5
    n_samples: int = 4_000
    ema: float = 0.999
    # DiffFlow (DESIGN §4, 2D column)
    n_steps: int = 30
    t0: float = 1e-3
    t1: float = 0.05
    exponent: float = 0.9
    g: float = 0.2
    # score-based model
    score_eps: float = 1e-3
    score_sample_steps: int = 500
    # zuko NSF
    nsf_transforms: int = 5
    nsf_hidden: tuple[int, ...] = (128, 128, 128)
    datasets: tuple[str, ...] = DEFAULT_DATASETS
    models: tuple[str, ...] = MODELS
    extra: dict = field(default_factory=dict)


# -- models: each exposes loss(x, gen), log_prob(x) -> (B,), sample(n, gen), extra(x) -> dict ---

class _EMA:
    """EMA of the parameters with warm-up (decay ``min(ema, (1 + k) / (10 + k))``)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.module, self.decay, self.k = module, decay, 0
        self.shadow = copy.deepcopy(module).requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        self.k += 1
        d = min(self.decay, (1 + self.k) / (10 + self.k))
        for s, p in zip(self.shadow.parameters(), self.module.parameters()):
            s.lerp_(p, 1 - d)


class DiffFlowBench(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.drift = FourierMLP(2, cfg.width, cfg.depth)
        self.score = FourierMLP(2, cfg.width, cfg.depth)
        self.grid = TimeGrid.power(cfg.n_steps, cfg.t0, cfg.t1, cfg.exponent)
        self.gradient: GradientStrategy = Backprop()

    def parts(self) -> tuple[ReverseSDE, StandardNormal]:
        forward = ForwardSDE(self.drift, self.cfg.g)
        return ReverseSDE(forward, self.score), StandardNormal((2,))

    def loss(self, x: Tensor, gen: torch.Generator) -> Tensor:
        reverse, prior = self.parts()
        objective = DiffFlowObjective(reverse, prior, gradient=self.gradient)
        return objective(x, self.grid.jitter(gen), generator=gen).loss

    def log_prob(self, x: Tensor, cfg: Config) -> tuple[Tensor, int]:
        reverse, prior = self.parts()
        res = ode_log_likelihood(reverse.with_lam(0.0), prior, _span(cfg.t0, cfg.t1, x), x,
                                 rtol=cfg.rtol, atol=cfg.atol)
        return res.log_prob, res.nfe

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        reverse, prior = self.parts()
        z = torch.randn(n, 2, generator=gen)
        return sample(reverse, prior, self.grid, x_final=z, generator=gen)

    @torch.no_grad()
    def extra(self, x: Tensor, gen: torch.Generator) -> dict[str, Tensor]:
        reverse, prior = self.parts()
        nelbo = DiffFlowObjective(reverse, prior, self.grid)(x, generator=gen).nelbo
        return {"elbo_nll": nelbo}


class ScoreBench(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.sde = VPSDE()
        self.score = FourierMLP(2, cfg.width, cfg.depth)

    def loss(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return DenoisingScoreMatching(self.sde, self.score, eps=self.cfg.score_eps)(x, gen).loss

    def log_prob(self, x: Tensor, cfg: Config) -> tuple[Tensor, int]:
        res = ode_log_likelihood(probability_flow(self.sde, self.score), self.sde.prior((2,)),
                                 _span(cfg.score_eps, self.sde.T, x), x,
                                 rtol=cfg.rtol, atol=cfg.atol)
        return res.log_prob, res.nfe

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        grid = TimeGrid.uniform(self.cfg.score_sample_steps, self.cfg.score_eps, self.sde.T)
        z = torch.randn(n, 2, generator=gen)
        return sample(ReverseSDE(self.sde, self.score), self.sde.prior((2,)), grid, x_final=z,
                      generator=gen)

    def extra(self, x: Tensor, gen: torch.Generator) -> dict[str, Tensor]:
        return {}


class FlowBench(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.drift = FourierMLP(2, cfg.width, cfg.depth)
        self.grid = TimeGrid.power(cfg.n_steps, cfg.t0, cfg.t1, cfg.exponent)

    def flow(self) -> ForwardSDE:
        return ForwardSDE(self.drift, 0.0)

    def loss(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return FlowNLL(self.flow(), StandardNormal((2,)))(x, self.grid.jitter(gen)).loss

    def log_prob(self, x: Tensor, cfg: Config) -> tuple[Tensor, int]:
        res = ode_log_likelihood(self.flow(), StandardNormal((2,)), _span(cfg.t0, cfg.t1, x), x,
                                 rtol=cfg.rtol, atol=cfg.atol)
        return res.log_prob, res.nfe

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        # the exact inverse of the continuous flow whose NLL is reported
        z = torch.randn(n, 2, generator=gen)
        ts = torch.tensor([self.cfg.t1, self.cfg.t0])
        return odeint(lambda t, x: self.drift(x, t), z, ts, rtol=self.cfg.rtol,
                      atol=self.cfg.atol)[-1]

    def extra(self, x: Tensor, gen: torch.Generator) -> dict[str, Tensor]:
        return {"euler_nll": FlowNLL(self.flow(), StandardNormal((2,)), self.grid)(x).nll.detach()}


class NSFBench(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        import zuko

        self.flow = zuko.flows.NSF(2, transforms=cfg.nsf_transforms,
                                   hidden_features=cfg.nsf_hidden)

    def loss(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return -self.flow().log_prob(x).mean()

    @torch.no_grad()
    def log_prob(self, x: Tensor, cfg: Config) -> tuple[Tensor, int]:
        return self.flow().log_prob(x), 0

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))  # zuko: global RNG
        return self.flow().sample((n,))

    def extra(self, x: Tensor, gen: torch.Generator) -> dict[str, Tensor]:
        return {}


BUILDERS: dict[str, Callable[[Config], nn.Module]] = {
    "diffflow": DiffFlowBench, "score": ScoreBench, "flow": FlowBench, "nsf": NSFBench,
}


# -- training and evaluation -----------------------------------------------------------------------

def train(model: nn.Module, train_x: Tensor, cfg: Config, seed: int, lr: float) -> dict:
    """Adam for ``cfg.budget_seconds`` of wall clock; returns the EMA model and statistics.

    The budget is checked before each step, so the last step may end past it.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ema = _EMA(model, cfg.ema)
    steps, losses, start = 0, [], time.perf_counter()
    while (elapsed := time.perf_counter() - start) < cfg.budget_seconds:
        for group in opt.param_groups:  # linear decay to 10% over the budget
            group["lr"] = lr * (1 - 0.9 * elapsed / cfg.budget_seconds)
        idx = torch.randint(train_x.shape[0], (cfg.batch_size,), generator=gen)
        loss = model.loss(train_x[idx], gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {steps}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update()
        steps += 1
        losses.append(float(loss.detach()))
    return {"model": ema.shadow, "steps": steps, "train_seconds": time.perf_counter() - start,
            "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}


def _mean_se(v: Tensor) -> tuple[float, float]:
    v = v[torch.isfinite(v)]
    return float(v.mean()), float(v.std() / math.sqrt(max(1, v.numel())))


def evaluate(model: nn.Module, test_x: Tensor, log_abs_det: float, cfg: Config,
             seed: int) -> tuple[dict, Tensor]:
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed + 1)
    model.eval()
    log_prob, nfe = model.log_prob(test_x, cfg)
    nll = -log_prob.detach()
    mean, se = _mean_se(nll)
    out = {"nll": mean, "nll_se": se, "nll_data": mean - log_abs_det, "nfe": nfe,
           "nonfinite": int((~torch.isfinite(nll)).sum())}
    for key, value in model.extra(test_x, gen).items():
        m, s = _mean_se(value)
        out[key], out[key + "_se"], out[key + "_data"] = m, s, m - log_abs_det
    samples = model.sample(cfg.n_samples, gen).detach()
    out["eval_seconds"] = time.perf_counter() - start
    return out, samples


def run(cfg: Config) -> dict:
    results: dict = {}
    grid_rows: dict[str, dict[str, Tensor]] = {"data": {}, **{m: {} for m in cfg.models}}
    jobs = [(d, m) for d in cfg.datasets for m in cfg.models]
    bar = tqdm(jobs, desc="toy_nll", unit="model")
    for name, model_name in bar:
        bar.set_postfix_str(f"{name}/{model_name}")
        train_x, test_x, pre = load_toy(name, cfg.n_train, cfg.n_test, seed=cfg.seed)
        lad = float(pre.log_abs_det)
        grid_rows["data"][name] = train_x[: cfg.n_samples]
        torch.manual_seed(cfg.seed)  # same initialization seed for every model
        model = BUILDERS[model_name](cfg)
        stats = train(model, train_x, cfg, cfg.seed, cfg.lr[model_name])
        metrics, samples = evaluate(stats.pop("model"), test_x, lad, cfg, cfg.seed)
        metrics.update(stats)
        metrics["params"] = sum(p.numel() for p in model.parameters())
        results.setdefault(name, {"log_abs_det": lad})[model_name] = metrics
        grid_rows[model_name][name] = samples
        tqdm.write(f"{name:>12s} {model_name:>8s}: NLL {metrics['nll']:.3f} ± "
                   f"{metrics['nll_se']:.3f} nats ({metrics['steps']} steps)")
    return {"results": results, "grid_rows": grid_rows}


def markdown(cfg: Config, results: dict) -> str:
    models = [m for m in cfg.models]

    def table(key: str, title: str) -> list[str]:
        lines = [f"**{title}**", "", "| data set | " + " | ".join(models) + " |",
                 "|---|" + "---|" * len(models)]
        for name, row in results.items():
            vals = {m: row[m][key] for m in models if m in row}
            best = min(vals.values()) if vals else None
            cells = []
            for m in models:
                if m not in row:
                    cells.append("–")
                    continue
                v, se = row[m][key], row[m]["nll_se"]
                cell = f"{v:.3f} ± {se:.3f}"
                cells.append(f"**{cell}**" if v == best else cell)
            lines.append(f"| {name}{' *' if name in SHARP else ''} | " + " | ".join(cells) + " |")
        return lines

    lines = [
        f"Test NLL (nats, exact, {cfg.n_test} held-out points, seed {cfg.seed}); "
        f"{cfg.budget_seconds:g} s of training per model per data set; lower is better, best "
        "in bold; * = sharp boundaries.", "",
    ]
    lines += table("nll", "standardized coordinates") + [""]
    lines += table("nll_data", "data coordinates") + [""]
    if "diffflow" in models:
        lines += ["**DiffFlow bound and training steps**", "",
                  "| data set | DiffFlow ODE NLL | DiffFlow ELBO NLL bound | "
                  + " | ".join(f"{m} steps" for m in models) + " |",
                  "|---|---|---|" + "---|" * len(models)]
        for name, row in results.items():
            if "diffflow" not in row:
                continue
            d = row["diffflow"]
            lines.append(f"| {name} | {d['nll']:.3f} | {d['elbo_nll']:.3f} ± "
                         f"{d['elbo_nll_se']:.3f} | "
                         + " | ".join(str(row[m]["steps"]) if m in row else "–" for m in models)
                         + " |")
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-seconds", type=float, default=None,
                   help="wall-clock training time per model per data set (default 60; quick: 4)")
    p.add_argument("--datasets", nargs="+", default=None, help=f"from {', '.join(TOY_DATASETS)}")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny budget and test set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="one Adam rate for every model")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    cfg = Config(seed=args.seed, models=tuple(args.models))
    if args.quick:
        cfg.budget_seconds, cfg.n_test, cfg.n_train, cfg.n_samples = 4.0, 256, 10_000, 1_000
        cfg.rtol = cfg.atol = 1e-4
        cfg.score_sample_steps = 200
    if args.datasets is not None:
        bad = [d for d in args.datasets if d not in TOY_DATASETS]
        if bad:
            p.error(f"unknown data set(s) {bad}; valid: {', '.join(TOY_DATASETS)}")
        cfg.datasets = tuple(args.datasets)
    for key in ("budget_seconds", "n_test", "batch_size"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.lr is not None:
        cfg.lr = {m: args.lr for m in MODELS}
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg.extra = {"out": str(args.out), "quick": args.quick}
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    out = Path(cfg.extra["out"])
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    res = run(cfg)
    payload = {
        "benchmark": "toy_nll",
        "config": {k: v for k, v in vars(cfg).items() if k != "extra"} | cfg.extra,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads(), "machine": platform.machine(),
                        "argv": sys.argv[1:]},
        "total_seconds": time.perf_counter() - start,
        "results": res["results"],
    }
    (out / "toy_nll.json").write_text(json.dumps(payload, indent=2, default=list))
    (out / "toy_nll.md").write_text(markdown(cfg, res["results"]))
    data_peak = max(float(v.abs().max()) for v in res["grid_rows"]["data"].values())
    plot_sample_grid_2d(res["grid_rows"], out / "toy_samples.png", lim=1.1 * data_peak)
    print((out / "toy_nll.md").read_text())
    print(f"wrote {out / 'toy_nll.json'}, {out / 'toy_nll.md'}, {out / 'toy_samples.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
