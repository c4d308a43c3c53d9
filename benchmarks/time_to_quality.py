r"""Time to quality on the 2D sets: test NLL against wall-clock for DiffFlow recipes, zuko's
neural spline flow, sdeflow's score model and path-trained flows, every model on the same data,
threads and budget in one run (issues 19 and 21).

Every *arm* (a model and its training recipe) trains for ``--budget-seconds`` of wall clock on
:func:`sdeflow.data.load_toy` (50,000 training and 2,000 test points of seed 0, standardized),
Adam with gradient clipping at 1.0 and EMA weights (evaluated). The clock stops while the EMA
model is evaluated at ``--curve-points`` fractions of the budget (exact probability-flow NLL of
``--curve-test`` test points at tolerance 1e-4: the curves); at the end the test NLL of all test
points at 1e-5, with its standard error (the table).

DiffFlow's arms differ only in how they train (the model is the paper's: FourierMLP drift and
score, ``g = 0.2``, power-0.9 grid on ``[1e-3, 0.05]``, the trajectory KL):

``paper``
    N = 30 throughout, batch 1,000, lr 5e-3 decaying linearly in time to 10% (``toy_nll.py``).
``ramp``
    N grows linearly in elapsed time from 5 to 30 over the first 70% of the budget (fewer network
    passes while the networks are far from the optimum; the official CIFAR-B recipe steps N
    5 → 75), then stays at 30.
``batch250``, ``n10``, ``w64``, ``lr1e-2``, ``cosine``, ``exp0.7``
    One lever each: batch 250; N = 10 fixed; width 64; lr 1e-2; a 5% linear warm-up then a cosine
    decay to 10%; grid exponent 0.7.
``ramp-lr``, ``ramp-lr-w64``, ``ramp-lr-b500``, ``ramp-lr-w64-b500``
    Combinations of the levers that helped alone.
``fast``
    The best combination measured, ``ramp-lr-w64`` (the preset ``toy-2d-fast``).
``warm``, ``fast-warm``, ``warm-only``
    A simulation-free warm start by path matching (:meth:`RampedDiffFlow.warm_loss`) for the
    first 10% of the budget before the paper's or the fast recipe, or for all of it.
``fast-ema995``, ``fast-lr2e-2``, ``fast-r90``, ``fast-r2``
    ``fast`` with one more lever: EMA decay 0.995; lr 2e-2; the ramp over 90% of the budget;
    the ramp from N = 2.
``fast-anti``, ``fast-sub50``, ``fast-sub30``
    Variance and cost of the estimator: antithetic noise paths (half the batch, each sample with
    noise and its negation); the backward step terms, and so the score network, at only 50% or
    30% of the steps, drawn per training step and reweighted (:class:`SubsampledSteps`).
``fast-sharded``
    ``fast`` under :class:`~sdeflow.gradients.Sharded` (one shard per thread; for ``--threads 2``).

Other arms: ``nsf`` (zuko NSF, 5 transforms of 128 x 3, lr 1e-3: zuko's usual rate, as in
``toy_nll.py``; ``nsf-3e-4``, ``nsf-3e-3``: the rates of the tuning on the checkerboard, where
3e-3 won), ``score`` (VP SDE + DSM, FourierMLP 128 x 3, lr 2e-3), ``fm`` and ``fm-ot`` (path
matching on the linear path, velocity target, FourierMLP 128 x 3, batch 1,000, lr 2e-3, the
independent and the minibatch-OT coupling).

Writes ``time_to_quality.json``, ``time_to_quality.md`` and one ``time_to_quality_<set>.png``
(curves) per data set under ``--out`` (default ``benchmarks/results``)::

    python benchmarks/time_to_quality.py --budget-seconds 300 --threads 1 \
        --datasets checkerboard 2spirals olympic sierpinski --arms fast paper nsf score
    python benchmarks/time_to_quality.py --budget-seconds 150 --datasets checkerboard \
        --arms paper ramp batch250 n10 w64 lr1e-2 cosine exp0.7 nsf --tag _ablation
    python benchmarks/time_to_quality.py --quick            # smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_nll import (  # noqa: E402
    _EMA,
    RESULTS,
    Config,
    DiffFlowBench,
    NSFBench,
    ScoreBench,
    _mean_se,
    _span,
)

from sdeflow import DiffFlowObjective, LinearPath, PathMatching, PathODE, TimeGrid  # noqa: E402
from sdeflow.couplings import IndependentCoupling, MinibatchOTCoupling  # noqa: E402
from sdeflow.data import load_toy  # noqa: E402
from sdeflow.gradients import GradientStrategy, Sharded  # noqa: E402
from sdeflow.likelihood import ode_log_likelihood  # noqa: E402
from sdeflow.nets import FourierMLP  # noqa: E402


@dataclass(frozen=True)
class Arm:
    """A model and how it trains. ``n`` is DiffFlow's N: a number, or ``(start, end, frac)``
    (linear in elapsed time from ``start`` to ``end`` over ``frac`` of the budget)."""

    model: str = "diffflow"
    batch: int = 1_000
    lr: float = 5e-3
    schedule: str = "linear"      # "linear": decay to 10%; "cosine": warm-up, cosine to 10%
    warmup: float = 0.0           # fraction of the budget
    n: int | tuple[int, int, float] = 30
    width: int = 128
    exponent: float = 0.9
    coupling: str = "independent"
    warm: float = 0.0             # DiffFlow: fraction of the budget spent on the warm start
    compile: bool = False         # DiffFlow: torch.compile the drift and score networks
    antithetic: bool = False      # DiffFlow: half the batch, each sample twice, noise and -noise
    ema: float | None = None      # EMA decay (None: Config.ema, 0.999)
    sharded: bool = False         # DiffFlow: Sharded(Backprop()), one shard per thread
    score_steps: float = 1.0      # DiffFlow: fraction of the steps whose term (and score) is drawn


ARMS: dict[str, Arm] = {
    "paper": Arm(),
    "ramp": Arm(n=(5, 30, 0.7)),
    "batch250": Arm(batch=250),
    "n10": Arm(n=10),
    "w64": Arm(width=64),
    "lr1e-2": Arm(lr=1e-2),
    "cosine": Arm(schedule="cosine", warmup=0.05),
    "exp0.7": Arm(exponent=0.7),
    "ramp-lr": Arm(n=(5, 30, 0.7), lr=1e-2),
    "ramp-lr-w64": Arm(n=(5, 30, 0.7), lr=1e-2, width=64),
    "ramp-lr-b500": Arm(n=(5, 30, 0.7), lr=1e-2, batch=500),
    "ramp-lr-w64-b500": Arm(n=(5, 30, 0.7), lr=1e-2, width=64, batch=500),
    "warm": Arm(warm=0.1),
    "warm-only": Arm(warm=1.0),
    "fast": Arm(n=(5, 30, 0.7), lr=1e-2, width=64),
    "fast-warm": Arm(n=(5, 30, 0.7), lr=1e-2, width=64, warm=0.1),
    "fast-compile": Arm(n=(5, 30, 0.7), lr=1e-2, width=64, compile=True),
    "fast-anti": Arm(n=(5, 30, 0.7), lr=1e-2, width=64, antithetic=True),
    "fast-ema995": Arm(n=(5, 30, 0.7), lr=1e-2, width=64, ema=0.995),
    "fast-lr2e-2": Arm(n=(5, 30, 0.7), lr=2e-2, width=64),
    "fast-r90": Arm(n=(5, 30, 0.9), lr=1e-2, width=64),
    "fast-r2": Arm(n=(2, 30, 0.7), lr=1e-2, width=64),
    "fast-sub50": Arm(n=(5, 30, 0.7), lr=1e-2, width=64, score_steps=0.5),
    "fast-sub30": Arm(n=(5, 30, 0.7), lr=1e-2, width=64, score_steps=0.3),
    "fast-sharded": Arm(n=(5, 30, 0.7), lr=1e-2, width=64, sharded=True),
    "nsf": Arm(model="nsf", lr=1e-3),
    "nsf-3e-4": Arm(model="nsf", lr=3e-4),
    "nsf-3e-3": Arm(model="nsf", lr=3e-3),
    "score": Arm(model="score", lr=2e-3),
    "fm": Arm(model="path", lr=2e-3),
    "fm-ot": Arm(model="path", lr=2e-3, coupling="ot"),
}


def n_at(arm: Arm, frac: float) -> int:
    """DiffFlow's N at ``frac`` of the budget."""
    if isinstance(arm.n, int):
        return arm.n
    start, end, ramp = arm.n
    return int(round(start + (end - start) * min(1.0, frac / ramp)))


def lr_at(arm: Arm, frac: float) -> float:
    if arm.schedule == "linear":
        return arm.lr * (1 - 0.9 * frac)
    if frac < arm.warmup:
        return arm.lr * frac / arm.warmup
    p = (frac - arm.warmup) / (1 - arm.warmup)
    return arm.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, p))))


class RampedDiffFlow(DiffFlowBench):
    """The paper's DiffFlow model trained on a grid of ``n`` steps chosen per step."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.n = cfg.n_steps
        self.warm = False
        self.antithetic = False

    def warm_loss(self, x: Tensor, gen: torch.Generator) -> Tensor:
        r"""Simulation-free warm start by path matching: the linear path
        :math:`x_t = (1 - u)\,x_0 + u\,\epsilon`, :math:`u = (t - t_0) / (t_1 - t_0)`, has the
        data at :math:`t_0` and the prior at :math:`t_1`, like DiffFlow; the forward SDE with
        drift :math:`f = v + \tfrac{g^2}{2} \nabla \log p_t` has its marginals, and the reverse
        SDE's score is :math:`\nabla \log p_t`. Both are conditional expectations of the
        conditional targets :math:`v = (\epsilon - x_0) / \Delta` and :math:`-\epsilon / u`,
        so regression on them trains the drift and the score networks without simulation."""
        cfg = self.cfg
        delta = cfg.t1 - cfg.t0
        t = cfg.t0 + delta * torch.rand(x.shape[0], generator=gen).clamp_min(1e-3)
        u = ((t - cfg.t0) / delta)[:, None]
        eps = torch.randn(x.shape, generator=gen)
        xt = (1 - u) * x + u * eps
        f_target = (eps - x) / delta - 0.5 * cfg.g**2 * eps / u
        drift_loss = ((self.drift(xt, t) - f_target) * delta).square().sum(-1)
        score_loss = (self.score(xt, t) * u + eps).square().sum(-1)
        return (drift_loss + score_loss).mean()

    def loss(self, x: Tensor, gen: torch.Generator) -> Tensor:
        if self.warm:
            return self.warm_loss(x, gen)
        if self.grid.n_steps != self.n:
            self.grid = TimeGrid.power(self.n, self.cfg.t0, self.cfg.t1, self.cfg.exponent)
        if not self.antithetic:
            return super().loss(x, gen)
        reverse, prior = self.parts()
        objective = DiffFlowObjective(reverse, prior, gradient=self.gradient)
        # antithetic noise paths: the first half of the batch, each sample with noise and -noise
        # (the terms odd in the noise cancel within each pair)
        half = x[: x.shape[0] // 2]
        noise = torch.randn((self.grid.n_steps, *half.shape), generator=gen)
        return objective(torch.cat([half, half]), self.grid.jitter(gen),
                         noise=torch.cat([noise, -noise], dim=1)).loss


class SubsampledSteps(GradientStrategy):
    r"""Backprop through the forward trajectory, but the backward step terms (and with them the
    score network) only at ``K = round(fraction N)`` steps drawn uniformly without replacement,
    weighted by ``N / K``: an unbiased estimate of :math:`\sum_i \ell_i` and its gradient at
    about ``(N + 1 + K) / (2N + 1)`` of the network passes. Needs the fused affine sweep (it
    advances the trajectory itself at the steps left out); a benchmark lever, not library API."""

    def __init__(self, fraction: float, gen: torch.Generator) -> None:
        self.fraction, self.gen = fraction, gen

    def __call__(self, sweep, x0: Tensor, params: tuple[Tensor, ...]) -> tuple[tuple, Tensor]:
        n = sweep.n_steps
        k = max(1, round(self.fraction * n))
        chosen = set(torch.randperm(n, generator=self.gen)[:k].tolist())
        carry, terms = sweep.init(x0), []
        for i in range(n):
            if i in chosen:
                carry, term = sweep.step(i, carry)
                terms.append(term * (n / k))
                continue
            x, f = carry
            x_next = sweep.fwd.step(i, x, sweep.noise[i], drift=f)
            carry = (x_next, sweep.forward_sde.drift(x_next, sweep.bwd.times[i]))
            terms.append(x.new_zeros(x.shape[0]))
        return carry, torch.stack(terms, -1)


class PathBench(nn.Module):
    """A flow trained by path matching on the linear path (velocity target), t in [0, 1]."""

    def __init__(self, cfg: Config, coupling: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.velocity = FourierMLP(2, cfg.width, cfg.depth)
        self.path = LinearPath()
        self.coupling = MinibatchOTCoupling() if coupling == "ot" else IndependentCoupling()

    def loss(self, x: Tensor, gen: torch.Generator) -> Tensor:
        objective = PathMatching(self.path, self.velocity, coupling=self.coupling)
        return objective(x, gen).loss

    def log_prob(self, x: Tensor, cfg: Config) -> tuple[Tensor, int]:
        ode = PathODE(self.path, self.velocity)
        res = ode_log_likelihood(ode, self.path.prior((2,)), _span(0.0, 1.0, x), x,
                                 rtol=cfg.rtol, atol=cfg.atol)
        return res.log_prob, res.nfe


def build(arm: Arm, cfg: Config) -> nn.Module:
    cfg = replace(cfg, width=arm.width, exponent=arm.exponent,
                  n_steps=n_at(arm, 0.0) if arm.model == "diffflow" else cfg.n_steps)
    if arm.model == "diffflow":
        model = RampedDiffFlow(cfg)
        model.antithetic = arm.antithetic
        if arm.sharded:
            model.gradient = Sharded()
        if arm.score_steps < 1.0:
            model.gradient = SubsampledSteps(arm.score_steps,
                                             torch.Generator().manual_seed(cfg.seed + 1))
        if arm.compile:  # the compiled modules share the parameters (and the EMA copies them)
            import torch._functorch.config as functorch_config

            # the likelihood's divergence differentiates the networks with retain_graph=True
            functorch_config.donated_buffer = False
            model.drift, model.score = torch.compile(model.drift), torch.compile(model.score)
        return model
    if arm.model == "path":
        return PathBench(cfg, arm.coupling)
    return {"nsf": NSFBench, "score": ScoreBench}[arm.model](cfg)


@dataclass
class Curve:
    seconds: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)
    nll_se: list[float] = field(default_factory=list)


def test_nll(model: nn.Module, x: Tensor, cfg: Config) -> tuple[float, float]:
    model.eval()
    log_prob, _ = model.log_prob(x, cfg)
    model.train()
    return _mean_se(-log_prob.detach())


def train(arm: Arm, model: nn.Module, train_x: Tensor, curve_x: Tensor, cfg: Config,
          budget: float, marks: list[float]) -> tuple[nn.Module, int, Curve]:
    """Adam for ``budget`` seconds (the clock stops during the curve's evaluations)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=arm.lr)
    ema = _EMA(model, cfg.ema if arm.ema is None else arm.ema)
    curve_cfg = replace(cfg, rtol=1e-4, atol=1e-4)
    curve, pending = Curve(), list(marks)
    steps, elapsed = 0, 0.0
    while elapsed < budget:
        start = time.perf_counter()
        frac = elapsed / budget
        for group in opt.param_groups:
            group["lr"] = lr_at(arm, frac)
        if isinstance(model, RampedDiffFlow):
            model.n = n_at(arm, frac)
            model.warm = frac < arm.warm
        idx = torch.randint(train_x.shape[0], (arm.batch,), generator=gen)
        loss = model.loss(train_x[idx], gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {steps}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update()
        steps += 1
        elapsed += time.perf_counter() - start
        while pending and elapsed >= pending[0] * budget:
            pending.pop(0)
            mean, se = test_nll(ema.shadow, curve_x, curve_cfg)
            curve.seconds.append(elapsed)
            curve.steps.append(steps)
            curve.nll.append(mean)
            curve.nll_se.append(se)
    return ema.shadow, steps, curve


def run(cfg: Config, arms: list[str], budget: float, marks: list[float], curve_n: int,
        out: Path) -> dict:
    results: dict = {}
    jobs = [(d, a) for d in cfg.datasets for a in arms]
    bar = tqdm(jobs, desc="time_to_quality", unit="arm")
    for name, arm_name in bar:
        bar.set_postfix_str(f"{name}/{arm_name}")
        arm = ARMS[arm_name]
        train_x, test_x, pre = load_toy(name, cfg.n_train, cfg.n_test, seed=cfg.seed)
        torch.manual_seed(cfg.seed)
        model = build(arm, cfg)
        ema, steps, curve = train(arm, model, train_x, test_x[:curve_n], cfg, budget, marks)
        start = time.perf_counter()
        nll, se = test_nll(ema, test_x, cfg)
        row = {"arm": asdict(arm), "nll": nll, "nll_se": se,
               "nll_data": nll - float(pre.log_abs_det), "steps": steps,
               "steps_per_second": steps / budget, "eval_seconds": time.perf_counter() - start,
               "curve": asdict(curve)}
        results.setdefault(name, {})[arm_name] = row
        tqdm.write(f"{name:>12s} {arm_name:>8s}: NLL {nll:.3f} ± {se:.3f} nats "
                   f"({steps} steps)")
        (out / "time_to_quality.partial.json").write_text(json.dumps(results, indent=2))
    return results


def markdown(results: dict, arms: list[str], budget: float, threads: int) -> str:
    lines = [f"Test NLL (nats, standardized, exact probability-flow ODE at 1e-5, 2,000 held-out "
             f"points, seed 0) after {budget:g} s of training on {threads} thread(s); ± is the "
             "standard error; best in bold; steps in parentheses.", "",
             "| data set | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for name, row in results.items():
        best = min(row[a]["nll"] for a in arms if a in row)
        cells = []
        for a in arms:
            if a not in row:
                cells.append("–")
                continue
            r = row[a]
            cell = f"{r['nll']:.3f} ± {r['nll_se']:.3f} ({r['steps']})"
            cells.append(f"**{cell}**" if r["nll"] == best else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, out: Path, stem: str = "time_to_quality") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, row in results.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for arm_name, r in row.items():
            c = r["curve"]
            ax.plot(c["seconds"], c["nll"], marker="o", ms=3, label=arm_name)
        ax.set_xlabel("training seconds")
        ax.set_ylabel("test NLL (nats, 1e-4 ODE)")
        ax.set_title(f"{name}: test NLL against wall-clock")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{stem}_{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def merge(paths: list[Path], out: Path, stem: str) -> int:
    """One table, JSON and set of curves from runs made side by side (one per core): their rows
    joined per data set, in the order of ``paths``; the runs must share the budget."""
    payloads = [json.loads(Path(path).read_text()) for path in paths]
    budgets = {p["budget_seconds"] for p in payloads}
    if len(budgets) != 1:
        raise SystemExit(f"--merge: the runs have different budgets {sorted(budgets)}")
    arms = list(dict.fromkeys(a for p in payloads for a in p["arms"]))
    results: dict = {}
    for p in payloads:
        for name, rows in p["results"].items():
            results.setdefault(name, {}).update(rows)
    threads = payloads[0]["environment"]["threads"]
    merged = {**payloads[0], "arms": arms, "results": results,
              "merged_from": [str(path) for path in paths],
              "arm_specs": {k: v for p in payloads for k, v in p["arm_specs"].items()},
              "environments": [p["environment"] for p in payloads]}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(merged, indent=2))
    table = markdown(results, arms, budgets.pop(), threads)
    (out / f"{stem}.md").write_text(table)
    pngs = plot(results, out, stem)
    print(table)
    print("wrote", out / f"{stem}.json", *pngs)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-seconds", type=float, default=600.0)
    p.add_argument("--datasets", nargs="+", default=["checkerboard", "2spirals", "olympic",
                                                      "sierpinski"])
    p.add_argument("--arms", nargs="+", default=["fast", "paper", "nsf", "score"],
                   choices=sorted(ARMS))
    p.add_argument("--curve-points", type=int, default=8, help="evaluations along the budget")
    p.add_argument("--curve-test", type=int, default=500, help="test points per curve point")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run: seconds per arm")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--tag", default="", help="suffix of the output files")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="join the tables of runs made side by side (no training)")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out, f"time_to_quality{args.tag}")
    torch.set_num_threads(args.threads)
    cfg = Config(datasets=tuple(args.datasets))
    budget = args.budget_seconds
    if args.quick:
        budget, cfg.n_test, cfg.n_train = 3.0, 128, 5_000
        args.curve_points, args.curve_test = 2, 64
        cfg.rtol = cfg.atol = 1e-4
    marks = [(k + 1) / args.curve_points for k in range(args.curve_points)]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = run(cfg, args.arms, budget, marks, args.curve_test, args.out)
    stem = f"time_to_quality{args.tag}"
    payload = {"benchmark": "time_to_quality", "budget_seconds": budget, "arms": args.arms,
               "arm_specs": {a: asdict(ARMS[a]) for a in args.arms},
               "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
               "environment": {"torch": torch.__version__, "python": platform.python_version(),
                               "threads": torch.get_num_threads(),
                               "machine": platform.machine(), "argv": sys.argv[1:]},
               "total_seconds": time.perf_counter() - start, "results": results}
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=list))
    table = markdown(results, args.arms, budget, torch.get_num_threads())
    (args.out / f"{stem}.md").write_text(table)
    pngs = plot(results, args.out, stem) if not args.quick else []
    (args.out / "time_to_quality.partial.json").unlink(missing_ok=True)
    print(table)
    print("wrote", args.out / f"{stem}.json", *pngs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
