"""Sequence length warmup inside the trainer: the current length is pushed into the data stream."""

from __future__ import annotations

import torch

from hasten.data.shaping import BatchShape
from hasten.methods.seqlen_warmup.config import SeqLenWarmupConfig
from hasten.methods.seqlen_warmup.schedule import SeqLenSchedule
from hasten.trainer.method import Method, RunContext


class SeqLenWarmup(Method):
    """Sets ctx.batch_shape before every step from the DeepSpeed-exact schedule.

    The length is a pure function of the completed step count, so resume needs no state of its
    own; the LR decay should be token-based (`schedule.decay_unit: tokens`), which the core
    schedule implements.
    """

    name = "seqlen_warmup"

    def __init__(self, cfg: SeqLenWarmupConfig, context_len: int):
        self.cfg = cfg.with_max_len(context_len)
        self.schedule = SeqLenSchedule(self.cfg)

    def on_fit_start(self, ctx: RunContext) -> None:
        if ctx.device.type == "cuda" and ctx.state.progress.step == 0:
            self._preallocate(ctx)

    def _preallocate(self, ctx: RunContext) -> None:
        """One forward/backward at full length so the allocator never grows as L rises (Composer PR #1199)."""
        model, L = ctx.state.forward_model, ctx.seq_len
        rows = torch.zeros(ctx.micro_rows, L + 1, dtype=torch.long, device=ctx.device)
        with ctx.autocast():
            model(rows[:, :-1], rows[:, 1:]).backward()
        ctx.state.optimizer.zero_grad(set_to_none=True)

    def before_step(self, ctx: RunContext) -> None:
        length = self.schedule.length_for_step(ctx.state.progress.step)
        ctx.batch_shape = BatchShape(ctx.cfg.train.batch_size, length, self.cfg.mode)


def build(cfg: SeqLenWarmupConfig, run_cfg) -> SeqLenWarmup:
    return SeqLenWarmup(cfg, run_cfg.seq_len)
