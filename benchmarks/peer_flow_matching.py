"""The peer row of ``time_to_quality.py``: Meta's ``flow_matching`` (v1.0.10) with its own 2D
recipe (``examples/2d_flow_matching.ipynb``: CondOT path, MLP 4 x 512 Swish, Adam 1e-3, batch
4096), trained by ``time_to_quality.py``'s loop (clipping, EMA, linear LR decay, the same data
and budget) and scored by sdeflow's exact likelihood (the same code for every model).

``flow_matching`` is not a dependency of sdeflow: install it beside, e.g. into a scratch folder
named by ``FLOW_MATCHING_PATH``::

    pip install --no-deps --target /tmp/fmlib flow_matching==1.0.10
    FLOW_MATCHING_PATH=/tmp/fmlib python benchmarks/peer_flow_matching.py --budget-seconds 300 \
        --threads 1 --arms fm fm-ot fm-peer --tag _fm
"""
import os
import sys
from pathlib import Path

if os.environ.get("FLOW_MATCHING_PATH"):
    sys.path.insert(0, os.environ["FLOW_MATCHING_PATH"])
sys.path.insert(0, str(Path(__file__).resolve().parent))
import time_to_quality as ttq  # noqa: E402
import torch
from flow_matching.path import AffineProbPath
from flow_matching.path.scheduler import CondOTScheduler
from torch import nn

from sdeflow import ForwardSDE, StandardNormal
from sdeflow.likelihood import ode_log_likelihood


class Swish(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x) * x


class MLP(nn.Module):  # the notebook's MLP
    def __init__(self, input_dim=2, time_dim=1, hidden_dim=512):
        super().__init__()
        self.main = nn.Sequential(
            nn.Linear(input_dim + time_dim, hidden_dim), Swish(),
            nn.Linear(hidden_dim, hidden_dim), Swish(),
            nn.Linear(hidden_dim, hidden_dim), Swish(),
            nn.Linear(hidden_dim, hidden_dim), Swish(),
            nn.Linear(hidden_dim, input_dim))

    def forward(self, x, t):
        t = t.reshape(-1, 1).to(x.dtype).expand(x.shape[0], 1)
        return self.main(torch.cat([x, t], dim=1))


class PeerBench(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.vf = MLP()
        self.path = AffineProbPath(scheduler=CondOTScheduler())

    def loss(self, x, gen):
        x0 = torch.randn(x.shape, generator=gen)  # noise at t = 0 in flow_matching
        t = torch.rand(x.shape[0], generator=gen)
        ps = self.path.sample(t=t, x_0=x0, x_1=x)
        return (self.vf(ps.x_t, ps.t) - ps.dx_t).square().mean()

    def log_prob(self, x, cfg):
        # sdeflow's time s = 1 - t (data at s = 0): dx/ds = -u(x, 1 - s)
        flow = ForwardSDE(lambda y, s: -self.vf(y, 1 - s), 0.0)
        res = ode_log_likelihood(flow, StandardNormal((2,)), ttq._span(0.0, 1.0, x), x,
                                 rtol=cfg.rtol, atol=cfg.atol)
        return res.log_prob, res.nfe


ttq.ARMS["fm-peer"] = ttq.Arm(model="peer", batch=4096, lr=1e-3)
_build = ttq.build
ttq.build = lambda arm, cfg: PeerBench(cfg) if arm.model == "peer" else _build(arm, cfg)
if __name__ == "__main__":
    raise SystemExit(ttq.main())
