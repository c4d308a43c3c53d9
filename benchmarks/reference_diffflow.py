r"""The plain reference implementation of DiffFlow's training step (the paper's Algorithm 1).

Written the obvious way, in plain PyTorch, as the baseline of ``benchmarks/train_step.py``:

- a loop over the grid; forward step
  :math:`x_{i+1} = x_i + f(x_i, t_i)\,dt_i + g_i\sqrt{dt_i}\,\delta^F_i`;
- :math:`\delta^B_i = (x_i - x_{i+1} + [f(x_{i+1}, t_{i+1}) - g_{i+1}^2 s(x_{i+1}, t_{i+1})]\,dt_i)
  / (g_{i+1}\sqrt{dt_i})` with a *fresh* drift call at :math:`x_{i+1}` (2N drift calls, N score);
- the network computes its Fourier time features per sample (``t`` expanded to ``(B, 1)``), as
  the official code does;
- loss :math:`E[-\log p_{prior}(x_N) + \sum_i |\delta^B_i|^2/2]`, one ``backward``.

``ReferenceFourierMLP.from_fourier_mlp`` copies an :class:`sdeflow.nets.FourierMLP`'s weights,
so the reference and sdeflow compute the same function (checked by the benchmark).

References:
    Diffusion Normalizing Flow (Zhang & Chen, 2021), https://arxiv.org/abs/2110.07579
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ReferenceFourierMLP", "reference_loss"]


class ReferenceFourierMLP(nn.Module):
    """The official 2D network: Fourier time features per sample, summed after the input layer."""

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.linspace(0.1, 100.0, width)[None])
        self.phase = nn.Parameter(torch.randn(width)[None])
        self.time_embed = nn.Sequential(nn.Linear(2 * width, width), nn.GELU(),
                                        nn.Linear(width, width))
        self.input_embed = nn.Linear(dim, width)
        layers: list[nn.Module] = [nn.GELU()]
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.GELU()]
        self.layers = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = t.reshape(-1, 1).expand(x.shape[0], 1)  # per sample, as in the official code
        arg = self.freqs * t + self.phase
        emb = self.time_embed(torch.cat([arg.sin(), arg.cos()], dim=-1))
        return self.layers(self.input_embed(x) + emb)

    @classmethod
    def from_fourier_mlp(cls, net: nn.Module) -> ReferenceFourierMLP:
        """A reference network holding copies of ``net``'s (a ``FourierMLP``) weights."""
        n_hidden = sum(isinstance(m, nn.Linear) for m in net.hidden)
        ref = cls(net.dim, net.input.out_features, n_hidden)
        ref = ref.to(dtype=net.input.weight.dtype, device=net.input.weight.device)
        with torch.no_grad():
            features = net.time_features
            freqs = getattr(features, "freqs", None)
            if freqs is None:  # rebuilt per call from its range
                freqs = torch.linspace(features.min_freq, features.max_freq, features.n_freqs,
                                       dtype=torch.float64)
            ref.freqs.copy_(freqs[None])
            for dst, src in ref.parameter_pairs(net):
                dst.copy_(src.reshape(dst.shape))
        return ref

    def parameter_pairs(self, net: nn.Module) -> list[tuple[Tensor, Tensor]]:
        """``(reference parameter, FourierMLP parameter)`` for every parameter of ``net``."""
        pairs = [(self.time_embed[0], net.time_mlp[0]), (self.time_embed[2], net.time_mlp[2]),
                 (self.input_embed, net.input), (self.layers[-1], net.output)]
        ref_linears = [m for m in self.layers[:-1] if isinstance(m, nn.Linear)]
        pairs += list(zip(ref_linears, [m for m in net.hidden if isinstance(m, nn.Linear)]))
        out = [(self.phase, net.time_features.phase)]
        for dst, src in pairs:
            out += [(dst.weight, src.weight), (dst.bias, src.bias)]
        return out


def reference_loss(drift: nn.Module, score: nn.Module, x0: Tensor, ts: Tensor, g: float,
                   noise: Tensor) -> Tensor:
    r"""Algorithm 1's loss for one batch: :math:`E[-\log N(x_N; 0, I) + \sum_i |\delta^B_i|^2/2]`.

    Arguments:
        drift, score: Networks ``net(x, t)``.
        x0: Data, ``(B, d)``.
        ts: The grid ``(N + 1,)``.
        g: The constant diffusion.
        noise: :math:`\delta^F`, ``(N, B, d)``.
    """
    x = x0
    loss = x0.new_zeros(x0.shape[0])
    for i in range(ts.shape[0] - 1):
        t, t_next = ts[i], ts[i + 1]
        dt = t_next - t
        x_next = x + drift(x, t) * dt + g * dt.sqrt() * noise[i]
        b = drift(x_next, t_next) - g**2 * score(x_next, t_next)
        delta_b = (x - x_next + b * dt) / (g * dt.sqrt())
        loss = loss + 0.5 * delta_b.pow(2).sum(-1)
        x = x_next
    d = x.shape[-1]
    loss = loss + 0.5 * x.pow(2).sum(-1) + 0.5 * d * math.log(2 * math.pi)
    return loss.mean()
