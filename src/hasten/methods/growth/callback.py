"""Model growth inside the trainer: the `growth` method (G_stack and staged training as recipes).

A recipe's `model:` is the SMALL starting model; `methods.growth.stages` lists the growth steps in
order. Each stage names an operator (dim/op/factor, see operators.py), one trigger (when), what
happens to the optimizer moments, and what happens to the LR schedule:

    methods:
      growth:
        stages:
          - {dim: depth, op: stack, factor: 4, at_tokens: 200000, moments: reset, schedule: restart, lr: 1.0e-3, warmup_steps: 20}
          - {dim: width, op: staged, factor: 2, at: slope, slope_threshold: -0.0475, moments: map, schedule: jump}

Triggers (exactly one per stage): at_steps, at_tokens, at_flops (progress counters after the step),
`at: guideline` (G_stack's fitted d for N = the final model's parameters and D = the run's token
budget), `at: slope` (staged training's SlopeTrigger on (FLOPs, loss); train loss every step, or the
val loss of each scheduled evaluation). The decision is taken in after_step, from counters that a
checkpoint restores exactly, so an uninterrupted run and a resumed one grow at the same step.

Schedule policies:
  restart   G_stack: a fresh warmup (warmup_steps, default the recipe's) and decay over the remaining
            budget, optionally at a new peak `lr`.
  jump      staged training: continue on the large model's schedule at its step R, re-warming up over
            rewarmup_steps to the schedule's value at R + w. R is the step at which a large model trained
            from scratch would reach the current loss; that is unknown during the run, so R =
            restart_step if given, else round(step / constant_op) with the cheatsheet's operator constants
            (width 1.776, depth 1.412, depth+width 2.455; spec growth.md section 2.5). The schedule is laid
            out so that it ends with the run: its length is R + the remaining steps.
  continue  the schedule goes on unchanged (a new `lr` only rescales its peak).

Stages whose triggers fire on the same step grow together (e.g. width then depth; `at: previous`
makes a stage fire with the one before it); the schedule policy of the last one applies once, with
the combined depth+width constant for `jump`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from hasten.distributed import is_fsdp
from hasten.errors import CheckpointError, ConfigError
from hasten.methods.growth.masks import MaskRamp, new_unit_masks
from hasten.methods.growth.operators import growth_plan
from hasten.methods.growth.state import MOMENT_MODES, grow_training_state
from hasten.methods.growth.timing import OPERATOR_CONSTANTS, SLOPE_THRESHOLDS, SlopeTrigger, gstack_growth_tokens
from hasten.model import GPT, ModelConfig, count_params
from hasten.trainer.callbacks import Callback

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
    at: str | None = None  # ... or guideline (G_stack's d) | slope (staged training's loss-curve flattening) | previous (with the stage before)
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
    rewarmup_steps: int | None = None  # jump: re-warmup length w; None = schedule.warmup_steps // 16 (150-200 of 3000 in the paper)
    mask_ramp_steps: int | None = None  # width random: MSG mask ramp, steps per axis (ffn, hidden, heads); None = schedule.warmup_steps, 0 = off

    def validate(self, where: str) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(f"{where}: {msg}")

        if self.dim not in ("depth", "width"):
            bad(f"dim={self.dim!r} is unknown; use depth or width")
        from hasten.methods.growth.operators import DEPTH_OPS, WIDTH_OPS

        ops = DEPTH_OPS if self.dim == "depth" else WIDTH_OPS
        if self.op not in ops:
            bad(f"{self.dim} op={self.op!r} is unknown; use one of {', '.join(ops)}")
        if self.factor is None:
            bad("factor is missing; e.g. factor: 4 (G_stack) or factor: 2 (staged)")
        set_triggers = [k for k in COUNTER_TRIGGERS if getattr(self, k) is not None] + (["at"] if self.at is not None else [])
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
        if self.mask_ramp_steps is not None and not (self.dim == "width" and self.op == "random" and self.mask_ramp_steps >= 0):
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
        from hasten.config import build_dataclass

        if not isinstance(self.stages, list) or not self.stages:
            raise ConfigError("methods.growth.stages must be a non-empty list, e.g. [{dim: depth, op: stack, factor: 4, at_tokens: 200000}]")
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
            raise ConfigError("methods.growth.stages[0]: `at: previous` grows together with the stage before; the first stage needs its own trigger")
        for i in range(1, len(stages)):
            if stages[i].at == "previous" and stages[i].dim == "width" and stages[i - 1].ramp_steps(1) > 0:
                raise ConfigError(f"methods.growth.stages[{i}]: a width stage cannot grow on the same step as the masked width "
                                  f"growth before it (its MSG masks are per unit); give it its own trigger")
        if sum(s.at == "guideline" for s in stages) > 1:
            raise ConfigError("methods.growth: `at: guideline` gives one growth time; use it for one stage only")
        for key in COUNTER_TRIGGERS:  # counter triggers of one kind must come in order
            values = [(i, getattr(s, key)) for i, s in enumerate(stages) if getattr(s, key) is not None]
            for (_, a), (j, b) in zip(values, values[1:]):
                if b < a:
                    raise ConfigError(f"methods.growth.stages[{j}]: {key}={b:g} comes before the previous stage's {a:g}; list stages in order")

    def validate_run(self, run_cfg) -> None:
        stages = self.stage_configs()
        stage_model_configs(run_cfg.model_config(), stages)  # every factor fits its stage's model
        steps, tokens = planned_budget(run_cfg)
        for i, stage in enumerate(stages):
            for key, budget in (("at_steps", steps), ("at_tokens", tokens)):
                value = getattr(stage, key)
                if value is not None and value >= budget:
                    raise ConfigError(f"methods.growth.stages[{i}]: {key}={value:g} is not inside the run ({budget:,} {key[3:]}); lower it")
            if stage.at == "guideline":
                d, n, _ = guideline_tokens(run_cfg, stages)
                if d >= tokens:
                    raise ConfigError(
                        f"methods.growth.stages[{i}]: the G_stack guideline gives d={d:.3g} tokens for N={n:.3g} params, D={tokens:.3g} "
                        "tokens, beyond the run (the fit is for billion-parameter runs); use at_tokens instead"
                    )


# --------------------------------------------------------------------------- helpers


def stage_model_configs(start: ModelConfig, stages: list[GrowthStage]) -> list[ModelConfig]:
    """The model config before every stage and after the last: [start, after stage 0, ..., final]."""
    configs = [start]
    for i, stage in enumerate(stages):
        try:
            configs.append(growth_plan(configs[-1], stage.op, stage.factor, stage.dim).config)
        except ConfigError as err:
            raise ConfigError(f"methods.growth.stages[{i}] (model {_shape(configs[-1])}): {str(err).removeprefix('growth: ')}") from None
    return configs


def final_model_config(start: ModelConfig, stages: list[GrowthStage]) -> ModelConfig:
    """The target model the stages grow `start` into."""
    return stage_model_configs(start, stages)[-1]


def planned_budget(run_cfg) -> tuple[int, int]:
    """(steps, tokens) the run plans to train: the schedule's length and D for the guideline."""
    return run_cfg.planned_steps(), run_cfg.planned_tokens()


def param_count(cfg: ModelConfig) -> int:
    with torch.device("meta"):
        return count_params(GPT(cfg))["total"]


def guideline_tokens(run_cfg, stages: list[GrowthStage]) -> tuple[float, int, int]:
    """G_stack's d (tokens on the small model), with N = the final model's parameters and D = the token budget."""
    final = final_model_config(run_cfg.model_config(), stages)
    n = param_count(final)
    _, tokens = planned_budget(run_cfg)
    return gstack_growth_tokens(n, tokens), n, tokens


def _shape(cfg: ModelConfig) -> str:
    return f"{cfg.n_layers}L x {cfg.d_model}d, {cfg.n_heads} heads"


# --------------------------------------------------------------------------- the callback


class Growth(Callback):
    name = "growth"

    def __init__(self, cfg: GrowthConfig, run_cfg):
        self.run_cfg = run_cfg
        self.stages = cfg.stage_configs()
        self.configs = stage_model_configs(run_cfg.model_config(), self.stages)
        self.guideline = guideline_tokens(run_cfg, self.stages)[0] if any(s.at == "guideline" for s in self.stages) else None
        self.done = 0  # stages grown so far
        self.stage_start_step = 0  # step at which the current stage's model began training
        self.history: list[dict] = []  # one record per growth (step, tokens, flops, plan summary)
        self.trigger: SlopeTrigger | None = self._new_trigger()
        self.pending_eval: list | None = None  # [step, flops] of a scheduled eval whose val loss is not yet read
        self.ramp: MaskRamp | None = None  # the active MSG mask ramp ...
        self.ramp_stage: int | None = None  # ... and the stage that started it
        self._masked_step: int | None = None  # the step whose masks the model holds (set once per step)
        self._trainer = None

    # -- hooks ------------------------------------------------------------------------------------

    def on_fit_start(self, trainer) -> None:
        self._trainer = trainer
        expected = self.configs[self.done]
        if trainer.state.model.config.to_dict() != expected.to_dict():
            raise CheckpointError(
                f"methods.growth: the checkpoint's model ({_shape(trainer.state.model.config)}) is not the model of stage {self.done} "
                f"({_shape(expected)}); was it grown offline? remove methods.growth from the run's config.yaml"
            )
        final = self.configs[-1]
        info = {
            "start": _shape(self.configs[0]),
            "target": _shape(final),
            "target_config": final.to_dict(),
            "target_params": param_count(final),
            "stages": [f"{s.dim}/{s.op} x{s.factor:g} {s.trigger_text()}, moments {s.moments}, schedule {s.schedule}" for s in self.stages],
            "done": self.done,
        }
        if self.guideline is not None:
            info["guideline_tokens"] = self.guideline
        trainer.logger.log("event", trainer.state.progress.step, event="growth_plan", **info)
        self._apply_masks(trainer)  # a resumed run inside a ramp gets the masks of its step back
        if trainer.is_main and trainer.state.progress.step == 0:
            guide = f"; G_stack guideline d = {self.guideline:.4g} tokens" if self.guideline is not None else ""
            print(f"growth: {info['start']} -> target {info['target']} ({info['target_params'] / 1e6:.2f}M params) in "
                  f"{len(self.stages)} stage(s){guide}", file=sys.stderr)

    def on_eval(self, trainer, evaluate) -> dict[str, float]:
        stage = self._current()
        p = trainer.state.progress
        # only scheduled evaluations count: a run stopped early evaluates at its stop step too, and a
        # resumed run must see the same points as an uninterrupted one
        if (stage is not None and stage.at == "slope" and stage.slope_loss == "eval" and p.step % trainer.cfg.train.eval_every == 0
                and self._slope_ready(p.step)):
            self.pending_eval = [p.step, p.flops]
        return {}

    def before_step(self, trainer) -> None:
        self._apply_masks(trainer)  # also right after anything that restored the training state (e.g. a spike rollback)

    def after_step(self, trainer) -> None:
        trainer.last_metrics.pop("growth/slope", None)  # only on the rows of steps that fitted one (same after a resume)
        self._apply_masks(trainer)  # the masks of the next step, so an evaluation after this step sees them
        if self.done >= len(self.stages):
            return
        self._resolve_pending_eval(trainer)
        p = trainer.state.progress
        stage = self.stages[self.done]
        if stage.at == "slope" and stage.slope_loss != "eval" and self._slope_ready(p.step) and "loss" in trainer.last_metrics:
            slope = self.trigger.update(p.flops, trainer.last_metrics["loss"])
            if slope is not None:
                trainer.last_metrics["growth/slope"] = slope
        fired = []
        while self.done + len(fired) < len(self.stages) and self._fires(self.stages[self.done + len(fired)], p, first=not fired):
            fired.append(self.done + len(fired))
        if fired:
            self.grow(trainer, fired)

    def state_dict(self) -> dict:
        if self._trainer is not None:
            self._resolve_pending_eval(self._trainer)
        return {
            "done": self.done,
            "stage_start_step": self.stage_start_step,
            "history": self.history,
            "trigger": self.trigger.state_dict() if self.trigger is not None else None,
            "pending_eval": self.pending_eval,
            # self-contained (0/1 masks included): eval/export of a checkpoint rebuild the masks from it alone
            "ramp": None if self.ramp is None else {"stage": self.ramp_stage, **self.ramp.state_dict()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.done = int(state["done"])
        self.stage_start_step = int(state["stage_start_step"])
        self.history = list(state.get("history", []))
        self.trigger = self._new_trigger()
        if self.trigger is not None and state.get("trigger") is not None:
            self.trigger.load_state_dict(state["trigger"])
        self.pending_eval = state.get("pending_eval")
        ramp = state.get("ramp")
        self.ramp = MaskRamp.from_state_dict(ramp) if ramp else None
        self.ramp_stage = ramp["stage"] if ramp else None
        self._masked_step = None

    # -- growth -----------------------------------------------------------------------------------

    def grow(self, trainer, indices: list[int]) -> None:
        """Grow the model through stages `indices` (fired on this step), then apply the last one's schedule policy."""
        from hasten.optim.builder import build_optimizer

        st, p = trainer.state, trainer.state.progress
        optim_cfg = trainer.cfg.optim
        model, optimizer = st.model, st.optimizer
        if self.ramp is not None:  # the next growth maps plain weights: the unfinished ramp ends here
            trainer.logger.log("event", p.step, event="growth_mask_ramp_end", stage=self.ramp_stage, reason="cut short by the next growth",
                               values=self.ramp.values(p.step))
            self.ramp = self.ramp_stage = None
            model.set_unit_masks()
        for index in indices:
            stage = self.stages[index]
            sharded = is_fsdp(model)
            if sharded:  # grow an unsharded CPU copy, the same on every rank
                model, optimizer = _unsharded_training_state(model, optimizer, optim_cfg, gather_state=stage.moments == "map")
            grown = grow_training_state(model, optimizer, stage.op, stage.factor, stage.dim,
                                        build_optimizer=lambda m: build_optimizer(m, optim_cfg), moments=stage.moments)
            model, optimizer = grown.model, grown.optimizer
            if sharded:
                model, optimizer = _reshard_grown_state(trainer, model, optimizer, fresh=grown.plan.needs_fresh)
            self.done = index + 1
            self.history.append({"stage": index, "step": p.step, "tokens": p.tokens, "flops": p.flops, "summary": grown.plan.summary()})
            trainer.replace_state(model, optimizer, reason=grown.plan.summary())
            trainer.logger.log("event", p.step, event="growth", stage=index, summary=grown.plan.summary(), notes=grown.notes,
                               tokens=p.tokens, flops=p.flops, model_config=model.config.to_dict(),
                               params=sum(q.numel() for q in model.parameters()))
        ramped = [i for i in indices if self.stages[i].ramp_steps(trainer.cfg.schedule.warmup_steps) > 0]
        if ramped:
            index = ramped[-1]
            stage = self.stages[index]
            plan = growth_plan(self.configs[index], stage.op, stage.factor, stage.dim)
            self.ramp = MaskRamp(new_unit_masks(plan), start=p.step, steps=stage.ramp_steps(trainer.cfg.schedule.warmup_steps))
            self.ramp_stage, self._masked_step = index, None
            trainer.logger.log("event", p.step, event="growth_mask_ramp", stage=index, start=p.step, steps_per_axis=self.ramp.steps,
                               order=list(self.ramp.order), end=self.ramp.end)
            self._apply_masks(trainer)
        last = self.stages[indices[-1]]
        dims = {self.stages[i].dim for i in indices}
        schedule_info = self.apply_schedule(trainer, last, "depth+width" if len(dims) > 1 else dims.pop())
        trainer.logger.log("event", p.step, event="growth_schedule", policy=last.schedule, **schedule_info)
        self.stage_start_step = p.step
        self.trigger = self._new_trigger()
        self.pending_eval = None
        if trainer.is_main:
            print(f"growth at step {p.step} ({p.tokens:,} tokens): {self.history[-1]['summary']}; schedule {last.schedule} {schedule_info}",
                  file=sys.stderr)

    def apply_schedule(self, trainer, stage: GrowthStage, kind: str) -> dict:
        """Set the LR schedule after growth; returns what was done, for the event log."""
        p, cfg = trainer.state.progress, trainer.cfg
        steps, tokens = planned_budget(cfg)
        return apply_schedule_policy(trainer.state.schedule, stage, kind, p.step, p.tokens, steps, tokens, cfg.optim.min_lr_ratio,
                                     cfg.schedule.warmup_steps, cfg.schedule.decay_unit)

    # -- MSG masks --------------------------------------------------------------------------------

    def _apply_masks(self, trainer) -> None:
        """Set the masks of the next step (completed steps = progress.step) on the model; drop the ramp when it ends.

        Called before and after every step; the masks change once per step, so a model that already holds
        this step's masks is left alone (a restore or a new model has none, or another step's).
        """
        if self.ramp is None:
            return
        step, model = trainer.state.progress.step, trainer.state.model
        if step == self._masked_step and model.has_unit_masks():
            return
        self._masked_step = step
        if not self.ramp.apply(model, step):
            trainer.logger.log("event", step, event="growth_mask_ramp_end", stage=self.ramp_stage, reason="ramp complete")
            self.ramp = self.ramp_stage = None

    # -- triggers ---------------------------------------------------------------------------------

    def _current(self) -> GrowthStage | None:
        return self.stages[self.done] if self.done < len(self.stages) else None

    def _new_trigger(self) -> SlopeTrigger | None:
        stage = self._current()
        return stage.make_slope_trigger() if stage is not None and stage.at == "slope" else None

    def _slope_ready(self, step: int) -> bool:
        stage = self._current()
        min_steps = stage.slope_min_steps if stage.slope_min_steps is not None else self.run_cfg.schedule.warmup_steps
        return step - self.stage_start_step >= min_steps

    def _resolve_pending_eval(self, trainer) -> None:
        """Feed the last scheduled eval's val loss to the trigger (the loop stores it after on_eval returns)."""
        if self.pending_eval is not None and "val_loss" in trainer.last_metrics and self.trigger is not None:
            step, flops = self.pending_eval
            slope = self.trigger.update(flops, trainer.last_metrics["val_loss"])
            trainer.logger.log("event", step, event="growth_slope", slope=slope, val_loss=trainer.last_metrics["val_loss"], flops=flops)
            self.pending_eval = None

    def _fires(self, stage: GrowthStage, p, first: bool) -> bool:
        if stage.at_steps is not None:
            return p.step >= stage.at_steps
        if stage.at_tokens is not None:
            return p.tokens >= stage.at_tokens
        if stage.at_flops is not None:
            return p.flops >= stage.at_flops
        if stage.at == "guideline":
            return p.tokens >= self.guideline
        if stage.at == "previous":
            return not first
        return first and self.trigger is not None and self.trigger.should_grow()  # a later stage's slope needs its own points


def _unsharded_training_state(model, optimizer, optim_cfg, gather_state: bool):
    """FSDP2: the full model on CPU and a plain optimizer over it holding the full state (moments: map), on every rank.

    A collective (all ranks grow on the same step). The copy is what a single process would hold, so
    the growth operator and the moment mapping run unchanged on it.
    """
    from hasten.distributed import full_optimizer_state_by_name, unsharded_copy
    from hasten.optim.builder import build_optimizer

    full_state = full_optimizer_state_by_name(optimizer) if gather_state else {}
    copy = unsharded_copy(model, "cpu")
    plain = build_optimizer(copy, optim_cfg)
    for group in plain.param_groups:
        for name, param in zip(group["param_names"], group["params"]):
            if name in full_state:
                plain.state[param] = full_state[name]
    return copy, plain


def _reshard_grown_state(trainer, model, optimizer, fresh: bool):
    """FSDP2: shard the grown model, build its optimizer on the shards, and load the mapped state into it.

    The mapped state goes through DCP's set_optimizer_state_dict (the resume path); parameters with no
    mapped state (new tensors) are left without state so the optimizer initialises them lazily, as it
    does in one process. Fresh tensors (random / zero operators) come from rank 0, so every rank shards
    the same grown weights whatever its RNG state.
    """
    from hasten.distributed import broadcast_tensors_, load_full_optimizer_state
    from hasten.optim.builder import build_optimizer

    if fresh:
        broadcast_tensors_(list(model.parameters()))
    mapped = optimizer.state_dict()
    trainer.wrap_model(model)  # fully_shard in place (replace_state's own wrap then leaves the shards alone)
    sharded_optimizer = build_optimizer(model, trainer.cfg.optim)
    if mapped["state"]:
        load_full_optimizer_state(model, sharded_optimizer, mapped, growth=True)
        with_state = set(mapped["state"])
        flat = [p for group in sharded_optimizer.param_groups for p in group["params"]]
        for i, param in enumerate(flat):  # DCP initialised every state with a zero-lr step: drop the unmapped ones
            if i not in with_state:
                sharded_optimizer.state.pop(param, None)
    return model, sharded_optimizer


def jump_restart_step(step: int, kind: str) -> int:
    """Staged training's R when the user gives none: the current step divided by the operator's constant_op."""
    return int(round(step / OPERATOR_CONSTANTS[kind]))


def apply_schedule_policy(schedule, stage: GrowthStage, kind: str, step: int, tokens: int, planned_steps: int, planned_tokens: int,
                          min_lr_ratio: float, warmup_steps: int, decay_unit: str) -> dict:
    """restart / jump / continue the LRSchedule at (step, tokens); shared by the trainer and `hasten grow`."""
    if stage.lr is not None:
        schedule.set_peak(stage.lr, min_lr_ratio)
    remaining_steps = max(1, planned_steps - step)
    remaining_tokens = max(1, planned_tokens - tokens)
    info: dict = {"peak_lr": schedule.base_lr}
    if stage.schedule == "restart":
        warmup = stage.warmup_steps if stage.warmup_steps is not None else warmup_steps
        schedule.restart(step, tokens, total_steps=remaining_steps, total_tokens=remaining_tokens, warmup_steps=warmup)
        info.update(warmup_steps=warmup, total_steps=remaining_steps)
    elif stage.schedule == "jump":
        r = stage.restart_step if stage.restart_step is not None else jump_restart_step(step, kind)
        w = stage.rewarmup_steps if stage.rewarmup_steps is not None else warmup_steps // 16
        total = r + remaining_steps
        schedule.restart(step, tokens, total_steps=total, total_tokens=remaining_tokens, start_step=r, rewarmup_steps=w)
        warm = schedule.warmup
        if decay_unit == "tokens" and r >= warm and total - 1 > warm:
            # token decay: place the decay anchor so the decay fraction at the jump is the step schedule's at R
            schedule.anchor_token_decay((r - warm) / (total - 1 - warm), tokens)
        info.update(restart_step=r, rewarmup_steps=w, total_steps=total,
                    constant=None if stage.restart_step is not None else OPERATOR_CONSTANTS[kind])
    info["next_lr"] = schedule.lr(step, tokens)
    return info


def build(cfg: GrowthConfig, run_cfg) -> Growth:
    return Growth(cfg, run_cfg)
