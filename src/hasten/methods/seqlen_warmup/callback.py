"""Sequence length warmup inside the trainer: the current length is pushed into the data stream."""

from __future__ import annotations

import torch

from hasten.data.shaping import BatchShape
from hasten.methods.seqlen_warmup.schedule import SeqLenSchedule, SeqLenWarmupConfig
from hasten.trainer.callbacks import Callback


class SeqLenWarmup(Callback):
    """Sets trainer.batch_shape before every step from the DeepSpeed-exact schedule.

    The length is a pure function of the completed step count, so resume needs no state of its
    own; the LR decay should be token-based (`schedule.decay_unit: tokens`), which the core
    schedule implements.
    """

    name = "seqlen_warmup"

    def __init__(self, cfg: SeqLenWarmupConfig, context_len: int):
        self.cfg = cfg.with_max_len(context_len)
        self.schedule = SeqLenSchedule(self.cfg)

    def on_fit_start(self, trainer) -> None:
        if trainer.device.type == "cuda" and trainer.state.progress.step == 0:
            self._preallocate(trainer)

    def _preallocate(self, trainer) -> None:
        """One forward/backward at full length so the allocator never grows as L rises (Composer PR #1199)."""
        model, L = trainer.state.forward_model, trainer.seq_len
        rows = torch.zeros(trainer.micro_rows, L + 1, dtype=torch.long, device=trainer.device)
        with trainer.autocast():
            model(rows[:, :-1], rows[:, 1:]).backward()
        trainer.state.optimizer.zero_grad(set_to_none=True)

    def before_step(self, trainer) -> None:
        length = self.schedule.length_for_step(trainer.state.progress.step)
        trainer.batch_shape = BatchShape(trainer.cfg.train.batch_size, length, self.cfg.mode)


def build(cfg: SeqLenWarmupConfig, run_cfg) -> SeqLenWarmup:
    return SeqLenWarmup(cfg, run_cfg.seq_len)
