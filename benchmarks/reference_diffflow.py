r"""The official DiffFlow training step, as the official code computes it: the CPU/GPU baseline.

Follows the official implementation (GitHub ``qsh-zh/DiffFlow``), in plain PyTorch:

- the network, :class:`ReferenceFourierMLP`, is ``networks/fouriermlp.py`` (``FourierMLP``):
  Fourier features :math:`[\sin(\omega t + \varphi), \cos(\omega t + \varphi)]` of the call's
  one (scalar) time, computed **once per call** on a ``(1, 2w)`` tensor, passed through the
  time MLP once and broadcast over the batch, summed after the input layer;
- the step, :func:`reference_loss`, is ``networks/base_model.py`` (``BaseModel.forward`` and
  ``forward_step``; ``DiffFlow.forward`` in ``networks/diff_flow.py``): per grid step, one drift
  call at :math:`x_i` for the forward step
  :math:`x_{i+1} = x_i + f(x_i, t_i)\,dt_i + g_i\sqrt{dt_i}\,\delta^F_i`, then
  ``cal_backnoise``: a **fresh** drift call and a score call at :math:`x_{i+1}`,
  :math:`\delta^B_i = (x_i - x_{i+1} + [f(x_{i+1}, t_{i+1}) - g_{i+1}^2 s(x_{i+1}, t_{i+1})]
  \,dt_i) / (g_{i+1}\sqrt{dt_i})`: :math:`2N` drift and :math:`N` score calls (the official code
  does not reuse :math:`f(x_{i+1}, t_{i+1})` for the next forward step). The graph of the whole
  sweep is kept and one ``backward`` differentiates it ("naive backprop");
- the loss is ``modules/sde_loss.py`` (``loss_fn``):
  :math:`E[-\log \mathcal N(x_N; 0, I) - \sum_i \Delta_i]` with
  :math:`\Delta_i = -\tfrac12(|\delta^B_i|^2 - |\delta^F_i|^2)` (``forward_step``'s
  ``delta_s``), batch mean. For a constant :math:`g` it equals sdeflow's negative ELBO
  (:class:`sdeflow.DiffFlowObjective`), whose :math:`d\log(g_{i+1}/g_i)` terms vanish;
- :func:`reference_adjoint_loss` is the official stochastic adjoint, ``utils/sdefunction.py``
  (``SdeF``, used by ``QuickDiffFlow`` in ``networks/diff_flow.py``): a graph-free forward sweep
  (the same :math:`2N + N` calls) that stores every state :math:`x_i`, then a backward sweep
  that, per step from the last, recomputes ``cal_backnoise`` (drift and score at the stored
  :math:`x_{i+1}`) and differentiates :math:`-\tfrac12|\delta^B_i|^2` with respect to
  :math:`x_i, x_{i+1}` and the parameters, then recomputes the forward drift at :math:`x_i`
  (``cal_next_nodiffusion``) and differentiates it against the carried adjoint: another
  :math:`2N` drift and :math:`N` score calls with their backward passes.

What differs from the official code, none of it in what is computed:

- the time enters the features in the network's dtype (the official ``cond.float()`` rounds it
  to float32 first: the same in float32 runs, and float64 checks stay exact);
- the forward noise can be passed in (``noise``) so that the reference and sdeflow see the same
  :math:`\delta^F`; when omitted it is drawn per step, as the official ``forward_step`` does;
- the adjoint accumulates each parameter's gradient in its own tensor instead of one flattened
  vector (the official ``_flatten`` / ``_unflatten`` copies), does not keep the graphs it has
  differentiated (``retain_graph=True`` there, which frees nothing sooner and computes nothing
  more) and drops the per-step statistics dictionary: the same sums, no more work;
- the constant diffusion is a number ``g`` (the official 2D configuration, ``g = 0.2``); a tensor
  of :math:`N + 1` values per grid time (the official ``diffusion`` buffer) works too.

``ReferenceFourierMLP.from_fourier_mlp`` copies an :class:`sdeflow.nets.FourierMLP`'s weights, so
the reference and sdeflow compute the same function (``benchmarks/train_step.py`` and
``tests/test_benchmarks.py`` check the losses and gradients agree).

An earlier version of this file computed the time features per sample (``t`` expanded to
``(B, 1)``, the time MLP run on ``(B, 2w)``), which the official code does not: about 1.5x the
official cost per network call. Speed-ups quoted against it in ``docs/benchmarks.md`` are marked
as historical there.

References:
    Diffusion Normalizing Flow (Zhang & Chen, 2021), https://arxiv.org/abs/2110.07579

Example:
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> drift, score = ReferenceFourierMLP(2, 8, 1), ReferenceFourierMLP(2, 8, 1)
    >>> ts = torch.linspace(1e-3, 0.05, 6)
    >>> x0, noise = torch.randn(4, 2), torch.randn(5, 4, 2)
    >>> naive = reference_loss(drift, score, x0, ts, 0.2, noise)
    >>> adjoint = reference_adjoint_loss(drift, score, x0, ts, 0.2, noise)
    >>> bool(torch.allclose(naive, adjoint))
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ReferenceFourierMLP", "reference_loss", "reference_adjoint_loss"]


class ReferenceFourierMLP(nn.Module):
    r"""The official 2D network (``networks/fouriermlp.py``): time features once per call.

    .. math:: \mathrm{out} = \mathrm{Layers}(W_x x + b_x + \mathrm{MLP}_t([\sin(\omega t +
        \varphi), \cos(\omega t + \varphi)])), \quad \omega = \mathrm{linspace}(0.1, 100, w)

    with ``Layers = GELU, depth x (Linear(w, w), GELU), Linear(w, d)``.

    Arguments:
        dim: The state size ``d``.
        width: The hidden width ``w`` (also the number of frequencies).
        depth: The number of hidden ``w x w`` layers (the official ``num_layers``).
    """

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
        """``x``: ``(B, *state)``; ``t``: the call's one time, shape ``()`` or ``(1,)``."""
        if t.numel() != 1:
            raise ValueError(f"t must be one time for the whole batch (the official code's "
                             f"scalar cond), got shape {tuple(t.shape)}")
        arg = self.freqs * t.reshape(()) + self.phase  # (1, w): once per call
        emb = self.time_embed(torch.cat([arg.sin(), arg.cos()], dim=-1))  # (1, w)
        out = self.layers(self.input_embed(x.reshape(x.shape[0], -1)) + emb)  # broadcast
        return out.reshape(x.shape)

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


def _diffusions(g: float | Tensor, ts: Tensor) -> Tensor:
    """``g`` at every grid time, ``(N + 1,)`` (the official ``diffusion`` buffer)."""
    g = torch.as_tensor(g, dtype=ts.dtype, device=ts.device)
    if g.dim() == 0:
        return g.expand(ts.shape)
    if g.shape != ts.shape:
        raise ValueError(f"g must be a number or one value per grid time {tuple(ts.shape)}, "
                         f"got shape {tuple(g.shape)}")
    return g


def _check_noise(noise: Tensor | None, x0: Tensor, n_steps: int) -> None:
    if noise is not None and tuple(noise.shape) != (n_steps, *x0.shape):
        raise ValueError(f"noise must have shape (N, batch, *state) = {(n_steps, *x0.shape)}, "
                         f"got {tuple(noise.shape)}")


def _next_mean(drift: nn.Module, x: Tensor, dt: Tensor, t: Tensor) -> Tensor:
    """``cal_next_nodiffusion``: :math:`x + f(x, t)\\,dt`."""
    return x + drift(x, t) * dt


def _backward_noise(drift: nn.Module, score: nn.Module, x: Tensor, z: Tensor, dt: Tensor,
                    t_next: Tensor, g_next: Tensor) -> Tensor:
    """``cal_backnoise``: :math:`\\delta^B` of the step from ``x`` to ``z`` (fresh drift call)."""
    b = drift(z, t_next) - g_next**2 * score(z, t_next)
    return (x - z + b * dt) / (g_next * dt.sqrt())


def _square_sum(v: Tensor) -> Tensor:
    return v.flatten(start_dim=1).pow(2).sum(1)


def _forward_step(drift: nn.Module, score: nn.Module, x: Tensor, dt: Tensor, t: Tensor,
                  t_next: Tensor, g: Tensor, g_next: Tensor,
                  delta_f: Tensor | None) -> tuple[Tensor, Tensor]:
    """``forward_step``: :math:`(x_{i+1}, \\Delta_i)`, the noise drawn here when not given."""
    if delta_f is None:
        delta_f = torch.randn_like(x)
    z = _next_mean(drift, x, dt, t) + dt.sqrt() * g * delta_f
    delta_b = _backward_noise(drift, score, x, z, dt, t_next, g_next)
    return z, -0.5 * (_square_sum(delta_b) - _square_sum(delta_f))


def _prior_nll(z: Tensor) -> Tensor:
    """:math:`-\\log \\mathcal N(z; 0, I)` per sample."""
    d = z[0].numel()
    return 0.5 * _square_sum(z) + 0.5 * d * math.log(2 * math.pi)


def reference_loss(drift: nn.Module, score: nn.Module, x0: Tensor, ts: Tensor,
                   g: float | Tensor, noise: Tensor | None = None) -> Tensor:
    r"""The official loss by naive backprop: :math:`E[-\log\mathcal N(x_N; 0, I) - \sum_i
    \Delta_i]` over the batch, the whole sweep's graph kept.

    Arguments:
        drift, score: Networks ``net(x, t)`` with a scalar ``t``.
        x0: Data, ``(B, *state)``.
        ts: The grid ``(N + 1,)``.
        g: The diffusion: a number, or one value per grid time.
        noise: :math:`\delta^F`, ``(N, B, *state)``; drawn per step when omitted.

    Returns:
        The scalar loss.
    """
    n_steps = ts.shape[0] - 1
    _check_noise(noise, x0, n_steps)
    gs = _diffusions(g, ts)
    x = x0
    log_abs_det = x0.new_zeros(x0.shape[0])
    for i, dt in enumerate(ts[1:] - ts[:-1]):
        x, delta_s = _forward_step(drift, score, x, dt, ts[i], ts[i + 1], gs[i], gs[i + 1],
                                   None if noise is None else noise[i])
        log_abs_det = log_abs_det + delta_s
    return _prior_nll(x).mean() - log_abs_det.mean()


class _OfficialAdjoint(torch.autograd.Function):
    """``utils/sdefunction.py``'s ``SdeF``: ``(x0, ...) -> (x_N, sum_i Delta_i)``."""

    @staticmethod
    def forward(ctx, x0: Tensor, drift: nn.Module, score: nn.Module, ts: Tensor, gs: Tensor,
                noise: Tensor | None, *params: Tensor) -> tuple[Tensor, Tensor]:
        n_steps = ts.shape[0] - 1
        history = x0.new_zeros(n_steps, *x0.shape)
        log_abs_det = x0.new_zeros(x0.shape[0])
        x = x0
        with torch.no_grad():
            for i, dt in enumerate(ts[1:] - ts[:-1]):
                history[i] = x
                x, delta_s = _forward_step(drift, score, x, dt, ts[i], ts[i + 1], gs[i],
                                           gs[i + 1], None if noise is None else noise[i])
                log_abs_det += delta_s
        ctx.nets = (drift, score)
        ctx.save_for_backward(history, x, ts, gs)
        return x, log_abs_det

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_log_abs_det: Tensor):
        history, z, ts, gs = ctx.saved_tensors
        drift, score = ctx.nets
        params = tuple(drift.parameters()) + tuple(score.parameters())
        grads: list[Tensor | None] = [None] * len(params)
        dts = ts[1:] - ts[:-1]
        with torch.enable_grad():
            for i in reversed(range(dts.shape[0])):
                x = history[i].detach().requires_grad_(True)
                z = z.detach().requires_grad_(True)
                delta_b = _backward_noise(drift, score, x, z, dts[i], ts[i + 1], gs[i + 1])
                delta_s = -0.5 * _square_sum(delta_b)
                grad_x_b, grad_z_b, *grad_b = torch.autograd.grad(
                    delta_s, (x, z) + params, grad_outputs=grad_log_abs_det, allow_unused=True)
                grad_x_f, *grad_f = torch.autograd.grad(
                    _next_mean(drift, x, dts[i], ts[i]), (x,) + params,
                    grad_outputs=grad_z_b + grad_z, allow_unused=True)
                for k, (gb, gf) in enumerate(zip(grad_b, grad_f)):
                    for part in (gb, gf):
                        if part is not None:
                            grads[k] = part if grads[k] is None else grads[k] + part
                z = history[i]
                grad_z = grad_x_f + grad_x_b
        return (grad_z, None, None, None, None, None, *grads)


def reference_adjoint_loss(drift: nn.Module, score: nn.Module, x0: Tensor, ts: Tensor,
                           g: float | Tensor, noise: Tensor | None = None) -> Tensor:
    r"""The official loss differentiated by the official stochastic adjoint (``SdeF``): the
    same value as :func:`reference_loss`, and the same gradient, with the activations of one
    step alive at a time (the states :math:`x_i` are stored).

    Arguments: as :func:`reference_loss`.

    Returns:
        The scalar loss.
    """
    n_steps = ts.shape[0] - 1
    _check_noise(noise, x0, n_steps)
    params = tuple(drift.parameters()) + tuple(score.parameters())
    z, log_abs_det = _OfficialAdjoint.apply(x0, drift, score, ts, _diffusions(g, ts), noise,
                                            *params)
    return _prior_nll(z).mean() - log_abs_det.mean()
