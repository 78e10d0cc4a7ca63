"""Early weight averaging (LAWA) and its EMA / SWA baselines: evaluation-only copies of the weights.

    averager = LAWA(k=5, interval=50)                 # or EMA(decay=0.99), SWA(start_step=750, every=10)
    for step in range(1, total_steps + 1):
        train_one_step(model, optimizer)
        averager.maybe_update(step, model)            # never writes the live weights
        if step % eval_every == 0 and averager.ready:
            val_loss = evaluate(averager.averaged_model(model))

See README.md in this folder for the method card.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from hasten.errors import ConfigError
from hasten.methods.averaging import hooks
from hasten.methods.averaging.base import (
    WeightAverager,
    build_averaged_model,
    clean_state_dict,
    strip_wrapper_prefixes,
    swapped_in,
    unwrap_model,
    weight_distance,
)
from hasten.methods.averaging.config import EMAConfig, LAWAConfig, SWAConfig
from hasten.methods.averaging.ema import EMA, SWA, ema_decay_from_half_life, swa_start_step
from hasten.methods.averaging.lawa import LAWA, interval_steps
from hasten.methods.spec import MethodSpec, TinyRun

CONFIGS: dict[str, type] = {"lawa": LAWAConfig, "ema": EMAConfig, "swa": SWAConfig}

CARD = Path(__file__).with_name("README.md")
SPECS = (
    # LAWA's snapshots are host copies of the weights: every 4 steps, on the host-sync test's log steps
    MethodSpec(
        "lawa",
        "latest weight averaging of k checkpoints",
        "arXiv 2306.03241, 2209.14981",
        CARD,
        LAWAConfig,
        hooks.build_lawa,
        order=40,
        test_runs={"k2_every4": TinyRun(("methods.lawa={k: 2, interval: 4}",), kill_at=("step:5", "save:12"))},
        step_cost=("methods.lawa.k=5", "methods.lawa.interval=5"),
    ),
    MethodSpec(
        "ema",
        "exponential moving average of the weights (LAWA's baseline)",
        "arXiv 2306.03241",
        CARD,
        EMAConfig,
        hooks.build_ema,
        order=41,
        test_runs={"decay0.9": TinyRun(("methods.ema={decay: 0.9}",))},
        step_cost=("methods.ema.decay=0.99",),
    ),
    # torch's SWA average reads its count on the host at each update: every 4 steps, on the host-sync test's log steps
    MethodSpec(
        "swa",
        "stochastic weight averaging (LAWA's baseline)",
        "arXiv 2306.03241",
        CARD,
        SWAConfig,
        hooks.build_swa,
        order=42,
        test_runs={"from_quarter": TinyRun(("methods.swa={start_fraction: 0.25, every: 4}",))},
        step_cost=("methods.swa.start_step=0", "methods.swa.every=5"),
    ),
)


def build_averager(
    name: str, options: Mapping[str, Any] | None = None, *, total_steps: int | None = None
) -> WeightAverager:
    """An averager from a recipe section, e.g. `build_averager("lawa", {"k": 5, "interval": 50})`.

    `total_steps` is only needed for `swa` with `start_fraction`.
    """
    if name not in CONFIGS:
        raise ConfigError(f"unknown weight averager {name!r}; use one of {', '.join(CONFIGS)}")
    config_cls = CONFIGS[name]
    allowed = [f.name for f in fields(config_cls)]
    unknown = sorted(set(options or {}) - set(allowed))
    if unknown:
        raise ConfigError(f"methods.{name}: unknown option(s) {', '.join(unknown)}; use {', '.join(allowed)}")
    config = config_cls(**dict(options or {}))
    config.validate()
    return config.build(total_steps=total_steps) if name == "swa" else config.build()


__all__ = [
    "EMA",
    "LAWA",
    "SWA",
    "EMAConfig",
    "LAWAConfig",
    "SPECS",
    "SWAConfig",
    "WeightAverager",
    "build_averaged_model",
    "build_averager",
    "clean_state_dict",
    "ema_decay_from_half_life",
    "interval_steps",
    "strip_wrapper_prefixes",
    "swa_start_step",
    "swapped_in",
    "unwrap_model",
    "weight_distance",
]
