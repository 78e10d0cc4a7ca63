"""LAWA / EMA / SWA inside the trainer: averaged weights are evaluated beside the raw model and
exported at the end, never fed back into training."""

from __future__ import annotations

from safetensors.torch import save_file

from hasten.methods.averaging.base import WeightAverager
from hasten.trainer.method import Method, RunContext


class WeightAveraging(Method):
    def __init__(self, name: str, averager: WeightAverager):
        self.name = name
        self.averager = averager
        self._mirror = None  # a sharded run's plain CPU model that the gathered live weights are copied into

    def after_step(self, ctx: RunContext) -> None:
        p = ctx.state.progress
        if self.averager.is_due(p.step, tokens=p.tokens):  # step and tokens are the same on every rank
            self.averager.maybe_update(p.step, self._full_weights(ctx), tokens=p.tokens)

    def _full_weights(self, ctx: RunContext):
        """The live model with its full weights, on every rank (under FSDP a collective gather into a CPU copy).

        Every rank then keeps the same averager, so the averaged model evaluates over the trainer's
        rank-split val windows and rank 0 alone writes its state into checkpoints.
        """
        model = ctx.parallel.plain_model(ctx.state.model, into=self._mirror)
        if model is not ctx.state.model:
            self._mirror = model
        return model

    def after_eval(self, ctx: RunContext, val_loss: float) -> dict[str, float]:
        if not self.averager.ready:
            return {}
        template = self._mirror if self._mirror is not None else self._full_weights(ctx)
        # evaluate() all-reduces the ranks' shares, and gives the copy what methods change in the live model's forward
        averaged = self.averager.averaged_model(template).to(ctx.device)
        metrics = {f"{self.name}/val_loss": ctx.evaluate(averaged)}
        metrics.update(
            {k if k.startswith(f"{self.name}/") else f"{self.name}/{k}": v for k, v in self.averager.stats().items()}
        )
        return metrics

    def on_state_replaced(self, ctx: RunContext, reason: str) -> None:
        # growth changes every tensor's shape; averaging across stages would mix two models
        self.averager.reset(f"model replaced ({reason})")
        self._mirror = None
        ctx.log("event", ctx.state.progress.step, event=f"{self.name}_reset", reason=reason)

    def on_fit_end(self, ctx: RunContext) -> None:
        if ctx.is_main and self.averager.ready:
            weights = {k: v.contiguous() for k, v in self.averager.averaged_state_dict().items()}
            save_file(weights, str(ctx.run_dir / f"{self.name}_weights.safetensors"))

    def state_dict(self) -> dict:
        return self.averager.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averager.load_state_dict(state)


def build_lawa(cfg, run_cfg) -> WeightAveraging:
    return WeightAveraging("lawa", cfg.build())


def build_ema(cfg, run_cfg) -> WeightAveraging:
    return WeightAveraging("ema", cfg.build())


def build_swa(cfg, run_cfg) -> WeightAveraging:
    return WeightAveraging("swa", cfg.build(total_steps=run_cfg.planned_steps()))
