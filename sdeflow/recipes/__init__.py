r"""The paper's training recipes as data, and the builder of their models.

``load_recipe("cifar-b")`` reads one of :data:`RECIPES` (TOML files shipped with the package:
the official DiffFlow configurations of DESIGN.md section 4, each value commented with its
source file, and sdeflow's own presets); :func:`apply_overrides` sets ``"section.key=value"``
entries; :func:`build_model` and :func:`trainer_options` turn a recipe into a model (any family
of :data:`FAMILIES`) and the :class:`~sdeflow.training.Trainer` options. Every part a recipe
names resolves through its :class:`~sdeflow.registry.Registry`, so a part a user registers is
chosen from a recipe like a built-in one.
"""

from sdeflow.recipes.build import (
    FAMILIES,
    build_model,
    build_network,
    final_steps,
    grid_factory,
    random_grid_factory,
    sampling_grid,
    state_shape,
    steps_schedule,
    trainer_options,
)
from sdeflow.recipes.loader import (
    RECIPES,
    apply_overrides,
    load_recipe,
    parse_override,
    part_entry,
    recipe_get,
    recipe_schema,
    time_scale,
    validate_recipe,
)

__all__ = [
    "FAMILIES",
    "RECIPES",
    "apply_overrides",
    "build_model",
    "build_network",
    "sampling_grid",
    "final_steps",
    "grid_factory",
    "load_recipe",
    "parse_override",
    "part_entry",
    "random_grid_factory",
    "recipe_get",
    "recipe_schema",
    "state_shape",
    "steps_schedule",
    "time_scale",
    "trainer_options",
    "validate_recipe",
]
