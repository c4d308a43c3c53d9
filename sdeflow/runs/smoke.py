r"""``--smoke``: a preset shrunk to seconds on a CPU, its kinds of parts kept.

A smoke run keeps everything that makes a recipe what it is (the model family, the kinds of
networks, grid and schedule of :math:`N`, the gradient strategy) and shrinks the sizes: tiny
networks, four training steps of batch four in fp32 (an LR warm-up of one step), a short
schedule of :math:`N`. The tiny
sizes are declared by each registered network and N schedule (``tiny=`` in its registration,
:attr:`sdeflow.Registry` extras), so a user's registered part can declare its own; a part that
declares none keeps the recipe's sizes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["smoke_overrides"]


def _entry(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def _tiny(registry, name: str | None) -> dict[str, Any]:
    if name is None or name not in registry:
        return {}
    return dict(registry.entry(name).extras.get("tiny", {}))


def smoke_overrides(recipe: Mapping[str, Any]) -> list[str]:
    """The recipe entries ``--smoke`` sets: tiny networks of the recipe's kinds (in every table
    that names a ``net``), 4 steps of
    batch 4 in fp32, a short schedule of :math:`N`, 4 sampling steps; 2D recipes also draw 256
    training and 64 test points.

    Example:
        >>> from sdeflow.recipes import load_recipe
        >>> smoke_overrides(load_recipe("cifar-b"))[:3]
        ['train.iterations=4', 'train.batch_size=4', 'train.precision="fp32"']
        >>> [o for o in smoke_overrides(load_recipe("cifar-b")) if o.startswith("schedule")]
        ['schedule.values=[2, 3, 4]', 'schedule.milestones=[1, 2]']
    """
    from sdeflow.nets import NETS
    from sdeflow.recipes import recipe_get, state_shape
    from sdeflow.training import STEPS_SCHEDULES

    out = [_entry("train.iterations", 4), _entry("train.batch_size", 4),
           _entry("train.precision", "fp32"), _entry("sample.steps", 4)]
    if recipe.get("optimizer", {}).get("lr_warmup"):  # a warm-up longer than the smoke run
        out.append(_entry("optimizer.lr_warmup", 1))
    for section, table in recipe.items():  # every table that names a network
        if isinstance(table, Mapping) and "net" in table:
            out += [_entry(f"{section}.{k}", v) for k, v in _tiny(NETS, table["net"]).items()]
    tiny = _tiny(STEPS_SCHEDULES, recipe_get(recipe, "schedule.kind"))
    out += [_entry(f"schedule.{k}", v) for k, v in tiny.items()]
    if len(state_shape(recipe)) == 1:
        out += [_entry("data.train_size", 256), _entry("data.val_size", 64)]
    return out
