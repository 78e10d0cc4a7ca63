"""Instability signals logged for every run (the SLW paper's diagnostics), so a baseline and a
method can be compared on them: loss ratio and spike count every step, and the L1/L2/max of Adam's
moments every log step.

Everything is accumulated on the device: the metrics after_step returns are tensors that
the trainer reads with the rest of a logged row, once per log step (no host sync on other steps).
A step whose update the guard discarded (non-finite) is not counted, as if it had not happened."""

from __future__ import annotations

from hasten.metrics.stability import LossSpikeTracker, moment_stat_tensors
from hasten.optim import state_bytes
from hasten.trainer.method import Method, RunContext


class StabilityMonitor(Method):
    name = "stability"

    def __init__(self, spike_threshold: float = 1.5):
        self.spikes = LossSpikeTracker(threshold=spike_threshold)
        self._state_bytes_logged = False  # per process: logged after the first step of a fit and after a new optimizer

    def after_step(self, ctx: RunContext) -> dict:
        if not self._state_bytes_logged:
            self._log_state_bytes(ctx)
        self.spikes.update(ctx.step_metrics["loss"], skip=ctx.step_metrics.get("nonfinite"))
        metrics = self.spikes.metrics()
        if ctx.is_log_step():
            stats = moment_stat_tensors(ctx.state.optimizer, include_weights=False)
            metrics.update({f"adam/{k}": v for k, v in stats.items()})
        return metrics

    def _log_state_bytes(self, ctx: RunContext) -> None:
        # optimizer memory is half of Adam-mini's claim; state is created lazily, so only after a step
        optimizer = ctx.state.optimizer
        extra = {"partition": optimizer.partition_summary()} if hasattr(optimizer, "partition_summary") else {}
        ctx.log(
            "event",
            ctx.state.progress.step,
            event="optimizer_state_bytes",
            optimizer_state_bytes=state_bytes(optimizer),
            optimizer=type(optimizer).__name__,
            **extra,
        )
        self._state_bytes_logged = True

    def on_state_replaced(self, ctx: RunContext, reason: str) -> None:
        self._state_bytes_logged = False  # a replaced model has a new optimizer

    def state_dict(self) -> dict:
        return self.spikes.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.spikes.load_state_dict(state)
