"""Model growth: G_stack and the atomic growth operators, staged training of the whole state, growth timing."""

from hasten.methods.growth import hooks
from hasten.methods.growth.config import GrowthConfig, GrowthStage, final_model_config, stage_model_configs
from hasten.methods.growth.masks import RAMP_ORDER, MaskRamp, mask_ramp, new_unit_masks
from hasten.methods.growth.operators import (
    DEPTH_OPS,
    WIDTH_OPS,
    AxisMap,
    GrowthPlan,
    TensorRecipe,
    apply_plan,
    depth_plan,
    grow,
    growth_plan,
    width_plan,
)
from hasten.methods.growth.state import GrownState, grow_training_state, map_optimizer_state, map_param_state
from hasten.methods.growth.timing import (
    OPERATOR_CONSTANTS,
    SLOPE_THRESHOLDS,
    SlopeTrigger,
    gstack_growth_tokens,
    kaplan_compute,
    kaplan_converged_loss,
    kaplan_critical_batch,
    kaplan_frontier_loss,
    kaplan_loss,
    kaplan_optimal_params,
    restart_warmup_multiplier,
)
from hasten.methods.spec import MethodSpec

SPECS = (MethodSpec("growth", GrowthConfig, hooks.build, order=30,
                    summary="model growth: G_stack (arXiv 2405.15319) and staged training (arXiv 2203.06211)"),)

__all__ = [
    "SPECS",
    "GrowthConfig",
    "GrowthStage",
    "final_model_config",
    "stage_model_configs",
    "DEPTH_OPS",
    "WIDTH_OPS",
    "OPERATOR_CONSTANTS",
    "SLOPE_THRESHOLDS",
    "AxisMap",
    "GrowthPlan",
    "GrownState",
    "MaskRamp",
    "RAMP_ORDER",
    "SlopeTrigger",
    "TensorRecipe",
    "apply_plan",
    "depth_plan",
    "grow",
    "grow_training_state",
    "growth_plan",
    "gstack_growth_tokens",
    "kaplan_compute",
    "kaplan_converged_loss",
    "kaplan_critical_batch",
    "kaplan_frontier_loss",
    "kaplan_loss",
    "kaplan_optimal_params",
    "map_optimizer_state",
    "map_param_state",
    "mask_ramp",
    "new_unit_masks",
    "restart_warmup_multiplier",
    "width_plan",
]
