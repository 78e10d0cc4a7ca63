"""Blockwise LR (sharpness disparity, arXiv 2502.19002): per-block-type LR ratios and a sharpness probe.

The param groups and ratios live in hasten.optim.blockwise (the optimizer builder uses them for the
AdamW baseline too); this package holds the method's measurement side. See README.md here.
"""

from hasten.config.blocks import DEFAULT_RATIOS
from hasten.methods.blockwise_lr import hooks
from hasten.methods.blockwise_lr.config import SharpnessConfig
from hasten.methods.blockwise_lr.sharpness import block_sharpness, plot_sharpness, ratios_from_sharpness, tensor_sharpness
from hasten.methods.spec import MethodSpec

SPECS = (MethodSpec("sharpness", SharpnessConfig, hooks.build, order=20,
                    summary="per-block sharpness probe; auto blockwise LR ratios (arXiv 2502.19002)"),)

__all__ = ["DEFAULT_RATIOS", "SPECS", "SharpnessConfig", "block_sharpness", "plot_sharpness", "ratios_from_sharpness", "tensor_sharpness"]
