"""Optimizers and param-group construction: block classification, Blockwise LR groups, Adam-mini."""

from hasten.optim.adam_mini import AdamMini, state_bytes
from hasten.optim.blocks import BLOCK_TYPES, classify_model, classify_param
from hasten.optim.blockwise import DEFAULT_RATIOS, blockwise_param_groups, set_group_lrs

__all__ = [
    "BLOCK_TYPES",
    "DEFAULT_RATIOS",
    "AdamMini",
    "blockwise_param_groups",
    "classify_model",
    "classify_param",
    "set_group_lrs",
    "state_bytes",
]
