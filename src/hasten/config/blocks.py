"""The block-type vocabulary the optimizer settings are checked against (Blockwise LR, Adam-mini).

Which parameter belongs to which block is decided in hasten.optim.blocks; the names and the default
ratios live here, in the schema layer, so `optim.lr_ratios` and `optim.block_overrides` are checked
when a recipe is loaded.
"""

from __future__ import annotations

import math

from hasten.errors import ConfigError

BLOCK_TYPES = ("emb", "pos_emb", "head", "qk", "vo", "ffn", "norm")

# The paper's / reference repo's ratios (Wongboo/BlockwiseLearningRate README; one set for GPT-2
# and LLaMA). UNCONFIRMED: pos_emb and head are separate groups in the reference code whose LR
# defaults to the base (x1); whether the paper used other values (or a different Emb ratio for the
# tied GPT-2 wte/lm_head) is not stated in the sources we had. We keep the code's x1 for both.
DEFAULT_RATIOS: dict[str, float] = {"emb": 10, "qk": 8, "ffn": 6, "vo": 4, "norm": 1, "pos_emb": 1, "head": 1}


def check_block_overrides(overrides: dict[str, str] | None) -> dict[str, str]:
    """The overrides as a dict; a pattern that is not a string or a block that is not a block type is a ConfigError."""
    overrides = dict(overrides or {})
    for pattern, block in overrides.items():
        if not isinstance(pattern, str):
            raise ConfigError(
                f"block override {pattern!r}: the key must be a parameter-name glob string, e.g. 'blocks.*.mlp.*'"
            )
        if block not in BLOCK_TYPES:
            raise ConfigError(
                f"block override {pattern!r}: {block!r} is not a block type; use one of {', '.join(BLOCK_TYPES)}"
            )
    return overrides


def validate_ratios(ratios: dict[str, float] | None) -> dict[str, float]:
    """Every block type -> ratio; blocks missing from `ratios` get 1 (x base LR)."""
    full = dict.fromkeys(BLOCK_TYPES, 1.0)
    for block, ratio in (ratios or {}).items():
        if block not in BLOCK_TYPES:
            raise ConfigError(f"lr ratio for unknown block {block!r}; use block types {', '.join(BLOCK_TYPES)}")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 0:
            raise ConfigError(f"lr ratio for block {block!r} is {ratio!r}; it must be a positive number")
        full[block] = float(ratio)
    return full
