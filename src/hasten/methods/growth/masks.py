"""Masked structural growth (MSG; Yao et al. 2023, the G_random width operator of arXiv 2405.15319).

After a width growth with fresh units (`random`), the new units' outputs are multiplied by
a mask that ramps linearly from 0 to 1, one axis after the other: first the FFN units, then the
hidden width, then the attention heads, `steps` optimizer steps each (the reference's order). At mask
0 the grown model computes exactly what the small model did (unit_masks.py puts the masks on the model
with forward hooks and weights the norms' statistics by them); at the end the masks are removed and the
model is the plain grown model.

The mask values are a function of the optimizer step only, so the ramp's state_dict (part of the growth
method's state in every checkpoint) gives a resumed run, and eval, generate and export of a checkpoint
(restore_ramp, through the method registry), the masks the run computed with at that step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hasten.errors import ConfigError
from hasten.methods.growth.operators import GrowthPlan
from hasten.methods.growth.unit_masks import remove_unit_masks, set_unit_masks
from hasten.model import GPT

# MSG's order: FFN first, then the hidden width, then the attention heads
RAMP_ORDER = ("ffn", "hidden", "heads")


def new_unit_masks(plan: GrowthPlan) -> dict[str, torch.Tensor]:
    """Per mask axis of a width plan (hidden: d_model, heads: n_heads, ffn: d_ff): 1.0 for the small
    model's units and 0.0 for new ones. Depth plans return {}."""
    if plan.dim != "width":
        return {}
    axes = {}
    for recipe in plan.recipes.values():
        for axis in recipe.axes:
            if axis is not None:
                axes[axis.name] = axis
    head_dim = plan.config.head_dim
    return {
        "hidden": axes["hidden"].is_original.to(torch.float32),
        "heads": axes["q"].is_original[::head_dim].to(torch.float32),  # the q axis counts head_dim entries per head
        "ffn": axes["ffn"].is_original.to(torch.float32),
    }


def mask_ramp(step: int, grow_step: int, ramp_steps: int) -> float:
    """Mask value of new units: 0 at the growth step, rising linearly to 1 over ramp_steps."""
    if ramp_steps <= 0:
        return 1.0
    return min(max((step - grow_step) / ramp_steps, 0.0), 1.0)


@dataclass
class MaskRamp:
    """The MSG ramp of one width growth: `original` masks from new_unit_masks, grown at `start` (a step)."""

    original: dict[str, torch.Tensor]
    start: int
    steps: int
    order: tuple[str, ...] = field(default=RAMP_ORDER)

    @property
    def end(self) -> int:
        """First step at which every mask is 1 (the masks are removed from then on)."""
        return self.start + self.steps * len(self.order)

    def values(self, step: int) -> dict[str, float]:
        """Mask value of the new units on each axis for the optimizer step `step` (completed steps)."""
        return {axis: mask_ramp(step, self.start + i * self.steps, self.steps) for i, axis in enumerate(self.order)}

    def masks(self, step: int) -> dict[str, torch.Tensor] | None:
        """Per-axis masks for `step` (old units 1, new units the ramp value); None once the ramp is over."""
        if step >= self.end:
            return None
        values = self.values(step)
        return {axis: old + (1.0 - old) * values[axis] for axis, old in self.original.items()}

    def state_dict(self) -> dict:
        return {
            "start": self.start,
            "steps": self.steps,
            "order": list(self.order),
            "original": {axis: mask.tolist() for axis, mask in self.original.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> MaskRamp:
        original = {axis: torch.tensor(values, dtype=torch.float32) for axis, values in state["original"].items()}
        return cls(original, start=int(state["start"]), steps=int(state["steps"]), order=tuple(state["order"]))

    def apply(self, model: GPT, step: int) -> bool:
        """Set the masks for `step` on `model` (removed when the ramp is over); True while the ramp is active."""
        masks = self.masks(step)
        if masks is None:
            remove_unit_masks(model)
            return False
        set_unit_masks(model, **masks)
        return True


def restore_ramp(model: GPT, state: dict, step: int, plain: bool = False) -> None:
    """Give a model loaded from a checkpoint at `step` the masks its run computed with there, from the growth
    method's checkpointed `state` (nothing once the ramp is over). `plain` (a transformers export) cannot hold
    masks: a model inside the ramp is refused with one line."""
    ramp = state.get("ramp")
    masks = MaskRamp.from_state_dict(ramp).masks(step) if ramp else None
    if masks is None:
        return
    if plain:
        raise ConfigError(
            "the checkpoint is inside growth's MSG mask ramp (masked units), which plain weights (a "
            "transformers checkpoint) cannot express; export a checkpoint saved after the ramp ended "
            "(the growth_mask_ramp_end event)"
        )
    set_unit_masks(model, **masks)
