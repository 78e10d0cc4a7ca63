"""Blockwise LR (sharpness disparity, arXiv 2502.19002): per-block-type LR ratios and a sharpness probe.

The param groups and ratios live in hasten.optim.blockwise (the optimizer builder uses them for the
AdamW baseline too); this package holds the method's measurement side. See README.md here.
"""

from hasten.methods.blockwise_lr.sharpness import block_sharpness, plot_sharpness, ratios_from_sharpness, tensor_sharpness
from hasten.optim.blockwise import DEFAULT_RATIOS

__all__ = ["DEFAULT_RATIOS", "block_sharpness", "plot_sharpness", "ratios_from_sharpness", "tensor_sharpness"]
