"""Blockwise LR (sharpness disparity, arXiv 2502.19002) and Adam-mini (arXiv 2406.16793): the method's room.

Use them standalone from here: `blockwise_param_groups(model, weight_decay, ratios, base_lr=lr)` gives the
param groups for any torch optimizer (AdamW, or `AdamMini(groups, lr=...)`), `block_sharpness` runs the probe. The
kernels live in hasten.optim (the optimizer builder uses them for the AdamW baseline too, and optim sits below the
trainer); the recipe switches are `optim.blockwise` / `optim.name: adam_mini` and the `sharpness`
method section. The method card is README.md here.
"""

from pathlib import Path

from hasten.config.blocks import DEFAULT_RATIOS
from hasten.methods.blockwise_lr import cli, hooks
from hasten.methods.blockwise_lr.config import SharpnessConfig
from hasten.methods.blockwise_lr.sharpness import (
    block_sharpness,
    plot_sharpness,
    ratios_from_sharpness,
    tensor_sharpness,
)
from hasten.methods.spec import MethodSpec, TinyRun
from hasten.optim.adam_mini import AdamMini
from hasten.optim.blocks import classify_model
from hasten.optim.blockwise import blockwise_param_groups

CARD = Path(__file__).with_name("README.md")
SPECS = (
    MethodSpec(
        "blockwise",
        "blockwise LR: a peak LR per block type (Sharpness Disparity)",
        "arXiv 2502.19002",
        CARD,
        switch=("optim.blockwise", True),
        test_runs={"default": TinyRun(("optim.blockwise=true",))},
        step_cost=("optim.blockwise=true",),
    ),
    MethodSpec(
        "adam_mini",
        "Adam-mini: one second moment per parameter block",
        "arXiv 2406.16793",
        CARD,
        switch=("optim.name", "adam_mini"),
        test_runs={
            "default": TinyRun(("optim.name=adam_mini",)),
            "blockwise": TinyRun(("optim.name=adam_mini", "optim.blockwise=true"), tests=("grid",)),
        },
        step_cost=("optim.name=adam_mini",),
    ),
    MethodSpec(
        "sharpness",
        "per-block sharpness probe; sets the blockwise LR ratios from it (auto_ratios)",
        "arXiv 2502.19002",
        CARD,
        SharpnessConfig,
        hooks.build,
        order=20,
        commands=(cli.add_parser,),
        # probes at step 4 and sets the blockwise ratios from it: killed right after the optimizer groups change
        test_runs={
            "auto_ratios": TinyRun(
                ("optim.blockwise=true", "methods.sharpness={at_fraction: 0.25, batches: 2, auto_ratios: true}"),
                kill_at=("step:5", "save:8"),
            )
        },
        not_tested={"step_cost": "it costs one probe (a few extra forward/backward passes) at one step, not per step"},
    ),
)

__all__ = [
    "DEFAULT_RATIOS",
    "SPECS",
    "AdamMini",
    "SharpnessConfig",
    "blockwise_param_groups",
    "classify_model",
    "block_sharpness",
    "plot_sharpness",
    "ratios_from_sharpness",
    "tensor_sharpness",
]
