r"""The networks by name (a recipe's ``[drift]`` and ``[score]`` ``net``): :data:`NETS`.

Each factory is ``(spec, shape) -> nn.Module``: ``spec`` is the recipe's network table (its
``net`` and the keys the entry declares), ``shape`` the shape of one state. An entry's
``extras["check"]``, when present, is ``(section, spec) -> None`` and raises a ``ValueError``
naming the key; the recipe loader calls it. ``extras["tiny"]``, when present, holds the entry's
keys for a network of a few thousand parameters (``--smoke`` runs, :mod:`sdeflow.runs.smoke`).

- ``fourier_mlp``: :class:`~sdeflow.nets.FourierMLP` of ``width`` and ``depth`` on flat states;
- ``mlp``: :class:`~sdeflow.nets.TimeMLP` (``width``, ``depth``; ``activation``, SiLU by
  default), the time appended to the input (flow matching's 2D examples);
- ``ddpm_unet``: :class:`~sdeflow.nets.UNet` (``ch``, ``ch_mult``, ``num_res_blocks``,
  ``attn_resolutions``, ``dropout``) on ``(C, H, W)`` states;
- ``lucid_unet``: :class:`~sdeflow.nets.LucidUNet` (``dim``, ``dim_mults``; ``attn_heads``,
  ``attn_dim_head``).

An entry declaring ``extras["conditional"]`` builds a conditional network
(:mod:`sdeflow.conditioning`) when ``spec`` holds ``num_classes`` (a recipe's
``model.num_classes``, put there by :func:`sdeflow.recipes.build_network`): ``fourier_mlp`` and
``mlp`` do (:class:`~sdeflow.nets.ConditionalFourierMLP`,
:class:`~sdeflow.nets.ConditionalTimeMLP`).

A ``time_input`` of ``"<c>t"`` feeds :math:`c\,t` to a U-Net's time embedding (``"t"``:
:math:`t` itself, as the official code).

Example:
    >>> net = NETS.get("fourier_mlp")({"net": "fourier_mlp", "width": 16, "depth": 1}, (2,))
    >>> type(net).__name__, NETS.required("lucid_unet")
    ('FourierMLP', ('dim', 'dim_mults'))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from sdeflow.registry import Registry

__all__ = ["NETS", "time_scale"]

_NUMBER = (int, float)
_TIME_INPUT = re.compile(r"^(?:(\d+(?:\.\d*)?(?:e[+-]?\d+)?))?t$")

#: The networks by name; factories ``(spec, shape) -> nn.Module``.
NETS: Registry[Callable[[Mapping[str, Any], tuple[int, ...]], nn.Module]] = Registry(
    "net", key="net")


def time_scale(time_input: str) -> float:
    r"""The factor :math:`c` of a ``time_input`` ``"t"`` (1) or ``"<c>t"``.

    Example:
        >>> time_scale("t"), time_scale("1000t")
        (1.0, 1000.0)
    """
    match = _TIME_INPUT.match(time_input) if isinstance(time_input, str) else None
    if match is None or (match.group(1) is not None and not float(match.group(1)) > 0):
        raise ValueError(f"time_input must be 't' or '<c>t' with a number c > 0 (e.g. '1000t'), "
                         f"got {time_input!r}")
    return 1.0 if match.group(1) is None else float(match.group(1))


def _check(section: str, spec: Mapping[str, Any]) -> None:
    """The checks of the built-in networks' keys, naming ``section.key``."""
    try:
        time_scale(spec.get("time_input", "t"))
    except ValueError as err:
        raise ValueError(f"{section}.{err}") from None
    for key in ("ch_mult", "dim_mults", "attn_resolutions"):
        values = spec.get(key)
        if key in spec and not (isinstance(values, list) and (values or key.startswith("attn"))
                                and all(isinstance(v, int) and not isinstance(v, bool)
                                        and v >= 1 for v in values)):
            raise ValueError(f"{section}.{key} must be a list of integers >= 1, got {values!r}")
    if "dropout" in spec and not 0 <= spec["dropout"] < 1:
        raise ValueError(f"{section}.dropout must be in [0, 1), got {spec['dropout']}")


def _image(name: str, shape: tuple[int, ...]) -> None:
    if len(shape) != 3:
        raise ValueError(f"net {name!r} needs image states (C, H, W), got shape {shape}")


@NETS.register("fourier_mlp", required={"width": int, "depth": int},
               optional={"time_input": str}, check=_check, tiny={"width": 16, "depth": 1},
               conditional=True)
def fourier_mlp(spec: Mapping[str, Any], shape: tuple[int, ...]) -> nn.Module:
    """:class:`~sdeflow.nets.FourierMLP` ``(d, width, depth)`` for states ``(d,)``
    (:class:`~sdeflow.nets.ConditionalFourierMLP` with ``num_classes``)."""
    from sdeflow.nets.conditional import ConditionalFourierMLP
    from sdeflow.nets.mlp import FourierMLP

    if len(shape) != 1:
        raise ValueError(f"net 'fourier_mlp' needs flat states (d,), got shape {shape}")
    if time_scale(spec.get("time_input", "t")) != 1.0:
        raise ValueError(f"net 'fourier_mlp' takes time_input 't' only, got "
                         f"{spec.get('time_input')!r}")
    if spec.get("num_classes") is not None:
        return ConditionalFourierMLP(shape[0], spec["width"], spec["depth"],
                                     num_classes=spec["num_classes"])
    return FourierMLP(shape[0], spec["width"], spec["depth"])


@NETS.register("mlp", required={"width": int, "depth": int}, optional={"activation": str},
               check=_check, tiny={"width": 16, "depth": 1}, conditional=True)
def mlp(spec: Mapping[str, Any], shape: tuple[int, ...]) -> nn.Module:
    """:class:`~sdeflow.nets.TimeMLP` ``(d, width, depth, activation)`` for states ``(d,)``
    (:class:`~sdeflow.nets.ConditionalTimeMLP` with ``num_classes``)."""
    from sdeflow.nets.conditional import ConditionalTimeMLP
    from sdeflow.nets.mlp import TimeMLP

    if len(shape) != 1:
        raise ValueError(f"net 'mlp' needs flat states (d,), got shape {shape}")
    if spec.get("num_classes") is not None:
        return ConditionalTimeMLP(shape[0], spec["width"], spec["depth"],
                                  spec.get("activation", "silu"),
                                  num_classes=spec["num_classes"])
    return TimeMLP(shape[0], spec["width"], spec["depth"], spec.get("activation", "silu"))


@NETS.register("ddpm_unet", required={"ch": int, "ch_mult": list, "num_res_blocks": int,
                                      "attn_resolutions": list, "dropout": _NUMBER},
               optional={"time_input": str}, check=_check,
               tiny={"ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [16],
                     "dropout": 0.0})
def ddpm_unet(spec: Mapping[str, Any], shape: tuple[int, ...]) -> nn.Module:
    """:class:`~sdeflow.nets.UNet` (DDPM) for states ``(C, H, W)``."""
    from sdeflow.nets.unet import UNet

    _image("ddpm_unet", shape)
    return UNet(shape[0], ch=spec["ch"], ch_mult=tuple(spec["ch_mult"]),
                num_res_blocks=spec["num_res_blocks"],
                attn_resolutions=tuple(spec["attn_resolutions"]),
                dropout=float(spec["dropout"]), image_size=shape[-1],
                time_scale=time_scale(spec.get("time_input", "t")))


@NETS.register("lucid_unet", required={"dim": int, "dim_mults": list},
               optional={"attn_heads": int, "attn_dim_head": int, "time_input": str},
               check=_check, tiny={"dim": 8, "dim_mults": [1, 2], "attn_heads": 2,
                                   "attn_dim_head": 4})
def lucid_unet(spec: Mapping[str, Any], shape: tuple[int, ...]) -> nn.Module:
    """:class:`~sdeflow.nets.LucidUNet` (linear attention) for states ``(C, H, W)``."""
    from sdeflow.nets.lucid_unet import LucidUNet

    _image("lucid_unet", shape)
    extra = {k: spec[k] for k in ("attn_heads", "attn_dim_head") if k in spec}
    return LucidUNet(shape[0], dim=spec["dim"], dim_mults=tuple(spec["dim_mults"]),
                     time_scale=time_scale(spec.get("time_input", "t")), **extra)
