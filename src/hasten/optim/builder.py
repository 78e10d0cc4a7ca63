"""Build the optimizer for a model from OptimConfig.

Param groups carry `param_names`, `block` and `lr_ratio` so the LR schedule, growth operators
and Adam-mini can address parameters by name. The plain AdamW baseline and blockwise LR share
one grouping function; blockwise only changes the ratios.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import Optimizer

from hasten.config import DEFAULT_RATIOS, OptimConfig
from hasten.errors import ConfigError
from hasten.optim.adam_mini import AdamMini
from hasten.optim.blockwise import blockwise_param_groups
from hasten.optim.muon import build_muon


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    ratios = {**DEFAULT_RATIOS, **(cfg.lr_ratios or {})} if cfg.blockwise else None
    return blockwise_param_groups(
        model, cfg.weight_decay, ratios, overrides=cfg.block_overrides, decay_policy=cfg.decay_policy
    )


def implementation_kwargs(cfg: OptimConfig, device: torch.device) -> dict:
    impl = cfg.implementation
    if impl == "auto":
        impl = "fused" if device.type == "cuda" else "foreach"
    return {"fused": impl == "fused", "foreach": impl == "foreach"} if impl != "for" else {"foreach": False}


# why each optimizer needs whole matrices, which FSDP2 splits by rows across ranks
FSDP_UNSUPPORTED = {
    "muon": "Newton-Schulz orthogonalises whole matrices",
}


def check_fsdp_optimizer(name: str) -> None:
    """One-line refusal of optimizers whose update is not elementwise over FSDP2's row shards."""
    if name in FSDP_UNSUPPORTED:
        raise ConfigError(
            f"optim.name={name} does not support train.parallelism=fsdp "
            f"({FSDP_UNSUPPORTED[name]}, which FSDP2 shards across ranks); use train.parallelism=ddp"
        )


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> Optimizer:
    cfg.validate()  # the checks of load_config, for configs built in code too
    if any(type(p).__name__ == "DTensor" for p in model.parameters()):
        check_fsdp_optimizer(cfg.name)
    groups = param_groups(model, cfg)
    device = next(model.parameters()).device
    betas = (cfg.beta1, cfg.beta2)
    if cfg.name == "adamw":
        return torch.optim.AdamW(
            groups,
            lr=cfg.lr,
            betas=betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            **implementation_kwargs(cfg, device),
        )
    if cfg.name == "adam_mini":
        mcfg = getattr(model, "config", None)
        if mcfg is None:
            raise ConfigError(
                "optim.name=adam_mini needs a hasten GPT model (it reads n_heads / n_kv_heads from model.config)"
            )
        return AdamMini(
            groups,
            lr=cfg.lr,
            betas=betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            n_heads=mcfg.n_heads,
            n_kv_heads=mcfg.n_kv_heads,
            block_overrides=cfg.block_overrides,
        )
    if cfg.name == "muon":
        return build_muon(groups, cfg, implementation_kwargs(cfg, device))
    raise ConfigError(f"optim.name={cfg.name!r} is unknown; use adamw, adam_mini or muon")
