"""Grow the whole training state: model and optimizer state, mapped by parameter name.

Staged training (Shen et al. 2022) grows parameters *and* Adam moments with one operator so the grown
run keeps the small run's per-parameter Adam step. G_stack (Du et al. 2024) instead starts a fresh
optimizer (`moments="reset"`). Both are here; the LR schedule restart is the trainer's job (see
timing.restart_warmup_multiplier for the staged-training rule).

The mapping is generic over per-parameter optimizer state dicts:
  * a depth copy (the tensor's shape is unchanged) copies every state entry verbatim, whatever its shape;
  * otherwise tensors with the parameter's shape are mapped by the parameter's recipe, as first moments
    (scaled by the recipe's moment_scale) or, for keys in SECOND_MOMENT_KEYS, as second moments
    (scaled by moment_scale ** 2); entries that do not come from the source get 0;
  * scalars (e.g. AdamW's `step`) are copied from the source parameter's state;
  * a tensor of any other shape (Adam-mini's per-block v) cannot follow the recipe, so that
    parameter's whole state is dropped (the optimizer re-initialises it lazily) and a reason is logged;
  * tensors that are entirely new (G_zero's zeroed projections, G_random's layers) get no state:
    the optimizer initialises them lazily, i.e. m = v = 0 and step = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.optim import Optimizer

from hasten.errors import ConfigError
from hasten.methods.growth.operators import GrowthPlan, TensorRecipe, apply_plan, growth_plan
from hasten.model import GPT

MOMENT_MODES = ("map", "reset")
SECOND_MOMENT_KEYS = ("exp_avg_sq", "max_exp_avg_sq", "v")
FIRST_MOMENT_KEYS = ("exp_avg", "momentum_buffer", "m")


@dataclass
class GrownState:
    """What grow_training_state returns: the new model and optimizer, the plan, and notes to log."""

    model: GPT
    optimizer: Optimizer
    plan: GrowthPlan
    notes: list[str] = field(default_factory=list)


def map_param_state(name: str, recipe: TensorRecipe, param_shape: torch.Size, state: dict) -> tuple[dict, list[str]]:
    """The grown parameter's optimizer state from the small parameter's state (see module docstring)."""
    if not state or recipe.is_new:
        return {}, []
    if all(axis is None for axis in recipe.axes) and recipe.moment_scale == 1.0:
        # a verbatim copy (depth growth): every state entry is copied, whatever its shape, so
        # optimizers with non-elementwise state (Adam-mini's per-block v) carry over too
        return {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}, []
    odd = [k for k, v in state.items() if torch.is_tensor(v) and v.dim() > 0 and v.shape != param_shape]
    if odd:
        shapes = ", ".join(f"{k}{tuple(state[k].shape)}" for k in odd)
        return {}, [f"{name}: optimizer state {shapes} is not shaped like the parameter {tuple(param_shape)}; reset it"]
    notes: list[str] = []
    mapped: dict = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.dim() > 0:
            if key in SECOND_MOMENT_KEYS:
                kind = "second_moment"
            else:
                kind = "first_moment"
                if key not in FIRST_MOMENT_KEYS:
                    notes.append(f"{name}: optimizer state {key!r} is unknown; mapped as a first moment")
            mapped[key] = recipe.apply(value, kind)
        elif torch.is_tensor(value):
            mapped[key] = value.clone()
        else:
            mapped[key] = value
    return mapped, notes


def map_optimizer_state(
    plan: GrowthPlan, old_model: GPT, old_optimizer: Optimizer, new_model: GPT, new_optimizer: Optimizer
) -> list[str]:
    """Copy the small optimizer's state into new_optimizer (built over new_model), by parameter name."""
    old_params = dict(old_model.named_parameters())
    in_groups = {id(p) for group in new_optimizer.param_groups for p in group["params"]}
    missing = [n for n, p in new_model.named_parameters() if id(p) not in in_groups]
    if missing:
        raise ConfigError(
            f"growth: build_optimizer left {len(missing)} parameters out (e.g. {missing[0]}); "
            "build the optimizer from every parameter of the model it is given"
        )
    notes: list[str] = []
    for name, param in new_model.named_parameters():
        recipe = plan.recipes[name]
        old_param = old_params[recipe.source]
        state = old_optimizer.state.get(old_param, {})
        mapped, reasons = map_param_state(name, recipe, old_param.shape, state)
        notes.extend(reasons)
        if mapped:
            new_optimizer.state[param] = mapped
    return notes


def grow_training_state(
    model: GPT,
    optimizer: Optimizer,
    op: str,
    factor: float,
    dim: str = "depth",
    *,
    build_optimizer: Callable[[GPT], Optimizer],
    moments: str = "map",
    generator: torch.Generator | None = None,
) -> GrownState:
    """Grow model and optimizer together.

    moments="map": the optimizer state follows the parameters (staged training; width `staged` scales
    m by 1/k and v by 1/k^2 except the final norm's). moments="reset": a fresh optimizer, as G_stack does.
    build_optimizer(new_model) must return an optimizer over all of new_model's parameters, with the same
    group structure as the small run's (the trainer's optimizer builder does this).
    """
    if moments not in MOMENT_MODES:
        raise ConfigError(
            f"growth: moments={moments!r} is unknown; use 'map' (carry Adam state) or 'reset' (fresh optimizer)"
        )
    plan = growth_plan(model.config, op, factor, dim)
    new_model = apply_plan(plan, model, generator)
    new_optimizer = build_optimizer(new_model)
    notes = [plan.summary(), f"optimizer state: {moments}"]
    if moments == "map":
        notes += map_optimizer_state(plan, model, optimizer, new_model, new_optimizer)
        if dim == "width" and op != "staged":
            notes.append(
                f"width/{op}: moments are copied structurally without rescaling; only 'staged' preserves Adam's step"
            )
    return GrownState(new_model, new_optimizer, plan, notes)
