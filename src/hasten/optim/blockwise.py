"""Optimizer param groups, one per (block type, decays?), each carrying its LR multiplier.

Blockwise LR (Wang et al., ICML 2025, arXiv 2502.19002) keeps the sharpest block type (norms) at
the base LR and multiplies the LR of the flatter ones. The optimizer itself is plain AdamW (or
Adam-mini); all the method needs is a group per block type whose `lr_ratio` the LR schedule
multiplies into the peak: lr_group(t) = schedule(t; peak = lr_ratio * base, floor = shared min).

With `ratios=None` every ratio is 1, which is exactly the AdamW baseline (the groups only split
the same per-parameter update), so the trainer builds the baseline through the same function.
"""

from __future__ import annotations

import torch
from torch import nn

from hasten.config.blocks import BLOCK_TYPES, DEFAULT_RATIOS, validate_ratios
from hasten.errors import ConfigError
from hasten.optim.blocks import classify_model, normalize_name

__all__ = ["DECAY_POLICIES", "DEFAULT_RATIOS", "blockwise_param_groups", "set_group_lrs", "validate_ratios"]

DECAY_POLICIES = ("matrices", "all")


def _decays(param: torch.Tensor, policy: str) -> bool:
    # "matrices": nanoGPT's rule, decay >=2-D tensors (matmul weights, embeddings), never norms/biases.
    # "all": the Blockwise-LR repo's rule, the same wd on every tensor (norms and embeddings included).
    return policy == "all" or param.dim() >= 2


def blockwise_param_groups(
    model: nn.Module,
    weight_decay: float,
    ratios: dict[str, float] | None = None,
    overrides: dict[str, str] | None = None,
    decay_policy: str = "matrices",
    *,
    base_lr: float | None = None,
) -> list[dict]:
    """Param groups for torch.optim.AdamW / AdamMini: one per non-empty (block, decays?) pair.

    Each group has keys params, param_names, block, lr_ratio, weight_decay (and lr = base_lr *
    lr_ratio when `base_lr` is given). Without `base_lr` the optimizer's default lr applies to every
    group until the LR schedule sets lr = lr_ratio * schedule(t): a caller that never sets group lrs
    would silently train with all ratios at 1, so standalone users should pass `base_lr` or call
    `set_group_lrs`. Decoupled weight decay is lr * wd per step in AdamW, so a x10 group also decays
    10x faster, as in the reference repo.
    """
    if decay_policy not in DECAY_POLICIES:
        raise ConfigError(f"decay_policy={decay_policy!r} is unknown; use one of {', '.join(DECAY_POLICIES)}")
    if weight_decay < 0:
        raise ConfigError(f"weight_decay={weight_decay} must be >= 0")
    full_ratios = validate_ratios(ratios)
    blocks = classify_model(model, overrides)
    params = {name: p for name, p in _normalized_named_parameters(model)}

    grouped: dict[tuple[str, bool], list[str]] = {}
    for name, block in blocks.items():
        grouped.setdefault((block, _decays(params[name], decay_policy)), []).append(name)

    groups = []
    for block in BLOCK_TYPES:
        for decays in (True, False):
            names = grouped.get((block, decays))
            if not names:
                continue
            group = {
                "params": [params[n] for n in names],
                "param_names": names,
                "block": block,
                "lr_ratio": full_ratios[block],
                "weight_decay": float(weight_decay) if decays else 0.0,
            }
            if base_lr is not None:
                group["lr"] = base_lr * full_ratios[block]
            groups.append(group)
    return groups


def set_group_lrs(optimizer: torch.optim.Optimizer, base_lr: float) -> None:
    """Set each group's lr to base_lr * its lr_ratio (1 when the group has none); what a schedule does each step."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_ratio", 1.0)


def _normalized_named_parameters(model: nn.Module):
    for name, param in model.named_parameters():
        if param.requires_grad:
            yield normalize_name(name), param
