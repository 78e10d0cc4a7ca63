"""`methods.growth`: the list of growth stages, each checked when a recipe loads, and the model configs they imply.

A recipe's `model:` is the SMALL starting model; `methods.growth.stages` lists the growth steps in
order (see README.md here and hooks.py for triggers and schedule policies).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from hasten.config import ModelConfig, build_dataclass
from hasten.errors import ConfigError
from hasten.methods.growth.operators import DEPTH_OPS, WIDTH_OPS, growth_plan
from hasten.methods.growth.state import MOMENT_MODES
from hasten.methods.growth.timing import SLOPE_THRESHOLDS, SlopeTrigger, gstack_growth_tokens
from hasten.model import GPT, count_params

log = logging.getLogger(__name__)

COUNTER_TRIGGERS = ("at_steps", "at_tokens", "at_flops")
AT_KINDS = ("guideline", "slope", "previous")
SCHEDULE_POLICIES = ("restart", "jump", "continue")
SLOPE_LOSSES = ("train", "eval")
SLOPE_KEYS = ("slope_threshold", "slope_window", "slope_patience", "slope_loss", "slope_min_steps")


@dataclass
class GrowthStage:
    """One growth step of `methods.growth.stages` (see the module docstring)."""

    dim: str = "depth"  # depth | width
    op: str = "stack"  # depth: stack interpolate zero random; width: staged direct zero random
    factor: float | None = None  # required: depth an integer >= 2, width > 1 (staged: an integer)
    at_steps: int | None = None  # trigger: completed optimizer steps ...
    at_tokens: int | None = None  # ... or training tokens ...
    at_flops: float | None = None  # ... or training FLOPs ...
    at: str | None = None  # ... or guideline (G_stack's d) | slope (staged training's loss-curve flattening)
    # | previous (with the stage before)
    slope_threshold: float | None = None  # at: slope; None = the cheatsheet value for this dim
    slope_window: int | None = None  # points in the least-squares log-log fit (default 20)
    slope_patience: int | None = None  # consecutive fits above the threshold (default 1)
    slope_loss: str | None = None  # train (every step) | eval (each scheduled evaluation); default train
    slope_min_steps: int | None = None  # steps into the stage before points count; default schedule.warmup_steps
    moments: str = "reset"  # reset (fresh optimizer, G_stack) | map (Adam state follows the weights, staged)
    schedule: str = "restart"  # restart | jump | continue
    lr: float | None = None  # new peak LR from this stage on (G_stack: 3e-4 after 1e-3); None keeps the current
    warmup_steps: int | None = None  # restart: the new warmup; None = schedule.warmup_steps
    restart_step: int | None = None  # jump: R; None = round(step / constant_op)
    rewarmup_steps: int | None = (
        None  # jump: re-warmup length w; None = schedule.warmup_steps // 16 (150-200 of 3000 in the paper)
    )
    mask_ramp_steps: int | None = (
        None  # width random: MSG mask ramp, steps per axis (ffn, hidden, heads); None = schedule.warmup_steps, 0 = off
    )

    def validate(self, where: str) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(f"{where}: {msg}")

        if self.dim not in ("depth", "width"):
            bad(f"dim={self.dim!r} is unknown; use depth or width")
        ops = DEPTH_OPS if self.dim == "depth" else WIDTH_OPS
        if self.op not in ops:
            bad(f"{self.dim} op={self.op!r} is unknown; use one of {', '.join(ops)}")
        if self.factor is None:
            bad("factor is missing; e.g. factor: 4 (G_stack) or factor: 2 (staged)")
        set_triggers = [k for k in COUNTER_TRIGGERS if getattr(self, k) is not None] + (
            ["at"] if self.at is not None else []
        )
        if len(set_triggers) != 1:
            what = "no trigger" if not set_triggers else f"several triggers ({', '.join(set_triggers)})"
            bad(f"{what}; give exactly one of at_steps, at_tokens, at_flops, at: guideline, at: slope")
        if self.at is not None and self.at not in AT_KINDS:
            bad(f"at={self.at!r} is unknown; use guideline, slope or previous (or at_steps / at_tokens / at_flops)")
        for key in COUNTER_TRIGGERS:
            value = getattr(self, key)
            if value is not None and not value > 0:
                bad(f"{key}={value} must be positive")
        if self.at != "slope":
            extra = [k for k in SLOPE_KEYS if getattr(self, k) is not None]
            if extra:
                bad(f"{extra[0]} is set but the trigger is not `at: slope`; remove it or use at: slope")
        else:
            if self.slope_threshold is not None and not self.slope_threshold < 0:
                bad(f"slope_threshold={self.slope_threshold} must be negative (loss falls with compute), e.g. -0.0475")
            if self.slope_window is not None and self.slope_window < 3:
                bad(f"slope_window={self.slope_window} is too short to fit a slope; use >= 3")
            if self.slope_patience is not None and self.slope_patience < 1:
                bad(f"slope_patience={self.slope_patience} must be >= 1")
            if self.slope_loss is not None and self.slope_loss not in SLOPE_LOSSES:
                bad(f"slope_loss={self.slope_loss!r} is unknown; use train or eval")
            if self.slope_min_steps is not None and self.slope_min_steps < 0:
                bad(f"slope_min_steps={self.slope_min_steps} must be >= 0")
        if self.moments not in MOMENT_MODES:
            bad(f"moments={self.moments!r} is unknown; use map (carry Adam state) or reset (fresh optimizer)")
        if self.schedule not in SCHEDULE_POLICIES:
            bad(f"schedule={self.schedule!r} is unknown; use restart (G_stack), jump (staged training) or continue")
        if self.lr is not None and not self.lr > 0:
            bad(f"lr={self.lr} must be positive")
        if self.warmup_steps is not None and (self.schedule != "restart" or self.warmup_steps < 0):
            bad(f"warmup_steps={self.warmup_steps} needs schedule: restart and a value >= 0")
        for key in ("restart_step", "rewarmup_steps"):
            value = getattr(self, key)
            if value is not None and (self.schedule != "jump" or value < 0):
                bad(f"{key}={value} needs schedule: jump and a value >= 0")
        if self.mask_ramp_steps is not None and not (
            self.dim == "width" and self.op == "random" and self.mask_ramp_steps >= 0
        ):
            bad(f"mask_ramp_steps={self.mask_ramp_steps} needs dim: width, op: random and a value >= 0 (0 = no masks)")

    def ramp_steps(self, warmup_steps: int) -> int:
        """Steps per axis of this stage's MSG mask ramp (0 = none)."""
        if self.dim != "width" or self.op != "random":
            return 0
        return self.mask_ramp_steps if self.mask_ramp_steps is not None else warmup_steps

    def trigger_text(self) -> str:
        if self.at is not None:
            return f"at {self.at}"
        key = next(k for k in COUNTER_TRIGGERS if getattr(self, k) is not None)
        return f"{key}={getattr(self, key):g}"

    def make_slope_trigger(self) -> SlopeTrigger:
        return SlopeTrigger(
            threshold=self.slope_threshold if self.slope_threshold is not None else SLOPE_THRESHOLDS[self.dim],
            window=self.slope_window or 20,
            patience=self.slope_patience or 1,
        )


@dataclass
class GrowthConfig:
    """`methods.growth`: the list of stages; the recipe's `model` is the small starting model."""

    stages: list[Any] = field(default_factory=list)
    enabled: bool = True

    def stage_configs(self) -> list[GrowthStage]:
        if not isinstance(self.stages, list) or not self.stages:
            raise ConfigError(
                "methods.growth.stages must be a non-empty list, "
                "e.g. [{dim: depth, op: stack, factor: 4, at_tokens: 200000}]"
            )
        parsed = []
        for i, raw in enumerate(self.stages):
            where = f"methods.growth.stages[{i}]"
            if not isinstance(raw, dict):
                raise ConfigError(f"{where} must be a mapping like {{dim: depth, op: stack, factor: 4, at_steps: 100}}")
            stage = build_dataclass(GrowthStage, raw, f"{where}.")
            stage.validate(where)
            parsed.append(stage)
        return parsed

    def validate(self) -> None:
        stages = self.stage_configs()
        if stages[0].at == "previous":
            raise ConfigError(
                "methods.growth.stages[0]: `at: previous` grows together with the stage before; "
                "the first stage needs its own trigger"
            )
        for i in range(1, len(stages)):
            if stages[i].at == "previous" and stages[i].dim == "width" and stages[i - 1].ramp_steps(1) > 0:
                raise ConfigError(
                    f"methods.growth.stages[{i}]: a width stage cannot grow on the same step as the masked width "
                    f"growth before it (its MSG masks are per unit); give it its own trigger"
                )
        if sum(s.at == "guideline" for s in stages) > 1:
            raise ConfigError("methods.growth: `at: guideline` gives one growth time; use it for one stage only")
        for key in COUNTER_TRIGGERS:  # counter triggers of one kind must come in order
            values = [(i, getattr(s, key)) for i, s in enumerate(stages) if getattr(s, key) is not None]
            for (_, a), (j, b) in zip(values, values[1:]):
                if b < a:
                    raise ConfigError(
                        f"methods.growth.stages[{j}]: {key}={b:g} comes before the previous stage's {a:g}; "
                        "list stages in order"
                    )

    def validate_run(self, run_cfg) -> None:
        stages = self.stage_configs()
        stage_model_configs(run_cfg.model_config(), stages)  # every factor fits its stage's model
        if run_cfg.model_config().dropout == 0 and any(s.dim == "width" and s.op == "staged" for s in stages):
            log.warning(
                "methods.growth: width op 'staged' duplicates units, and without dropout the copies stay identical "
                "(no capacity gained); set model.dropout (Shen et al.: 0.1) or use op 'random' (MSG)"
            )
        steps, tokens = run_cfg.planned_steps(), run_cfg.planned_tokens()
        for i, stage in enumerate(stages):
            for key, budget in (("at_steps", steps), ("at_tokens", tokens)):
                value = getattr(stage, key)
                if value is not None and value >= budget:
                    raise ConfigError(
                        f"methods.growth.stages[{i}]: {key}={value:g} is not inside the run "
                        f"({budget:,} {key[3:]}); lower it"
                    )
            if stage.at == "guideline":
                d, n, _ = guideline_tokens(run_cfg, stages)
                if d >= tokens:
                    raise ConfigError(
                        f"methods.growth.stages[{i}]: the G_stack guideline gives d={d:.3g} tokens for N={n:.3g} "
                        f"params, D={tokens:.3g} tokens, beyond the run (the fit is for billion-parameter runs); "
                        "use at_tokens instead"
                    )


def stage_model_configs(start: ModelConfig, stages: list[GrowthStage]) -> list[ModelConfig]:
    """The model config before every stage and after the last: [start, after stage 0, ..., final]."""
    configs = [start]
    for i, stage in enumerate(stages):
        try:
            configs.append(growth_plan(configs[-1], stage.op, stage.factor, stage.dim).config)
        except ConfigError as err:
            raise ConfigError(
                f"methods.growth.stages[{i}] (model {shape_text(configs[-1])}): {str(err).removeprefix('growth: ')}"
            ) from None
    return configs


def final_model_config(start: ModelConfig, stages: list[GrowthStage]) -> ModelConfig:
    """The target model the stages grow `start` into."""
    return stage_model_configs(start, stages)[-1]


def param_count(cfg: ModelConfig) -> int:
    with torch.device("meta"):
        return count_params(GPT(cfg))["total"]


def guideline_tokens(run_cfg, stages: list[GrowthStage]) -> tuple[float, int, int]:
    """G_stack's d (tokens on the small model), with N = the final model's parameters and D = the token budget."""
    final = final_model_config(run_cfg.model_config(), stages)
    n = param_count(final)
    tokens = run_cfg.planned_tokens()
    return gstack_growth_tokens(n, tokens), n, tokens


def shape_text(cfg: ModelConfig) -> str:
    return f"{cfg.n_layers}L x {cfg.d_model}d, {cfg.n_heads} heads"
