r"""A trained DiffFlow model as the prior of an inverse problem, solved with Pyro's inference,
against quadrature of the model's own density (the picture of ``docs/howto/inverse_problem.md``).

1. Trains a small DiffFlow model on the 2D checkerboard (the 2D recipe's grid and ``g``, narrower
   networks, 400 steps: about 6 minutes of CPU here).
2. Observes one linear measurement of a 2D point, ``y = A x + sigma eps`` with ``A = [1, 1]/sqrt 2``
   (the point's position along the diagonal), so the posterior is a band across the board.
3. Posterior by Pyro's vectorized importance sampling with the model as the proposal
   (``x = pyro.sample("x", model.distribution())``, the probability-flow ODE's law), and by
   quadrature of the same distribution's exact ``log_prob`` on a fine grid.

Writes ``docs/images/inverse_problem.png`` (model density, quadrature posterior, importance
posterior) and ``benchmarks/results/inverse_problem.json`` (posterior moments both ways, the
effective sample size, timings). Run::

    python benchmarks/inverse_problem.py    # 7 min wall, 6 min CPU on a shared 2-core machine
    python benchmarks/inverse_problem.py --quick       # smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from pyro import poutine  # noqa: E402
from pyro.infer.importance import vectorized_importance_weights  # noqa: E402

from sdeflow import StandardNormal, TimeGrid  # noqa: E402
from sdeflow.data import load_toy  # noqa: E402
from sdeflow.nets import FourierMLP  # noqa: E402
from sdeflow.training import DiffFlowModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train(steps: int, batch: int, width: int, seed: int) -> tuple[DiffFlowModel, float]:
    torch.manual_seed(seed)
    data, _, _ = load_toy("checkerboard", n_train=50_000, n_test=10, seed=seed)
    model = DiffFlowModel(FourierMLP(2, width, 3), FourierMLP(2, width, 3), 0.2,
                          TimeGrid.power(30, 1e-3, 0.05, 0.9), StandardNormal((2,)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1 - 0.9 * k / steps)
    for step in range(steps):
        loss, _ = model.loss(data[torch.randint(len(data), (batch,))], step)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return model, float(loss.detach())


def moments(x: torch.Tensor, w: torch.Tensor) -> tuple[list, list]:
    mean = w @ x
    c = x - mean
    return mean.tolist(), ((w[:, None] * c).T @ c).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--particles", type=int, default=20_000)
    parser.add_argument("--quad", type=int, default=160, help="quadrature points per axis")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch, args.width, args.particles, args.quad = 20, 256, 16, 2000, 40
    torch.set_num_threads(args.threads)

    t = time.perf_counter()
    model, last_loss = train(args.steps, args.batch, args.width, seed=0)
    train_s = time.perf_counter() - t
    prior = model.distribution(rtol=1e-5, atol=1e-5)  # ProbabilityFlowDistribution

    A, sigma, y = torch.tensor([[1.0, 1.0]]) / math.sqrt(2), 0.15, torch.tensor([0.35])

    def inverse_problem(y):
        x = pyro.sample("x", prior)
        pyro.sample("y", dist.Normal(x @ A.T, sigma).to_event(1), obs=y)
        return x

    # Pyro's importance sampling, the model as the proposal (Importance(model, guide=None)),
    # vectorized over particles: one batched ODE solve per trace
    t = time.perf_counter()
    torch.manual_seed(1)
    with torch.no_grad():
        log_w, _, trace = vectorized_importance_weights(
            inverse_problem, poutine.block(inverse_problem, hide_types=["observe"]), y,
            num_samples=args.particles, max_plate_nesting=0)
    x, w = trace.nodes["x"]["value"], torch.softmax(log_w, 0)
    ess = float(1 / (w**2).sum())
    is_s = time.perf_counter() - t

    # quadrature of the same distribution's exact density
    t = time.perf_counter()
    lim = 3.0
    u = torch.linspace(-lim, lim, args.quad)
    cell = torch.cartesian_prod(u, u)  # (x1, x2) pairs, x1 major
    with torch.no_grad():
        log_prior = torch.cat([prior.log_prob(c) for c in cell.split(10_000)])
    log_lik = dist.Normal(cell @ A.T, sigma).to_event(1).log_prob(y)
    p_quad = torch.softmax(log_prior + log_lik, 0)
    quad_s = time.perf_counter() - t
    h = float(u[1] - u[0])
    prior_mass = float(log_prior.exp().sum() * h * h)

    is_mean, is_cov = moments(x, w)
    quad_mean, quad_cov = moments(cell, p_quad)
    se = [math.sqrt(is_cov[i][i] / ess) for i in range(2)]

    # the picture: model density, quadrature posterior, importance posterior samples
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.6))
    extent = (-lim, lim, -lim, lim)
    img = log_prior.exp().reshape(args.quad, args.quad).T
    axes[0].imshow(img, origin="lower", extent=extent, cmap="magma")
    line = torch.linspace(-lim, lim, 2)
    axes[0].plot(line, math.sqrt(2) * float(y) - line, "c--", lw=1)
    axes[0].set_title("model density p(x) (exact, ODE)\n-- the observation x1 + x2 = sqrt(2) y")
    axes[1].imshow(p_quad.reshape(args.quad, args.quad).T, origin="lower", extent=extent,
                   cmap="magma")
    axes[1].set_title(f"posterior by quadrature\n({args.quad}x{args.quad} grid of log_prob)")
    idx = torch.multinomial(w, 5000, replacement=True)
    draws = x[idx]
    axes[2].hist2d(draws[:, 0].numpy(), draws[:, 1].numpy(), bins=args.quad // 2,
                   range=[[-lim, lim], [-lim, lim]], cmap="magma")
    axes[2].set_title(f"posterior by Pyro importance sampling\n({args.particles} particles, "
                      f"ESS {ess:.0f}, 5000 resampled)")
    for ax in axes:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    fig.suptitle(f"checkerboard DiffFlow prior, y = A x + N(0, {sigma}^2), A = [1, 1]/sqrt(2), "
                 f"y = {float(y):.2f}")
    fig.tight_layout()
    image = ROOT / "docs" / "images" / "inverse_problem.png"
    fig.savefig(image, dpi=90)

    result = {
        "args": vars(args), "train_seconds": round(train_s, 1), "last_loss": last_loss,
        "importance_seconds": round(is_s, 1), "quadrature_seconds": round(quad_s, 1),
        "ess": round(ess, 1), "prior_mass_on_grid": prior_mass,
        "importance": {"mean": is_mean, "cov": is_cov, "mean_standard_error": se},
        "quadrature": {"mean": quad_mean, "cov": quad_cov},
        "mean_difference_in_standard_errors": [abs(a - b) / s for a, b, s in
                                               zip(is_mean, quad_mean, se)],
        "threads": args.threads, "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    out = ROOT / "benchmarks" / "results" / "inverse_problem.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
