r"""The paper's training recipes as data, and the builder of their models.

``load_recipe("cifar-b")`` reads one of :data:`RECIPES` (TOML files shipped with the package:
the official DiffFlow configurations of DESIGN.md section 4, each value commented with its
source file, and sdeflow's own presets); :func:`apply_overrides` sets ``"section.key=value"``
entries; :func:`build_model` and :func:`trainer_options` turn a recipe into a model and the
:class:`~sdeflow.training.Trainer` options.
"""

from sdeflow.recipes.build import (
    build_model,
    build_network,
    final_steps,
    grid_factory,
    state_shape,
    steps_schedule,
    trainer_options,
)
from sdeflow.recipes.loader import (
    RECIPES,
    apply_overrides,
    load_recipe,
    parse_override,
    recipe_get,
    time_scale,
    validate_recipe,
)

__all__ = [
    "RECIPES",
    "apply_overrides",
    "build_model",
    "build_network",
    "final_steps",
    "grid_factory",
    "load_recipe",
    "parse_override",
    "recipe_get",
    "state_shape",
    "steps_schedule",
    "time_scale",
    "trainer_options",
    "validate_recipe",
]
