"""Blockwise LR (sharpness disparity, arXiv 2502.19002) and Adam-mini (arXiv 2406.16793): the method's room.

Use them standalone from here: `blockwise_param_groups(model, weight_decay, ratios, base_lr=lr)` gives the
param groups for any torch optimizer (AdamW, or `AdamMini(groups, lr=...)`), `block_sharpness` runs the probe. The kernels live in
hasten.optim (the optimizer builder uses them for the AdamW baseline too, and optim sits below the
trainer); the recipe switches are `optim.blockwise` / `optim.name: adam_mini` and the `sharpness`
method section. The method card is README.md here.
"""

from hasten.config.blocks import DEFAULT_RATIOS
from hasten.methods.blockwise_lr import hooks
from hasten.methods.blockwise_lr.config import SharpnessConfig
from hasten.methods.blockwise_lr.sharpness import block_sharpness, plot_sharpness, ratios_from_sharpness, tensor_sharpness
from hasten.methods.spec import MethodSpec
from hasten.optim.adam_mini import AdamMini
from hasten.optim.blocks import classify_model
from hasten.optim.blockwise import blockwise_param_groups

SPECS = (MethodSpec("sharpness", SharpnessConfig, hooks.build, order=20,
                    summary="per-block sharpness probe; auto blockwise LR ratios (arXiv 2502.19002)"),)

__all__ = ["DEFAULT_RATIOS", "SPECS", "AdamMini", "SharpnessConfig", "blockwise_param_groups", "classify_model", "block_sharpness", "plot_sharpness", "ratios_from_sharpness", "tensor_sharpness"]
