"""Model growth: G_stack and the atomic growth operators, staged training of the whole state, growth timing."""

from pathlib import Path

from hasten.methods.growth import cli, hooks
from hasten.methods.growth.config import GrowthConfig, GrowthStage, final_model_config, stage_model_configs
from hasten.methods.growth.masks import RAMP_ORDER, MaskRamp, mask_ramp, new_unit_masks, restore_ramp
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
    restart_warmup_multiplier,
)
from hasten.methods.growth.unit_masks import has_unit_masks, remove_unit_masks, set_unit_masks, unit_masks
from hasten.methods.spec import MethodSpec, PlotMarker, TinyRun


def _stage(**stage) -> str:
    """The override that gives a tiny test run one growth stage."""
    return "methods.growth={stages: [{" + ", ".join(f"{key}: {value}" for key, value in stage.items()) + "}]}"


_SMALL = "model={preset: tiny, n_layers: 1}"
_TEST_RUNS = {
    # G_stack at step 6 (fresh optimizer, schedule restart): killed mid-step right after the growth, then mid-save
    "stack": TinyRun(
        (_SMALL, _stage(dim="depth", op="stack", factor=2, at_steps=6, moments="reset", schedule="restart", lr=1.0e-3)),
        tests=("grid", "faults"),
        kill_at=("step:7", "save:8"),
    ),
    "stack_at_8": TinyRun(
        (_stage(dim="depth", op="stack", factor=2, at_steps=8, moments="reset", schedule="restart"),),
        tests=("host_syncs",),
    ),
    # MSG ramp steps 5-11 (ffn, hidden, heads: 2 steps each), so the grid's resume at step 7 lands inside it
    "msg": TinyRun(
        (
            _stage(
                dim="width", op="random", factor=2, at_steps=5, mask_ramp_steps=2, moments="map", schedule="continue"
            ),
        ),
        tests=("grid",),
    ),
    "staged": TinyRun(
        (_stage(dim="width", op="staged", factor=2, at_steps=7, moments="map", schedule="jump", rewarmup_steps=2),),
        tests=("grid",),
    ),
    # staged-training width growth with mapped Adam moments and a schedule jump, killed right after it
    "staged_at_6": TinyRun(
        (_stage(dim="width", op="staged", factor=2, at_steps=6, moments="map", schedule="jump"),),
        tests=("faults",),
        kill_at=("step:7", "save:8"),
    ),
    "slope_eval": TinyRun(
        (
            _SMALL,
            "train.eval_every=2",
            _stage(
                dim="depth",
                op="stack",
                factor=2,
                at="slope",
                slope_loss="eval",
                slope_window=3,
                slope_threshold=-5.0,
                slope_min_steps=0,
            ),
        ),
        tests=("grid",),
    ),
    "slope_adam_mini": TinyRun(
        (
            "optim.name=adam_mini",
            _SMALL,
            _stage(
                dim="depth",
                op="stack",
                factor=2,
                at="slope",
                slope_window=3,
                slope_threshold=-5.0,
                moments="map",
                schedule="continue",
            ),
        ),
        tests=("grid",),
    ),
}
SPECS = (
    MethodSpec(
        "growth",
        "model growth: G_stack, staged training, MSG",
        "arXiv 2405.15319, 2203.06211",
        Path(__file__).with_name("README.md"),
        GrowthConfig,
        hooks.build,
        order=30,
        restore_model=restore_ramp,
        commands=(cli.add_parser,),
        markers=(PlotMarker("growth", "growth", "--", event="growth"),),
        test_runs=_TEST_RUNS,
        not_tested={"step_cost": "it costs one growth step and then the grown model's steps; gpu_check times those"},
    ),
)

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
    "has_unit_masks",
    "growth_plan",
    "gstack_growth_tokens",
    "map_optimizer_state",
    "map_param_state",
    "mask_ramp",
    "new_unit_masks",
    "remove_unit_masks",
    "restore_ramp",
    "set_unit_masks",
    "unit_masks",
    "restart_warmup_multiplier",
    "width_plan",
]
