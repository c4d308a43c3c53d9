r"""In-process before/after of sampling (issue 12): the fused Euler sampler that sdeflow chose by
``type(discretizer) is EulerMaruyama`` before the stepper interface (``_euler_reverse`` of commit
6f5e98e, kept here verbatim as the baseline) against :func:`sdeflow.sample` through
``EulerMaruyama().stepper``, in one process, interleaved (a b, b a, ...), so that the machine's
state changes cancel. The paper's 2D networks, batch 5000, N = 100, one thread, freed memory
retained. Prints the medians and the per-pair time ratio; writes
``benchmarks/results/sampler_ab.json``.

Run::

    python benchmarks/sampler_ab.py
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from sdeflow import ForwardSDE, ReverseSDE, StandardNormal, TimeGrid, sample
from sdeflow.nets import FourierMLP
from sdeflow.training import retain_freed_memory


def _euler_reverse(reverse, grid, g, x, denoise, generator, xs):
    """The previous commit's fused reverse Euler sweep (the baseline)."""
    forward_sde = reverse.forward_sde
    ts, dts = grid.ts.unbind(0), grid.dts
    c = 0.5 * (1.0 + reverse.lam**2)
    dt = dts.tolist()
    score_coef = (c * g[1:] ** 2 * dts).tolist()
    noise_coef = (reverse.lam * g[1:] * dts.sqrt()).tolist()
    for i in range(grid.n_steps - 1, -1, -1):
        t = ts[i + 1]
        f = forward_sde.drift(x, t)
        s = reverse.score_value(x, t)
        x_new = torch.add(x, f, alpha=-dt[i]).add_(s, alpha=score_coef[i])
        if not (i == 0 and denoise) and noise_coef[i] != 0.0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x_new = x_new.add_(noise, alpha=noise_coef[i])
        x = x_new
    return x

def main() -> dict:
    torch.set_num_threads(1)
    retain_freed_memory()
    torch.manual_seed(0)
    rev = ReverseSDE(ForwardSDE(FourierMLP(2, 128, 3), 0.2), FourierMLP(2, 128, 3))
    grid, prior = TimeGrid.power(100, 1e-3, 0.05, 0.9), StandardNormal((2,))
    xf = torch.randn(5000, 2)
    with torch.no_grad():
        g = rev.forward_sde.diffusion_scale(grid.ts)
        a = _euler_reverse(rev, grid, g, xf, True, torch.Generator().manual_seed(1), None)
        b = sample(rev, prior, grid, x_final=xf, generator=torch.Generator().manual_seed(1))
        print("max |old - new|", float((a - b).abs().max()))
        ta, tb = [], []
        for r in range(24):
            for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                t0 = time.perf_counter()
                if which == 0:
                    _euler_reverse(rev, grid, rev.forward_sde.diffusion_scale(grid.ts), xf, True,
                                   torch.Generator().manual_seed(1), None)
                    ta.append(time.perf_counter() - t0)
                else:
                    sample(rev, prior, grid, x_final=xf, generator=torch.Generator().manual_seed(1))
                    tb.append(time.perf_counter() - t0)
    ratios = [b / a for a, b in zip(ta, tb)]
    result = {"before_s": statistics.median(ta), "after_s": statistics.median(tb),
              "ratio_after_over_before": statistics.median(ratios), "ratio_min": min(ratios),
              "ratio_max": max(ratios), "pairs": len(ratios), "max_abs_difference": float(
                  (a - b).abs().max()), "batch": 5000, "n_steps": 100, "threads": 1}
    out = Path(__file__).resolve().parent / "results" / "sampler_ab.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"before {result['before_s']:.4f} s, after {result['after_s']:.4f} s, "
          f"after/before median {result['ratio_after_over_before']:.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    return result


if __name__ == "__main__":
    main()
