r"""Conditioning and classifier-free guidance, passed through every part.

A *condition* is a batch-aligned tensor :math:`y`: integer class labels ``(B,)`` or vectors
``(B, k)``, one per sample of the batch it goes with. A network that takes one declares it,
``conditional = True``, is called ``net(x, t, condition)``, and offers
``null_condition(condition)``: the values that mean "no condition" (a conditional net called
without one, ``net(x, t)``, is the unconditional model, evaluated on the null condition). An
unconditional network is never called with a condition.

Parts pass a condition on by *binding*, never by a type switch: :func:`bind` makes a network
that declares itself conditional into :class:`Bound` (``forward(x, t) = net(x, t, y)``), asks a
part that offers ``conditioned(condition, guidance)`` (the processes, path wrappers) for its
bound copy, and leaves every other part as it is. So :meth:`SDE.conditioned
<sdeflow.processes.SDE.conditioned>` of a process returns a copy whose networks are bound, and
the samplers, objectives and likelihood run that copy exactly as they run an unconditional
process. The entry points take ``condition=`` (default ``None``: today's behaviour, bit for bit)
and refuse a condition that nothing in the model can take (:func:`bind_condition`).

**Classifier-free guidance** (Ho & Salimans, 2022): training replaces each sample's condition by
the null condition with probability ``p_uncond`` (:func:`drop_condition`), so that one network
learns both :math:`v(x, t, y)` and :math:`v(x, t, \varnothing)`; sampling uses

.. math:: v_w(x, t, y) = v(x, t, \varnothing) + w\,\big(v(x, t, y) - v(x, t, \varnothing)\big)

with the guidance scale :math:`w` (:class:`Guided`): :math:`w = 0` is the unconditional model,
:math:`w = 1` the conditional one, :math:`w > 1` guided (Ho & Salimans' guidance weight is
:math:`w - 1`). Every drift in sdeflow is affine in its networks' outputs with coefficients that
do not depend on the condition (the reverse drift :math:`f - \tfrac{1+\lambda^2}{2}g^2 s`, a
path's velocity :math:`c_x x + c_y\,m`), and the weights :math:`1 - w` and :math:`w` sum to one,
so guiding every network with the same :math:`w` guides the drift itself: for DiffFlow,
:math:`f_w - \tfrac{1+\lambda^2}{2} g^2 s_w` is the guided reverse drift, for the ODE
(:math:`\lambda = 0`) and for :math:`\lambda > 0` alike.

References:
    Classifier-Free Diffusion Guidance (Ho & Salimans, 2022), https://arxiv.org/abs/2207.12598

Example:
    >>> import torch
    >>> from sdeflow.nets import ConditionalFourierMLP
    >>> net = ConditionalFourierMLP(2, 16, 1, num_classes=2)
    >>> x, t, y = torch.randn(3, 2), torch.rand(3), torch.tensor([0, 1, 1])
    >>> torch.equal(bind(net, y)(x, t), net(x, t, y))
    True
    >>> torch.equal(bind(net, y, guidance=0.0)(x, t), net(x, t))  # the unconditional model
    True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Bound", "Guided", "bind", "guided", "is_conditional", "check_condition",
           "null_condition", "drop_condition", "bind_condition", "split_batch", "replaced"]


def is_conditional(part: object) -> bool:
    """Whether ``part`` declares that it takes a condition (``conditional = True``)."""
    return bool(getattr(part, "conditional", False))


def check_condition(condition: object, batch: int | None = None, where: str = "condition",
                    like: Tensor | None = None) -> Tensor:
    r"""``condition`` if it is a valid condition for a batch of ``batch`` samples, else an error
    naming ``where``: a tensor of integer labels ``(B,)`` (``>= 0``) or of finite vectors
    ``(B, k)``, on ``like``'s device when ``like`` is given.

    Example:
        >>> check_condition(torch.tensor([0, 1]), 2).tolist()
        [0, 1]
        >>> check_condition(torch.tensor([0, 1]), 3, "sample")
        Traceback (most recent call last):
        ...
        ValueError: sample: condition must have one entry per sample, batch 3, got shape (2,)
    """
    if not isinstance(condition, Tensor):
        raise TypeError(f"{where}: condition must be a tensor of class labels (B,) or vectors "
                        f"(B, k), got {type(condition).__name__}")
    if condition.dim() == 0:
        raise ValueError(f"{where}: condition must have a batch dimension, (B,) labels or "
                         f"(B, k) vectors, got a scalar")
    if batch is not None and condition.shape[0] != batch:
        raise ValueError(f"{where}: condition must have one entry per sample, batch {batch}, "
                         f"got shape {tuple(condition.shape)}")
    if condition.dtype == torch.bool or condition.is_complex():
        raise TypeError(f"{where}: condition must hold integer labels or real vectors, got "
                        f"dtype {condition.dtype}")
    if condition.is_floating_point():
        if condition.dim() < 2:
            raise ValueError(f"{where}: a vector condition must have shape (B, k), got "
                             f"{tuple(condition.shape)} (class labels are integers)")
        if not bool(torch.isfinite(condition).all()):
            raise ValueError(f"{where}: condition must be finite, got NaN or inf")
    else:
        if condition.dim() != 1:
            raise ValueError(f"{where}: class labels must have shape (B,), got "
                             f"{tuple(condition.shape)}")
        if condition.numel() and int(condition.min()) < 0:
            raise ValueError(f"{where}: class labels must be >= 0, got {int(condition.min())}")
    if like is not None and condition.device != like.device:
        raise ValueError(f"{where}: condition is on {condition.device} but the data are on "
                         f"{like.device}")
    return condition


def replaced(module: nn.Module, **parts: Any) -> nn.Module:
    """A shallow copy of ``module`` (its class, its other attributes shared) with ``parts`` set,
    without touching ``module``: the copy has its own tables of submodules, parameters and
    buffers (a plain :func:`copy.copy` of a module would share them)."""
    new = copy.copy(module)
    for table in ("_modules", "_parameters", "_buffers"):
        object.__setattr__(new, table, dict(getattr(module, table)))
    for name, value in parts.items():
        setattr(new, name, value)
    return new


def _call(net: Callable[..., Tensor], x: Tensor, t: Tensor, condition: Tensor) -> Tensor:
    if condition.shape[0] != x.shape[0]:
        raise ValueError(f"the bound condition has {condition.shape[0]} entries but the network "
                         f"is called on a batch of {x.shape[0]} (bind one condition per sample)")
    return net(x, t, condition)


class Bound(nn.Module):
    r"""A conditional network bound to a condition: ``forward(x, t) = net(x, t, condition)``.

    The condition is held as a plain attribute (not a buffer: it belongs to a call, not to the
    model's state). :meth:`select` gives the same network bound to a slice of the condition.

    Example:
        >>> import torch
        >>> from sdeflow.nets import ConditionalTimeMLP
        >>> net = ConditionalTimeMLP(2, 8, 1, num_classes=3)
        >>> y = torch.tensor([2, 0])
        >>> Bound(net, y)(torch.zeros(2, 2), torch.rand(2)).shape
        torch.Size([2, 2])
    """

    def __init__(self, net: Callable[..., Tensor], condition: Tensor) -> None:
        super().__init__()
        self.net, self.condition = net, condition

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return _call(self.net, x, t, self.condition)

    def select(self, index: slice | Tensor) -> Bound:
        """The network bound to ``condition[index]``."""
        return Bound(self.net, self.condition[index])

    def extra_repr(self) -> str:
        return f"condition={tuple(self.condition.shape)}"


class Guided(nn.Module):
    r"""Classifier-free guidance of a conditional network with scale :math:`w`:

    .. math:: v_w(x, t) = v(x, t, \varnothing) + w\,\big(v(x, t, y) - v(x, t, \varnothing)\big)

    (:math:`w = 0`: the unconditional model; :math:`w = 1`: the conditional one; Ho & Salimans'
    guidance weight is :math:`w - 1`). Both evaluations run as one call on a doubled batch.
    :func:`guided` returns a plain :class:`Bound` for :math:`w \in \{0, 1\}`, exactly.

    Arguments:
        net: A conditional network ``net(x, t, condition)`` offering ``null_condition``.
        condition: The condition, one entry per sample.
        scale: :math:`w`.

    Example:
        >>> import torch
        >>> from sdeflow.nets import ConditionalTimeMLP
        >>> net = ConditionalTimeMLP(2, 8, 1, num_classes=2)
        >>> x, t, y = torch.randn(4, 2, dtype=torch.float64), torch.rand(4, dtype=torch.float64), \
        ...     torch.tensor([0, 1, 0, 1])
        >>> net = net.double()
        >>> v0, v1 = net(x, t), net(x, t, y)
        >>> torch.allclose(Guided(net, y, 3.0)(x, t), v0 + 3.0 * (v1 - v0))
        True
    """

    def __init__(self, net: Callable[..., Tensor], condition: Tensor, scale: float) -> None:
        super().__init__()
        self.net, self.condition, self.scale = net, condition, float(scale)
        self.null = null_condition(net, condition)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        b = x.shape[0]
        if isinstance(t, Tensor) and t.dim() == 1 and t.shape[0] == b and b > 1:
            t = torch.cat([t, t])
        both = _call(self.net, torch.cat([x, x]), t, torch.cat([self.null, self.condition]))
        unconditional, conditional = both[:b], both[b:]
        return torch.lerp(unconditional, conditional, self.scale)

    def select(self, index: slice | Tensor) -> Guided:
        """The guided network on ``condition[index]``."""
        return Guided(self.net, self.condition[index], self.scale)

    def extra_repr(self) -> str:
        return f"condition={tuple(self.condition.shape)}, scale={self.scale}"


def guided(net: Callable[..., Tensor], condition: Tensor, scale: float = 1.0) -> nn.Module:
    r"""``net`` guided towards ``condition`` with scale :math:`w` (:class:`Guided`): exactly
    ``Bound(net, null)`` for :math:`w = 0` (the unconditional model) and ``Bound(net,
    condition)`` for :math:`w = 1` (the conditional model), each one network call.

    Example:
        >>> import torch
        >>> from sdeflow.nets import ConditionalTimeMLP
        >>> net = ConditionalTimeMLP(2, 8, 1, num_classes=2)
        >>> type(guided(net, torch.tensor([1]), 0.0)).__name__, guided(net, torch.tensor([1]),
        ...                                                            2.0).scale
        ('Bound', 2.0)
    """
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"guidance must be a finite number, got {scale}")
    if scale == 1.0:
        return Bound(net, condition)
    if scale == 0.0:
        return Bound(net, null_condition(net, condition))
    return Guided(net, condition, scale)


def bind(part: Any, condition: Tensor, guidance: float = 1.0) -> Any:
    r"""``part`` with ``condition`` bound: a network declaring ``conditional = True`` becomes
    :func:`guided` (:class:`Bound` at ``guidance=1``); a part offering ``conditioned(condition,
    guidance)`` (a process, :class:`~sdeflow.processes.ConvertedModel`, a wrapper) returns its
    bound copy; any other part is returned as it is (the same object: it takes no condition).

    Example:
        >>> f = lambda x, t: -x
        >>> bind(f, torch.tensor([0])) is f
        True
    """
    if is_conditional(part):
        return guided(part, condition, guidance)
    offer = getattr(part, "conditioned", None)
    if callable(offer):
        return offer(condition, guidance)
    return part


def null_condition(part: Any, condition: Tensor) -> Tensor:
    r"""The null condition ("no condition") shaped like ``condition``, as the conditional
    networks in ``part`` (a network, or a module holding them, e.g. a process) define it; a
    :class:`ValueError` if none takes a condition, or if two disagree.

    Example:
        >>> from sdeflow.nets import ConditionalTimeMLP
        >>> null_condition(ConditionalTimeMLP(2, 8, 1, num_classes=3), torch.tensor([0, 2]))
        tensor([3, 3])
    """
    found = [part] if is_conditional(part) else []
    if isinstance(part, nn.Module):
        found += [m for m in part.modules() if m is not part and is_conditional(m)]
    nulls = [m.null_condition(condition) for m in found]
    if not nulls:
        raise ValueError(f"{type(part).__name__} holds no conditional network (none declares "
                         f"conditional = True), so it has no null condition")
    if any(n.shape != nulls[0].shape or not torch.equal(n, nulls[0]) for n in nulls[1:]):
        raise ValueError(f"the conditional networks of {type(part).__name__} define different "
                         f"null conditions; give them the same")
    return nulls[0]


def drop_condition(condition: Tensor, null: Tensor, p_uncond: float,
                   generator: torch.Generator | None = None) -> Tensor:
    r"""``condition`` with each sample's entry replaced by ``null`` with probability
    ``p_uncond`` (classifier-free guidance's condition dropout; one uniform draw per sample
    from ``generator``). ``p_uncond = 0`` returns ``condition`` itself and draws nothing.

    Example:
        >>> y = drop_condition(torch.tensor([0, 1, 0, 1]), torch.full((4,), 2), 1.0)
        >>> y.tolist()
        [2, 2, 2, 2]
    """
    p_uncond = float(p_uncond)
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
    if p_uncond == 0.0:
        return condition
    device = generator.device if generator is not None else condition.device
    u = torch.rand(condition.shape[0], generator=generator, device=device).to(condition.device)
    drop = (u < p_uncond).reshape((-1,) + (1,) * (condition.dim() - 1))
    return torch.where(drop, null, condition)


def check_p_uncond(p_uncond: float) -> float:
    """``p_uncond`` as a float in ``[0, 1)``, else a :class:`ValueError` (private helper)."""
    if isinstance(p_uncond, bool) or not isinstance(p_uncond, (int, float)) \
            or not 0.0 <= p_uncond < 1.0:
        raise ValueError(f"p_uncond must be a number in [0, 1) (the probability of training a "
                         f"sample on the null condition), got {p_uncond!r}")
    return float(p_uncond)


def bind_condition(part: Any, condition: Tensor | None, guidance: float = 1.0, *,
                   batch: int | None = None, like: Tensor | None = None,
                   where: str = "condition") -> Any:
    r"""What an entry point does with its ``condition=`` and ``guidance=``: ``part`` (a process
    or a network) itself when ``condition`` is ``None`` (``guidance`` must then be 1), else
    :func:`bind` of the condition, checked (:func:`check_condition`: ``batch`` entries, on
    ``like``'s device); a :class:`ValueError` naming ``where`` when nothing in ``part`` takes a
    condition.

    Example:
        >>> from sdeflow import ForwardSDE
        >>> bind_condition(ForwardSDE(lambda x, t: -x, 1.0), torch.tensor([0]), where="sample")
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: sample: condition= was given but nothing in ForwardSDE takes a condition ...
    """
    if condition is None:
        if float(guidance) != 1.0:
            raise ValueError(f"{where}: guidance={guidance} needs a condition (condition=...)")
        return part
    check_condition(condition, batch, where, like)
    bound = bind(part, condition, guidance)
    if bound is part:
        raise ValueError(
            f"{where}: condition= was given but nothing in {type(part).__name__} takes a "
            f"condition (no network declares conditional = True); drop condition= or use a "
            f"conditional network (e.g. sdeflow.nets.ConditionalFourierMLP)")
    return bound


def split_batch(batch: Tensor | tuple | list) -> tuple[Tensor, Tensor | None]:
    """A training batch as ``(x, condition)``: a tensor is ``(x, None)``; a pair ``(x, y)``
    (a labelled :class:`~sdeflow.training.TensorBatches`) is itself.

    Example:
        >>> split_batch(torch.zeros(2, 1))[1] is None, split_batch((torch.zeros(2, 1),
        ...                                                         torch.tensor([0, 1])))[1]
        (True, tensor([0, 1]))
    """
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(f"a batch must be a tensor x or a pair (x, condition), got "
                    f"{type(batch).__name__}" + (f" of {len(batch)}" if isinstance(
                        batch, (tuple, list)) else ""))
