"""Instability signals logged for every run (the SLW paper's diagnostics), so a baseline and a
method can be compared on them: loss ratio and spike count every step, and the L1/L2/max of Adam's
moments every log step."""

from __future__ import annotations

from hasten.metrics.stability import LossSpikeTracker, optimizer_moment_stats
from hasten.trainer.callbacks import Callback


class StabilityMonitor(Callback):
    name = "stability"

    def __init__(self, spike_threshold: float = 1.5):
        self.spikes = LossSpikeTracker(threshold=spike_threshold)

    def after_step(self, trainer) -> None:
        self.spikes.update(trainer.last_metrics["loss"])
        trainer.last_metrics.update(self.spikes.metrics())
        step = trainer.state.progress.step
        if step % trainer.cfg.train.log_every == 0 or step == 1:
            trainer.last_metrics.update({f"adam/{k}": v for k, v in optimizer_moment_stats(trainer.state.optimizer, include_weights=False).items()})

    def state_dict(self) -> dict:
        return self.spikes.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.spikes.load_state_dict(state)
