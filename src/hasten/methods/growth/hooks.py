"""Model growth inside the trainer: the `growth` method (G_stack and staged training as recipes).

A recipe's `model:` is the SMALL starting model; `methods.growth.stages` lists the growth steps in
order. Each stage names an operator (dim/op/factor, see operators.py), one trigger (when), what
happens to the optimizer moments, and what happens to the LR schedule:

    methods:
      growth:
        stages:
          - {dim: depth, op: stack, factor: 4, at_tokens: 200000, moments: reset, schedule: restart, lr: 1.0e-3,
             warmup_steps: 20}
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
            (width 1.776, depth 1.412, depth+width 2.455; Shen et al. 2022, arXiv 2203.06211). The schedule is laid
            out so that it ends with the run: its length is R + the remaining steps.
  continue  the schedule goes on unchanged (a new `lr` only rescales its peak).

Stages whose triggers fire on the same step grow together (e.g. width then depth; `at: previous`
makes a stage fire with the one before it); the schedule policy of the last one applies once, with
the combined depth+width constant for `jump`.
"""

from __future__ import annotations

import sys

from hasten.errors import CheckpointError
from hasten.methods.growth.config import (
    GrowthConfig,
    GrowthStage,
    guideline_tokens,
    param_count,
    shape_text,
    stage_model_configs,
)
from hasten.methods.growth.masks import MaskRamp, new_unit_masks
from hasten.methods.growth.operators import growth_plan
from hasten.methods.growth.schedule import apply_schedule_policy
from hasten.methods.growth.state import grow_training_state
from hasten.methods.growth.timing import SlopeTrigger
from hasten.methods.growth.unit_masks import has_unit_masks, remove_unit_masks
from hasten.optim.builder import build_optimizer
from hasten.trainer.method import Method, RunContext


class Growth(Method):
    name = "growth"

    def __init__(self, cfg: GrowthConfig, run_cfg):
        self.run_cfg = run_cfg
        self.stages = cfg.stage_configs()
        self.configs = stage_model_configs(run_cfg.model_config(), self.stages)
        self.guideline = (
            guideline_tokens(run_cfg, self.stages)[0] if any(s.at == "guideline" for s in self.stages) else None
        )
        self.done = 0  # stages grown so far
        self.stage_start_step = 0  # step at which the current stage's model began training
        self.history: list[dict] = []  # one record per growth (step, tokens, flops, plan summary)
        self.trigger: SlopeTrigger | None = self._new_trigger()
        self.ramp: MaskRamp | None = None  # the active MSG mask ramp ...
        self.ramp_stage: int | None = None  # ... and the stage that started it
        self._masked_step: int | None = None  # the step whose masks the model holds (set once per step)

    # -- hooks ------------------------------------------------------------------------------------

    def on_restore(self, ctx: RunContext, reason: str) -> None:
        self._masked_step = None
        if self.ramp is None:  # a rollback to a checkpoint past the ramp leaves no masks behind
            remove_unit_masks(ctx.state.model)
        self._apply_masks(ctx)  # a run restored inside a ramp gets the masks of its step back

    def on_fit_start(self, ctx: RunContext) -> None:
        expected = self.configs[self.done]
        if ctx.state.model.config.to_dict() != expected.to_dict():
            raise CheckpointError(
                f"methods.growth: the checkpoint's model ({shape_text(ctx.state.model.config)}) "
                f"is not the model of stage {self.done} "
                f"({shape_text(expected)}); was it grown offline? remove methods.growth from the run's config.yaml"
            )
        final = self.configs[-1]
        info = {
            "start": shape_text(self.configs[0]),
            "target": shape_text(final),
            "target_config": final.to_dict(),
            "target_params": param_count(final),
            "stages": [
                f"{s.dim}/{s.op} x{s.factor:g} {s.trigger_text()}, moments {s.moments}, schedule {s.schedule}"
                for s in self.stages
            ],
            "done": self.done,
        }
        if self.guideline is not None:
            info["guideline_tokens"] = self.guideline
        ctx.log("event", ctx.state.progress.step, event="growth_plan", **info)
        self._apply_masks(ctx)
        if ctx.is_main and ctx.state.progress.step == 0:
            guide = f"; G_stack guideline d = {self.guideline:.4g} tokens" if self.guideline is not None else ""
            print(
                f"growth: {info['start']} -> target {info['target']} ({info['target_params'] / 1e6:.2f}M params) in "
                f"{len(self.stages)} stage(s){guide}",
                file=sys.stderr,
            )

    def after_eval(self, ctx: RunContext, val_loss: float) -> None:
        stage = self._current()
        p = ctx.state.progress
        # only scheduled evaluations count: a run stopped early evaluates at its stop step too, and a
        # resumed run must see the same points as an uninterrupted one
        if (
            stage is not None
            and stage.at == "slope"
            and stage.slope_loss == "eval"
            and ctx.is_eval_step()
            and self._slope_ready(p.step)
            and self.trigger is not None
        ):
            slope = self.trigger.update(p.flops, val_loss)
            ctx.log("event", p.step, event="growth_slope", slope=slope, val_loss=val_loss, flops=p.flops)

    def before_step(self, ctx: RunContext) -> None:
        self._apply_masks(ctx)  # also right after anything that restored the training state (e.g. a spike rollback)

    def prepare_model(self, ctx: RunContext, model) -> None:
        if self.ramp is not None:  # another model evaluated as the live one (e.g. averaged weights): this step's masks
            self.ramp.apply(model, ctx.state.progress.step)

    def after_step(self, ctx: RunContext) -> dict:
        self._apply_masks(ctx)  # the masks of the next step, so an evaluation after this step sees them
        metrics = {}  # growth/slope only on the rows of steps that fitted one (the same after a resume)
        if self.done >= len(self.stages):
            return metrics
        p = ctx.state.progress
        stage = self.stages[self.done]
        if (
            stage.at == "slope"
            and stage.slope_loss != "eval"
            and self._slope_ready(p.step)
            and "loss" in ctx.step_metrics
        ):
            slope = self.trigger.update(p.flops, ctx.step_metrics["loss"])
            if slope is not None:
                metrics["growth/slope"] = slope
        fired = []
        while self.done + len(fired) < len(self.stages) and self._fires(
            self.stages[self.done + len(fired)], p, first=not fired
        ):
            fired.append(self.done + len(fired))
        if fired:
            self.grow(ctx, fired)
        return metrics

    def state_dict(self) -> dict:
        return {
            "done": self.done,
            "stage_start_step": self.stage_start_step,
            "history": self.history,
            "trigger": self.trigger.state_dict() if self.trigger is not None else None,
            "ramp": None if self.ramp is None else {"stage": self.ramp_stage, **self.ramp.state_dict()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.done = int(state["done"])
        self.stage_start_step = int(state["stage_start_step"])
        self.history = list(state.get("history", []))
        self.trigger = self._new_trigger()
        if self.trigger is not None and state.get("trigger") is not None:
            self.trigger.load_state_dict(state["trigger"])
        ramp = state.get("ramp")
        self.ramp = MaskRamp.from_state_dict(ramp) if ramp else None
        self.ramp_stage = ramp["stage"] if ramp else None
        self._masked_step = None

    # -- growth -----------------------------------------------------------------------------------

    def grow(self, ctx: RunContext, indices: list[int]) -> None:
        """Grow the model through stages `indices` (fired on this step), then apply the last one's schedule policy."""
        st, p = ctx.state, ctx.state.progress
        warmup_steps = ctx.cfg.schedule.warmup_steps

        def build(model):
            return build_optimizer(model, ctx.cfg.optim)

        model, optimizer = st.model, st.optimizer
        if self.ramp is not None:  # the next growth maps plain weights: the unfinished ramp ends here
            ctx.log(
                "event",
                p.step,
                event="growth_mask_ramp_end",
                stage=self.ramp_stage,
                reason="cut short by the next growth",
                values=self.ramp.values(p.step),
            )
            self.ramp = self.ramp_stage = None
            remove_unit_masks(model)
        for index in indices:
            stage = self.stages[index]
            # a sharded model is grown as one plain copy on every rank, then sharded again (a no-op in one process)
            model, optimizer = ctx.parallel.training_copy(model, optimizer, build, with_state=stage.moments == "map")
            grown = grow_training_state(
                model, optimizer, stage.op, stage.factor, stage.dim, build_optimizer=build, moments=stage.moments
            )
            model, optimizer = ctx.parallel.reshard(grown.model, grown.optimizer, build, fresh=grown.plan.needs_fresh)
            self.done = index + 1
            self.history.append(
                {"stage": index, "step": p.step, "tokens": p.tokens, "flops": p.flops, "summary": grown.plan.summary()}
            )
            ctx.replace_state(model, optimizer, grown.plan.summary())
            ctx.log(
                "event",
                p.step,
                event="growth",
                stage=index,
                summary=grown.plan.summary(),
                notes=grown.notes,
                tokens=p.tokens,
                flops=p.flops,
                model_config=model.config.to_dict(),
                params=sum(q.numel() for q in model.parameters()),
            )
        ramped = [i for i in indices if self.stages[i].ramp_steps(warmup_steps) > 0]
        if ramped:
            index = ramped[-1]
            stage = self.stages[index]
            plan = growth_plan(self.configs[index], stage.op, stage.factor, stage.dim)
            self.ramp = MaskRamp(new_unit_masks(plan), start=p.step, steps=stage.ramp_steps(warmup_steps))
            self.ramp_stage, self._masked_step = index, None
            ctx.log(
                "event",
                p.step,
                event="growth_mask_ramp",
                stage=index,
                start=p.step,
                steps_per_axis=self.ramp.steps,
                order=list(self.ramp.order),
                end=self.ramp.end,
            )
            self._apply_masks(ctx)
        last = self.stages[indices[-1]]
        dims = {self.stages[i].dim for i in indices}
        schedule_info = self.apply_schedule(ctx, last, "depth+width" if len(dims) > 1 else dims.pop())
        ctx.log("event", p.step, event="growth_schedule", policy=last.schedule, **schedule_info)
        self.stage_start_step = p.step
        self.trigger = self._new_trigger()
        if ctx.is_main:
            print(
                f"growth at step {p.step} ({p.tokens:,} tokens): {self.history[-1]['summary']}; "
                f"schedule {last.schedule} {schedule_info}",
                file=sys.stderr,
            )

    def apply_schedule(self, ctx: RunContext, stage: GrowthStage, kind: str) -> dict:
        """Set the LR schedule after growth; returns what was done, for the event log."""
        p, cfg = ctx.state.progress, ctx.cfg
        return apply_schedule_policy(
            ctx.state.schedule,
            stage,
            kind,
            p.step,
            p.tokens,
            ctx.planned_steps,
            ctx.planned_tokens,
            cfg.optim.min_lr_ratio,
            cfg.schedule.warmup_steps,
            cfg.schedule.decay_unit,
        )

    # -- MSG masks --------------------------------------------------------------------------------

    def _apply_masks(self, ctx: RunContext) -> None:
        """Set the masks of the next step (completed steps = progress.step) on the model; drop the ramp when it ends.

        Called before and after every step; the masks change once per step, so a model that already holds
        this step's masks is left alone (a restore or a new model has none, or another step's).
        """
        if self.ramp is None:
            return
        step, model = ctx.state.progress.step, ctx.state.model
        if step == self._masked_step and has_unit_masks(model):
            return
        self._masked_step = step
        if not self.ramp.apply(model, step):
            ctx.log("event", step, event="growth_mask_ramp_end", stage=self.ramp_stage, reason="ramp complete")
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
        return (
            first and self.trigger is not None and self.trigger.should_grow()
        )  # a later stage's slope needs its own points


def build(cfg: GrowthConfig, run_cfg) -> Growth:
    return Growth(cfg, run_cfg)
