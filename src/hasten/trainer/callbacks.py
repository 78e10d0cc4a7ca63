"""The seam between the trainer and the methods: a Callback with optional hooks.

Each method (sequence length warmup, growth, weight averaging, sharpness probe...) is a Callback.
The trainer calls the hooks in list order; a callback's state_dict goes into every checkpoint
under its `name`, so resuming restores it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from hasten.trainer.loop import Trainer


class Callback:
    name: str = "callback"

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step (also after a resume, once states are loaded)."""

    def before_step(self, trainer: Trainer) -> None:
        """Before each step; may change trainer.batch_shape (sequence length warmup)."""

    def after_step(self, trainer: Trainer) -> None:
        """After optimizer.step(); progress counters already include this step."""

    def on_eval(self, trainer: Trainer, evaluate: Callable[[nn.Module], float]) -> dict[str, float]:
        """Extra metrics at each evaluation; `evaluate(model)` is the val loss at full context."""
        return {}

    def on_state_replaced(self, trainer: Trainer, reason: str) -> None:
        """The model and optimizer were swapped (growth)."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last step and the final evaluation and checkpoint."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class StopAt(Callback):
    """Ends the run after `step` completed steps, with the usual final eval and checkpoint, without
    changing the schedule: `hasten train --stop-at-step N` splits a long run into resumable chunks."""

    name = "stop_at"

    def __init__(self, step: int):
        self.step = step

    def after_step(self, trainer: Trainer) -> None:
        if trainer.state.progress.step == self.step:
            trainer.stop_requested = True
